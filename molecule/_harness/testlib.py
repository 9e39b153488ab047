"""Helpers shared by the scenarios' Testinfra suites (imported from each tests/conftest.py).

They act on the running containers the way a user or a peer host would: open TCP
connections from one host to another, run a throwaway listener, run ansible-playbook
against the scenario's inventory.
"""

import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
import contextlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import testinfra

PROJECT = Path(__file__).resolve().parents[2]


def inventory():
    return os.environ["MOLECULE_INVENTORY_FILE"]


def host(name):
    """A Testinfra host for one container of the scenario, by inventory name."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory()}")


def address(h):
    """The host's address on the scenario network."""
    return h.check_output("hostname -I").split()[0]


def tcp_connects(src, dst_addr, port, timeout=2.0):
    """True if `src` completes a TCP handshake with dst_addr:port within `timeout`."""
    probe = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
        "sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)\n"
    )
    return src.run("python3 -c %s %s %s %s", probe, dst_addr, str(port), str(timeout)).rc == 0


@contextmanager
def listeners(hosts_and_ports):
    """Throwaway TCP listeners as transient systemd units, removed afterwards."""
    started = []
    try:
        for h, port in hosts_and_ports:
            unit = f"test-listener-{port}"
            h.run("systemctl stop %s", unit)
            h.check_output(
                "systemd-run --unit=%s --quiet python3 -m http.server --bind 0.0.0.0 %s", unit, str(port))
            started.append((h, unit))
        for h, port in hosts_and_ports:
            h.check_output(
                "for i in $(seq 50); do python3 -c 'import socket,sys; socket.create_connection((\"127.0.0.1\", %s), 1)' "
                "2>/dev/null && exit 0; sleep 0.1; done; exit 1", str(port))
        yield
    finally:
        for h, unit in started:
            h.run("systemctl stop %s", unit)


def wait_for(condition, seconds, interval=1.0):
    """True as soon as condition() is true, False if it is not within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def journal(h, unit, lines=40):
    return h.run("journalctl -u %s -n %s --no-pager", unit, str(lines)).stdout


def assert_active(h, unit):
    """The unit is running and enabled; on failure, show its journal."""
    svc = h.service(unit)
    assert svc.is_running, f"{unit} is not running on {h.backend.hostname}:\n{journal(h, unit)}"
    assert svc.is_enabled, f"{unit} is not enabled on {h.backend.hostname}"


def exposure(h, unit):
    """`systemd-analyze security` of UNIT on host H, as the auditor reads it: (the overall
    exposure level, the whole table for an assertion message). Fails naming the unit when
    systemd prints no level (an unknown unit, a systemd without the verb)."""
    out = h.check_output("systemd-analyze security --no-pager %s", unit)
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+)", out)
    assert match, f"systemd-analyze security printed no exposure level for {unit}:\n{out}"
    return float(match.group(1)), out


def run_playbook(playbook, *, limit, extra_vars=None, check=False, tags=None):
    """Run ansible-playbook against the scenario's inventory; returns (rc, output, recap).
    `tags`: only the tasks with one of these tags (and `always`)."""
    cmd = ["ansible-playbook", "-i", inventory(), "--limit", limit, str(playbook)]
    if extra_vars is not None:
        cmd += ["-e", json.dumps(extra_vars)]
    if tags:
        cmd += ["--tags", ",".join(tags)]
    if check:
        cmd.append("--check")
    env = dict(os.environ,
               ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
               ANSIBLE_CONFIG=str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    recap = {}
    for m in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M):
        recap[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                             "unreachable": int(m.group(4)), "failed": int(m.group(5))}
    return proc.returncode, out, recap


def assert_refused_before_any_change(playbook, *, limit, extra_vars, named):
    """Bad input: the play fails on `limit`, its output names the variable, nothing changed.

    Returns the output, for checks of its own (e.g. that no secret was printed)."""
    return assert_refused(run_playbook(playbook, limit=limit, extra_vars=extra_vars), limit=limit, named=named)


def assert_refused(result, *, limit, named):
    """The checks of assert_refused_before_any_change on a run already made (rc, out, recap),
    e.g. one of a batch (see `batched`)."""
    rc, out, recap = result
    assert rc != 0, out
    assert named in out, out
    assert recap[limit]["changed"] == 0, out
    assert recap[limit]["failed"] == 1, out
    return out


# How many batched playbook runs go at once. Each is an ansible-playbook process busy on the
# controller's CPU about half its time and waiting on `docker exec` the rest: on 2 cores
# beside two other scenario lanes, more than this only queues on the CPU (README, "Batched
# refusals").
BATCH_WORKERS_DEFAULT = 3


def batch_workers():
    """MULTINOTES_BATCH_WORKERS, else the default; 1 runs the batch one after another."""
    value = os.environ.get("MULTINOTES_BATCH_WORKERS", "")
    workers = int(value) if value.strip() else BATCH_WORKERS_DEFAULT
    if workers < 1:
        raise ValueError(f"MULTINOTES_BATCH_WORKERS must be 1 or more, not {value!r}")
    return workers


def batched(spec):
    """Mark a test whose playbook run changes nothing on any host (bad input refused before
    any change, check mode on converged hosts), so that it runs in the session's batch.

    `spec(**params, tmp_path=DIR)` gets the test's parameters and a fresh directory of its
    own and returns run_playbook's keyword arguments. The test takes the fixture
    `batched_run` and asserts on its own (rc, out, recap): it stays one test per case, named
    by its case. The batch runs, at most batch_workers() at a time, when the first batched
    test of the session needs it; every other test runs in pytest's order as before. So a
    batched run must not depend on what a test before it did, and no test may depend on it:
    never batch a run that may change a host."""
    def mark(test):
        test.batched_spec = spec
        return test
    return mark


def run_batch(runs, workers):
    """{key: run_playbook kwargs} -> {key: (rc, out, recap) or the exception the run raised},
    `workers` at a time, and the seconds each took and the whole batch's wall time."""
    def timed(kwargs):
        start = time.monotonic()
        try:
            result = run_playbook(**kwargs)
        except Exception as exc:  # noqa: BLE001 - reported by the case's own test
            result = exc
        return result, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(timed, kwargs) for key, kwargs in runs.items()}
        done = {key: future.result() for key, future in futures.items()}
    return ({key: result for key, (result, _) in done.items()},
            {key: seconds for key, (_, seconds) in done.items()}, time.monotonic() - start)


@pytest.fixture(scope="session")
def batched_results(request):
    """Every selected @batched test's run, made at once (see `batched`)."""
    runs = {}
    scratch = Path(tempfile.mkdtemp(prefix="multinotes-batch-"))
    for n, item in enumerate(request.session.items):
        spec = getattr(getattr(item, "function", None), "batched_spec", None)
        if spec is not None:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            (scratch / str(n)).mkdir()
            runs[item.nodeid] = spec(**params, tmp_path=scratch / str(n))
    workers = batch_workers()
    results, seconds, wall = run_batch(runs, workers)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None:
        # Straight to the log, where the run happens, not into the first test's captured output.
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(
                f"batched playbook runs: {len(runs)}, {workers} at a time, {wall:.1f} s wall, "
                f"{sum(seconds.values()):.1f} s summed (longest {max(seconds.values(), default=0):.1f} s)")
    return results


@pytest.fixture
def batched_run(batched_results, request):
    """This test's (rc, out, recap) from the session's batch."""
    result = batched_results[request.node.nodeid]
    if isinstance(result, Exception):
        raise result
    return result


def tasks_by_outcome(out, outcome="changed", *, drop_role=False):
    """{host: [task name, ...]} of every task (or handler) the output reports as OUTCOME for
    a host ("changed", "skipping", "ok"; once per loop item). With drop_role the role's
    prefix ("mariadb : ", "multinotes.platform.redis : ") is left out of the name."""
    found, task = {}, None
    name = r"(?:[^\]]+ : )?(.*)" if drop_role else r"(.*)"
    for line in out.splitlines():
        m = re.match(rf"^(?:TASK|RUNNING HANDLER) \[{name}\]", line)
        if m:
            task = m.group(1)
            continue
        m = re.match(rf"^{re.escape(outcome)}: \[([^\]]+)\]", line)
        if m:
            host = m.group(1).split(" -> ")[0]
            found.setdefault(host, []).append(task)
    return found


def changed_tasks(out):
    """{host: [task name, ...]} of every task the output reports as changed."""
    return tasks_by_outcome(out, "changed")


def assert_check_mode_changes_nothing(playbook, *, limit="all"):
    """The converge in check mode, on the converged hosts: every host reports changed=0.

    Molecule's own `check` step fails only when a task fails; this is the promise that a
    converged host has nothing left to change, enforced. Returns the recap."""
    return assert_no_change_in_check_mode(run_playbook(playbook, limit=limit, check=True))


def assert_no_change_in_check_mode(result):
    """The checks of assert_check_mode_changes_nothing on a run already made (rc, out, recap)."""
    rc, out, recap = result
    assert rc == 0, out[-6000:]
    assert recap, out[-3000:]
    print("check mode recap: " + ", ".join(f"{h} changed={r['changed']}" for h, r in sorted(recap.items())))
    assert all(r["changed"] == 0 for r in recap.values()), (
        f"check mode on converged hosts reports changes: {changed_tasks(out)}\n{out[-6000:]}")
    return recap


def test_converge_in_check_mode_reports_no_change_on_any_host():
    """Every scenario's first test (each tests/test_00_check_mode.py imports it, so pytest
    collects it there): the scenario's converge in check mode on its converged hosts."""
    assert_check_mode_changes_nothing(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml")


@batched(lambda **_: dict(playbook=Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml", limit="all",
                          check=True))
def batched_check_mode_test(batched_run):
    """The same test as a member of the session's batch, for a scenario whose batch holds
    only runs that change nothing: the batch then starts with the session, so its runs
    overlap the check-mode run, and every test after it still sees what they left, which
    is what the converge left (app: tests/test_00_check_mode.py)."""
    assert_no_change_in_check_mode(batched_run)
