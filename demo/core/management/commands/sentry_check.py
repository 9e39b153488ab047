"""Prove Sentry works: `manage.py sentry_check` sends one event straight to the DSN's
envelope endpoint and fails unless the server accepts it (HTTP 200; a wrong key gets
401/403). With --request-token it prints a token for POST /api/v1/sentry-check/ (an error
raised in a request); with --raise-in-task it queues a task that raises on a worker."""
import json
import time
import uuid
from urllib import error, request

from django.conf import settings
from django.core import signing
from django.core.management.base import BaseCommand, CommandError

TOKEN_SALT = "multinotes.sentry-check"


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--request-token", action="store_true",
                            help="print a token (valid 5 minutes) for POST /api/v1/sentry-check/")
        parser.add_argument("--raise-in-task", metavar="MARKER",
                            help="queue core.tasks.sentry_check, which raises an error carrying MARKER")

    def handle(self, *args, **options):
        if options["request_token"]:
            self.stdout.write(signing.dumps("sentry-check", salt=TOKEN_SALT))
            return
        if options["raise_in_task"]:
            from core.tasks import sentry_check

            self.stdout.write(sentry_check.delay(options["raise_in_task"]).id)
            return
        if not settings.SENTRY_DSN:
            self.stdout.write("Sentry off (SENTRY_DSN is not set: app_sentry_enabled is false)")
            return
        from sentry_sdk.consts import VERSION
        from sentry_sdk.utils import Dsn

        auth = Dsn(settings.SENTRY_DSN).to_auth(f"multinotes-sentry-check/{VERSION}")
        event_id = uuid.uuid4().hex
        event = {"event_id": event_id, "timestamp": time.time(), "platform": "python", "level": "info",
                 "message": {"formatted": "multinotes launch check: Sentry DSN works"},
                 "environment": settings.SENTRY_ENVIRONMENT, "release": settings.SENTRY_RELEASE}
        body = "\n".join(json.dumps(part) for part in (
            {"event_id": event_id, "dsn": settings.SENTRY_DSN}, {"type": "event"}, event)).encode() + b"\n"
        req = request.Request(auth.get_api_url(), data=body, method="POST", headers={
            "Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": auth.to_header()})
        url = auth.get_api_url()
        try:
            with request.urlopen(req, timeout=10) as reply:
                status = reply.status
        except error.HTTPError as exc:
            raise CommandError(f"Sentry refused the test event: HTTP {exc.code} from {url} (check app_sentry_dsn)")
        except (error.URLError, OSError) as exc:
            raise CommandError(f"Sentry unreachable at {url}: {exc}")
        if status != 200:
            raise CommandError(f"Sentry answered HTTP {status} from {url}")
        self.stdout.write(f"Sentry accepted test event {event_id} at {url} (HTTP 200)")
