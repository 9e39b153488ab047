"""plugins/action/copy.py and template.py: ansible.legacy.copy and ansible.legacy.template
with the remote temporary directory made only when a file is sent, and the file module
skipped when the stat already shows the owner, group and mode asked for. Real playbooks
through the repository's ansible.cfg (local connection, into a temporary directory), with
the remote temporary directory pointed where none can be made when none may be; and the comparison itself, case by case."""

import grp
import importlib.util
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("multinotes_copy_action", ROOT / "plugins" / "action" / "copy.py")
copy_action = importlib.util.module_from_spec(spec)
spec.loader.exec_module(copy_action)

USER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name

PLAY = """- name: Files
  hosts: all
  gather_facts: false
  tasks:
    - name: A template
      ansible.legacy.template:
        src: {tmp}/greeting.j2
        dest: {tmp}/out/greeting.conf
        owner: {user}
        group: {group}
        mode: "0640"
        validate: "{validate} %s"
    - name: Content
      ansible.legacy.copy:
        content: "port = {{{{ port }}}}\\n"
        dest: {tmp}/out/port.conf
        mode: {mode}
"""


def run(tmp, *extra, port=1, name="world", validate="true", mode="0600", remote_tmp=True):
    """The play's result per task. remote_tmp=False points the remote temporary directory
    where none can be made (under /dev/null): a task that tries to make one fails."""
    (tmp / "greeting.j2").write_text("hello {{ name }}\n")
    (tmp / "play.yml").write_text(PLAY.format(tmp=tmp, user=USER, group=GROUP, validate=validate, mode=mode))
    env = dict(os.environ, ANSIBLE_REMOTE_TMP=str(tmp / "remote") if remote_tmp else "/dev/null/no-remote-tmp",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "probe,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"port={port}", "-e", f"name={name}",
         *extra, str(tmp / "play.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True)
    # The JSON document, without the lines ansible.cfg's profile_tasks prints around it.
    out, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{\n"):])
    tasks = {t["task"]["name"]: t["hosts"]["probe"] for t in out["plays"][0]["tasks"]}
    return result.returncode, tasks


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path


def test_a_file_that_is_right_costs_no_temporary_directory(tmp):
    rc, tasks = run(tmp, remote_tmp=False)
    assert rc != 0 and "temporary directory" in tasks["A template"]["msg"], "a file to send needs one"
    rc, tasks = run(tmp)
    assert rc == 0 and tasks["A template"]["changed"] and tasks["Content"]["changed"]
    assert (tmp / "out" / "greeting.conf").read_text() == "hello world\n"
    rc, tasks = run(tmp, remote_tmp=False)
    assert rc == 0 and not tasks["A template"]["changed"] and not tasks["Content"]["changed"], tasks
    # What a registered result still says.
    assert tasks["A template"]["mode"] == "0640" and tasks["A template"]["owner"] == USER
    assert tasks["A template"]["dest"] == str(tmp / "out" / "greeting.conf")


def test_a_drifted_mode_is_still_corrected(tmp):
    run(tmp)
    os.chmod(tmp / "out" / "greeting.conf", 0o666)
    rc, tasks = run(tmp)
    assert rc == 0 and tasks["A template"]["changed"] and not tasks["Content"]["changed"], tasks
    assert oct((tmp / "out" / "greeting.conf").stat().st_mode & 0o777) == "0o640"


def test_new_content_is_sent_and_validated_and_a_failed_validation_changes_nothing(tmp):
    run(tmp)
    rc, tasks = run(tmp, name="there", port=2)
    assert rc == 0 and tasks["A template"]["changed"] and tasks["Content"]["changed"]
    assert (tmp / "out" / "greeting.conf").read_text() == "hello there\n"
    assert (tmp / "out" / "port.conf").read_text() == "port = 2\n"
    rc, tasks = run(tmp, name="broken", validate="false")
    assert rc != 0 and tasks["A template"].get("failed"), tasks
    assert (tmp / "out" / "greeting.conf").read_text() == "hello there\n"


def test_check_mode_reports_the_change_and_sends_nothing(tmp):
    run(tmp)
    rc, tasks = run(tmp, "--check", name="other", port=3, remote_tmp=False)
    assert rc == 0 and tasks["A template"]["changed"] and tasks["Content"]["changed"], tasks
    assert (tmp / "out" / "greeting.conf").read_text() == "hello world\n"


def test_a_symbolic_mode_goes_the_upstream_way_and_stays_idempotent(tmp):
    run(tmp, mode="u=rw,g=r,o=")
    assert oct((tmp / "out" / "port.conf").stat().st_mode & 0o777) == "0o640"
    rc, tasks = run(tmp, mode="u=rw,g=r,o=", remote_tmp=False)
    assert rc == 0 and not tasks["Content"]["changed"]


STAT = {"exists": True, "isreg": True, "islnk": False, "mode": "0640", "pw_name": "root", "gr_name": "adm"}


@pytest.mark.parametrize("args,matches", [
    ({}, True),
    ({"mode": "0640", "owner": "root", "group": "adm"}, True),
    ({"mode": "640"}, True),
    ({"mode": 0o640}, True),
    ({"mode": "0644"}, False),
    ({"mode": "u=rw,g=r"}, False),
    ({"mode": "preserve"}, False),
    ({"owner": "www-data"}, False),
    ({"owner": 0}, False),
    ({"group": "root"}, False),
    ({"setype": "etc_t"}, False),
    ({"attributes": "+i"}, False),
    ({"seuser": None, "mode": "0640"}, True),
])
def test_attributes_match(args, matches):
    assert copy_action.attributes_match(args, STAT) is matches


@pytest.mark.parametrize("stat", [
    {**STAT, "exists": False}, {**STAT, "isreg": False}, {**STAT, "islnk": True},
])
def test_anything_but_a_regular_file_goes_to_the_file_module(stat):
    assert copy_action.attributes_match({"mode": "0640"}, stat) is False
