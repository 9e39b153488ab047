#!/usr/bin/python3
# multinotes-nginx-test: installed as it is by the nginx role (tasks/config.yml).
#
# Usage: multinotes-nginx-test [--report] [--unit UNIT] STAGED_DIR
#
# Tests the configuration nginx would run if the files in STAGED_DIR (paths relative to
# /etc/nginx) replaced their live copies: a throwaway copy of /etc/nginx with the staged
# files laid over it goes through nginx -t. /etc/nginx itself is never written. The exit
# status is nginx -t's; nginx's messages go to stderr.
#
# With --report it also prints, on stdout, one JSON object the role reads in the same round
# trip (issue #20: a no-op converge pays one remote call per task):
#   "differ": the staged files whose live copy is missing or differs (content, owner,
#             group, mode): the only ones the role installs;
#   "unit":   with --unit, whether that systemd unit is active and enabled: the role starts
#             or enables it only when it is not.
# The app's release command calls it with a STAGED_DIR alone and reads the exit status.
# Tests: molecule/_harness/tests/test_nginx_test.py.

import argparse
import filecmp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

NGINX = "/usr/sbin/nginx"
CONF_DIR = "/etc/nginx"


def staged_files(staged):
    """The regular files under STAGED, relative to it, sorted."""
    found = []
    for top, _dirs, files in os.walk(staged):
        for name in files:
            path = os.path.join(top, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                found.append(os.path.relpath(path, staged))
    return sorted(found)


def differs(staged_path, live_path):
    """True when the live file is not exactly the staged one: missing, not a regular file,
    another owner, group or mode, or other bytes."""
    try:
        live = os.lstat(live_path)
    except FileNotFoundError:
        return True
    want = os.lstat(staged_path)
    if not stat.S_ISREG(live.st_mode):
        return True
    if (stat.S_IMODE(live.st_mode), live.st_uid, live.st_gid) != (stat.S_IMODE(want.st_mode), want.st_uid, want.st_gid):
        return True
    return not filecmp.cmp(staged_path, live_path, shallow=False)


def differing(staged, conf_dir):
    """The staged files (relative paths) that installing would change."""
    return [rel for rel in staged_files(staged) if differs(os.path.join(staged, rel), os.path.join(conf_dir, rel))]


def unit_state(unit, systemctl="systemctl"):
    """Whether UNIT is active and enabled (systemctl's own answers: any other state is no)."""
    def ask(verb):
        result = subprocess.run([systemctl, verb, unit], capture_output=True, text=True, check=False)
        return result.stdout.strip()
    return {"active": ask("is-active") == "active", "enabled": ask("is-enabled") == "enabled"}


def overlay(staged, tree):
    """Lay the staged files over TREE, replacing (never writing through) what is there: a live
    file that is a symbolic link must not lead the copy out of the throwaway tree."""
    for rel in staged_files(staged):
        dest = os.path.join(tree, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.unlink(dest)
        shutil.copy2(os.path.join(staged, rel), dest)


def test_tree(staged, conf_dir, nginx):
    """nginx -t on a copy of CONF_DIR with STAGED laid over it; its exit status."""
    with tempfile.TemporaryDirectory(prefix="multinotes-nginx-test.") as tree:
        shutil.copytree(conf_dir, tree, symlinks=True, dirs_exist_ok=True)
        overlay(staged, tree)
        # Includes are relative, so they resolve inside the copy (nginx's prefix is the -c file's directory).
        return subprocess.run([nginx, "-t", "-q", "-c", os.path.join(tree, "nginx.conf")], check=False).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multinotes-nginx-test", description=__doc__)
    parser.add_argument("staged", help="directory of files relative to the configuration directory")
    parser.add_argument("--report", action="store_true", help="print the differing files (and --unit's state) as JSON")
    parser.add_argument("--unit", help="a systemd unit whose state --report includes")
    parser.add_argument("--conf-dir", default=CONF_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--nginx", default=NGINX, help=argparse.SUPPRESS)
    parser.add_argument("--systemctl", default="systemctl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.staged):
        parser.error(f"{args.staged}: no such directory")
    rc = test_tree(args.staged, args.conf_dir, args.nginx)
    if args.report:
        report = {"differ": differing(args.staged, args.conf_dir)}
        if args.unit:
            report["unit"] = unit_state(args.unit, args.systemctl)
        print(json.dumps(report))
    return rc


if __name__ == "__main__":
    sys.exit(main())
