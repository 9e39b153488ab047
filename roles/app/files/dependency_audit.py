#!/usr/bin/env python3
"""Audit a release's pinned requirements for known vulnerabilities (pip-audit, OSV).

    dependency_audit.py --requirements FILE --osv-url URL [--allowlist JSON] [--pip-audit CMD]

Runs `pip-audit --no-deps --disable-pip -r FILE -s osv --osv-url URL -f json` and judges
its findings against an allow-list: [{"id": "PYSEC-2024-1" (or an alias, e.g. a CVE),
"package": "django", "reason": "...", "expires": "YYYY-MM-DD"}, ...]. An entry without a
reason or an expiry date is refused; an expired entry no longer allows anything. Prints
the result as JSON (stable for a given day, so a deploy that records it stays idempotent)
and exits 1 if any finding is not allowed, naming the package, the advisory and the
version that fixes it.
"""

import argparse
import datetime
import json
import shlex
import subprocess
import sys

from packaging.version import InvalidVersion, Version


def _v(text):
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def fixed_in(version, fix_versions):
    """The first fix above the pinned version (the upgrade to make), else every fix listed."""
    pinned = _v(version)
    above = sorted((v for v in map(_v, fix_versions) if v is not None and pinned is not None and v > pinned))
    return str(above[0]) if above else ", ".join(fix_versions)


def check_allowlist(allowlist):
    """Messages for malformed entries."""
    errors = []
    for index, entry in enumerate(allowlist):
        missing = [k for k in ("id", "package", "reason", "expires") if not str(entry.get(k) or "").strip()]
        if missing:
            errors.append(f"app_audit_allowlist[{index}] lacks {', '.join(missing)}: every entry names the "
                          "advisory and the package, says why, and expires (YYYY-MM-DD).")
            continue
        try:
            datetime.date.fromisoformat(str(entry["expires"]))
        except ValueError:
            errors.append(f"app_audit_allowlist[{index}].expires={entry['expires']!r} is not a date (YYYY-MM-DD).")
    return errors


def judge(report, allowlist, today):
    """(findings not allowed, findings allowed, expired entries used) from pip-audit's JSON."""
    blocked, allowed, expired = [], [], []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            finding = {"package": dep["name"], "version": dep["version"], "id": vuln["id"],
                       "aliases": vuln.get("aliases", []),
                       "fixed_in": fixed_in(dep["version"], vuln.get("fix_versions", []))}
            entry = next((e for e in allowlist if str(e.get("id")) in ids
                          and str(e.get("package", "")).lower().replace("_", "-") == dep["name"].lower()), None)
            if entry is None:
                blocked.append(finding)
            elif datetime.date.fromisoformat(str(entry["expires"])) < today:
                blocked.append(dict(finding, expired=str(entry["expires"])))
                expired.append(entry)
            else:
                allowed.append(dict(finding, reason=entry["reason"], expires=str(entry["expires"])))
    return blocked, allowed, expired


def message(finding):
    text = (f"{finding['package']} {finding['version']}: {finding['id']}"
            + (f" ({', '.join(finding['aliases'])})" if finding["aliases"] else "")
            + f", fixed in {finding['fixed_in'] or 'no release yet'}")
    if finding.get("expired"):
        text += f" (its allow-list entry expired on {finding['expired']})"
    return text


def run_pip_audit(command, requirements, osv_url, timeout):
    cmd = [*shlex.split(command), "--no-deps", "--disable-pip", "-r", str(requirements), "-s", "osv",
           "--osv-url", osv_url, "-f", "json", "--progress-spinner", "off", "--timeout", str(timeout)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"pip-audit could not audit {requirements} against {osv_url} (exit {proc.returncode}):\n"
                           + proc.stderr.strip()[-2000:]) from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", required=True)
    parser.add_argument("--osv-url", required=True)
    parser.add_argument("--allowlist", default="[]", help="JSON list of entries")
    parser.add_argument("--allowlist-file", help="a YAML or JSON file holding that list (instead of --allowlist)")
    parser.add_argument("--pip-audit", default=f"{sys.executable} -m pip_audit")
    parser.add_argument("--timeout", type=int, default=30)
    parser.add_argument("--today", type=datetime.date.fromisoformat, default=datetime.date.today())
    args = parser.parse_args(argv)

    if args.allowlist_file:
        import yaml

        with open(args.allowlist_file, encoding="utf-8") as f:
            allowlist = yaml.safe_load(f) or []
    else:
        allowlist = json.loads(args.allowlist)
    errors = check_allowlist(allowlist)
    if errors:
        sys.stderr.write("\n".join(errors) + "\n")
        return 2
    try:
        report = run_pip_audit(args.pip_audit, args.requirements, args.osv_url, args.timeout)
    except RuntimeError as exc:
        sys.stderr.write(f"dependency audit: {exc}\n")
        return 2
    blocked, allowed, _expired = judge(report, allowlist, args.today)
    result = {"result": "fail" if blocked else "pass", "audited_on": args.today.isoformat(),
              "osv_url": args.osv_url, "packages": len(report.get("dependencies", [])),
              "vulnerable": [message(f) for f in blocked],
              "allowed": [message(f) + f" (allowed until {f['expires']}: {f['reason']})" for f in allowed]}
    print(json.dumps(result, sort_keys=True))
    if blocked:
        sys.stderr.write(f"dependency audit: {len(blocked)} known vulnerabilit{'y' if len(blocked) == 1 else 'ies'} "
                         f"in {args.requirements}:\n" + "".join(f"  {message(f)}\n" for f in blocked)
                         + "Upgrade to the fixed version, or add an app_audit_allowlist entry "
                           "(id, package, reason, expires).\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
