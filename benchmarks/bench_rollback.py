#!/usr/bin/env python3
"""Benchmark 3, deploy and rollback under load: a load generator on the controller keeps
requesting https://multinotes.localhost:8443/health/ (through nginx) while
`playbooks/deploy.yml` and then `playbooks/rollback.yml` (code only) run. Reports the
wall time of each and the requests that failed during each. Goals: rollback < 30 s, zero
failed requests.

    python3 benchmarks/bench_rollback.py [--inventory inventories/local] [-- extra ansible-playbook args]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The ansible-playbook beside this Python (the venv), else the one on PATH.
ANSIBLE_PLAYBOOK = str(next((p for p in [Path(sys.executable).parent / "ansible-playbook"] if p.exists()), "ansible-playbook"))
HERE = Path(__file__).resolve().parent


def under_load(args, playbook_args):
    """Run one playbook while loadgen runs; loadgen stops a little after the playbook ends."""
    load = subprocess.Popen(
        [sys.executable, str(HERE / "loadgen.py"), "--url", "https://127.0.0.1:8443/health/",
         "--host", "multinotes.localhost", "--insecure", "--connections", str(args.connections),
         "--duration", str(args.max_seconds)], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    started = time.monotonic()
    result = subprocess.run([ANSIBLE_PLAYBOOK, *playbook_args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    load.wait()
    return result, round(seconds, 1), json.loads(load.stdout.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=300, help="load runs this long per playbook")
    parser.add_argument("extra", nargs="*", help="more ansible-playbook arguments")
    args = parser.parse_args()
    missing = [p for p in ("playbooks/deploy.yml", "playbooks/rollback.yml") if not (ROOT / p).exists()]
    if missing:
        print(f"bench_rollback: {', '.join(missing)} not in this checkout yet (issue #7); nothing measured.")
        return 2
    rows = []
    for name in ("deploy", "rollback"):
        result, seconds, load = under_load(args, ["-i", args.inventory, f"playbooks/{name}.yml", *args.extra])
        if result.returncode:
            print(result.stdout[-3000:], file=sys.stderr)
            return 1
        rows.append((name, seconds, load))
    print("| playbook | wall s | requests during it | failed | statuses |")
    print("|---|---|---|---|---|")
    for name, seconds, load in rows:
        print(f"| {name}.yml | {seconds} | {load['requests']} | {load['failed']} | {load['statuses']} |")
    print("\nLoad: the requests counted span the playbook plus about 2 s before it and until the generator's end.")
    rollback = rows[1]
    return 0 if rollback[1] < 30 and all(r[2]["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
