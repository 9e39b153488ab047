"""The app role's media rules (roles/app/filter_plugins/app_media.py): every refusal names
the variable the user sets and never a key; media off needs no key and writes no AWS_* line."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("app_media", ROOT / "roles/app/filter_plugins/app_media.py")
am = importlib.util.module_from_spec(spec)
spec.loader.exec_module(am)

KEY_ID, SECRET = "AKIAREALAPPKEY778899", "wJalrXUtnFEMI-real-app-secret-0011"  # pragma: allowlist secret
GOOD = {
    "media_enabled": True, "media_bucket": "multinotesai-media-production", "media_region": "ap-south-1",
    "media_access_key_id": KEY_ID, "media_secret_access_key": SECRET, "media_endpoint_url": "",
    "media_ca_file": "/etc/ssl/certs/ca-certificates.crt", "media_addressing_style": "virtual",
    "media_url_expiry_seconds": "3600", "media_max_upload_bytes": "262144000",
    "media_allowed_types": ["image/png", "image/jpeg", "application/pdf"],
}


def errors(**changes):
    return am.app_media_errors(dict(GOOD, **changes))


def test_good_settings_pass():
    assert errors() == []
    assert errors(media_endpoint_url="https://s3.internal:8333", media_addressing_style="path") == []


@pytest.mark.parametrize("changes,named", [
    ({"media_bucket": "Multinotes-Media"}, "app_media_bucket"),
    ({"media_bucket": "ab"}, "app_media_bucket"),
    ({"media_bucket": "a" * 64}, "app_media_bucket"),
    ({"media_bucket": "multinotes_media"}, "app_media_bucket"),
    ({"media_bucket": "-multinotes"}, "app_media_bucket"),
    ({"media_bucket": "multinotes..media"}, "app_media_bucket"),
    ({"media_bucket": "192.168.10.20"}, "app_media_bucket"),
    ({"media_bucket": "xn--media"}, "app_media_bucket"),
    ({"media_bucket": "media-s3alias"}, "app_media_bucket"),
    ({"media_region": ""}, "app_media_region"),
    ({"media_url_expiry_seconds": 604801}, "app_media_url_expiry_seconds"),
    ({"media_url_expiry_seconds": 0}, "app_media_url_expiry_seconds"),
    ({"media_url_expiry_seconds": "an hour"}, "app_media_url_expiry_seconds"),
    ({"media_access_key_id": ""}, "app_media_access_key_id"),
    ({"media_access_key_id": "CHANGEME"}, "app_media_access_key_id"),
    ({"media_secret_access_key": ""}, "app_media_secret_access_key"),
    ({"media_secret_access_key": "<your-secret>"}, "app_media_secret_access_key"),
    ({"media_endpoint_url": "http://s3.internal:8333"}, "app_media_endpoint_url"),
    ({"media_endpoint_url": "https://s3.internal/bucket"}, "app_media_endpoint_url"),
    ({"media_ca_file": "ca.pem"}, "app_media_ca_file"),
    ({"media_addressing_style": "auto"}, "app_media_addressing_style"),
    ({"media_max_upload_bytes": 0}, "app_media_max_upload_bytes"),
    ({"media_allowed_types": []}, "app_media_allowed_types"),
    ({"media_allowed_types": "image/png"}, "app_media_allowed_types"),
    ({"media_allowed_types": ["image/svg+xml"]}, "app_media_allowed_types"),
], ids=lambda v: str(v)[:40])
def test_bad_value_is_refused_naming_the_variable(changes, named):
    found = errors(**changes)
    assert len(found) == 1 and found[0].startswith(named), found
    assert KEY_ID not in found[0] and SECRET not in found[0]


def test_media_off_needs_no_key_but_still_checks_the_limits():
    off = dict(GOOD, media_enabled=False, media_access_key_id="", media_secret_access_key="", media_bucket="Bad_Name")
    assert am.app_media_errors(off) == []
    assert am.app_media_errors(dict(off, media_url_expiry_seconds=700000))[0].startswith("app_media_url_expiry_seconds")


def test_media_on_writes_the_checklists_names():
    env = am.app_media_env(GOOD)
    assert env == {
        "AWS_BUCKET": "multinotesai-media-production", "AWS_DEFAULT_REGION": "ap-south-1",
        "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_S3_ENDPOINT_URL": "",
        "AWS_S3_ADDRESSING_STYLE": "virtual", "AWS_S3_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
        "AWS_QUERYSTRING_EXPIRE": "3600", "MEDIA_MAX_UPLOAD_BYTES": "262144000",
        "MEDIA_ALLOWED_TYPES": "image/png,image/jpeg,application/pdf", "MEDIA_PUBLIC_ACCESS_BLOCK": "true"}
    assert am.app_media_env(dict(GOOD, media_public_access_block_enabled=False))["MEDIA_PUBLIC_ACCESS_BLOCK"] == "false"


def test_media_off_writes_no_aws_line():
    env = am.app_media_env(dict(GOOD, media_enabled=False))
    assert sorted(env) == ["MEDIA_ALLOWED_TYPES", "MEDIA_MAX_UPLOAD_BYTES"]


def test_the_role_knows_the_types_the_app_checks():
    """The role's list and the app's must not drift apart (one would refuse what the other takes)."""
    text = (ROOT / "demo" / "core" / "media.py").read_text()
    for content_type in am.KNOWN_TYPES:
        assert f'"{content_type}": (' in text
    assert text.count('": ("') == len(am.KNOWN_TYPES)
