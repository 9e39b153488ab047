"""The app role's third-party rules (roles/app/filter_plugins/app_third_party.py): every
refusal names the variable and never the value; a feature off needs and writes nothing."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("app_third_party", ROOT / "roles/app/filter_plugins/app_third_party.py")
tp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tp)

SITE = ["multinotesai.com", ".api.multinotesai.com"]
# Everything on, every value valid for production.
GOOD = {
    "smtp_enabled": True, "smtp_host": "smtp.relay.net", "smtp_port": 587, "smtp_security": "starttls",
    "smtp_user": "mailer", "smtp_password": "S3cret-Relay-Pass-91",  # pragma: allowlist secret
    "smtp_from": "noreply@multinotesai.com", "smtp_support_address": "support@multinotesai.com", "smtp_timeout": 10,
    "oauth_google_enabled": True, "oauth_google_client_id": "123456-abcdef.apps.googleusercontent.com",
    "oauth_google_client_secret": "GOCSPX-realGoogleSecret91",  # pragma: allowlist secret
    "oauth_google_redirect_uris": ["https://multinotesai.com/auth/google/callback/"],
    "oauth_facebook_enabled": True, "oauth_facebook_app_id": "987654321012345",
    "oauth_facebook_app_secret": "f00dbabe1234567890abcdef0fedcba9",  # pragma: allowlist secret
    "oauth_facebook_redirect_uris": ["https://eu.api.multinotesai.com/auth/facebook/callback/"],
    "razorpay_enabled": True, "razorpay_key_id": "rzp_live_AbCdEf123456",
    "razorpay_key_secret": "liveSecretQwErTy987654", "razorpay_webhook_secret": "whsec-Prod-7731-qqzz",  # pragma: allowlist secret
    "llm_together_enabled": True, "llm_together_api_key": "tgp_v1_realkey884422",  # pragma: allowlist secret
    "llm_gemini_enabled": True, "llm_gemini_api_key": "AIzaSyRealGeminiKey5533",  # pragma: allowlist secret
    "llm_openai_enabled": True, "llm_openai_api_key": "sk-proj-RealOpenAIKey7788",  # pragma: allowlist secret
    "sentry_enabled": True, "sentry_dsn": "https://abc123def456@o99.ingest.sentry.io/4501234",
    "sentry_environment": "production", "sentry_release": "", "sentry_traces_sample_rate": 0.1,
    "sentry_profiles_sample_rate": 0.1,
}


def errors(**changes):
    return tp.app_third_party_errors(dict(GOOD, **changes), "production", SITE)


def test_valid_production_settings_pass():
    assert errors() == []


def test_features_off_need_no_keys_and_write_nothing():
    off = {k: (False if k.endswith("_enabled") else "") for k in GOOD}
    off.update(sentry_traces_sample_rate=0.1, sentry_profiles_sample_rate=0.1)
    assert tp.app_third_party_errors(off, "production", SITE) == []
    assert tp.app_third_party_env(off) == {}


@pytest.mark.parametrize("changes,named", [
    ({"smtp_host": ""}, "app_smtp_host"),
    ({"smtp_port": 0}, "app_smtp_port"),
    ({"smtp_security": "none", "smtp_port": 25}, "app_smtp_security=none on app_smtp_port 25"),
    ({"smtp_security": "none", "smtp_port": 2525}, "app_smtp_security must be starttls or tls"),
    ({"smtp_password": ""}, "app_smtp_password"),
    ({"smtp_password": "CHANGEME"}, "app_smtp_password"),  # pragma: allowlist secret
    ({"smtp_from": "not-an-address"}, "app_smtp_from"),
    ({"smtp_support_address": ""}, "app_smtp_support_address"),
    ({"oauth_google_client_id": "<your client id>"}, "app_oauth_google_client_id"),
    ({"oauth_google_client_secret": "xxx"}, "app_oauth_google_client_secret"),  # pragma: allowlist secret
    ({"oauth_google_redirect_uris": ["http://multinotesai.com/cb/"]}, "app_oauth_google_redirect_uris[0] must be an https"),
    ({"oauth_google_redirect_uris": ["https://evil.example.net/cb/"]}, "app_oauth_google_redirect_uris[0] is not on"),
    ({"oauth_google_redirect_uris": []}, "app_oauth_google_redirect_uris"),
    ({"oauth_facebook_app_secret": "changeme"}, "app_oauth_facebook_app_secret"),  # pragma: allowlist secret
    ({"oauth_facebook_redirect_uris": ["https://api.multinotesai.com.evil.net/cb/"]}, "app_oauth_facebook_redirect_uris[0]"),
    ({"razorpay_key_id": "rzp_test_AbCdEf123456"}, "app_razorpay_key_id is a test key"),
    ({"razorpay_key_id": "pk_live_123"}, "app_razorpay_key_id must be"),
    ({"razorpay_key_secret": ""}, "app_razorpay_key_secret"),
    ({"razorpay_webhook_secret": "<webhook secret>"}, "app_razorpay_webhook_secret"),
    ({"llm_together_api_key": "your-api-key"}, "app_llm_together_api_key"),  # pragma: allowlist secret
    ({"llm_gemini_api_key": ""}, "app_llm_gemini_api_key"),
    ({"llm_openai_api_key": "sk-CHANGEME"}, "app_llm_openai_api_key"),  # pragma: allowlist secret
    ({"sentry_dsn": "not a dsn"}, "app_sentry_dsn"),
    ({"sentry_traces_sample_rate": 1.5}, "app_sentry_traces_sample_rate"),
    ({"sentry_profiles_sample_rate": -0.1}, "app_sentry_profiles_sample_rate"),
    ({"sentry_profiles_sample_rate": "often"}, "app_sentry_profiles_sample_rate"),
])
def test_bad_value_is_refused_naming_the_variable_not_the_value(changes, named):
    found = errors(**changes)
    assert len(found) == 1, found
    assert named in found[0]
    for value in changes.values():
        if isinstance(value, str) and len(value) > 4:  # secrets, not choices such as "none"
            assert value not in found[0]


def test_no_valid_secret_appears_in_any_message():
    bad = dict(GOOD, smtp_host="", razorpay_key_id="rzp_test_1", sentry_traces_sample_rate=2)
    text = " ".join(tp.app_third_party_errors(bad, "production", SITE))
    for key, value in GOOD.items():
        if isinstance(value, str) and len(value) > 8 and key != "sentry_environment":
            assert value not in text, key


def test_test_key_and_plain_smtp_are_allowed_outside_production():
    settings = dict(GOOD, razorpay_key_id="rzp_test_AbCdEf123456", smtp_security="none", smtp_port=1025)
    assert tp.app_third_party_errors(settings, "staging", SITE) == []


def test_port_25_without_tls_is_refused_everywhere():
    settings = dict(GOOD, smtp_security="none", smtp_port=25)
    assert any("app_smtp_port 25" in e for e in tp.app_third_party_errors(settings, "local", SITE))


def test_no_user_needs_no_password():
    assert errors(smtp_user="", smtp_password="") == []


def test_a_feature_off_ignores_its_bad_keys():
    assert errors(razorpay_enabled=False, razorpay_key_id="rzp_test_1", razorpay_key_secret="") == []


def test_env_lines_of_the_features_on():
    env = tp.app_third_party_env(dict(GOOD, llm_gemini_enabled=False, sentry_enabled="false"))
    assert env["SMTP_HOST"] == "smtp.relay.net" and env["SMTP_PORT"] == "587"
    assert env["SMTP_SECURITY"] == "starttls" and env["DEFAULT_FROM_EMAIL"] == "noreply@multinotesai.com"
    assert env["GOOGLE_REDIRECT_URI"] == "https://multinotesai.com/auth/google/callback/"
    assert env["RAZORPAY_KEY_ID"] == "rzp_live_AbCdEf123456"
    assert "GEMINI_API_KEY" not in env and "SENTRY_DSN" not in env
    assert env["OPENAI_API_KEY"] == "sk-proj-RealOpenAIKey7788"  # pragma: allowlist secret


@pytest.mark.parametrize("dsn,ok", [
    ("https://abc123@o1.ingest.sentry.io/42", True),
    ("http://abc123@sentry.internal:9000/7", True),
    ("https://abc123@sentry.example.net/sentry/7", True),
    ("https://o1.ingest.sentry.io/42", False),
    ("https://abc123@o1.ingest.sentry.io/", False),
    ("ftp://abc123@host/1", False),
])
def test_sentry_dsn_shape(dsn, ok):
    assert (errors(sentry_dsn=dsn) == []) is ok
