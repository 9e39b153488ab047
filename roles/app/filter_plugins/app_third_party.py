"""The app's third-party settings (SMTP, OAuth, Razorpay, LLM keys, Sentry): the rules
they must meet and the environment variables they become.

Two filters, used by roles/app/tasks/validate.yml and config.yml:

    settings | app_third_party_errors(environment, site_names)   -> [message, ...]
    settings | app_third_party_env                               -> {ENV_NAME: value}

`settings` is a flat dict keyed by the role's variable names without the `app_` prefix
(smtp_enabled, smtp_host, ...). A feature whose `<feature>_enabled` is false needs no
keys and writes none. Messages name the variable the user sets and the fix, never a
value: most of these are secrets.
"""

import re
from urllib.parse import urlsplit

# Values a secret must not be or contain (case-insensitive): what templates and examples ship.
PLACEHOLDERS = ("changeme", "change-me", "change_me", "replace-me", "replace_me", "placeholder",
                "xxx", "your-", "your_", "todo", "fixme", "dummy", "insert-", "<", ">")

EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
# Sentry DSN: scheme://public_key@host[:port][/path]/project_id
SENTRY_DSN = re.compile(r"^https?://[0-9A-Za-z]+(:[0-9A-Za-z]+)?@[^/@\s]+(/[^\s]*)?/[0-9]+/?$")

FEATURES = {
    # feature: (switch, [(variable, env name, secret), ...])
    "smtp": ("smtp_enabled", [
        ("smtp_host", "SMTP_HOST", False), ("smtp_port", "SMTP_PORT", False),
        ("smtp_security", "SMTP_SECURITY", False), ("smtp_user", "SMTP_USERNAME", False),
        ("smtp_password", "SMTP_PASSWORD", True), ("smtp_from", "DEFAULT_FROM_EMAIL", False),
        ("smtp_support_address", "SUPPORT_EMAIL", False), ("smtp_timeout", "SMTP_TIMEOUT", False)]),
    "oauth_google": ("oauth_google_enabled", [
        ("oauth_google_client_id", "GOOGLE_CLIENT_ID", False),
        ("oauth_google_client_secret", "GOOGLE_CLIENT_SECRET", True),
        ("oauth_google_redirect_uris", "GOOGLE_REDIRECT_URI", False)]),
    "oauth_facebook": ("oauth_facebook_enabled", [
        ("oauth_facebook_app_id", "FACEBOOK_APP_ID", False),
        ("oauth_facebook_app_secret", "FACEBOOK_APP_SECRET", True),
        ("oauth_facebook_redirect_uris", "FACEBOOK_REDIRECT_URI", False)]),
    "razorpay": ("razorpay_enabled", [
        ("razorpay_key_id", "RAZORPAY_KEY_ID", False),
        ("razorpay_key_secret", "RAZORPAY_KEY_SECRET", True),
        ("razorpay_webhook_secret", "RAZORPAY_WEBHOOK_SECRET", True)]),
    "llm_together": ("llm_together_enabled", [("llm_together_api_key", "TOGETHER_API_KEY", True)]),
    "llm_gemini": ("llm_gemini_enabled", [("llm_gemini_api_key", "GEMINI_API_KEY", True)]),
    "llm_openai": ("llm_openai_enabled", [("llm_openai_api_key", "OPENAI_API_KEY", True)]),
    "sentry": ("sentry_enabled", [
        ("sentry_dsn", "SENTRY_DSN", True), ("sentry_environment", "SENTRY_ENVIRONMENT", False),
        ("sentry_release", "SENTRY_RELEASE", False),
        ("sentry_traces_sample_rate", "SENTRY_TRACES_SAMPLE_RATE", False),
        ("sentry_profiles_sample_rate", "SENTRY_PROFILES_SAMPLE_RATE", False)]),
}


def _on(value):
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def is_placeholder(value):
    """Empty, or a value copied from a template rather than a real secret."""
    text = "" if value is None else str(value).strip().lower()
    return not text or any(p in text for p in PLACEHOLDERS)


def _name_matches(host, names):
    """Django's ALLOWED_HOSTS matching: exact, or `.example.com` for it and its subdomains."""
    host = host.lower()
    for name in names:
        name = str(name).lower()
        if name == host or (name.startswith(".") and (host == name[1:] or host.endswith(name))):
            return True
    return False


def _rate(value):
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return None
    return rate if 0.0 <= rate <= 1.0 else None


def _secret(errors, s, var, how):
    if is_placeholder(s.get(var)):
        errors.append(f"app_{var} is empty or a template value: set the real one "
                      f"from Vault{how}.")


def _redirects(errors, s, var, site_names):
    uris = s.get(var) or []
    if isinstance(uris, str) or not uris:
        errors.append(f"app_{var} must be a non-empty list of https:// callback URLs on one of app_allowed_hosts.")
        return
    for index, uri in enumerate(uris):
        parts = urlsplit(str(uri))
        if parts.scheme != "https" or not parts.hostname:
            errors.append(f"app_{var}[{index}] must be an https:// URL (the provider sends the user's code there).")
        elif not _name_matches(parts.hostname, site_names):
            errors.append(f"app_{var}[{index}] is not on one of the site's names (app_allowed_hosts): "
                          "use a callback URL of this site.")


def app_third_party_errors(settings, environment="production", site_names=()):
    """Every rule the settings break, as messages naming the variable (never its value)."""
    s = dict(settings)
    production = environment == "production"
    errors = []

    if _on(s.get("smtp_enabled")):
        if not str(s.get("smtp_host") or "").strip():
            errors.append("app_smtp_host is empty: name the SMTP relay (e.g. smtp.example.net), "
                          "or set app_smtp_enabled: false.")
        try:
            port = int(s.get("smtp_port"))
        except (TypeError, ValueError):
            port = 0
        if not 1 <= port <= 65535:
            errors.append("app_smtp_port must be a TCP port (587 for STARTTLS, 465 for TLS).")
        security = s.get("smtp_security")
        if security not in ("starttls", "tls", "none"):
            errors.append("app_smtp_security must be starttls, tls or none.")
        elif security == "none" and port == 25:
            errors.append("app_smtp_security=none on app_smtp_port 25 sends mail and credentials in clear "
                          "text: use starttls on 587 (or tls on 465).")
        elif security == "none" and production:
            errors.append("app_smtp_security must be starttls or tls when app_environment is production.")
        if str(s.get("smtp_user") or ""):
            _secret(errors, s, "smtp_password", " (app_smtp_user is set)")
        for var in ("smtp_from", "smtp_support_address"):
            if not EMAIL.match(str(s.get(var) or "")):
                errors.append(f"app_{var} must be an email address, e.g. support@multinotesai.com.")

    for provider, id_var, secret_var in (("google", "oauth_google_client_id", "oauth_google_client_secret"),
                                         ("facebook", "oauth_facebook_app_id", "oauth_facebook_app_secret")):
        if _on(s.get(f"oauth_{provider}_enabled")):
            if is_placeholder(s.get(id_var)):
                errors.append(f"app_{id_var} is empty or a placeholder: copy it from the provider's console.")
            _secret(errors, s, secret_var, "")
            _redirects(errors, s, f"oauth_{provider}_redirect_uris", site_names)

    if _on(s.get("razorpay_enabled")):
        key_id = str(s.get("razorpay_key_id") or "")
        if is_placeholder(key_id) or not re.match(r"^rzp_(live|test)_[0-9A-Za-z]+$", key_id):
            errors.append("app_razorpay_key_id must be a Razorpay key id (rzp_live_... or rzp_test_...).")
        elif production and not key_id.startswith("rzp_live_"):
            errors.append("app_razorpay_key_id is a test key (rzp_test_...) but app_environment is production: "
                          "use the live key (rzp_live_...).")
        _secret(errors, s, "razorpay_key_secret", "")
        _secret(errors, s, "razorpay_webhook_secret", " (the dashboard's webhook secret)")

    for provider in ("together", "gemini", "openai"):
        if _on(s.get(f"llm_{provider}_enabled")):
            _secret(errors, s, f"llm_{provider}_api_key", "")

    if _on(s.get("sentry_enabled")):
        dsn = str(s.get("sentry_dsn") or "")
        if is_placeholder(dsn) or not SENTRY_DSN.match(dsn):
            errors.append("app_sentry_dsn must be the project's DSN, https://<key>@<host>/<project id> "
                          "(Sentry: Settings > Client Keys).")
    # Checked with Sentry off too: a bad rate is a typo worth knowing before it is switched on.
    for var in ("sentry_traces_sample_rate", "sentry_profiles_sample_rate"):
        if var in s and _rate(s.get(var)) is None:
            errors.append(f"app_{var} must be a number from 0 to 1 (0.1 samples 10%).")
    return errors


def _env_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def app_third_party_env(settings):
    """The environment variables of the features that are on; a feature off writes none."""
    s = dict(settings)
    env = {}
    for switch, keys in FEATURES.values():
        if _on(s.get(switch)):
            env.update({name: _env_value(s.get(var)) for var, name, _secret in keys})
    return env


class FilterModule:
    def filters(self):
        return {"app_third_party_errors": app_third_party_errors, "app_third_party_env": app_third_party_env}
