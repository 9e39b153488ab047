import json
import logging
import re
import threading
import uuid

import redis
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.core import signing
from django.core.files.storage import default_storage
from django.db import connection
from django.http import Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import media
from .management.commands.sentry_check import TOKEN_SALT
from .tasks import SentryCheckError, add


def _check_database():
    # Django's own connection: one per thread, kept for CONN_MAX_AGE and health-checked
    # (CONN_HEALTH_CHECKS), so a health check reuses it instead of connecting each time.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


_redis_client = None
_redis_client_lock = threading.Lock()


def _redis():
    """One Redis client per process, with its connection pool: the health check reuses a
    pooled connection. A new connection per request left one socket in TIME_WAIT per check
    and, at a few hundred checks a second, ran the host out of ephemeral ports. redis-py's
    pool notices a fork (gunicorn preloads, then forks the workers) and starts afresh in the
    child, so no connection is shared between processes."""
    global _redis_client
    if _redis_client is None:
        with _redis_client_lock:
            if _redis_client is None:
                _redis_client = redis.Redis.from_url(
                    settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2,
                    health_check_interval=30)
    return _redis_client


def _check_redis():
    _redis().ping()


@never_cache
@require_GET
def health(request):
    """The load balancer's and the deploy's health gate: 200 only if DB and Redis answer."""
    checks = {}
    for name, check in (("database", _check_database), ("redis", _check_redis)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure makes the host unhealthy
            checks[name] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", "version": settings.APP_VERSION,
                         "checks": checks}, status=200 if healthy else 503)


@never_cache
@require_GET
def status(request):
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cursor.fetchone()
    return JsonResponse({"status": "ok", "environment": settings.ENVIRONMENT, "version": settings.APP_VERSION,
                         "db_tls_cipher": row[1] if row else ""})


@require_GET
def version(request):
    return JsonResponse({"version": settings.APP_VERSION})


@csrf_exempt
@require_POST
def login_view(request):
    """POST {"username", "password"}: 200 and a session, or 401. nginx rate-limits this path."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "invalid JSON"}, status=400)
    user = authenticate(request, username=data.get("username", ""), password=data.get("password", ""))
    if user is None:
        return JsonResponse({"error": "invalid credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True, "username": user.get_username()})


@csrf_exempt
@require_POST
def enqueue(request):
    """POST {"a": 2, "b": 3}: queues core.tasks.add, answers 202 with the task id.
    Optional: "seconds" (0-60) the task takes, "soft_time_limit" (1-60) its own soft limit."""
    try:
        data = json.loads(request.body or b"{}")
        a, b = int(data.get("a", 0)), int(data.get("b", 0))
        seconds = int(data.get("seconds", 0))
        soft_limit = int(data["soft_time_limit"]) if "soft_time_limit" in data else None
    except (ValueError, TypeError):
        return JsonResponse({"error": "a, b, seconds and soft_time_limit must be integers"}, status=400)
    if not 0 <= seconds <= 60 or soft_limit is not None and not 1 <= soft_limit <= 60:
        return JsonResponse({"error": "seconds must be 0-60 and soft_time_limit 1-60"}, status=400)
    options = {"soft_time_limit": soft_limit} if soft_limit else {}
    result = add.apply_async((a, b), {"seconds": seconds}, **options)
    return JsonResponse({"task_id": result.id}, status=202)


@never_cache
@require_GET
def task_result(request, task_id):
    result = AsyncResult(task_id)
    body = {"task_id": task_id, "state": result.state}
    if result.successful():
        body["result"] = result.result
    return JsonResponse(body)


def index(request):
    return HttpResponse(
        "<!doctype html><title>MultinotesAI demo</title>"
        f'<link rel="stylesheet" href="{settings.STATIC_URL}core/app.css">'
        f"<h1>MultinotesAI demo</h1><p>version {settings.APP_VERSION}</p>",
        content_type="text/html")


@csrf_exempt
@require_POST
def sentry_check(request):
    """Raises on purpose, so Sentry's Django integration reports a request error; only with a
    fresh token from `manage.py sentry_check --request-token` (signed with SECRET_KEY): 404
    to anyone else."""
    try:
        signing.loads(request.headers.get("X-Sentry-Check", ""), salt=TOKEN_SALT, max_age=300)
    except signing.BadSignature:
        raise Http404
    raise SentryCheckError(f"sentry check from a request: {request.headers.get('X-Sentry-Check-Marker', '')}")


log = logging.getLogger(__name__)


def _refuse(status, error, close=False):
    response = JsonResponse({"error": error}, status=status)
    if close:
        # Answered before the body was read: gunicorn must not read (and drop) up to
        # MEDIA_MAX_UPLOAD_BYTES to keep the connection alive.
        response["Connection"] = "close"
    return response


def _csrf_failure(request):
    """The session's CSRF check, run by hand: the view is csrf_exempt so that Django's
    middleware never parses a multipart body (into temp files) before the view refuses it;
    the check itself reads no body for the content types this endpoint takes."""
    return CsrfViewMiddleware(lambda req: None).process_view(request, None, (), {})


@never_cache
@csrf_exempt
@require_POST
def media_upload(request):
    """POST the file itself as the body (not multipart), with its Content-Type and
    Content-Length, logged in (session + X-CSRFToken). 201 {key, size, content_type, url,
    expires_in}: `url` a presigned GET. Every check that can be made on the headers is made
    before a byte of the body is read; the body streams to S3 and never touches a disk here."""
    if not request.user.is_authenticated:
        return _refuse(401, "log in first (POST /api/v1/auth/login/)", close=True)
    if not settings.AWS_BUCKET:
        return _refuse(503, "media storage is not configured: AWS_BUCKET is not set", close=True)
    declared = request.META.get("CONTENT_LENGTH", "")
    if not declared.isdigit():
        return _refuse(411, "Content-Length is required (chunked uploads are not accepted)", close=True)
    length = int(declared)
    if length > settings.MEDIA_MAX_UPLOAD_BYTES:
        return _refuse(413, f"the file is larger than {settings.MEDIA_MAX_UPLOAD_BYTES} bytes", close=True)
    if length == 0:
        return _refuse(400, "the body is empty: send the file itself as the request body", close=True)
    content_type = request.content_type or ""
    if content_type not in settings.MEDIA_ALLOWED_TYPES:
        return _refuse(415, f"Content-Type must be one of {', '.join(settings.MEDIA_ALLOWED_TYPES)}", close=True)
    denied = _csrf_failure(request)
    if denied is not None:
        denied["Connection"] = "close"
        return denied
    head = media.read_head(request, media.head_size(content_type))
    if not media.matches(content_type, head):
        return _refuse(415, f"the file's content is not {content_type}", close=True)
    key = f"{settings.MEDIA_UPLOAD_PREFIX}/{uuid.uuid4().hex}.{media.extension(content_type)}"
    stream = media.UploadStream(request, head, length, content_type, key)
    try:
        key = default_storage.save(key, stream)
    except media.ShortBody as exc:
        return _refuse(400, str(exc), close=True)
    except Exception:  # noqa: BLE001 - S3 refused or is unreachable; the log has the cause
        log.exception("media upload to S3 failed (%s bytes, %s)", length, content_type)
        return _refuse(502, "the media store refused the upload; nothing was stored", close=True)
    return JsonResponse({"key": key, "size": stream.bytes_read, "content_type": content_type,
                         "url": default_storage.url(key), "expires_in": settings.AWS_QUERYSTRING_EXPIRE},
                        status=201)


_MEDIA_KEY = re.compile(r"^[A-Za-z0-9_-]+/[0-9a-f]{32}\.[a-z]{3,4}$")


@never_cache
@require_GET
def media_file(request, key):
    """302 to a fresh presigned URL of an uploaded object, or 404."""
    if not request.user.is_authenticated:
        return _refuse(401, "log in first (POST /api/v1/auth/login/)")
    if not settings.AWS_BUCKET:
        return _refuse(503, "media storage is not configured: AWS_BUCKET is not set")
    if not _MEDIA_KEY.match(key) or not key.startswith(settings.MEDIA_UPLOAD_PREFIX + "/") \
            or not default_storage.exists(key):
        raise Http404
    return HttpResponseRedirect(default_storage.url(key))
