"""The load test report (roles/loadtest/files/report.py) on recorded Locust runs.

fixtures/loadtest/pass: 10 users, 15 s against the demo app, where the login answered 429
half the time (a rate limiter where one is expected). fixtures/loadtest/fail: the same
mix against a target that answers 500 to 10% of requests, stalls 10% past the 2 s client
timeout, and misses one of the two static files (404).
"""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "roles" / "loadtest" / "files" / "report.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "loadtest"
BASELINE = '{"max_avg_ms": 500, "max_error_percent": 1, "min_requests": 1}'

spec = importlib.util.spec_from_file_location("loadtest_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def run_report(fixture, out, criteria=BASELINE, *extra):
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"--locust-prefix={FIXTURES / fixture / 'locust'}", f"--out={out}",
         "--scenario=baseline", f"--criteria={criteria}", *extra],
        capture_output=True, text=True, timeout=120)


def summary_csv(out):
    with (out / "summary.csv").open() as handle:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)}


def test_passing_run_passes_and_reports_the_checklist_numbers(tmp_path):
    result = run_report("pass", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = summary_csv(tmp_path)
    # Locust's Aggregated row: 74 requests, avg 45.33 ms, p50 11, p95 250, p99 840, p99.9 840.
    assert numbers["requests"] == 74
    assert numbers["avg_ms"] == pytest.approx(45.326, abs=0.001)
    assert (numbers["p50_ms"], numbers["p95_ms"], numbers["p99_ms"], numbers["p99_9_ms"]) == (11, 250, 840, 840)
    assert numbers["rps"] == pytest.approx(5.344, abs=0.001)
    assert numbers["error_percent"] == 0
    # The five 429s on the login were the rate limiter where one is expected: not errors.
    assert numbers["rate_limited_429"] == 5
    text = (tmp_path / "report.md").read_text()
    assert "**Verdict: PASS**" in text
    assert "429 from the rate limiter where expected (not errors): 5" in text
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_run_fails_and_splits_errors_by_class(tmp_path):
    result = run_report("fail", tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED criterion max_error_percent" in result.stdout
    numbers = summary_csv(tmp_path)
    # 69 requests: 5 answered 500, 7 answered 404, 7 timed out.
    assert numbers["requests"] == 69
    assert numbers["error_5xx_percent"] == pytest.approx(100 * 5 / 69, abs=0.001)
    assert numbers["error_4xx_percent"] == pytest.approx(100 * 7 / 69, abs=0.001)
    assert numbers["timeout_percent"] == pytest.approx(100 * 7 / 69, abs=0.001)
    assert numbers["error_percent"] == pytest.approx(100 * 19 / 69, abs=0.001)
    assert "**Verdict: FAIL**" in (tmp_path / "report.md").read_text()


def write_samples(directory, host, start, cpu, memory):
    directory.mkdir(exist_ok=True)
    with (directory / f"{host}.csv").open("w") as handle:
        handle.write("ts,cpu_percent,mem_used_percent,mem_used_mib,rss_gunicorn_mib\n")
        handle.write(f"{start - 100},99,99,9999,999\n")  # before the run: must be ignored
        for i, (c, m) in enumerate(zip(cpu, memory)):
            handle.write(f"{start + i + 1},{c},{m},{m * 10},{100 + i}\n")


@pytest.mark.parametrize("cpu,expect_rc", [([50, 60, 70, 80], 0), ([80, 90, 90, 90], 1)],
                         ids=["cpu-average-65", "cpu-average-87.5"])
def test_host_samples_give_peaks_and_judge_cpu(tmp_path, cpu, expect_rc):
    start = 1795783600  # the pass fixture's first history row
    samples = tmp_path / "samples"
    write_samples(samples, "web1", start, cpu, [40, 41, 42, 43])
    out = tmp_path / "out"
    result = run_report("pass", out, '{"max_error_percent": 1, "max_avg_cpu_percent": 70, "max_memory_percent": 80}',
                        f"--samples-dir={samples}", "--no-chart")
    assert result.returncode == expect_rc, result.stdout + result.stderr
    with (out / "hosts.csv").open() as handle:
        host = next(csv.DictReader(handle))
    assert float(host["peak_cpu_percent"]) == max(cpu)
    assert float(host["peak_memory_percent"]) == 43
    assert float(host["peak_rss_gunicorn_mib"]) == 103
    if expect_rc:
        assert "FAILED criterion max_avg_cpu_percent" in result.stdout


def history(rows):
    return [{"Timestamp": str(1000 + i), "User Count": str(users), "95%": str(p95)} for i, (users, p95) in enumerate(rows)]


@pytest.mark.parametrize("p95s,ratio", [([100] * 20, 1.0), ([100] * 10 + [300] * 10, 3.0)], ids=["steady", "tripled"])
def test_endurance_drift_compares_the_end_with_the_start(p95s, ratio):
    assert report.p95_drift(history([(0, 999)] + [(20, p) for p in p95s]), 20) == pytest.approx(ratio)


def test_spike_recovery_reads_the_end_of_the_run():
    rows = history([(100, 2000)] * 20 + [(10, 150)] * 10)
    assert report.recovery_p95(rows, 20, 1029) == 150


def test_unknown_criterion_is_refused(tmp_path):
    result = run_report("pass", tmp_path, '{"max_avg_latency": 500}')
    assert result.returncode != 0
    assert "unknown criterion 'max_avg_latency'" in result.stderr
