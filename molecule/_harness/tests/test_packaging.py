"""The roles as the multinotes.platform collection (galaxy.yml) and the execution
environment (execution-environment.yml): what the built tarball holds, and that both files
carry the repository's own pins. The redis scenario runs a role from the installed tarball."""

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
EE = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/main.yml"))
# What a collection needs besides its roles: ansible-galaxy's two manifests, the readme and
# changelog, and meta/runtime.yml.
COLLECTION_FILES = {"MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.md", "meta/runtime.yml"}
# What a working tree holds besides its tracked files: none of it may reach the tarball.
JUNK = [".venv/bin/python", ".cache/facts/host", ".pytest_cache/v/x", "reports/launch-check/latest.md",
        "roles/app/files/__pycache__/release.cpython-311.pyc", "roles/redis/files/x.pyc",
        "benchmarks/out/run.csv", "multinotes-platform-0.9.0.tar.gz"]
MAX_BYTES = 512 * 1024


def pins(path):
    """{lower-cased name: version} of every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line)
        if m:
            found[m.group(1).lower()] = m.group(2)
    return found


def tracked(*pathspec):
    out = subprocess.run(["git", "ls-files", "--", *pathspec], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    """Build from a copy of the tracked files plus the junk a working tree has."""
    tree = tmp_path_factory.mktemp("tree")
    for name in tracked():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    for name in JUNK:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("junk\n")
    out = tmp_path_factory.mktemp("out")
    subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", str(out), str(tree)],
                   check=True, capture_output=True, text=True, timeout=120)
    (path,) = out.glob("*.tar.gz")
    with tarfile.open(path) as tar:
        members = {m.name for m in tar.getmembers() if m.isfile()}
    return path, members


def test_tarball_is_named_by_galaxy_yml(tarball):
    path, _ = tarball
    assert path.name == f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"


def test_tarball_holds_every_tracked_role_file_and_nothing_else_under_roles(tarball):
    _, members = tarball
    shipped = {m for m in members if m.startswith("roles/")}
    wanted = set(tracked("roles"))
    assert not wanted - shipped, f"role files build_ignore drops: {sorted(wanted - shipped)}"
    assert not shipped - wanted, f"untracked files under roles/ in the tarball: {sorted(shipped - wanted)}"
    assert sorted({m.split("/")[1] for m in shipped}) == ROLES


def test_tarball_holds_only_roles_and_what_a_collection_needs(tarball):
    _, members = tarball
    junk = sorted(m for m in members if not m.startswith("roles/") and m not in COLLECTION_FILES)
    assert not junk, f"build_ignore lets these into the collection: {junk}"
    assert COLLECTION_FILES <= members, f"missing: {sorted(COLLECTION_FILES - members)}"


def test_tarball_is_small(tarball):
    path, _ = tarball
    size = path.stat().st_size
    print(f"{path.name}: {size / 1024:.0f} KiB")
    assert size < MAX_BYTES, f"{path.name} is {size} bytes: something large got in"


def test_collection_declares_every_collection_its_roles_call_at_the_pinned_version():
    pinned = {c["name"]: c["version"]
              for c in yaml.safe_load((ROOT / "collections/requirements.yml").read_text())["collections"]}
    used = set()
    for name in tracked("roles"):
        if name.endswith((".yml", ".j2")):
            used |= {m for m in re.findall(r"\b([a-z_]+\.[a-z_]+)\.[a-z_]+", (ROOT / name).read_text())
                     if m in pinned}
    assert used, "no collection found in roles/: the scan is broken"
    assert sorted(GALAXY["dependencies"]) == sorted(used), "galaxy.yml dependencies differ from what roles/ calls"
    for name, spec in GALAXY["dependencies"].items():
        assert spec == f">={pinned[name]}", f"{name}: galaxy.yml says {spec}, collections/requirements.yml pins {pinned[name]}"


def test_runtime_requires_the_ansible_the_roles_declare():
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())
    declared = {yaml.safe_load((ROOT / "roles" / r / "meta/main.yml").read_text())["galaxy_info"]["min_ansible_version"]
                for r in ROLES}
    assert runtime["requires_ansible"] == f">={max(declared, key=lambda v: tuple(map(int, v.split('.'))))}.0"


def test_ee_installs_the_pinned_ansible_core_and_collections():
    controller = pins(ROOT / "requirements.txt")
    assert EE["version"] == 3
    assert EE["dependencies"]["ansible_core"]["package_pip"] == f"ansible-core=={controller['ansible-core']}"
    assert EE["dependencies"]["galaxy"] == "collections/requirements.yml"
    assert re.fullmatch(r"ansible-runner==[0-9.]+", EE["dependencies"]["ansible_runner"]["package_pip"])
    image = EE["images"]["base_image"]["name"]
    assert ":" in image and not image.endswith(":latest"), f"base image {image} has no fixed tag"


@pytest.mark.parametrize("requirement", EE["dependencies"]["python"])
def test_ee_python_requirement_is_pinned_as_the_controller_pins_it(requirement):
    name, _, version = requirement.partition("==")
    controller = pins(ROOT / "requirements.txt")
    assert version, f"{requirement}: not pinned with =="
    assert controller.get(name.lower()) == version, (
        f"{requirement}: requirements.txt pins {name} at {controller.get(name.lower())}")
