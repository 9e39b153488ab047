import json
import threading

import redis
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.core import signing
from django.db import connection
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

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
