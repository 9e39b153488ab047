"""Media on S3 on the converged hosts (issue #16), as a user of the site sees it: a real login
and upload to the live gunicorn slot on app-web lands in the bucket on the S3 stand-in
(SeaweedFS on app-redis, prepare.yml; the bucket made by playbooks/media.yml), byte for byte;
the object refuses an unsigned GET; the presigned URL in the answer works; an upload that
declares 251 MiB is refused and nothing lands. Every check runs on app-web, with the
release's own Python (boto3 is in its venv) and the system's CA bundle (which holds the test
CA). This scenario has no nginx: the edge's side (streaming, 413 at 250m) is the web role's."""

import json

import pytest
import testlib
import yaml

from scenario import ENV_FILE, SCENARIO, SOCKET

S3 = yaml.safe_load((SCENARIO / "files" / "test-s3.yml").read_text())
ENDPOINT = "https://app-redis:9443"
PYTHON = "/srv/multinotes/current/venv/bin/python"
USER, PASSWORD = "media-tester", "Test-Only-Media-Login-Pw-2026"  # pragma: allowlist secret

# Runs on app-web: argv = socket, admin key, admin secret, bucket, action, [size]. Prints JSON.
CLIENT = r'''
import hashlib, http.cookies, json, os, socket, sys
import boto3, urllib3
from botocore.config import Config
sock_path, akey, asecret, bucket, action = sys.argv[1:6]
ENDPOINT, CA = "https://app-redis:9443", "/etc/ssl/certs/ca-certificates.crt"
admin = boto3.client("s3", endpoint_url=ENDPOINT, verify=CA, region_name="us-east-1", aws_access_key_id=akey,
                     aws_secret_access_key=asecret, config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
def keys():
    return sorted(o["Key"] for o in admin.list_objects_v2(Bucket=bucket).get("Contents", []))
def call(method, path, headers, body=b""):
    s = socket.socket(socket.AF_UNIX); s.settimeout(120); s.connect(sock_path)
    head = (f"{method} {path} HTTP/1.0\r\nHost: app.test\r\nX-Forwarded-Proto: https\r\nOrigin: https://app.test\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
    s.sendall(head.encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    cookies = http.cookies.SimpleCookie()
    for line in lines[1:]:
        if line.lower().startswith("set-cookie:"):
            cookies.load(line.split(":", 1)[1].strip())
    return int(lines[0].split()[1]), payload, {k: m.value for k, m in cookies.items()}
login = json.dumps({"username": sys.argv[6], "password": sys.argv[7]}).encode()
status, _, cookies = call("POST", "/api/v1/auth/login/", {"Content-Type": "application/json", "Content-Length": len(login)}, login)
auth = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), "X-CSRFToken": cookies.get("csrftoken", "")}
before = keys()
if action == "upload":
    body = b"%PDF-1.7\n" + os.urandom(int(sys.argv[8]))
    status, payload, _ = call("POST", "/api/v1/media/", dict(auth, **{"Content-Type": "application/pdf",
                                                                      "Content-Length": len(body)}), body)
    answer = json.loads(payload)
    pool = urllib3.PoolManager(ca_certs=CA)
    stored = admin.get_object(Bucket=bucket, Key=answer["key"])["Body"].read()
    unsigned = pool.request("GET", f"{ENDPOINT}/{bucket}/{answer['key']}")
    presigned = pool.request("GET", answer["url"])
    print(json.dumps({"status": status, "answer": answer, "sent": hashlib.sha256(body).hexdigest(),
                      "stored": hashlib.sha256(stored).hexdigest(), "unsigned": unsigned.status,
                      "presigned": presigned.status, "presigned_body": hashlib.sha256(presigned.data).hexdigest()}))
else:
    # Headers only: the app must answer before a byte of the body arrives.
    status, payload, _ = call("POST", "/api/v1/media/", dict(auth, **{"Content-Type": "application/pdf",
                                                                      "Content-Length": int(sys.argv[8])}))
    print(json.dumps({"status": status, "landed": sorted(set(keys()) - set(before))}))
'''


@pytest.fixture(scope="module")
def web():
    host = testlib.host("app-web")
    host.run("multinotes-manage shell -c %s",
             f"from django.contrib.auth.models import User; User.objects.filter(username={USER!r}).exists() "
             f"or User.objects.create_user({USER!r}, '', {PASSWORD!r})")
    return host


def client(web, action, size):
    out = web.check_output("%s -c %s %s %s %s %s %s %s %s %s", PYTHON, CLIENT, SOCKET, S3["molecule_test_s3_admin"][0],
                           S3["molecule_test_s3_admin"][1], S3["molecule_test_s3_bucket"], action, USER, PASSWORD, str(size))
    return json.loads(out)


@pytest.fixture(scope="module")
def uploaded(web):
    """One real upload of 9 MiB (above boto3's multipart threshold: two parts)."""
    return client(web, "upload", 9 * 1024 * 1024)


def test_the_env_file_names_the_bucket_and_keeps_the_key_to_root_and_the_app(web):
    env = web.check_output("cat %s", ENV_FILE)
    for line in ('AWS_BUCKET="multinotes-media-apptest"', f'AWS_S3_ENDPOINT_URL="{ENDPOINT}"',
                 'AWS_QUERYSTRING_EXPIRE="3600"', 'MEDIA_MAX_UPLOAD_BYTES="262144000"'):
        assert line in env
    assert web.file(ENV_FILE).mode == 0o640


def test_an_upload_lands_in_the_bucket_byte_for_byte(uploaded):
    assert uploaded["status"] == 201, uploaded
    assert uploaded["answer"]["key"].startswith("uploads/") and uploaded["answer"]["key"].endswith(".pdf")
    assert uploaded["stored"] == uploaded["sent"]


def test_an_unsigned_get_of_the_object_is_refused(uploaded):
    assert uploaded["unsigned"] == 403


def test_the_presigned_url_in_the_answer_works(uploaded):
    assert "X-Amz-Signature=" in uploaded["answer"]["url"] and uploaded["answer"]["expires_in"] == 3600
    assert (uploaded["presigned"], uploaded["presigned_body"]) == (200, uploaded["sent"])


def test_an_upload_declaring_251_mib_is_refused_and_nothing_lands(web):
    refused = client(web, "declare", 251 * 1024 * 1024)
    assert refused == {"status": 413, "landed": []}


VERSIONING = r'''
import sys, boto3
from botocore.config import Config
akey, asecret, bucket, status = sys.argv[1:5]
boto3.client("s3", endpoint_url="https://app-redis:9443", verify="/etc/ssl/certs/ca-certificates.crt",
             region_name="us-east-1", aws_access_key_id=akey, aws_secret_access_key=asecret,
             config=Config(signature_version="s3v4", s3={"addressing_style": "path"})
             ).put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
'''


def set_versioning(web, status):
    web.check_output("%s -c %s %s %s %s %s", PYTHON, VERSIONING, S3["molecule_test_s3_admin"][0],
                     S3["molecule_test_s3_admin"][1], S3["molecule_test_s3_bucket"], status)


def test_the_launch_checks_media_item_passes_and_names_a_setting_that_drifted(web):
    """`media_check` (the launch check's media-bucket item) with the app's own key: every
    setting the media role made reads back, a file goes through the storage; with
    versioning suspended behind the role's back it fails and says so."""
    passed = web.run("multinotes-manage media_check 2>&1")
    assert passed.rc == 0 and "every item passes" in passed.stdout.splitlines()[0], passed.stdout
    for line in ("ok: versioning: Enabled", "ok: the same URL unsigned: refused (403)", "ok: policy: plain-HTTP requests denied"):
        assert line in passed.stdout, passed.stdout
    set_versioning(web, "Suspended")
    try:
        drifted = web.run("multinotes-manage media_check 2>&1")
    finally:
        set_versioning(web, "Enabled")
    # The first line names what failed (the command's error, or its first item line).
    assert drifted.rc != 0 and "versioning: Suspended" in drifted.stdout.splitlines()[0], drifted.stdout
    assert "FAILED: versioning: Suspended" in drifted.stdout and "ok: policy:" in drifted.stdout, drifted.stdout
