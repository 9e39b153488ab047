#!/usr/bin/python3
# multinotes-nginx-test: installed as it is by the nginx role (tasks/config.yml).
#
# Usage: multinotes-nginx-test [--report] [--unit UNIT] [--files-json] STAGED_DIR
#
# Tests the configuration nginx would run if the files in STAGED_DIR (paths relative to
# /etc/nginx) replaced their live copies: a throwaway copy of /etc/nginx with the staged
# files laid over it goes through nginx -t. /etc/nginx itself is never written. The exit
# status is nginx -t's; nginx's messages go to stderr.
#
# With --files-json it first writes STAGED_DIR itself from a JSON object on stdin,
# {"relative/path": "content", ...}: exactly those files, mode 0644, a file rewritten only
# when its bytes or mode differ, any other file under STAGED_DIR removed. The role renders
# its templates on the controller and sends them here, so a converge pays one remote call
# for the render, the test and the report together, not one more per template (issue #20).
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


def safe_relative(rel):
    """REL if it is a plain relative path that stays under its base, else ValueError."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\0" in rel:
        raise ValueError(f"not a relative path: {rel!r}")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return rel


def same_file(path, data):
    """True when PATH is a regular file of mode 0644 holding exactly DATA."""
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(current.st_mode) or stat.S_IMODE(current.st_mode) != 0o644 or current.st_size != len(data):
        return False
    with open(path, "rb") as existing:
        return existing.read() == data


def write_staged(files, staged):
    """Make STAGED hold exactly FILES ({relative path: text}), each mode 0644: a file is
    rewritten (atomically) only when its bytes or mode differ; any other file is removed."""
    wanted = {safe_relative(rel): text.encode() for rel, text in files.items()}
    os.makedirs(staged, mode=0o755, exist_ok=True)
    for rel in staged_files(staged):
        if rel not in wanted:
            os.unlink(os.path.join(staged, rel))
    for rel, data in wanted.items():
        dest = os.path.join(staged, rel)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        if same_file(dest, data):
            continue
        fd, tmp = tempfile.mkstemp(prefix=".multinotes-", dir=os.path.dirname(dest))
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            os.unlink(tmp)
            raise


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multinotes-nginx-test", description=__doc__)
    parser.add_argument("staged", help="directory of files relative to the configuration directory")
    parser.add_argument("--report", action="store_true", help="print the differing files (and --unit's state) as JSON")
    parser.add_argument("--unit", help="a systemd unit whose state --report includes")
    parser.add_argument("--files-json", action="store_true",
                        help="first write STAGED_DIR from a JSON object on stdin: {relative path: content}")
    parser.add_argument("--conf-dir", default=CONF_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--nginx", default=NGINX, help=argparse.SUPPRESS)
    parser.add_argument("--systemctl", default="systemctl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.files_json:
        try:
            files = json.load(sys.stdin)
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                raise ValueError("expected an object of relative path -> text")
            write_staged(files, args.staged)
        except ValueError as error:
            parser.error(f"--files-json: {error}")
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
