#!/usr/bin/env python3
"""Run one host's launch checks and print their verdicts as JSON.

The launch_check role passes this file to `python3 -c` (nothing is written on the host)
with the host's checks on stdin, a JSON list of {"id", "title", "cmd", "off_when"?}:

    python3 run_checks.py HOSTNAME [TIMEOUT_SECONDS] < checks.json

Each cmd runs in its own bash with `set -o pipefail` and two helpers (PRELUDE); exit 0 is
a pass, and its stdout and stderr together are the evidence. A passing check whose output
matches its off_when regex is reported "off": its feature is switched off, so it passed
without proving anything. Prints one JSON list: {"host", "id", "title", "ok", "off",
"rc", "evidence"} per check, in order. Exits 0 whatever the verdicts (they are data).
"""

import json
import re
import subprocess
import sys

# units_ok: each unit active and enabled (prints each one's state);
# none: passes its input on, and fails if there was any.
PRELUDE = r"""
units_ok() { local bad=0 u a e; for u in "$@"; do a=$(systemctl is-active "$u"); e=$(systemctl is-enabled "$u");
  echo "$u: $a, $e"; [ "$a,$e" = "active,enabled" ] || bad=1; done; return $bad; }
none() { local n=0 l; while IFS= read -r l; do echo "$l"; n=$((n + 1)); done; [ "$n" -eq 0 ]; }
set -o pipefail
"""
# What the report keeps of a check's output.
EVIDENCE_CHARS = 600
DEFAULT_TIMEOUT = 120


def run_one(host, check, timeout=DEFAULT_TIMEOUT):
    """Run one check; return its verdict and evidence."""
    try:
        done = subprocess.run(["bash", "-c", PRELUDE + check["cmd"]], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        rc, output = done.returncode, done.stdout.decode(errors="replace").strip()
    except subprocess.TimeoutExpired as exc:
        rc = 124
        partial = (exc.stdout or b"").decode(errors="replace").strip()
        output = f"timed out after {timeout} s" + (f": {partial}" if partial else "")
    ok = rc == 0
    off_when = check.get("off_when") or ""
    off = ok and bool(off_when) and re.search(off_when, output, re.MULTILINE) is not None
    return {"host": host, "id": check["id"], "title": check["title"], "ok": ok, "off": off, "rc": rc,
            "evidence": output[:EVIDENCE_CHARS] or f"exit {rc}"}


def run_all(host, checks, timeout=DEFAULT_TIMEOUT):
    return [run_one(host, check, timeout) for check in checks]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        sys.stderr.write("usage: run_checks.py HOSTNAME [TIMEOUT_SECONDS] < checks.json\n")
        return 2
    timeout = int(argv[1]) if len(argv) == 2 else DEFAULT_TIMEOUT
    checks = json.load(sys.stdin)
    json.dump(run_all(argv[0], checks, timeout), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
