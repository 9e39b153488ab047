"""Read the media bucket's settings back as the app sees them and make one round trip
through django-storages: the launch check's media item.

Passes only if the bucket is private (no public grant, public access blocked where the
server offers it, plain HTTP refused by its policy), versioned, has the lifecycle rules
(noncurrent versions expire, incomplete multipart uploads are aborted) and CORS for the
site's own origins; and if a file saved through the default storage gets a presigned URL
that expires after AWS_QUERYSTRING_EXPIRE seconds, answers with the file's bytes, while the
same URL without its signature is refused. The test object is deleted (versioning keeps a
noncurrent version until the lifecycle rule expires it). Prints one line per item.

The app's key needs read access to the bucket's settings for this (s3:GetBucketVersioning,
s3:GetLifecycleConfiguration, s3:GetBucketCORS, s3:GetBucketAcl, s3:GetBucketPolicy,
s3:GetBucketPublicAccessBlock): roles/media/README.md lists the app's policy."""
import ssl
import urllib.error
import urllib.request
import uuid

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError

from core.bucket_checks import bucket_items, error_code, judge_presigned_url, unsigned


def round_trip(storage):
    """The checklist's Django-shell check: save, a presigned URL, download, the same URL
    unsigned refused, delete."""
    content = f"launch check {uuid.uuid4().hex}\n".encode()
    try:
        path = storage.save(f"launch-check/{uuid.uuid4().hex}.txt", ContentFile(content))
    except Exception as exc:  # noqa: BLE001
        return [(False, f"upload through the storage: {type(exc).__name__}: {error_code(exc)}")]
    items = [(True, f"upload through the storage: saved {path}")]
    try:
        url = storage.url(path)
        items.append(judge_presigned_url(url, storage.querystring_expire))
        verify = storage.verify
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:  # noqa: S310 - the bucket's URL
            body = answer.read()
        items.append((body == content, f"download by the presigned URL: {len(body)} bytes, "
                                       f"{'the bytes saved' if body == content else 'NOT the bytes saved'}"))
        try:
            with urllib.request.urlopen(unsigned(url), timeout=10, context=context) as answer:  # noqa: S310
                items.append((False, f"the same URL unsigned: answered {answer.status} (must be refused)"))
        except urllib.error.HTTPError as exc:
            items.append((exc.code in (401, 403), f"the same URL unsigned: refused ({exc.code})"))
    except Exception as exc:  # noqa: BLE001
        items.append((False, f"download by the presigned URL: {type(exc).__name__}: {exc}"))
    finally:
        storage.delete(path)
    return items


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def handle(self, *args, **options):
        storage = storages["default"]
        if not hasattr(storage, "bucket_name"):
            self.stdout.write("media off (AWS_BUCKET is not set: app_media_enabled is false): nothing checked")
            return
        items = bucket_items(storage.connection.meta.client, storage.bucket_name, settings.CORS_ALLOWED_ORIGINS,
                             settings.MEDIA_PUBLIC_ACCESS_BLOCK)
        items += round_trip(storage)
        failed = [line for ok, line in items if not ok]
        # The launch check keeps the first few hundred characters: the verdict and what
        # failed come first.
        if not failed:
            self.stdout.write(f"media bucket {storage.bucket_name}: every item passes ({len(items)})")
        for ok, line in sorted(items, key=lambda item: item[0]):
            self.stdout.write(f"{'ok' if ok else 'FAILED'}: {line}")
        if failed:
            raise CommandError(f"media bucket {storage.bucket_name}: {len(failed)} item(s) failed: " + "; ".join(failed))
