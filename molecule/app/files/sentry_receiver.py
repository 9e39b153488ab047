#!/usr/bin/env python3
"""TEST ONLY: a stand-in Sentry that accepts envelopes (POST /api/<project>/envelope/) and
appends each item, decoded, as one JSON line to a file:
{"project": ..., "auth": X-Sentry-Auth, "type": item type, "payload": the item's JSON}.

    sentry_receiver.py --port 9000 --out /var/lib/test-sentry/items.jsonl
"""
import argparse
import gzip
import json
import os
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def decode(body, encoding):
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _line(envelope, pos):
    """The line that starts at `pos` (without its newline) and where the next one starts."""
    end = envelope.find(b"\n", pos)
    return (envelope[pos:], len(envelope)) if end < 0 else (envelope[pos:end], end + 1)


def items(envelope):
    """(type, payload) of each item of an envelope: a header line, then per item a header line
    and its payload, `length` bytes long where the header says so (it may hold newlines),
    else up to the end of its line. Offsets are kept into the envelope itself."""
    _, pos = _line(envelope, 0)
    while pos < len(envelope):
        line, pos = _line(envelope, pos)
        if not line.strip():
            continue
        header = json.loads(line)
        if "length" in header:
            payload, pos = envelope[pos:pos + header["length"]], pos + header["length"]
            if envelope[pos:pos + 1] == b"\n":
                pos += 1
        else:
            payload, pos = _line(envelope, pos)
        try:
            yield header.get("type"), json.loads(payload)
        except ValueError:
            yield header.get("type"), None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        match = re.match(r"^/api/([0-9]+)/envelope/?", self.path)
        if not match:
            self.send_error(404)
            return
        body = decode(self.rfile.read(int(self.headers.get("Content-Length", 0))),
                      self.headers.get("Content-Encoding", ""))
        try:
            record = "".join(json.dumps({"project": match.group(1), "auth": self.headers.get("X-Sentry-Auth", ""),
                                         "type": kind, "payload": payload}) + "\n" for kind, payload in items(body))
        except ValueError as exc:
            # Said, not swallowed: the SDK counts it as a network error, the journal says why.
            self.send_error(400, f"unreadable envelope: {exc}")
            return
        # One request's lines in one append, one request at a time: the server is threaded, and
        # two handlers' buffered writes of large events could otherwise interleave inside a line.
        with self.server.lock:
            fd = os.open(self.server.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = record.encode("utf-8")
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        reply = b'{"id": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.out = args.out
    server.lock = threading.Lock()
    server.serve_forever()


if __name__ == "__main__":
    main()
