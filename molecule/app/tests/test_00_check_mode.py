"""Check mode on the converged hosts reports no change, enforced (Molecule's own `check`
step fails only when a task fails). Named to run first: pytest collects a directory's
files in name order, so it sees the hosts as the converge and its idempotence run left
them, before any behaviour test changes them. The test itself is testlib's, shared; here
it is batched: the session's batch (the refusals and a check-mode run, all changing
nothing) starts with it, so those runs overlap the longest single run of the verify."""

from testlib import batched_check_mode_test as test_converge_in_check_mode_reports_no_change_on_any_host  # noqa: F401
