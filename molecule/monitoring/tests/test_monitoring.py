"""Monitoring, by behaviour: Prometheus really scrapes every exporter, the exporters answer
only the monitoring host, every alert rule fires at its threshold and not below (promtool),
and a real fault (Redis stopped) reaches the alert hook and resolves."""

import json
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
import testlib
import yaml

SCENARIO = Path(__file__).resolve().parents[1]
VARS = yaml.safe_load((SCENARIO / "vars" / "test.yml").read_text())
ALERTS = sorted({name.split(":")[0].strip("'") for name in
                 (t["name"] for t in yaml.safe_load((SCENARIO / "files" / "rules-test.yml").read_text())["tests"])})
RECEIVED = "/var/log/alert-receiver.jsonl"


@pytest.fixture(scope="module")
def prom():
    return testlib.host("mon-prom")


@pytest.fixture(scope="module")
def app():
    return testlib.host("mon-app")


def api(prom, path):
    """GET Prometheus' HTTP API on its private address, from the monitoring host."""
    # testinfra quotes each argument for the shell itself.
    out = prom.check_output("curl -fsS --max-time 10 %s", f"http://{testlib.address(prom)}:9090{path}")
    return json.loads(out)["data"]


def query(prom, expr):
    return api(prom, "/api/v1/query?query=" + urllib.parse.quote(expr, safe=""))["result"]


def received(prom):
    out = prom.run("cat %s", RECEIVED).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def notifications(prom, alertname, status):
    """(receive index, alert) for every notification of `alertname` with `status`."""
    return [(i, alert) for i, message in enumerate(received(prom)) for alert in message["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["status"] == status]


# --- Scraping ----------------------------------------------------------------------

@pytest.mark.parametrize("job,instance", [
    ("node", "mon-prom"), ("node", "mon-app"), ("redis", "mon-app:broker"), ("redis", "mon-app:cache"),
    ("nginx", "mon-app"), ("nginx_log", "mon-app"), ("mysqld", "mon-app"), ("prometheus", "mon-prom"), ("alertmanager", "mon-prom"),
])
def test_prometheus_scrapes_the_target_and_it_is_up(prom, job, instance):
    deadline = time.time() + 60
    while True:
        targets = {(t["labels"]["job"], t["labels"]["instance"]): t for t in api(prom, "/api/v1/targets")["activeTargets"]}
        assert (job, instance) in targets, sorted(targets)
        if targets[(job, instance)]["health"] == "up" or time.time() > deadline:
            break
        time.sleep(2)
    assert targets[(job, instance)]["health"] == "up", targets[(job, instance)]["lastError"]


CHECK = "/usr/local/sbin/multinotes-monitoring-check"  # group_vars/all/monitoring.yml
# The launch check's own command for the alert rules (its one home), with the path above.
LAUNCH_CHECKS = yaml.safe_load((SCENARIO.parents[1] / "roles/launch_check/vars/checks/monitoring_logging.yml").read_text())
ALERTS_CHECK = next(c["cmd"] for c in LAUNCH_CHECKS["__launch_check_checks_monitoring_logging"] if c["id"] == "monitoring-alerts")


def test_the_launch_checks_monitoring_command_asks_the_running_prometheus(prom):
    """What the launch check's monitoring-targets and monitoring-alerts run on a monitoring
    host: it passes on this scenario, and fails, naming why, for a job nobody scrapes and
    for a threshold other than the rule's."""
    jobs = " ".join(f"--job {job}" for job in ("node", "redis", "nginx", "nginx_log", "mysqld"))
    deadline = time.time() + 60
    while (targets := prom.run(f"{CHECK} targets {jobs}")).rc != 0 and time.time() < deadline:
        time.sleep(2)  # a target scraped once only after the converge can still be "unknown"
    assert targets.rc == 0, targets.stdout + targets.stderr
    assert "redis: 2 of 2 up (mon-app:broker, mon-app:cache)" in targets.stdout, targets.stdout
    missing = prom.run(f"{CHECK} targets {jobs} --job haproxy")
    assert missing.rc == 1 and "MISSING job haproxy" in missing.stdout, missing.stdout
    assert ALERTS_CHECK.startswith("{{ launch_check_monitoring_command }} alerts --route --rule "), ALERTS_CHECK
    alerts = prom.run(ALERTS_CHECK.replace("{{ launch_check_monitoring_command }}", CHECK))
    assert alerts.rc == 0, alerts.stdout + alerts.stderr
    assert "RollbackErrorRate:" in alerts.stdout and "BackupFailed:" in alerts.stdout, alerts.stdout
    assert "-> webhook receivers" in alerts.stdout, alerts.stdout
    wrong = prom.run(f"{CHECK} alerts --rule 'HighCpu>95'")
    assert wrong.rc == 1 and "does not compare > 95" in wrong.stdout, wrong.stdout


@pytest.mark.parametrize("expr", [
    # What each exporter reads, not just that it answers: the data store really answered it.
    'redis_up{instance="mon-app:broker"}', 'redis_up{instance="mon-app:cache"}', 'mysql_up',
    'nginx_up', 'multinotes_celery_broker_up',
])
def test_exporter_reads_its_service(prom, expr):
    deadline = time.time() + 60
    while True:
        result = query(prom, expr)
        if [r["value"][1] for r in result] == ["1"] or time.time() > deadline:
            break
        time.sleep(2)
    assert [r["value"][1] for r in result] == ["1"], result


def test_celery_probe_reports_the_real_queue_length(prom, app):
    # Three tasks' worth of items pushed into the broker's "celery" list as the app user.
    env = f"REDISCLI_AUTH={VARS['mon_redis_app_password']}"
    app.check_output("%s redis-cli --user multinotes -p 6379 RPUSH celery a b c", env)
    try:
        # Twice: the first may join a run the timer started before the push.
        app.check_output("systemctl start multinotes-celery-metrics.service")
        app.check_output("systemctl start multinotes-celery-metrics.service")
        metrics = prom.check_output("curl -fsS http://%s:9100/metrics", testlib.address(app))
        assert 'multinotes_celery_queue_length{queue="celery"} 3' in metrics
        # No worker in this scenario: the probe says so instead of failing silently.
        assert "multinotes_celery_workers_responding 0" in metrics
    finally:
        app.run("%s redis-cli --user multinotes -p 6379 DEL celery", env)
        app.run("systemctl start multinotes-celery-metrics.service")


def responses(prom, status):
    """Prometheus' latest value of mon-app's nginx response counter for `status` (0 if none yet)."""
    result = query(prom, f'sum(multinotes_nginx_responses_total{{host="mon-app",status="{status}"}})')
    return float(result[0]["value"][1]) if result else 0.0


def test_nginx_responses_reach_prometheus_by_status(prom, app):
    # Real 5xx: nginx proxies to an upstream that refuses the connection (prepare.yml) -> 502.
    # The 5xx alert counts exactly this series (rules-test.yml tests its threshold).
    before = {status: responses(prom, status) for status in ("502", "200")}
    status_of = "curl -s -o /dev/null -w %s http://127.0.0.1:8081%s"
    codes = [app.check_output(status_of, "%{http_code}", "/upstream-down") for _ in range(5)]
    assert codes == ["502"] * 5, codes
    assert app.check_output(status_of, "%{http_code}", "/ok") == "200"
    deadline = time.time() + 60
    while True:
        seen = {status: responses(prom, status) - before[status] for status in ("502", "200")}
        if seen == {"502": 5, "200": 1} or time.time() > deadline:
            break
        time.sleep(2)
    assert seen == {"502": 5, "200": 1}, seen


def request_seconds(prom):
    """mon-app's response-time histogram in Prometheus: count, sum, and the count at or under 1 s."""
    values = {}
    for name, series in (("count", '_count{host="mon-app"}'), ("sum", '_sum{host="mon-app"}'),
                         ("le1", '_bucket{host="mon-app", le="1"}')):
        result = query(prom, f"sum(multinotes_nginx_request_seconds{series})")
        values[name] = float(result[0]["value"][1]) if result else 0.0
    return values


def test_nginx_response_times_reach_prometheus(prom, app):
    """The response-time alert's input: nginx's own $request_time, parsed by mtail from the
    access log. A fast answer lands in the 1 s bucket, a 4 s one (400 KB at 100 KB/s) does
    not, and the sum holds the slow one's seconds."""
    before = request_seconds(prom)
    timed = "curl -s -o /dev/null -w %s http://127.0.0.1:8081%s"
    assert app.check_output(timed, "%{http_code}", "/ok") == "200"
    took = float(app.check_output(timed, "%{time_total}", "/slow"))
    assert took >= 3, f"the slow answer took {took} s: limit_rate did not hold it back"
    deadline = time.time() + 60
    while True:
        now = request_seconds(prom)
        seen = {k: now[k] - before[k] for k in now}
        if seen["count"] >= 2 or time.time() > deadline:
            break
        time.sleep(2)
    assert seen["count"] == 2 and seen["le1"] == 1, seen
    assert took - 0.5 <= seen["sum"] <= took + 1, (seen, took)


# --- Exposure ----------------------------------------------------------------------

@pytest.mark.parametrize("port", [9100, 9121, 9113, 3903, 9104])
def test_exporter_listens_on_the_private_address_only(app, port):
    # Local address column only (the peer column of a listener is always a wildcard).
    listening = [line.split()[3] for line in app.check_output("ss -Hltn 'sport = :%s'", str(port)).splitlines()]
    assert listening == [f"{testlib.address(app)}:{port}"], listening


@pytest.mark.parametrize("port", [9100, 9121, 9113, 3903, 9104])
def test_exporter_answers_the_monitoring_host_and_no_one_else(prom, app, port):
    assert testlib.tcp_connects(prom, testlib.address(app), port)
    # From this controller (another address on the scenario network) the firewall drops it;
    # the control: the same source reaches nginx's public port 80 on the same host, so the
    # refusal is the firewall's, not an unreachable network.
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((testlib.address(app), 80)) == 0
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((testlib.address(app), port)) != 0


def test_stub_status_is_on_loopback_only(app):
    assert "Active connections" in app.check_output("curl -fsS http://127.0.0.1:8089/stub_status")
    assert app.run("curl -fsS --max-time 3 http://%s:8089/stub_status", testlib.address(app)).rc != 0


@pytest.mark.parametrize("port,where", [(9093, "127.0.0.1"), (9115, "127.0.0.1")])
def test_alertmanager_and_prober_listen_on_loopback(prom, port, where):
    listening = [line.split()[3] for line in prom.check_output("ss -Hltn 'sport = :%s'", str(port)).splitlines()]
    assert listening == [f"{where}:{port}"], listening


@pytest.mark.parametrize("unit", [
    "prometheus-node-exporter", "prometheus-redis-exporter", "prometheus-nginx-exporter", "prometheus-mysqld-exporter", "mtail",
])
def test_exporter_unit_is_sandboxed(app, unit):
    props = app.check_output("systemctl show %s -p ProtectSystem -p NoNewPrivileges -p CapabilityBoundingSet", unit)
    assert "ProtectSystem=strict" in props and "NoNewPrivileges=yes" in props, props
    assert "CapabilityBoundingSet=\n" in props + "\n", props


def failed_starts(log):
    """The lines of a unit's journal that tell of a process failing on its own: a failed start,
    or an exit with an error while no stop was asked for. (Debian 12's nginx exporter 0.11
    exits 1 on SIGTERM: a stop or restart systemd asked for logs a 'failure' that is none.)"""
    stopping, failed = False, []
    for line in log:
        if "Stopping " in line:
            stopping = True
        elif "Starting " in line or "Started " in line:
            stopping = False
        if "Failed to start" in line or (not stopping and (
                "Failed with result" in line or "Main process exited, code=exited" in line)):
            failed.append(line)
    return failed


@pytest.mark.parametrize("name,unit", [
    ("mon-app", "prometheus-node-exporter"), ("mon-app", "prometheus-redis-exporter"),
    ("mon-app", "prometheus-nginx-exporter"), ("mon-app", "prometheus-mysqld-exporter"), ("mon-app", "mtail"),
    ("mon-prom", "prometheus-node-exporter"), ("mon-prom", "prometheus"), ("mon-prom", "prometheus-alertmanager"),
    ("mon-prom", "prometheus-blackbox-exporter"),
])
def test_service_started_once_and_never_failed(name, unit):
    """A service started before what it reads was ready fails and is restarted by systemd
    (Restart=on-failure): converge passes or fails by timing. Since boot, through the
    converge, its second run and the check runs, each service has never failed a start."""
    h = testlib.host(name)
    restarts = h.check_output("systemctl show -P NRestarts %s", unit)
    log = h.run("journalctl -b -u %s --no-pager -o cat", unit).stdout.splitlines()
    failures = "\n".join(failed_starts(log))
    assert restarts == "0" and not failures, (
        f"{unit} on {name}: NRestarts={restarts}\n{failures}\n{testlib.journal(h, unit)}")


# --- Rules and configuration -------------------------------------------------------

@pytest.fixture(scope="module")
def default_rules():
    rc, out, _ = testlib.run_playbook(SCENARIO / "render-default-rules.yml", limit="mon-prom")
    assert rc == 0, out


@pytest.mark.parametrize("alert", ALERTS)
def test_rule_fires_at_its_threshold_and_not_below(prom, default_rules, alert):
    result = prom.run("cd /tmp/rule-tests && promtool test rules --run %s rules-test.yml", f"^{alert}: ")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_unit_tests(prom):
    rules = yaml.safe_load(prom.check_output("cat /etc/prometheus/rules/multinotes.yml"))
    names = sorted(r["alert"] for g in rules["groups"] for r in g["rules"])
    assert names == ALERTS


@pytest.mark.parametrize("cmd", [
    "promtool check config /etc/prometheus/prometheus.yml",
    "amtool check-config /etc/prometheus/alertmanager.yml",
    "prometheus-blackbox-exporter --config.check --config.file=/etc/prometheus/blackbox.yml",
])
def test_rendered_configuration_passes_its_checker(prom, cmd):
    result = prom.run(cmd)
    assert result.rc == 0, result.stdout + result.stderr


# --- A real fault, a real alert ----------------------------------------------------

def wait_for(prom, alertname, status, after, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [(i, a) for i, a in notifications(prom, alertname, status) if i >= after]
        if found:
            return found
        time.sleep(1)
    return []


def test_redis_down_alerts_once_and_resolves(prom, app):
    start = len(received(prom))
    app.check_output("systemctl stop redis-server@broker")
    try:
        t0 = time.time()
        firing = wait_for(prom, "RedisDown", "firing", start, 90)
        fired_after = time.time() - t0
        assert firing, received(prom)[start:]
        assert firing[0][1]["labels"]["instance"] == "mon-app:broker"
    finally:
        app.check_output("systemctl start redis-server@broker")
    resolved = wait_for(prom, "RedisDown", "resolved", start, 90)
    assert resolved, received(prom)[start:]
    # One fault, one page: a single firing notification for it, however long it lasted.
    assert len([n for n in notifications(prom, "RedisDown", "firing") if n[0] >= start]) == 1
    print(f"RedisDown reached the hook {fired_after:.0f} s after Redis stopped")


# --- Bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("extra_vars,named", [
    ({"monitoring_alert_cpu_percent": "eighty"}, "monitoring_alert_cpu_percent"),
    ({"monitoring_scrape_hosts": ["mon-app", "ghost.example.test"]}, "monitoring_scrape_hosts"),
    ({"multinotes_alert_webhook_url": "", "multinotes_alert_mail_to": ""}, "multinotes_alert_webhook_url"),
    ({"monitoring_alertmanager_routes": [{"receiver": "pager", "matchers": []}]}, "monitoring_alertmanager_routes"),
])
def test_bad_monitoring_input_is_refused_before_any_change(extra_vars, named):
    testlib.assert_refused_before_any_change(
        SCENARIO / "monitoring-only.yml", limit="mon-prom", extra_vars=extra_vars, named=named)


@pytest.mark.parametrize("extra_vars,named", [
    ({"exporters_listen_address": "0.0.0.0"}, "exporters_listen_address"),
    ({"exporters_nginx_log_files": ["access.log"]}, "exporters_nginx_log_files"),
    # Derived from the redis role's monitoring password: the message names what the user sets.
    ({"redis_monitor_password": ""}, "exporters_redis_password (from redis_monitor_password) is empty"),
])
def test_bad_exporter_input_is_refused_before_any_change(extra_vars, named):
    testlib.assert_refused_before_any_change(
        SCENARIO / "exporters-only.yml", limit="mon-app", extra_vars=extra_vars, named=named)
