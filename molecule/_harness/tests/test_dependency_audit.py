"""The dependency audit, both ways, on real advisory records: the local OSV endpoint
(molecule/_harness/osv_server.py) over the PyPA advisory database snapshot, and the build's
audit (roles/app/files/dependency_audit.py) running the real pip-audit against it."""

import datetime
import importlib.util
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
AUDIT = ROOT / "roles" / "app" / "files" / "dependency_audit.py"
ADVISORY_DB = ROOT.parent / "shared" / "advisory-database"
sys.path.insert(0, str(ROOT / "molecule" / "_harness"))
import osv_server  # noqa: E402

spec = importlib.util.spec_from_file_location("dependency_audit", AUDIT)
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)

needs_db = pytest.mark.skipif(not (ADVISORY_DB / "vulns").is_dir(), reason=f"no advisory database at {ADVISORY_DB}")


@pytest.fixture(scope="module")
def osv_url():
    server = osv_server.make_server(ADVISORY_DB, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()


def query(url, name, version):
    body = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10) as reply:
        return json.load(reply)


@pytest.mark.parametrize("events,version,affected", [
    ([{"introduced": "0"}, {"fixed": "4.2.1"}], "4.2.0", True),
    ([{"introduced": "0"}, {"fixed": "4.2.1"}], "4.2.1", False),
    ([{"introduced": "4.0"}, {"fixed": "4.1.9"}, {"introduced": "4.2"}, {"fixed": "4.2.1"}], "4.1.10", False),
    ([{"introduced": "4.0"}, {"fixed": "4.1.9"}, {"introduced": "4.2"}, {"fixed": "4.2.1"}], "4.2.0", True),
    ([{"introduced": "1.0"}, {"last_affected": "1.5"}], "1.5", True),
    ([{"introduced": "1.0"}, {"last_affected": "1.5"}], "1.5.1", False),
    ([{"introduced": "0"}], "99.0", True),
])
def test_osv_range_semantics(events, version, affected):
    assert osv_server.in_range(osv_server.Version(version), events) is affected


@needs_db
def test_endpoint_answers_real_records_for_an_old_django(osv_url):
    ids = {v["id"] for v in query(osv_url, "Django", "4.2.0")["vulns"]}
    assert "PYSEC-2023-61" in ids  # CVE-2023-31047, fixed in 4.2.1
    assert all(isinstance(v["published"], str) and v["published"].endswith("Z")
               for v in query(osv_url, "django", "4.2.0")["vulns"])


@needs_db
def test_endpoint_answers_nothing_for_a_clean_version_or_unknown_package(osv_url):
    assert query(osv_url, "django", "5.2.19") == {}
    assert query(osv_url, "no-such-package-here", "1.0") == {}


@needs_db
def test_endpoint_refuses_a_malformed_query(osv_url):
    req = urllib.request.Request(osv_url, data=b'{"version": "1"}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400


def run_audit(osv_url, requirements, allowlist=(), today=None):
    cmd = [sys.executable, str(AUDIT), "--requirements", str(requirements), "--osv-url", osv_url,
           "--allowlist", json.dumps(list(allowlist))]
    if today:
        cmd += ["--today", today]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@needs_db
def test_the_demo_release_passes(osv_url):
    proc = run_audit(osv_url, ROOT / "demo" / "requirements.txt")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "pass" and result["vulnerable"] == []
    assert result["packages"] == len([line for line in (ROOT / "demo" / "requirements.txt").read_text().splitlines()
                                      if line and not line.startswith("#")])


@needs_db
def test_a_release_pinning_a_vulnerable_django_fails_naming_package_advisory_and_fix(osv_url, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("Django==4.2.0\nsqlparse==0.5.0\n")
    proc = run_audit(osv_url, requirements)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "django 4.2.0: PYSEC-2023-61 (CVE-2023-31047), fixed in 4.2.1" in proc.stderr
    assert "sqlparse" not in proc.stderr
    assert json.loads(proc.stdout)["result"] == "fail"


LATEST_DJANGO_FIXES = ["PYSEC-2024-102", "PYSEC-2024-67", "PYSEC-2024-68", "PYSEC-2024-69", "PYSEC-2024-70"]


@needs_db
def test_an_allow_list_entry_allows_its_advisory_until_it_expires(osv_url, tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("Django==4.2.14\n")
    allow = [{"id": i, "package": "Django", "reason": "test", "expires": "2030-01-31"} for i in LATEST_DJANGO_FIXES]
    # A CVE alias is as good as the advisory's own id.
    allow[1]["id"] = "CVE-2024-41989"
    proc = run_audit(osv_url, requirements, allow, today="2030-01-31")
    assert proc.returncode == 0, proc.stderr
    assert any("allowed until 2030-01-31: test" in line for line in json.loads(proc.stdout)["allowed"])

    expired = run_audit(osv_url, requirements, allow, today="2030-02-01")
    assert expired.returncode == 1
    assert "its allow-list entry expired on 2030-01-31" in expired.stderr
    assert "PYSEC-2024-67" in expired.stderr and "fixed in 4.2.15" in expired.stderr


@pytest.mark.parametrize("entry,named", [
    ({"id": "PYSEC-1", "package": "django", "expires": "2030-01-01"}, "reason"),
    ({"id": "PYSEC-1", "package": "django", "reason": "x"}, "expires"),
    ({"id": "PYSEC-1", "package": "django", "reason": "x", "expires": "next year"}, "is not a date"),
])
def test_an_allow_list_entry_needs_a_reason_and_an_expiry_date(entry, named):
    errors = audit.check_allowlist([entry])
    assert len(errors) == 1 and named in errors[0] and "app_audit_allowlist[0]" in errors[0]


def test_fixed_in_names_the_first_fix_above_the_pin():
    assert audit.fixed_in("4.2.0", ["3.2.23", "4.1.13", "4.2.7"]) == "4.2.7"
    assert audit.fixed_in("4.2.0", []) == ""


def test_judge_blocks_what_is_not_allowed():
    report = {"dependencies": [{"name": "django", "version": "4.2.0", "vulns": [
        {"id": "PYSEC-A", "aliases": ["CVE-1"], "fix_versions": ["4.2.1"]},
        {"id": "PYSEC-B", "aliases": [], "fix_versions": ["4.2.2"]}]}]}
    allow = [{"id": "CVE-1", "package": "Django", "reason": "r", "expires": "2030-01-01"}]
    blocked, allowed, expired = audit.judge(report, allow, datetime.date(2029, 1, 1))
    assert [f["id"] for f in blocked] == ["PYSEC-B"] and [f["id"] for f in allowed] == ["PYSEC-A"] and not expired
