"""Media uploads: which types the app takes (declared type and first bytes must agree), the
request body as a stream S3 reads from (never a file on this host), and the storage that
refuses to save when no bucket is configured.

No Django models here: settings.py imports KNOWN_TYPES to check MEDIA_ALLOWED_TYPES.
"""

import codecs

from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.files.storage import Storage

# How many leading bytes the type checks need (WebP: "RIFF" size "WEBP" = 12).
HEAD_BYTES = 16
# Plain text is checked on its first bytes only: UTF-8 that decodes, no NUL, no other C0
# control than tab, newline, carriage return and form feed.
TEXT_HEAD_BYTES = 4096
_TEXT_CONTROLS = set(range(0, 32)) - {9, 10, 12, 13}


def _is_text(head):
    try:
        # A multi-byte character cut at the end of the head is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return not any(ord(c) in _TEXT_CONTROLS for c in text)


# content type -> (extension of the key the server chooses, check of the first bytes)
KNOWN_TYPES = {
    "image/png": ("png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    "image/jpeg": ("jpg", lambda head: head.startswith(b"\xff\xd8\xff")),
    "image/gif": ("gif", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
    "image/webp": ("webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
    "application/pdf": ("pdf", lambda head: head.startswith(b"%PDF-")),
    "text/plain": ("txt", _is_text),
}


def head_size(content_type):
    return TEXT_HEAD_BYTES if content_type == "text/plain" else HEAD_BYTES


def matches(content_type, head):
    """The first bytes are what the declared type says (an empty body never is)."""
    return bool(head) and content_type in KNOWN_TYPES and KNOWN_TYPES[content_type][1](head)


def extension(content_type):
    return KNOWN_TYPES[content_type][0]


def check_allowed_types(types):
    unknown = sorted(set(types) - set(KNOWN_TYPES))
    if not types or unknown:
        raise ImproperlyConfigured(
            f"MEDIA_ALLOWED_TYPES must list some of {', '.join(KNOWN_TYPES)}; unknown: {', '.join(unknown) or '(empty)'}")
    return types


def read_head(stream, size):
    """Up to `size` bytes: a read may return fewer than asked before the end."""
    head = b""
    while len(head) < size:
        chunk = stream.read(size - len(head))
        if not chunk:
            break
        head += chunk
    return head


class ShortBody(IOError):
    """The client sent fewer bytes than its Content-Length said (it hung up)."""


class UploadStream(File):
    """The request body as a file S3 reads from: the head already read, then the rest of the
    stream, counted. Ending before `length` bytes raises ShortBody, which aborts the upload
    (boto3 aborts a multipart upload whose part read fails), so a cut-off upload never lands
    as a truncated object. Not seekable: boto3 then reads it part by part, in memory."""

    def __init__(self, stream, head, length, content_type, name):
        super().__init__(stream, name)
        self._head = head
        self.length = length
        self.content_type = content_type
        self.bytes_read = 0

    def seekable(self):
        return False

    @property
    def closed(self):
        return False

    @property
    def size(self):
        return self.length

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.length - self.bytes_read
        size = min(size, self.length - self.bytes_read)
        data = b""
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        data += read_head(self.file, size - len(data))
        self.bytes_read += len(data)
        if size > 0 and not data and self.bytes_read < self.length:
            raise ShortBody(f"the body ended after {self.bytes_read} of {self.length} bytes")
        return data

    def chunks(self, chunk_size=None):
        while data := self.read(chunk_size or self.DEFAULT_CHUNK_SIZE):
            yield data

    def close(self):
        # The request owns its stream.
        pass


class MediaNotConfiguredStorage(Storage):
    """The default storage when AWS_BUCKET is not set: media never falls back to this host's
    disk (where only one web host would see it, and no backup would)."""

    message = "media storage is not configured: set AWS_BUCKET (and the AWS_* keys); media is never kept on local disk"

    def _refuse(self, *args, **kwargs):
        raise ImproperlyConfigured(self.message)

    save = _save = _open = delete = exists = url = size = listdir = path = _refuse
