#!/usr/bin/env python3
"""Benchmark 2, converge: cold `site.yml` on a fresh demo container, then the no-op
rerun, on the same machine one after the other. Goal: the rerun reports changed=0 and
takes under 30% of the cold converge. Reports task counts and the slowest tasks
(ansible.posix.profile_tasks, enabled in ansible.cfg).

It REPLACES the demo container (destroy + create, as `make demo-down` and `make demo` do),
so it asks for --recreate-demo.

    python3 benchmarks/bench_converge.py --recreate-demo [--inventory inventories/local]
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The ansible-playbook beside this Python (the venv), else the one on PATH.
ANSIBLE_PLAYBOOK = str(next((p for p in [Path(sys.executable).parent / "ansible-playbook"] if p.exists()), "ansible-playbook"))
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)
TASK_TIME = re.compile(r"^(.+?) -{2,} (\d+\.\d+)s$", re.M)


def playbook(*args):
    started = time.monotonic()
    result = subprocess.run([ANSIBLE_PLAYBOOK, *args], cwd=ROOT, capture_output=True, text=True)
    return result, time.monotonic() - started


def converge(inventory):
    result, seconds = playbook("-i", inventory, "site.yml")
    hosts = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4]),
                    "skipped": int(m[5])} for m in RECAP.findall(result.stdout)}
    slowest = [(name.strip(), float(sec)) for name, sec in TASK_TIME.findall(result.stdout)][:10]
    return {"rc": result.returncode, "seconds": round(seconds, 1), "hosts": hosts, "slowest": slowest,
            "tail": result.stdout[-3000:] if result.returncode else ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recreate-demo", action="store_true", help="allow destroying the demo container")
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--containers", default="demo/containers.yml")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.recreate_demo:
        print("bench_converge: this replaces the demo container; pass --recreate-demo", file=sys.stderr)
        return 2
    for step in ("destroy", "create"):
        result, _ = playbook(f"molecule/_harness/{step}.yml", "-e", f"@{args.containers}")
        if result.returncode:
            print(result.stdout[-3000:], result.stderr[-2000:], file=sys.stderr)
            return 1
    cold = converge(args.inventory)
    rerun = converge(args.inventory) if cold["rc"] == 0 else None
    out = {"cold": cold, "rerun": rerun}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if cold["rc"] or rerun["rc"]:
        print(cold["tail"] or rerun["tail"], file=sys.stderr)
        return 1
    changed = sum(h["changed"] for h in rerun["hosts"].values())
    tasks = sum(h["ok"] + h["changed"] + h["skipped"] for h in cold["hosts"].values())
    ratio = rerun["seconds"] / cold["seconds"]
    print("| run | wall s | tasks (ok+changed+skipped) | changed |")
    print("|---|---|---|---|")
    for name, run in (("cold site.yml", cold), ("no-op rerun", rerun)):
        print(f"| {name} | {run['seconds']} | {sum(h['ok'] + h['changed'] + h['skipped'] for h in run['hosts'].values())} "
              f"| {sum(h['changed'] for h in run['hosts'].values())} |")
    print(f"\nrerun / cold = {ratio:.2f} (goal < 0.30); rerun changed = {changed} (goal 0); cold tasks = {tasks}")
    for name, run in (("cold", cold), ("rerun", rerun)):
        print(f"\nSlowest tasks, {name}:")
        for task, seconds in run["slowest"]:
            print(f"- {seconds:.1f} s  {task}")
    return 0 if changed == 0 and ratio < 0.30 else 1


if __name__ == "__main__":
    sys.exit(main())
