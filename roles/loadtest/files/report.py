#!/usr/bin/env python3
"""Turn one Locust run (its --csv files) and the hosts' resource samples into the launch
checklist's "Load Test Report": Markdown, CSV and a PNG chart, and judge the run against
the scenario's criteria. Exit 0 when every criterion holds, 1 when one fails (each
failed criterion is printed), 2 on bad input.

    report.py --locust-prefix DIR/locust --out DIR --scenario baseline \
        --criteria '{"max_avg_ms": 500, "max_error_percent": 1}' \
        [--samples-dir DIR] [--meta '{"target": ..., "users": ..., ...}']

Failures are classified by the prefix the locustfile gives every failure message
("HTTP 5xx:", "HTTP 4xx:", "timeout:", "connection:", "check:"); rows named
"... [429 expected]" are the rate limiter answering where it should and are not errors.
"""

import argparse
import csv
import datetime as dt
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import capacity as capacity_lib  # noqa: E402 - beside this file, also when loaded by path

ERROR_CLASSES = ("HTTP 5xx", "HTTP 4xx", "timeout", "connection", "check")
EXPECTED_429_SUFFIX = " [429 expected]"
CRITERIA_DOC = {
    "max_avg_ms": "average response time (ms)",
    "max_p95_ms": "p95 response time (ms)",
    "max_error_percent": "error rate (%)",
    "max_timeout_percent": "timeout rate (%)",
    "max_avg_cpu_percent": "average CPU of the busiest host (%)",
    "max_memory_percent": "peak memory of the fullest host (%)",
    "max_p95_drift_ratio": "p95 at the end / p95 at the start",
    "max_memory_growth_points": "memory growth start -> end of the fullest-growing host (% points)",
    "recovery_max_p95_ms": "p95 after the surge, end of the recovery stage (ms)",
    "min_requests": "requests completed",
    "min_knee_rps": "requests/s at the knee (capacity)",
    "max_limited_requests": "429 answers from the rate limiter where none is expected",
}
# Above this, a host or the load generator is the bottleneck (CPU %).
SATURATED_CPU_PERCENT = 85


def number(value):
    if value in (None, "", "N/A"):
        return None
    return float(value)


def read_csv(path):
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def classify(error):
    match = re.search(r"(HTTP 5xx|HTTP 4xx|timeout|connection|check):", error)
    return match.group(1) if match else "other"


def load_locust(prefix):
    prefix = Path(prefix)
    stats = read_csv(prefix.with_name(prefix.name + "_stats.csv"))
    if not stats:
        raise SystemExit(f"report: no Locust stats at {prefix}_stats.csv")
    history = read_csv(prefix.with_name(prefix.name + "_stats_history.csv"))
    failures = read_csv(prefix.with_name(prefix.name + "_failures.csv"))
    return stats, history, failures


def summarise(stats, history, failures, meta):
    aggregated = next(row for row in stats if row["Name"] == "Aggregated")
    endpoints = [row for row in stats if row["Name"] != "Aggregated"]
    total = int(aggregated["Request Count"])
    failed = int(aggregated["Failure Count"])
    errors = {name: 0 for name in ERROR_CLASSES + ("other",)}
    for row in failures:
        errors[classify(row["Error"])] += int(row["Occurrences"])
    limited = sum(int(row["Occurrences"]) for row in failures if "HTTP 4xx: 429" in row["Error"])
    rate_limited = sum(int(row["Request Count"]) for row in endpoints if row["Name"].endswith(EXPECTED_429_SUFFIX))
    agg_history = [row for row in history if row["Name"] == "Aggregated"]
    if meta.get("start") and meta.get("end"):
        start, end = float(meta["start"]), float(meta["end"])
    elif agg_history:
        start, end = float(agg_history[0]["Timestamp"]), float(agg_history[-1]["Timestamp"])
    else:
        start, end = 0.0, 0.0
    duration = max(end - start, 1e-9)
    transferred = sum(int(row["Request Count"]) * (number(row["Average Content Size"]) or 0) for row in endpoints)

    def pct(count):
        return 100.0 * count / total if total else 0.0

    return {
        "requests": total,
        "failures": failed,
        "duration_s": round(end - start, 1),
        "start": start,
        "end": end,
        "avg_ms": number(aggregated["Average Response Time"]),
        "min_ms": number(aggregated["Min Response Time"]),
        "max_ms": number(aggregated["Max Response Time"]),
        "p50_ms": number(aggregated["50%"]),
        "p95_ms": number(aggregated["95%"]),
        "p99_ms": number(aggregated["99%"]),
        "p99_9_ms": number(aggregated["99.9%"]),
        "rps": number(aggregated["Requests/s"]),
        "transfer_mb_s": transferred / duration / 1e6,
        "error_percent": pct(failed),
        "error_5xx_percent": pct(errors["HTTP 5xx"]),
        "error_4xx_percent": pct(errors["HTTP 4xx"]),
        "timeout_percent": pct(errors["timeout"]),
        "connection_error_percent": pct(errors["connection"]),
        "check_error_percent": pct(errors["check"] + errors["other"]),
        "rate_limited_429": rate_limited,
        "limited_429": limited,
        "peak_users": max((int(row["User Count"]) for row in agg_history), default=meta.get("users")),
        "endpoints": endpoints,
        "history": agg_history,
    }


def load_samples(samples_dir, start, end):
    """{host: [rows]} cropped to the run; each host's sampler wrote <host>.csv."""
    hosts = {}
    if not samples_dir:
        return hosts
    for path in sorted(Path(samples_dir).glob("*.csv")):
        rows = []
        for row in read_csv(path):
            values = {key: number(value) for key, value in row.items()}
            if start <= values["ts"] <= end or not end:
                rows.append(values)
        if rows:
            hosts[path.stem] = rows
    return hosts


def host_summary(rows):
    tenth = max(1, len(rows) // 10)
    first = statistics.mean(row["mem_used_percent"] for row in rows[:tenth])
    last = statistics.mean(row["mem_used_percent"] for row in rows[-tenth:])
    summary = {
        "samples": len(rows),
        "avg_cpu_percent": statistics.mean(row["cpu_percent"] for row in rows),
        "peak_cpu_percent": max(row["cpu_percent"] for row in rows),
        "avg_memory_percent": statistics.mean(row["mem_used_percent"] for row in rows),
        "peak_memory_percent": max(row["mem_used_percent"] for row in rows),
        "peak_memory_mib": max(row["mem_used_mib"] for row in rows),
        "memory_growth_points": last - first,
    }
    for key in rows[0]:
        if key.startswith("rss_"):
            summary[f"peak_{key}"] = max(row[key] or 0 for row in rows)
    return summary


def p95_drift(history, users):
    """p95 of the last tenth of the steady part / p95 of its first tenth (Locust's rolling p95)."""
    steady = [number(row["95%"]) for row in history
              if int(row["User Count"]) >= (users or 0) and number(row["95%"])]
    if len(steady) < 4:
        return None
    tenth = max(2, len(steady) // 10)
    begin = statistics.median(steady[:tenth])
    return statistics.median(steady[-tenth:]) / begin if begin else None


def recovery_p95(history, recovery_s, end):
    """Median rolling p95 over the second half of the recovery stage (the run's last seconds)."""
    window = [number(row["95%"]) for row in history
              if float(row["Timestamp"]) >= end - recovery_s / 2 and number(row["95%"])]
    return statistics.median(window) if window else None


def capacity_steps(result, samples):
    """The capacity run's steps, each with every sampled host's average CPU and memory over
    the step's measured window."""
    steps = []
    for step in result["steps"]:
        hosts = {}
        for host, rows in samples.items():
            window = [row for row in rows if step["start"] <= row["ts"] <= step["end"]]
            if window:
                hosts[host] = {"cpu_percent": statistics.mean(row["cpu_percent"] for row in window),
                               "mem_used_percent": statistics.mean(row["mem_used_percent"] for row in window)}
        steps.append(dict(step, hosts=hosts))
    return steps


def capacity_findings(result, steps, limited):
    """Plain sentences: the knee, what broke at the next step, and why (from the figures)."""
    limits = result["limits"]
    knee, breach = result["knee"], result["breach"]
    lines = []
    if knee is None:
        lines.append(f"No knee: the first step ({steps[0]['users']} users) was already over the limits "
                     f"({'; '.join(result['reasons'])}). Start with fewer users.")
    elif breach is None:
        lines.append(f"The knee was not reached: every step held (p95 <= {limits['max_p95_ms']:g} ms, errors <= "
                     f"{limits['max_error_percent']:g} %). The site carries at least {knee['rps']:.0f} req/s "
                     f"({knee['users']} users); add steps to find where it stops.")
    else:
        lines.append(f"Knee: {knee['rps']:.0f} req/s of the mix at {knee['users']} users "
                     f"(p95 {knee['p95_ms']:.0f} ms, errors {knee['error_percent']:.2f} %). At {breach['users']} users: "
                     f"{'; '.join(result['reasons'])}, at {breach['rps']:.0f} req/s.")
    for entry in result["saturating"]:
        first = entry["first_step_p95_ms"]
        lines.append(f"Slowest at the breach: {entry['endpoint']}, p95 {entry['p95_ms']:.0f} ms"
                     + (f" (at the first step: {first:.0f} ms)" if first is not None else "")
                     + (f", {entry['failures']} failed" if entry["failures"] else "") + ".")
    last = next((s for s in steps if breach is not None and s["start"] == breach["start"]), steps[-1] if steps else None)
    if last is not None:
        busy = {h: v["cpu_percent"] for h, v in last["hosts"].items() if v["cpu_percent"] >= SATURATED_CPU_PERCENT}
        if busy:
            lines.append("Why: CPU-bound. " + ", ".join(f"{h} at {c:.0f} % CPU" for h, c in busy.items())
                         + f" at {last['users']} users; the answers queue for the cores, every endpoint's latency rises together.")
        gen = last.get("generator_cpu_percent")
        if gen is not None and gen >= SATURATED_CPU_PERCENT:
            lines.append(f"The load generator itself used {gen:.0f} % of a core at {last['users']} users: near its own "
                         "limit, so the knee is a lower bound (run Locust on another machine, or --processes).")
    if limited:
        lines.append(f"{limited} answers were 429 from the rate limiter: the run measured the limiter, not the site. "
                     "Exempt the generator's address (nginx_limit_exempt_sources, never in production).")
    return lines


def judge(summary, hosts, criteria, meta, capacity=None):
    """[(criterion, limit, measured, passed)]; a criterion that cannot be measured fails."""
    measured = {
        "max_avg_ms": summary["avg_ms"],
        "max_p95_ms": summary["p95_ms"],
        "max_error_percent": summary["error_percent"],
        "max_timeout_percent": summary["timeout_percent"],
        "min_requests": summary["requests"],
        "max_limited_requests": summary["limited_429"],
    }
    if capacity is not None:
        measured["min_knee_rps"] = capacity["knee"]["rps"] if capacity["knee"] else None
    if hosts:
        measured["max_avg_cpu_percent"] = max(h["avg_cpu_percent"] for h in hosts.values())
        measured["max_memory_percent"] = max(h["peak_memory_percent"] for h in hosts.values())
        measured["max_memory_growth_points"] = max(h["memory_growth_points"] for h in hosts.values())
    measured["max_p95_drift_ratio"] = p95_drift(summary["history"], meta.get("users"))
    if meta.get("recovery_s"):
        measured["recovery_max_p95_ms"] = recovery_p95(summary["history"], float(meta["recovery_s"]), summary["end"])
    results = []
    for name, limit in criteria.items():
        if limit is None:
            continue
        if name not in CRITERIA_DOC:
            raise SystemExit(f"report: unknown criterion {name!r}; known: {', '.join(CRITERIA_DOC)}")
        value = measured.get(name)
        if value is None and name in ("max_avg_cpu_percent", "max_memory_percent", "max_memory_growth_points"):
            continue  # no host was sampled (loadtest_sample_hosts false): said in the report
        if value is None:
            passed = False
        elif name.startswith("min_"):
            passed = value >= limit
        else:
            passed = value <= limit
        results.append((name, limit, value, passed))
    return results


def fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def write_chart(path, summary, hosts, scenario):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = summary["history"]
    t0 = float(history[0]["Timestamp"]) if history else 0.0
    times = [float(row["Timestamp"]) - t0 for row in history]
    rows = 3 if hosts else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), sharex=True)
    for column, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        axes[0].plot(times, [number(row[column]) for row in history], label=label)
    axes[0].set_ylabel("latency (ms)")
    axes[0].set_title(f"Load test {scenario}: latency percentiles (Locust rolling window)")
    axes[0].legend(loc="upper left")
    axes[0].grid(alpha=0.3)
    axes[1].plot(times, [number(row["Requests/s"]) for row in history], label="requests/s")
    axes[1].plot(times, [number(row["Failures/s"]) for row in history], label="failures/s", color="tab:red")
    axes[1].set_ylabel("per second")
    axes[1].grid(alpha=0.3)
    users = axes[1].twinx()
    users.plot(times, [int(row["User Count"]) for row in history], label="users", color="tab:gray", linestyle="--")
    users.set_ylabel("users")
    handles = axes[1].get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    axes[1].legend(handles, [h.get_label() for h in handles], loc="upper left")
    axes[1].set_title("Throughput")
    if hosts:
        for host, samples in hosts.items():
            axes[2].plot([s["ts"] - t0 for s in samples], [s["cpu_percent"] for s in samples], label=f"{host} CPU %")
            axes[2].plot([s["ts"] - t0 for s in samples], [s["mem_used_percent"] for s in samples],
                         label=f"{host} memory %", linestyle=":")
        axes[2].set_ylabel("%")
        axes[2].set_ylim(0, 105)
        axes[2].legend(loc="upper left", fontsize="small")
        axes[2].grid(alpha=0.3)
        axes[2].set_title("Hosts (sampled on the hosts, 1 s)")
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(out, summary, hosts):
    keys = ["requests", "failures", "duration_s", "avg_ms", "min_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms",
            "p99_9_ms", "rps", "transfer_mb_s", "error_percent", "error_5xx_percent", "error_4xx_percent",
            "timeout_percent", "connection_error_percent", "check_error_percent", "rate_limited_429", "peak_users"]
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        for key in keys:
            value = summary[key]
            writer.writerow([key, round(value, 6) if isinstance(value, float) else value])
    with (out / "hosts.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        columns = sorted({key for h in hosts.values() for key in h})
        writer.writerow(["host", *columns])
        for host, values in hosts.items():
            writer.writerow([host, *[round(values.get(c, 0), 2) for c in columns]])


def capacity_markdown(result, steps, limited):
    lines = ["", "### Capacity (steps of users, no think time)", "",
             f"Each step {result['step_s']:g} s, the first {result['warmup_s']:g} s not measured; a step over "
             f"p95 {result['limits']['max_p95_ms']:g} ms or errors {result['limits']['max_error_percent']:g} % ends the run.",
             ""]
    hosts = sorted({h for s in steps for h in s["hosts"]})
    lines += ["| users | req/s | p50 ms | p95 ms | p99 ms | errors % | generator CPU % | "
              + " | ".join(f"{h} CPU % / mem %" for h in hosts) + (" |" if hosts else "|"),
              "|---|---|---|---|---|---|---|" + "---|" * len(hosts)]
    for s in steps:
        lines.append(f"| {s['users']} | {fmt(s['rps'])} | {fmt(s['p50_ms'], 0)} | {fmt(s['p95_ms'], 0)} | "
                     f"{fmt(s['p99_ms'], 0)} | {fmt(s['error_percent'], 2)} | {fmt(s['generator_cpu_percent'], 0)} | "
                     + " | ".join(f"{fmt(s['hosts'][h]['cpu_percent'], 0)} / {fmt(s['hosts'][h]['mem_used_percent'], 0)}"
                                  if h in s["hosts"] else "n/a" for h in hosts) + (" |" if hosts else "|"))
    knee = result["knee"]
    if knee:
        lines += ["", f"Per endpoint at the knee ({knee['users']} users):", "",
                  "| request | req/s | p95 ms | failures |", "|---|---|---|---|"]
        for name, e in knee["endpoints"].items():
            lines.append(f"| {name} | {fmt(e['rps'], 1)} | {fmt(e['p95_ms'], 0)} | {e['failures']} |")
    lines += ["", *capacity_findings(result, steps, limited)]
    return lines


def write_capacity_chart(path, steps, limits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(10, 4))
    users = [s["users"] for s in steps]
    axis.plot(users, [s["rps"] for s in steps], marker="o", label="req/s")
    axis.set_xlabel("users (no think time)")
    axis.set_ylabel("requests/s")
    axis.grid(alpha=0.3)
    latency = axis.twinx()
    latency.plot(users, [s["p95_ms"] for s in steps], marker="s", color="tab:red", label="p95 ms")
    latency.axhline(limits["max_p95_ms"], color="tab:red", linestyle=":", label="p95 limit")
    latency.set_ylabel("p95 (ms)")
    handles = axis.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    axis.legend(handles, [h.get_label() for h in handles], loc="upper left")
    axis.set_title("Capacity: throughput and p95 per step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(out, scenario, summary, hosts, results, meta, extra=()):
    passed = all(ok for *_, ok in results)
    when = dt.datetime.fromtimestamp(summary["start"], dt.timezone.utc) if summary["start"] else None
    lines = [
        f"## Load Test Results - {when:%Y-%m-%d %H:%M UTC}" if when else "## Load Test Results",
        "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}** (scenario `{scenario}`)",
        "",
        "### Test Configuration",
        f"- Tool: Locust {meta.get('locust_version', '')} headless (FastHttpUser), from the controller",
        f"- Target: {meta.get('target', 'n/a')}",
        f"- Duration: {fmt(summary['duration_s'])} s (planned: {meta.get('run_time', 'n/a')})",
        f"- Concurrent Users: {meta.get('users', 'n/a')} (peak reached: {summary['peak_users']})",
        f"- Ramp-up: spawn rate {meta.get('spawn_rate', 'n/a')} users/s"
        + (f"; stages {meta['stages']}" if meta.get("stages") else ""),
        "",
        "### Results",
        "- **Response Time**:",
        f"  - Average: {fmt(summary['avg_ms'])} ms",
        f"  - p50 (median): {fmt(summary['p50_ms'], 0)} ms",
        f"  - p95: {fmt(summary['p95_ms'], 0)} ms",
        f"  - p99: {fmt(summary['p99_ms'], 0)} ms",
        f"  - p99.9: {fmt(summary['p99_9_ms'], 0)} ms",
        f"  - max: {fmt(summary['max_ms'], 0)} ms",
        f"- **Throughput**: {fmt(summary['rps'], 2)} req/s ({summary['requests']:,} requests)",
        f"- **Data transfer rate**: {fmt(summary['transfer_mb_s'], 3)} MB/s (response bodies)",
        f"- **Error Rate**: {fmt(summary['error_percent'], 2)}%",
        f"  - HTTP 5xx errors: {fmt(summary['error_5xx_percent'], 2)}%",
        f"  - HTTP 4xx errors: {fmt(summary['error_4xx_percent'], 2)}%",
        f"  - Timeout errors: {fmt(summary['timeout_percent'], 2)}%",
        f"  - Connection errors: {fmt(summary['connection_error_percent'], 2)}%",
        f"  - Failed checks (bad status/body, task not done): {fmt(summary['check_error_percent'], 2)}%",
        f"  - 429 from the rate limiter where expected (not errors): {summary['rate_limited_429']:,}",
    ]
    if hosts:
        lines += ["", "### Resource utilization (sampled on each host every second)", "",
                  "| host | CPU avg % | CPU peak % | memory avg % | memory peak % | memory peak MiB | memory growth (points) |",
                  "|---|---|---|---|---|---|---|"]
        for host, h in hosts.items():
            lines.append(f"| {host} | {fmt(h['avg_cpu_percent'])} | {fmt(h['peak_cpu_percent'])} | "
                         f"{fmt(h['avg_memory_percent'])} | {fmt(h['peak_memory_percent'])} | "
                         f"{fmt(h['peak_memory_mib'], 0)} | {fmt(h['memory_growth_points'], 2)} |")
        rss = sorted({key for h in hosts.values() for key in h if key.startswith("peak_rss_")})
        if rss:
            lines += ["", "Peak resident memory per service (MiB, summed over its processes):", "",
                      "| host | " + " | ".join(k[len("peak_rss_"):-len("_mib")] for k in rss) + " |",
                      "|---|" + "---|" * len(rss)]
            for host, h in hosts.items():
                lines.append(f"| {host} | " + " | ".join(fmt(h.get(k), 0) for k in rss) + " |")
        lines += ["", "CPU and memory are the host's (/proc/stat, /proc/meminfo); in a container "
                  "that is the machine the container runs on."]
    else:
        lines += ["", "### Resource utilization", "", "Not sampled in this run (loadtest_sample_hosts: false, "
                  "or no host in the sampled groups): CPU and memory criteria were not judged."]
    lines += ["", "### Per endpoint", "",
              "| request | count | failures | avg ms | p50 | p95 | p99 | req/s |", "|---|---|---|---|---|---|---|---|"]
    for row in summary["endpoints"]:
        lines.append(f"| {row['Type']} {row['Name']} | {int(row['Request Count']):,} | {int(row['Failure Count']):,} | "
                     f"{fmt(number(row['Average Response Time']))} | {row['50%']} | {row['95%']} | {row['99%']} | "
                     f"{fmt(number(row['Requests/s']), 2)} |")
    lines += list(extra)
    lines += ["", "### Criteria (the launch checklist's expectations for this scenario)", "",
              "| criterion | limit | measured | result |", "|---|---|---|---|"]
    for name, limit, value, ok in results:
        lines.append(f"| {CRITERIA_DOC[name]} | {'>=' if name.startswith('min_') else '<='} {limit} | "
                     f"{fmt(value, 2)} | {'pass' if ok else '**FAIL**'} |")
    failed = [r for r in results if not r[3]]
    lines += ["", "### Issues Found"]
    lines += [f"{i}. {CRITERIA_DOC[n]}: measured {fmt(v, 2)}, limit {limit}" for i, (n, limit, v, _) in
              enumerate(failed, 1)] or ["None: every criterion held."]
    lines += ["", "### Recommendations", "(for the person who reviews this run)", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locust-prefix", required=True, help="the --csv prefix Locust wrote")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--criteria", required=True, help="JSON {criterion: limit}; null skips one")
    parser.add_argument("--samples-dir", help="directory of <host>.csv resource samples")
    parser.add_argument("--meta", default="{}", help="JSON: target, users, spawn_rate, run_time, start, end, ...")
    parser.add_argument("--capacity", type=Path, help="the capacity scenario's steps (capacity.json, the locustfile's)")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    try:
        criteria = json.loads(args.criteria)
        meta = json.loads(args.meta)
    except ValueError as exc:
        print(f"report: --criteria/--meta is not JSON: {exc}", file=sys.stderr)
        return 2
    stats, history, failures = load_locust(args.locust_prefix)
    summary = summarise(stats, history, failures, meta)
    hosts = {host: host_summary(rows) for host, rows in
             load_samples(args.samples_dir, summary["start"], summary["end"]).items()}
    capacity, extra, findings = None, [], []
    if args.capacity:
        if not args.capacity.exists():
            print(f"report: no capacity steps at {args.capacity} (did Locust start?)", file=sys.stderr)
            return 2
        capacity = json.loads(args.capacity.read_text())
        # The knee is judged here, from the recorded steps, with the limits the run used.
        capacity.update(capacity_lib.knee(capacity["steps"], **capacity["limits"]))
        steps = capacity_steps(capacity, load_samples(args.samples_dir, summary["start"], summary["end"]))
        extra = capacity_markdown(capacity, steps, summary["limited_429"])
        findings = capacity_findings(capacity, steps, summary["limited_429"])
    results = judge(summary, hosts, criteria, meta, capacity)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out, summary, hosts)
    failed = write_markdown(args.out, args.scenario, summary, hosts, results, meta, extra)
    if not args.no_chart:
        write_chart(args.out / "chart.png", summary,
                    load_samples(args.samples_dir, summary["start"], summary["end"]), args.scenario)
        if capacity and capacity["steps"]:
            write_capacity_chart(args.out / "capacity.png", steps, capacity["limits"])
    print(f"{args.scenario}: {'FAIL' if failed else 'PASS'}  avg {fmt(summary['avg_ms'])} ms, "
          f"p95 {fmt(summary['p95_ms'], 0)} ms, {fmt(summary['rps'], 2)} req/s, errors {fmt(summary['error_percent'], 2)}% "
          f"(5xx {fmt(summary['error_5xx_percent'], 2)}%, 4xx {fmt(summary['error_4xx_percent'], 2)}%, "
          f"timeouts {fmt(summary['timeout_percent'], 2)}%)  report: {args.out / 'report.md'}")
    for line in findings:
        print(f"capacity: {line}")
    for name, limit, value, _ in failed:
        print(f"FAILED criterion {name} ({args.scenario}): {CRITERIA_DOC[name]} measured {fmt(value, 2)}, limit {limit}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
