#!/usr/bin/env python3
"""`make test`: lint, syntax, controller pytest, and every Molecule scenario.

The controller-side steps run one after another beside the scenarios. The scenarios run
in MULTINOTES_LANES parallel lanes (default 3): each has its own
containers, Docker network and Molecule state, and most of a scenario's time is spent
waiting on containers, not on the CPU. The longest scenarios (as measured by the last
run on this machine) start first. Each scenario's full output goes to
.cache/logs/<scenario>.log; its test summary is printed when it ends, and on failure
the last 150 lines of its log. Then a table of steps and times, and last the summary
line ("test: N passed, N failed"). Exits non-zero if any step failed. A lock keeps two
runs on one machine from destroying each other's containers.
"""

import fcntl
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MULTINOTES_STATE_DIR", "/var/lib/multinotes-harness"))
LOCK = STATE / "test.lock"
DURATIONS = STATE / "scenario-durations.json"
SEEDED = Path(__file__).resolve().parent / "scenario-durations.json"
LOGS = ROOT / ".cache" / "logs"
# Scenarios whose hosts run one Debian in `make test` (MULTINOTES_DEBIAN picks the image in
# their molecule.yml); `make test-matrix` (MULTINOTES_MATRIX=full) runs them on the other too.
OTHER_DEBIAN = {"app": "13", "stack": "12"}
# pytest's one-line verdicts of a failed scenario's tests ("FAILED tests/x.py::test - msg"),
# printed again just above the summary line: CI keeps the tail of the output, and a failure's
# details, 150 lines up in a parallel run, had scrolled out of it.
VERDICT_CHARS = 600
# A test's verdict names it (path::test); Molecule's and Ansible's own "ERROR ..." and
# "FAILED - RETRYING" lines do not.
VERDICT = re.compile(r"(FAILED|ERROR) \S+::")


def durations():
    """Each scenario's seconds: this machine's last passing run, else the durations measured
    in CI and kept in the repository."""
    known = json.loads(SEEDED.read_text())
    try:
        known.update(json.loads(DURATIONS.read_text()))
    except (OSError, ValueError):
        pass
    return known


def scenarios():
    names = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    only = os.environ.get("SCENARIOS")
    names = [n for n in names if n in only.split()] if only else names
    # Longest first; a scenario timed nowhere counts as the longest.
    known = durations()
    return sorted(names, key=lambda n: -known.get(n, float("inf")))


def plan_lanes(names, known, lanes):
    """The scenarios split into `lanes` queues whose longest total is the smallest possible
    (each queue longest first). Starting the longest first and giving each next scenario to
    the first free lane (what a pool does) is not that: with the stack scenario alone at
    1930 s of 6600, it ended the run at 2458 s where 2260 s was possible. A handful of
    scenarios: every assignment is tried (lanes ** n, 2187 for seven). A scenario timed
    nowhere counts as the longest known, so it gets a lane of its own early."""
    names = sorted(names, key=lambda n: -known.get(n, 0))
    ceiling = max([known[n] for n in names if n in known], default=1)
    cost = {n: known.get(n, ceiling) for n in names}
    if len(names) > 10:  # beyond exhaustive search: the first free lane, longest first
        queues = [[] for _ in range(lanes)]
        for name in names:
            min(queues, key=lambda q: sum(cost[n] for n in q)).append(name)
        return [q for q in queues if q]
    best, best_span = None, float("inf")
    # Lanes are interchangeable: the longest scenario goes to the first, the rest anywhere.
    for rest in itertools.product(range(lanes), repeat=max(len(names) - 1, 0)):
        assignment = (0,) + rest if names else ()
        totals = [0] * lanes
        for name, lane in zip(names, assignment):
            totals[lane] += cost[name]
        span = max(totals)
        if span < best_span:
            best, best_span = assignment, span
    queues = [[n for n, lane in zip(names, best or ()) if lane == i] for i in range(lanes)]
    return [q for q in queues if q]


def run_step(name, cmd):
    """One controller-side step; its output is printed whole when it ends (the scenarios run
    beside it and print their own lines)."""
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - started
    status = "PASSED" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"\n===== {name}: {' '.join(cmd)}\n{proc.stdout.rstrip()}\n===== {name}: {status} in {seconds:.0f} s",
          flush=True)
    return name, proc.returncode, seconds, []


def run_static_steps():
    return [run_step(name, ["make", "--no-print-directory", name]) for name in ("lint", "syntax", "pytest")]


def failed_verdicts(lines):
    """pytest's one-line verdicts of failed and erroring tests in a scenario's log."""
    return [line[:VERDICT_CHARS] for line in lines if VERDICT.match(line)]


def run_scenario(name, debian=None):
    label = f"{name}@debian-{debian}" if debian else name
    log = LOGS / f"{label}.log"
    print(f"===== scenario {label}: started (log: {log.relative_to(ROOT)})", flush=True)
    started = time.monotonic()
    env = dict(os.environ, **({"MULTINOTES_DEBIAN": debian} if debian else {}))
    with open(log, "w") as out:
        rc = subprocess.run(["molecule", "test", "-s", name], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.monotonic() - started
    lines = log.read_text(errors="replace").splitlines()
    summary = [line for line in lines if " passed" in line and "==" in line or "SCENARIO RECAP" in line
               or line.startswith(f"{name} ") and "actions=" in line]
    report = [f"===== scenario {label}: {'PASSED' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s"]
    report += [f"  {line}" for line in summary]
    if rc:
        report += [f"----- last 150 lines of {log.relative_to(ROOT)}:"] + lines[-150:]
    print("\n".join(report), flush=True)
    return f"scenario {label}", rc, seconds, failed_verdicts(lines) if rc else []


def main():
    STATE.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"testall: another test run holds {LOCK}; wait for it to finish.", file=sys.stderr)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    lanes = max(1, int(os.environ.get("MULTINOTES_LANES", "3")))
    names = scenarios()
    # The controller-side steps (lint, syntax, pytest: about 3 minutes, mostly one core) run
    # beside the scenarios instead of before them: the longest scenario is the critical path,
    # and its first minutes are container boots that leave the CPU idle.
    print(f"\n===== lint, syntax, pytest beside the scenarios; scenarios, {lanes} lane(s), "
          f"longest first: {' '.join(names)}", flush=True)
    queues = plan_lanes(names, durations(), lanes)
    print("===== lanes: " + " | ".join(" ".join(q) for q in queues), flush=True)
    with ThreadPoolExecutor(max_workers=1) as static_pool, ThreadPoolExecutor(max_workers=lanes) as pool:
        static = static_pool.submit(run_static_steps)
        done = pool.map(lambda queue: [run_scenario(name) for name in queue], queues)
        by_name = {r[0].split(" ", 1)[1]: r for lane in done for r in lane}
        scenario_results = [by_name[n] for n in names]
        if os.environ.get("MULTINOTES_MATRIX") == "full":
            # After the first pass: the same scenario twice at once would share container names.
            extra = [(n, OTHER_DEBIAN[n]) for n in names if n in OTHER_DEBIAN]
            print(f"\n===== matrix: {' '.join(f'{n}@debian-{d}' for n, d in extra)}", flush=True)
            matrix_results = list(pool.map(lambda nd: run_scenario(*nd), extra))
        else:
            matrix_results = []
    results = static.result() + scenario_results + matrix_results
    try:
        known = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        known = {}
    known.update({name.split(" ", 1)[1]: round(seconds) for name, rc, seconds, _ in scenario_results if rc == 0})
    DURATIONS.write_text(json.dumps(known, indent=1, sort_keys=True))
    print("\nstep                                 result   seconds")
    for name, rc, seconds, _ in results:
        print(f"{name:<36} {'passed' if rc == 0 else 'FAILED':<8} {seconds:7.0f}")
    for name, rc, _, verdicts in results:
        if rc and name.startswith("scenario "):
            label = name.split(" ", 1)[1]
            print(f"\n{name} failed:", *(verdicts or [f"(no test failed: see .cache/logs/{label}.log)"]), sep="\n  ")
    failed = sum(1 for _, rc, _, _ in results if rc)
    print(f"test: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
