#!/usr/bin/env python3
"""Benchmark 4, memory: resident memory of each service (nginx, gunicorn, celery,
redis-server, mariadbd) on the demo host idle, then under the baseline load, against the
RAM of the host and the worker counts the roles derived from it (workers must not be
sized past the RAM).

Idle: the load test's own sampler (roles/loadtest/files/sampler.py) for --idle seconds
inside the host. Under load: `playbooks/loadtest.yml -e loadtest_scenario=baseline`, whose
report carries each service's peak RSS sampled the same way.

    python3 benchmarks/bench_memory.py [--container multinotes-demo] [--idle 30]
"""

import argparse
import csv
import io
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The ansible-playbook beside this Python (the venv), else the one on PATH.
ANSIBLE_PLAYBOOK = str(next((p for p in [Path(sys.executable).parent / "ansible-playbook"] if p.exists()), "ansible-playbook"))
SAMPLER = ROOT / "roles" / "loadtest" / "files" / "sampler.py"
SERVICES = ["nginx", "gunicorn", "celery", "redis-server", "mariadbd"]


def sh(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def put(container, source, dest):
    """Copy a file into the container through exec: `docker cp` cannot write into its tmpfs /tmp."""
    subprocess.run(["docker", "exec", "-i", container, "sh", "-c", f"cat > {dest}"],
                   input=Path(source).read_text(), check=True, text=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--container", default="multinotes-demo")
    parser.add_argument("--idle", type=int, default=30)
    args = parser.parse_args()
    c = args.container
    put(c, SAMPLER, "/tmp/multinotes-sampler.py")
    sh(["docker", "exec", c, "python3", "/tmp/multinotes-sampler.py", "/tmp/multinotes-idle.csv",
        "/tmp/multinotes-idle.stop", str(args.idle), "1", ",".join(SERVICES)])
    idle = list(csv.DictReader(io.StringIO(sh(["docker", "exec", c, "cat", "/tmp/multinotes-idle.csv"]))))
    mem_total = int(sh(["docker", "exec", c, "awk", "/MemTotal/ {print $2}", "/proc/meminfo"])) / 1024
    counts = {s: int(sh(["docker", "exec", c, "sh", "-c", f"pgrep -c -x {s} || true"]).strip() or 0) for s in SERVICES}
    run = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "inventories/local", "playbooks/loadtest.yml",
                          "-e", "loadtest_scenario=baseline"], cwd=ROOT, capture_output=True, text=True)
    reports = sorted((ROOT / "reports" / "loadtest").glob("*-baseline/hosts.csv"))
    loaded = next(csv.DictReader(reports[-1].open())) if reports else {}
    print(f"Host {c}: MemTotal {mem_total:,.0f} MiB (the host's RAM as /proc/meminfo shows it in the container); "
          f"baseline load test rc={run.returncode} ({reports[-1].parent.name if reports else 'no report'})\n")
    print("| service | processes | idle RSS MiB (median) | baseline peak RSS MiB | peak as % of RAM |")
    print("|---|---|---|---|---|")
    for s in SERVICES:
        key = f"rss_{s.replace('-', '_')}_mib"
        idle_rss = statistics.median(float(r[key]) for r in idle) if idle else 0.0
        peak = float(loaded.get(f"peak_{key}", "nan"))
        print(f"| {s} | {counts[s]} | {idle_rss:,.0f} | {peak:,.0f} | {100 * peak / mem_total:.1f}% |")
    return 0 if run.returncode in (0, 2) else 1


if __name__ == "__main__":
    sys.exit(main())
