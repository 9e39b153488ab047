"""The demo app's media (issue #16, the app side) against a real S3 server: the demo app runs
under gunicorn on loopback (its own venv from demo/requirements.txt, SQLite, sessions in the
database) with its default storage on SeaweedFS (s3_server.py), and is used as a client
would: log in, POST a file, read it back.

What is proven: an upload lands in the bucket byte for byte (multipart, through
django-storages), the object is private (an unsigned GET is refused), the presigned URL
works and stops working after AWS_QUERYSTRING_EXPIRE; too large, unknown types, a body that
is not what it claims, anonymous and cross-site requests are refused and nothing lands; a
body cut short lands nothing; without a bucket the endpoint answers 503 and the default
storage refuses; and nothing of an upload is written to the app host's disk."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from s3_server import client, free_ports, seaweedfs

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "demo"
ADMIN = ("appmediaadmin", "admin-secret-for-the-test-only")  # pragma: allowlist secret
APP = ("appmediakey", "app-secret-for-the-test-only")  # pragma: allowlist secret
BUCKET = "multinotes-media-apptest"
USER, PASSWORD = "alice", "Test-Only-Login-Pw-2026!"  # pragma: allowlist secret
MAX_BYTES = 12 * 1024 * 1024
EXPIRE = 2
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR"
PDF = b"%PDF-1.7\n"


@pytest.fixture(scope="module")
def demo_venv():
    """The demo's own dependencies in a venv of their own, cached by the requirements' hash
    (the controller's venv does not carry Django)."""
    digest = hashlib.sha256((DEMO / "requirements.txt").read_bytes()).hexdigest()[:12]
    venv = ROOT / ".cache" / f"demo-venv-{digest}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "-r", str(DEMO / "requirements.txt")], check=True, timeout=600)
        (venv / ".complete").touch()
    return venv


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    identities = [
        {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "app", "credentials": [{"accessKey": APP[0], "secretKey": APP[1]}],
         "actions": [f"{a}:{BUCKET}" for a in ("Read", "Write", "List", "Tagging")]},
    ]
    with seaweedfs(tmp_path_factory.mktemp("s3"), identities, ADMIN) as srv:
        client(srv, ADMIN).create_bucket(Bucket=BUCKET)
        yield srv


def app_env(tmp, s3=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DJANGO_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "multinotes.settings", "PYTHONPATH": str(DEMO),
        "SECRET_KEY": "test-only-" + "k" * 60, "ENVIRONMENT": "local", "ALLOWED_HOSTS": "127.0.0.1",  # pragma: allowlist secret
        "DB_ENGINE": "django.db.backends.sqlite3", "DB_NAME": str(tmp / "db" / "app.sqlite3"),
        "SECURE_SSL_REDIRECT": "false", "SESSION_COOKIE_SECURE": "false", "CSRF_COOKIE_SECURE": "false",
        "MEDIA_MAX_UPLOAD_BYTES": str(MAX_BYTES), "MEDIA_ALLOWED_TYPES": "image/png,application/pdf,text/plain",
        # Where Django would spool an upload (tempfile honours TMPDIR): must stay empty.
        "TMPDIR": str(tmp / "tmp"),
    })
    if s3:
        env.update({"AWS_BUCKET": BUCKET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": APP[0],
                    "AWS_SECRET_ACCESS_KEY": APP[1], "AWS_S3_ENDPOINT_URL": s3["https"], "AWS_S3_CA_BUNDLE": s3["ca"],
                    "AWS_S3_ADDRESSING_STYLE": "path", "AWS_QUERYSTRING_EXPIRE": str(EXPIRE)})
    env.update(extra)
    return env


def manage(venv, env, *args):
    return subprocess.run([str(venv / "bin" / "python"), str(DEMO / "manage.py"), *args], env=env, cwd=Path(env["DB_NAME"]).parent,
                          capture_output=True, text=True, timeout=120)


def start_app(venv, tmp, env):
    """gunicorn (gthread, as on the hosts) on a loopback port; its working directory (Django's
    MEDIA_ROOT default) and TMPDIR are empty directories the last test looks into."""
    for d in ("db", "tmp", "cwd"):
        (tmp / d).mkdir()
    for args in (["migrate", "--noinput"],
                 ["shell", "-c", f"from django.contrib.auth.models import User; User.objects.create_user({USER!r}, '', {PASSWORD!r})"]):
        proc = manage(venv, env, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    port = free_ports(1)[0]
    log = open(tmp / "gunicorn.log", "w")
    proc = subprocess.Popen([str(venv / "bin" / "gunicorn"), "multinotes.wsgi", "-b", f"127.0.0.1:{port}",
                             "-k", "gthread", "--threads", "4", "--workers", "1", "--worker-tmp-dir", "/dev/shm"],
                            env=env, cwd=tmp / "cwd", stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{base}/api/v1/version/", timeout=2)
            break
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"gunicorn did not answer: {(tmp / 'gunicorn.log').read_text()[-3000:]}")
            time.sleep(0.2)
    return proc, base, log


@pytest.fixture(scope="module")
def app(demo_venv, s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    proc, base, log = start_app(demo_venv, tmp, app_env(tmp, s3))
    yield {"base": base, "tmp": tmp, "port": int(base.rsplit(":", 1)[1]), "log": tmp / "gunicorn.log"}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def app_without_media(demo_venv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app-nomedia")
    proc, base, log = start_app(demo_venv, tmp, app_env(tmp))
    yield {"base": base, "tmp": tmp}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def login(base):
    session = requests.Session()
    r = session.post(f"{base}/api/v1/auth/login/", json={"username": USER, "password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
    return session


def keys(s3):
    listing = client(s3, ADMIN).list_objects_v2(Bucket=BUCKET)
    return {o["Key"] for o in listing.get("Contents", [])}


def upload(session, base, body, content_type):
    return session.post(f"{base}/api/v1/media/", data=body, headers={"Content-Type": content_type}, timeout=60)


def raw_request(port, head, body=b"", shut=True):
    """One request on a socket of its own: headers (and maybe part of a body) only; returns the
    status line's code and the answer's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1]), answer


def cookie_header(session):
    return "; ".join(f"{k}={v}" for k, v in session.cookies.items())


# ---- uploads that land ----

def test_upload_lands_in_the_bucket_byte_for_byte(app, s3):
    # Above boto3's multipart threshold (8 MiB): two parts streamed from the request.
    body = PNG + os.urandom(9 * 1024 * 1024)
    r = upload(login(app["base"]), app["base"], body, "image/png")
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["key"].startswith("uploads/") and answer["key"].endswith(".png")
    assert (answer["size"], answer["content_type"], answer["expires_in"]) == (len(body), "image/png", EXPIRE)
    obj = client(s3, ADMIN).get_object(Bucket=BUCKET, Key=answer["key"])
    assert obj["ContentType"] == "image/png"
    assert obj["Body"].read() == body
    assert not client(s3, ADMIN).list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_the_server_chooses_the_key_not_the_client(app):
    session = login(app["base"])
    r = session.post(f"{app['base']}/api/v1/media/?name=../../etc/passwd", data=PDF + b"1",
                     headers={"Content-Type": "application/pdf", "Content-Disposition": 'attachment; filename="../x.pdf"'},
                     timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["key"].startswith("uploads/") and "passwd" not in r.json()["key"] and ".." not in r.json()["key"]


def test_an_unsigned_get_of_the_object_is_refused(app, s3):
    r = upload(login(app["base"]), app["base"], b"private notes\n", "text/plain")
    assert r.status_code == 201, r.text
    assert requests.get(f"{s3['https']}/{BUCKET}/{r.json()['key']}", verify=s3["ca"], timeout=10).status_code == 403


def test_the_presigned_url_works_then_expires(app, s3):
    body = PDF + b"presigned"
    r = upload(login(app["base"]), app["base"], body, "application/pdf")
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    assert "X-Amz-Signature=" in url and f"X-Amz-Expires={EXPIRE}" in url
    fresh = requests.get(url, verify=s3["ca"], timeout=10)
    assert (fresh.status_code, fresh.content) == (200, body)
    time.sleep(EXPIRE + 1.5)
    assert requests.get(url, verify=s3["ca"], timeout=10).status_code == 403


def test_get_redirects_to_a_fresh_presigned_url(app, s3):
    session = login(app["base"])
    r = upload(session, app["base"], PNG + b"redirect", "image/png")
    key = r.json()["key"]
    found = session.get(f"{app['base']}/api/v1/media/{key}", allow_redirects=False, timeout=10)
    assert found.status_code == 302
    assert requests.get(found.headers["Location"], verify=s3["ca"], timeout=10).content == PNG + b"redirect"
    missing = session.get(f"{app['base']}/api/v1/media/uploads/{uuid.uuid4().hex}.png", allow_redirects=False, timeout=10)
    assert missing.status_code == 404


# ---- uploads that are refused, with nothing landing ----

@pytest.mark.parametrize("content_type,body", [
    ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
    ("application/octet-stream", PNG),
    ("multipart/form-data; boundary=x", b"--x\r\n\r\n" + PNG + b"\r\n--x--\r\n"),
    ("image/jpeg", b"\xff\xd8\xff\xe0"),  # a real type, but not in this app's MEDIA_ALLOWED_TYPES
], ids=["svg", "octet-stream", "multipart", "type-not-allowed-here"])
def test_a_type_not_allowed_is_refused(app, s3, content_type, body):
    before = keys(s3)
    r = upload(login(app["base"]), app["base"], body, content_type)
    assert r.status_code == 415, r.text
    assert keys(s3) == before


@pytest.mark.parametrize("content_type,body", [
    ("image/png", PDF + b"not an image"),
    ("application/pdf", b"<html><script>alert(1)</script>"),
    ("text/plain", PNG + b"binary"),
], ids=["pdf-as-png", "html-as-pdf", "png-as-text"])
def test_content_that_is_not_its_declared_type_is_refused(app, s3, content_type, body):
    before = keys(s3)
    r = upload(login(app["base"]), app["base"], body, content_type)
    assert r.status_code == 415, r.text
    assert keys(s3) == before


def test_too_large_is_refused_before_the_body_is_read(app, s3):
    """Only the headers are sent: the 413 comes without waiting for a byte of the body."""
    before = keys(s3)
    session = login(app["base"])
    started = time.monotonic()
    status, _ = raw_request(app["port"], (
        f"POST /api/v1/media/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {MAX_BYTES + 1}\r\nX-CSRFToken: {session.headers['X-CSRFToken']}\r\n"
        f"Cookie: {cookie_header(session)}\r\n"), shut=False)
    assert status == 413
    assert time.monotonic() - started < 5
    assert keys(s3) == before


def test_a_chunked_upload_without_length_is_refused(app, s3):
    session = login(app["base"])
    status, _ = raw_request(app["port"], (
        f"POST /api/v1/media/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
        f"X-CSRFToken: {session.headers['X-CSRFToken']}\r\nCookie: {cookie_header(session)}\r\nConnection: close\r\n"),
        body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(PNG), PNG))
    assert status == 411


def test_a_body_cut_short_lands_nothing(app, s3):
    before = keys(s3)
    session = login(app["base"])
    status, _ = raw_request(app["port"], (
        f"POST /api/v1/media/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n"
        f"X-CSRFToken: {session.headers['X-CSRFToken']}\r\nCookie: {cookie_header(session)}\r\n"), body=PNG + b"x" * 1000)
    assert status == 400
    assert keys(s3) == before


def test_anonymous_is_refused(app, s3):
    before = keys(s3)
    r = requests.post(f"{app['base']}/api/v1/media/", data=PNG, headers={"Content-Type": "image/png"}, timeout=10)
    assert r.status_code == 401
    assert requests.get(f"{app['base']}/api/v1/media/uploads/{uuid.uuid4().hex}.png", timeout=10).status_code == 401
    assert keys(s3) == before


def test_a_logged_in_request_without_the_csrf_token_is_refused(app, s3):
    """A session cookie alone (what another site's form would send) does not upload."""
    before = keys(s3)
    session = login(app["base"])
    del session.headers["X-CSRFToken"]
    assert upload(session, app["base"], PNG, "image/png").status_code == 403
    assert keys(s3) == before


# ---- media off, the checklist's shell check, and the disk ----

def test_without_a_bucket_the_endpoint_answers_503(app_without_media):
    r = upload(login(app_without_media["base"]), app_without_media["base"], PNG, "image/png")
    assert r.status_code == 503
    assert "AWS_BUCKET" in r.json()["error"]


CHECKLIST_SHELL = """
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
path = default_storage.save('test.txt', ContentFile(b'test content'))
print(path)
print(default_storage.url(path))
default_storage.delete(path)
print(default_storage.exists(path))
"""


def test_the_checklists_shell_check_gets_a_presigned_s3_url(app, demo_venv, s3, tmp_path):
    proc = manage(demo_venv, app_env(app["tmp"], s3), "shell", "-c", CHECKLIST_SHELL)
    assert proc.returncode == 0, proc.stderr
    # Django 5.2's shell first says how many objects it imported.
    path, url, exists = proc.stdout.split()[-3:]
    assert path.startswith("test") and path.endswith(".txt")
    assert url.startswith(f"{s3['https']}/{BUCKET}/{path}?") and "X-Amz-Signature=" in url
    assert exists == "False"


def test_without_a_bucket_the_default_storage_refuses_to_save(app_without_media, demo_venv):
    proc = manage(demo_venv, app_env(app_without_media["tmp"]), "shell", "-c", CHECKLIST_SHELL)
    assert proc.returncode != 0
    assert "media storage is not configured: set AWS_BUCKET" in proc.stderr


def test_nothing_was_written_to_the_app_hosts_disk(app, app_without_media):
    """Runs last: every upload above streamed to S3; Django's temp files (TMPDIR) and its
    MEDIA_ROOT default (the working directory) got nothing."""
    for tmp in (app["tmp"], app_without_media["tmp"]):
        assert sorted(p.name for p in (tmp / "tmp").iterdir()) == []
        assert sorted(p.name for p in (tmp / "cwd").iterdir()) == []
