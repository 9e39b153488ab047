#!/usr/bin/env python3
"""A small closed-loop HTTP load generator, standard library only, so it runs on the
controller and inside a Debian host alike (python3 is all it needs).

Each of --connections threads holds ONE keepalive connection (HTTP/1.1) and sends the
next request as soon as the previous answer is read, for --duration seconds (or until
SIGTERM/SIGINT). Prints one JSON object: requests, ok, failed, rps, p50_ms, p99_ms,
statuses, longest_gap_s: the longest time between two successful answers on any
connection (the pause a user feels), and keepalive_retries: requests sent again once
because the server had closed their idle keepalive connection (as browsers do).

    loadgen.py --url https://127.0.0.1:443/health/ --host multinotes.localhost --insecure
    loadgen.py --url http://localhost/health/ --unix-socket /run/multinotes/gunicorn.sock
"""

import argparse
import http.client
import json
import signal
import socket
import ssl
import statistics
import threading
import time
from urllib.parse import urlsplit


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class SNIConnection(http.client.HTTPSConnection):
    """Connect to an address but present a name (SNI, certificate check): curl --resolve."""

    def __init__(self, address, port, sni, context, timeout):
        super().__init__(address, port, context=context, timeout=timeout)
        self.sni, self.ssl_context = sni, context

    def connect(self):
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.ssl_context.wrap_socket(raw, server_hostname=self.sni)


def connection_factory(args):
    parts = urlsplit(args.url)
    timeout = args.timeout
    if args.unix_socket:
        return lambda: UnixConnection(args.unix_socket, timeout)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=args.cafile or None)
        if args.insecure:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return lambda: SNIConnection(parts.hostname, port, args.host or parts.hostname, context, timeout)
    return lambda: http.client.HTTPConnection(parts.hostname, port, timeout=timeout)


def longest_gap(times, start, end):
    """Longest stretch without a successful answer, from `start` to `end` (monotonic seconds)."""
    points = [start, *sorted(times), end]
    return max(b - a for a, b in zip(points, points[1:]))


def worker(args, make, deadline, results, lock, stop):
    parts = urlsplit(args.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": args.host or parts.netloc, "Connection": "keep-alive", "User-Agent": "multinotes-bench"}
    latencies, statuses, failed, ok_at = [], {}, 0, []
    conn = None
    retries = 0
    while time.monotonic() < deadline and not stop.is_set():
        started = time.monotonic()
        try:
            try:
                reused = conn is not None
                conn = conn or make()
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed this idle keepalive connection as the request went out
                # (an nginx reload's old worker does): no answer was started, and a GET is
                # idempotent, so the request is sent again on a new connection, once, as
                # browsers and urllib3 do (RFC 9112, 9.3.1). Counted apart.
                if not reused:
                    raise
                conn.close()
                retries += 1
                conn = make()
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
            response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status not in args.expect:
                failed += 1
            else:
                latencies.append((time.monotonic() - started) * 1000)
                ok_at.append(time.monotonic())
            if args.pause:
                time.sleep(args.pause)
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            failed += 1
            key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            if conn:
                conn.close()
            conn = None
    with lock:
        results["latencies"].extend(latencies)
        results["ok_at"].extend(ok_at)
        results["failed"] += failed
        results["keepalive_retries"] += retries
        for key, count in statuses.items():
            results["statuses"][str(key)] = results["statuses"].get(str(key), 0) + count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--host", help="Host header and TLS name, when --url names an address")
    parser.add_argument("--unix-socket")
    parser.add_argument("--insecure", action="store_true", help="skip certificate verification")
    parser.add_argument("--cafile")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--pause", type=float, default=0, help="seconds each connection waits after an answer "
                        "(a continuous client, not a saturating one)")
    parser.add_argument("--expect", type=lambda s: {int(c) for c in s.split(",")}, default={200})
    args = parser.parse_args()
    make = connection_factory(args)
    results = {"latencies": [], "failed": 0, "statuses": {}, "ok_at": [], "keepalive_retries": 0}
    lock, stop = threading.Lock(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    start = time.monotonic()
    deadline = start + args.duration
    threads = [threading.Thread(target=worker, args=(args, make, deadline, results, lock, stop))
               for _ in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a timed join: the main thread stays free to take a signal
            thread.join(0.2)
    end = time.monotonic()
    elapsed = end - start
    latencies = sorted(results["latencies"])
    ok = len(latencies)
    print(json.dumps({
        "url": args.url, "unix_socket": args.unix_socket, "connections": args.connections,
        "seconds": round(elapsed, 2), "requests": ok + results["failed"], "ok": ok, "failed": results["failed"],
        "rps": round(ok / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2) if latencies else None,
        "statuses": results["statuses"],
        "longest_gap_s": round(longest_gap(results["ok_at"], start, end), 3),
        "keepalive_retries": results["keepalive_retries"],
    }))


if __name__ == "__main__":
    main()
