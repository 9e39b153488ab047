"""Send one test mail through the configured SMTP relay to SUPPORT_EMAIL (or the given
address) and fail unless the relay accepted it: the launch check's "test email delivery"."""
import socket
import uuid

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("recipient", nargs="?", help="default: SUPPORT_EMAIL")

    def handle(self, *args, **options):
        if not settings.SMTP_HOST:
            self.stdout.write("SMTP off (SMTP_HOST is not set: app_smtp_enabled is false): no mail sent")
            return
        recipient = options["recipient"] or settings.SUPPORT_EMAIL
        if not recipient:
            raise CommandError("no recipient: set SUPPORT_EMAIL (app_smtp_support_address) or name one")
        mark = uuid.uuid4().hex[:12]
        subject = f"[multinotes] launch check test mail {mark}"
        body = (f"Sent by {socket.gethostname()} from release {settings.APP_VERSION} "
                f"(environment {settings.ENVIRONMENT}) to prove mail delivery works.\n")
        try:
            with get_connection(fail_silently=False) as connection:
                sent = EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient],
                                    connection=connection).send()
        except Exception as exc:  # noqa: BLE001 - any SMTP or TLS failure is the answer
            raise CommandError(f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT} did not accept the test mail: "
                               f"{type(exc).__name__}: {exc}")
        if sent != 1:
            raise CommandError(f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT} accepted no message")
        tls = "STARTTLS" if settings.EMAIL_USE_TLS else ("TLS" if settings.EMAIL_USE_SSL else "no TLS")
        self.stdout.write(f"accepted by {settings.EMAIL_HOST}:{settings.EMAIL_PORT} ({tls}): "
                          f"from {settings.DEFAULT_FROM_EMAIL} to {recipient}, subject {subject!r}")
