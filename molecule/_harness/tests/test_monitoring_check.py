"""roles/monitoring/files/monitoring_check.py against a stand-in Prometheus and Alertmanager
(an HTTP server on loopback answering what their APIs answer). The monitoring scenario runs
the same command against the real ones."""

import contextlib
import importlib.util
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("monitoring_check", ROOT / "roles/monitoring/files/monitoring_check.py")
mc = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mc)


def target(job, instance, health="up", error=""):
    return {"labels": {"job": job, "instance": instance}, "health": health, "lastError": error}


def rule(name, query, duration=120, health="ok"):
    return {"name": name, "query": query, "duration": duration, "health": health, "type": "alerting"}


RULES = [
    rule("HostDown", 'up{job="node"} == 0'),
    rule("HighCpu", '100 * (1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle"}[5m]))) > 80', 900),
    rule("DiskSpaceLow", "100 * node_filesystem_avail_bytes / node_filesystem_size_bytes < 20", 600),
    rule("RollbackErrorRate", '100 * sum by (host) (rate(x{status=~"5.."}[2m])) / sum by (host) (rate(x[2m])) > 10', 300),
]
AM_CONFIG = "route:\n  receiver: hook\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: <secret>\n"


@pytest.fixture
def apis():
    """A stand-in for both APIs; the test sets what each path answers."""
    answers = {
        "/api/v1/targets": {"status": "success", "data": {"activeTargets": [
            target("node", "db1"), target("node", "web1"), target("redis", "db1:broker")]}},
        "/api/v1/rules": {"status": "success", "data": {"groups": [{"name": "g", "rules": RULES}]}},
        "/api/v1/alertmanagers": {"status": "success", "data": {"activeAlertmanagers": [{"url": "http://127.0.0.1:9093/api/v2/alerts"}]}},
        "/api/v2/status": {"config": {"original": AM_CONFIG}},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server interface
            body = answers.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(json.dumps(body or {}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield answers, url
    server.shutdown()


def run(url, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = mc.main(["--prometheus-url", url, "--alertmanager-url", url, *argv])
    return rc, out.getvalue()


def test_every_expected_job_up_passes_and_says_what_it_saw(apis):
    _, url = apis
    rc, out = run(url, "targets", "--job", "node", "--job", "redis")
    assert rc == 0, out
    assert "node: 2 of 2 up (db1, web1)" in out and "redis: 1 of 1 up (db1:broker)" in out


def test_a_job_prometheus_does_not_scrape_fails_naming_it(apis):
    _, url = apis
    rc, out = run(url, "targets", "--job", "node", "--job", "haproxy")
    assert rc == 1 and "MISSING job haproxy" in out, out


def test_any_target_down_fails_naming_it_and_its_error_even_of_a_job_not_asked_for(apis):
    answers, url = apis
    answers["/api/v1/targets"]["data"]["activeTargets"].append(target("mysqld", "db1", "down", "connection refused"))
    rc, out = run(url, "targets", "--job", "node")
    assert rc == 1 and "DOWN mysqld db1: down, connection refused" in out, out


def test_rules_at_the_checklists_thresholds_and_windows_pass(apis):
    _, url = apis
    rc, out = run(url, "alerts", "--route", "--rule", "HostDown", "--rule", "HighCpu>80", "--rule", "DiskSpaceLow<20",
                  "--rule", "RollbackErrorRate>10@300")
    assert rc == 0, out
    assert "route: Prometheus -> http://127.0.0.1:9093/api/v2/alerts -> webhook receivers" in out
    assert "<secret>" not in out  # the receivers' URLs (tokens) are never printed


@pytest.mark.parametrize("spec, says", [
    ("HighCpu>90", "WRONG HighCpu: .* does not compare > 90"),
    ("DiskSpaceLow>20", "does not compare > 20"),
    ("RollbackErrorRate>10@600", "fires after 300 s, not 600 s"),
    ("RedisDown", "MISSING alert rule RedisDown"),
])
def test_a_rule_missing_or_at_another_threshold_or_window_fails_naming_it(apis, spec, says):
    import re
    _, url = apis
    rc, out = run(url, "alerts", "--rule", spec)
    assert rc == 1 and re.search(says, out), out


def test_an_unhealthy_rule_fails(apis):
    answers, url = apis
    answers["/api/v1/rules"]["data"]["groups"][0]["rules"] = [rule("HostDown", "up == 0", health="err")]
    rc, out = run(url, "alerts", "--rule", "HostDown")
    assert rc == 1 and "health 'err'" in out, out


@pytest.mark.parametrize("change, says", [
    (lambda a: a["/api/v1/alertmanagers"]["data"].update(activeAlertmanagers=[]), "NO ROUTE: Prometheus has no active Alertmanager"),
    (lambda a: a["/api/v2/status"]["config"].update(original="route:\n  receiver: nobody\nreceivers:\n- name: nobody\n"),
     "NO ROUTE: Alertmanager's receivers notify no one"),
])
def test_alerts_that_reach_no_one_fail(apis, change, says):
    answers, url = apis
    change(answers)
    rc, out = run(url, "alerts", "--route")
    assert rc == 1 and says in out, out


def test_an_api_that_does_not_answer_fails_saying_so():
    rc, out = run("http://127.0.0.1:9", "targets")
    assert rc == 1 and out.startswith("cannot ask: http://127.0.0.1:9/api/v1/targets"), out


def test_the_urls_come_from_the_roles_config_file(apis, tmp_path):
    _, url = apis
    config = tmp_path / "check.json"
    config.write_text(json.dumps({"prometheus_url": url, "alertmanager_url": url}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mc.main(["--config", str(config), "targets", "--job", "node"]) == 0


@pytest.mark.parametrize("argv", [["alerts"], ["alerts", "--rule", "High Cpu>"], ["alerts", "--rule", "HighCpu>>80"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit) as exit_:
        with contextlib.redirect_stderr(io.StringIO()):
            mc.main(argv)
    assert exit_.value.code == 2
