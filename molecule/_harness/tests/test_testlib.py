"""The harness's own assertions can fail: testlib.assert_check_mode_changes_nothing runs a
real ansible-playbook --check (on localhost, local connection) and must reject a play that
reports a change in check mode, naming the task, and accept one that reports none."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testlib  # noqa: E402

PLAY = """- name: A converge
  hosts: all
  gather_facts: false
  tasks:
    - name: Read something
      ansible.builtin.command: "true"
      changed_when: {changed}
      check_mode: false
"""


@pytest.fixture
def scenario(tmp_path, monkeypatch):
    (tmp_path / "inventory.yml").write_text(
        "all:\n  hosts:\n    probe-host:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    (tmp_path / "ansible.cfg").write_text("[defaults]\ngathering = explicit\n")
    monkeypatch.setenv("MOLECULE_INVENTORY_FILE", str(tmp_path / "inventory.yml"))
    monkeypatch.setenv("MOLECULE_EPHEMERAL_DIRECTORY", str(tmp_path))
    return tmp_path


def test_a_play_that_changes_nothing_in_check_mode_passes(scenario):
    play = scenario / "converge.yml"
    play.write_text(PLAY.format(changed="false"))
    recap = testlib.assert_check_mode_changes_nothing(play)
    assert recap == {"probe-host": {"ok": 1, "changed": 0, "unreachable": 0, "failed": 0}}


def test_a_play_that_reports_a_change_in_check_mode_fails_naming_the_task(scenario):
    play = scenario / "converge.yml"
    play.write_text(PLAY.format(changed="true"))
    with pytest.raises(AssertionError) as failure:
        testlib.assert_check_mode_changes_nothing(play)
    assert "check mode on converged hosts reports changes: {'probe-host': ['Read something']}" in str(failure.value)
