#!/usr/bin/env python3
"""TEST ONLY: a stand-in for gunicorn on its unix socket, until the app roles exist.

Answers every request with 200 and a JSON echo of what it received (path, headers, the
number of body bytes read, and an id of the upstream connection, which shows nginx's
keepalive reuse). It also sends an X-Frame-Options of its own, which the edge must drop.
"""

import itertools
import json
import os
import socketserver
import sys
from http.server import BaseHTTPRequestHandler

SOCKET = sys.argv[1]
CONNECTIONS = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection_id = next(CONNECTIONS)

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass

    def reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            chunk = self.rfile.read(min(1 << 20, length - received))
            if not chunk:
                break
            received += len(chunk)
        body = json.dumps({"path": self.path, "method": self.command, "headers": dict(self.headers.items()),
                           "received": received, "connection": self.connection_id}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Frame-Options", "SAMEORIGIN")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = reply


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if os.path.exists(SOCKET):
    os.unlink(SOCKET)
server = Server(SOCKET, Handler)
os.chmod(SOCKET, 0o666)
server.serve_forever()
