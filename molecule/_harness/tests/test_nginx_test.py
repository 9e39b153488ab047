"""The nginx role's whole-tree test (roles/nginx/files/nginx_test.py, installed as
/usr/local/sbin/multinotes-nginx-test): nginx -t on the live tree with the staged files laid
over it, and the report the role reads in the same call (which staged files differ from the
live ones, and the unit's state), with a stand-in nginx and systemctl.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "roles" / "nginx" / "files" / "nginx_test.py"

spec = importlib.util.spec_from_file_location("nginx_test", SCRIPT)
nginx_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nginx_test)

# A stand-in nginx -t: fails when the tree it is given holds the word "broken" in any file,
# and records the tree's files so a test can see what it was given.
FAKE_NGINX = """#!/bin/sh
conf="$4"; tree=$(dirname "$conf")
(cd "$tree" && find . -type f | sort) > "{log}"
if grep -rq broken "$tree"; then echo "nginx: [emerg] broken in $conf" >&2; exit 1; fi
exit 0
"""
# A stand-in systemctl answering from the environment: FAKE_ACTIVE / FAKE_ENABLED.
FAKE_SYSTEMCTL = """#!/bin/sh
case "$1" in
  is-active) echo "${FAKE_ACTIVE:-active}";;
  is-enabled) echo "${FAKE_ENABLED:-enabled}";;
esac
"""


def executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def trees(tmp_path):
    live, staged = tmp_path / "etc-nginx", tmp_path / "staged"
    for base in (live, staged):
        (base / "conf.d").mkdir(parents=True)
        (base / "nginx.conf").write_text("events {}\n")
        (base / "conf.d" / "site.conf").write_text("server {}\n")
        for path in (base / "nginx.conf", base / "conf.d" / "site.conf"):
            path.chmod(0o644)
    (live / "mime.types").write_text("types {}\n")
    return live, staged


def run(tmp_path, live, staged, *extra, env=None, stdin=None):
    nginx = executable(tmp_path / "nginx", FAKE_NGINX.format(log=tmp_path / "tree.txt"))
    systemctl = executable(tmp_path / "systemctl", FAKE_SYSTEMCTL)
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"--conf-dir={live}", f"--nginx={nginx}", f"--systemctl={systemctl}", *extra, str(staged)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, input=stdin)


def test_nothing_differs_when_the_live_tree_is_the_staged_one(tmp_path, trees):
    live, staged = trees
    result = run(tmp_path, live, staged, "--report")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"differ": []}


@pytest.mark.parametrize("change", ["content", "mode", "missing", "symlink"])
def test_a_live_file_that_drifted_is_reported(tmp_path, trees, change):
    live, staged = trees
    target = live / "conf.d" / "site.conf"
    if change == "content":
        target.write_text("server { listen 81; }\n")
    elif change == "mode":
        target.chmod(0o600)
    elif change == "missing":
        target.unlink()
    else:
        target.unlink()
        target.symlink_to(staged / "conf.d" / "site.conf")
    result = run(tmp_path, live, staged, "--report")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["differ"] == ["conf.d/site.conf"]


def test_the_whole_tree_is_tested_with_the_staged_files_over_the_live_ones(tmp_path, trees):
    live, staged = trees
    (staged / "conf.d" / "site.conf").write_text("server { broken }\n")
    result = run(tmp_path, live, staged, "--report")
    # nginx's verdict is the exit status; its message stays on stderr for the role's assert.
    assert result.returncode == 1
    assert "broken" in result.stderr
    assert (tmp_path / "tree.txt").read_text().split() == ["./conf.d/site.conf", "./mime.types", "./nginx.conf"]
    # The live tree is never written, whatever nginx said.
    assert (live / "conf.d" / "site.conf").read_text() == "server {}\n"
    assert json.loads(result.stdout)["differ"] == ["conf.d/site.conf"]


def test_without_report_nothing_is_printed(tmp_path, trees):
    """The app's release command reads only the exit status and, on failure, the output."""
    live, staged = trees
    result = run(tmp_path, live, staged)
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize("active,enabled,expected", [
    ("active", "enabled", {"active": True, "enabled": True}),
    ("inactive", "enabled", {"active": False, "enabled": True}),
    ("active", "disabled", {"active": True, "enabled": False}),
    ("failed", "masked", {"active": False, "enabled": False}),
])
def test_the_unit_state_is_reported(tmp_path, trees, active, enabled, expected):
    live, staged = trees
    result = run(tmp_path, live, staged, "--report", "--unit", "nginx",
                 env={"FAKE_ACTIVE": active, "FAKE_ENABLED": enabled})
    assert json.loads(result.stdout) == {"differ": [], "unit": expected}


def test_a_missing_staging_directory_is_refused(tmp_path, trees):
    live, _ = trees
    result = run(tmp_path, live, tmp_path / "nowhere", "--report")
    assert result.returncode == 2
    assert "no such directory" in result.stderr


def test_differing_lists_only_regular_staged_files(tmp_path, trees):
    live, staged = trees
    (staged / "new.conf").write_text("x\n")
    (staged / "link.conf").symlink_to(staged / "nginx.conf")
    assert nginx_test.differing(str(staged), str(live)) == ["new.conf"]


def test_files_json_writes_exactly_the_given_files_then_tests_them(tmp_path, trees):
    """The role sends its rendered templates on stdin: the staging directory holds exactly
    them afterwards (a stale file removed), and the report compares them with the live tree."""
    live, staged = trees
    (staged / "stale.conf").write_text("old\n")
    files = {"nginx.conf": "events {}\n", "conf.d/site.conf": "server { listen 81; }\n",
             "snippets/new.conf": "add_header X 1;\n"}
    result = run(tmp_path, live, staged, "--report", "--files-json", stdin=json.dumps(files))
    assert result.returncode == 0, result.stderr
    assert nginx_test.staged_files(str(staged)) == sorted(files)
    for rel, text in files.items():
        assert (staged / rel).read_text() == text
        assert (staged / rel).stat().st_mode & 0o777 == 0o644
    assert json.loads(result.stdout)["differ"] == ["conf.d/site.conf", "snippets/new.conf"]


def test_files_json_leaves_an_unchanged_staged_file_alone(tmp_path, trees):
    live, staged = trees
    site = staged / "conf.d" / "site.conf"
    os.utime(site, (1_000_000, 1_000_000))
    result = run(tmp_path, live, staged, "--report", "--files-json",
                 stdin=json.dumps({"nginx.conf": "events {}\n", "conf.d/site.conf": "server {}\n"}))
    assert result.returncode == 0, result.stderr
    assert site.stat().st_mtime == 1_000_000
    assert json.loads(result.stdout)["differ"] == []


def test_files_json_render_that_nginx_rejects_is_kept_for_inspection(tmp_path, trees):
    live, staged = trees
    result = run(tmp_path, live, staged, "--report", "--files-json",
                 stdin=json.dumps({"nginx.conf": "events {}\n", "conf.d/site.conf": "server { broken }\n"}))
    assert result.returncode == 1
    assert (staged / "conf.d" / "site.conf").read_text() == "server { broken }\n"
    assert (live / "conf.d" / "site.conf").read_text() == "server {}\n"


@pytest.mark.parametrize("payload", [
    "not json", "[]", '{"nginx.conf": 1}', '{"/etc/passwd": "x"}', '{"../escape.conf": "x"}',
    '{"conf.d/../../escape.conf": "x"}', '{"": "x"}',
])
def test_files_json_refuses_bad_input_before_writing(tmp_path, trees, payload):
    live, staged = trees
    before = {rel: (staged / rel).read_text() for rel in nginx_test.staged_files(str(staged))}
    result = run(tmp_path, live, staged, "--report", "--files-json", stdin=payload)
    assert result.returncode == 2
    assert "--files-json" in result.stderr
    assert {rel: (staged / rel).read_text() for rel in nginx_test.staged_files(str(staged))} == before
    assert not (tmp_path / "escape.conf").exists()
