"""The launch check's logic on the controller: which checks a host runs, the verdict, and
how the checks map onto every line of the launch checklist.

Checks are data (roles/launch_check/vars/checks/*.yml): id, title, hosts, cmd, verifies
[{section, line}], off_when. The coverage map (vars/coverage.yml) gives every checklist
line a status: {checks: [ids]}, {out_of_scope: why} or {not_yet: what is missing}.
Unit tests: molecule/_harness/tests/test_launch_check.py.
"""

import re

CHECKBOX = re.compile(r"^\s*- \[ \] (.+?)\s*$")
HEADING = re.compile(r"^(#{2,3}) (.+?)\s*$")
FENCE = re.compile(r"^\s*```")
# Host selectors besides group names.
SPECIAL_HOSTS = ("all", "app_hosts", "first_app_host", "first_scheduler", "edge")
COVERAGE_KINDS = ("checks", "out_of_scope", "not_yet")


def section_name(h2, h3):
    return f"{h2} > {h3}" if h3 else h2


def parse_checklist(text):
    """Every `- [ ]` line of the checklist, in order: {section: "H2 > H3", line, lineno}.
    Headings and boxes inside fenced code blocks (examples, report templates) do not count."""
    rows, h2, h3, fenced = [], "", "", False
    for lineno, raw in enumerate(text.splitlines(), 1):
        if FENCE.match(raw):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = HEADING.match(raw)
        if heading:
            if len(heading.group(1)) == 2:
                h2, h3 = heading.group(2), ""
            else:
                h3 = heading.group(2)
            continue
        box = CHECKBOX.match(raw)
        if box:
            rows.append({"section": section_name(h2, h3), "line": box.group(1), "lineno": lineno})
    return rows


def select_checks(catalog, host, group_names, app_hosts, first_scheduler="", edge_hosts=None):
    """The checks `host` runs: those whose `hosts` name one of its groups, `all`,
    `app_hosts` (it runs the app), `first_app_host`, `first_scheduler` or `edge` (it answers
    the public on 80/443: the balancers where there are any, else the web hosts; without the
    list, the web group)."""
    app_hosts = list(app_hosts or [])

    def runs_here(selector):
        if selector == "all":
            return True
        if selector == "app_hosts":
            return host in app_hosts
        if selector == "first_app_host":
            return bool(app_hosts) and host == app_hosts[0]
        if selector == "first_scheduler":
            return bool(first_scheduler) and host == first_scheduler
        if selector == "edge":
            return host in edge_hosts if edge_hosts is not None else "web" in group_names
        return selector in group_names

    chosen = []
    for check in catalog:
        if any(runs_here(s) for s in check["hosts"]):
            entry = {"id": check["id"], "title": check["title"], "cmd": check["cmd"]}
            if check.get("off_when"):
                entry["off_when"] = check["off_when"]
            chosen.append(entry)
    return chosen


def catalog_problems(catalog, known_groups=()):
    """What is wrong with the checks' data: duplicate ids, missing fields, unknown host selectors."""
    problems, seen = [], set()
    for check in catalog:
        cid = check.get("id", "?")
        for field in ("id", "title", "hosts", "cmd", "verifies"):
            if field not in check:
                problems.append(f"{cid}: no {field}")
        if cid in seen:
            problems.append(f"{cid}: id used twice")
        seen.add(cid)
        for selector in check.get("hosts", []):
            if selector not in SPECIAL_HOSTS and known_groups and selector not in known_groups:
                problems.append(f"{cid}: unknown hosts selector {selector!r}")
        for ref in check.get("verifies", []):
            if set(ref) != {"section", "line"}:
                problems.append(f"{cid}: a verifies entry needs exactly section and line: {ref}")
    return problems


def check_results(items):
    """Per check id: pass (ran, all passed, proved something), off (passed, feature off),
    fail (failed on some host); with the hosts it ran on."""
    results = {}
    for item in items:
        entry = results.setdefault(item["id"], {"hosts": [], "failed_hosts": [], "off": True})
        entry["hosts"].append(item["host"])
        if not item["ok"]:
            entry["failed_hosts"].append(item["host"])
        entry["off"] = entry["off"] and bool(item.get("off"))
    for entry in results.values():
        entry["result"] = "fail" if entry["failed_hosts"] else ("off" if entry["off"] else "pass")
    return results


def line_status(ids, results):
    """A verified line's status from its checks' results: failed if any failed; verified when
    every one ran and passed (a check that was off proves nothing); otherwise not run / off."""
    got = [results.get(cid, {}).get("result", "not run") for cid in ids]
    if "fail" in got:
        return "failed"
    if all(r == "pass" for r in got):
        return "verified"
    if "off" in got:
        return "off"
    return "not run"


def coverage_rows(checklist, coverage, catalog, results):
    """One row per checklist line: section, line, status, checks (id: result), why."""
    by_line = {}
    for check in catalog:
        for ref in check.get("verifies", []):
            by_line.setdefault((ref["section"], ref["line"]), []).append(check["id"])
    rows = []
    for entry in checklist:
        key = (entry["section"], entry["line"])
        mapped = (coverage.get(entry["section"]) or {}).get(entry["line"])
        ids = by_line.get(key, [])
        row = {"section": entry["section"], "line": entry["line"], "lineno": entry["lineno"], "checks": [], "why": ""}
        if ids:
            row["status"] = line_status(ids, results)
            row["checks"] = [{"id": cid, "result": results.get(cid, {}).get("result", "not run")} for cid in ids]
        elif mapped and "out_of_scope" in mapped:
            row["status"], row["why"] = "out of scope", mapped["out_of_scope"]
        elif mapped and "not_yet" in mapped:
            row["status"], row["why"] = "not yet verified", mapped["not_yet"]
        else:
            row["status"], row["why"] = "not yet verified", "not in the coverage map (vars/coverage.yml)"
        rows.append(row)
    return rows


def coverage_summary(rows):
    count = {status: sum(1 for r in rows if r["status"] == status)
             for status in ("verified", "failed", "off", "not run", "out of scope", "not yet verified")}
    count["lines"] = len(rows)
    count["with checks"] = count["verified"] + count["failed"] + count["off"] + count["not run"]
    return count


def coverage_problems(checklist, coverage, catalog):
    """Where the coverage map, the checks and the checklist disagree (a test keeps this empty)."""
    problems = []
    lines = {(e["section"], e["line"]) for e in checklist}
    ids = {c["id"] for c in catalog}
    by_line = {}
    for check in catalog:
        for ref in check.get("verifies", []):
            key = (ref["section"], ref["line"])
            if key not in lines:
                problems.append(f"check {check['id']} verifies a line not in the checklist: {ref['section']}: {ref['line']!r}")
            by_line.setdefault(key, set()).add(check["id"])
    for section, entries in coverage.items():
        for line, mapped in (entries or {}).items():
            if (section, line) not in lines:
                problems.append(f"coverage map names a line not in the checklist: {section}: {line!r}")
            kinds = [k for k in COVERAGE_KINDS if k in (mapped or {})]
            if len(kinds) != 1 or set(mapped) != set(kinds):
                problems.append(f"coverage of {section}: {line!r} needs exactly one of {', '.join(COVERAGE_KINDS)}: {mapped}")
                continue
            if kinds[0] == "checks":
                for cid in mapped["checks"]:
                    if cid not in ids:
                        problems.append(f"coverage of {section}: {line!r} names an unknown check {cid}")
                if set(mapped["checks"]) != by_line.get((section, line), set()):
                    problems.append(f"coverage of {section}: {line!r} names checks {sorted(mapped['checks'])}, "
                                    f"but the checks verifying it are {sorted(by_line.get((section, line), set()))}")
            elif not str(mapped[kinds[0]]).strip():
                problems.append(f"coverage of {section}: {line!r}: say why ({kinds[0]})")
            elif (section, line) in by_line:
                problems.append(f"coverage of {section}: {line!r} is {kinds[0]}, but checks verify it: "
                                f"{sorted(by_line[(section, line)])}")
    for entry in checklist:
        if (entry["line"] not in (coverage.get(entry["section"]) or {})):
            problems.append(f"checklist line {entry['lineno']} is not in the coverage map: {entry['section']}: {entry['line']!r}")
    return problems


def report(items, hosts, catalog, checklist_text, coverage, stamp, environment=""):
    """The whole report: verdict, items, per-check results, the coverage table and its counts.
    GO: every check that ran passed on every host, every host was checked, and something ran."""
    checked = sorted({i["host"] for i in items})
    unreachable = [h for h in hosts if h not in checked]
    failed = [i for i in items if not i["ok"]]
    results = check_results(items)
    rows = coverage_rows(parse_checklist(checklist_text), coverage, catalog, results)
    go = not failed and not unreachable and bool(items)
    checks = [{"id": c["id"], "title": c["title"], "result": results.get(c["id"], {}).get("result", "not run"),
               "hosts": results.get(c["id"], {}).get("hosts", []),
               "verifies": [f"{r['section']}: {r['line']}" for r in c.get("verifies", [])]} for c in catalog]
    return {
        "verdict": "GO" if go else "NO-GO",
        "time": stamp,
        "environment": environment,
        "hosts": list(hosts),
        "unreachable": unreachable,
        "failed": [f"{i['host']}: {i['id']}" for i in failed],
        "passed": sum(1 for i in items if i["ok"]),
        "items": list(items),
        "checks": checks,
        "coverage": {"summary": coverage_summary(rows), "rows": rows},
    }


def summary_line(rep):
    """The one line people and the Makefile read: the checks' verdict, then the checklist's coverage."""
    cov = rep["coverage"]["summary"]
    return (f"{rep['verdict']} ({rep['passed']}/{len(rep['items'])} items pass); checklist: "
            f"{cov['verified']} of {cov['lines']} lines verified, {cov['out of scope']} out of scope, "
            f"{cov['not yet verified']} not yet verified"
            + "".join(f", {cov[k]} {k}" for k in ("failed", "off", "not run") if cov[k]))


def by_h2(rows):
    """Coverage rows grouped by their top-level section, in checklist order: [(h2, rows)]."""
    groups = []
    for row in rows:
        h2 = row["section"].split(" > ")[0]
        if not groups or groups[-1][0] != h2:
            groups.append((h2, []))
        groups[-1][1].append(row)
    return groups


def md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", "<br>")


class FilterModule:
    def filters(self):
        return {
            "launch_check_select": select_checks,
            "launch_check_report": report,
            "launch_check_summary": summary_line,
            "launch_check_md_cell": md_cell,
            "launch_check_by_h2": by_h2,
        }
