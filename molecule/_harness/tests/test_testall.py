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
