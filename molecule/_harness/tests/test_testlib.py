"""The harness's own assertions can fail: testlib.assert_check_mode_changes_nothing runs a
real ansible-playbook --check (on localhost, local connection) and must reject a play that
reports a change in check mode, naming the task, and accept one that reports none. The
batch of playbook runs that change nothing runs them concurrently, bounded, and still
reports each case as its own test."""

import os
import subprocess
import sys
import threading
import time
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


def test_a_batch_runs_at_most_its_workers_at_once_and_keeps_each_result_and_error(monkeypatch):
    running, peak, lock = [0], [0], threading.Lock()

    def fake_run(playbook, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        if playbook == "broken":
            raise subprocess.TimeoutExpired("ansible-playbook", 900)
        return 2, f"out of {playbook}", {"h": {"changed": 0}}

    monkeypatch.setattr(testlib, "run_playbook", fake_run)
    runs = {f"case{n}": {"playbook": f"p{n}", "limit": "h"} for n in range(6)}
    runs["bad"] = {"playbook": "broken", "limit": "h"}
    results, seconds, wall = testlib.run_batch(runs, workers=3)
    assert peak[0] == 3
    assert results["case4"] == (2, "out of p4", {"h": {"changed": 0}})
    assert isinstance(results["bad"], subprocess.TimeoutExpired)
    assert set(seconds) == set(runs) and wall < sum(seconds.values())


@pytest.mark.parametrize("value,workers", [("", testlib.BATCH_WORKERS_DEFAULT), ("1", 1), ("4", 4)])
def test_batch_workers_come_from_the_environment(monkeypatch, value, workers):
    monkeypatch.setenv("MULTINOTES_BATCH_WORKERS", value)
    assert testlib.batch_workers() == workers


def test_batch_workers_below_one_are_refused(monkeypatch):
    monkeypatch.setenv("MULTINOTES_BATCH_WORKERS", "0")
    with pytest.raises(ValueError, match="MULTINOTES_BATCH_WORKERS"):
        testlib.batch_workers()


REFUSING_PLAY = """- name: A play that checks its input first
  hosts: all
  gather_facts: false
  tasks:
    - name: Refuse a bad value
      ansible.builtin.assert:
        that: value | int > 0
        fail_msg: "value must be a positive number"
"""

BATCHED_TESTS = '''
import pytest
import testlib
from testlib import batched_results, batched_run  # noqa: F401

PLAY = {play!r}


@pytest.mark.parametrize("value", ["-1", "0", "3"], ids=["negative", "zero", "positive"])
@testlib.batched(lambda value, tmp_path: dict(playbook=PLAY, limit="probe-host", extra_vars={{"value": value}}))
def test_bad_value_is_refused(batched_run, value):
    testlib.assert_refused(batched_run, limit="probe-host", named="value must be")


def test_not_batched():
    pass
'''


def test_each_batched_case_is_its_own_test_and_a_failing_one_is_named(scenario):
    """Through pytest itself: one batch, three cases, and the one that is not refused fails alone, by its id."""
    (scenario / "refusing.yml").write_text(REFUSING_PLAY)
    (scenario / "test_batched.py").write_text(BATCHED_TESTS.format(play=str(scenario / "refusing.yml")))
    env = dict(os.environ, PYTHONPATH=str(Path(testlib.__file__).parent), MULTINOTES_BATCH_WORKERS="2")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-v", str(scenario)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=scenario)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "PASSED test_batched.py::test_bad_value_is_refused[negative]" in out, out
    assert "PASSED test_batched.py::test_bad_value_is_refused[zero]" in out, out
    assert "FAILED test_batched.py::test_bad_value_is_refused[positive]" in out, out
    assert "PASSED test_batched.py::test_not_batched" in out, out
    assert out.count("batched playbook runs: 3, 2 at a time") == 1, out
    # Live, when the batch ran, not in a passed test's captured output at the end.
    assert out.index("batched playbook runs") < out.index("test_bad_value_is_refused[negative] PASSED"), out


RECORDED = """TASK [multinotes.platform.redis : Start the enabled instances now and at boot] ***
changed: [redis-12] => (item=cache)
skipping: [redis-13] => (item=broker)
TASK [mariadb : Create the TLS directory] ***
skipping: [ops-12]
changed: [ops-13 -> localhost]
RUNNING HANDLER [mariadb : Restart mariadb] ***
changed: [ops-13]
TASK [Gathering Facts] ***
ok: [ops-12]
"""


def test_tasks_by_outcome_reads_each_host_once_per_item_with_or_without_the_role():
    assert testlib.changed_tasks(RECORDED) == {
        "redis-12": ["multinotes.platform.redis : Start the enabled instances now and at boot"],
        "ops-13": ["mariadb : Create the TLS directory", "mariadb : Restart mariadb"]}
    assert testlib.tasks_by_outcome(RECORDED, "changed", drop_role=True) == {
        "redis-12": ["Start the enabled instances now and at boot"],
        "ops-13": ["Create the TLS directory", "Restart mariadb"]}
    assert testlib.tasks_by_outcome(RECORDED, "skipping", drop_role=True) == {
        "redis-13": ["Start the enabled instances now and at boot"], "ops-12": ["Create the TLS directory"]}
    assert testlib.tasks_by_outcome(RECORDED, "ok") == {"ops-12": ["Gathering Facts"]}
