"""The whole system, by behaviour, in the order an operator lives it: converged over SSH as
`deploy`; backed up and drilled; launch check GO; deploy v2 and roll back to v1 under a
continuous client load (zero failed requests); every container restarted (a reboot) and
GO again; Redis stopped and the launch check says NO-GO, naming it.

The playbooks run exactly as in production (tests drive them with ansible-playbook against
this scenario's inventory); the tests inspect the hosts as root through docker exec."""

import http.client
import json
import os
import shutil
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
WEB = "10.231.7.11"
STACK = ["stack-web", "stack-worker", "stack-redis", "stack-db"]
V2_NOTE = "Added by release 2.0.0"


def root(name):
    return testinfra.get_host(f"docker://{name}")


def play(name, limit="all", **extra):
    rc, out, recap = testlib.run_playbook(PLAYBOOKS / name, limit=limit, extra_vars=extra)
    return rc, out, recap


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the web host's address with the site's name as SNI and Host, as a browser."""

    def connect(self):
        sock = socket.create_connection((WEB, 443), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=NAME)


def get(path, timeout=10):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # Pebble's root is not in this machine's trust store
    conn = _Connection(NAME, 443, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


class Load:
    """A client that keeps requesting /health/ (which names the version) until stopped;
    every answer counted. One address, so it stays under nginx's per-address API limit by
    asking for /health/, which that limit does not cover.

    A request sent while gunicorn restarts waits in the socket's queue and is answered
    when the new workers are up: slower, not failed. The client waits 30 s for an answer
    (a browser waits minutes; nginx's proxy timeout is 300 s). 10 s was too short for
    this machine: with CI's three lanes on 2 cores, a restart took longer than that once.
    The slowest answer is recorded and printed, so a growing pause shows in the log."""

    TIMEOUT = 30

    def __init__(self, workers=2):
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "maintenance": 0, "failed": 0}
        self.slowest = 0.0
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
                if version:
                    self.versions.add(version)
            time.sleep(0.02)

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


def version():
    status, _, body = get("/api/v1/version/")
    assert status == 200, body
    return json.loads(body)["version"]


def db_query(sql):
    return root("stack-db").check_output("mariadb -N multinotes -e %s", sql)


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
    rc, out, _ = play("restore.yml", limit="stack-db", backup_restore_identity=identity)
    assert rc == 0, out
    drill = json.loads(root("stack-db").check_output("cat /var/lib/multinotes-backup/last-drill.json"))
    assert drill["result"] == "pass", drill


def test_launch_check_says_go():
    rc, out, report = launch_check()
    assert rc == 0 and report["verdict"] == "GO", out
    ids = {(i["host"], i["id"]) for i in report["items"]}
    for expected in [("stack-web", "tls-versions"), ("stack-web", "redirect"), ("stack-web", "header-strict-transport-security"),
                     ("stack-web", "check-deploy"), ("stack-worker", "celery-workers"), ("stack-worker", "celery-beat"),
                     ("stack-redis", "redis-auth"), ("stack-db", "db-remote-root"), ("stack-db", "db-runtime-no-ddl"),
                     ("stack-db", "backup-fresh"), ("stack-db", "backup-drill"), ("stack-redis", "backup-cron")]:
        assert expected in ids, expected
    assert all(i["evidence"] for i in report["items"])


def test_deploy_v2_under_load_fails_no_request(v2_source):
    assert version() == "1.0.0"
    with Load() as load:
        time.sleep(2)
        rc, out, _ = play("deploy.yml", app_source_dir=str(v2_source))
        time.sleep(2)
    assert rc == 0, out
    print(f"deploy under load: {load.counts}, slowest answer {load.slowest:.1f} s")
    assert load.counts["failed"] == 0, (load.counts, load.errors[:5])
    assert load.counts["ok"] > 50 and load.versions == {"1.0.0", "2.0.0"}, load.counts
    assert version() == "2.0.0"
    assert db_query(f"SELECT COUNT(*) FROM core_note WHERE title = '{V2_NOTE}'") == "1"
    # The pre-deploy backup is recorded for rollback_db=restore.
    assert json.loads(root("stack-db").check_output("cat /var/lib/multinotes-backup/predeploy.json"))["stamp"]


def test_rollback_to_v1_with_migrate_under_load():
    with Load() as load:
        time.sleep(2)
        started = time.monotonic()
        rc, out, _ = play("rollback.yml", rollback_db="migrate")
        elapsed = time.monotonic() - started
        time.sleep(2)
    assert rc == 0, out
    print(f"rollback (rollback_db=migrate) took {elapsed:.1f} s under load: {load.counts}, slowest answer {load.slowest:.1f} s")
    assert load.counts["failed"] == 0, (load.counts, load.errors[:5])
    assert version() == "1.0.0"
    assert db_query(f"SELECT COUNT(*) FROM core_note WHERE title = '{V2_NOTE}'") == "0"
    assert db_query("SELECT COUNT(*) FROM django_migrations WHERE app = 'core' AND name = '0003_v2_note'") == "0"
    web = root("stack-web")
    # The rolled-back release stays, and is now what `previous` points at.
    assert web.file("/srv/multinotes/previous").linked_to.split("/")[-1].startswith("2.0.0-")
    assert web.file("/srv/multinotes/current").linked_to.split("/")[-1].startswith("1.0.0-")
    assert not web.file("/var/lib/multinotes-nginx/maintenance.on").exists


def test_code_only_rollback_takes_seconds_and_fails_no_request():
    """`previous` is 2.0.0 now (its migration is data only): switch to it and back, code only."""
    with Load() as load:
        time.sleep(1)
        started = time.monotonic()
        rc, out, _ = play("rollback.yml")
        elapsed = time.monotonic() - started
        time.sleep(1)
    assert rc == 0, out
    print(f"code-only rollback to 2.0.0 took {elapsed:.1f} s under load: {load.counts}, slowest answer {load.slowest:.1f} s")
    assert load.counts["failed"] == 0 and load.counts["maintenance"] == 0, (load.counts, load.errors[:5])
    assert version() == "2.0.0"
    # The checklist's budget for a code rollback is 5 minutes. Measured: 16 s on a quiet
    # machine, 23 s under this load alone, 68 s while CI ran two other scenarios beside it
    # on 2 cores (benchmarks/RESULTS.md): the bound is the budget, the time is printed.
    assert elapsed < 300
    # Back to 1.0.0 for what follows (its schema: 0003 is not applied).
    rc, out, _ = play("rollback.yml")
    assert rc == 0, out
    assert version() == "1.0.0"


REDIS_APP = ("multinotes", yaml.safe_load((SCENARIO / "group_vars" / "all.yml").read_text())["redis_app_password"])
# Every host back to `running` (no failed unit) within this, and the site answering within this.
BOOT_BOUND, HEALTH_BOUND = 180, 120


def durable_state():
    """What a reboot must not lose: the live version, the notes, a key in the broker."""
    notes = root("stack-db").check_output("mariadb -N -B -e 'SELECT COUNT(*) FROM multinotes.core_note'")
    marker = root("stack-redis").check_output(
        "redis-cli --no-auth-warning --user %s --pass %s -p 6379 GET reboot:marker", *REDIS_APP)
    return {"version": version(), "notes": int(notes), "broker marker": marker}


def test_everything_comes_back_after_a_reboot():
    root("stack-redis").check_output("redis-cli --no-auth-warning --user %s --pass %s -p 6379 SET reboot:marker %s",
                                     *REDIS_APP, "kept")
    time.sleep(1.5)  # past the broker's appendfsync everysec
    before = durable_state()
    assert before["broker marker"] == "kept", before
    started = time.monotonic()
    subprocess.run(["docker", "restart", "-t", "30", *STACK, "stack-ops"], check=True, capture_output=True)
    states = {}
    for name in STACK + ["stack-ops"]:
        # --wait returns once boot is over: "running", or "degraded" when a unit failed.
        states[name] = subprocess.run(["docker", "exec", name, "systemctl", "is-system-running", "--wait"],
                                      capture_output=True, text=True, timeout=BOOT_BOUND).stdout.strip()
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
    print(f"reboot: every host running after {booted:.1f} s, /health/ 200 after {serving:.1f} s")
    assert status == 200, f"/health/ answered {status} {HEALTH_BOUND} s after boot"
    assert durable_state() == before
    rc, out, report = launch_check()
    assert rc == 0 and report["verdict"] == "GO", out
    root("stack-redis").run("redis-cli --no-auth-warning --user %s --pass %s -p 6379 DEL reboot:marker", *REDIS_APP)


def test_launch_check_says_no_go_when_redis_is_down():
    redis = root("stack-redis")
    redis.check_output("systemctl stop redis-server@broker")
    try:
        rc, out, report = launch_check()
        assert rc != 0 and report["verdict"] == "NO-GO", out
        failed = {(i["host"], i["id"]) for i in report["items"] if not i["ok"]}
        assert ("stack-redis", "redis-services") in failed, failed
        assert ("stack-web", "health") in failed, failed
        assert "NO-GO" in out and "Redis instances active and enabled" in out
    finally:
        redis.check_output("systemctl start redis-server@broker")
