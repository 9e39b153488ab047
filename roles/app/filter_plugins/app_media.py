"""The app's media-on-S3 settings (django-storages): the rules they must meet and the
environment variables they become.

Two filters, used by roles/app/tasks/validate.yml and config.yml:

    settings | app_media_errors   -> [message, ...]
    settings | app_media_env      -> {ENV_NAME: value}

`settings` is a flat dict keyed by the role's variable names without the `app_` prefix
(media_enabled, media_bucket, ...; roles/app/vars/main.yml builds it). Media off needs no
keys and writes no AWS_* line: the app then refuses uploads (503) and never keeps media on
local disk. Messages name the variable the user sets and the fix, never a secret's value.
Unit-tested in molecule/_harness/tests/test_app_media.py.
"""

import ipaddress
import re
from urllib.parse import urlsplit

# The types the demo app can check by their first bytes (demo/core/media.py KNOWN_TYPES).
KNOWN_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain")
# S3's presigned URLs live at most 7 days (SigV4).
MAX_EXPIRY = 604800
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Prefixes and suffixes AWS reserves for its own bucket kinds.
RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
PLACEHOLDERS = ("changeme", "change-me", "change_me", "replace-me", "replace_me", "placeholder",
                "xxx", "your-", "your_", "todo", "fixme", "dummy", "<", ">")


def _on(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _int(value):
    try:
        if isinstance(value, bool):
            return None
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def bucket_problem(name):
    """Why S3 would refuse this bucket name, or None."""
    name = "" if name is None else str(name)
    if not BUCKET.match(name):
        return "3-63 characters of lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit"
    if ".." in name or ".-" in name or "-." in name:
        return "no two dots in a row and no dot next to a hyphen"
    try:
        ipaddress.IPv4Address(name)
        return "not an IP address"
    except ValueError:
        pass
    if name.startswith(RESERVED_PREFIXES) or name.endswith(RESERVED_SUFFIXES):
        return "not a prefix or suffix AWS reserves (xn--, sthree-, -s3alias, --ol-s3 ...)"
    return None


def _placeholder(value):
    text = "" if value is None else str(value).strip().lower()
    return not text or any(p in text for p in PLACEHOLDERS)


def app_media_errors(settings):
    """Every rule the settings break, as messages naming the variable (never a secret)."""
    s = dict(settings)
    errors = []
    # The lifetime, the size limit and the types are checked with media off too: a typo is
    # worth knowing before media is switched on.
    expiry = _int(s.get("media_url_expiry_seconds"))
    if expiry is None or not 1 <= expiry <= MAX_EXPIRY:
        errors.append(f"app_media_url_expiry_seconds (AWS_QUERYSTRING_EXPIRE; shared: multinotes_media_url_expiry_seconds) "
                      f"must be 1-{MAX_EXPIRY} seconds: S3 refuses presigned URLs valid longer than 7 days (the checklist: 3600).")
    size = _int(s.get("media_max_upload_bytes"))
    if size is None or size < 1:
        errors.append("app_media_max_upload_bytes (MEDIA_MAX_UPLOAD_BYTES; shared: multinotes_upload_max_mib) must be a "
                      "positive number of bytes, the edge's limit (250 MiB = 262144000).")
    types = s.get("media_allowed_types")
    if isinstance(types, str) or not types:
        errors.append(f"app_media_allowed_types (MEDIA_ALLOWED_TYPES) must be a non-empty list of content types, "
                      f"some of: {', '.join(KNOWN_TYPES)}.")
    else:
        unknown = [str(t) for t in types if t not in KNOWN_TYPES]
        if unknown:
            errors.append(f"app_media_allowed_types (MEDIA_ALLOWED_TYPES) lists types the app cannot check by their first "
                          f"bytes: {', '.join(unknown)}; use some of: {', '.join(KNOWN_TYPES)}.")
    if s.get("media_addressing_style") not in ("virtual", "path"):
        errors.append("app_media_addressing_style (AWS_S3_ADDRESSING_STYLE) must be virtual (AWS) or path "
                      "(most S3-compatible servers).")
    if not _on(s.get("media_enabled")):
        return errors

    problem = bucket_problem(s.get("media_bucket"))
    if problem:
        errors.append(f"app_media_bucket (AWS_BUCKET; shared: multinotes_media_bucket) is not a name S3 accepts: "
                      f"it must be {problem}, e.g. multinotesai-media-production.")
    if not re.match(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$", str(s.get("media_region") or "")):
        errors.append("app_media_region (AWS_DEFAULT_REGION; shared: multinotes_media_region) must be an S3 region "
                      "such as us-east-1 or ap-south-1.")
    if _placeholder(s.get("media_access_key_id")):
        errors.append("app_media_access_key_id (AWS_ACCESS_KEY_ID) is empty or a template value while app_media_enabled "
                      "is true: set the app's own key (read/write on the media bucket only) from Vault, or set "
                      "app_media_enabled: false.")
    if _placeholder(s.get("media_secret_access_key")):
        errors.append("app_media_secret_access_key (AWS_SECRET_ACCESS_KEY) is empty or a template value while "
                      "app_media_enabled is true: set it from Vault, or set app_media_enabled: false.")
    endpoint = str(s.get("media_endpoint_url") or "")
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            errors.append("app_media_endpoint_url (AWS_S3_ENDPOINT_URL) must be empty (AWS) or an https:// URL "
                          "without a path, e.g. https://s3.example.net:8333: over plain http the keys' signatures "
                          "and the media travel in clear, and the bucket's HTTPS-only policy refuses it.")
    if not str(s.get("media_ca_file") or "").startswith("/"):
        errors.append("app_media_ca_file (AWS_S3_CA_BUNDLE) must be an absolute path to a CA bundle on the host, "
                      "e.g. /etc/ssl/certs/ca-certificates.crt.")
    return errors


def app_media_env(settings):
    """The environment variables the app reads; media off writes none but the upload limits."""
    s = dict(settings)
    env = {"MEDIA_MAX_UPLOAD_BYTES": str(_int(s.get("media_max_upload_bytes"))),
           "MEDIA_ALLOWED_TYPES": ",".join(str(t) for t in s.get("media_allowed_types") or [])}
    if _on(s.get("media_enabled")):
        env.update({
            "AWS_BUCKET": str(s.get("media_bucket")),
            "AWS_DEFAULT_REGION": str(s.get("media_region")),
            "AWS_ACCESS_KEY_ID": str(s.get("media_access_key_id")),
            "AWS_SECRET_ACCESS_KEY": str(s.get("media_secret_access_key")),
            "AWS_S3_ENDPOINT_URL": str(s.get("media_endpoint_url") or ""),
            "AWS_S3_ADDRESSING_STYLE": str(s.get("media_addressing_style")),
            "AWS_S3_CA_BUNDLE": str(s.get("media_ca_file")),
            "AWS_QUERYSTRING_EXPIRE": str(_int(s.get("media_url_expiry_seconds"))),
            # What the launch check's media item expects of the bucket (media_check).
            "MEDIA_PUBLIC_ACCESS_BLOCK": "true" if _on(s.get("media_public_access_block_enabled", True)) else "false",
        })
    return env


class FilterModule:
    def filters(self):
        return {"app_media_errors": app_media_errors, "app_media_env": app_media_env}
