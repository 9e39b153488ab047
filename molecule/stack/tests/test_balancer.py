"""The balancer tier, by behaviour (before the story in test_stack.py, whose power cycle
restarts Pebble, which keeps its accounts in memory): both web hosts serve
through HAProxy; nginx sees each client's own address (the login limit throttles one client,
not everyone) and a client gains nothing by sending its own X-Forwarded-For or PROXY header;
HAProxy's metrics tell each web host's state on the private network only; a web host whose
nginx stops is taken out of rotation within a bound (DOWN in the metrics too), and the
requests in that window are counted; the certificate comes from Pebble through the balancer and a forced
renewal is served with no manual step; a converge after systemd restarted a crashed HAProxy
passes and changes nothing; a rolling reboot under a continuous client fails no
request; bad input fails before any change."""

import json
import re
import subprocess
import time
import uuid

import pytest
import testlib
from test_stack import FRONT, NAME, PLAYBOOKS, WEBS, Load, get, play, root

LB = "stack-lb"
# The balancer's health checks: every second, two failures in a row take a server out
# (roles/haproxy: inter 1 s, fall 2), plus a check's own timeout. The bound stated in the
# role's README; on CI's loaded machine a check may start late, so the test allows 2 s more.
EJECTION_BOUND = 5.0
# The client addresses: this controller (the network's gateway) and stack-ops.
CONTROLLER = "10.231.7.1"
# The balancer's private address (molecule.yml), where its metrics listen.
LB_ADDRESS = "10.231.7.10"
METRICS_PORT = 8405  # group_vars/all/monitoring.yml, multinotes_exporters.haproxy
METRIC_LINE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def lb_metrics():
    """HAProxy's Prometheus metrics as read on the balancer's private address:
    {(name, frozenset of label pairs): value}."""
    out = root(LB).check_output("curl -s --max-time 5 http://%s:%s/metrics", LB_ADDRESS, str(METRICS_PORT))
    found = {}
    for line in out.splitlines():
        m = METRIC_LINE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            found[(m.group(1), labels)] = float(m.group(3))
    return found


def server_state(metrics, server):
    """The state whose haproxy_server_status series is 1 for SERVER in the web backend."""
    states = [dict(labels)["state"] for (name, labels), value in metrics.items()
              if name == "haproxy_server_status" and value == 1
              and dict(labels).get("proxy") == "multinotes_web" and dict(labels).get("server") == server]
    return states[0] if len(states) == 1 else states


def lb_status():
    return {s["name"]: s for s in json.loads(root(LB).check_output("/usr/local/sbin/multinotes-lb status"))["servers"]}


def access_log_lines(name, marker):
    return root(name).run("grep -h -- %s /var/log/nginx/access.log", marker).stdout.splitlines()


def curl_from_ops(path, *extra):
    """One HTTPS request from stack-ops (another client address) through the balancer: the status."""
    out = root("stack-ops").check_output(
        "curl -sk -o /dev/null -w '%%{http_code}' --max-time 10 --resolve %s:443:%s " + "%s " * len(extra) + "https://%s%s",
        NAME, FRONT, *extra, NAME, path)
    return int(out)


def test_both_web_hosts_serve_and_see_the_clients_own_address():
    marker = f"probe-{uuid.uuid4().hex}"
    for _ in range(20):
        assert get(f"/health/?{marker}")[0] == 200
    for name in WEBS:
        lines = access_log_lines(name, marker)
        assert lines, f"{name} served none of 20 requests through the balancer"
        # The client's own address (PROXY protocol v2), not the balancer's.
        assert all(line.startswith(CONTROLLER + " ") for line in lines), lines[:3]


def test_the_login_limit_throttles_one_client_not_everyone():
    statuses = []
    for _ in range(40):
        status = get("/admin/login/")[0]
        statuses.append(status)
        if status == 429:
            break
    assert 429 in statuses, f"no 429 from this client in {len(statuses)} login requests: {statuses}"
    # A forged X-Forwarded-For from the throttled client changes nothing ...
    forged = subprocess.run(
        ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--resolve", f"{NAME}:443:{FRONT}",
         "-H", "X-Forwarded-For: 10.9.9.9", "-H", "X-Real-IP: 10.9.9.9", f"https://{NAME}/admin/login/"],
        capture_output=True, text=True, check=False).stdout
    assert forged == "429", forged
    # ... while another client, at its own address, still gets the page.
    assert curl_from_ops("/admin/login/") == 200


def test_the_backend_port_answers_the_balancer_only():
    web = "10.231.7.11"
    # Another host, even with a PROXY header that claims any address: the firewall drops it.
    out = root("stack-ops").run(f"curl -s --max-time 3 --haproxy-protocol -o /dev/null -w '%{{http_code}}' http://{web}:8080/health/")
    assert out.rc == 28, (out.rc, out.stdout, out.stderr)  # 28: timed out (dropped), not refused
    # The balancer's own address without the PROXY header: nginx closes it (no answer).
    out = root(LB).run(f"curl -s --max-time 3 -o /dev/null -w '%{{http_code}}' -H 'Host: {NAME}' http://{web}:8080/health/")
    assert out.rc != 0 and out.stdout in ("", "000"), (out.rc, out.stdout)


def test_the_balancers_metrics_tell_each_web_hosts_state_on_the_private_network_only():
    """What the monitoring's LbServerDown, LbNoServerUp and LbServerDrainedTooLong read,
    from HAProxy itself: every web host UP, two active servers. Only GET /metrics; and with
    no monitoring host in this inventory the firewall opens the port to no one."""
    metrics = lb_metrics()
    assert {server_state(metrics, name) for name in WEBS} == {"UP"}, {name: server_state(metrics, name) for name in WEBS}
    assert metrics[("haproxy_backend_active_servers", frozenset({("proxy", "multinotes_web")}))] == len(WEBS)
    other = root(LB).run("curl -s --max-time 5 -o /dev/null -w '%%{http_code}' http://%s:%s/", LB_ADDRESS, str(METRICS_PORT))
    assert other.stdout == "403", (other.rc, other.stdout)
    dropped = root("stack-ops").run("curl -s --max-time 3 -o /dev/null http://%s:%s/metrics", LB_ADDRESS, str(METRICS_PORT))
    assert dropped.rc == 28, (dropped.rc, dropped.stderr)  # timed out: dropped by the firewall


def test_a_web_host_whose_nginx_stops_is_ejected_within_the_bound():
    victim = root("stack-web2")
    assert all(s["state"] == "UP" for s in lb_status().values()), lb_status()
    with Load(workers=3) as load:
        time.sleep(2)
        stopped = time.monotonic()
        victim.check_output("systemctl stop nginx")
        ejected = None
        while time.monotonic() - stopped < 30:
            if lb_status()["stack-web2"]["state"] != "UP":
                ejected = time.monotonic() - stopped
                break
            time.sleep(0.1)
        time.sleep(5)
        counted_until = time.monotonic()
        window = [t for t in load.failed_at if t <= stopped + (ejected or 30)]
        after = [t for t in load.failed_at if stopped + (ejected or 30) < t <= counted_until]
    line = load.report(f"nginx stopped on stack-web2: ejected after {ejected} s", counted_until - stopped)
    # What LbServerDown reads: HAProxy's metrics say DOWN for it, UP for the other.
    metrics = lb_metrics()
    down_in_metrics = (server_state(metrics, "stack-web2"), server_state(metrics, "stack-web"))
    victim.check_output("systemctl start nginx")
    assert down_in_metrics == ("DOWN", "UP"), down_in_metrics
    print(f"ejection: {ejected:.2f} s (bound {EJECTION_BOUND} s); failed requests in that window {len(window)}, "
          f"after it {len(after)}; {load.counts}")
    assert ejected is not None and ejected <= EJECTION_BOUND, line
    assert not after, (line, load.errors[-5:])
    # Back by itself once nginx answers again (its state stayed "ready": the checks bring it UP).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and lb_status()["stack-web2"]["state"] != "UP":
        time.sleep(0.5)
    assert lb_status()["stack-web2"]["state"] == "UP", lb_status()


PEBBLE_ROOT = "/root/pebble-root.pem"


def test_reloads_of_the_balancer_under_load_fail_no_request():
    """A configuration change reaches HAProxy by a reload (the converge's handler, a
    renewal's deploy hook): the new workers take the listening sockets over, the old ones
    finish their connections. Five reloads under the client: nothing fails, nothing pauses
    (the bound: 1 s, CI's loaded machine included; the figure is printed)."""
    master = root(LB).check_output("systemctl show -p MainPID --value haproxy")
    with Load(workers=3) as load:
        time.sleep(2)
        started = time.monotonic()
        for _ in range(5):
            root(LB).check_output("systemctl reload haproxy")
            time.sleep(1)
        elapsed = time.monotonic() - started
        time.sleep(2)
    line = load.report("5 reloads of HAProxy under load", elapsed)
    assert load.counts["failed"] == 0, (line, load.errors[:5])
    assert load.longest_gap() < 1.0, line
    # Reloaded, not restarted: the same master process.
    assert root(LB).check_output("systemctl show -p MainPID --value haproxy") == master


def haproxy_unit():
    return dict(line.split("=", 1) for line in root(LB).check_output(
        "systemctl show haproxy -p MainPID -p NRestarts -p ActiveState").splitlines())


def test_a_converge_after_systemd_restarted_a_crashed_haproxy_passes_and_changes_nothing():
    """systemd restarts a crashed HAProxy by itself and keeps counting (NRestarts) until
    someone starts it by hand. The role's check after a change fails on a count that GREW
    (a restart loop), not on an old crash: the next converge passes and restarts nothing."""
    before = haproxy_unit()
    root(LB).check_output("kill -9 %s", before["MainPID"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = haproxy_unit()
        if after["ActiveState"] == "active" and after["MainPID"] not in ("0", before["MainPID"]):
            break
        time.sleep(0.2)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    assert get("/health/")[0] == 200
    rc, out, recap = testlib.run_playbook(PLAYBOOKS / "lb.yml", limit=LB, tags=["haproxy"])
    assert rc == 0 and recap[LB]["changed"] == 0, out
    # Nothing restarted it: the count is still there, the same master serves.
    assert haproxy_unit() == after


def served_certificate():
    """The certificate the balancer serves for the site's name, verified against Pebble's
    root for that name (chain and hostname): its serial, issuer and names."""
    verify = root(LB).run(f"openssl s_client -connect 127.0.0.1:443 -servername {NAME} -CAfile {PEBBLE_ROOT}"
                          f" -verify_hostname {NAME} -verify_return_error </dev/null 2>&1")
    assert verify.rc == 0 and "Verify return code: 0 (ok)" in verify.stdout, verify.stdout[-1500:]
    return root(LB).check_output(
        f"openssl s_client -connect 127.0.0.1:443 -servername {NAME} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial -issuer -ext subjectAltName")


def test_the_certificate_comes_from_pebble_through_the_balancer_and_renews_without_a_step():
    # Pebble's root (made at its start, served on its management port) on the balancer.
    pebble_root = root("stack-ops").check_output("curl -sk https://localhost:15000/roots/0")
    assert pebble_root.startswith("-----BEGIN CERTIFICATE-----"), pebble_root[:200]
    subprocess.run(["docker", "exec", "-i", LB, "sh", "-c", f"cat > {PEBBLE_ROOT}"], input=pebble_root + "\n",
                   text=True, check=True)
    before = served_certificate()
    assert "Pebble" in before and f"DNS:{NAME}" in before and f"DNS:www.{NAME}" in before, before
    # The renewal certbot's timer runs, forced: the challenge is answered through the
    # balancer by certbot's standalone server; the deploy hook reloads HAProxy.
    root(LB).check_output("REQUESTS_CA_BUNDLE=/etc/ssl/pebble-test/ca.pem certbot renew --force-renewal "
                          "--no-random-sleep-on-renew --cert-name multinotes")
    after = served_certificate()
    serial = re.compile(r"serial=(\w+)")
    assert serial.search(after).group(1) != serial.search(before).group(1), (before, after)
    assert "Pebble" in after
    # The web hosts hold no certificate: TLS ends at the balancer.
    for name in WEBS:
        assert not root(name).file("/etc/letsencrypt/live").exists, name


def pid1_start(name):
    return root(name).check_output("awk '{print $22}' /proc/1/stat")


def test_a_rolling_reboot_under_load_fails_no_request():
    before = {name: pid1_start(name) for name in WEBS}
    lb_before = pid1_start(LB)
    with Load() as load:
        time.sleep(2)
        started = time.monotonic()
        rc, out, _ = play("reboot.yml", reboot_force=True, reboot_boot_time_command="awk '{print $22}' /proc/1/stat")
        elapsed = time.monotonic() - started
        time.sleep(2)
    line = load.report("rolling reboot of both web hosts (reboot.yml -e reboot_force=true) under load", elapsed)
    assert rc == 0, out
    assert load.counts["failed"] == 0, (line, load.errors[:5])
    after = {name: pid1_start(name) for name in WEBS}
    assert all(after[name] != before[name] for name in WEBS), (before, after)
    assert pid1_start(LB) == lb_before
    assert all(s["state"] == "UP" for s in lb_status().values()), lb_status()


@pytest.mark.parametrize("extra, message", [
    ({"reboot_batch": 0}, "reboot_batch=0"),
    ({"reboot_batch": 2}, "would take all 2 web hosts out of the balancers"),
])
def test_bad_reboot_input_fails_before_any_change(extra, message):
    before = {name: pid1_start(name) for name in WEBS}
    rc, out, _ = play("reboot.yml", reboot_force=True, **extra)
    assert rc != 0 and message in out, out
    assert {name: pid1_start(name) for name in WEBS} == before
