"""The web edge (nginx + certbot), by behaviour: real HTTP(S) requests as a browser, an
attacker or the ACME CA would make them, from the Pebble container (trusting the CA
that issued the served certificate), from the peer web host and from loopback.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra
import testlib

SCENARIO = Path(__file__).resolve().parents[1]
APEX = {"web-12": "multinotes-12.test", "web-13": "multinotes-13.test"}
NAMES = {host: [apex, f"www.{apex}", f"api.{apex}"] for host, apex in APEX.items()}
PEER = {"web-12": "web-13", "web-13": "web-12"}
HOSTS = list(APEX)
ROOT = "/tmp/pebble-root.pem"  # Pebble's issuing root, on the client
LOGIN_BURST = 3  # converge.yml: nginx_login_limit_burst
API_BURST = 20  # the role's default nginx_api_limit_burst
FLAG = "/var/lib/multinotes-nginx/maintenance.on"
MIB = 1024 * 1024
PROTOCOL = {"-tls1": "TLSv1", "-tls1_1": "TLSv1.1", "-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}


def expected_headers(host):
    connect = " ".join(f"https://{name} wss://{name}" for name in NAMES[host])
    return {
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "X-XSS-Protection": "1; mode=block",
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data: https:; font-src 'self' data:; connect-src 'self' {connect};"),
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Permissions-Policy": ("accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
                               "microphone=(), payment=(), usb=()"),
    }


@dataclass
class Response:
    rc: int
    status: int = 0
    version: str = ""
    headers: dict = field(default_factory=dict)
    body: str = ""

    def header(self, name):
        return self.headers.get(name.lower(), [])


def sh(*argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def fetch(client, url, *curl_args, cacert=ROOT, body=True):
    """One request with curl; the last header block, parsed, and the body (text) unless body=False."""
    tls = ["--cacert", cacert] if cacert else ["-k"]
    show_body = "cat /tmp/t.b 2>/dev/null; " if body else ""
    cmd = (sh("curl", "-sS", "--max-time", "120", *tls, "-D", "/tmp/t.h", "-o", "/tmp/t.b", *curl_args, url)
           + "; rc=$?; cat /tmp/t.h 2>/dev/null; echo '=====BODY====='; " + show_body
           + "rm -f /tmp/t.h /tmp/t.b; exit $rc")
    result = client.run(cmd)
    head, _, text = result.stdout.partition("=====BODY=====\n")
    blocks = [b for b in head.replace("\r\n", "\n").split("\n\n") if b.strip()]
    response = Response(rc=result.rc, body=text)
    if blocks:
        lines = blocks[-1].strip().split("\n")
        response.version, status = lines[0].split()[:2]
        response.status = int(status)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response.headers.setdefault(name.strip().lower(), []).append(value.strip())
    return response


def docker_host(name):
    # The docker backend: each command is one `docker exec`, much faster than Ansible's.
    return testinfra.get_host(f"docker://{name}")


def main_pid(h):
    return h.check_output("systemctl show -p MainPID --value nginx")


def served_certificate(client, name, field_args="-serial"):
    return client.check_output(
        "openssl s_client -connect %s:443 -servername %s </dev/null 2>/dev/null | openssl x509 -noout " + field_args,
        name, name)


def wait_for_upstream(h, apex):
    h.check_output("for i in $(seq 50); do curl -sk -o /dev/null -f --resolve %s:443:127.0.0.1 https://%s/ && exit 0; "
                   "sleep 0.2; done; exit 1", apex, apex)


@pytest.fixture(scope="module")
def client():
    c = docker_host("pebble")
    c.check_output("curl -sSf --cacert /etc/pebble/ca.pem https://localhost:15000/roots/0 -o %s", ROOT)
    return c


@pytest.fixture(scope="module")
def web():
    return {name: docker_host(name) for name in HOSTS}


class Responses:
    """One response of each kind nginx sends, per web host, from the Pebble client: made
    when a test first asks for it, so a kind that cannot be produced fails its own tests,
    named, instead of erroring every test of every kind."""

    def __init__(self, client, web):
        self.client, self.web, self.made = client, web, {}

    def __getitem__(self, key):
        if key not in self.made:
            self.made[key] = self.make(*key)
        return self.made[key]

    def make(self, host, kind):
        client, h, apex = self.client, self.web[host], APEX[host]
        if kind == "proxied page":
            return fetch(client, f"https://{apex}/")
        if kind == "static file":
            return fetch(client, f"https://{apex}/static/css/app.css")
        if kind == "404":
            return fetch(client, f"https://{apex}/static/css/missing.css")
        if kind == "redirect":
            return fetch(client, f"http://{apex}/")
        if kind == "413":
            client.check_output("truncate -s %s /tmp/upload-251m", str(251 * MIB))  # sparse: no memory, no disk
            return fetch(client, f"https://{apex}/upload/", "-X", "POST", "-T", "/tmp/upload-251m")
        if kind == "429":
            for _ in range(LOGIN_BURST + 2):
                last = fetch(client, f"https://{apex}/api/v1/auth/login/")
            return last
        if kind == "502":
            h.check_output("systemctl stop test-upstream")
            try:
                return fetch(client, f"https://{apex}/")
            finally:
                h.check_output("systemctl start test-upstream")
                wait_for_upstream(h, apex)
        if kind == "503":
            h.check_output("touch %s", FLAG)
            try:
                return fetch(client, f"https://{apex}/")
            finally:
                h.check_output("rm -f %s", FLAG)
        raise ValueError(kind)


@pytest.fixture(scope="module")
def responses(client, web):
    return Responses(client, web)


KINDS = {"proxied page": 200, "static file": 200, "404": 404, "redirect": 301,
         "413": 413, "429": 429, "502": 502, "503": 503}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kind", KINDS)
def test_response_kind_has_its_status(responses, host, kind):
    assert responses[host, kind].status == KINDS[kind], responses[host, kind]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("header", list(expected_headers("web-12")))
def test_security_header_is_on_every_response(responses, host, kind, header):
    # Exactly one copy with the exact value: the app's own X-Frame-Options: SAMEORIGIN is dropped.
    assert responses[host, kind].header(header) == [expected_headers(host)[header]], responses[host, kind].headers


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kind", ["proxied page", "404"])
def test_server_does_not_reveal_its_version(responses, host, kind):
    response = responses[host, kind]
    assert response.header("Server") == ["nginx"]
    assert "nginx/" not in response.body


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("version,accepted", [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)])
def test_only_tls_1_2_and_1_3_are_accepted(client, host, version, accepted):
    # SECLEVEL=0 and no system config: the client really offers the old protocols (see the control below).
    cipher = "" if version == "-tls1_3" else "-cipher 'DEFAULT:@SECLEVEL=0'"
    result = client.run(f"OPENSSL_CONF=/dev/null openssl s_client -brief -connect %s:443 -servername %s {version} {cipher} </dev/null",
                        APEX[host], APEX[host])
    assert (result.rc == 0) is accepted, result.stdout + result.stderr
    if accepted:
        assert f"Protocol version: {PROTOCOL[version]}\n" in result.stdout + result.stderr


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_the_client_can_speak_tls_1_0_and_1_1(client, version):
    # Control for the refusals above: the same client command completes an old handshake
    # with a server that allows it, so the refusal is nginx's doing.
    client.run("systemctl stop test-old-tls")
    client.check_output("systemd-run --unit=test-old-tls --quiet env OPENSSL_CONF=/dev/null openssl s_server -www "
                        "-accept 127.0.0.1:4433 -cert /etc/pebble/cert.pem -key /etc/pebble/key.pem "
                        "-cipher 'DEFAULT:@SECLEVEL=0' -naccept 1")
    try:
        time.sleep(1)
        result = client.run(f"OPENSSL_CONF=/dev/null openssl s_client -brief -connect 127.0.0.1:4433 {version} "
                            "-cipher 'DEFAULT:@SECLEVEL=0' </dev/null")
        assert result.rc == 0, result.stdout + result.stderr
        assert f"Protocol version: {PROTOCOL[version]}\n" in result.stdout + result.stderr
    finally:
        client.run("systemctl stop test-old-tls")


@pytest.mark.parametrize("host", HOSTS)
def test_http2_is_served(client, host):
    assert client.check_output(sh("curl", "-sS", "--cacert", ROOT, "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                                  f"https://{APEX[host]}/")) == "2"


@pytest.mark.parametrize("host,name", [(host, name) for host in HOSTS for name in NAMES[host]])
def test_certificate_is_pebble_issued_and_verifies_for_every_name(client, host, name):
    response = fetch(client, f"https://{name}/")  # curl verifies the chain to Pebble's root and the name
    assert response.rc == 0 and response.status == 200, response
    issuer = served_certificate(client, name, "-issuer")
    assert "Pebble Intermediate" in issuer, issuer
    san = served_certificate(client, name, "-ext subjectAltName")
    assert sorted(part.strip().removeprefix("DNS:") for part in san.splitlines()[1].split(",")) == sorted(NAMES[host])
    assert "id-ecPublicKey" in served_certificate(client, name, "-text")


@pytest.mark.parametrize("host,name", [(host, name) for host in HOSTS for name in NAMES[host]])
def test_http_redirects_to_https_with_host_and_path(client, host, name):
    response = fetch(client, f"http://{name}/notes/42/?tab=share&x=1")
    assert response.status == 301
    assert response.header("Location") == [f"https://{name}/notes/42/?tab=share&x=1"]


@pytest.mark.parametrize("host", HOSTS)
def test_acme_challenges_are_served_over_http_not_redirected(client, web, host):
    web[host].check_output("mkdir -p /var/www/acme/.well-known/acme-challenge && "
                           "echo probe-token > /var/www/acme/.well-known/acme-challenge/probe")
    try:
        response = fetch(client, f"http://{APEX[host]}/.well-known/acme-challenge/probe")
        assert (response.status, response.body.strip()) == (200, "probe-token")
    finally:
        web[host].run("rm -f /var/www/acme/.well-known/acme-challenge/probe")


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("case", ["unknown SNI", "no SNI", "unknown Host over HTTP"])
def test_unknown_hosts_are_refused(client, web, host, case):
    ip = testlib.address(web[host])
    apex = APEX[host]
    argv = {
        "unknown SNI": ["curl", "-sS", "-k", "--resolve", f"evil.test:443:{ip}", "https://evil.test/"],
        "no SNI": ["curl", "-sS", "-k", f"https://{ip}/"],
        "unknown Host over HTTP": ["curl", "-sS", "-H", "Host: evil.test", f"http://{apex}/"],
    }[case]
    result = client.run(sh(*argv, "-o", "/dev/null", "-w", "%{http_code}"))
    # 35: the TLS handshake was refused; 52: the connection was closed without a reply (444).
    assert result.rc == (35 if "SNI" in case else 52), result.stdout + result.stderr


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_a_host_other_than_the_tls_name_gets_421_misdirected(client, host, http):
    """A connection made for one of the site's names (verified certificate) that asks for an
    unknown Host gets 421 Misdirected Request, over HTTP/1.1 and HTTP/2 alike: the default
    server's guard, which gixy-ng's http2_misdirected_request check asks for."""
    apex = APEX[host]
    r = fetch(client, f"https://{apex}/health/", http, "-H", "Host: evil.test")
    assert r.rc == 0 and r.status == 421, r
    assert r.version == ("HTTP/2" if http == "--http2" else "HTTP/1.1"), r
    # The site's own names on the same kind of connection are still served.
    assert fetch(client, f"https://{apex}/health/", http, "-H", f"Host: api.{apex}").status == 200


@pytest.mark.parametrize("host", HOSTS)
def test_proxy_headers_let_django_trust_the_edge(client, host):
    response = fetch(client, f"https://{APEX[host]}/echo/")
    seen = json.loads(response.body)["headers"]
    client_ip = testlib.address(client)
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["Host"] == APEX[host]
    assert seen["X-Real-IP"] == client_ip
    assert seen["X-Forwarded-For"] == client_ip


@pytest.mark.parametrize("host", HOSTS)
def test_upstream_connections_are_kept_alive(web, host):
    apex = APEX[host]
    out = web[host].check_output(sh("curl", "-sk", "--resolve", f"{apex}:443:127.0.0.1", "-w", "\n",
                                    f"https://{apex}/first", f"https://{apex}/second"))
    first, second = (json.loads(line) for line in out.splitlines() if line.strip())
    assert first["connection"] == second["connection"], (first, second)


@pytest.mark.parametrize("host,path,via", [
    ("web-12", "/admin/login/", "peer"), ("web-13", "/admin/login/", "peer"),
    ("web-12", "/api/v1/auth/login/", "loopback"), ("web-13", "/api/v1/auth/login/", "loopback"),
])
def test_login_gets_429_after_the_burst_and_other_paths_do_not(web, host, path, via):
    apex = APEX[host]
    src = web[PEER[host]] if via == "peer" else web[host]
    resolve = [] if via == "peer" else ["--resolve", f"{apex}:443:127.0.0.1"]
    probe = sh("curl", "-sk", *resolve, "-o", "/dev/null", "-w", "%{http_code} ", f"https://{apex}{path}")
    codes = src.check_output(f"for i in $(seq {LOGIN_BURST + 2}); do {probe}; done").split()
    assert codes == ["200"] * (LOGIN_BURST + 1) + ["429"], codes
    other = sh("curl", "-sk", *resolve, "-o", "/dev/null", "-w", "%{http_code}", f"https://{apex}/notes/")
    assert src.check_output(other) == "200"


@pytest.mark.parametrize("host", HOSTS)
def test_api_gets_429_per_client_beyond_its_burst(web, host):
    # 60 requests on one connection arrive within a second or two: the API burst (20) plus
    # what the rate refills pass, then 429s. The limit is per client address: the peer,
    # which has not used the API, still gets 200 right after. (A client nginx has seen
    # before, as loopback is by the login test's /api/v1/auth/login/, has its first request
    # counted into the burst: 20 pass plus the refill, a new one 21 plus the refill.)
    apex = APEX[host]
    resolve = ["--resolve", f"{apex}:443:127.0.0.1"]
    # One -o per URL: curl pairs each output option with the next URL.
    urls = [arg for i in range(60) for arg in ("-o", "/dev/null", f"https://{apex}/api/notes/{i}/")]
    # A pause first: the excess loopback's earlier requests left in the zone (at most the
    # burst, 20) drains at 10 r/s, in 2 s; 2.5 s for margin. Without it, once in CI (load 16)
    # the 20th request was already refused: the login test's requests to
    # /api/v1/auth/login/ count in this zone too. After the drain a client's first request
    # starts from an excess of at most 1, so the first 20 pass however slow the host is
    # (a slower host only adds refill).
    time.sleep(2.5)
    codes = web[host].check_output(sh("curl", "-sk", *resolve, "-w", "%{http_code} ", *urls)).split()
    assert codes[:API_BURST] == ["200"] * API_BURST, codes
    assert "429" in codes, codes
    peer = sh("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://{apex}/api/notes/")
    assert web[PEER[host]].check_output(peer) == "200"


def test_an_exempt_source_skips_the_limits_outside_production_only(web):
    """A capacity test's allow-list entry (nginx_limit_exempt_sources): on a staging host
    loopback's 60 API requests all pass while the peer stays limited; converged back
    without it, loopback gets 429 again. Production refuses it (the bad-input cases)."""
    host = "web-13"
    apex = APEX[host]
    urls = [arg for i in range(60) for arg in ("-o", "/dev/null", f"https://{apex}/api/notes/{i}/")]
    burst = sh("curl", "-sk", "--resolve", f"{apex}:443:127.0.0.1", "-w", "%{http_code} ", *urls)
    peer_burst = sh("curl", "-sk", "-w", "%{http_code} ", *urls)

    def converge(extra_vars):
        rc, out, recap = testlib.run_playbook(SCENARIO / "converge.yml", limit=host, extra_vars=extra_vars,
                                              tags=["nginx_packages", "nginx_config"])
        assert rc == 0 and recap[host]["failed"] == 0, out

    converge({"multinotes_environment": "staging", "nginx_limit_exempt_sources": ["127.0.0.1"]})
    try:
        codes = web[host].check_output(burst).split()
        assert codes == ["200"] * 60, codes
        assert "429" in web[PEER[host]].check_output(peer_burst).split()
    finally:
        converge({})
    assert "429" in web[host].check_output(burst).split()


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mib,status", [(249, 200), (251, 413)])
def test_upload_size_limit(client, host, mib, status):
    client.check_output("truncate -s %s /tmp/upload-%s", str(mib * MIB), str(mib))
    response = fetch(client, f"https://{APEX[host]}/upload/", "-X", "POST", "-T", f"/tmp/upload-{mib}")
    assert response.status == status, response
    if status == 200:
        assert json.loads(response.body)["received"] == mib * MIB


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("path,cache_control", [
    ("/static/css/app.0123456789ab.css", "public, max-age=31536000, immutable"),
    ("/static/css/app.css", "public, max-age=3600"),
])
def test_static_files_are_served_with_cache_headers(client, host, path, cache_control):
    response = fetch(client, f"https://{APEX[host]}{path}")
    assert response.status == 200
    assert response.body.startswith("body { color: #222;")
    assert response.header("Cache-Control") == [cache_control]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_static_files_are_compressed(client, host, encoding):
    response = fetch(client, f"https://{APEX[host]}/static/css/app.css", "-H", f"Accept-Encoding: {encoding}", body=False)
    assert response.header("Content-Encoding") == [encoding]


@pytest.mark.parametrize("host", HOSTS)
def test_maintenance_mode(client, web, host):
    h, apex = web[host], APEX[host]
    h.check_output("touch %s", FLAG)
    try:
        page = fetch(client, f"https://{apex}/notes/")
        assert page.status == 503
        assert page.header("Retry-After") == ["600"]
        assert "maintenance" in page.body
        assert fetch(client, f"https://{apex}/health/").status == 200
        allowed = h.check_output(sh("curl", "-sk", "--resolve", f"{apex}:443:127.0.0.1", "-o", "/dev/null",
                                    "-w", "%{http_code}", f"https://{apex}/notes/"))
        assert allowed == "200"  # 127.0.0.1 is in nginx_maintenance_allow
    finally:
        h.check_output("rm -f %s", FLAG)
    assert fetch(client, f"https://{apex}/notes/").status == 200


@pytest.mark.parametrize("host", HOSTS)
def test_certbot_service_renews_a_due_certificate_and_nginx_serves_it(client, web, host):
    """Renewal is Debian's certbot.timer: the unit it starts, run as the timer runs it, with
    a certificate made due (renew_before_expiry past its whole life), renews through Pebble,
    and the deploy hook has nginx serve the new certificate without a restart."""
    h, apex = web[host], APEX[host]
    timer = h.service("certbot.timer")
    assert timer.is_enabled and timer.is_running
    # No cron job of ours: Debian's /etc/cron.d/certbot skips itself when systemd runs.
    assert h.run("grep -rl certbot /etc/crontab /etc/cron.hourly /etc/cron.daily /var/spool/cron").rc != 0
    conf = "/etc/letsencrypt/renewal/multinotes.conf"
    h.check_output("cp -p %s /root/multinotes.conf.orig", conf)
    before, pid = served_certificate(client, apex), main_pid(h)
    try:
        h.check_output("sed -i '/^renew_before_expiry/d; 1i renew_before_expiry = 36500 days' %s", conf)
        run = h.run("systemctl start certbot.service")
        assert run.rc == 0, run.stderr + testlib.journal(h, "certbot.service")
    finally:
        h.check_output("cp -p /root/multinotes.conf.orig %s", conf)
    deadline = time.monotonic() + 15
    while (after := served_certificate(client, apex)) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert after != before, f"certbot.service ran, nginx still serves {before}:\n{testlib.journal(h, 'certbot.service')}"
    assert main_pid(h) == pid, "nginx was restarted, not reloaded"


@pytest.mark.parametrize("host", HOSTS)
def test_forced_renewal_is_served_without_a_manual_restart(client, web, host):
    h, apex = web[host], APEX[host]
    before, pid = served_certificate(client, apex), main_pid(h)
    renew = h.run("REQUESTS_CA_BUNDLE=/etc/ssl/pebble-test/ca.pem certbot renew --force-renewal "
                  "--cert-name multinotes --no-random-sleep-on-renew")
    assert renew.rc == 0, renew.stdout + renew.stderr
    for _ in range(30):
        after = served_certificate(client, apex)
        if after != before:
            break
        time.sleep(0.5)
    assert after != before, f"still serving {before} after the renewal"
    assert main_pid(h) == pid, "nginx was restarted, not reloaded"
    assert fetch(client, f"https://{apex}/").status == 200


def nginx_request(h, apex, marker):
    """One request from loopback whose path (and so its access log line) carries `marker`."""
    h.check_output("curl -sk -o /dev/null --resolve %s:443:127.0.0.1 https://%s/%s", apex, apex, marker)


@pytest.mark.parametrize("host", HOSTS)
def test_logrotate_config_has_no_error(web, host):
    out = web[host].run("logrotate -d /etc/logrotate.conf")
    # Its messages name files such as error.log: look for its own error lines only.
    assert out.rc == 0 and not re.search(r"^error:", out.stdout + out.stderr, re.M), out.stdout + out.stderr
    # nginx's logs are named by one config only: Debian's is diverted out of logrotate's way.
    assert "/etc/logrotate.d/nginx.dpkg-dist" in web[host].check_output("dpkg-divert --list /etc/logrotate.d/nginx")
    assert web[host].check_output("grep -l /var/log/nginx /etc/logrotate.d/* | grep -v '[.]dpkg-dist$'") == (
        "/etc/logrotate.d/nginx")


# Rotate for real, twice: nginx writes its next line to the new file (USR1: reopen, not
# restart), and the first rotated file is compressed at the second rotation (delaycompress).
@pytest.mark.parametrize("host", HOSTS)
def test_nginx_reopens_its_log_after_a_rotation_and_it_is_compressed_next_time(web, host):
    h, apex = web[host], APEX[host]
    pid = main_pid(h)
    before, after = f"logrotate-before-{host}-{time.time_ns()}", f"logrotate-after-{host}-{time.time_ns()}"
    nginx_request(h, apex, before)
    h.check_output("logrotate -f /etc/logrotate.d/nginx")
    log = h.file("/var/log/nginx/access.log")
    assert (log.user, log.group, log.mode) == ("www-data", "adm", 0o640)
    # USR1 is asynchronous (the master reopens, then tells its workers): one request with a
    # fresh marker at a time until one lands in the new file, at most 10 s.
    deadline, attempt, marker = time.monotonic() + 10, 0, None
    while marker is None or (marker not in log.content_string and time.monotonic() < deadline):
        attempt += 1
        marker = f"{after}-{attempt}"
        nginx_request(h, apex, marker)
        time.sleep(0.2)
    after = marker
    assert after in log.content_string, "the new line is not in the new access.log"
    assert before not in log.content_string
    rotated = h.file("/var/log/nginx/access.log.1").content_string
    assert before in rotated and after not in rotated
    assert main_pid(h) == pid, "nginx was restarted, not told to reopen its logs"
    h.check_output("logrotate -f /etc/logrotate.d/nginx")
    assert h.run("gzip -t /var/log/nginx/access.log.2.gz").rc == 0
    assert before in h.check_output("zcat /var/log/nginx/access.log.2.gz")
    assert after in h.file("/var/log/nginx/access.log.1").content_string  # not compressed yet


def test_a_config_logrotate_rejects_never_replaces_the_installed_one(web):
    h = web["web-12"]
    before = h.check_output("sha256sum /etc/logrotate.d/nginx")
    rc, out, recap = testlib.run_playbook(SCENARIO / "converge.yml", limit="web-12",
                                          extra_vars={"logrotate_nginx_user": "no-such-user"})
    assert rc != 0, out
    assert "no-such-user" in out and "failed to validate" in out, out
    assert recap["web-12"]["failed"] == 1 and recap["web-12"]["changed"] == 0, out
    assert h.check_output("sha256sum /etc/logrotate.d/nginx") == before
    assert h.run("logrotate -d /etc/logrotate.d/nginx").rc == 0


@pytest.mark.parametrize("bad_vars,named", [
    ({"nginx_server_names": ["multinotes-12.test", "bad_name!.test"]}, "nginx_server_names"),
    ({"nginx_server_names": []}, "nginx_server_names"),
    ({"nginx_client_max_body_size": "250 MB"}, "nginx_client_max_body_size"),
    ({"nginx_login_limit_rate": "5 per minute"}, "nginx_login_limit_rate"),
    ({"nginx_tls_profile": "old"}, "nginx_tls_profile"),
    ({"certbot_acme_directory": "http://pebble:14000/dir"}, "certbot_acme_directory"),
    ({"logrotate_rotate": "thirty"}, "logrotate_rotate"),
    ({"logrotate_rotate": 0}, "logrotate_rotate"),
    ({"logrotate_nginx_mode": 640}, "logrotate_nginx_mode"),
    ({"logrotate_frequency": "hourly"}, "logrotate_frequency"),
    ({"nginx_worker_connections": 1024, "nginx_worker_rlimit_nofile": 1500}, "nginx_worker_rlimit_nofile"),
], ids=["invalid-domain", "empty-domains", "size", "rate", "tls-profile", "acme-url",
        "rotate-not-int", "rotate-zero", "log-mode", "frequency", "rlimit-below-2x"])
@testlib.batched(lambda bad_vars, **_: dict(playbook=SCENARIO / "converge.yml", limit="web-12", extra_vars=bad_vars))
def test_bad_input_fails_before_any_change(batched_run, bad_vars, named):
    testlib.assert_refused(batched_run, limit="web-12", named=named)


@pytest.mark.parametrize("bad_vars,says", [
    ({"nginx_limit_exempt_sources": ["10.0.0.5"]}, "in production: an address there skips the login and API rate limits"),
    ({"multinotes_environment": "staging", "nginx_limit_exempt_sources": ["loadgen"]},
     "which is not an IPv4/IPv6 address or CIDR network"),
], ids=["in-production", "not-an-address"])
@testlib.batched(lambda bad_vars, **_: dict(playbook=SCENARIO / "converge.yml", limit="web-12", extra_vars=bad_vars))
def test_a_rate_limit_exemption_is_refused_in_production_or_when_not_an_address(batched_run, bad_vars, says):
    out = testlib.assert_refused(batched_run, limit="web-12", named="nginx_limit_exempt_sources")
    assert says in " ".join(out.split()), out


@pytest.mark.parametrize("host", HOSTS)
def test_gixy_finds_nothing_in_the_running_configuration(web, host, tmp_path):
    """gixy-ng (the controller's pinned one) on `nginx -T` of the running nginx: every check,
    every severity, 0 findings. No --nginx-version: Debian patches CVEs without bumping it."""
    dump = tmp_path / f"{host}-nginx-T.conf"
    dump.write_text(web[host].check_output("nginx -T 2>/dev/null"))
    gixy = shutil.which("gixy") or str(Path(sys.executable).with_name("gixy"))
    proc = subprocess.run([gixy, "-f", "json", str(dump)], capture_output=True, text=True, timeout=300)
    findings = json.loads(proc.stdout or "[]")
    print(f"gixy-ng on {host}: {len(findings)} findings"
          + "".join(f"\n  [{f['severity']}] {f['plugin']}: {f['reason']} ({f['file']}:{f['line']})" for f in findings))
    assert proc.returncode == 0 and findings == [], proc.stdout + proc.stderr


@pytest.mark.parametrize("host", HOSTS)
def test_nginx_runs_sandboxed(web, host):
    """systemd-analyze security: the drop-in brings nginx from 9.6 to at most 4.9, and the
    running master really is in it (read-only /etc, its own pid directory)."""
    h = web[host]
    exposure, out = testlib.exposure(h, "nginx.service")
    print(f"systemd-analyze security nginx.service on {host}: {exposure}")
    assert exposure <= 4.9, out
    pid = main_pid(h)
    assert h.check_output("cat /run/nginx/nginx.pid") == pid
    # CHOWN(0) DAC_OVERRIDE(1) KILL(5) SETGID(6) SETUID(7) NET_BIND_SERVICE(10), nothing else.
    bounding = int(h.check_output("awk '/^CapBnd:/ {print $2}' /proc/%s/status", pid), 16)
    assert bounding == sum(1 << cap for cap in (0, 1, 5, 6, 7, 10)), hex(bounding)
    # In the master's mount namespace /etc is read-only and its log directory is not.
    probe = h.run("nsenter -t %s -m touch /etc/nginx/sandbox-probe", pid)
    assert probe.rc != 0 and "Read-only file system" in probe.stderr, probe.stderr
    h.check_output("nsenter -t %s -m sh -c 'touch /var/log/nginx/sandbox-probe && rm /var/log/nginx/sandbox-probe'", pid)


def test_drift_and_stopped_units_are_reported_in_check_mode_and_put_back(web):
    """A no-op converge installs only the files the whole-tree test found different and asks
    systemd only about units not active and enabled (issue #20): a hand-edited file, a
    disabled nginx and stopped timers are still reported by check mode, then put back, and
    the file's change reloads nginx."""
    host = "web-13"
    h = web[host]
    conf = "/etc/nginx/snippets/multinotes-proxy.conf"
    want, pid = h.check_output("sha256sum %s", conf), main_pid(h)
    h.check_output("echo '# a hand edit' >> %s", conf)
    h.check_output("systemctl disable nginx && systemctl disable --now logrotate.timer certbot.timer")
    rc, out, recap = testlib.run_playbook(SCENARIO / "converge.yml", limit=host, check=True)
    # The four tasks, and the reload their file change notifies (check mode runs handlers too).
    assert rc == 0 and recap[host]["changed"] == 5, out
    assert "RUNNING HANDLER [nginx : Reload nginx]" in out, out
    for task in ("Install the tested configuration", "Start nginx now and at boot",
                 "Start the logrotate timer and enable it at boot", "Start the renewal timer now and at boot"):
        assert re.search(rf"TASK \[\w+ : {task}\][^\n]*\n(?:[^\n]*\n)?changed:", out), f"{task}:\n{out}"
    assert h.check_output("sha256sum %s", conf) != want
    rc, out, recap = testlib.run_playbook(SCENARIO / "converge.yml", limit=host)
    # The same five, for real.
    assert rc == 0 and recap[host]["changed"] == 5, out
    assert "RUNNING HANDLER [nginx : Reload nginx]" in out, out
    assert h.check_output("sha256sum %s", conf) == want
    for unit in ("nginx", "logrotate.timer", "certbot.timer"):
        assert h.service(unit).is_enabled and h.service(unit).is_running, unit
    assert main_pid(h) == pid, "nginx was restarted, not reloaded"


# Last: it leaves the rejected configuration in the staging directory (never in /etc/nginx).
def test_an_invalid_directive_never_reaches_the_running_nginx(client, web):
    h = web["web-12"]
    live = "sha256sum /etc/nginx/nginx.conf /etc/nginx/conf.d/multinotes.conf /etc/nginx/snippets/multinotes-*.conf"
    before, pid = h.check_output(live), main_pid(h)
    rc, out, recap = testlib.run_playbook(SCENARIO / "converge.yml", limit="web-12",
                                          extra_vars={"nginx_server_extra_config": "multinotes_no_such_directive on;"})
    assert rc != 0, out
    assert "nginx -t rejected the configuration" in out, out
    assert 'unknown directive "multinotes_no_such_directive"' in out, out
    assert recap["web-12"]["failed"] == 1, out
    assert h.check_output(live) == before
    assert main_pid(h) == pid
    assert h.run("nginx -t").rc == 0
    response = fetch(client, f"https://{APEX['web-12']}/")
    assert response.status == 200
    assert response.header("X-Frame-Options") == ["DENY"]
