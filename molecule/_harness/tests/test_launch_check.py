"""The launch check's data and logic (roles/launch_check): the checks, the coverage map and
the checklist agree line for line; the verdict, the coverage counts and the host-side
runner behave as the report says.

The checklist is the role's copy (files/production-launch-checklist.md), kept equal to the
spec of record (../shared/seed/production-launch-checklist.md) where that is present.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "launch_check"
CHECKLIST = ROLE / "files" / "production-launch-checklist.md"
SEED = ROOT.parent / "shared" / "seed" / "production-launch-checklist.md"
RUNNER = ROLE / "files" / "run_checks.py"
GROUPS = {"web", "worker", "scheduler", "redis", "db", "lb", "monitoring"}


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lc = load("launch_check_filters", ROLE / "filter_plugins" / "launch_check.py")
runner = load("launch_check_runner", RUNNER)

CATALOG = [check for f in sorted((ROLE / "vars" / "checks").glob("*.yml"))
           for checks in yaml.safe_load(f.read_text()).values() for check in checks]
COVERAGE = yaml.safe_load((ROLE / "vars" / "coverage.yml").read_text())["__launch_check_coverage"]
LINES = lc.parse_checklist(CHECKLIST.read_text())
LINE_KEYS = {(e["section"], e["line"]) for e in LINES}
IDS = {c["id"] for c in CATALOG}
VERIFIES = [(c["id"], ref["section"], ref["line"]) for c in CATALOG for ref in c["verifies"]]
MAPPED_CHECKS = [(section, line, cid) for section, lines in COVERAGE.items()
                 for line, mapped in lines.items() for cid in mapped.get("checks", [])]


# -- the data: checklist, checks and coverage map agree --------------------------------

@pytest.mark.skipif(not SEED.exists(), reason="the spec of record is not beside this repository")
def test_the_roles_checklist_is_the_spec_of_record():
    assert CHECKLIST.read_bytes() == SEED.read_bytes(), f"copy {SEED} to {CHECKLIST} and map its new lines"


def test_every_box_of_the_checklist_is_parsed():
    boxes = [line for line in CHECKLIST.read_text().splitlines() if line.lstrip().startswith("- [ ] ")]
    assert len(LINES) == len(boxes) == 328


@pytest.mark.parametrize("entry", LINES, ids=lambda e: f"L{e['lineno']}")
def test_every_checklist_line_is_in_the_coverage_map(entry):
    mapped = COVERAGE.get(entry["section"], {}).get(entry["line"])
    assert mapped, f"add {entry['section']!r}: {entry['line']!r} to roles/launch_check/vars/coverage.yml"
    kinds = [k for k in lc.COVERAGE_KINDS if k in mapped]
    assert len(kinds) == 1 and set(mapped) == set(kinds), mapped
    if kinds[0] != "checks":
        assert str(mapped[kinds[0]]).strip(), "say why"


@pytest.mark.parametrize("cid,section,line", VERIFIES, ids=lambda v: str(v)[:40])
def test_each_checks_line_is_verbatim_in_the_checklist(cid, section, line):
    assert (section, line) in LINE_KEYS, f"{cid}: no line {line!r} under {section!r}"


@pytest.mark.parametrize("section,line,cid", MAPPED_CHECKS, ids=lambda v: str(v)[:40])
def test_every_check_the_map_names_exists(section, line, cid):
    assert cid in IDS


def test_the_map_and_the_checks_agree_on_what_verifies_what():
    assert lc.coverage_problems(LINES, COVERAGE, CATALOG) == []


def test_the_checks_are_well_formed():
    assert lc.catalog_problems(CATALOG, GROUPS) == []


@pytest.mark.parametrize("cid", sorted(IDS))
def test_each_check_runs_somewhere(cid):
    check = next(c for c in CATALOG if c["id"] == cid)
    assert check["hosts"] and all(s in GROUPS or s in lc.SPECIAL_HOSTS for s in check["hosts"])


# The ids of the launch check before it became data stay (the stack scenario, the README
# and people's notes name them).
@pytest.mark.parametrize("cid", [
    "base-services", "base-timers", "listeners", "logrotate", "web-services", "tls-versions", "certificate", "redirect",
    "health", "api-status", "debug-off", "header-strict-transport-security", "header-x-frame-options",
    "header-x-content-type-options", "header-referrer-policy", "header-content-security-policy", "header-permissions-policy",
    "check-deploy", "debug-env", "dependency-audit", "test-mail", "sentry-dsn", "celery-workers", "celery-beat",
    "redis-services", "redis-auth", "db-service", "db-remote-root", "db-runtime-no-ddl", "backup-drill", "backup-fresh",
    "backup-cron"])
def test_a_check_tests_name_exists(cid):
    assert cid in IDS


# Values from one home: the role reads other roles' values only through the shared
# multinotes_* names (with a fallback), never `other_role_var | default(...)` nor `__` internals.
ROLE_SOURCES = sorted(p for p in ROLE.rglob("*.yml")) + [ROOT / "playbooks" / "launch_check.yml"]


@pytest.mark.parametrize("path", ROLE_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_default_on_another_roles_variable(path):
    text = path.read_text()
    defaulted = re.findall(r"([\w\]\['.]+)\s*\|\s*default\(", text)
    # (first | default: a filter chain on groups[...], not a variable)
    foreign = [v for v in defaulted if not re.match(r"(multinotes_|launch_check_|groups\[|ansible_facts|first$)", v)]
    assert not foreign, foreign
    internals = [v for v in re.findall(r"\b__[a-z]\w*", text) if not v.startswith("__launch_check_")]
    assert not internals, internals


# -- which checks a host runs -----------------------------------------------------------

def chosen(host, groups, app_hosts, scheduler=""):
    return {c["id"] for c in lc.select_checks(CATALOG, host, groups, app_hosts, scheduler)}


def test_a_host_in_every_group_runs_every_check():
    assert chosen("one", ["web", "worker", "scheduler", "redis", "db", "lb", "monitoring"], ["one"], "one") == IDS


def test_the_monitoring_checks_run_on_the_monitoring_hosts_only():
    monitoring_checks = {"monitoring-targets", "monitoring-alerts"}
    assert chosen("mon1", ["monitoring"], ["web1"]) == monitoring_checks | {c["id"] for c in CATALOG if "all" in c["hosts"]}
    assert not monitoring_checks & chosen("web1", ["web", "worker", "scheduler", "redis", "db"], ["web1"], "web1")


def test_the_balancer_checks_run_on_the_balancer_only():
    lb_checks = {"lb-backends", "lb-private"}
    assert lb_checks <= {c["id"] for c in lc.select_checks(CATALOG, "lb1", ["lb"], ["web1"], "w1", ["lb1"])}
    assert not lb_checks & chosen("web1", ["web"], ["web1"])


def test_a_second_web_host_runs_no_once_per_run_check():
    second = chosen("web2", ["web"], ["web1", "web2"], "worker1")
    assert {"tls-versions", "health", "check-deploy", "debug-env"} <= second
    assert not {"test-mail", "sentry-dsn", "migrations", "celery-beat", "redis-auth", "backup-drill"} & second


def test_the_first_app_host_sends_the_one_test_mail():
    assert "test-mail" in chosen("web1", ["web"], ["web1", "web2"])


def test_only_the_first_scheduler_checks_beat():
    assert "celery-beat" in chosen("w1", ["worker", "scheduler"], ["w1"], "w1")
    assert "celery-beat" not in chosen("w2", ["worker", "scheduler"], ["w1", "w2"], "w1")


def test_a_database_host_runs_the_database_and_backup_checks_only():
    assert chosen("db1", ["db"], ["web1"]) == {c["id"] for c in CATALOG if {"all", "db"} & set(c["hosts"])}



EDGE = {"certificate", "tls-versions", "redirect", "header-strict-transport-security", "static-files", "health",
        "api-status", "debug-off"}


def test_behind_a_balancer_the_public_checks_run_on_the_balancer_not_the_web_hosts():
    web = {c["id"] for c in lc.select_checks(CATALOG, "web1", ["web"], ["web1", "web2"], "w1", ["lb1"])}
    lb = {c["id"] for c in lc.select_checks(CATALOG, "lb1", ["lb"], ["web1", "web2"], "w1", ["lb1"])}
    assert EDGE <= lb and not EDGE & web
    assert {"web-services", "nginx-config"} <= web - lb


def test_without_a_balancer_the_web_hosts_are_the_edge():
    assert EDGE <= {c["id"] for c in lc.select_checks(CATALOG, "web1", ["web"], ["web1"], "w1", ["web1"])}
    assert EDGE <= chosen("web1", ["web"], ["web1"])

def test_select_keeps_only_what_the_runner_needs():
    picked = lc.select_checks(CATALOG, "one", ["web", "worker", "scheduler", "redis", "db"], ["one"], "one")
    assert all(set(c) <= {"id", "title", "cmd", "off_when"} for c in picked)
    assert next(c for c in picked if c["id"] == "test-mail")["off_when"] == "^SMTP off"


# -- the verdict and the coverage -------------------------------------------------------

def items(host="h1", failed=(), off=(), ids=None):
    return [{"host": host, "id": cid, "title": cid.title(), "ok": cid not in failed, "off": cid in off,
             "rc": 1 if cid in failed else 0, "evidence": "e"} for cid in sorted(ids or IDS)]


def make_report(its, hosts=("h1",)):
    return lc.report(its, list(hosts), CATALOG, CHECKLIST.read_text(), COVERAGE, "20260101T000000Z", "test")


def test_all_checks_passing_is_go_and_says_what_the_checklist_still_needs():
    rep = make_report(items())
    cov = rep["coverage"]["summary"]
    assert rep["verdict"] == "GO" and rep["failed"] == [] and rep["passed"] == len(IDS)
    assert cov["lines"] == 328 and cov["failed"] == cov["off"] == cov["not run"] == 0
    assert cov["verified"] + cov["out of scope"] + cov["not yet verified"] == 328
    assert cov["verified"] == len({(s, l) for _, s, l in VERIFIES})
    line = lc.summary_line(rep)
    assert line.startswith(f"GO ({len(IDS)}/{len(IDS)} items pass); checklist: {cov['verified']} of 328 lines verified, ")
    assert f"{cov['out of scope']} out of scope, {cov['not yet verified']} not yet verified" in line


def test_one_failed_check_is_no_go_naming_the_host_and_check_and_failing_its_lines():
    rep = make_report(items() + items("h2", failed={"redis-services"}), hosts=("h1", "h2"))
    assert rep["verdict"] == "NO-GO" and rep["failed"] == ["h2: redis-services"]
    rows = {(r["section"], r["line"]): r for r in rep["coverage"]["rows"]}
    row = rows[("Redis & Celery Configuration > Redis Setup", "Redis server running and accessible")]
    assert row["status"] == "failed"
    assert {"id": "redis-services", "result": "fail"} in row["checks"] and {"id": "health", "result": "pass"} in row["checks"]
    assert lc.summary_line(rep).startswith(f"NO-GO ({2 * len(IDS) - 1}/{2 * len(IDS)} items pass)")


def test_an_unchecked_host_is_no_go():
    rep = make_report(items(), hosts=("h1", "h2"))
    assert rep["verdict"] == "NO-GO" and rep["unreachable"] == ["h2"]


def test_nothing_checked_is_no_go():
    assert make_report([], hosts=())["verdict"] == "NO-GO"


def test_a_feature_switched_off_passes_but_verifies_none_of_its_lines():
    rep = make_report(items(off={"test-mail"}))
    assert rep["verdict"] == "GO"
    rows = {(r["section"], r["line"]): r for r in rep["coverage"]["rows"]}
    assert rows[("Environment Setup > Email Configuration", "Test email delivery working")]["status"] == "off"
    assert rep["coverage"]["summary"]["off"] == 1


def test_a_line_whose_checks_ran_nowhere_is_not_verified():
    rep = make_report(items(ids=IDS - {"backup-drill"}))
    rows = [r for r in rep["coverage"]["rows"] if r["line"] == "Backup restoration tested successfully"]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"not run"}


def test_a_line_missing_from_the_map_shows_as_not_yet_verified():
    text = CHECKLIST.read_text() + "\n## New\n### Part\n- [ ] Something new\n"
    rep = lc.report(items(), ["h1"], CATALOG, text, COVERAGE, "s", "")
    assert rep["coverage"]["rows"][-1]["status"] == "not yet verified"
    assert "not in the coverage map" in rep["coverage"]["rows"][-1]["why"]
    assert lc.coverage_problems(lc.parse_checklist(text), COVERAGE, CATALOG) == [
        "checklist line 1035 is not in the coverage map: New > Part: 'Something new'"]


def test_the_checklist_parser_ignores_code_blocks_and_keeps_sections():
    text = "## A\n### B\n- [ ] one\n```\n## Not a section\n- [ ] not a box\n```\n- [ ] two\n## C\n- [ ] three\n"
    assert [(e["section"], e["line"]) for e in lc.parse_checklist(text)] == [("A > B", "one"), ("A > B", "two"), ("C", "three")]


def test_the_map_refuses_a_line_claimed_by_no_check():
    bad = json.loads(json.dumps(COVERAGE))
    bad["Security Audit > HTTPS & SSL"]["SSL Labs test score A or A+ (https://www.ssllabs.com/ssltest/)"] = {"checks": ["tls-versions"]}
    problems = lc.coverage_problems(LINES, bad, CATALOG)
    assert len(problems) == 1 and "the checks verifying it are []" in problems[0]


def test_the_map_refuses_an_unknown_check():
    bad = json.loads(json.dumps(COVERAGE))
    bad["Security Audit > HTTPS & SSL"]["HTTP to HTTPS redirect working"] = {"checks": ["redirect", "nope"]}
    assert any("unknown check nope" in p for p in lc.coverage_problems(LINES, bad, CATALOG))


# -- the templates render what the report holds ----------------------------------------

def render(name, rep):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, keep_trailing_newline=True)
    env.filters.update({"launch_check_md_cell": lc.md_cell, "launch_check_by_h2": lc.by_h2,
                        "comment": lambda text, style="plain": f"# {text}",
                        "combine": lambda a, b: {**a, **b}, "to_nice_json": lambda v: json.dumps(v, indent=4)})
    return env.get_template(name).render(launch_check_report=rep, launch_check_summary=lc.summary_line(rep),
                                         ansible_managed="Ansible managed")


def test_the_markdown_report_has_a_row_per_checklist_line_and_names_failures():
    rep = make_report(items(failed={"health"}))
    md = render("report.md.j2", rep)
    assert "# Launch check: NO-GO" in md and "- **h1: Health** (`health`)" in md
    assert md.count("\n| ") - md.count("\n|---") >= 328 + len(IDS)
    assert "| Final Verification | All health check endpoints responding | **FAILED** | `health` fail, `api-status` pass |" in md
    assert "| HTTPS & SSL | SSL Labs test score A or A+ (https://www.ssllabs.com/ssltest/) | out of scope |" in md


def test_the_json_report_is_the_report():
    rep = make_report(items())
    data = json.loads(render("report.json.j2", rep))
    assert data["verdict"] == "GO" and len(data["coverage"]["rows"]) == 328 and data["summary"].startswith("GO (")


# -- the host-side runner ---------------------------------------------------------------

@pytest.mark.parametrize("cmd,ok,evidence", [
    ("echo fine", True, "fine"),
    ("echo broken >&2; false", False, "broken"),
    # pipefail: a failure early in a pipe is a failure
    ("false | cat", False, "exit 1"),
    ("printf 'a\\nb\\n' | none", False, "a\nb"),
    ("true | none && echo clean", True, "clean"),
])
def test_the_runner_judges_by_exit_code_and_keeps_the_output(cmd, ok, evidence):
    got = runner.run_one("h", {"id": "x", "title": "X", "cmd": cmd})
    assert (got["ok"], got["evidence"]) == (ok, evidence)


# Under pipefail, a reader that stops early (grep -q, head) kills the writer with SIGPIPE
# once the writer has more to write, and the check fails on a healthy host. bash's echo
# writes a line at a time to a pipe, so `echo "$var" | grep -q` is a race even on a few
# lines; a here-string has no writer to kill.
def test_a_reader_that_stops_early_fails_an_echo_pipe_but_not_a_here_string():
    piped = runner.run_one("h", {"id": "p", "title": "P", "cmd": 'v=$(seq 30000); echo "$v" | grep -q "^1$"'})
    here = runner.run_one("h", {"id": "s", "title": "S", "cmd": 'v=$(seq 30000); grep -q "^1$" <<<"$v"'})
    assert (piped["ok"], piped["rc"], here["ok"]) == (False, 141, True)


ECHO_PIPE = re.compile(r"""\b(echo|printf)\s+("\$[^"]*"|\$\w+)\s*\|""")


@pytest.mark.parametrize("cid", sorted(IDS))
def test_no_check_pipes_a_variable_from_echo(cid):
    cmd = next(c for c in CATALOG if c["id"] == cid)["cmd"]
    assert not ECHO_PIPE.search(cmd), f"{cid}: feed the variable to its reader as a here-string (<<<\"$var\")"


def test_the_runner_reports_off_only_for_a_passing_check_that_says_so():
    off = {"id": "m", "title": "M", "cmd": "echo 'SMTP off (not set)'", "off_when": "^SMTP off"}
    assert runner.run_one("h", off)["off"] is True
    assert runner.run_one("h", {**off, "cmd": "echo accepted by relay"})["off"] is False
    assert runner.run_one("h", {**off, "cmd": "echo 'SMTP off'; exit 1"})["off"] is False


def test_the_runner_stops_a_hanging_check():
    got = runner.run_one("h", {"id": "t", "title": "T", "cmd": "echo started; sleep 30"}, timeout=1)
    assert not got["ok"] and got["evidence"].startswith("timed out after 1 s")


def test_the_runner_keeps_the_evidence_short():
    got = runner.run_one("h", {"id": "l", "title": "L", "cmd": "yes | head -c 5000"})
    assert len(got["evidence"]) == runner.EVIDENCE_CHARS


def test_the_runner_as_ansible_calls_it():
    checks = [{"id": "a", "title": "A", "cmd": "echo one"}, {"id": "b", "title": "B", "cmd": "exit 3"}]
    done = subprocess.run([sys.executable, "-c", RUNNER.read_text(), "host1", "10"], input=json.dumps(checks),
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [
        {"host": "host1", "id": "a", "title": "A", "ok": True, "off": False, "rc": 0, "evidence": "one"},
        {"host": "host1", "id": "b", "title": "B", "ok": False, "off": False, "rc": 3, "evidence": "exit 3"}]
