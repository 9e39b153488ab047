"""The launch check's media-bucket judgements (demo/core/bucket_checks.py): each setting
passes only as the media role makes it, and a setting the app's key cannot read is a
finding that names the error, not a crash. The round trip against a real S3 server runs in
test_media_app.py; here the answers are the S3 API's documented shapes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "demo" / "core"))
import bucket_checks as bc  # noqa: E402

ORIGINS = ["https://app.test"]


class ClientError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class Client:
    """Answers like boto3's S3 client: a dict per call, or raises with an error code."""

    def __init__(self, **answers):
        self.answers = answers

    def __getattr__(self, name):
        def call(**_kwargs):
            answer = self.answers[name]
            if isinstance(answer, Exception):
                raise answer
            return answer
        return call


GOOD = dict(
    get_bucket_versioning={"Status": "Enabled"},
    get_bucket_lifecycle_configuration={"Rules": [
        {"ID": "noncurrent", "Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 30}},
        {"ID": "abort", "Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]},
    get_bucket_cors={"CORSRules": [{"AllowedOrigins": ORIGINS, "AllowedMethods": ["GET", "PUT", "POST", "DELETE"]}]},
    get_bucket_acl={"Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": "owner"}, "Permission": "FULL_CONTROL"}]},
    get_bucket_policy={"Policy": '{"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*",'
                                 ' "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}'},
    get_public_access_block={"PublicAccessBlockConfiguration": dict.fromkeys(bc.PUBLIC_ACCESS_BLOCK_KEYS, True)},
)


def verdicts(**changes):
    return bc.bucket_items(Client(**{**GOOD, **changes}), "media", ORIGINS)


def test_the_media_roles_bucket_passes_every_item():
    items = verdicts()
    assert len(items) == 6 and all(ok for ok, _ in items), items


@pytest.mark.parametrize("changes, finding", [
    ({"get_bucket_versioning": {}}, "versioning: never enabled"),
    ({"get_bucket_versioning": {"Status": "Suspended"}}, "versioning: Suspended"),
    ({"get_bucket_lifecycle_configuration": ClientError("NoSuchLifecycleConfiguration")}, "0 enabled rule(s)"),
    ({"get_bucket_lifecycle_configuration": {"Rules": [
        {"Status": "Disabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 30}},
        {"Status": "Enabled", "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]}},
     "noncurrent versions expire after never"),
    ({"get_bucket_cors": ClientError("NoSuchCORSConfiguration")}, "CORS: origins none"),
    ({"get_bucket_cors": {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "PUT"]}]}}, "origins ['*']"),
    ({"get_bucket_cors": {"CORSRules": [{"AllowedOrigins": ORIGINS, "AllowedMethods": ["GET"]}]}}, "methods ['GET']"),
    ({"get_bucket_acl": {"Grants": [{"Grantee": {"Type": "Group", "URI": bc.PUBLIC_GRANTEES[0]},
                                     "Permission": "READ"}]}}, "public grants to"),
    ({"get_bucket_policy": ClientError("NoSuchBucketPolicy")}, "no Deny of plain-HTTP requests"),
    ({"get_bucket_policy": {"Policy": '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}'}},
     "no Deny of plain-HTTP requests"),
    ({"get_public_access_block": ClientError("NoSuchPublicAccessBlockConfiguration")}, "public access block: off"),
    ({"get_public_access_block": {"PublicAccessBlockConfiguration": {"BlockPublicAcls": True}}},
     "off: IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets"),
    ({"get_bucket_versioning": ClientError("AccessDenied")}, "versioning: cannot read it (AccessDenied)"),
])
def test_a_setting_not_as_the_role_makes_it_fails_and_says_what_it_found(changes, finding):
    items = verdicts(**changes)
    failed = [line for ok, line in items if not ok]
    assert len(failed) == 1 and finding in failed[0], items


def test_a_server_without_public_access_block_passes_on_acl_and_policy():
    items = verdicts(get_public_access_block=ClientError("NotImplemented"))
    assert all(ok for ok, _ in items), items
    assert any("not offered by this server" in line for _, line in items)


@pytest.mark.parametrize("url, expiry, ok", [
    ("https://s3.test/media/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=ab", 3600, True),
    ("https://s3.test/media/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=604800&X-Amz-Signature=ab", 3600, False),
    ("https://s3.test/media/a.txt", 3600, False),
])
def test_the_presigned_url_must_be_signed_with_the_configured_expiry(url, expiry, ok):
    assert bc.judge_presigned_url(url, expiry)[0] is ok


def test_the_unsigned_url_is_the_object_address_without_its_query():
    assert bc.unsigned("https://s3.test:8333/media/up/a.png?X-Amz-Signature=ab&X-Amz-Expires=1") == \
        "https://s3.test:8333/media/up/a.png"


def test_a_server_known_to_lack_public_access_block_is_not_asked_for_it():
    client = Client(**{**GOOD, "get_public_access_block": ClientError("AccessDenied")})
    items = bc.bucket_items(client, "media", ORIGINS, public_access_block_expected=False)
    assert all(ok for ok, _ in items) and "not expected here" in items[-1][1], items
    assert not all(ok for ok, _ in bc.bucket_items(client, "media", ORIGINS)), "AccessDenied must be a finding"
