"""Helpers shared by the scenarios' Testinfra suites (imported from each tests/conftest.py).

They act on the running containers the way a user or a peer host would: open TCP
connections from one host to another, run a throwaway listener, run ansible-playbook
against the scenario's inventory.
"""

import json
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

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


def journal(h, unit, lines=40):
    return h.run("journalctl -u %s -n %s --no-pager", unit, str(lines)).stdout


def assert_active(h, unit):
    """The unit is running and enabled; on failure, show its journal."""
    svc = h.service(unit)
    assert svc.is_running, f"{unit} is not running on {h.backend.hostname}:\n{journal(h, unit)}"
    assert svc.is_enabled, f"{unit} is not enabled on {h.backend.hostname}"


def run_playbook(playbook, *, limit, extra_vars=None, check=False):
    """Run ansible-playbook against the scenario's inventory; returns (rc, output, recap)."""
    cmd = ["ansible-playbook", "-i", inventory(), "--limit", limit, str(playbook)]
    if extra_vars is not None:
        cmd += ["-e", json.dumps(extra_vars)]
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
    rc, out, recap = run_playbook(playbook, limit=limit, extra_vars=extra_vars)
    assert rc != 0, out
    assert named in out, out
    assert recap[limit]["changed"] == 0, out
    assert recap[limit]["failed"] == 1, out
    return out


def changed_tasks(out):
    """{host: [task name, ...]} of every task the output reports as changed."""
    changed, task = {}, None
    for line in out.splitlines():
        m = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line)
        if m:
            task = m.group(1)
            continue
        m = re.match(r"^changed: \[([^\]]+)\]", line)
        if m:
            host = m.group(1).split(" -> ")[0]
            changed.setdefault(host, []).append(task)
    return changed


def assert_check_mode_changes_nothing(playbook, *, limit="all"):
    """The converge in check mode, on the converged hosts: every host reports changed=0.

    Molecule's own `check` step fails only when a task fails; this is the promise that a
    converged host has nothing left to change, enforced. Returns the recap."""
    rc, out, recap = run_playbook(playbook, limit=limit, check=True)
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
