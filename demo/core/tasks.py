import os
import socket
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError

# The longest a test may ask `add` to take (the enqueue view bounds it too).
MAX_SECONDS = 60


@shared_task(bind=True, autoretry_for=(OperationalError, ConnectionError), retry_backoff=True,
             retry_backoff_max=300, retry_jitter=True, max_retries=5)
def add(self, a, b, seconds=0):
    """The task the tests enqueue over HTTP: its result names the host and the worker (the
    pool's parent process) that ran it. `seconds` makes it a long task (a warm restart must
    let it finish); when its soft time limit strikes first, it says so instead of failing."""
    result = {"sum": a + b, "hostname": socket.gethostname(), "worker_pid": os.getppid()}
    try:
        time.sleep(max(0, min(int(seconds), MAX_SECONDS)))
    except SoftTimeLimitExceeded:
        result["soft_time_limit_exceeded"] = True
    return result


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
