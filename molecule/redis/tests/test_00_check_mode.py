"""Check mode on the converged hosts reports no change, enforced (Molecule's own `check`
step fails only when a task fails). Named to run first: pytest collects a directory's
files in name order, so it sees the hosts as the converge and its idempotence run left
them, before any behaviour test changes them. The test itself is testlib's, shared."""

from testlib import test_converge_in_check_mode_reports_no_change_on_any_host  # noqa: F401
