#!/usr/bin/env python3
"""Benchmark 3, deploy and rollback under load, on the demo (`make demo` first).

It prepares its second release itself: a copy of demo/ whose VERSION is the live one's
patch + 1. Then, while loadgen.py keeps requesting https://multinotes.localhost:8443/health/
through nginx, it runs `playbooks/deploy.yml` of that release and `playbooks/rollback.yml`
(code only: an nginx switch to the warm slot), and reports for each the playbook's wall
time (start to end, as the operator runs it), the requests answered and failed, and the
longest gap between two successful answers (the pause a user feels), with the machine's
load average. #13's goals on a quiet machine: deploy of one host <= 30 s, code-only
rollback <= 5 s, gap <= 0.3 s, 0 failed.

    python3 benchmarks/bench_rollback.py [--inventory inventories/local] [--rounds 2] [-- extra ansible-playbook args]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# The ansible-playbook beside this Python (the venv), else the one on PATH.
ANSIBLE_PLAYBOOK = str(next((p for p in [Path(sys.executable).parent / "ansible-playbook"] if p.exists()),
                            "ansible-playbook"))
URL, HOST = "https://127.0.0.1:8443/health/", "multinotes.localhost"
SETTLE = 1.0  # seconds of client traffic before and after each playbook
# Each connection waits this long after an answer: a continuous client (about 45 requests/s
# per connection here), as the stack scenario's, not a load test competing for the 2 cores.
PAUSE = 0.02
LOGS = ROOT / ".cache" / "bench"  # each playbook's whole output (its profile_tasks summary)


def live_version():
    out = subprocess.run(["curl", "-sk", "--max-time", "10", "--resolve", f"{HOST}:8443:127.0.0.1",
                          f"https://{HOST}:8443/health/"], capture_output=True, text=True).stdout
    return json.loads(out)["version"]


def next_release(workdir, version):
    """demo/ as the release after `version` (its patch + 1), in `workdir`."""
    major, minor, patch = (int(x) for x in version.split("."))
    src = Path(workdir) / "app"
    shutil.copytree(ROOT / "demo", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
    new = f"{major}.{minor}.{patch + 1}"
    (src / "VERSION").write_text(new + "\n")
    # A new release id every run (its content hash): a code change, the same requirements.
    (src / "bench_release.py").write_text(f"# bench_rollback.py release, built {time.time():.0f}\n")
    return src, new


def under_load(connections, playbook_args):
    """Run one playbook while loadgen runs: (playbook result, wall s, loadgen's figures)."""
    load = subprocess.Popen(
        [sys.executable, str(HERE / "loadgen.py"), "--url", URL, "--host", HOST, "--insecure",
         "--connections", str(connections), "--duration", "900", "--timeout", "30", "--pause", str(PAUSE)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(SETTLE)
    started = time.monotonic()
    result = subprocess.run([ANSIBLE_PLAYBOOK, *playbook_args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    time.sleep(SETTLE)
    load.send_signal(signal.SIGTERM)
    out, _ = load.communicate(timeout=60)
    return result, round(seconds, 1), json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", default="inventories/local")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="code-only rollbacks (back and forth)")
    parser.add_argument("extra", nargs="*", help="more ansible-playbook arguments")
    args = parser.parse_args()
    try:
        before = live_version()
    except (ValueError, KeyError):
        print("bench_rollback: the demo does not answer on :8443 (make demo first); nothing measured.")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rollback-") as tmp:
        src, new = next_release(tmp, before)
        steps = [(f"deploy.yml {before} -> {new}", ["playbooks/deploy.yml", "-e", f"app_source_dir={src}"])]
        steps += [(f"rollback.yml (code only) #{i + 1}", ["playbooks/rollback.yml"]) for i in range(args.rounds)]
        LOGS.mkdir(parents=True, exist_ok=True)
        for n, (name, playbook) in enumerate(steps):
            load_before = os.getloadavg()[0]
            result, seconds, load = under_load(args.connections, ["-i", args.inventory, *playbook, *args.extra])
            (LOGS / f"rollback-{n}-{Path(playbook[0]).stem}.log").write_text(result.stdout + result.stderr)
            if result.returncode:
                print(result.stdout[-3000:], result.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append((name, seconds, load, load_before, os.getloadavg()[0], live_version()))
    print(f"bench_rollback, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{args.connections} keepalive connections on {URL} (SNI {HOST}), {PAUSE * 1000:.0f} ms pause after each answer, "
          f"{SETTLE:.0f} s of traffic either side\n")
    print("| playbook | wall s | answered | failed | longest gap s | p99 ms | keepalive retries | load avg before/after | version after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds, load, lb, la, version in rows:
        failed = f"{load['failed']} {load['statuses']}" if load["failed"] else "0"
        print(f"| {name} | {seconds} | {load['ok']} | {failed} | {load['longest_gap_s']} | {load['p99_ms']} "
              f"| {load['keepalive_retries']} | {lb:.1f} / {la:.1f} | {version} |")
    return 1 if any(load["failed"] for _, _, load, *_ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
