"""The app's third-party services, by behaviour: a real mail through an SMTP relay that
requires STARTTLS (aiosmtpd on app-redis, its certificate verified by the app), errors of
a request and of a Celery task arriving at a Sentry receiver with environment and release,
and bad settings refused before any change without printing a secret."""

import email
import json
import time
import uuid

import pytest
import testlib

from scenario import ENV_FILE, PLAYBOOK, SECRETS, SOCKET, VALID

MAILDIR = "/var/lib/test-services/maildir/new"
SENTRY_ITEMS = "/var/lib/test-services/sentry.jsonl"


@pytest.fixture(scope="module")
def hosts():
    return {name: testlib.host(name) for name in ("app-web", "app-worker", "app-redis")}


def sentry_events(services, marker, seconds=60):
    """The events the receiver got whose exception carries `marker`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = []
        lines = services.run("cat %s", SENTRY_ITEMS).stdout.splitlines()
        for number, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
            except ValueError:
                # The receiver may be appending this very line as it is read: only the last
                # line can be cut so (the next poll reads it whole); any other is a real fault.
                if number == len(lines):
                    continue
                raise
            payload = item["payload"] or {}
            values = (payload.get("exception") or {}).get("values") or []
            if item["type"] == "event" and any(marker in (v.get("value") or "") for v in values):
                found.append(dict(payload, _auth=item["auth"], _project=item["project"]))
        if found:
            return found
        time.sleep(1)
    return []


def post_sentry_check(web, *headers):
    """The status of a POST to the Sentry check endpoint through the live slot's socket."""
    return web.check_output(
        "curl -s -o /dev/null -w '%%{http_code}' --unix-socket %s -X POST -H 'Host: app.test' "
        "-H 'X-Forwarded-Proto: https' " + " ".join(["-H %s"] * len(headers)) + " http://app.test/api/v1/sentry-check/",
        SOCKET, *headers)


def test_env_file_holds_the_features_on_and_nothing_of_those_off(hosts):
    env = hosts["app-web"].check_output("cat %s", ENV_FILE)
    for line in ('SMTP_HOST="app-redis"', 'SMTP_PORT="2525"', 'SMTP_SECURITY="starttls"',
                 'DEFAULT_FROM_EMAIL="noreply@app.test"', 'SUPPORT_EMAIL="support@app.test"',
                 f'SENTRY_DSN="{VALID["app_sentry_dsn"]}"', 'SENTRY_ENVIRONMENT="production"'):
        assert line in env.splitlines(), line
    for name in ("RAZORPAY_KEY_ID", "GOOGLE_CLIENT_ID", "FACEBOOK_APP_ID", "OPENAI_API_KEY", "GEMINI_API_KEY",
                 "TOGETHER_API_KEY"):
        assert f"{name}=" not in env, f"{name} written although its feature is off"


def test_test_mail_is_delivered_over_starttls(hosts):
    """What the launch check runs: the relay accepts it, and it arrives as sent."""
    recipient = f"check-{uuid.uuid4().hex[:8]}@app.test"
    out = hosts["app-web"].check_output("multinotes-manage send_test_mail %s", recipient)
    assert "accepted by app-redis:2525 (STARTTLS)" in out, out
    services = hosts["app-redis"]
    deadline = time.monotonic() + 20
    message = None
    while message is None and time.monotonic() < deadline:
        for name in services.run("ls %s", MAILDIR).stdout.split():
            parsed = email.message_from_string(services.check_output("cat %s/%s", MAILDIR, name))
            if parsed["X-RcptTo"] == recipient:
                message = parsed
        time.sleep(0.5)
    assert message is not None, f"no mail to {recipient} in {MAILDIR}"
    assert message["X-MailFrom"] == "noreply@app.test" and message["From"] == "noreply@app.test"
    assert message["To"] == recipient
    assert message["Subject"].startswith("[multinotes] launch check test mail ")
    assert message["Subject"] in out


def test_the_relay_refuses_mail_without_starttls(hosts):
    """So the delivery above did use TLS: without it the relay takes nothing."""
    probe = ("import smtplib\ns = smtplib.SMTP('app-redis', 2525, timeout=10)\ns.ehlo()\n"
             "try:\n    s.sendmail('a@app.test', ['b@app.test'], 'Subject: plain\\n\\nx')\n    print('ACCEPTED')\n"
             "except smtplib.SMTPException as exc:\n    print('REFUSED', exc)\n")
    out = hosts["app-web"].check_output("python3 -c %s", probe)
    assert out.startswith("REFUSED") and "STARTTLS" in out, out


def test_an_error_raised_in_a_request_reaches_sentry(hosts):
    web = hosts["app-web"]
    token = web.check_output("multinotes-manage sentry_check --request-token").splitlines()[-1]
    marker = uuid.uuid4().hex
    assert post_sentry_check(web, f"X-Sentry-Check: {token}", f"X-Sentry-Check-Marker: {marker}") == "500"
    events = sentry_events(hosts["app-redis"], marker)
    assert events, f"no Sentry event for the request error:\n{hosts['app-redis'].run('tail -n 5 %s', SENTRY_ITEMS).stdout}"
    event = events[0]
    assert (event["environment"], event["release"]) == ("production", "1.0.0")
    assert event["exception"]["values"][-1]["type"] == "SentryCheckError"
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "django"
    assert event["server_name"] == "app-web" and event["_project"] == "7"
    assert "sentry_key=testonlykey0123" in event["_auth"]


def test_the_sentry_check_endpoint_is_404_without_a_token(hosts):
    assert post_sentry_check(hosts["app-web"], "X-Sentry-Check: forged") == "404"


def test_an_error_raised_in_a_celery_task_reaches_sentry(hosts):
    marker = uuid.uuid4().hex
    hosts["app-web"].check_output("multinotes-manage sentry_check --raise-in-task %s", marker)
    events = sentry_events(hosts["app-redis"], marker)
    assert events, f"no Sentry event for the task error:\n{testlib.journal(hosts['app-worker'], 'celery-worker-default')}"
    event = events[0]
    assert (event["environment"], event["release"]) == ("production", "1.0.0")
    assert event["exception"]["values"][-1]["type"] == "SentryCheckError"
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "celery"
    assert event["server_name"] == "app-worker"


def test_the_launch_checks_sentry_probe_is_accepted(hosts):
    out = hosts["app-worker"].check_output("multinotes-manage sentry_check")
    assert "Sentry accepted test event" in out and "(HTTP 200)" in out, out


# A valid value for each secret a bad case needs beside the one it breaks (test only).
RAZORPAY = {"app_razorpay_enabled": True, "app_razorpay_key_id": "rzp_live_TestOnly0123",
            "app_razorpay_key_secret": "Test-Only-Razorpay-Secret-77",  # pragma: allowlist secret
            "app_razorpay_webhook_secret": "Test-Only-Webhook-Secret-88"}  # pragma: allowlist secret
GOOGLE = {"app_oauth_google_enabled": True, "app_oauth_google_client_id": "1234-testonly.apps.googleusercontent.com",
          "app_oauth_google_client_secret": "Test-Only-Google-Secret-99",  # pragma: allowlist secret
          "app_oauth_google_redirect_uris": ["https://app.test/auth/google/callback/"]}


# Each case: the variable named, and the rule its message states (compared with whitespace
# normalised: the callback may fold a long message across lines; no quote, which YAML doubles).
@pytest.mark.parametrize("bad_vars,named,says", [
    (dict(RAZORPAY, app_razorpay_key_id="rzp_test_TestOnly0123"), "app_razorpay_key_id", "is a test key (rzp_test_...)"),
    (dict(RAZORPAY, app_razorpay_webhook_secret="<webhook secret>"), "app_razorpay_webhook_secret",
     "is empty or a template value"),
    (dict(GOOGLE, app_oauth_google_redirect_uris=["http://app.test/cb/"]), "app_oauth_google_redirect_uris[0]",
     "must be an https:// URL"),
    (dict(GOOGLE, app_oauth_google_redirect_uris=["https://elsewhere.test/cb/"]), "app_oauth_google_redirect_uris[0]",
     "is not on one of the site"),
    ({"app_llm_openai_enabled": True, "app_llm_openai_api_key": "CHANGEME"}, "app_llm_openai_api_key",  # pragma: allowlist secret
     "is empty or a template value"),
    ({"app_smtp_security": "none", "app_smtp_port": 25}, "app_smtp_security=none", "on app_smtp_port 25"),
    ({"app_smtp_user": "mailer", "app_smtp_password": ""}, "app_smtp_password", "(app_smtp_user is set)"),
    ({"app_sentry_traces_sample_rate": 1.5}, "app_sentry_traces_sample_rate", "must be a number from 0 to 1"),
    ({"app_sentry_dsn": "https://sentry.example.net/1"}, "app_sentry_dsn", "https://<key>@<host>/<project id>"),
], ids=["razorpay-test-key", "razorpay-placeholder", "redirect-http", "redirect-other-host", "llm-placeholder",
        "smtp-25-plain", "smtp-no-password", "sample-rate", "sentry-dsn"])
@testlib.batched(lambda bad_vars, **_: dict(playbook=PLAYBOOK, limit="app-web", extra_vars=dict(VALID, **bad_vars)))
def test_bad_third_party_setting_is_refused_before_any_change(batched_run, bad_vars, named, says):
    out = testlib.assert_refused(batched_run, limit="app-web", named=named)
    assert says in " ".join(out.split()), out
    good_secrets = [v for k, v in {**RAZORPAY, **GOOGLE}.items() if k.endswith("secret")]
    for secret in SECRETS + good_secrets + [v for v in bad_vars.values() if isinstance(v, str) and len(v) > 8]:
        assert secret not in out, "a secret value appears in the output"


@pytest.mark.parametrize("name", ["app-web", "app-worker"])
def test_the_live_release_has_a_passing_dependency_audit_on_record(hosts, name):
    """What the launch check's dependency-audit item reads."""
    h = hosts[name]
    record = json.loads(h.file("/srv/multinotes/current/AUDIT.json").content_string)
    live = h.check_output("basename $(readlink -f /srv/multinotes/current)")
    assert record["result"] == "pass" and record["vulnerable"] == [], record
    assert record["release_id"] == live
    assert record["osv_url"] == VALID["app_audit_osv_url"] and record["packages"] > 30


def vulnerable_release(tmp_path, **_):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("Django==4.2.0\n")
    return dict(playbook=PLAYBOOK, limit="app-web", extra_vars=dict(VALID, app_requirements_file=str(requirements)))


@testlib.batched(vulnerable_release)
def test_a_release_with_a_known_vulnerability_is_refused_before_any_change(batched_run):
    out = testlib.assert_refused(batched_run, limit="app-web", named="PYSEC-2023-61")
    assert "django 4.2.0: PYSEC-2023-61 (CVE-2023-31047), fixed in 4.2.1" in " ".join(out.split()), out
    assert "app_audit_allowlist" in out
