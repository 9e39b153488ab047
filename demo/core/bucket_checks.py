"""The media bucket's settings judged as the launch check wants them (media_check, the
management command, reads them with the app's key and prints these lines). Plain Python, no
Django: unit-tested on the controller (molecule/_harness/tests/test_bucket_checks.py)."""
import json
from urllib.parse import parse_qs, urlsplit, urlunsplit

PUBLIC_GRANTEES = ("http://acs.amazonaws.com/groups/global/AllUsers",
                   "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")
PUBLIC_ACCESS_BLOCK_KEYS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


def error_code(exc):
    return getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)


def judge_versioning(versioning):
    status = (versioning or {}).get("Status", "never enabled")
    return status == "Enabled", f"versioning: {status}"


def judge_lifecycle(rules):
    enabled = [rule for rule in rules or [] if rule.get("Status") == "Enabled"]
    noncurrent = sorted({rule["NoncurrentVersionExpiration"].get("NoncurrentDays", 0)
                         for rule in enabled if rule.get("NoncurrentVersionExpiration")})
    aborts = sorted({rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation", 0)
                     for rule in enabled if rule.get("AbortIncompleteMultipartUpload")})
    ok = any(days > 0 for days in noncurrent) and any(days > 0 for days in aborts)
    return ok, (f"lifecycle: {len(enabled)} enabled rule(s); noncurrent versions expire after "
                f"{noncurrent or 'never'} day(s); incomplete uploads aborted after {aborts or 'never'} day(s)")


def judge_cors(rules, origins):
    """The site's origins (CORS_ALLOWED_ORIGINS) and only those, never `*`, with GET and PUT."""
    allowed = sorted({origin for rule in rules or [] for origin in rule.get("AllowedOrigins", [])})
    methods = sorted({method for rule in rules or [] for method in rule.get("AllowedMethods", [])})
    ok = bool(origins) and allowed == sorted(set(origins)) and {"GET", "PUT"} <= set(methods)
    return ok, f"CORS: origins {allowed or 'none'} (the site's: {sorted(set(origins)) or 'none'}), methods {methods}"


def judge_acl(grants):
    public = sorted({grant["Grantee"].get("URI", "") for grant in grants or []
                     if grant.get("Grantee", {}).get("URI") in PUBLIC_GRANTEES})
    return not public, f"ACL: {'public grants to ' + ', '.join(public) if public else 'no public grant'}"


def judge_policy(statements):
    """A Deny of every request whose aws:SecureTransport is false."""
    for statement in statements or []:
        condition = statement.get("Condition", {}).get("Bool", {})
        if statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport", "")).lower() == "false":
            return True, "policy: plain-HTTP requests denied (aws:SecureTransport false)"
    return False, "policy: no Deny of plain-HTTP requests (aws:SecureTransport false)"


def judge_public_access_block(config, unsupported=False):
    if unsupported:
        return True, "public access block: not offered by this server (the ACL and the policy keep the bucket private)"
    missing = [key for key in PUBLIC_ACCESS_BLOCK_KEYS if not (config or {}).get(key)]
    return not missing, f"public access block: {'all four on' if not missing else 'off: ' + ', '.join(missing)}"


def judge_presigned_url(url, expiry):
    query = parse_qs(urlsplit(url).query)
    signed = "X-Amz-Signature" in query or "Signature" in query
    expires = query.get("X-Amz-Expires", [""])[0]
    ok = signed and expires == str(expiry)
    return ok, f"presigned URL: {'signed' if signed else 'NOT signed'}, expires after {expires or '?'} s (configured {expiry} s)"


def unsigned(url):
    """The URL without its query: the object's address with no signature."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class CannotRead(Exception):
    """A setting the app's key may not read, or the server did not answer: a finding."""


def read(call, key=None, missing=()):
    """One API call's answer (or its `key`); None when its error code is in `missing` (the
    setting was never made); any other error raises CannotRead naming the code."""
    try:
        answer = call()
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, named
        if error_code(exc) in missing:
            return None
        raise CannotRead(f"cannot read it ({error_code(exc)})") from exc
    return answer.get(key) if key else answer


def bucket_items(client, bucket, origins, public_access_block_expected=True):
    """(ok, line) for each of the bucket's settings."""
    def public_access_block():
        if not public_access_block_expected:
            return True, ("public access block: not expected here (MEDIA_PUBLIC_ACCESS_BLOCK=false: the server "
                          "has none); the ACL and the policy keep the bucket private")
        try:
            return judge_public_access_block(client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"])
        except Exception as exc:  # noqa: BLE001
            code = error_code(exc)
            if code in ("NotImplemented", "501"):
                return judge_public_access_block(None, unsupported=True)
            if code == "NoSuchPublicAccessBlockConfiguration":
                return judge_public_access_block({})
            raise CannotRead(f"cannot read it ({code})") from exc

    checks = {
        "versioning": lambda: judge_versioning(read(lambda: client.get_bucket_versioning(Bucket=bucket))),
        "lifecycle": lambda: judge_lifecycle(read(lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket),
                                                  "Rules", missing=("NoSuchLifecycleConfiguration",))),
        "CORS": lambda: judge_cors(read(lambda: client.get_bucket_cors(Bucket=bucket), "CORSRules",
                                        missing=("NoSuchCORSConfiguration",)), origins),
        "ACL": lambda: judge_acl(read(lambda: client.get_bucket_acl(Bucket=bucket), "Grants")),
        "policy": lambda: judge_policy(json.loads(read(lambda: client.get_bucket_policy(Bucket=bucket), "Policy",
                                                       missing=("NoSuchBucketPolicy",)) or "{}").get("Statement", [])),
        "public access block": public_access_block,
    }
    items = []
    for label, check in checks.items():
        try:
            items.append(check())
        except CannotRead as exc:
            items.append((False, f"{label}: {exc}"))
    return items
