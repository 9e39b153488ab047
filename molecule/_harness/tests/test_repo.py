"""Controller-side tests: the repository's variable layout and tooling, no containers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
ENVIRONMENTS = sorted(p.name for p in (ROOT / "inventories").iterdir() if (p / "hosts.yml").exists())
PLAYBOOK_DIRS = [ROOT, ROOT / "playbooks"]


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def var_names(directory):
    names = {}
    for path in sorted(directory.glob("*.yml")) + sorted(directory.glob("*/*.yml")):
        for name in (yaml.safe_load(path.read_text()) or {}):
            names[name] = path.relative_to(ROOT)
    return names


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_no_variable_is_both_shared_and_per_environment(env):
    # group_vars/ is playbook group_vars: it would silently beat the environment's value.
    shared = var_names(ROOT / "group_vars")
    own = var_names(ROOT / "inventories" / env / "group_vars")
    both = sorted(set(shared) & set(own))
    assert not both, f"defined in group_vars/ and in inventories/{env}/group_vars/: {both}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_host_sees_shared_and_environment_vars(env):
    listing = run("ansible-inventory", "-i", f"inventories/{env}", "--list")
    assert listing.returncode == 0, listing.stderr
    hostvars = json.loads(listing.stdout)["_meta"]["hostvars"]
    assert hostvars, f"inventories/{env} has no hosts"
    for host, variables in hostvars.items():
        assert variables.get("multinotes_app_name") == "multinotes", f"{env}/{host} misses group_vars/all.yml"
        assert variables.get("multinotes_environment") == env, f"{env}/{host} misses its environment's vars"


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("directory", PLAYBOOK_DIRS, ids=["root", "playbooks"])
def test_a_playbook_in_each_documented_place_sees_shared_vars(env, directory, tmp_path):
    probe = directory / f"_probe_{tmp_path.name}.yml"
    probe.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n        msg: 'probe={{ multinotes_app_name }}/{{ multinotes_environment }}'\n")
    try:
        result = run("ansible-playbook", "-i", f"inventories/{env}", str(probe))
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"probe=multinotes/{env}" in result.stdout


def play_files():
    """Every YAML file outside roles/ and molecule/ (and tool caches) that holds plays."""
    skip = {"roles", "molecule", "collections", ".venv", ".cache", ".git"}
    tracked = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yml", "*.yaml").stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if path.parts[len(ROOT.parts)] in skip or not path.exists():
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, list) and data and all(
                isinstance(item, dict) and ("hosts" in item or "import_playbook" in item
                                            or "ansible.builtin.import_playbook" in item) for item in data):
            found.append(path)
    return found


def test_every_playbook_lives_in_a_probed_place():
    found = play_files()
    assert ROOT / "site.yml" in found and ROOT / "playbooks" / "deploy.yml" in found, found
    elsewhere = [str(p.relative_to(ROOT)) for p in found if p.parent not in PLAYBOOK_DIRS]
    # A play file anywhere else would not see group_vars/ (the shared values) at all.
    assert not elsewhere, f"play files outside {[str(d.relative_to(ROOT)) or '.' for d in PLAYBOOK_DIRS]}: {elsewhere}"
    # playbooks/ sees the very same shared vars, at the same precedence, as site.yml.
    assert (ROOT / "playbooks" / "group_vars").resolve() == (ROOT / "group_vars").resolve()


def test_missing_pinned_collection_fails_loudly(tmp_path):
    wanted = tmp_path / "requirements.yml"
    wanted.write_text("collections:\n  - name: example.missing\n    version: '1.0.0'\n"
                      "  - name: ansible.posix\n    version: '999.0.0'\n")
    result = run(sys.executable, "molecule/_harness/check_collections.py", str(wanted))
    assert result.returncode == 1
    assert "example.missing 1.0.0 is pinned but not installed" in result.stderr
    assert "older than the pinned 999.0.0" in result.stderr


def test_pinned_collections_are_present():
    result = run(sys.executable, "molecule/_harness/check_collections.py")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("host,ports", [
    ("redis1.multinotesai.com", [6379, 6380]),
    ("db1.multinotesai.com", [3306]),
    ("web1.multinotesai.com", []),
])
def test_production_firewall_opens_data_ports_only_to_app_hosts(host, ports):
    def value(var):
        result = run("ansible", "-i", "inventories/production", host, "-m", "ansible.builtin.debug",
                     "-a", f"var={var}", "-o")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout.split("=>", 1)[1])[var]
    assert value("base_firewall_private_tcp_ports") == ports
    assert sorted(value("base_firewall_private_sources")) == ["10.0.1.11", "10.0.1.12", "10.0.1.21"]


def production_value(host, var):
    result = run("ansible", "-i", "inventories/production", host, "-m", "ansible.builtin.debug",
                 "-a", f"var={var}", "-o")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.split("=>", 1)[1])[var]


@pytest.mark.parametrize("host,ports", [
    ("web1.multinotesai.com", [3903, 9100, 9113]),
    ("worker1.multinotesai.com", [9100]),
    ("redis1.multinotesai.com", [9100, 9121]),
    ("db1.multinotesai.com", [9100, 9104]),
    ("mon1.multinotesai.com", [9090, 9100]),
])
def test_production_firewall_opens_exporters_only_to_the_monitoring_host(host, ports):
    assert sorted(production_value(host, "base_firewall_monitoring_tcp_ports")) == ports
    assert production_value(host, "base_firewall_monitoring_sources") == ["10.0.1.51"]
