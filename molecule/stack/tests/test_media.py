"""Media on S3 through the front door (issue #16), before the story in test_stack.py: a
logged-in client uploads a file through the balancer (TLS) and nginx to the app, which
streams it to the media bucket (SeaweedFS on stack-ops, configured by site.yml's media
play); the bytes land as sent; nginx keeps no copy of an upload's body on the web host's
disk while it streams (a buffered path's body does land there, which shows the watch sees
one); the bucket refuses the object unsigned and serves the presigned URL from the answer
and from the app's redirect; a declared 251 MiB is refused at the edge and nothing lands."""

import hashlib
import json
import os
import subprocess
import time
from http.cookies import SimpleCookie

import boto3
import pytest
import yaml
from botocore.config import Config
from test_stack import NAME, WEBS, front, root

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARS = yaml.safe_load(open(os.path.join(SCENARIO, "group_vars", "all.yml")))
BUCKET = "multinotesai-media-production"  # group_vars/all/media.yml, environment production
USER, PASSWORD = "media-tester", "Test-Only-Media-Login-Pw-2026"  # pragma: allowlist secret
ORIGIN = f"https://{NAME}"
MIB = 1024 * 1024
BODY_TEMP = "/var/lib/nginx/body"  # Debian's nginx: --http-client-body-temp-path
S3_CA = "/etc/ssl/pebble-test/ca.pem"


def admin():
    """The controller's view of the bucket: the admin key, the CA the media play used."""
    return boto3.client(
        "s3", endpoint_url=f"https://10.231.7.20:{VARS['stack_test_s3_port']}", region_name="us-east-1",
        verify=os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "test-s3-ca.pem"),
        aws_access_key_id=VARS["media_s3_access_key"], aws_secret_access_key=VARS["media_s3_secret_key"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def keys():
    return {o["Key"] for o in admin().list_objects_v2(Bucket=BUCKET).get("Contents", [])}


@pytest.fixture(scope="module")
def session():
    """A user of the site, logged in through the front door: the headers of its requests."""
    root("stack-web").check_output(
        "multinotes-manage shell -c %s",
        f"from django.contrib.auth.models import User; User.objects.filter(username={USER!r}).exists() "
        f"or User.objects.create_user({USER!r}, '', {PASSWORD!r})")
    conn = front(timeout=60)
    conn.request("POST", "/api/v1/auth/login/", json.dumps({"username": USER, "password": PASSWORD}),
                 {"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 200, answer.read()
    cookies = SimpleCookie()
    for value in answer.headers.get_all("Set-Cookie"):
        cookies.load(value)
    conn.close()
    return {"Cookie": "; ".join(f"{k}={m.value}" for k, m in cookies.items()),
            "X-CSRFToken": cookies["csrftoken"].value, "Origin": ORIGIN, "Referer": ORIGIN + "/"}


# Prints the name of every file created in the directory (argv[1]) until its stdin closes,
# after a first line "watching". nginx unlinks a body's temp file right after creating it, so
# neither a listing nor (without CAP_SYS_PTRACE) the workers' open files show it; the
# creation itself does.
WATCH = r"""
import ctypes, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if fd < 0 or libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x100) < 0:  # IN_CREATE
    sys.exit(f"inotify: errno {ctypes.get_errno()}")
print("watching", flush=True)
while True:
    ready = select.select([fd, 0], [], [], 60)[0]
    if fd in ready:
        data, i = os.read(fd, 65536), 0
        while i < len(data):
            length = struct.unpack_from("iIII", data, i)[3]
            print(data[i + 16:i + 16 + length].rstrip(b"\0").decode(), flush=True)
            i += 16 + length
    elif not ready or not os.read(0, 1):  # the controller closed stdin (or a minute passed)
        break
"""


def slow_post(path, headers, body, seconds):
    """POST `body` in pieces over about `seconds`, while nginx's body temp directory on both
    web hosts is watched: (status, answer, the files created there meanwhile)."""
    watchers = {name: subprocess.Popen(["docker", "exec", "-i", name, "python3", "-c", WATCH, BODY_TEMP],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for name in WEBS}
    for name, proc in watchers.items():
        assert proc.stdout.readline().strip() == "watching", (name, proc.stdout.read())
    conn = front(timeout=60)
    try:
        conn.putrequest("POST", path)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(key, value)
        conn.endheaders()
        pieces = 40
        step = len(body) // pieces + 1
        for start in range(0, len(body), step):
            conn.send(body[start:start + step])
            time.sleep(seconds / pieces)
        answer = conn.getresponse()
        payload = answer.read()
    finally:
        conn.close()
        time.sleep(0.5)
    seen = set()
    for name, proc in watchers.items():
        out, _ = proc.communicate(timeout=30)  # closes its stdin: the watcher ends
        seen.update(f"{name}:{line}" for line in out.splitlines() if line.strip())
    return answer.status, payload, seen


@pytest.fixture(scope="module")
def uploaded(session):
    before = keys()
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(12 * MIB)
    status, payload, seen = slow_post("/api/v1/media/", {**session, "Content-Type": "image/png"}, body, 3)
    return {"status": status, "answer": json.loads(payload), "seen": seen, "sent": hashlib.sha256(body).hexdigest(),
            "landed": keys() - before}


def test_an_upload_through_the_front_door_lands_in_the_bucket_byte_for_byte(uploaded):
    assert uploaded["status"] == 201, uploaded
    key = uploaded["answer"]["key"]
    assert uploaded["landed"] == {key} and key.startswith("uploads/") and key.endswith(".png"), uploaded
    stored = admin().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == uploaded["sent"]


def test_nginx_streams_the_upload_and_writes_no_body_to_disk(uploaded, session):
    assert uploaded["seen"] == set(), uploaded["seen"]
    # The watch sees a body nginx buffers: the same size to an API path that buffers lands
    # in a temp file while it arrives (the app refuses it afterwards; that does not matter).
    status, _, seen = slow_post("/api/v1/tasks/", {**session, "Content-Type": "application/json"},
                                b"[" + b" " * (12 * MIB) + b"]", 3)
    assert seen, f"no temp file seen for a buffered body (status {status}): the watch proves nothing"


def curl_on_web(url):
    """GET from stack-web (which resolves stack-ops and trusts its CA): status and body digest."""
    out = root("stack-web").check_output(
        "curl -s --cacert %s -o /root/media-get -w '%%{http_code}\\n' %s && sha256sum /root/media-get", S3_CA, url)
    status, digest = out.splitlines()[:2]
    return int(status), digest.split()[0] if status == "200" else ""


def test_the_bucket_refuses_the_object_unsigned_and_serves_the_presigned_url(uploaded):
    url = uploaded["answer"]["url"]
    assert "X-Amz-Signature=" in url and uploaded["answer"]["expires_in"] == 3600
    assert curl_on_web(url) == (200, uploaded["sent"])
    assert curl_on_web(url.split("?")[0])[0] == 403


def test_the_app_redirects_a_logged_in_user_to_a_fresh_presigned_url(uploaded, session):
    conn = front(timeout=60)
    conn.request("GET", f"/api/v1/media/{uploaded['answer']['key']}", headers={"Cookie": session["Cookie"]})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 302, answer.status
    assert curl_on_web(answer.headers["Location"]) == (200, uploaded["sent"])


def test_a_declared_251_mib_upload_is_refused_at_the_edge_and_nothing_lands(session):
    before = keys()
    conn = front(timeout=60)
    conn.putrequest("POST", "/api/v1/media/")
    for key, value in {**session, "Content-Type": "image/png", "Content-Length": str(251 * MIB)}.items():
        conn.putheader(key, value)
    conn.endheaders()
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 413
    assert keys() == before
