"""`make test`'s runner: a failed scenario's test verdicts are found in its log, so that they
can be printed again just above the summary line (CI keeps only the output's tail)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testall  # noqa: E402

LOG = """\
tests/test_stack.py::test_backup_runs_and_a_restore_drill_passes PASSED
tests/test_stack.py::test_launch_check_says_go FAILED
    assert rc == 0 and report["verdict"] == "GO", no_go_items(report, out)
E   AssertionError: NO-GO, 1 failed: stack-web/health: curl: (28) Operation timed out
=========================== short test summary info ============================
PASSED tests/test_stack.py::test_backup_runs_and_a_restore_drill_passes
FAILED tests/test_stack.py::test_launch_check_says_go - AssertionError: NO-GO, 1 failed: stack-web/health: curl: (28)
XFAIL tests/test_stack.py::test_health_checks_reuse_their_redis_connection - an earlier step of the story failed
ERROR tests/test_stack.py::test_reboot - fixture 'x' not found
ERROR    [stack > verify] Executed: Failed
FAILED - RETRYING: [localhost]: Wait for the removals (150 retries left).
ERROR    Verifier tests failed
============== 1 failed, 6 passed, 9 xfailed in 259.66s (0:04:19) ==============
"""


def test_the_verdicts_of_failed_and_erroring_tests_are_found():
    assert testall.failed_verdicts(LOG.splitlines()) == [
        "FAILED tests/test_stack.py::test_launch_check_says_go - AssertionError: NO-GO, 1 failed: stack-web/health: curl: (28)",
        "ERROR tests/test_stack.py::test_reboot - fixture 'x' not found",
    ]


def test_a_long_verdict_is_cut_and_a_passing_log_has_none():
    long = "FAILED tests/x.py::test_y - " + "e" * 5000
    assert testall.failed_verdicts([long]) == [long[:testall.VERDICT_CHARS]]
    assert testall.failed_verdicts([line for line in LOG.splitlines() if not line.startswith(("FAILED", "ERROR"))]) == []


CI_DURATIONS = {"stack": 1930, "app": 1384, "base": 1126, "backup": 776, "monitoring": 578, "web": 556, "redis": 250}


def span(queues, known):
    return max(sum(known[n] for n in q) for q in queues)


def test_the_lanes_end_together_as_far_as_the_durations_allow():
    queues = testall.plan_lanes(list(CI_DURATIONS), CI_DURATIONS, 3)
    assert sorted(n for q in queues for n in q) == sorted(CI_DURATIONS)
    # The first free lane, longest first, ends at 2458 s with these; the best split at 2260 s.
    assert span(queues, CI_DURATIONS) == 2260
    assert queues[0][0] == "stack" and all(q == sorted(q, key=lambda n: -CI_DURATIONS[n]) for q in queues)


def test_an_untimed_scenario_counts_as_the_longest_and_fewer_scenarios_than_lanes_fit():
    queues = testall.plan_lanes(["new", "web", "redis"], {"web": 556, "redis": 250}, 3)
    assert sorted(map(tuple, queues)) == [("new",), ("redis",), ("web",)]
    assert testall.plan_lanes(["web"], {}, 3) == [["web"]]
