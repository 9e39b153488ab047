"""The capacity scenario's arithmetic, shared by the locustfile (which steps the load and
stops at the first step over the limits) and report.py (which finds the knee).

A run is a list of steps, each `users` concurrent users with no think time for `step_s`
seconds; the first `warmup_s` seconds of each step are not measured (users still
starting, connections opening). A step is over the limits when its p95 exceeds
`max_p95_ms` or its error rate exceeds `max_error_percent`. The knee is the best
throughput of the steps before the first one over the limits.

Standard library only: the locustfile runs it inside Locust, report.py on the controller.
"""

import math
import os
import time

# An endpoint needs this many answers in a step before its p95 is named in the verdict.
MIN_SAMPLES = 20


def percentile(values, fraction):
    """The nearest-rank percentile of `values` (None when empty): the value at or below
    which `fraction` of them lie, as Locust and most load tools report it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarise_step(users, start, end, records, cpu_seconds=None):
    """One step's figures from its measured records [(name, ms, failed), ...] between
    `start` and `end` (epoch seconds). `cpu_seconds`: the load generator's own CPU time
    over the window, for its CPU share."""
    seconds = max(end - start, 1e-9)
    times = [ms for _, ms, _ in records]
    failures = sum(1 for _, _, failed in records if failed)
    endpoints = {}
    for name, ms, failed in records:
        entry = endpoints.setdefault(name, {"times": [], "failures": 0})
        entry["times"].append(ms)
        entry["failures"] += failed
    return {
        "users": users,
        "start": start,
        "end": end,
        "requests": len(records),
        "failures": failures,
        "error_percent": 100.0 * failures / len(records) if records else 0.0,
        "rps": len(records) / seconds,
        "p50_ms": percentile(times, 0.50),
        "p95_ms": percentile(times, 0.95),
        "p99_ms": percentile(times, 0.99),
        "generator_cpu_percent": None if cpu_seconds is None else 100.0 * cpu_seconds / seconds,
        "endpoints": {
            name: {"requests": len(e["times"]), "failures": e["failures"], "rps": len(e["times"]) / seconds,
                   "p95_ms": percentile(e["times"], 0.95)}
            for name, e in sorted(endpoints.items())
        },
    }


def over_limits(step, max_p95_ms, max_error_percent):
    """The reasons a step is over the limits ([] when within them)."""
    reasons = []
    if not step["requests"]:
        return ["no request answered"]
    if step["p95_ms"] is not None and step["p95_ms"] > max_p95_ms:
        reasons.append(f"p95 {step['p95_ms']:.0f} ms > {max_p95_ms:g} ms")
    if step["error_percent"] > max_error_percent:
        reasons.append(f"errors {step['error_percent']:.2f} % > {max_error_percent:g} %")
    return reasons


def knee(steps, max_p95_ms, max_error_percent):
    """Where the site stops keeping up: {"knee": the best step before the first one over the
    limits (None when the first is already over), "breach": that first step (None when every
    step held: the knee is then a lower bound), "reasons", "saturating": the endpoints of
    the breach step over the p95 limit, slowest first (or the slowest ones when errors, not
    latency, broke it), each with its p95 at the first step for comparison}."""
    breach, reasons = None, []
    for index, step in enumerate(steps):
        reasons = over_limits(step, max_p95_ms, max_error_percent)
        if reasons:
            breach = index
            break
    held = steps if breach is None else steps[:breach]
    # The most requests/s within the limits; of equal ones, the step with more users.
    best = max(held, key=lambda s: (s["rps"], s["users"])) if held else None
    saturating = []
    if breach is not None:
        first = steps[0]["endpoints"]
        ranked = sorted(((name, e) for name, e in steps[breach]["endpoints"].items()
                         if e["requests"] >= MIN_SAMPLES and e["p95_ms"] is not None),
                        key=lambda item: -item[1]["p95_ms"])
        # The three slowest over the limit (all of them rise together when the host is CPU-bound).
        over = ([item for item in ranked if item[1]["p95_ms"] > max_p95_ms] or ranked[:1])[:3]
        saturating = [{"endpoint": name, "p95_ms": e["p95_ms"], "failures": e["failures"],
                       "first_step_p95_ms": first.get(name, {}).get("p95_ms")} for name, e in over]
    return {"knee": best, "breach": steps[breach] if breach is not None else None,
            "reasons": reasons if breach is not None else [], "saturating": saturating,
            "reached": breach is not None}


class Stepper:
    """The load plan and its measurements while Locust runs: `tick(now)` says how many users
    to run (None: stop), `record(...)` takes each answer. Stops after the first step over
    the limits: the steps above it would only add errors."""

    def __init__(self, users, step_s, warmup_s, max_p95_ms, max_error_percent, clock=time.time,
                 cpu=lambda: sum(os.times()[:2])):
        if not users or any(u < 1 for u in users) or list(users) != sorted(users):
            raise ValueError(f"steps must be ascending user counts of 1 or more, not {users!r}")
        if not 0 <= warmup_s < step_s:
            raise ValueError(f"the warm-up ({warmup_s} s) must be shorter than a step ({step_s} s)")
        self.users, self.step_s, self.warmup_s = list(users), step_s, warmup_s
        self.max_p95_ms, self.max_error_percent = max_p95_ms, max_error_percent
        self.clock, self.cpu = clock, cpu
        self.started = None
        self.index = 0
        self.records = []
        self.cpu_at_window = None
        self.steps = []
        self.stopped = False

    def _window(self, index):
        begin = self.started + index * self.step_s
        return begin + self.warmup_s, begin + self.step_s

    def _close(self, index):
        start, end = self._window(index)
        cpu = None if self.cpu_at_window is None else self.cpu() - self.cpu_at_window
        self.steps.append(summarise_step(self.users[index], start, end, self.records, cpu))
        self.records, self.cpu_at_window = [], None

    def tick(self, now=None):
        now = self.clock() if now is None else now
        if self.stopped:
            return None
        if self.started is None:
            self.started = now
        current = int((now - self.started) // self.step_s)
        while self.index < current and self.index < len(self.users):
            self._close(self.index)
            self.index += 1
            if over_limits(self.steps[-1], self.max_p95_ms, self.max_error_percent):
                self.stopped = True
                return None
        if self.index >= len(self.users):
            self.stopped = True
            return None
        if self.cpu_at_window is None and now >= self._window(self.index)[0]:
            self.cpu_at_window = self.cpu()
        users = self.users[self.index]
        return users, float(users)

    def record(self, name, response_ms, failed, now=None):
        now = self.clock() if now is None else now
        if self.started is None or self.stopped or self.index >= len(self.users):
            return
        start, end = self._window(self.index)
        if start <= now < end:
            self.records.append((name, float(response_ms), bool(failed)))

    def result(self):
        """Every closed step and the knee, as report.py reads them (capacity.json)."""
        return {"limits": {"max_p95_ms": self.max_p95_ms, "max_error_percent": self.max_error_percent},
                "step_s": self.step_s, "warmup_s": self.warmup_s, "planned_users": self.users,
                "steps": self.steps, **knee(self.steps, self.max_p95_ms, self.max_error_percent)}
