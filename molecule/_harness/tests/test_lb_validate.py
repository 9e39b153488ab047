"""The balancer's input rules (roles/haproxy/tasks/validate.yml), run by ansible-playbook on
the controller against small inventories: each bad inventory or value fails the play in the
validation task, with a message naming what the user sets, before any task that changes
anything. (The stack scenario runs the same role on real hosts.)"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PLAYBOOK = """\
- name: The haproxy role's validation only
  hosts: lb
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.include_role:
        name: haproxy
        tasks_from: validate
    - name: Reached only when every rule passed
      ansible.builtin.debug:
        msg: VALID
"""


def inventory(lb=("lb1",), web=("web1", "web2")):
    hosts = lambda names: "".join(f"        {n}: {{multinotes_private_address: 10.0.0.{i + 10}}}\n"  # noqa: E731
                                  for i, n in enumerate(names))
    text = "all:\n  vars:\n    ansible_connection: local\n    nginx_server_names: [multinotes.test]\n  children:\n"
    text += "    lb:\n      hosts:\n" + (hosts(lb) if lb else "        {}\n")
    text += "    web:\n" + (("      hosts:\n" + hosts(web)) if web else "      hosts: {}\n")
    return text


def run(tmp_path, inv, *extra, playbook=PLAYBOOK):
    (tmp_path / "inventory.yml").write_text(inv)
    (tmp_path / "play.yml").write_text(playbook)
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run(["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"), *extra],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_good_inventory_passes(tmp_path):
    rc, out = run(tmp_path, inventory())
    assert rc == 0 and "VALID" in out, out


@pytest.mark.parametrize("inv, extra, message", [
    # A balancer that is also a web host: both would bind 80/443.
    (inventory(lb=("web1",), web=("web1", "web2")), [], "web1 is in both the `lb` and the `web` group"),
    # No web host behind the balancer.
    (inventory(web=()), [], "haproxy_backends is empty"),
    # The health path the balancer asks must be a path.
    (inventory(), ["-e", "multinotes_health_path=health/"], "multinotes_health_path"),
    # Two balancers would each be an ACME client for the same names.
    (inventory(lb=("lb1", "lb2")), [], "this repository runs one balancer"),
    # Two listeners on one port.
    (inventory(), ["-e", "haproxy_http_port=443"], "haproxy_http_port=443, haproxy_https_port=443"),
    # The metrics listener on a port another listener has, or on no address of the host.
    (inventory(), ["-e", "haproxy_metrics_enabled=true", "-e", "haproxy_metrics_port=8404"],
     "haproxy_metrics_port=8404 (multinotes_exporters.haproxy.port) must all differ"),
    (inventory(), ["-e", "haproxy_metrics_enabled=true", "-e", "multinotes_private_address=lb1.internal"],
     "haproxy_metrics_address (by default multinotes_private_address"),
], ids=["lb-host-also-web", "zero-backends", "health-path-without-slash", "two-balancers", "same-ports",
        "metrics-port-taken", "metrics-address-not-an-ip"])
def test_bad_input_fails_in_validation_naming_what_to_set(tmp_path, inv, extra, message):
    rc, out = run(tmp_path, inv, *extra)
    assert rc != 0 and "VALID" not in out, out
    flat = " ".join(out.split())  # the callback folds long messages over lines
    assert "Check the role's inputs" in flat and message in flat, textwrap.shorten(out, 3000)


METRICS_PLAYBOOK = """\
- name: Whether the balancer's metrics listen
  hosts: lb
  gather_facts: false
  roles:
    - role: haproxy
      tags: [never]
  tasks:
    - name: Say it
      ansible.builtin.debug:
        msg: "METRICS={{ haproxy_metrics_enabled | bool }}"
"""


@pytest.mark.parametrize("monitoring, expected", [([], "METRICS=False"), (["mon1"], "METRICS=True")])
def test_the_metrics_listen_only_where_a_monitoring_host_scrapes_them(tmp_path, monitoring, expected):
    """As the exporters: without a monitoring host the listener would be one nobody may reach
    (the launch check's listeners check refuses it)."""
    rc, out = run(tmp_path, inventory(), "-e", json.dumps({"multinotes_monitoring_hosts": monitoring}),
                  playbook=METRICS_PLAYBOOK)
    assert rc == 0 and expected in out, out
