"""The whole system, by behaviour, in the order an operator lives it: converged over SSH as
`deploy`; backed up and drilled; launch check GO; deploy v2 and roll back to v1 under a
continuous client load (zero failed requests, no pause: the longest gap between two
answers is measured and bounded); a broken release deployed under load never gets a
request; every container halted and restarted (a clean reboot) and GO again; Redis stopped and the launch
check says NO-GO, naming it.

The playbooks run exactly as in production (tests drive them with ansible-playbook against
this scenario's inventory); the tests inspect the hosts as root through docker exec."""

import http.client
import json
import os
import shutil
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import testinfra
import testlib
import yaml

SCENARIO = Path(__file__).resolve().parents[1]
PLAYBOOKS = testlib.PROJECT / "playbooks"
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
REPORTS = EPHEMERAL / "reports"
NAME = "multinotes.test"
# The front door: the balancer, which the site's names resolve to.
FRONT = "10.231.7.10"
WEBS = ["stack-web", "stack-web2"]
# redis and db share one host here (molecule.yml).
REDIS_HOST = "stack-db"
STACK = ["stack-lb", "stack-web", "stack-web2", "stack-worker", "stack-db"]
V2_NOTE = "Added by release 2.0.0"


def root(name):
    return testinfra.get_host(f"docker://{name}")


def play(name, limit="all", **extra):
    rc, out, recap = testlib.run_playbook(PLAYBOOKS / name, limit=limit, extra_vars=extra)
    return rc, out, recap


def play_under_load(name, settle=1, lead=None, **extra):
    """Run a playbook while the client sends requests through the front door, with `settle`
    seconds of client traffic before and after (`lead` before, when given): (rc, output,
    the client, wall time)."""
    with Load() as load:
        time.sleep(settle if lead is None else lead)
        started = time.monotonic()
        rc, out, _ = play(name, **extra)
        elapsed = time.monotonic() - started
        time.sleep(settle)
    return rc, out, load, elapsed


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the front door (the balancer) with the site's name as SNI and Host, as a browser."""

    def connect(self):
        sock = socket.create_connection((FRONT, 443), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=NAME)


def front(timeout=10):
    """A new HTTPS connection to the front door, as a browser makes it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # Pebble's root is not in this machine's trust store
    return _Connection(NAME, 443, timeout=timeout, context=ctx)


def get(path, timeout=10):
    conn = front(timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        # Header names are case-insensitive (HAProxy sends them lower-case, as HTTP/2 does):
        # the message object looks them up so.
        return resp.status, resp.headers, resp.read().decode()
    finally:
        conn.close()


class Load:
    """A client that keeps requesting /health/ (which names the version) through the front
    door (nginx, TLS) until stopped; every answer counted. One address, so it stays under
    nginx's per-address API limit by asking for /health/, which that limit does not cover.

    It records when each successful answer arrived: the longest gap between two of them is
    the pause a user would notice. A release switch starts the new release in the idle
    gunicorn slot and gates it before nginx sends it a request, so no request waits for a
    start. The client still waits 30 s for an answer (a browser waits minutes; nginx's proxy
    timeout is 300 s), so a pause shows as a gap, not as a failure; the slowest answer is
    printed too."""

    TIMEOUT = 30

    def __init__(self, workers=2):
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "maintenance": 0, "failed": 0}
        self.slowest = 0.0
        self.ok_at, self.failed_at = [], []
        self.versions, self.errors = set(), []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(workers)]

    def run(self):
        while not self.stop_flag.is_set():
            started = time.monotonic()
            try:
                status, headers, body = get("/health/", timeout=self.TIMEOUT)
                if status == 200:
                    kind = "ok"
                    version = json.loads(body)["version"]
                elif status == 503 and "Retry-After" in headers:
                    kind, version = "maintenance", None
                else:
                    kind, version = "failed", None
                    self.errors.append(f"HTTP {status}")
            except Exception as exc:  # noqa: BLE001 - every failure counts
                kind, version = "failed", None
                self.errors.append(repr(exc))
            with self.lock:
                self.counts[kind] += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                if kind == "ok":
                    self.ok_at.append((time.monotonic(), version))
                elif kind == "failed":
                    self.failed_at.append(time.monotonic())
                if version:
                    self.versions.add(version)
            time.sleep(0.02)

    def _gaps(self):
        times = sorted(t for t, _ in self.ok_at)
        return list(zip(times, times[1:]))

    def _first(self, version):
        return min((t for t, v in self.ok_at if v == version), default=None)

    def _gaps_near(self, around, window):
        """The gaps that overlap `window` s either side of the first answer from `around`,
        and that answer's time (None, [] when that version never answered)."""
        first = self._first(around)
        if first is None:
            return None, []
        return first, [(a, b) for a, b in self._gaps() if b >= first - window and a <= first + window]

    def longest_gap(self, around=None, window=5.0):
        """Seconds of the longest stretch without a successful answer; with `around` (a
        version), of the stretches that overlap `window` s either side of the first answer
        from that version (the switch: the old design's restart pause ended right there)."""
        gaps = self._gaps() if around is None else self._gaps_near(around, window)[1]
        return max((b - a for a, b in gaps), default=float("inf"))

    def longest_gap_offset(self, around, window=5.0):
        """Where the longest gap near the switch starts, in s from the first answer of `around`
        (negative: before it), so a failure says whether it was the switch or what followed."""
        first, gaps = self._gaps_near(around, window)
        if not gaps:
            return None
        a, _ = max(gaps, key=lambda g: g[1] - g[0])
        return a - first

    def longest_gap_before(self, around, window=5.0, lead=10.0):
        """The longest stretch in the `lead` s before that window: the same playbook, the same
        machine load, the release being started and gated in the idle slot, no switch yet."""
        first = self._first(around)
        if first is None:
            return 0.0
        start, end = first - window - lead, first - window
        return max((b - a for a, b in self._gaps() if a >= start and b <= end), default=0.0)

    def report(self, what, seconds, switched_to=None):
        line = (f"{what}: wall time {seconds:.1f} s; requests {self.counts}, failed {self.counts['failed']}, "
                f"longest gap between two successful answers {self.longest_gap():.3f} s, slowest answer {self.slowest:.2f} s")
        if switched_to:
            line += f", longest gap within 5 s of the switch to {switched_to} {self.longest_gap(around=switched_to):.3f} s"
            offset = self.longest_gap_offset(switched_to)
            if offset is not None:
                line += f" (starting {offset:+.2f} s from its first answer)"
        print(line)
        with open(EPHEMERAL / "release-figures.txt", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return line

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(self.TIMEOUT + 5)


def launch_check():
    rc, out, _ = play("launch_check.yml", launch_check_report_dir=str(REPORTS))
    report = json.loads((REPORTS / "latest.json").read_text())
    return rc, out, report


def no_go_items(report, out):
    """Why a launch check is not GO, on one line (pytest's short summary, the tail CI keeps,
    shows a message's first line): the failed items with their evidence, or, when no item
    failed but the play did, the end of the play's output."""
    failed = [f"{i['host']}/{i['id']}: {' '.join(i['evidence'].split())[:300]}" for i in report["items"] if not i["ok"]]
    if not failed:
        return f"{report['verdict']}, the play failed: " + " ".join(out.split())[-1500:]
    return f"{report['verdict']}, {len(failed)} failed: " + " | ".join(failed)


def version():
    status, _, body = get("/api/v1/version/")
    assert status == 200, body
    return json.loads(body)["version"]


def release_status(name="stack-web"):
    return json.loads(root(name).check_output("/usr/local/sbin/multinotes-release status"))


def main_pid(slot):
    return root("stack-web").check_output("systemctl show -p MainPID --value gunicorn@%s.service", slot)


# The longest pause a release switch may add. What the design guarantees: nginx sends no
# request to a slot before it answered healthy on its own socket, and a reload hands new
# connections to new workers while the old ones finish theirs, so no request waits for a
# gunicorn start; the switch adds at most the reload: 0.3 s (the bound). On top
# of the client's own longest gap when nothing switches (measured first, same client):
# on a quiet machine that is a few tens of ms; with CI's lanes on 2 cores an answer now
# and then takes 0.3 s or more with no switch at all. Both figures are printed.
MAX_GAP = float(os.environ.get("MULTINOTES_MAX_GAP", "0.3"))
# Client traffic before a code-only rollback starts: the switch comes 3 to 7 s into it, so
# without a lead the 10 s that longest_gap_before compares with (the same client, the same
# machine load, no switch) held no request, and the bound fell back on the module's first
# 20 s baseline, taken at another load (CI: 0.486 s at a switch against a 0.462 s bound,
# with a 0.50 s answer away from any switch in the same test).
ROLLBACK_LEAD = 12
# The budget of a code-only rollback (the playbook, start to end, as the on-call engineer
# runs it): the 10 s in CI. Measured in full runs from clean clones (three lanes on
# 2 cores, load average 6 to 17) since the rollback became two host calls in two plays and
# the balancer came in: 6.4/5.4, 6.8/7.5 and 8.4/8.7 s; 3.2/3.2 s with one other scenario
# beside it (2026-12-05 13:30 UTC). The single-slot design took 55 to 122 s. The figure is
# printed every run.
ROLLBACK_BUDGET = float(os.environ.get("MULTINOTES_ROLLBACK_BUDGET", "10"))


def db_query(sql):
    return root("stack-db").check_output("mariadb -N multinotes -e %s", sql)


@pytest.fixture(scope="module")
def gap_bound():
    """MAX_GAP over the longest gap this client sees in 20 s when nothing switches."""
    with Load() as load:
        time.sleep(20)
    load.report("the same client for 20 s with no switch (the baseline)", 20)
    assert load.counts["failed"] == 0, load.errors[:5]
    return load.longest_gap() + MAX_GAP


@pytest.fixture(scope="module")
def v2_source(tmp_path_factory):
    """The demo app as release 2.0.0, with one more reversible data migration."""
    src = tmp_path_factory.mktemp("v2") / "app"
    shutil.copytree(testlib.PROJECT / "demo", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "VERSION").write_text("2.0.0\n")
    (src / "core" / "migrations" / "0003_v2_note.py").write_text(
        '"""Release 2.0.0\'s reversible data migration (the rollback test undoes it)."""\n'
        "from django.db import migrations\n\n\n"
        "def add(apps, schema_editor):\n"
        f"    apps.get_model('core', 'Note').objects.create(title={V2_NOTE!r})\n\n\n"
        "def remove(apps, schema_editor):\n"
        f"    apps.get_model('core', 'Note').objects.filter(title={V2_NOTE!r}).delete()\n\n\n"
        "class Migration(migrations.Migration):\n"
        "    dependencies = [('core', '0002_welcome_note')]\n"
        "    operations = [migrations.RunPython(add, remove)]\n")
    return src


@pytest.mark.parametrize("name", STACK)
def test_ansible_came_in_over_ssh_as_deploy_with_sudo(name):
    h = root(name)
    assert "Accepted publickey for deploy" in h.check_output("journalctl -u ssh --no-pager"), name
    sudo = h.check_output("journalctl _COMM=sudo --no-pager")
    assert "deploy : " in sudo and "USER=root" in sudo, name
    # The hardened sshd lets deploy in by key and nobody by password.
    assert "passwordauthentication no" in h.check_output("sshd -T")


def test_backup_runs_and_a_restore_drill_passes():
    rc, out, recap = play("backup.yml")
    assert rc == 0, out
    identity = root("stack-ops").check_output("grep -v '^#' /root/backup.key")
    # To a point: the dump and the shipped binary log replayed (the launch check's backup-drill
    # asks for that where the log is shipped).
    rc, out, _ = play("restore.yml", limit="stack-db", backup_restore_identity=identity, backup_restore_to="latest")
    assert rc == 0, out
    drill = json.loads(root("stack-db").check_output("cat /var/lib/multinotes-backup/last-drill.json"))
    assert drill["result"] == "pass" and drill.get("restore_to"), drill


def test_launch_check_says_go():
    rc, out, report = launch_check()
    assert rc == 0 and report["verdict"] == "GO", no_go_items(report, out)
    ids = {(i["host"], i["id"]) for i in report["items"]}
    for expected in [("stack-lb", "tls-versions"), ("stack-lb", "redirect"), ("stack-lb", "header-strict-transport-security"),
                     ("stack-lb", "certificate"), ("stack-lb", "lb-backends"), ("stack-lb", "lb-private"),
                     ("stack-web", "check-deploy"), ("stack-web2", "web-services"), ("stack-worker", "celery-workers"),
                     ("stack-worker", "celery-beat"), ("stack-db", "redis-auth"), ("stack-db", "db-remote-root"),
                     ("stack-db", "db-runtime-no-ddl"), ("stack-db", "backup-fresh"), ("stack-db", "backup-drill"),
                     ("stack-db", "backup-cron"), ("stack-web", "media-bucket")]:
        assert expected in ids, expected
    assert all(i["evidence"] for i in report["items"])
    # Media is on here (SeaweedFS on stack-ops): the bucket's settings were read back and a
    # file went through the app's storage, not skipped as "off".
    media = next(i for i in report["items"] if i["id"] == "media-bucket")
    assert media["ok"] and not media["off"] and "every item passes" in media["evidence"], media


def test_health_checks_reuse_their_redis_connection():
    """300 health checks leave (almost) no socket in TIME_WAIT towards Redis: one pooled
    client per process. A connection per check ran a busy host out of ephemeral ports."""
    for _ in range(300):
        assert get("/health/")[0] == 200
    out = root("stack-web").check_output("ss -Htn state time-wait '( dport = :6379 or dport = :6380 )'")
    assert len(out.splitlines()) < 30, out


def hashed_static(name="admin/css/base.css"):
    """The live release's hashed URL of a static file, from collectstatic's manifest."""
    manifest = json.loads(root("stack-web").check_output("cat /srv/multinotes/current/static/staticfiles.json"))
    return "/static/" + manifest["paths"][name]


def assert_served_immutable(url):
    status, headers, body = get(url)
    assert status == 200 and body, (url, status)
    assert "immutable" in headers.get("Cache-Control", ""), (url, dict(headers))


# The hashed URL of the release a page was rendered with, before a deploy: served after it.
BEFORE_DEPLOY = {}


def test_hashed_static_files_are_served_through_nginx_as_immutable():
    url = hashed_static()
    assert re.search(r"/static/admin/css/base\.[0-9a-f]{12}\.css$", url), url
    assert_served_immutable(url)
    BEFORE_DEPLOY["css"] = url


def test_deploy_v2_under_load_fails_no_request_and_pauses_nothing(v2_source, gap_bound):
    assert version() == "1.0.0"
    before = release_status()
    rc, out, load, elapsed = play_under_load("deploy.yml", app_source_dir=str(v2_source), settle=2)
    assert rc == 0, out
    line = load.report("deploy of 2.0.0 under load", elapsed, switched_to="2.0.0")
    assert load.counts["failed"] == 0, (line, load.errors[:5])
    assert load.counts["ok"] > 50 and load.versions == {"1.0.0", "2.0.0"}, line
    # The deploy installs and builds on the web host meanwhile (pip, compileall,
    # collectstatic): the bound applies around the switch itself.
    # The bound: MAX_GAP over the client's own gaps with no switch, in the 20 s baseline or in
    # the 10 s before the switch under the same deploy (CI once saw 1.01 s in the baseline and
    # 1.49 s at the switch on a saturated machine). A restart in place paused 1.8 s quiet.
    bound = max(gap_bound, load.longest_gap_before("2.0.0") + MAX_GAP)
    assert load.longest_gap(around="2.0.0") <= bound, (line, f"bound {bound:.3f} s")
    assert version() == "2.0.0"
    # Every web host behind the balancer runs it (each was drained, switched, enabled).
    assert {name: release_status(name)["live"].split("-")[0] for name in WEBS} == dict.fromkeys(WEBS, "2.0.0")
    # 2.0.0 went to the idle slot; 1.0.0 keeps running there, warm, for a rollback.
    after = release_status()
    live, warm = after["live_slot"], before["live_slot"]
    assert live != warm and after["slots"][live]["release"].startswith("2.0.0-"), after
    assert after["slots"][warm]["state"] == "warm" and after["slots"][warm]["release"].startswith("1.0.0-"), after
    assert f"gunicorn-{live}.sock" in root("stack-web").check_output("cat /etc/nginx/multinotes-upstream.conf")
    assert db_query(f"SELECT COUNT(*) FROM core_note WHERE title = '{V2_NOTE}'") == "1"
    # The pre-deploy backup is recorded for rollback_db=restore.
    assert json.loads(root("stack-db").check_output("cat /var/lib/multinotes-backup/predeploy.json"))["stamp"]
    # A page rendered by 1.0.0 keeps its styles, and 2.0.0's are served the same way.
    assert_served_immutable(BEFORE_DEPLOY["css"])
    assert_served_immutable(hashed_static())


def test_rollback_to_v1_with_migrate_under_load():
    rc, out, load, elapsed = play_under_load("rollback.yml", rollback_db="migrate", settle=2)
    assert rc == 0, out
    line = load.report("rollback to 1.0.0 (rollback_db=migrate) under load", elapsed)
    assert load.counts["failed"] == 0, (line, load.errors[:5])
    assert version() == "1.0.0"
    assert db_query(f"SELECT COUNT(*) FROM core_note WHERE title = '{V2_NOTE}'") == "0"
    assert db_query("SELECT COUNT(*) FROM django_migrations WHERE app = 'core' AND name = '0003_v2_note'") == "0"
    web = root("stack-web")
    # The rolled-back release stays, and is now what `previous` points at.
    assert web.file("/srv/multinotes/previous").linked_to.split("/")[-1].startswith("2.0.0-")
    assert web.file("/srv/multinotes/current").linked_to.split("/")[-1].startswith("1.0.0-")
    assert not web.file("/var/lib/multinotes-nginx/maintenance.on").exists


def test_code_only_rollback_is_an_nginx_switch_within_budget_with_no_pause(gap_bound):
    """`previous` is 2.0.0 now (its migration is data only), running warm in the idle slot:
    the rollback starts nothing, it points nginx at that slot. Then back to 1.0.0 the same way."""
    warm_slot = next(name for name, slot in release_status()["slots"].items() if slot["state"] == "warm")
    warm_pid = main_pid(warm_slot)
    rc, out, load, elapsed = play_under_load("rollback.yml", lead=ROLLBACK_LEAD)
    assert rc == 0, out
    line = load.report("code-only rollback to 2.0.0 under load", elapsed, switched_to="2.0.0")
    assert load.counts["failed"] == 0 and load.counts["maintenance"] == 0, (line, load.errors[:5])
    # The pause at the switch (the playbook's own CPU use on a loaded machine shows as gaps
    # elsewhere too: those are bounded by the same client's gaps before the switch).
    bound = max(gap_bound, load.longest_gap_before("2.0.0") + MAX_GAP)
    assert load.longest_gap(around="2.0.0") <= bound, (line, f"bound {bound:.3f} s")
    assert version() == "2.0.0"
    # The same gunicorn master serves: the rollback restarted nothing.
    assert release_status()["live_slot"] == warm_slot and main_pid(warm_slot) == warm_pid
    assert elapsed <= ROLLBACK_BUDGET, line
    # Back to 1.0.0 for what follows (its schema: 0003 is not applied).
    rc, out, load, elapsed = play_under_load("rollback.yml", lead=ROLLBACK_LEAD)
    assert rc == 0, out
    line = load.report("code-only rollback to 1.0.0 under load", elapsed, switched_to="1.0.0")
    bound = max(gap_bound, load.longest_gap_before("1.0.0") + MAX_GAP)
    assert load.counts["failed"] == 0 and load.longest_gap(around="1.0.0") <= bound, (
        line, load.errors[:5], f"bound {bound:.3f} s")
    assert version() == "1.0.0"
    assert elapsed <= ROLLBACK_BUDGET, line


def test_a_broken_release_never_gets_a_request(tmp_path):
    """A release whose app cannot be imported (its WSGI module fails) is deployed under
    load: its slot fails the gate on its own socket, nginx never points at it, no request
    fails, the version never changes, and the play fails naming the release. (1.0.0's code
    and migrations otherwise: the deploy's migrate step has nothing to do.)"""
    broken = tmp_path / "broken"
    shutil.copytree(testlib.PROJECT / "demo", broken, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (broken / "VERSION").write_text("3.0.0\n")
    with open(broken / "multinotes" / "wsgi.py", "a", encoding="utf-8") as fh:
        fh.write("\nimport multinotes_module_that_this_release_forgot  # noqa: E402,F401 - the breakage under test\n")
    before = release_status()
    live_pid = main_pid(before["live_slot"])
    rc, out, load, elapsed = play_under_load("deploy.yml", app_source_dir=str(broken))
    line = load.report("broken release 3.0.0 deployed under load", elapsed)
    assert rc != 0, out
    assert "release 3.0.0-" in out and "did not start" in out and "multinotes_module_that_this_release_forgot" in out, out
    assert load.counts["failed"] == 0 and load.versions == {"1.0.0"}, (line, load.errors[:5])
    after = release_status()
    assert after["live"] == before["live"] and after["live_slot"] == before["live_slot"], after
    # The live slot was never touched: the same master still serves.
    assert main_pid(before["live_slot"]) == live_pid
    assert version() == "1.0.0"
    assert f"gunicorn-{before['live_slot']}.sock" in root("stack-web").check_output("cat /etc/nginx/multinotes-upstream.conf")


def test_the_live_slot_comes_back_by_itself_after_kill_9_of_its_master():
    """kill -9 of the live slot's gunicorn master under load: systemd starts it again on the
    same socket (Restart=on-failure), which queued the connections meanwhile. Only what the
    killed workers were answering at that instant can fail: at most one request per client."""
    web = root("stack-web")
    slot = release_status()["live_slot"]
    pid = main_pid(slot)
    with Load() as load:
        time.sleep(1)
        started = time.monotonic()
        web.check_output("kill -9 %s", pid)
        deadline = started + 60
        while time.monotonic() < deadline and main_pid(slot) in (pid, "0"):
            time.sleep(0.2)
        back = time.monotonic() - started
        time.sleep(3)
    line = load.report(f"kill -9 of slot {slot}'s master under load (a new master after {back:.1f} s)", back)
    assert main_pid(slot) not in (pid, "0"), line
    assert get("/health/")[0] == 200 and version() == "1.0.0"
    assert load.counts["failed"] <= len(load.threads), (line, load.errors[:5])


REDIS_APP = ("multinotes", yaml.safe_load((SCENARIO / "group_vars" / "all.yml").read_text())["redis_app_password"])
# Every host back to `running` (no failed unit) within this, and the site answering within this.
BOOT_BOUND, HEALTH_BOUND = 180, 120
# A clean shutdown of every host (all units stopped in order) within this; docker kills a
# container still running at it.
STOP_BOUND = 60


def durable_state():
    """What a reboot must not lose: the live version, the notes, a key in the broker."""
    notes = root("stack-db").check_output("mariadb -N -B -e 'SELECT COUNT(*) FROM multinotes.core_note'")
    marker = root(REDIS_HOST).check_output(
        "redis-cli --no-auth-warning --user %s --pass %s -p 6379 GET reboot:marker", *REDIS_APP)
    return {"version": version(), "notes": int(notes), "broker marker": marker}


def boot_state(name, deadline):
    """The container's state once its boot is over: "running", or "degraded" when a unit
    failed. Right after `docker restart` the exec may come before systemd listens on its bus
    (no state, an error on stderr: CI once saw that on stack-ops): ask again until the bound."""
    answer = ""
    while time.monotonic() < deadline:
        try:
            done = subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                                  capture_output=True, text=True, timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return "still booting at the bound"
        answer = done.stdout.strip() or f"no state (exit {done.returncode}: {done.stderr.strip()})"
        if done.stdout.strip() and done.stdout.strip() not in ("initializing", "starting"):
            return answer
        time.sleep(1)
    return answer


def test_everything_comes_back_after_a_reboot():
    root(REDIS_HOST).check_output("redis-cli --no-auth-warning --user %s --pass %s -p 6379 SET reboot:marker %s",
                                     *REDIS_APP, "kept")
    time.sleep(1.5)  # past the broker's appendfsync everysec
    before = durable_state()
    assert before["broker marker"] == "kept", before
    started = time.monotonic()
    # Every host at once, as a power cycle of the site would (the docker CLI restarts the
    # names one after another). Each container stops on systemd's halt signal (create.yml):
    # a stop that lasts the whole timeout was a SIGKILL, a crash, which the kill -9 test owns.
    restarts = {name: subprocess.Popen(["docker", "restart", "-t", str(STOP_BOUND), name],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for name in STACK + ["stack-ops"]}
    stopped = {}
    while len(stopped) < len(restarts):
        for name, proc in restarts.items():
            if name not in stopped and proc.poll() is not None:
                stopped[name] = time.monotonic() - started
        time.sleep(0.05)
    for name, proc in restarts.items():
        assert proc.returncode == 0, f"docker restart {name}: {proc.stderr.read()}"
    slow = {name: round(took, 1) for name, took in stopped.items() if took >= STOP_BOUND}
    assert not slow, f"not shut down within {STOP_BOUND} s (killed, not halted): {slow}"
    states = {name: boot_state(name, started + BOOT_BOUND) for name in STACK + ["stack-ops"]}
    booted = time.monotonic() - started
    failed = {name: root(name).run("systemctl --failed --no-legend --plain").stdout.strip()
              for name, state in states.items() if state != "running"}
    assert not failed, f"not running after the reboot: {states}; failed units: {failed}"
    while True:
        try:
            status = get("/health/")[0]
        except OSError as exc:
            status = repr(exc)
        if status == 200 or time.monotonic() - started > booted + HEALTH_BOUND:
            break
        time.sleep(1)
    serving = time.monotonic() - started
    print(f"reboot: every host halted cleanly and restarted after {max(stopped.values()):.1f} s, "
          f"running after {booted:.1f} s, /health/ 200 after {serving:.1f} s")
    assert status == 200, f"/health/ answered {status} {HEALTH_BOUND} s after boot"
    # One web host answering is enough for the front door; the launch check asks that the
    # balancer has every web host back in rotation (its health checks: 2 in a row, 1 s apart).
    while time.monotonic() - started < booted + HEALTH_BOUND:
        states = json.loads(root("stack-lb").check_output("/usr/local/sbin/multinotes-lb status"))["servers"]
        if all(s["state"] == "UP" for s in states):
            break
        time.sleep(0.5)
    print(f"reboot: every web host UP at the balancer after {time.monotonic() - started:.1f} s: "
          f"{[(s['name'], s['state']) for s in states]}")
    assert durable_state() == before
    # The media bucket's S3 stand-in (SeaweedFS on stack-ops: master, volume, filer, gateway)
    # takes its own seconds to serve again; in production the bucket is a service outside the
    # site. The launch check reads the bucket once it answers (403 to an unsigned request).
    while time.monotonic() - started < booted + HEALTH_BOUND:
        media_store = root("stack-ops").run("curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:9443/").stdout
        if media_store == "403":
            break
        time.sleep(1)
    print(f"reboot: the media S3 stand-in answers after {time.monotonic() - started:.1f} s ({media_store})")
    assert media_store == "403", f"the media S3 stand-in did not answer within {HEALTH_BOUND} s of the boot"
    rc, out, report = launch_check()
    assert rc == 0 and report["verdict"] == "GO", no_go_items(report, out)
    root(REDIS_HOST).run("redis-cli --no-auth-warning --user %s --pass %s -p 6379 DEL reboot:marker", *REDIS_APP)


def test_launch_check_says_no_go_when_redis_is_down():
    redis = root(REDIS_HOST)
    redis.check_output("systemctl stop redis-server@broker")
    try:
        # Every web host fails its health check at once (a shared store is down): the
        # balancer fails open, so a static file still answers and /health/ is the app's own
        # 503 (its JSON names what failed), not HAProxy's 503 for everything.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = json.loads(root("stack-lb").check_output("/usr/local/sbin/multinotes-lb status"))["servers"]
            if all(s["state"] == "DOWN" for s in states):
                break
            time.sleep(0.5)
        assert all(s["state"] == "DOWN" for s in states), states
        assert get(hashed_static())[0] == 200
        status, _, body = get("/health/")
        assert status == 503 and json.loads(body)["checks"]["redis"] != "ok", (status, body[:300])
        rc, out, report = launch_check()
        assert rc != 0 and report["verdict"] == "NO-GO", out
        failed = {(i["host"], i["id"]) for i in report["items"] if not i["ok"]}
        assert (REDIS_HOST, "redis-services") in failed, failed
        assert ("stack-lb", "health") in failed, failed
        assert "NO-GO" in out and "Redis instances active and enabled" in out
    finally:
        redis.check_output("systemctl start redis-server@broker")
        # Back in rotation before whatever runs next (2 passed checks, 1 s apart).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                s["state"] == "UP" for s in json.loads(root("stack-lb").check_output(
                    "/usr/local/sbin/multinotes-lb status"))["servers"]):
            time.sleep(0.5)
