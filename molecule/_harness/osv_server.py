#!/usr/bin/env python3
"""TEST ONLY: a local OSV-compatible query endpoint over a snapshot of the PyPA advisory
database (../shared/advisory-database: one OSV YAML record per advisory under vulns/<pkg>/).

These machines reach neither PyPI's JSON API nor api.osv.dev, so the dependency audit
(`pip-audit -s osv --osv-url URL`) is pointed here in tests. It answers what api.osv.dev
answers for the queries pip-audit makes:

    POST /v1/query {"package": {"name": "django", "ecosystem": "PyPI"}, "version": "4.2.0"}
    -> {"vulns": [<OSV record>, ...]}   ({} when none)

    osv_server.py --db DIR [--host 127.0.0.1] [--port 8486]
"""

import argparse
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datetime

import yaml
from packaging.version import InvalidVersion, Version


def canonical(name):
    """PEP 503 normalised name, as pip-audit sends it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def rfc3339(value):
    """YAML reads unquoted timestamps as datetimes; OSV's JSON has RFC 3339 strings."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%dT00:00:00.000000Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _version(text):
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def in_range(version, events):
    """OSV ECOSYSTEM range semantics: introduced <= v < fixed, or <= last_affected."""
    affected = False
    for event in events:
        if "introduced" in event:
            start = event["introduced"]
            if str(start) == "0" or ((v := _version(start)) is not None and version >= v):
                affected = True
        elif "fixed" in event:
            if (v := _version(event["fixed"])) is not None and version >= v:
                affected = False
        elif "last_affected" in event:
            if (v := _version(event["last_affected"])) is not None and version > v:
                affected = False
    return affected


def affects(record, name, version_text):
    """True if the record lists this PyPI package at this version."""
    version = _version(version_text)
    for affected in record.get("affected") or []:
        package = affected.get("package") or {}
        if package.get("ecosystem") != "PyPI" or canonical(package.get("name", "")) != name:
            continue
        if version_text in [str(v) for v in affected.get("versions") or []]:
            return True
        if version is not None and any(r.get("type") == "ECOSYSTEM" and in_range(version, r.get("events") or [])
                                       for r in affected.get("ranges") or []):
            return True
    return False


class AdvisoryDatabase:
    """The records of one package are read on its first query, then kept."""

    def __init__(self, root):
        self.vulns = Path(root) / "vulns"
        if not self.vulns.is_dir():
            raise FileNotFoundError(f"{self.vulns} is not a directory: not an advisory database")
        self.dirs = {}
        for d in self.vulns.iterdir():
            if d.is_dir():
                self.dirs.setdefault(canonical(d.name), []).append(d)
        self.cache = {}
        self.lock = threading.Lock()

    def records(self, name):
        with self.lock:
            if name not in self.cache:
                self.cache[name] = [yaml.safe_load(f.read_text()) for d in self.dirs.get(name, [])
                                    for f in sorted(d.glob("*.yaml"))]
            return self.cache[name]

    def query(self, name, version):
        name = canonical(name)
        return [json.loads(json.dumps(r, default=rfc3339)) for r in self.records(name)
                if not r.get("withdrawn") and affects(r, name, str(version))]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # quiet: the audit's own output says what matters
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        if self.path.rstrip("/") != "/v1/query":
            return self.reply(404, {"code": 5, "message": "Not Found"})
        try:
            query = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            package = query["package"]
            if package.get("ecosystem", "PyPI") != "PyPI":
                return self.reply(200, {})
            vulns = self.server.db.query(package["name"], query["version"])
        except (KeyError, TypeError, ValueError) as exc:
            return self.reply(400, {"code": 3, "message": f"invalid query: {exc}"})
        return self.reply(200, {"vulns": vulns} if vulns else {})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(db_root, host="127.0.0.1", port=8486):
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.db = AdvisoryDatabase(db_root)
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8486)
    args = parser.parse_args(argv)
    server = make_server(args.db, args.host, args.port)
    print(f"osv_server: http://{args.host}:{server.server_address[1]}/v1/query over {args.db}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
