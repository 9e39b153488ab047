"""MultinotesAI load test: the traffic mix the app really serves, for Locust headless runs.

Every knob comes from the environment (playbooks/loadtest.yml sets them from Ansible
variables), so the same file serves every scenario and every target:

LOADTEST_WEIGHTS          JSON {task: weight}; weight 0 drops the task. Tasks: health, status,
                          version, index, static, login, celery.
LOADTEST_STATIC_PATHS     comma-separated static file paths (served by nginx in the stack)
LOADTEST_LOGIN_USERNAME / LOADTEST_LOGIN_PASSWORD   credentials for the login POST (a 401
                          for unknown ones is expected and counted as success: the login
                          path is exercised either way)
LOADTEST_EXPECTED_429     comma-separated path prefixes where 429 is the rate limiter doing
                          its job (default: the login path); those requests are reported
                          under "<name> [429 expected]" and do not count as errors
LOADTEST_TASK_TIMEOUT     seconds a Celery task may take from enqueue to SUCCESS
LOADTEST_TASK_POLL        seconds between result polls
LOADTEST_TLS_VERIFY       true: verify the certificate (LOADTEST_CA_FILE adds a CA, e.g.
                          the demo's self-signed one); false: skip verification (local only)
LOADTEST_RESOLVE          "name=address,...": like curl --resolve, for names the controller
                          cannot resolve (multinotes.localhost on hosts without nss-myhostname)
LOADTEST_TIMEOUT          seconds before a request counts as a timeout
LOADTEST_STAGES           JSON [[seconds, users, spawn_rate], ...]: a staged run (spike:
                          ramp, sustain, recover) instead of --users/--run-time
LOADTEST_WAIT             "min,max" seconds each user waits between requests (default 1,3;
                          the capacity scenario: 0,0, a closed loop)
LOADTEST_CAPACITY         JSON {"steps": [users, ...], "step_s", "warmup_s", "max_p95_ms",
                          "max_error_percent", "out": path}: the capacity scenario, steps of
                          users until one is over the limits (capacity.py), written to "out"

Every failure message starts with its class, so the report splits them without guessing:
"HTTP 5xx: ...", "HTTP 4xx: ...", "timeout: ...", "connection: ...", "check: ...".
"""

import json
import os
import random
import socket
import ssl

import gevent
import gevent.socket
from locust import LoadTestShape, between, events, task
from locust.contrib.fasthttp import FastHttpUser


def _env(name, default=""):
    value = os.environ.get(name, "")
    return value if value != "" else default


WEIGHTS = {"health": 2, "status": 1, "version": 3, "index": 2, "static": 4, "login": 1, "celery": 1}
WEIGHTS.update({k: int(v) for k, v in json.loads(_env("LOADTEST_WEIGHTS", "{}")).items()})
STATIC_PATHS = [p.strip() for p in _env("LOADTEST_STATIC_PATHS", "/static/core/app.css").split(",") if p.strip()]
LOGIN_PATH = "/api/v1/auth/login/"
EXPECTED_429 = [p.strip() for p in _env("LOADTEST_EXPECTED_429", LOGIN_PATH).split(",") if p.strip()]
TASK_TIMEOUT = float(_env("LOADTEST_TASK_TIMEOUT", "30"))
TASK_POLL = float(_env("LOADTEST_TASK_POLL", "0.5"))
TLS_VERIFY = _env("LOADTEST_TLS_VERIFY", "true").lower() in ("1", "true", "yes")
CA_FILE = _env("LOADTEST_CA_FILE")
TIMEOUT = float(_env("LOADTEST_TIMEOUT", "30"))
RESOLVE = dict(item.split("=", 1) for item in _env("LOADTEST_RESOLVE").split(",") if "=" in item)
WAIT = [float(x) for x in _env("LOADTEST_WAIT", "1,3").split(",")]

if RESOLVE:
    # geventhttpclient resolves through gevent.socket.getaddrinfo at connect time.
    _getaddrinfo = gevent.socket.getaddrinfo

    def _resolve(host, *args, **kwargs):
        return _getaddrinfo(RESOLVE.get(host, host), *args, **kwargs)

    gevent.socket.getaddrinfo = _resolve


def _ssl_context():
    if not TLS_VERIFY:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    if CA_FILE:
        context.load_verify_locations(cafile=CA_FILE)
    return context


def _is_timeout(error):
    return isinstance(error, (socket.timeout, TimeoutError, gevent.Timeout)) or "timed out" in str(error).lower()


def judge(response, expect=(200,)):
    """Mark a catch_response response a success or a classified failure."""
    status = response.status_code
    path = response.request_meta["name"]
    if not status:
        error = getattr(response, "error", None)
        kind = "timeout" if _is_timeout(error) else "connection"
        response.failure(f"{kind}: {type(error).__name__}")
    elif status == 429 and any(path.startswith(prefix) for prefix in EXPECTED_429):
        response.request_meta["name"] = f"{path} [429 expected]"
        response.success()
    elif status >= 500:
        response.failure(f"HTTP 5xx: {status}")
    elif status not in expect and status >= 400:
        response.failure(f"HTTP 4xx: {status}")
    elif status not in expect:
        response.failure(f"check: unexpected status {status}")
    else:
        response.success()
        return True
    return False


def json_field(response, name):
    """A field of a JSON answer, or None and a failed check when the body is not what the app sends."""
    try:
        return response.json()[name]
    except (ValueError, KeyError, TypeError):
        response.failure(f"check: no {name} in the answer")
        return None


class MultinotesUser(FastHttpUser):
    wait_time = between(WAIT[0], WAIT[1])
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT
    insecure = not TLS_VERIFY
    ssl_context_factory = staticmethod(_ssl_context)
    default_headers = {"Accept": "application/json"}

    def _get(self, path, name=None, expect=(200,)):
        with self.client.get(path, name=name or path, catch_response=True) as response:
            judge(response, expect)
            return response

    @task(WEIGHTS["health"])
    def health(self):
        self._get("/health/")

    @task(WEIGHTS["status"])
    def status(self):
        self._get("/api/v1/status/")

    @task(WEIGHTS["version"])
    def version(self):
        self._get("/api/v1/version/")

    @task(WEIGHTS["index"])
    def index(self):
        self._get("/")

    @task(WEIGHTS["static"])
    def static(self):
        self._get(random.choice(STATIC_PATHS), name="/static/[file]")

    @task(WEIGHTS["login"])
    def login(self):
        body = {"username": _env("LOADTEST_LOGIN_USERNAME", "loadtest"),
                "password": _env("LOADTEST_LOGIN_PASSWORD", "loadtest")}
        with self.client.post(LOGIN_PATH, json=body, name=LOGIN_PATH, catch_response=True) as response:
            # 401: unknown user, still a full pass through authentication.
            judge(response, expect=(200, 401))

    @task(WEIGHTS["celery"])
    def celery_round_trip(self):
        with self.client.post("/api/v1/tasks/", json={"a": 2, "b": 3}, name="/api/v1/tasks/",
                              catch_response=True) as response:
            if not judge(response, expect=(202,)):
                return
            task_id = json_field(response, "task_id")
            if task_id is None:
                return
        deadline = TASK_TIMEOUT
        while deadline > 0:
            gevent.sleep(TASK_POLL)
            deadline -= TASK_POLL
            with self.client.get(f"/api/v1/tasks/{task_id}/", name="/api/v1/tasks/[id]/",
                                 catch_response=True) as response:
                if not judge(response):
                    return
                state = json_field(response, "state")
                if state is None:
                    return
                if state == "SUCCESS":
                    return
                if state in ("FAILURE", "REVOKED"):
                    response.failure(f"check: task {state}")
                    return
        # The task never finished: a queue backlog or no worker. Report it on the poll row.
        self.environment.events.request.fire(
            request_type="GET", name="/api/v1/tasks/[id]/", response_time=TASK_TIMEOUT * 1000,
            response_length=0, exception=Exception(f"check: task not done in {TASK_TIMEOUT:g}s"),
            context={}, response=None)


STAGES = json.loads(_env("LOADTEST_STAGES", "[]"))

if STAGES:
    class StagedShape(LoadTestShape):
        """[[seconds, users, spawn_rate], ...] run one after the other, then stop."""

        def tick(self):
            elapsed = self.get_run_time()
            for seconds, users, spawn_rate in STAGES:
                if elapsed < seconds:
                    return int(users), float(spawn_rate)
                elapsed -= seconds
            return None


CAPACITY = json.loads(_env("LOADTEST_CAPACITY", "{}"))

if CAPACITY:
    from capacity import Stepper  # beside this file (Locust puts its directory on the path)

    STEPPER = Stepper([int(u) for u in CAPACITY["steps"]], float(CAPACITY["step_s"]), float(CAPACITY["warmup_s"]),
                      float(CAPACITY["max_p95_ms"]), float(CAPACITY["max_error_percent"]))

    @events.request.add_listener
    def _measure(request_type, name, response_time, exception, **_):
        STEPPER.record(f"{request_type} {name}", response_time, exception is not None)

    @events.test_stop.add_listener
    def _write(**_):
        with open(CAPACITY["out"], "w", encoding="utf-8") as handle:
            json.dump(STEPPER.result(), handle, indent=1)

    class CapacityShape(LoadTestShape):
        """Steps of users (capacity.py), until one is over the limits or the last is done."""

        def tick(self):
            return STEPPER.tick()
