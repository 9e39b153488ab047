"""The shared contract (group_vars/all/): each shared value has one home, playbooks do not
re-derive role defaults or read role internals, and every role says what it reads."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = ROOT / "group_vars" / "all"
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
ENVIRONMENTS = sorted(p for p in (ROOT / "inventories").iterdir() if (p / "hosts.yml").exists())
PLAYBOOKS = sorted([ROOT / "site.yml", *(ROOT / "playbooks").glob("*.yml"), *(ROOT / "playbooks" / "tasks").glob("*.yml")])
SHARED = re.compile(r"\bmultinotes_[a-z0-9_]+\b")


def keys(path):
    return set(yaml.safe_load(path.read_text()) or {})


def contract():
    """{name: [files of group_vars/all/ defining it]}."""
    found = {}
    for path in sorted(CONTRACT.glob("*.yml")):
        for name in keys(path):
            found.setdefault(name, []).append(path.name)
    return found


def role_defaults():
    return {name: role.name for role in ROLES for path in (role / "defaults").glob("*.yml") for name in keys(path)}


def environment_inputs():
    """Names every environment's inventory sets (secrets, the alert hook...)."""
    sets = [set().union(*(keys(p) for p in (env / "group_vars").glob("*.yml"))) for env in ENVIRONMENTS]
    return set.intersection(*sets)


def role_text(role):
    return "\n".join(p.read_text() for p in sorted(role.rglob("*")) if p.is_file() and p.suffix in {".yml", ".j2", ".py"}
                     and "README" not in p.name)


def test_each_shared_value_has_exactly_one_definition():
    twice = {name: files for name, files in contract().items() if len(files) > 1}
    assert not twice, f"defined in more than one file of group_vars/all/: {twice}"
    # A shared value is set in the contract or by the environment, never by a role or a playbook.
    shared = {name for name in contract() if name.startswith("multinotes_")}
    for role in ROLES:
        for path in [*(role / "defaults").glob("*.yml"), *(role / "vars").glob("*.yml")]:
            assert not shared & keys(path), f"{path.relative_to(ROOT)} redefines {sorted(shared & keys(path))}"
    for playbook in PLAYBOOKS:
        assert not re.search(r"^\s+(%s):" % "|".join(shared), playbook.read_text(), re.M), (
            f"{playbook.relative_to(ROOT)} redefines a shared value")


@pytest.mark.parametrize("literal,home", [
    (r"/etc/\S*\.env\b", "multinotes_env_file"),
    (r"\b63(79|80|89|90)\b", "multinotes_redis_*_port"),
    (r"\b3306\b", "multinotes_db_port"),
    (r"/srv/", "multinotes_app_root"),
    (r"/var/lib/multinotes-backup", "multinotes_backup_state_dir"),
    (r"/etc/mysql/tls", "multinotes_db_tls_dir"),
    (r"\b91(00|21|13|04)\b|\b3903\b|\b8405\b", "multinotes_exporters"),
])
def test_playbooks_name_shared_paths_and_ports_by_their_one_home(literal, home):
    for playbook in PLAYBOOKS:
        text = "\n".join(line for line in playbook.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(literal, text), f"{playbook.relative_to(ROOT)} spells out what {home} names"


def test_no_playbook_or_contract_rederives_a_role_default():
    defaults = role_defaults()
    allowed = environment_inputs()
    for path in [*PLAYBOOKS, *sorted(CONTRACT.glob("*.yml"))]:
        for name in re.findall(r"\b([a-z][a-z0-9_]*)\s*\|\s*default\(", path.read_text()):
            assert name not in defaults or name in allowed, (
                f"{path.relative_to(ROOT)} re-derives {defaults[name]}'s default {name} with | default(...): "
                "read it from the contract, or have the role hand it over (an output)")


def test_no_playbook_reads_a_roles_internals():
    internal = re.compile(r"\b__(%s)_[a-z0-9_]+" % "|".join(role.name for role in ROLES))
    for playbook in PLAYBOOKS:
        found = internal.findall(playbook.read_text())
        assert not found, f"{playbook.relative_to(ROOT)} reads role internals: {sorted(set(found))}"


def shared_reads(role):
    """The shared values a role's files name (metric and zone names that merely begin with
    multinotes_ are not values)."""
    return set(SHARED.findall(role_text(role))) & (set(contract()) | environment_inputs())


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_role_readme_lists_the_shared_values_it_reads(role):
    reads = shared_reads(role)
    readme = (role / "README.md").read_text()
    missing = sorted(name for name in reads if name not in readme)
    assert not missing, f"roles/{role.name}/README.md does not name the shared values it reads: {missing}"


def test_every_shared_value_a_role_default_reads_exists():
    defined = set(contract()) | environment_inputs()
    for role in ROLES:
        text = "\n".join(p.read_text() for p in sorted((role / "defaults").glob("*.yml")))
        expressions = "\n".join(re.findall(r"\{\{(.*?)\}\}", text, re.S))
        expressions = re.sub(r"'[^']*'", "''", expressions)  # fallback literals are not names
        unknown = sorted(set(SHARED.findall(expressions)) - defined)
        assert not unknown, f"roles/{role.name} reads shared values nobody defines: {unknown}"
