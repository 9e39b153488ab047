#!/usr/bin/env python3
"""Sample this host's CPU and memory every INTERVAL seconds into a CSV, until STOP_FILE
exists or MAX_SECONDS pass. Standard library only: it runs on the hosts' own python3.

    sampler.py OUT_CSV STOP_FILE MAX_SECONDS [INTERVAL] [PROCESS,NAMES]

Columns: ts (epoch), cpu_percent (all CPUs, from /proc/stat), mem_used_percent and
mem_used_mib (MemTotal - MemAvailable, from /proc/meminfo), then rss_<name>_mib per
process name: the resident memory summed over the processes whose executable or first
arguments carry that name (nginx, gunicorn, celery, redis-server, mariadbd).
"""

import os
import sys
import time


def cpu_times():
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def memory():
    info = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])  # kB
    used = info["MemTotal"] - info.get("MemAvailable", info["MemFree"])
    return 100.0 * used / info["MemTotal"], used / 1024.0


def rss_by_name(names):
    totals = dict.fromkeys(names, 0.0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")[:3]
            with open(f"/proc/{pid}/status") as handle:
                rss = next((int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0)
        except OSError:
            continue  # gone meanwhile, or not ours to read
        words = " ".join(os.path.basename(arg.decode(errors="replace")) for arg in argv if arg)
        words = [word.rstrip(":") for word in words.split()]  # "nginx: worker process"
        for name in names:
            if name in words:
                totals[name] += rss / 1024.0
                break
    return totals


def main():
    out, stop_file, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    names = [n for n in (sys.argv[5].split(",") if len(sys.argv) > 5 else []) if n]
    deadline = time.time() + max_seconds
    with open(out, "w") as handle:
        handle.write(",".join(["ts", "cpu_percent", "mem_used_percent", "mem_used_mib"]
                              + [f"rss_{n.replace('-', '_')}_mib" for n in names]) + "\n")
        total, idle = cpu_times()
        while time.time() < deadline and not os.path.exists(stop_file):
            time.sleep(interval)
            new_total, new_idle = cpu_times()
            busy = 100.0 * (1 - (new_idle - idle) / max(new_total - total, 1))
            total, idle = new_total, new_idle
            used_percent, used_mib = memory()
            rss = rss_by_name(names)
            handle.write(",".join([f"{time.time():.3f}", f"{busy:.1f}", f"{used_percent:.2f}", f"{used_mib:.1f}"]
                                  + [f"{rss[n]:.1f}" for n in names]) + "\n")
            handle.flush()


if __name__ == "__main__":
    main()
