"""Settings of the MultinotesAI demo: every value comes from the environment, under the
launch checklist's names. Defaults are safe for production; development opts out.

The deploy writes them into /etc/multinotes/multinotes.env (root:multinotes 0640).
"""
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name, default=False):
    value = env(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (true/false)")


def env_list(name, default=""):
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def env_int(name, default):
    return int(env(name, str(default)))


ENVIRONMENT = env("ENVIRONMENT", "production")
APP_VERSION = env("APP_VERSION", (BASE_DIR / "VERSION").read_text().strip()
                  if (BASE_DIR / "VERSION").exists() else "0+unknown")
SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY is not set")
DEBUG = env_bool("DEBUG", False)
if DEBUG and ENVIRONMENT == "production":
    raise ImproperlyConfigured("DEBUG must be false when ENVIRONMENT=production")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
SITE_URL = env("SITE_URL", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "core",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "multinotes.urls"
WSGI_APPLICATION = "multinotes.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# MariaDB through PyMySQL. DB_SSL_CA (the server's CA) turns on verified TLS; the
# database user is created REQUIRE SSL, so a connection without it is refused anyway.
_db_options = {
    "charset": "utf8mb4",
    "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
}
if env("DB_SSL_CA"):
    _db_options["ssl"] = {"ca": env("DB_SSL_CA"), "check_hostname": env_bool("DB_SSL_VERIFY_HOSTNAME", True)}
DATABASES = {
    "default": {
        "ENGINE": env("DB_ENGINE", "django.db.backends.mysql"),
        "NAME": env("DB_NAME", "multinotes"),
        "USER": env("DB_USER", "multinotes"),
        "PASSWORD": env("DB_PASSWORD", ""),
        "HOST": env("DB_HOST", "127.0.0.1"),
        "PORT": env("DB_PORT", "3306"),
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": _db_options if env("DB_ENGINE", "django.db.backends.mysql").endswith("mysql") else {},
    }
}
if DATABASES["default"]["USER"] == "root" and ENVIRONMENT == "production":
    raise ImproperlyConfigured("DB_USER must not be root in production")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = env("STATIC_URL", "/static/")
STATIC_ROOT = env("STATIC_ROOT", str(BASE_DIR / "staticfiles"))
STORAGES = {
    # Media: S3 when AWS_BUCKET is set, else a storage that refuses to save (below).
    "default": {"BACKEND": "core.media.MediaNotConfiguredStorage"},
    # Hashed names: nginx may cache them for a year, a new release gets new names.
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env("CACHE_URL", REDIS_URL),
    }
}

# CORS & CSRF: explicit origins; CORS_ALLOW_ALL is for development only.
CORS_ALLOW_ALL_ORIGINS = env_bool("CORS_ALLOW_ALL", False)
if CORS_ALLOW_ALL_ORIGINS and ENVIRONMENT == "production":
    raise ImproperlyConfigured("CORS_ALLOW_ALL must be false when ENVIRONMENT=production")
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS: nginx terminates TLS and says so in X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# Load balancers and the deploy's health gate probe over plain HTTP on the private side.
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Celery: the checklist's 30-minute hard limit, a soft limit before it, late acks so a
# task killed with its worker is delivered again, one task prefetched at a time.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 1800)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 1740)
CELERY_TASK_ACKS_LATE = True
# A running task reports STARTED (a warm restart's test waits for it; operators see it too).
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 86400)
CELERY_TASK_DEFAULT_RETRY_DELAY = env_int("CELERY_TASK_DEFAULT_RETRY_DELAY", 10)
CELERY_TIMEZONE = "UTC"
HEARTBEAT_INTERVAL = env_int("HEARTBEAT_INTERVAL", 60)
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "core.tasks.heartbeat", "schedule": float(HEARTBEAT_INTERVAL)},
}

LOG_LEVEL = env("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# ---- Third-party services: the role writes these only for the features switched on ----
# Email: SMTP_HOST set means a real relay; unset, mail is discarded (never printed to a log,
# where a password-reset link would leak).
SMTP_HOST = env("SMTP_HOST")
if SMTP_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = SMTP_HOST
    EMAIL_PORT = env_int("SMTP_PORT", 587)
    _smtp_security = env("SMTP_SECURITY", "starttls")
    if _smtp_security not in ("starttls", "tls", "none"):
        raise ImproperlyConfigured(f"SMTP_SECURITY={_smtp_security!r} is not starttls, tls or none")
    # The relay's certificate is verified against the system's CAs (ssl.create_default_context).
    EMAIL_USE_TLS = _smtp_security == "starttls"
    EMAIL_USE_SSL = _smtp_security == "tls"
    EMAIL_HOST_USER = env("SMTP_USERNAME", "")
    EMAIL_HOST_PASSWORD = env("SMTP_PASSWORD", "")
    EMAIL_TIMEOUT = env_int("SMTP_TIMEOUT", 10)
else:
    EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "webmaster@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
SUPPORT_EMAIL = env("SUPPORT_EMAIL", "")

# OAuth, payments and LLM providers: read here, so one place says what the app expects.
GOOGLE_CLIENT_ID = env("GOOGLE_CLIENT_ID", "")
GOOGLE_CLIENT_SECRET = env("GOOGLE_CLIENT_SECRET", "")
GOOGLE_REDIRECT_URIS = env_list("GOOGLE_REDIRECT_URI")
FACEBOOK_APP_ID = env("FACEBOOK_APP_ID", "")
FACEBOOK_APP_SECRET = env("FACEBOOK_APP_SECRET", "")
FACEBOOK_REDIRECT_URIS = env_list("FACEBOOK_REDIRECT_URI")
RAZORPAY_KEY_ID = env("RAZORPAY_KEY_ID", "")
RAZORPAY_KEY_SECRET = env("RAZORPAY_KEY_SECRET", "")
RAZORPAY_WEBHOOK_SECRET = env("RAZORPAY_WEBHOOK_SECRET", "")
if ENVIRONMENT == "production" and RAZORPAY_KEY_ID.startswith("rzp_test_"):
    raise ImproperlyConfigured("RAZORPAY_KEY_ID is a test key but ENVIRONMENT=production")
TOGETHER_API_KEY = env("TOGETHER_API_KEY", "")
GEMINI_API_KEY = env("GEMINI_API_KEY", "")
OPENAI_API_KEY = env("OPENAI_API_KEY", "")

# Sentry: on only when SENTRY_DSN is set. Django's integration reports request errors,
# Celery's the tasks' (the worker loads these settings, so it is initialised there too).
SENTRY_DSN = env("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = env("SENTRY_ENVIRONMENT", ENVIRONMENT)
SENTRY_RELEASE = env("SENTRY_RELEASE", APP_VERSION)
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=SENTRY_ENVIRONMENT,
        release=SENTRY_RELEASE,
        traces_sample_rate=float(env("SENTRY_TRACES_SAMPLE_RATE", "0.1")),
        profiles_sample_rate=float(env("SENTRY_PROFILES_SAMPLE_RATE", "0.1")),
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
    )

# ---- Media on S3 (django-storages): only when AWS_BUCKET is set ----
# Unset, the default storage refuses every save and the upload endpoint answers 503 naming
# AWS_BUCKET: media never lands on a web host's disk, where one host alone would see it.
AWS_BUCKET = env("AWS_BUCKET", "")
# The upload endpoint's limit: the edge's (nginx client_max_body_size 250m = 250 MiB).
MEDIA_MAX_UPLOAD_BYTES = env_int("MEDIA_MAX_UPLOAD_BYTES", 250 * 1024 * 1024)
# Content types the upload endpoint takes; the body's first bytes must match (core/media.py).
from core.media import check_allowed_types  # noqa: E402 - after the env helpers above

MEDIA_ALLOWED_TYPES = check_allowed_types(env_list(
    "MEDIA_ALLOWED_TYPES", "image/png,image/jpeg,image/gif,image/webp,application/pdf"))
# Objects the endpoint writes get keys under this prefix (the server chooses the rest).
MEDIA_UPLOAD_PREFIX = env("MEDIA_UPLOAD_PREFIX", "uploads")
AWS_QUERYSTRING_EXPIRE = env_int("AWS_QUERYSTRING_EXPIRE", 3600)
# The launch check's media item (manage.py media_check) expects the bucket's public access
# block; false only for an S3-compatible server that has no such API.
MEDIA_PUBLIC_ACCESS_BLOCK = env_bool("MEDIA_PUBLIC_ACCESS_BLOCK", True)
if not 1 <= AWS_QUERYSTRING_EXPIRE <= 604800:
    raise ImproperlyConfigured("AWS_QUERYSTRING_EXPIRE must be 1-604800 seconds (S3 refuses presigned URLs beyond 7 days)")
if AWS_BUCKET:
    from boto3.s3.transfer import TransferConfig

    _addressing = env("AWS_S3_ADDRESSING_STYLE", "virtual")
    if _addressing not in ("virtual", "path"):
        raise ImproperlyConfigured(f"AWS_S3_ADDRESSING_STYLE={_addressing!r} is not virtual or path")
    # A request body is not seekable: boto3 reads it in parts of 8 MiB, at most this many in
    # memory at once (the memory an upload costs a gunicorn worker: 4 x 8 MiB).
    _transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                               max_concurrency=4)
    _transfer.max_in_memory_upload_chunks = 4
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_BUCKET,
            "region_name": env("AWS_DEFAULT_REGION", "us-east-1"),
            "access_key": env("AWS_ACCESS_KEY_ID"),
            "secret_key": env("AWS_SECRET_ACCESS_KEY"),
            # Empty: AWS's own endpoint for the region; set for S3-compatible servers.
            "endpoint_url": env("AWS_S3_ENDPOINT_URL"),
            "addressing_style": _addressing,
            "signature_version": "s3v4",
            # The bucket is private: objects get no ACL, reads go through presigned URLs.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": AWS_QUERYSTRING_EXPIRE,
            # Two uploads never share a key (the endpoint picks uuid keys anyway).
            "file_overwrite": False,
            # botocore would verify with certifi's bundle, ignoring a CA the operator installs.
            "verify": env("AWS_S3_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"),
            "use_ssl": True,
            "transfer_config": _transfer,
        },
    }
