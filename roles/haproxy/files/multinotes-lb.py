#!/usr/bin/python3
"""The balancer's host-side command: the web hosts' state in HAProxy, drain and enable.

    multinotes-lb status                      JSON: every server of the backend, its state and sessions
    multinotes-lb drain SERVER [--timeout S] [--skip-if-last]
    multinotes-lb enable SERVER [--timeout S]
    multinotes-lb check                       every server UP (the launch check); exit 1 otherwise

It talks to HAProxy's admin socket (one command per connection, as `socat` would) and
prints one JSON object; deploy.yml and reboot.yml call it once per host and step.

`drain` takes a server out of rotation without cutting a request: HAProxy sends it no new
request (state drain), the requests in flight finish (the command waits until the server
holds no session and none is queued, at most --timeout seconds), then the server is put in
maintenance (no health checks, no alert flapping while it restarts). It refuses, before any
change, to take out the last server that is UP: that would take the site down. With
--skip-if-last it leaves that server serving instead and says so (a release switch is
zero-pause by itself, so a deploy to a lone web host need not drain it). Draining a server
already in maintenance changes nothing.

`enable` puts the server back (state ready) and waits until its health checks pass (UP);
a server that does not come up within --timeout fails the command with what HAProxy saw,
and stays out of rotation (HAProxy sends nothing to a server that is not UP).

Each web host also has an unchecked twin, <host><failopen suffix>, a backup server HAProxy
uses only while no checked server is UP (fail open: a shared store down fails every health
check at once). The command reports the checked servers; drain and enable take the twin
along, so a drained host gets nothing even when the balancer fails open.
"""

import argparse
import csv
import io
import json
import socket
import sys
import time

# The haproxy role writes the socket and the backend's name here (its one home is the inventory).
SETTINGS_FILE = "/etc/haproxy/multinotes-lb.json"
DEFAULTS = {"socket": "/run/haproxy/admin.sock", "backend": "multinotes_web", "failopen_suffix": "-failopen"}
POLL = 0.25


class LbError(Exception):
    """A refusal or a failure, said to the operator as is."""


def ask(path, command, timeout=5.0):
    """One command on HAProxy's admin socket; its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise LbError(f"cannot reach HAProxy's admin socket {path}: {exc}") from exc
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode()


def parse_stat(text, backend):
    """The servers of `backend` from `show stat` (CSV, its header line starts with '# ')."""
    lines = text.lstrip("# ").splitlines()
    servers = []
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        servers.append({
            "name": row["svname"],
            # UP, DOWN, MAINT, DRAIN, NOLB, "UP 1/2" (going down), "DOWN 1/2" (coming up), ...
            "state": row.get("status", ""),
            "sessions": int(row.get("scur") or 0),
            "queued": int(row.get("qcur") or 0),
            "check": row.get("check_status", ""),
            "check_desc": row.get("check_desc", ""),
            "backup": row.get("bck") == "1",
        })
    return servers


def is_up(server):
    return server["state"] == "UP"


class Balancer:
    def __init__(self, path, backend, clock=time.monotonic, sleep=time.sleep, failopen_suffix="-failopen"):
        self.path, self.backend, self.clock, self.sleep = path, backend, clock, sleep
        self.failopen_suffix = failopen_suffix
        self.twins = set()

    def servers(self):
        """The checked servers (the web hosts); their fail-open twins are noted apart."""
        answer = ask(self.path, "show stat")
        every = parse_stat(answer, self.backend)
        servers = [s for s in every if not s["backup"]]
        self.twins = {s["name"] for s in every if s["backup"]}
        if not servers:
            raise LbError(f"HAProxy has no server in backend {self.backend!r}: {answer.strip()[:200]!r}")
        for server in servers:
            del server["backup"]
        return servers

    def set_state(self, name, state):
        """The server's state, and its fail-open twin's with it."""
        self.command(f"set server {self.backend}/{name} state {state}")
        if name + self.failopen_suffix in self.twins:
            self.command(f"set server {self.backend}/{name}{self.failopen_suffix} state {state}")

    def server(self, name, servers=None):
        servers = self.servers() if servers is None else servers
        for server in servers:
            if server["name"] == name:
                return server
        known = ", ".join(s["name"] for s in servers)
        raise LbError(f"{name!r} is not a server of backend {self.backend} (its servers: {known})")

    def command(self, text):
        answer = ask(self.path, text).strip()
        if answer:  # HAProxy answers a successful `set server` with nothing
            raise LbError(f"HAProxy refused {text!r}: {answer}")

    def status(self):
        return {"backend": self.backend, "servers": self.servers()}

    def drain(self, name, timeout, skip_if_last=False):
        servers = self.servers()
        me = self.server(name, servers)
        if me["state"] == "MAINT":
            return {"server": name, "changed": False, "state": "MAINT"}
        others_up = [s["name"] for s in servers if s["name"] != name and is_up(s)]
        if not others_up:
            if skip_if_last:
                return {"server": name, "changed": False, "state": me["state"], "skipped":
                        "no other server is UP: left serving"}
            states = ", ".join(f"{s['name']} {s['state']}" for s in servers)
            raise LbError(f"refusing to drain {name}: no other server of {self.backend} is UP ({states}); "
                          "it would take the site down")
        started = self.clock()
        self.set_state(name, "drain")
        while True:
            me = self.server(name)
            if me["sessions"] == 0 and me["queued"] == 0:
                break
            if self.clock() - started >= timeout:
                break
            self.sleep(POLL)
        self.set_state(name, "maint")
        return {"server": name, "changed": True, "state": "MAINT", "others_up": others_up,
                "waited": round(self.clock() - started, 2), "sessions_cut": me["sessions"] + me["queued"]}

    def enable(self, name, timeout):
        me = self.server(name)
        if is_up(me):
            return {"server": name, "changed": False, "state": "UP"}
        started = self.clock()
        self.set_state(name, "ready")
        while not is_up(me):
            if self.clock() - started >= timeout:
                raise LbError(f"{name} did not come UP within {timeout:g} s after it was enabled: state {me['state']}, "
                              f"last check {me['check']} {me['check_desc']}".rstrip()
                              + "; HAProxy sends it nothing until its health checks pass")
            self.sleep(POLL)
            me = self.server(name)
        return {"server": name, "changed": True, "state": "UP", "waited": round(self.clock() - started, 2)}

    def check(self):
        servers = self.servers()
        for server in servers:
            print(f"{self.backend}/{server['name']}: {server['state']} ({server['check']} {server['check_desc']})".rstrip(),
                  file=sys.stderr)
        down = [s["name"] for s in servers if not is_up(s)]
        if down:
            raise LbError(f"not UP: {', '.join(down)}")
        return {"backend": self.backend, "up": [s["name"] for s in servers]}


def positive(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: a number of seconds above 0")
    return value


def main(argv=None):
    settings = dict(DEFAULTS)
    try:
        with open(SETTINGS_FILE, encoding="utf-8") as handle:
            settings.update(json.load(handle))
    except FileNotFoundError:
        pass
    parser = argparse.ArgumentParser(prog="multinotes-lb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=settings["socket"])
    parser.add_argument("--backend", default=settings["backend"])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("status")
    sub.add_parser("check")
    drain = sub.add_parser("drain")
    drain.add_argument("server")
    drain.add_argument("--timeout", type=positive, default=30.0)
    drain.add_argument("--skip-if-last", action="store_true")
    enable = sub.add_parser("enable")
    enable.add_argument("server")
    enable.add_argument("--timeout", type=positive, default=60.0)
    args = parser.parse_args(argv)
    lb = Balancer(args.socket, args.backend, failopen_suffix=settings["failopen_suffix"])
    try:
        if args.action == "status":
            result = lb.status()
        elif args.action == "check":
            result = lb.check()
        elif args.action == "drain":
            result = lb.drain(args.server, args.timeout, args.skip_if_last)
        else:
            result = lb.enable(args.server, args.timeout)
    except LbError as exc:
        print(f"multinotes-lb {args.action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
