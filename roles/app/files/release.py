#!/usr/bin/python3
"""The host-side release command: the one switch path of an app host.

    multinotes-release status                 JSON: live release, previous, slots and their state
    multinotes-release switch RELEASE [--slot NAME] [--gate-timeout S] [--check] [--prune]
    multinotes-release prune [--check]
    multinotes-release install RELEASE        its venv (shared by requirements), compiled, marked installed
    multinotes-release prepare RELEASE [--models-check] [--migrate] [--collectstatic] [--check]

`install` finishes a release Ansible has unpacked into <app_root>/releases/<id>/ (src/,
wheelhouse/, requirements.txt): its venv is <app_root>/venvs/<key>, where the key is the
hash of the requirements file and this host's Python, created once with
`pip install --no-index --find-links wheelhouse` and shared, read-only, by every release
with the same requirements (a code-only release installs nothing); releases/<id>/venv
links to it. Then the source is compiled and the release marked installed. A venv left
half-built by an interrupted install is built again. `prune` removes the venvs no remaining
release links to.

`prepare` readies an installed release for its switch, in one call (one Django start for
the questions, one more per thing to do): the migration gate (`--models-check`: a model
change without its migration refuses the release), the migrations (`--migrate`: applied
when the database lacks some, with the migration user's credentials, which come as JSON
on stdin, never on a command line or on disk), the migration state the release needs
recorded in releases/<id>/MIGRATIONS.json (what `rollback_db=migrate` reverses to), and
its static files (`--collectstatic`, once: releases/<id>/static). Django runs as the app
user with the app's env file (root runs collectstatic: the app user may not change what
nginx serves). `--check` asks the same questions and writes nothing.

A web host has two gunicorn slots (blue/green): units <unit>@<slot>.socket/.service, each
running the release its link <app_root>/slots/<slot> points at. `switch` on a web host:

1. refuses bad input before any change (exit 2): a release id that is not installed
   here, a slot that is not one of the two or is the live one, a gate timeout below 1 s;
2. starts the idle slot on the release (a warm slot already on it is reused as it is);
3. gates it on ITS OWN socket: 200 on the health path with "status": "ok" and the
   release's version, before it gets any traffic; then warms it: rounds of as many
   concurrent health checks as the master has workers, so that no worker meets its first
   request (URLconf import, database and Redis connections) from a user. On failure the
   idle slot is stopped, the live slot was never touched, and the command exits 1 naming
   the release and what the gate saw (the last answer, or the slot's last log lines);
4. writes the nginx include naming the slot's socket, tests the whole nginx tree with
   it, renames it into place and reloads nginx (graceful: old workers finish their
   requests, bounded by worker_shutdown_timeout);
5. points `current` (and `previous`) at the releases, records the live slot;
6. waits until every nginx worker that ran before the reload has exited, then stops the
   old slot (gunicorn's graceful stop) - unless warm_previous keeps it running idle, so
   that the next rollback is an nginx switch only.

Switching to the live release is a no-op (exit 0, "changed": false), so the command is
idempotent; it also rewrites the include if it no longer names the live slot. On hosts
without slots (workers, the scheduler) `switch` points `current` at the release and
restarts the Celery units warmly (try-restart: only what runs). Those restarts are queued
with systemd, not waited for: a warm stop lets each running task finish (up to its hard
time limit, minutes), and a rollback must not wait behind the longest task. `status`
shows the units' state.

Settings come from a JSON file the app role templates (--settings). The last line on
stdout is always one JSON object; messages for people go to stderr.
"""
import argparse
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_SETTINGS = "/etc/multinotes/release.json"
# <version>-<12 hex digits of the content hash>, as build_artifact.py names releases.
RELEASE_ID = re.compile(r"^[A-Za-z0-9._+]+(?:-[A-Za-z0-9._+]+)*-[0-9a-f]{12}$")
SLOT_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
INCLUDE_SERVER = re.compile(r"^\s*server\s+unix:(\S+?)(?:\s|;)", re.MULTILINE)
EXIT_REFUSED = 2
EXIT_FAILED = 1
# Rounds of concurrent health checks that warm a fresh slot's workers (see Host.warm).
WARM_ROUNDS = 3


class Refused(Exception):
    """Bad input: nothing was changed."""


class Failed(Exception):
    """The switch did not happen; what was started for it was stopped again."""


# ---------------------------------------------------------------------------- settings

def validate_settings(raw):
    """The settings file's content, checked; returns it with defaults filled in."""
    s = dict(raw)
    problems = []
    for key in ("app_root",):
        if not isinstance(s.get(key), str) or not s[key].startswith("/"):
            problems.append(f"{key} must be an absolute path")
    s.setdefault("web", False)
    s.setdefault("slots", {})
    s.setdefault("warm_previous", False)
    s.setdefault("restart_units", [])
    s.setdefault("keep_releases", 5)
    s.setdefault("gate", {})
    s["gate"] = {"path": "/health/", "host": "localhost", "timeout": 60, **s["gate"]}
    s.setdefault("nginx", {})
    s["nginx"] = {"include": "", "conf_dir": "/etc/nginx", "test_command": [], "unit": "nginx",
                  "worker_shutdown_timeout": 30, **s["nginx"]}
    s.setdefault("gunicorn_unit", "gunicorn")
    s.setdefault("error_log", "")
    # What `prepare` runs Django with: the app's env file, as the app user.
    s.setdefault("env_file", "")
    s.setdefault("app_user", "")
    s.setdefault("app_group", "")
    if s["web"]:
        slots = s["slots"]
        if not isinstance(slots, dict) or len(slots) != 2:
            problems.append("slots must name exactly two slots, each with its socket path")
        else:
            for name, path in slots.items():
                if not SLOT_NAME.match(str(name)):
                    problems.append(f"slot name {name!r} must be lower-case letters and digits")
                if not isinstance(path, str) or not path.startswith("/"):
                    problems.append(f"slot {name}: socket must be an absolute path")
        if not s["nginx"]["include"].startswith(s["nginx"]["conf_dir"].rstrip("/") + "/"):
            problems.append("nginx.include must be a file under nginx.conf_dir")
    try:
        check_gate_timeout(s["gate"]["timeout"])
    except Refused as exc:
        problems.append(str(exc))
    if not isinstance(s["keep_releases"], int) or s["keep_releases"] < 2:
        problems.append("keep_releases must be a whole number of at least 2 (the live release and one to roll back to)")
    if problems:
        raise Refused("invalid settings: " + "; ".join(problems))
    return s


def check_gate_timeout(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise Refused(f"gate timeout {value!r} is not a number of seconds") from None
    if seconds < 1:
        raise Refused(f"gate timeout {value!r} s is below 1 s: a slot cannot answer that fast; give at least 1")
    return seconds


# ------------------------------------------------------------------------ pure logic

def parse_include(text, slots):
    """The slot whose socket the nginx include names, or None."""
    match = INCLUDE_SERVER.search(text or "")
    if not match:
        return None
    for name, path in slots.items():
        if path == match.group(1):
            return name
    return None


def render_include(slot, socket_path):
    return ("# Written by multinotes-release: the live gunicorn slot. Do not edit; run\n"
            "# `multinotes-release switch RELEASE` instead.\n"
            f"# live-slot: {slot}\n"
            f"server unix:{socket_path} fail_timeout=0;\n")


def release_version(env_text, release_id):
    """APP_VERSION from a release's release.env, else the id without its hash."""
    for line in (env_text or "").splitlines():
        if line.startswith("APP_VERSION="):
            return line.split("=", 1)[1].strip()
    return re.sub(r"-[0-9a-f]{12}$", "", release_id)


def evaluate_gate(status, body, version):
    """(ok, what was seen) for one health answer of the slot."""
    if status is None:
        return False, f"no answer ({body})"
    try:
        data = json.loads(body)
    except ValueError:
        return False, f"HTTP {status}, not JSON: {body[:120]!r}"
    if not isinstance(data, dict):
        return False, f"HTTP {status}, unexpected body: {body[:120]!r}"
    seen = f"HTTP {status}, status {data.get('status')!r}, version {data.get('version')!r}"
    if data.get("checks"):
        seen += f", checks {data['checks']}"
    return status == 200 and data.get("status") == "ok" and data.get("version") == version, seen


def choose_slot(state, target, requested=None):
    """The slot that will run `target`: the one that is not live (or the requested one)."""
    slots = list(state["slots"])
    live = state["live_slot"]
    if requested is not None:
        if requested not in slots:
            raise Refused(f"slot {requested!r} is not one of this host's slots ({', '.join(slots)})")
        if requested == live:
            raise Refused(f"slot {requested!r} is the live slot: name the idle one ({other_slot(slots, live)}) or leave --slot out")
        return requested
    if live is None:
        return slots[0]
    return other_slot(slots, live)


def other_slot(slots, slot):
    return next(name for name in slots if name != slot)


def validate_target(state, target):
    check_release_id(target, f" (installed here: {', '.join(state['releases']) or 'none'})")
    if target not in state["releases"]:
        raise Refused(f"release {target} is not installed on this host "
                      f"(installed: {', '.join(state['releases']) or 'none'}); deploy it first")


def plan_switch(state, target, requested_slot=None):
    """What `switch target` does, from the host's state: a dict with `action`
    (noop, heal, switch, relink) and the slots involved. Raises Refused on bad input."""
    validate_target(state, target)
    if not state["web"]:
        if requested_slot is not None:
            raise Refused(f"--slot {requested_slot}: this host has no gunicorn slots (not a web host)")
        return {"action": "noop" if state["current"] == target else "relink", "target": target}
    live = state["live_slot"]
    live_info = state["slots"].get(live) if live else None
    if live_info and live_info["release"] == target and live_info["active"] and requested_slot is None:
        if state["nginx_slot"] not in (None, live) or state["current"] != target:
            return {"action": "heal", "target": target, "slot": live}
        return {"action": "noop", "target": target, "slot": live}
    slot = choose_slot(state, target, requested_slot)
    idle = state["slots"][slot]
    return {"action": "switch", "target": target, "slot": slot, "from_slot": live,
            "from_release": live_info["release"] if live_info else None,
            "reuse": idle["active"] and idle["release"] == target}


def slot_start_failed(props, restarts_before):
    """From `systemctl show`: the slot's master died (failed, or waiting to be restarted)."""
    try:
        restarted = int(props.get("NRestarts") or 0) > int(restarts_before or 0)
    except ValueError:
        restarted = False
    return props.get("ActiveState") == "failed" or props.get("SubState") == "auto-restart" or restarted


def error_lines(lines):
    """The lines of a log tail that name an error (a traceback's last line, gunicorn's [ERROR])."""
    return [line.strip() for line in lines
            if re.search(r"(Error|Exception)(:|\b)|\[ERROR\]", line) and not line.lstrip().startswith("File ")]


def old_workers_left(before, now):
    """PIDs of the nginx workers that ran before the reload and still run."""
    return sorted(set(before) & set(now))


def parse_unit_list(text):
    """`systemctl list-units --plain --no-legend` lines -> {unit: "ACTIVE/SUB"}."""
    units = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and "." in fields[0]:
            units[fields[0]] = f"{fields[2]}/{fields[3]}"
    return units


def check_release_id(release, hint=""):
    """`release` if it is shaped like a release id, else Refused (with `hint` appended)."""
    if not RELEASE_ID.match(release or ""):
        raise Refused(f"{release!r} is not a release id such as 1.4.2-0123456789ab{hint}")
    return release


def venv_key(requirements, python=None):
    """The venv a release's requirements need on this host: requirements bytes + Python."""
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"py{python}-" + hashlib.sha256(requirements + b"\0" + python.encode()).hexdigest()[:16]


def unused_venvs(venvs, links):
    """The venv names no release links to. links: the venv names releases point at."""
    return sorted(set(venvs) - set(links))


def parse_env_file(text):
    """An env file as the app role writes it (systemd EnvironmentFile syntax, KEY="value"
    with backslash and double quote escaped) -> {KEY: value}."""
    env = {}
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1]) if value[0] == '"' else value[1:-1]
        env[key] = value
    return env


def migration_state_text(state):
    """MIGRATIONS.json's content: {app: latest migration}, sorted, as Ansible's to_nice_json."""
    return json.dumps(state, indent=4, sort_keys=True) + "\n"


def migrate_credentials(text):
    """The migration user's credentials from stdin: {"user": ..., "password": ...}."""
    try:
        creds = json.loads(text or "")
    except ValueError:
        creds = None
    if not isinstance(creds, dict) or not creds.get("user") or not creds.get("password"):
        raise Refused("--migrate needs the migration user's credentials on stdin, as JSON: "
                      "{\"user\": ..., \"password\": ...} (the app role's app_db_migrate_user and app_db_migrate_password)")
    return {"DB_USER": str(creds["user"]), "DB_PASSWORD": str(creds["password"])}


def django_probe(models_check, pending):
    """Run by `prepare` in the release's venv, as the app user, in its src/: one Django
    start answers what the release needs. Returns {"state": {app: leaf}} (the migration
    state its code needs), with "models_changed" (the makemigrations gate's verdict and
    what it said) and "pending" (migrations the database lacks) when asked."""
    sys.path.insert(0, os.getcwd())
    import django  # noqa: PLC0415 - only in the release's venv
    django.setup()
    from django.db.migrations.loader import MigrationLoader  # noqa: PLC0415
    out = {"state": dict(sorted(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes()))}
    if models_check:
        from django.core.management import call_command  # noqa: PLC0415
        try:
            call_command("makemigrations", check=True, dry_run=True, stdout=sys.stderr)
            out["models_changed"] = False
        except SystemExit as exc:
            out["models_changed"] = exc.code not in (0, None)
    if pending:
        # What `migrate --check` asks, with its checks: a history the graph contradicts, or
        # two leaves in one app, stop here as they would stop migrate.
        from django.db import connection  # noqa: PLC0415
        from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415
        executor = MigrationExecutor(connection)
        executor.loader.check_consistent_history(connection)
        conflicts = executor.loader.detect_conflicts()
        if conflicts:
            raise SystemExit(f"conflicting migrations (more than one leaf): {conflicts}")
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        out["pending"] = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
    return out


def prune_candidates(releases, protected, keep):
    """Releases to remove: beyond the `keep` newest, never a protected one.
    releases: list of (id, installed_at)."""
    newest_first = [rid for rid, _ in sorted(releases, key=lambda item: item[1], reverse=True)]
    kept = [rid for rid in newest_first if rid in protected]
    removable = [rid for rid in newest_first if rid not in protected]
    room = max(keep - len(kept), 0)
    return removable[room:]


# ------------------------------------------------------------------------ the host

def _run(argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise Failed(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _run_django(argv, cwd, env, user=None, group=None, stdin=None):
    """A process of the release (its venv's Python) as `user` (None: root), with `env` only."""
    kwargs = {"user": user, "group": group, "extra_groups": []} if user else {}
    return subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, check=False, **kwargs)


def _link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _replace_link(path, target):
    """Point the symlink `path` at `target` in one rename (never a moment without it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)


class Host:
    def __init__(self, settings):
        self.s = settings
        self.root = Path(settings["app_root"])
        self.slots_dir = self.root / "slots"

    # -- reading
    def unit(self, slot, kind):
        return f"{self.s['gunicorn_unit']}@{slot}.{kind}"

    def active(self, unit):
        return _run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0

    def installed(self):
        out = []
        releases = self.root / "releases"
        if releases.is_dir():
            for entry in releases.iterdir():
                marker = entry / ".installed"
                if entry.is_dir() and marker.exists():
                    out.append((entry.name, marker.stat().st_mtime))
        return sorted(out, key=lambda item: item[1])

    def nginx_present(self):
        return Path(self.s["nginx"]["conf_dir"]).is_dir()

    def state(self):
        installed = self.installed()
        state = {
            "web": bool(self.s["web"]),
            "current": _link_name(self.root / "current"),
            "previous": _link_name(self.root / "previous"),
            "releases": [rid for rid, _ in installed],
            "installed_at": dict(installed),
            "live_slot": None, "nginx_slot": None, "slots": {},
        }
        if self.s["web"]:
            live = _link_name(self.slots_dir / "live")
            state["live_slot"] = live if live in self.s["slots"] else None
            for name, sock in self.s["slots"].items():
                state["slots"][name] = {"release": _link_name(self.slots_dir / name), "socket": sock,
                                        "active": self.active(self.unit(name, "service"))}
            include = Path(self.s["nginx"]["include"])
            if include.exists():
                state["nginx_slot"] = parse_include(include.read_text(), self.s["slots"])
        return state

    def status(self):
        st = self.state()
        out = {"host": socket.gethostname(), "live": st["current"], "previous": st["previous"],
               "releases": st["releases"]}
        if self.s["restart_units"]:
            out["celery_units"] = self.unit_states(self.s["restart_units"])
        if st["web"]:
            out["live_slot"] = st["live_slot"]
            out["nginx_slot"] = st["nginx_slot"]
            out["slots"] = {
                name: {**info, "state": ("live" if name == st["live_slot"] and info["active"]
                                         else "warm" if info["active"] else "stopped")}
                for name, info in st["slots"].items()}
        return out

    @staticmethod
    def unit_states(patterns):
        """{unit: "active/running" ...} of the loaded units matching the patterns (one call)."""
        out = _run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", *patterns], check=False).stdout
        return parse_unit_list(out)

    # -- gunicorn slots
    def start_slot(self, slot, release):
        for unit in (self.unit(slot, "socket"), self.unit(slot, "service")):
            _run(["systemctl", "stop", unit], check=False)
        _run(["systemctl", "reset-failed", self.unit(slot, "service")], check=False)
        _replace_link(self.slots_dir / slot, f"../releases/{release}")
        _run(["systemctl", "start", self.unit(slot, "socket")])
        # --no-block: the gate below waits, with its own deadline and a reason.
        _run(["systemctl", "start", "--no-block", self.unit(slot, "service")])

    def stop_slot(self, slot):
        _run(["systemctl", "disable", "--quiet", self.unit(slot, "socket"), self.unit(slot, "service")], check=False)
        _run(["systemctl", "stop", self.unit(slot, "socket"), self.unit(slot, "service")], check=False)

    def slot_journal(self, slot, lines=4):
        """The slot's last words: its journal, and the errors in gunicorn's log (with
        capture_output the app's traceback goes there, not to the journal)."""
        out = _run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", self.unit(slot, "service")], check=False)
        said = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        log = Path(self.s["error_log"]) if self.s.get("error_log") else None
        if log and log.is_file():
            with open(log, "rb") as fh:
                fh.seek(max(0, log.stat().st_size - 65536))
                tail = fh.read().decode(errors="replace").splitlines()
            said += error_lines(tail)[-2:]
        return " | ".join(said) or "nothing"

    def slot_unit_state(self, slot, props="ActiveState,SubState,NRestarts"):
        out = _run(["systemctl", "show", "-p", props, self.unit(slot, "service")], check=False).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def ask(self, slot, timeout):
        """One GET of the health path on the slot's own socket: (status, body)."""
        gate = self.s["gate"]
        request = (f"GET {gate['path']} HTTP/1.1\r\nHost: {gate['host']}\r\n"
                   "X-Forwarded-Proto: https\r\nUser-Agent: multinotes-release-gate\r\nConnection: close\r\n\r\n")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.s["slots"][slot])
                sock.sendall(request.encode())
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return None, f"not HTTP: {head[:80]!r}"
        return status, body.decode(errors="replace")

    def gate(self, slot, release, timeout):
        version = self.version_of(release)
        deadline = time.monotonic() + timeout
        seen = "no answer yet"
        restarts = self.slot_unit_state(slot).get("NRestarts", "0")
        while True:
            status, body = self.ask(slot, timeout=max(1.0, min(3.0, deadline - time.monotonic())))
            ok, seen = evaluate_gate(status, body, version)
            if ok:
                return seen
            if slot_start_failed(self.slot_unit_state(slot), restarts):
                raise Failed(f"release {release}: slot {slot} did not start ({seen}); its log: {self.slot_journal(slot)}")
            if time.monotonic() >= deadline:
                raise Failed(f"release {release}: slot {slot} did not answer healthy on version {version} within "
                             f"{timeout:g} s; the gate saw: {seen}; its log: {self.slot_journal(slot)}")
            time.sleep(0.2)

    def slot_workers(self, slot):
        """How many workers the slot's gunicorn master has forked (0 when not known)."""
        pid = self.slot_unit_state(slot, props="MainPID").get("MainPID", "0")
        try:
            return len((Path("/proc") / pid / "task" / pid / "children").read_text().split())
        except OSError:
            return 0

    def warm(self, slot, release, deadline):
        """Each worker of a freshly started slot answers before nginx sends it a user: the
        gate reached one worker, and the others' first request (the URLconf imported, the
        database and Redis connections opened) took 1.5 s in CI on a loaded machine, right at
        the switch. Concurrent requests spread over the workers; WARM_ROUNDS rounds of as
        many as there are workers reach each of them with high probability. Each answer is
        judged as the gate's; returns how many were asked."""
        workers = max(1, self.slot_workers(slot))
        version = self.version_of(release)
        with ThreadPoolExecutor(workers) as pool:
            for _ in range(WARM_ROUNDS):
                answers = list(pool.map(
                    lambda _: self.ask(slot, timeout=max(1.0, deadline - time.monotonic())), range(workers)))
                for status, body in answers:
                    ok, seen = evaluate_gate(status, body, version)
                    if not ok:
                        raise Failed(f"release {release}: slot {slot} passed the gate, then failed under "
                                     f"{workers} concurrent health checks: {seen}; its log: {self.slot_journal(slot)}")
        return workers * WARM_ROUNDS

    def version_of(self, release):
        env = self.root / "releases" / release / "release.env"
        return release_version(env.read_text() if env.exists() else "", release)

    # -- nginx
    def nginx_workers(self):
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "cmdline").read_bytes().startswith(b"nginx: worker process"):
                        pids.append(int(proc.name))
                except OSError:
                    continue
        return pids

    def nginx_point(self, slot):
        """Write, test and install the include naming `slot`, reload nginx; returns the
        PIDs of the workers that ran before (they drain), or None when nginx is absent."""
        ng = self.s["nginx"]
        if not self.nginx_present():
            return None
        include = Path(ng["include"])
        content = render_include(slot, self.s["slots"][slot])
        if ng["test_command"]:
            relative = include.relative_to(ng["conf_dir"])
            with tempfile.TemporaryDirectory(prefix="multinotes-release-") as staged:
                (Path(staged) / relative).parent.mkdir(parents=True, exist_ok=True)
                (Path(staged) / relative).write_text(content)
                test = _run([*ng["test_command"], staged], check=False)
                if test.returncode != 0:
                    raise Failed(f"nginx -t rejected the include for slot {slot}: {(test.stderr or test.stdout).strip()}")
        previous = include.read_text() if include.exists() else None
        self.write_include(include, content)
        if not self.active(ng["unit"]):
            return None
        before = self.nginx_workers()
        reload = _run(["systemctl", "reload", ng["unit"]], check=False)
        if reload.returncode != 0:
            if previous is not None:
                self.write_include(include, previous)
            raise Failed(f"nginx did not reload onto slot {slot} ({(reload.stderr or reload.stdout).strip()}); "
                         "its include was put back")
        return before

    @staticmethod
    def write_include(include, content):
        tmp = include.with_name(f".{include.name}.tmp")
        tmp.write_text(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, include)

    def wait_nginx_drained(self, before):
        """True once every worker from before the reload has exited."""
        deadline = time.monotonic() + float(self.s["nginx"]["worker_shutdown_timeout"]) + 5
        while old_workers_left(before, self.nginx_workers()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # -- celery
    def restart_units(self):
        """Queue a warm restart of the Celery units that run (one systemctl call); returns
        what was queued, for the result."""
        if not self.s["restart_units"]:
            return None
        _run(["systemctl", "--no-block", "try-restart", *self.s["restart_units"]])
        return "queued (warm: running tasks finish on the old release first)"

    # -- commands
    def switch(self, target, requested_slot=None, gate_timeout=None, check=False):
        timeout = check_gate_timeout(gate_timeout if gate_timeout is not None else self.s["gate"]["timeout"])
        state = self.state()
        plan = plan_switch(state, target, requested_slot)
        result = {"changed": plan["action"] != "noop", "action": plan["action"], "release": target,
                  "from": state["current"], "slot": plan.get("slot"), "check": check}
        if check or plan["action"] == "noop":
            return result
        started = time.monotonic()
        if plan["action"] == "relink":
            self.set_links(target, state["current"])
            result["celery_restart"] = self.restart_units()
            result["seconds"] = round(time.monotonic() - started, 2)
            return result
        slot = plan["slot"]
        if plan["action"] == "heal":
            before = self.nginx_point(slot)
            self.set_links(target, state["previous"] if state["current"] == target else state["current"])
            if before:
                self.wait_nginx_drained(before)
            return result
        # switch: the idle slot on the release, gated, before any traffic.
        steps = result["steps"] = {}
        mark = time.monotonic()

        def step(name):
            nonlocal mark
            now = time.monotonic()
            steps[name] = round(now - mark, 2)
            mark = now

        if not plan["reuse"]:
            self.start_slot(slot, target)
        try:
            deadline = time.monotonic() + timeout
            result["gate"] = self.gate(slot, target, timeout)
            step("start_and_gate" if not plan["reuse"] else "gate_warm_slot")
            if not plan["reuse"]:
                result["warmed"] = self.warm(slot, target, deadline)
                step("warm")
            before = self.nginx_point(slot)
            step("nginx_test_and_reload")
        except Failed:
            if not plan["reuse"]:
                self.stop_slot(slot)
            raise
        _replace_link(self.slots_dir / "live", slot)
        self.set_links(target, state["current"])
        units = [self.unit(slot, "socket"), self.unit(slot, "service")]
        # Enabled for the next boot only: --no-reload, since the units are loaded and running
        # (a daemon-reload here, right after the switch, was a CPU burst on a busy host).
        if _run(["systemctl", "is-enabled", "--quiet", *units], check=False).returncode != 0:
            _run(["systemctl", "enable", "--quiet", "--no-reload", *units])
        result["switched_seconds"] = round(time.monotonic() - started, 2)
        result["celery_restart"] = self.restart_units()
        step("links_and_restarts")
        old = plan["from_slot"]
        if old is not None:
            drained = True if before is None else self.wait_nginx_drained(before)
            step("nginx_drain")
            if not drained:
                print(f"warning: nginx workers from before the reload still run after "
                      f"{self.s['nginx']['worker_shutdown_timeout']} s; slot {old} left running", file=sys.stderr)
                result["old_slot"] = "left running (nginx not drained)"
            elif self.s["warm_previous"]:
                result["old_slot"] = "warm"
            else:
                self.stop_slot(old)
                result["old_slot"] = "stopped"
                step("old_slot_stop")
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    def set_links(self, target, previous):
        _replace_link(self.root / "current", f"releases/{target}")
        if previous and previous != target:
            _replace_link(self.root / "previous", f"releases/{previous}")

    # -- installing
    def install(self, release, check=False):
        release = check_release_id(release)
        rdir = self.root / "releases" / release
        if (rdir / ".installed").exists():
            return {"changed": False, "release": release, "check": check}
        if not (rdir / "requirements.txt").is_file() or not (rdir / "src").is_dir():
            raise Refused(f"{rdir} is not an unpacked release (no requirements.txt or src/)")
        key = venv_key((rdir / "requirements.txt").read_bytes())
        venv = self.root / "venvs" / key
        result = {"changed": True, "release": release, "venv": key, "check": check,
                  "venv_reused": (venv / ".complete").exists()}
        if check:
            return result
        started = time.monotonic()
        if not result["venv_reused"]:
            if venv.exists():
                shutil.rmtree(venv)  # half-built by an interrupted install
            venv.parent.mkdir(mode=0o755, exist_ok=True)
            _run([sys.executable, "-m", "venv", str(venv)])
            _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
                  f"--find-links={rdir / 'wheelhouse'}", f"--requirement={rdir / 'requirements.txt'}"])
            (venv / ".complete").write_text(f"{release}\n")
        link = rdir / "venv"
        if link.is_symlink() or not link.exists():
            _replace_link(link, f"../../venvs/{key}")
        _run([str(link / "bin" / "python"), "-m", "compileall", "-q", str(rdir / "src")])
        (rdir / ".installed").write_text(f"{release}\n")
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    def django_env(self, rdir, home):
        """What Django runs with: the app's env file (what the services read) and the
        release's own release.env, nothing inherited from the caller."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": home}
        for path in (Path(self.s["env_file"]), rdir / "release.env"):
            if path.is_file():
                env.update(parse_env_file(path.read_text()))
        return env

    def prepare(self, release, models_check=False, migrate=False, collectstatic=False, check=False, stdin=""):
        release = check_release_id(release)
        rdir = self.root / "releases" / release
        if not (rdir / ".installed").exists():
            raise Refused(f"release {release} is not installed on this host; install it first")
        if not self.s["env_file"] or not self.s["app_user"]:
            raise Refused("the settings name no env_file and app_user: prepare runs Django with them")
        creds = migrate_credentials(stdin) if migrate and not check else None
        try:
            home = pwd.getpwnam(self.s["app_user"]).pw_dir
        except KeyError:
            raise Refused(f"the app user {self.s['app_user']!r} does not exist on this host") from None
        env = self.django_env(rdir, home)
        python, src = str(rdir / "venv" / "bin" / "python"), str(rdir / "src")
        as_app = {"user": self.s["app_user"], "group": self.s["app_group"] or self.s["app_user"]}
        result = {"changed": False, "release": release, "check": check, "migrated": [], "steps": {}}
        started = mark = time.monotonic()

        def step(name):
            nonlocal mark
            now = time.monotonic()
            result["steps"][name] = round(now - mark, 2)
            mark = now

        def django(argv, what, extra_env=None, user=True, stdin=None):
            proc = _run_django([python, *argv], src, {**env, **(extra_env or {})}, stdin=stdin, **(as_app if user else {}))
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                said = error_lines(lines)[-3:] or [line.strip() for line in lines[-5:]]
                raise Failed(f"release {release}: {what} failed (exit {proc.returncode}): {' | '.join(said)}")
            return proc

        probe = ["--settings", "-", "django-probe"] + (["--models-check"] if models_check else []) + (["--pending"] if migrate else [])
        out = django([os.path.realpath(__file__), *probe], "reading its migrations")
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        step("probe")
        if answer.get("models_changed"):
            raise Failed(f"release {release}: its models changed without a migration (makemigrations --check): "
                         + " | ".join(out.stderr.strip().splitlines()[-12:]))
        if answer.get("pending"):
            result["changed"] = True
            result["migrated"] = answer["pending"]
            if not check:
                django(["manage.py", "migrate", "--noinput"], "migrate (with the migration user)", extra_env=creds)
                step("migrate")
        record = rdir / "MIGRATIONS.json"
        text = migration_state_text(answer["state"])
        if not record.is_file() or record.read_text() != text:
            result["changed"] = result["migration_state_written"] = True
            if not check:
                tmp = record.with_name(f".{record.name}.tmp")
                tmp.write_text(text)
                os.chmod(tmp, 0o644)
                os.replace(tmp, record)
        if collectstatic and not (rdir / "static" / "staticfiles.json").exists():
            result["changed"] = result["static_collected"] = True
            if not check:
                django(["manage.py", "collectstatic", "--noinput"], "collectstatic",
                       extra_env={"STATIC_ROOT": str(rdir / "static"), "HOME": "/root"}, user=False)
                step("collectstatic")
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    def prune(self, check=False):
        state = self.state()
        protected = {state["current"], state["previous"]} | {i["release"] for i in state["slots"].values()}
        protected.discard(None)
        remove = prune_candidates(list(state["installed_at"].items()), protected, self.s["keep_releases"])
        if not check:
            for rid in remove:
                shutil.rmtree(self.root / "releases" / rid)
                artifact = self.root / "artifacts" / f"{rid}.tar.gz"
                if artifact.exists():
                    artifact.unlink()
        venvs_dir = self.root / "venvs"
        venvs = [v.name for v in venvs_dir.iterdir() if v.is_dir()] if venvs_dir.is_dir() else []
        links = [_link_name(r / "venv") for r in (self.root / "releases").iterdir()
                 if r.name not in remove] if (self.root / "releases").is_dir() else []
        unused = unused_venvs(venvs, [name for name in links if name])
        if not check:
            for name in unused:
                shutil.rmtree(venvs_dir / name)
        return {"changed": bool(remove or unused), "removed": remove, "venvs_removed": unused, "check": check}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="multinotes-release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="JSON: live release, previous, slots and their state")
    sw = sub.add_parser("switch", help="switch this host to an installed release, gated")
    sw.add_argument("release")
    sw.add_argument("--slot", help="the idle slot to start it in (default: the one that is not live)")
    sw.add_argument("--gate-timeout", type=float, help="seconds the slot may take to answer healthy (at least 1)")
    sw.add_argument("--check", action="store_true", help="say what would change, change nothing")
    sw.add_argument("--prune", action="store_true", help="then remove releases beyond keep_releases")
    pr = sub.add_parser("prune", help="remove releases beyond keep_releases")
    pr.add_argument("--check", action="store_true")
    ins = sub.add_parser("install", help="finish an unpacked release: its (shared) venv, compiled, marked installed")
    ins.add_argument("release")
    ins.add_argument("--check", action="store_true")
    pre = sub.add_parser("prepare", help="ready an installed release: migration gate, migrations, their state, static files")
    pre.add_argument("release")
    pre.add_argument("--models-check", action="store_true", help="refuse model changes without their migration")
    pre.add_argument("--migrate", action="store_true",
                     help="apply what the database lacks; the migration user's credentials as JSON on stdin")
    pre.add_argument("--collectstatic", action="store_true", help="collect the static files into the release (once)")
    pre.add_argument("--check", action="store_true", help="ask, change nothing")
    probe = sub.add_parser("django-probe", help=argparse.SUPPRESS)
    probe.add_argument("--models-check", action="store_true")
    probe.add_argument("--pending", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "django-probe":
        # In the release's venv, as the app user (see prepare): no settings, Django only.
        print(json.dumps(django_probe(args.models_check, args.pending), sort_keys=True))
        return 0
    try:
        with open(args.settings, encoding="utf-8") as fh:
            settings = validate_settings(json.load(fh))
        host = Host(settings)
        if args.command == "status":
            result = host.status()
        elif args.command == "switch":
            result = host.switch(args.release, args.slot, args.gate_timeout, args.check)
            if args.prune:
                result["pruned"] = host.prune(args.check)["removed"]
                result["changed"] = result["changed"] or bool(result["pruned"])
        elif args.command == "install":
            result = host.install(args.release, args.check)
        elif args.command == "prepare":
            stdin = sys.stdin.read() if args.migrate and not args.check else ""
            result = host.prepare(args.release, args.models_check, args.migrate, args.collectstatic, args.check, stdin)
        else:
            result = host.prune(args.check)
    except Refused as exc:
        print(f"refused, nothing was changed: {exc}", file=sys.stderr)
        print(json.dumps({"changed": False, "failed": True, "refused": True, "error": f"refused, nothing was changed: {exc}"}))
        return EXIT_REFUSED
    except Failed as exc:
        message = f"{exc}. The live slot was not touched; nothing was switched."
        if args.command == "prepare":
            message = f"{exc}. Nothing was switched: the live release keeps serving."
        print(message, file=sys.stderr)
        print(json.dumps({"changed": False, "failed": True, "error": message}))
        return EXIT_FAILED
    except OSError as exc:
        print(json.dumps({"changed": False, "failed": True, "error": f"{type(exc).__name__}: {exc}"}))
        return EXIT_FAILED
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
