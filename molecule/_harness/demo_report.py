#!/usr/bin/env python3
"""The end of `make demo`: say what runs where, the launch check's verdict and the URL to open."""

import json
import subprocess
from pathlib import Path

NAME, PORT = "multinotes.localhost", 8443
URL = f"https://{NAME}:{PORT}/"
REPORT = Path(__file__).resolve().parents[2] / "reports" / "launch-check" / "latest"


def probe():
    # *.localhost is loopback; --resolve makes sure of it and sends the right SNI name.
    # -k: the demo serves nginx's self-signed bootstrap certificate.
    result = subprocess.run(
        ["curl", "-sk", "--max-time", "5", "--resolve", f"{NAME}:{PORT}:127.0.0.1",
         "-o", "/dev/null", "-w", "%{http_code}", URL + "health/"], capture_output=True, text=True)
    code = result.stdout.strip()
    return f"/health/ HTTP {code}" if result.returncode == 0 and code != "000" else "no answer"


def verdict():
    try:
        report = json.loads(REPORT.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return "no launch check report"
    passed = sum(1 for item in report["items"] if item["ok"])
    line = f"{report['verdict']} ({passed}/{len(report['items'])} items pass) - {REPORT.with_suffix('.md')}"
    coverage = report.get("coverage", {}).get("summary")
    if coverage:
        # GO is about the checks; say how much of the checklist they cover.
        line += (f"\n  checklist: {coverage['verified']} of {coverage['lines']} lines verified by a check, "
                 f"{coverage['out of scope']} out of scope, {coverage['not yet verified']} not yet verified")
    return line


def main():
    print("\nThe demo is up: container multinotes-demo (web, worker, scheduler, redis, db) and")
    print("multinotes-demo-ops (its S3 store and alert receiver), converged by")
    print("`ansible-playbook -i inventories/local site.yml`, backed up and restore-drilled.")
    print(f"Launch check: {verdict()}")
    print(f"Open: {URL}   [{probe()}; self-signed certificate]")
    print("Remove it with: make demo-down")


if __name__ == "__main__":
    main()
