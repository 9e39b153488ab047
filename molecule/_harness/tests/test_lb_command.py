"""The balancer's command (roles/haproxy/files/multinotes-lb.py) against a stand-in for
HAProxy's admin socket: a real unix socket that answers `show stat` from a table and applies
`set server ... state ...` to it, as HAProxy does (sessions drain on a schedule, a server
comes UP when its checks pass). What the command asks of the socket is what is asserted."""

import importlib.util
import json
import os
import socket
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("multinotes_lb", ROOT / "roles/haproxy/files/multinotes-lb.py")
lb = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lb)

HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
          "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
          "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
          "hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,"
          "comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,"
          "agent_code,agent_duration,check_desc")
FIELDS = HEADER[2:].split(",")


class FakeHaproxy:
    """The admin socket's two commands the program uses, on a table of servers."""

    def __init__(self, path, servers, backend="multinotes_web"):
        self.path, self.backend = str(path), backend
        self.servers = {s["name"]: dict(s) for s in servers}
        self.commands = []
        self.on_poll = None  # called at each `show stat`: moves time on (sessions end, checks pass)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def row(self, pxname, svname, status="", scur=0, qcur=0, check="", desc="", bck=False):
        values = dict.fromkeys(FIELDS, "")
        values.update(pxname=pxname, svname=svname, status=status, scur=str(scur), qcur=str(qcur),
                      check_status=check, check_desc=desc, bck="1" if bck else "0")
        return ",".join(values[f] for f in FIELDS)

    def stat(self):
        rows = [HEADER, self.row("stats", "FRONTEND", "OPEN"), self.row(self.backend, "BACKEND", "UP")]
        rows[2:2] = [self.row(self.backend, s["name"], s["state"], s.get("sessions", 0), s.get("queued", 0),
                              s.get("check", "L7OK"), s.get("desc", ""), s.get("backup", False))
                     for s in self.servers.values()]
        return "\n".join(rows) + "\n\n"

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                command = conn.recv(4096).decode().strip()
                self.commands.append(command)
                if command == "show stat":
                    if self.on_poll:
                        self.on_poll(self)
                    conn.sendall(self.stat().encode())
                elif command.startswith("set server "):
                    target, _, state = command[len("set server "):].partition(" state ")
                    backend, _, name = target.partition("/")
                    if backend != self.backend or name not in self.servers:
                        conn.sendall(b"No such server.\n")
                        continue
                    self.servers[name]["state"] = {"drain": "DRAIN", "maint": "MAINT", "ready": "DOWN 1/2"}[state]
                else:
                    conn.sendall(b"Unknown command.\n")

    def close(self):
        self.sock.close()


@pytest.fixture
def haproxy(tmp_path):
    made = []

    def make(*servers):
        fake = FakeHaproxy(tmp_path / "admin.sock", servers)
        made.append(fake)
        return fake
    yield make
    for fake in made:
        fake.close()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def balancer(fake, clock=None):
    clock = clock or Clock()
    return lb.Balancer(fake.path, fake.backend, clock=clock, sleep=clock.sleep), clock


def test_status_lists_the_backends_servers_only(haproxy):
    fake = haproxy({"name": "web1", "state": "UP", "sessions": 3}, {"name": "web2", "state": "DOWN", "check": "L4CON"})
    status = balancer(fake)[0].status()
    assert [(s["name"], s["state"], s["sessions"], s["check"]) for s in status["servers"]] == [
        ("web1", "UP", 3, "L7OK"), ("web2", "DOWN", 0, "L4CON")]


def test_drain_waits_for_the_sessions_then_puts_the_server_in_maintenance(haproxy):
    fake = haproxy({"name": "web1", "state": "UP", "sessions": 2}, {"name": "web2", "state": "UP"})

    def finish_one(f):
        if f.servers["web1"]["state"] == "DRAIN":
            f.servers["web1"]["sessions"] = max(0, f.servers["web1"]["sessions"] - 1)
    fake.on_poll = finish_one
    result = balancer(fake)[0].drain("web1", timeout=30)
    assert result["changed"] and result["state"] == "MAINT" and result["sessions_cut"] == 0
    assert result["others_up"] == ["web2"]
    sets = [c for c in fake.commands if c.startswith("set ")]
    assert sets == ["set server multinotes_web/web1 state drain", "set server multinotes_web/web1 state maint"]


def test_the_fail_open_twins_are_not_reported_and_follow_their_host(haproxy):
    fake = haproxy({"name": "web1", "state": "UP"}, {"name": "web2", "state": "UP"},
                   {"name": "web1-failopen", "state": "no check", "backup": True},
                   {"name": "web2-failopen", "state": "no check", "backup": True})
    lb_, _ = balancer(fake)
    assert [s["name"] for s in lb_.status()["servers"]] == ["web1", "web2"]
    assert lb_.check() == {"backend": "multinotes_web", "up": ["web1", "web2"]}
    lb_.drain("web1", timeout=5)
    assert fake.servers["web1"]["state"] == fake.servers["web1-failopen"]["state"] == "MAINT"
    assert fake.servers["web2-failopen"]["state"] == "no check"
    fake.on_poll = lambda f: f.servers["web1"].update(state="UP") if f.servers["web1"]["state"] == "DOWN 1/2" else None
    lb_.enable("web1", timeout=5)
    assert "set server multinotes_web/web1-failopen state ready" in fake.commands


def test_drain_is_bounded_and_says_how_many_sessions_it_cut(haproxy):
    fake = haproxy({"name": "web1", "state": "UP", "sessions": 5}, {"name": "web2", "state": "UP"})
    result = balancer(fake)[0].drain("web1", timeout=2)
    assert result["state"] == "MAINT" and result["sessions_cut"] == 5 and result["waited"] >= 2


def test_drain_refuses_the_last_server_that_is_up_before_any_change(haproxy):
    fake = haproxy({"name": "web1", "state": "UP"}, {"name": "web2", "state": "MAINT"})
    with pytest.raises(lb.LbError, match="refusing to drain web1: no other server .* is UP .*web2 MAINT"):
        balancer(fake)[0].drain("web1", timeout=5)
    assert not [c for c in fake.commands if c.startswith("set ")]


def test_drain_skip_if_last_leaves_a_lone_server_serving(haproxy):
    fake = haproxy({"name": "web1", "state": "UP"})
    result = balancer(fake)[0].drain("web1", timeout=5, skip_if_last=True)
    assert not result["changed"] and "left serving" in result["skipped"]
    assert fake.servers["web1"]["state"] == "UP"


def test_drain_of_a_server_in_maintenance_changes_nothing(haproxy):
    fake = haproxy({"name": "web1", "state": "MAINT"}, {"name": "web2", "state": "UP"})
    assert balancer(fake)[0].drain("web1", timeout=5) == {"server": "web1", "changed": False, "state": "MAINT"}


def test_an_unknown_server_is_named_with_the_known_ones(haproxy):
    fake = haproxy({"name": "web1", "state": "UP"}, {"name": "web2", "state": "UP"})
    with pytest.raises(lb.LbError, match="'web9' is not a server of backend multinotes_web .*web1, web2"):
        balancer(fake)[0].drain("web9", timeout=5)


def test_enable_waits_until_the_health_checks_pass(haproxy):
    fake = haproxy({"name": "web1", "state": "MAINT"}, {"name": "web2", "state": "UP"})
    polls = []

    def checks(f):
        polls.append(1)
        if f.servers["web1"]["state"] == "DOWN 1/2" and len(polls) > 3:
            f.servers["web1"]["state"] = "UP"
    fake.on_poll = checks
    result = balancer(fake)[0].enable("web1", timeout=30)
    assert result["changed"] and result["state"] == "UP"
    assert "set server multinotes_web/web1 state ready" in fake.commands


def test_enable_fails_with_what_haproxy_saw_when_the_server_stays_down(haproxy):
    fake = haproxy({"name": "web1", "state": "MAINT", "check": "L7STS", "desc": "HTTP status check returned code <503>"},
                   {"name": "web2", "state": "UP"})
    with pytest.raises(lb.LbError, match=r"web1 did not come UP within 3 s .*L7STS HTTP status check returned code <503>"):
        balancer(fake)[0].enable("web1", timeout=3)


def test_check_fails_when_a_server_is_not_up(haproxy, capsys):
    fake = haproxy({"name": "web1", "state": "UP"}, {"name": "web2", "state": "DOWN", "check": "L4CON"})
    with pytest.raises(lb.LbError, match="not UP: web2"):
        balancer(fake)[0].check()
    assert "multinotes_web/web2: DOWN (L4CON" in capsys.readouterr().err


def test_main_prints_json_and_exit_codes(haproxy, capsys, monkeypatch):
    fake = haproxy({"name": "web1", "state": "UP"}, {"name": "web2", "state": "UP"})
    monkeypatch.setattr(lb, "SETTINGS_FILE", os.devnull + ".absent")
    assert lb.main(["--socket", fake.path, "check"]) == 0
    assert json.loads(capsys.readouterr().out) == {"backend": "multinotes_web", "up": ["web1", "web2"]}
    assert lb.main(["--socket", str(fake.path) + ".missing", "status"]) == 1
    assert "cannot reach HAProxy's admin socket" in capsys.readouterr().err


def test_a_timeout_below_or_at_zero_is_refused():
    with pytest.raises(SystemExit):
        lb.main(["drain", "web1", "--timeout", "0"])
