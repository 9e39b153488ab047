"""The capacity scenario: the stepper the locustfile runs (roles/loadtest/files/capacity.py)
on a fake clock, the knee it finds, and report.py's capacity section on a recorded run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[3] / "roles" / "loadtest" / "files"
spec = importlib.util.spec_from_file_location("loadtest_capacity", FILES / "capacity.py")
capacity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capacity)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "loadtest"


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.cpu = 0.0

    def __call__(self):
        return self.now


def drive(stepper, clock, latency_of_step, rps=50, fail_every=None, seconds=200):
    """Run the stepper second by second: each second `rps` answers, at the step's latency."""
    plan = []
    for _ in range(seconds):
        users = stepper.tick()
        if users is None:
            break
        plan.append(users[0])
        index = stepper.index
        for n in range(rps):
            failed = fail_every is not None and index >= fail_every[0] and n % fail_every[1] == 0
            stepper.record("GET /health/", latency_of_step(index, n), failed, now=clock.now + n / rps)
        clock.now += 1
        clock.cpu += 0.4
    return plan


def new_stepper(clock, users=(4, 8, 16, 32), step_s=10, warmup_s=2, p95=500, errors=1.0):
    return capacity.Stepper(list(users), step_s, warmup_s, p95, errors, clock=clock, cpu=lambda: clock.cpu)


def test_percentile_is_nearest_rank():
    assert capacity.percentile([], 0.95) is None
    assert capacity.percentile([5], 0.95) == 5
    assert capacity.percentile(list(range(1, 101)), 0.95) == 95
    assert capacity.percentile(list(range(1, 21)), 0.5) == 10


def test_steps_up_and_stops_after_the_first_step_over_the_p95_limit():
    clock = Clock()
    stepper = new_stepper(clock)
    # Steps 0 and 1 answer in 100 ms; from step 2 one answer in ten takes 900 ms: p95 900.
    plan = drive(stepper, clock, lambda step, n: 900.0 if step >= 2 and n % 10 == 0 else 100.0)
    assert plan == [4] * 10 + [8] * 10 + [16] * 10, "runs each step 10 s and never starts the step after the breach"
    result = stepper.result()
    assert [s["users"] for s in result["steps"]] == [4, 8, 16]
    # The warm-up is not measured: 8 of each step's 10 seconds, 50 answers each.
    assert [s["requests"] for s in result["steps"]] == [400, 400, 400]
    assert result["steps"][0]["rps"] == pytest.approx(50)
    assert result["steps"][0]["generator_cpu_percent"] == pytest.approx(40)
    assert result["reached"] and result["knee"]["users"] == 8 and result["breach"]["users"] == 16
    assert result["reasons"] == ["p95 900 ms > 500 ms"]
    assert result["saturating"][0]["endpoint"] == "GET /health/"
    assert result["saturating"][0]["first_step_p95_ms"] == 100


def test_errors_over_the_limit_end_the_run_too():
    clock = Clock()
    stepper = new_stepper(clock)
    drive(stepper, clock, lambda step, n: 50.0, fail_every=(1, 25))  # 4 % failed from step 1
    result = stepper.result()
    assert [s["users"] for s in result["steps"]] == [4, 8]
    assert result["knee"]["users"] == 4
    assert result["reasons"] == ["errors 4.00 % > 1 %"]


def test_every_step_holding_is_a_lower_bound_not_a_knee():
    clock = Clock()
    stepper = new_stepper(clock)
    plan = drive(stepper, clock, lambda step, n: 20.0)
    assert len(plan) == 40
    result = stepper.result()
    assert not result["reached"] and result["breach"] is None
    assert result["knee"]["users"] == 32


def test_the_knee_is_the_best_throughput_before_the_breach():
    steps = [capacity.summarise_step(u, 0, 10, [("GET /", 10.0, False)] * n)
             for u, n in ((4, 300), (8, 500), (16, 450))]
    steps.append(capacity.summarise_step(32, 0, 10, [("GET /", 900.0, False)] * 400))
    result = capacity.knee(steps, 500, 1)
    assert result["knee"]["users"] == 8 and result["knee"]["rps"] == 50
    assert result["breach"]["users"] == 32


def test_a_first_step_over_the_limits_has_no_knee():
    steps = [capacity.summarise_step(4, 0, 10, [("GET /", 900.0, False)] * 100)]
    result = capacity.knee(steps, 500, 1)
    assert result["knee"] is None and result["reached"]


@pytest.mark.parametrize("users,step_s,warmup_s", [
    ([], 10, 2), ([8, 4], 10, 2), ([0, 4], 10, 2), ([4, 8], 10, 10),
])
def test_bad_plans_are_refused(users, step_s, warmup_s):
    with pytest.raises(ValueError):
        capacity.Stepper(users, step_s, warmup_s, 500, 1)


def test_report_writes_the_capacity_section_and_judges_the_knee(tmp_path):
    clock = Clock()
    stepper = new_stepper(clock)
    drive(stepper, clock, lambda step, n: 900.0 if step >= 2 and n % 10 == 0 else 100.0)
    steps_file = tmp_path / "capacity.json"
    steps_file.write_text(json.dumps(stepper.result()))
    samples = tmp_path / "samples"
    samples.mkdir()
    rows = ["ts,cpu_percent,mem_used_percent,mem_used_mib"] + [
        f"{t},{95 if t >= 1020 else 30},40,800" for t in range(1000, 1031)]
    (samples / "demo.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(FILES / "report.py"), f"--locust-prefix={FIXTURES / 'pass' / 'locust'}",
         f"--out={out}", "--scenario=capacity", '--criteria={"min_knee_rps": 60, "max_limited_requests": 0}',
         f"--samples-dir={samples}", f"--capacity={steps_file}",
         '--meta={"start": 1000, "end": 1031}'],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "capacity: Knee: 50 req/s of the mix at 8 users" in done.stdout
    assert "FAILED criterion min_knee_rps" in done.stdout
    text = (out / "report.md").read_text()
    assert "### Capacity (steps of users, no think time)" in text
    assert "Why: CPU-bound. demo at 95 % CPU at 16 users" in text
    assert (out / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_when_the_limiter_was_measured(tmp_path):
    steps = [capacity.summarise_step(4, 0, 10, [("GET /", 10.0, False)] * 100)]
    result = dict(limits={"max_p95_ms": 500, "max_error_percent": 1}, step_s=10, warmup_s=2,
                  steps=steps, **capacity.knee(steps, 500, 1))
    spec_r = importlib.util.spec_from_file_location("loadtest_report_c", FILES / "report.py")
    report = importlib.util.module_from_spec(spec_r)
    spec_r.loader.exec_module(report)
    lines = report.capacity_findings(result, report.capacity_steps(result, {}), limited=12)
    assert any("12 answers were 429 from the rate limiter" in line and "nginx_limit_exempt_sources" in line
               for line in lines), lines
