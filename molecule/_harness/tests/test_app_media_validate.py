"""The app role's media inputs in a real role run (roles/app/tasks/validate.yml, its one
assert): ansible-playbook on the controller includes the role's validation with otherwise
good inputs; each bad media value fails the play in that task, with a message naming the
variable the user sets, before the task after it, and no key is printed. The rules themselves
are unit-tested in test_app_media.py; the app scenario runs the whole role with media on."""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KEY_ID, SECRET = "AKIAVALIDATETEST0001", "Validate-Test-Secret-Key-Only-0001"  # pragma: allowlist secret

PLAYBOOK = """\
- name: The app role's validation only
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.include_role:
        name: app
        tasks_from: validate
    - name: Reached only when every rule passed
      ansible.builtin.debug:
        msg: VALID
"""

BASE = {
    "app_environment": "production",
    "app_secret_key": "test-only-key-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMN",  # pragma: allowlist secret
    "app_allowed_hosts": ["app.test"], "app_site_url": "https://app.test",
    "app_db_password": "Test-Only-Runtime-Pw-2026!",  # pragma: allowlist secret
    "app_db_migrate_password": "Test-Only-Migrate-Pw-2026!",  # pragma: allowlist secret
    "app_redis_url": "redis://:pw@redis.test:6379/0",
    "app_media_enabled": True, "app_media_access_key_id": KEY_ID, "app_media_secret_access_key": SECRET,
}


def run(tmp_path, **media):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", str(tmp_path / "play.yml"),
                           "-e", json.dumps(dict(BASE, **media))],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_media_on_with_good_inputs_passes(tmp_path):
    rc, out = run(tmp_path)
    assert rc == 0 and "VALID" in out, out


def test_media_off_needs_no_keys(tmp_path):
    rc, out = run(tmp_path, app_media_enabled=False, app_media_access_key_id="", app_media_secret_access_key="")
    assert rc == 0 and "VALID" in out, out


@pytest.mark.parametrize("media, named", [
    ({"app_media_bucket": "MultinotesAI_Media"}, "app_media_bucket (AWS_BUCKET"),
    ({"app_media_bucket": "10.0.0.1"}, "app_media_bucket (AWS_BUCKET"),
    ({"app_media_url_expiry_seconds": 604801}, "app_media_url_expiry_seconds (AWS_QUERYSTRING_EXPIRE"),
    ({"app_media_access_key_id": ""}, "app_media_access_key_id (AWS_ACCESS_KEY_ID) is empty"),
    ({"app_media_secret_access_key": ""}, "app_media_secret_access_key (AWS_SECRET_ACCESS_KEY) is empty"),
    ({"app_media_endpoint_url": "http://s3.test:8333"}, "app_media_endpoint_url (AWS_S3_ENDPOINT_URL) must be"),
    ({"app_media_max_upload_bytes": 0}, "app_media_max_upload_bytes (MEDIA_MAX_UPLOAD_BYTES"),
    ({"app_media_allowed_types": []}, "app_media_allowed_types (MEDIA_ALLOWED_TYPES)"),
], ids=["bucket-case", "bucket-ip", "expiry-over-7-days", "empty-key-id", "empty-secret", "plain-http-endpoint",
        "zero-max-upload", "no-types"])
def test_bad_media_input_fails_in_validation_naming_what_to_set(tmp_path, media, named):
    rc, out = run(tmp_path, **media)
    assert rc != 0 and "VALID" not in out, out
    flat = " ".join(out.split())  # the callback folds long messages over lines
    assert "Check the role's inputs" in flat and named in flat, textwrap.shorten(out, 3000)
    assert KEY_ID not in out and SECRET not in out
