#!/usr/bin/env python3
"""`make test`: lint, syntax, controller pytest, then every Molecule scenario.

Each step's output streams as it runs; a table of steps and times follows, and the last
line is the summary ("test: N passed, N failed"). Exits non-zero if any step failed.
A lock keeps two runs on one machine from destroying each other's containers.
"""

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = Path(os.environ.get("MULTINOTES_STATE_DIR", "/var/lib/multinotes-harness")) / "test.lock"


def scenarios():
    names = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    only = os.environ.get("SCENARIOS")
    return [n for n in names if n in only.split()] if only else names


def main():
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"testall: another test run holds {LOCK}; wait for it to finish.", file=sys.stderr)
        return 2
    steps = [("lint", ["make", "--no-print-directory", "lint"]),
             ("syntax", ["make", "--no-print-directory", "syntax"]),
             ("pytest", ["make", "--no-print-directory", "pytest"])]
    steps += [(f"scenario {name}", ["molecule", "test", "-s", name]) for name in scenarios()]
    results = []
    for name, cmd in steps:
        print(f"\n===== {name}: {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        results.append((name, rc, time.monotonic() - started))
        print(f"===== {name}: {'PASSED' if rc == 0 else f'FAILED (exit {rc})'} in {results[-1][2]:.0f} s",
              flush=True)
    print("\nstep                                 result   seconds")
    for name, rc, seconds in results:
        print(f"{name:<36} {'passed' if rc == 0 else 'FAILED':<8} {seconds:7.0f}")
    failed = sum(1 for _, rc, _ in results if rc)
    print(f"test: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
