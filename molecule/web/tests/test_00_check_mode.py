"""Check mode on the converged hosts reports no change, enforced (Molecule's own `check`
step fails only when a task fails). Named to run first: pytest collects a directory's
files in name order, so it sees the hosts as the converge and its idempotence run left
them, before any behaviour test changes them."""

from pathlib import Path

import testlib

CONVERGE = Path(__file__).resolve().parents[1] / "converge.yml"


def test_converge_in_check_mode_reports_no_change_on_any_host():
    testlib.assert_check_mode_changes_nothing(CONVERGE)
