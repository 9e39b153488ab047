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


def items(envelope):
    """(type, payload) of each item: header line, then item header + payload pairs."""
    lines = envelope.split(b"\n")
    i = 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        header = json.loads(lines[i])
        if "length" in header:
            start = sum(len(line) + 1 for line in lines[:i + 1])
            payload = envelope[start:start + header["length"]]
            rest = envelope[start + header["length"]:].lstrip(b"\n")
            lines, i = [b"{}"] + rest.split(b"\n"), 1
        else:
            payload = lines[i + 1] if i + 1 < len(lines) else b""
            i += 2
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
        record = "".join(json.dumps({"project": match.group(1), "auth": self.headers.get("X-Sentry-Auth", ""),
                                     "type": kind, "payload": payload}) + "\n" for kind, payload in items(body))
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
