import socket

from celery import shared_task
from django.db import OperationalError


@shared_task(bind=True, autoretry_for=(OperationalError, ConnectionError), retry_backoff=True,
             retry_backoff_max=300, retry_jitter=True, max_retries=5)
def add(self, a, b):
    """The task the tests enqueue over HTTP: its result names the host that ran it."""
    return {"sum": a + b, "hostname": socket.gethostname()}


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def heartbeat():
    """Run by beat: one row per run in core_heartbeat."""
    from .models import Heartbeat

    row = Heartbeat.objects.create(hostname=socket.gethostname())
    return row.pk


class SentryCheckError(Exception):
    """Raised on purpose, to prove errors reach Sentry."""


@shared_task
def sentry_check(marker):
    """Queued by `manage.py sentry_check --raise-in-task MARKER`: fails, and Sentry sees it."""
    raise SentryCheckError(f"sentry check from a Celery task: {marker}")
