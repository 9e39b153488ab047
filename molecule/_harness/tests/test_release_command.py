"""The host-side release command (roles/app/files/release.py): its pure logic (slot
choice, the switch plan, gate evaluation, prune choice, argument and settings checks) and
state reading on a real directory tree laid out as a host's /srv/<app>."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "roles" / "app" / "files" / "release.py"

spec = importlib.util.spec_from_file_location("release_command", SCRIPT)
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)

R1, R2, R3 = "1.0.0-0123456789ab", "2.0.0-abcdef012345", "2.1.0-0a1b2c3d4e5f"
SLOTS = {"blue": "/run/multinotes/gunicorn-blue.sock", "green": "/run/multinotes/gunicorn-green.sock"}


def settings(tmp_path, **over):
    raw = {"app_root": str(tmp_path / "srv"), "web": True, "slots": SLOTS, "warm_previous": True,
           "gate": {"path": "/health/", "host": "multinotes.test", "timeout": 30},
           "nginx": {"include": str(tmp_path / "nginx" / "multinotes-upstream.conf"), "conf_dir": str(tmp_path / "nginx"),
                     "test_command": [], "worker_shutdown_timeout": 10},
           "keep_releases": 3}
    raw.update(over)
    return raw


def state(live_slot="blue", blue=(R1, True), green=(None, False), current=R1, previous=None,
          releases=(R1, R2, R3), nginx_slot="blue", web=True):
    return {"web": web, "current": current, "previous": previous, "releases": list(releases),
            "live_slot": live_slot, "nginx_slot": nginx_slot,
            "slots": {"blue": {"release": blue[0], "active": blue[1], "socket": SLOTS["blue"]},
                      "green": {"release": green[0], "active": green[1], "socket": SLOTS["green"]}}}


# --- slot choice and the plan

def test_the_idle_slot_is_the_one_that_is_not_live():
    assert release.choose_slot(state(live_slot="blue"), R2) == "green"
    assert release.choose_slot(state(live_slot="green"), R2) == "blue"


def test_a_host_with_no_live_slot_starts_the_first():
    assert release.choose_slot(state(live_slot=None, blue=(None, False)), R1) == "blue"


def test_a_requested_slot_must_be_one_of_the_two_and_not_the_live_one():
    assert release.choose_slot(state(), R2, "green") == "green"
    with pytest.raises(release.Refused, match="'red' is not one of this host's slots"):
        release.choose_slot(state(), R2, "red")
    with pytest.raises(release.Refused, match="'blue' is the live slot"):
        release.choose_slot(state(), R2, "blue")


def test_switching_to_the_live_release_is_a_no_op():
    plan = release.plan_switch(state(), R1)
    assert plan["action"] == "noop"


def test_a_live_release_whose_include_names_the_other_slot_is_healed():
    assert release.plan_switch(state(nginx_slot="green"), R1)["action"] == "heal"


def test_a_new_release_goes_to_the_idle_slot():
    plan = release.plan_switch(state(), R2)
    assert plan == {"action": "switch", "target": R2, "slot": "green", "from_slot": "blue",
                    "from_release": R1, "reuse": False}


def test_a_warm_slot_on_the_target_is_reused_so_a_rollback_is_an_nginx_switch():
    plan = release.plan_switch(state(live_slot="green", blue=(R1, True), green=(R2, True), current=R2), R1)
    assert plan["slot"] == "blue" and plan["reuse"] is True


def test_a_stopped_slot_on_the_target_is_started_again():
    plan = release.plan_switch(state(live_slot="green", blue=(R1, False), green=(R2, True), current=R2), R1)
    assert plan["reuse"] is False


def test_a_dead_live_slot_on_the_target_is_replaced_by_the_idle_one():
    plan = release.plan_switch(state(blue=(R1, False)), R1)
    assert plan["action"] == "switch" and plan["slot"] == "green"


@pytest.mark.parametrize("target, message", [
    ("9.9.9-0123456789ab", "is not installed on this host"),
    ("../etc", "is not a release id"),
    ("", "is not a release id"),
    ("1.0.0", "is not a release id"),
])
def test_unknown_or_malformed_releases_are_refused(target, message):
    with pytest.raises(release.Refused, match=message):
        release.plan_switch(state(), target)


def test_hosts_without_slots_relink_and_refuse_a_slot():
    assert release.plan_switch(state(web=False), R2) == {"action": "relink", "target": R2}
    assert release.plan_switch(state(web=False, current=R2), R2)["action"] == "noop"
    with pytest.raises(release.Refused, match="no gunicorn slots"):
        release.plan_switch(state(web=False), R2, "blue")


# --- the gate

def test_the_gate_passes_on_200_ok_and_the_target_version():
    ok, seen = release.evaluate_gate(200, json.dumps({"status": "ok", "version": "2.0.0"}), "2.0.0")
    assert ok and "version '2.0.0'" in seen


@pytest.mark.parametrize("status, body, seen", [
    (200, json.dumps({"status": "ok", "version": "1.0.0"}), "version '1.0.0'"),
    (503, json.dumps({"status": "error", "version": "2.0.0", "checks": {"redis": "error: ConnectionError"}}),
     "HTTP 503, status 'error'"),
    (500, "<h1>Server Error</h1>", "not JSON"),
    (None, "ConnectionRefusedError: [Errno 111]", "no answer"),
])
def test_the_gate_fails_and_says_what_it_saw(status, body, seen):
    ok, what = release.evaluate_gate(status, body, "2.0.0")
    assert not ok and seen in what


def test_the_version_comes_from_release_env_else_the_id():
    assert release.release_version("RELEASE_ID=x\nAPP_VERSION=2.0.0rc1\n", R2) == "2.0.0rc1"
    assert release.release_version("", R2) == "2.0.0"


@pytest.mark.parametrize("value", [0, 0.5, -3, "soon", None])
def test_a_gate_timeout_below_one_second_is_refused(value):
    with pytest.raises(release.Refused):
        release.check_gate_timeout(value)
    assert release.check_gate_timeout("1") == 1.0


# --- nginx

def test_the_include_names_the_slot_and_reads_back():
    text = release.render_include("green", SLOTS["green"])
    assert "server unix:/run/multinotes/gunicorn-green.sock fail_timeout=0;" in text
    assert release.parse_include(text, SLOTS) == "green"
    assert release.parse_include("server unix:/run/other.sock;", SLOTS) is None
    assert release.parse_include("", SLOTS) is None


@pytest.mark.parametrize("props, failed", [
    ({"ActiveState": "activating", "SubState": "start", "NRestarts": "0"}, False),
    ({"ActiveState": "active", "SubState": "running", "NRestarts": "0"}, False),
    ({"ActiveState": "activating", "SubState": "auto-restart", "NRestarts": "0"}, True),
    ({"ActiveState": "failed", "SubState": "failed", "NRestarts": "0"}, True),
    ({"ActiveState": "activating", "SubState": "start", "NRestarts": "1"}, True),
])
def test_a_slot_whose_master_dies_fails_the_gate_at_once(props, failed):
    assert release.slot_start_failed(props, "0") is failed


def test_a_failed_gate_quotes_the_errors_of_the_log():
    tail = ["[2026-12-01 21:00:00 +0000] [7] [INFO] Starting gunicorn 23.0.0",
            "Traceback (most recent call last):",
            '  File "/srv/multinotes/slots/green/src/multinotes/wsgi.py", line 9, in <module>',
            "ModuleNotFoundError: No module named 'multinotes_missing'",
            "[2026-12-01 21:00:01 +0000] [7] [ERROR] Worker failed to boot."]
    assert release.error_lines(tail) == [tail[3], tail[4]]


def test_only_the_workers_from_before_the_reload_are_waited_for():
    assert release.old_workers_left([10, 11], [11, 12, 13]) == [11]
    assert release.old_workers_left([10, 11], [12, 13]) == []


# --- prune

def test_prune_keeps_the_newest_and_every_protected_release():
    releases = [(f"{n}.0.0-0123456789ab", n) for n in range(1, 8)]
    protected = {"7.0.0-0123456789ab", "1.0.0-0123456789ab"}
    # keep 3 in all: the two protected ones and the newest other one (6).
    remove = release.prune_candidates(releases, protected, keep=3)
    assert remove == [f"{n}.0.0-0123456789ab" for n in (5, 4, 3, 2)]
    assert release.prune_candidates(releases[:2], set(), keep=3) == []


# --- settings and arguments

def test_settings_are_checked(tmp_path):
    good = release.validate_settings(settings(tmp_path))
    assert good["gate"]["timeout"] == 30 and good["restart_units"] == []
    with pytest.raises(release.Refused, match="below 1 s"):
        release.validate_settings(settings(tmp_path, gate={"timeout": 0.2}))
    with pytest.raises(release.Refused, match="exactly two slots"):
        release.validate_settings(settings(tmp_path, slots={"blue": "/run/a.sock"}))
    with pytest.raises(release.Refused, match="slot name"):
        release.validate_settings(settings(tmp_path, slots={"Blue!": "/run/a.sock", "green": "/run/b.sock"}))
    assert release.validate_settings(settings(tmp_path, web=False, slots={}))["web"] is False


def test_arguments_are_parsed():
    args = release.parse_args(["switch", R2, "--slot", "green", "--gate-timeout", "5", "--check"])
    assert (args.command, args.release, args.slot, args.gate_timeout, args.check) == ("switch", R2, "green", 5.0, True)
    with pytest.raises(SystemExit):
        release.parse_args(["switch"])


# --- state on a real tree, and the command end to end where it needs no systemd

def lay_out(tmp_path, live="blue"):
    root = tmp_path / "srv"
    for rid in (R1, R2, R3):
        (root / "releases" / rid).mkdir(parents=True)
        (root / "releases" / rid / ".installed").write_text(rid)
        (root / "releases" / rid / "release.env").write_text(f"APP_VERSION={rid.split('-')[0]}\n")
    (root / "releases" / "half-done").mkdir()  # no .installed: not a release
    (root / "slots").mkdir()
    os.symlink(f"../releases/{R2}", root / "slots" / "blue")
    os.symlink(f"../releases/{R1}", root / "slots" / "green")
    os.symlink(live, root / "slots" / "live")
    os.symlink(f"releases/{R2}", root / "current")
    os.symlink(f"releases/{R1}", root / "previous")
    (tmp_path / "nginx").mkdir()
    (tmp_path / "nginx" / "multinotes-upstream.conf").write_text(release.render_include(live, SLOTS[live]))
    path = tmp_path / "release.json"
    path.write_text(json.dumps(settings(tmp_path)))
    return path


def test_state_is_read_from_the_links_and_the_include(tmp_path, monkeypatch):
    host = release.Host(release.validate_settings(json.loads(lay_out(tmp_path).read_text())))
    monkeypatch.setattr(host, "active", lambda unit: unit.startswith("gunicorn@blue"))
    st = host.state()
    assert st["current"] == R2 and st["previous"] == R1 and st["live_slot"] == "blue" and st["nginx_slot"] == "blue"
    assert sorted(st["releases"]) == sorted([R1, R2, R3])
    assert st["slots"]["blue"] == {"release": R2, "active": True, "socket": SLOTS["blue"]}
    status = host.status()
    assert status["slots"]["blue"]["state"] == "live" and status["slots"]["green"]["state"] == "stopped"
    assert host.version_of(R2) == "2.0.0"


def run(settings_path, *args):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--settings", str(settings_path), *args],
                          capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_bad_input_is_refused_before_any_change(tmp_path):
    path = lay_out(tmp_path)
    before = {p: os.readlink(p) for p in (tmp_path / "srv").rglob("*") if p.is_symlink()}
    for args, says in [(["switch", "9.9.9-0123456789ab"], "not installed on this host"),
                       (["switch", R3, "--slot", "red"], "not one of this host's slots"),
                       (["switch", R3, "--gate-timeout", "0.5"], "below 1 s"),
                       (["switch", "latest"], "not a release id")]:
        rc, out, err = run(path, *args)
        assert rc == 2 and out["refused"] and says in out["error"] and says in err, (args, out)
    after = {p: os.readlink(p) for p in (tmp_path / "srv").rglob("*") if p.is_symlink()}
    assert after == before


def test_check_mode_changes_nothing_and_prune_keeps_what_is_protected(tmp_path):
    path = lay_out(tmp_path)
    rc, out, _ = run(path, "prune", "--check")
    # keep 3: R1 (previous, green), R2 (live, blue) and R3 (the newest) all stay.
    assert rc == 0 and out == {"changed": False, "removed": [], "venvs_removed": [], "check": True}
    rc, out, _ = run(path, "switch", R3, "--check")
    assert rc == 0 and out["changed"] is True and out["action"] == "switch" and out["check"] is True
    assert os.readlink(tmp_path / "srv" / "current") == f"releases/{R2}"


def test_celery_restarts_are_queued_in_one_call_not_waited_for(tmp_path, monkeypatch):
    """A warm stop waits for each running task (up to its hard time limit): the switch
    queues the restarts (--no-block) so a rollback never waits behind the longest task."""
    calls = []
    monkeypatch.setattr(release, "_run", lambda argv, check=True: calls.append(argv) or subprocess.CompletedProcess(argv, 0, "", ""))
    host = release.Host(release.validate_settings(settings(tmp_path, restart_units=["celery-worker-*.service", "celery-beat.service"])))
    assert host.restart_units().startswith("queued")
    assert calls == [["systemctl", "--no-block", "try-restart", "celery-worker-*.service", "celery-beat.service"]]
    calls.clear()
    assert release.Host(release.validate_settings(settings(tmp_path))).restart_units() is None and calls == []


def test_the_celery_units_state_is_read_from_systemctl_list_units():
    text = ("celery-beat.service           loaded active running Celery beat of multinotes (one host only)\n"
            "celery-worker-default.service loaded deactivating stop-sigterm Celery worker default of multinotes\n")
    assert release.parse_unit_list(text) == {"celery-beat.service": "active/running",
                                             "celery-worker-default.service": "deactivating/stop-sigterm"}
    assert release.parse_unit_list("") == {}


def test_the_venv_key_follows_the_requirements_and_the_python():
    a = release.venv_key(b"django==5.2.8\n", "3.11")
    assert a.startswith("py3.11-") and len(a) == len("py3.11-") + 16
    assert a == release.venv_key(b"django==5.2.8\n", "3.11")
    assert a != release.venv_key(b"django==5.2.9\n", "3.11") and a != release.venv_key(b"django==5.2.8\n", "3.13")


def test_prune_removes_only_the_venvs_no_release_links_to():
    assert release.unused_venvs(["py3.11-a", "py3.11-b", "py3.13-c"], ["py3.11-a", "py3.11-a"]) == ["py3.11-b", "py3.13-c"]
    assert release.unused_venvs([], ["py3.11-a"]) == []


def unpacked(tmp_path, rid, requirements="six==1.17.0\n"):
    rdir = tmp_path / "srv" / "releases" / rid
    (rdir / "src").mkdir(parents=True)
    (rdir / "src" / "app.py").write_text("X = 1\n")
    (rdir / "wheelhouse").mkdir()
    (rdir / "requirements.txt").write_text(requirements)
    return rdir


def test_install_builds_one_venv_per_requirements_and_shares_it(tmp_path, monkeypatch):
    """Two releases with the same requirements: the first creates the venv (python -m venv,
    pip --no-index from its wheelhouse), the second only links it; both are compiled and
    marked installed; a third with other requirements gets its own; prune keeps what is linked."""
    calls = []

    def fake_run(argv, check=True):
        calls.append(argv)
        if argv[1:3] == ["-m", "venv"]:
            (Path(argv[3]) / "bin").mkdir(parents=True)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(release, "_run", fake_run)
    host = release.Host(release.validate_settings(settings(tmp_path)))
    first, second, other = (unpacked(tmp_path, R1), unpacked(tmp_path, R2), unpacked(tmp_path, R3, "six==1.16.0\n"))
    out = host.install(R1)
    assert out["changed"] and not out["venv_reused"]
    assert [c[1:3] for c in calls if "-m" in c] == [["-m", "venv"], ["-m", "compileall"]]
    assert any(c[1] == "install" and "--no-index" in c for c in calls)
    calls.clear()
    out2 = host.install(R2)
    assert out2["venv_reused"] and out2["venv"] == out["venv"]
    assert not any("install" in c or "venv" in c[1:3] for c in calls), calls
    assert os.readlink(second / "venv") == f"../../venvs/{out['venv']}" == os.readlink(first / "venv")
    assert (first / ".installed").exists() and (second / ".installed").exists()
    assert host.install(R2)["changed"] is False  # installed: a no-op
    out3 = host.install(R3)
    assert out3["venv"] != out["venv"] and not out3["venv_reused"]
    (tmp_path / "srv" / "venvs" / "py3.11-orphan").mkdir()
    pruned = host.prune()
    assert pruned["venvs_removed"] == ["py3.11-orphan"] and (tmp_path / "srv" / "venvs" / out["venv"]).is_dir()


def test_a_half_built_venv_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setattr(release, "_run", lambda argv, check=True: (
        (Path(argv[3]) / "bin").mkdir(parents=True) if argv[1:3] == ["-m", "venv"] else None)
        or subprocess.CompletedProcess(argv, 0, "", ""))
    host = release.Host(release.validate_settings(settings(tmp_path)))
    unpacked(tmp_path, R1)
    key = release.venv_key(b"six==1.17.0\n")
    (tmp_path / "srv" / "venvs" / key / "lib").mkdir(parents=True)  # no .complete
    out = host.install(R1)
    assert not out["venv_reused"] and (tmp_path / "srv" / "venvs" / key / ".complete").exists()
    assert not (tmp_path / "srv" / "venvs" / key / "lib").exists()


def test_install_refuses_what_is_not_an_unpacked_release(tmp_path):
    host = release.Host(release.validate_settings(settings(tmp_path)))
    with pytest.raises(release.Refused, match="not a release id"):
        host.install("latest")
    (tmp_path / "srv" / "releases" / R1).mkdir(parents=True)
    with pytest.raises(release.Refused, match="not an unpacked release"):
        host.install(R1)


def test_a_fresh_slot_is_warmed_by_concurrent_health_checks_one_per_worker(tmp_path, monkeypatch):
    """After the gate, every worker should have answered once before a user reaches it:
    WARM_ROUNDS rounds of as many concurrent checks as the master has workers."""
    import threading
    import time as _time

    host = release.Host(release.validate_settings(settings(tmp_path)))
    lock, live, seen = threading.Lock(), [0], {"max": 0, "asked": 0}

    def ask(slot, timeout):
        with lock:
            live[0] += 1
            seen["max"], seen["asked"] = max(seen["max"], live[0]), seen["asked"] + 1
        _time.sleep(0.05)
        with lock:
            live[0] -= 1
        return 200, json.dumps({"status": "ok", "version": "2.0.0"})
    monkeypatch.setattr(host, "ask", ask)
    monkeypatch.setattr(host, "slot_workers", lambda slot: 5)
    monkeypatch.setattr(host, "version_of", lambda r: "2.0.0")
    assert host.warm("green", R2, _time.monotonic() + 10) == 5 * release.WARM_ROUNDS
    assert seen == {"max": 5, "asked": 5 * release.WARM_ROUNDS}


def test_a_slot_that_fails_while_being_warmed_never_gets_traffic(tmp_path, monkeypatch):
    import time as _time

    host = release.Host(release.validate_settings(settings(tmp_path)))
    answers = iter([(200, json.dumps({"status": "ok", "version": "2.0.0"}))] * 3 + [(503, '{"status": "error"}')] * 20)
    monkeypatch.setattr(host, "ask", lambda slot, timeout: next(answers))
    monkeypatch.setattr(host, "slot_workers", lambda slot: 4)
    monkeypatch.setattr(host, "version_of", lambda r: "2.0.0")
    monkeypatch.setattr(host, "slot_journal", lambda slot: "worker 7 died")
    with pytest.raises(release.Failed, match=r"passed the gate, then failed under 4 concurrent health checks: .*503.*worker 7 died"):
        host.warm("green", R2, _time.monotonic() + 10)


def test_the_workers_of_a_slot_are_the_children_of_its_master(tmp_path, monkeypatch):
    import time as _time

    master = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & sleep 30 & wait"])
    try:
        host = release.Host(release.validate_settings(settings(tmp_path)))
        monkeypatch.setattr(host, "slot_unit_state", lambda slot, props=None: {"MainPID": str(master.pid)})
        for _ in range(50):
            if host.slot_workers("green") == 3:
                break
            _time.sleep(0.05)
        assert host.slot_workers("green") == 3
        monkeypatch.setattr(host, "slot_unit_state", lambda slot, props=None: {"MainPID": "0"})
        assert host.slot_workers("green") == 0
    finally:
        subprocess.run(["pkill", "-P", str(master.pid)])
        master.kill()
        master.wait()


# --- prepare: the migration gate, the migrations, their state and the static files in one call

def test_the_env_file_reads_back_what_the_app_role_writes():
    text = ('# Ansible managed\n\nDB_NAME="multinotes"\nDB_PASSWORD="a\\"b\\\\c$d e"\n'  # pragma: allowlist secret
            'ALLOWED_HOSTS="a.example,b.example"\nEMPTY=""\n; a comment\nBARE=plain\n')
    assert release.parse_env_file(text) == {"DB_NAME": "multinotes", "DB_PASSWORD": 'a"b\\c$d e',
                                            "ALLOWED_HOSTS": "a.example,b.example", "EMPTY": "", "BARE": "plain"}


def test_the_migration_state_is_written_as_ansible_wrote_it():
    """Byte for byte what `to_nice_json` + newline gave before: a release recorded then is not rewritten."""
    text = release.migration_state_text({"sessions": "0001_initial", "core": "0002_welcome_note"})
    assert text == '{\n    "core": "0002_welcome_note",\n    "sessions": "0001_initial"\n}\n'


@pytest.mark.parametrize("stdin", ["", "not json", '{"user": "m"}', '{"user": "", "password": "x"}', "[]"])
def test_migrate_without_the_migration_users_credentials_is_refused(stdin):
    with pytest.raises(release.Refused, match="app_db_migrate_user and app_db_migrate_password"):
        release.migrate_credentials(stdin)


def test_the_credentials_become_the_database_user_of_the_migrate_step():
    assert release.migrate_credentials('{"user": "m", "password": "p w"}') == {"DB_USER": "m", "DB_PASSWORD": "p w"}  # pragma: allowlist secret


class FakeDjango:
    """Stands in for the release's Python: records each call, answers the probe."""

    def __init__(self, state=None, pending=(), models_changed=False, fail=None):
        self.calls, self.answer, self.fail = [], {"state": state or {"core": "0002_welcome_note"}}, fail
        self.answer["pending"] = list(pending)
        self.answer["models_changed"] = models_changed

    def __call__(self, argv, cwd, env, user=None, group=None, stdin=None):
        self.calls.append({"argv": argv, "cwd": cwd, "env": env, "user": user, "stdin": stdin})
        if "django-probe" in argv:
            err = "Migrations for 'core':\n  core/migrations/0003_note_pinned.py\n" if self.answer["models_changed"] else ""
            return subprocess.CompletedProcess(argv, 0, "noise\n" + json.dumps(self.answer) + "\n", err)
        if self.fail and self.fail in argv:
            return subprocess.CompletedProcess(argv, 1, "", "Traceback\n  File x\ndjango.db.utils.OperationalError: (1045, 'Access denied')\n")
        if "collectstatic" in argv:
            (Path(env["STATIC_ROOT"])).mkdir(parents=True, exist_ok=True)
            (Path(env["STATIC_ROOT"]) / "staticfiles.json").write_text("{}")
        return subprocess.CompletedProcess(argv, 0, "", "")


def prepared_host(tmp_path, monkeypatch, fake):
    monkeypatch.setattr(release, "_run_django", fake)
    monkeypatch.setattr(release.pwd, "getpwnam", lambda user: type("pw", (), {"pw_dir": f"/home/{user}"}))
    (tmp_path / "app.env").write_text('DB_USER="multinotes"\nDB_PASSWORD="runtime-pw"\nSTATIC_ROOT="/srv/multinotes/current/static"\n')  # pragma: allowlist secret
    path = lay_out(tmp_path)
    raw = json.loads(path.read_text())
    raw.update(env_file=str(tmp_path / "app.env"), app_user="multinotes", app_group="multinotes")
    return release.Host(release.validate_settings(raw)), tmp_path / "srv" / "releases" / R3


def test_prepare_migrates_with_the_migration_user_records_the_state_and_collects_once(tmp_path, monkeypatch):
    fake = FakeDjango(state={"core": "0003_v2_note", "auth": "0012_x"}, pending=["core.0003_v2_note"])
    host, rdir = prepared_host(tmp_path, monkeypatch, fake)
    out = host.prepare(R3, models_check=True, migrate=True, collectstatic=True,
                       stdin='{"user": "multinotes_migrate", "password": "migrate-pw"}')  # pragma: allowlist secret
    assert out["changed"] and out["migrated"] == ["core.0003_v2_note"] and out["static_collected"]
    probe, migrate, collect = fake.calls
    # One Django start asks everything, as the app user, with the runtime credentials.
    assert probe["argv"][-3:] == ["django-probe", "--models-check", "--pending"] and probe["user"] == "multinotes"
    assert probe["env"]["DB_USER"] == "multinotes" and probe["env"]["APP_VERSION"] == "2.1.0"
    assert probe["cwd"] == str(rdir / "src") and probe["argv"][0] == str(rdir / "venv" / "bin" / "python")
    # The migration user only for migrate; its password never on the command line.
    assert migrate["argv"][1:] == ["manage.py", "migrate", "--noinput"] and migrate["user"] == "multinotes"
    assert migrate["env"]["DB_USER"] == "multinotes_migrate" and migrate["env"]["DB_PASSWORD"] == "migrate-pw"  # pragma: allowlist secret
    assert not any("migrate-pw" in arg for call in fake.calls for arg in call["argv"])
    # collectstatic as root, into the release itself.
    assert collect["user"] is None and collect["env"]["STATIC_ROOT"] == str(rdir / "static")
    assert json.loads((rdir / "MIGRATIONS.json").read_text()) == {"auth": "0012_x", "core": "0003_v2_note"}
    assert oct((rdir / "MIGRATIONS.json").stat().st_mode & 0o777) == "0o644"
    # Again: nothing pending, the state and the static files are there: no change, one probe only.
    fake2 = FakeDjango(state={"core": "0003_v2_note", "auth": "0012_x"})
    monkeypatch.setattr(release, "_run_django", fake2)
    again = host.prepare(R3, models_check=True, migrate=True, collectstatic=True, stdin='{"user": "m", "password": "p"}')
    assert again["changed"] is False and len(fake2.calls) == 1


def test_prepare_in_check_mode_asks_and_writes_nothing(tmp_path, monkeypatch):
    fake = FakeDjango(pending=["core.0003_v2_note"])
    host, rdir = prepared_host(tmp_path, monkeypatch, fake)
    out = host.prepare(R3, models_check=True, migrate=True, collectstatic=True, check=True, stdin="")
    assert out["changed"] and out["migrated"] == ["core.0003_v2_note"] and out["check"]
    assert len(fake.calls) == 1 and not (rdir / "MIGRATIONS.json").exists() and not (rdir / "static").exists()


def test_a_model_change_without_its_migration_refuses_the_release_before_migrating(tmp_path, monkeypatch):
    fake = FakeDjango(pending=["core.0003_v2_note"], models_changed=True)
    host, rdir = prepared_host(tmp_path, monkeypatch, fake)
    with pytest.raises(release.Failed, match=r"models changed without a migration.*0003_note_pinned"):
        host.prepare(R3, models_check=True, migrate=True, collectstatic=True, stdin='{"user": "m", "password": "p"}')
    assert len(fake.calls) == 1 and not (rdir / "MIGRATIONS.json").exists()


def test_a_failed_migration_says_why_and_records_nothing(tmp_path, monkeypatch):
    fake = FakeDjango(pending=["core.0003_v2_note"], fail="migrate")
    host, rdir = prepared_host(tmp_path, monkeypatch, fake)
    with pytest.raises(release.Failed, match=r"migrate \(with the migration user\) failed.*Access denied"):
        host.prepare(R3, migrate=True, stdin='{"user": "m", "password": "p"}')
    assert not (rdir / "MIGRATIONS.json").exists()


def test_prepare_refuses_a_release_that_is_not_installed_and_settings_without_the_env_file(tmp_path, monkeypatch):
    host, _ = prepared_host(tmp_path, monkeypatch, FakeDjango())
    with pytest.raises(release.Refused, match="not installed on this host"):
        host.prepare("9.9.9-0123456789ab")
    host.s["env_file"] = ""
    with pytest.raises(release.Refused, match="env_file and app_user"):
        host.prepare(R3)


def test_prepare_refuses_migrate_without_credentials_end_to_end(tmp_path):
    path = lay_out(tmp_path)
    raw = json.loads(path.read_text())
    raw.update(env_file=str(tmp_path / "app.env"), app_user="root")
    path.write_text(json.dumps(raw))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--settings", str(path), "prepare", R3, "--migrate"],
                          input="", capture_output=True, text=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and out["refused"] and "app_db_migrate_password" in out["error"]


def test_prepare_arguments_are_parsed():
    args = release.parse_args(["prepare", R2, "--models-check", "--migrate", "--collectstatic", "--check"])
    assert (args.command, args.release, args.models_check, args.migrate, args.collectstatic, args.check) == (
        "prepare", R2, True, True, True, True)
    assert release.parse_args(["django-probe", "--pending"]).pending is True
