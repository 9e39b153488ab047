"""The backup role, by behaviour: a real S3 server (rclone serve s3 on ops-s3, credentials
enforced), real MariaDB and Redis, the real operator playbooks, a webhook receiver."""

import contextlib
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import testlib

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
HOSTS = ["ops-12", "ops-13"]
BUCKET_DIR = "/srv/s3/multinotesai-backups"
ALERTS = "/var/log/ops-webhook.jsonl"


def secret(name):
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets" / name
    return path.read_text().split()[0]


@pytest.fixture(scope="module")
def s3():
    return testlib.host("ops-s3")


@pytest.fixture(scope="module")
def hosts():
    return {name: testlib.host(name) for name in HOSTS}


@pytest.fixture(scope="module")
def identity(s3):
    return s3.check_output("grep AGE-SECRET-KEY /root/backup-test.key")


def prefix_dir(name, store="mariadb", db="multinotes"):
    return f"{BUCKET_DIR}/molecule/{name}/{store}/{db}"


def objects(s3, directory):
    out = s3.run("ls -1 %s", directory).stdout.split()
    return sorted(out)


def alerts(s3):
    return [json.loads(line) for line in s3.run("cat %s", ALERTS).stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def backed_up(hosts, s3):
    """One run of playbooks/backup.yml on each host, as an operator would run it."""
    results = {}
    for name in HOSTS:
        rc, out, recap = testlib.run_playbook(PROJECT / "playbooks/backup.yml", limit=name)
        results[name] = (rc, out, recap)
    return results


def mariadb_facts(h, database):
    rows = {}
    tables = h.check_output(
        "mariadb -N -B -e \"SELECT table_name FROM information_schema.tables WHERE table_schema='%s' "
        "AND table_type='BASE TABLE' ORDER BY 1\"" % database).split()
    for table in tables:
        count = h.check_output("mariadb -N -B -e 'SELECT COUNT(*) FROM `%s`.`%s`'" % (database, table))
        checksum = h.check_output("mariadb -N -B -e 'CHECKSUM TABLE `%s`.`%s`'" % (database, table)).split()[1]
        rows[table] = (int(count), checksum)
    return rows


@pytest.mark.parametrize("name", HOSTS)
def test_backup_playbook_uploads_encrypted_dump_manifest_and_pointer(backed_up, s3, name):
    rc, out, _ = backed_up[name]
    assert rc == 0, out
    listing = objects(s3, prefix_dir(name))
    data = [f for f in listing if f.endswith(".sql.zst.age")]
    assert data and "latest.json" in listing, listing
    latest = json.loads(s3.check_output("cat %s/latest.json", prefix_dir(name)))
    manifest = json.loads(s3.check_output("cat %s/%s.manifest.json", prefix_dir(name), latest["stamp"]))
    assert manifest["tables"]["notes"]["rows"] == 5001
    assert manifest["tables"]["tags"]["rows"] == 3000
    # The manifest's sha256 and size are the stored object's.
    path = f"{prefix_dir(name)}/{latest['stamp']}.sql.zst.age"
    assert s3.check_output("sha256sum %s", path).split()[0] == manifest["sha256"]
    assert int(s3.check_output("stat -c %%s %s", path)) == manifest["size"]


@pytest.mark.parametrize("name", HOSTS)
def test_object_is_unreadable_without_the_key(backed_up, s3, name):
    latest = json.loads(s3.check_output("cat %s/latest.json", prefix_dir(name)))
    path = f"{prefix_dir(name)}/{latest['stamp']}.sql.zst.age"
    assert s3.check_output("head -c 21 %s", path) == "age-encryption.org/v1"
    assert s3.run("zstd -t %s", path).rc != 0
    s3.check_output("age-keygen -o /tmp/other.key 2>/dev/null || true")
    wrong = s3.run("age -d -i /tmp/other.key %s", path)
    assert wrong.rc != 0 and "no identity matched" in wrong.stderr, wrong.stderr
    # With the operator's key it decrypts to a zstd stream of the SQL dump.
    plain = s3.check_output("age -d -i /root/backup-test.key %s | zstd -d | grep -c 'INSERT INTO `notes`'", path)
    assert int(plain) >= 1


@pytest.mark.parametrize("name", HOSTS)
def test_drill_restores_identical_rows_and_checksums(backed_up, hosts, identity, name):
    h = hosts[name]
    rc, out, recap = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit=name,
                                          extra_vars={"backup_restore_identity": identity})
    assert rc == 0, out
    drill = json.loads(h.check_output("cat /var/lib/multinotes-backup/last-drill.json"))
    assert drill["result"] == "pass" and drill["target"] == "multinotes_drill", drill
    assert mariadb_facts(h, "multinotes_drill") == mariadb_facts(h, "multinotes")
    # Routines, triggers and events came along.
    assert "note_count" in h.check_output("mariadb -N -e 'SHOW PROCEDURE STATUS WHERE Db=\"multinotes_drill\"'")
    assert "notes_audit" in h.check_output("mariadb -N -e 'SHOW TRIGGERS FROM multinotes_drill'")
    assert "nightly" in h.check_output("mariadb -N -e 'SHOW EVENTS FROM multinotes_drill'")
    # The private key did not stay on the host.
    assert h.run("ls /run | grep -c multinotes-restore").stdout.strip() == "0"
    # The binary log is shipped here: a drill of the dump alone does not prove point-in-time
    # recovery, and the launch check's item says so.
    check = h.run("multinotes-backup check-drill")
    assert check.rc == 1 and "not to a point in time" in check.stdout, check.stdout + check.stderr


def backup_program():
    spec = importlib.util.spec_from_file_location("multinotes_backup", PROJECT / "roles/backup/files/multinotes-backup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", HOSTS)
def test_the_row_digest_tells_apart_rows_that_read_alike(hosts, name):
    """The manifest's rows-crc32 digest, run by the real server: rows whose values would
    read as the same text (a NULL or an empty string, a comma inside a value or between two)
    get different digests; binary, accented and time values are summed without an error."""
    digest = backup_program().rows_crc32_sql("multinotes", "digest_probe", ["a", "b", "c", "d"])
    rows = ["'a', NULL", "NULL, 'a'", "'a,b', 'c'", "'a', 'b,c'", "'', NULL", "NULL, ''", "'a', ''"]
    h = hosts[name]
    sql = ("SET SESSION sql_log_bin=0; DROP TABLE IF EXISTS digest_probe; CREATE TABLE digest_probe "
           "(a VARCHAR(10) NULL, b VARCHAR(10) NULL, c VARBINARY(10) NULL, d DATETIME(3) NULL); ")
    for values in rows:
        sql += (f"DELETE FROM digest_probe; INSERT INTO digest_probe VALUES ({values}, 0xff00, "
                f"'2026-12-05 07:00:00.123'); {digest}; ")
    sql += "DROP TABLE digest_probe"
    out = h.check_output("mariadb -N -B multinotes -e %s", sql).splitlines()
    digests = [line.split("\t")[1] for line in out]
    assert len(digests) == len(rows) and len(set(digests)) == len(rows), dict(zip(rows, digests))


@pytest.mark.parametrize("name", HOSTS)
def test_mariadb_runs_sandboxed_while_it_is_dumped_and_restored(backed_up, hosts, name):
    """The server every test here dumps and restores runs in the mariadb role's sandbox drop-in:
    systemd-analyze security at most 4.9 (Debian's unit alone: 8.6), /etc read-only to it,
    a /tmp of its own, no capability but CAP_IPC_LOCK."""
    h = hosts[name]
    exposure, out = testlib.exposure(h, "mariadb.service")
    print(f"systemd-analyze security mariadb.service on {name}: {exposure}")
    assert exposure <= 4.9, out
    assert h.file("/etc/systemd/system/mariadb.service.d/multinotes-sandbox.conf").exists
    # The server's own view: it cannot write /etc (errno 30), and its /tmp is its own.
    out = h.run("mariadb -e \"SELECT 1 INTO OUTFILE '/etc/mysql/sandbox-probe'\"")
    assert out.rc != 0 and 'Errcode: 30 "Read-only file system"' in out.stderr, out.stderr
    probe = f"/tmp/sandbox-probe-{int(dt.datetime.now().timestamp())}"
    h.check_output("mariadb -e \"SELECT 1 INTO OUTFILE '%s'\"", probe)
    assert not h.file(probe).exists, "mariadbd writes the host's /tmp"
    pid = h.check_output("systemctl show -p MainPID --value mariadb")
    bounding = int(h.check_output("awk '/^CapBnd:/ {print $2}' /proc/%s/status", pid), 16)
    assert bounding & ~(1 << 14) == 0, hex(bounding)  # CAP_IPC_LOCK at most


def test_restore_over_live_database_needs_confirmation(backed_up, identity):
    rc, out, recap = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-12", extra_vars={
        "backup_restore_identity": identity, "backup_restore_target": "multinotes"})
    assert rc != 0, out
    assert "backup_restore_confirm_live" in out
    assert recap["ops-12"]["changed"] == 0, out


@pytest.mark.parametrize("name", HOSTS)
def test_redis_snapshot_restores_into_a_fresh_instance(backed_up, hosts, identity, name):
    h = hosts[name]
    rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit=name, extra_vars={
        "backup_restore_identity": identity, "backup_restore_store": "redis",
        "backup_restore_redis_output": "/var/lib/multinotes-backup/restore/dump.rdb"})
    assert rc == 0, out
    h.run("systemctl stop ops-fresh-redis; systemctl reset-failed ops-fresh-redis")
    h.check_output("systemd-run --unit=ops-fresh-redis redis-server --port 6390 --bind 127.0.0.1 "
                   "--dir /var/lib/multinotes-backup/restore --dbfilename dump.rdb --save ''")
    try:
        h.check_output("for i in $(seq 50); do redis-cli -p 6390 ping 2>/dev/null | grep -q PONG && exit 0; sleep 0.2; done; exit 1")
        assert h.check_output("redis-cli -p 6390 GET ops:greeting") == "hello"
        assert h.check_output("redis-cli -p 6390 HGET ops:user:1 plan") == "pro"
        assert h.check_output("redis-cli -p 6390 LRANGE ops:queue 0 -1").split() == ["a", "b", "c"]
    finally:
        h.run("systemctl stop ops-fresh-redis")


def stamp(days_ago, hour=10, base=None):
    day = (base or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=days_ago)
    return day.replace(hour=hour, minute=0, second=0, microsecond=0).strftime("%Y%m%dT%H%M%SZ")


S3_PUT = """
import json, sys
import boto3
from botocore.config import Config
s3 = json.load(open("/etc/multinotes-backup/config.json"))["s3"]
c = boto3.client("s3", endpoint_url=s3["endpoint"], region_name=s3["region"], aws_access_key_id=s3["access_key"],
                 aws_secret_access_key=s3["secret_key"], config=Config(s3={"addressing_style": "path"}))
for key in sys.argv[1:]:
    c.put_object(Bucket=s3["bucket"], Key=key, Body=b"seeded")
"""


def s3_put(h, keys):
    """Seed objects through the S3 API, as another run would have left them."""
    h.check_output("AWS_REQUEST_CHECKSUM_CALCULATION=when_required python3 -c %s " + " ".join(["%s"] * len(keys)),
                   S3_PUT, *keys)


def test_retention_deletes_exactly_what_is_outside_the_policy(hosts, s3):
    today = dt.datetime.now(dt.timezone.utc)
    monday = today - dt.timedelta(days=today.weekday())  # this week's Monday
    keep = [stamp(1), stamp(10), stamp(29),
            # weeks 6 and 8 back: only the newest of each week stays
            stamp(0, 10, monday - dt.timedelta(days=40)), stamp(0, 10, monday - dt.timedelta(days=54))]
    drop = [stamp(0, 10, monday - dt.timedelta(days=42)),  # Monday of week 6 back: older than its Wednesday
            stamp(0, 8, monday - dt.timedelta(days=40)),   # same Wednesday, earlier hour
            stamp(100), stamp(200)]
    directory = prefix_dir("ops-12", db="retentiontest")
    key = "molecule/ops-12/mariadb/retentiontest/"
    s3_put(hosts["ops-12"], [key + st + ext for st in keep + drop for ext in (".sql.zst.age", ".manifest.json")]
           # A run that never finished (no manifest) days ago: cleaned up as well.
           + [key + stamp(3) + ".sql.zst.age"])
    result = hosts["ops-12"].run("multinotes-backup prune mariadb retentiontest")
    assert result.rc == 0, result.stderr
    left = {f.split(".")[0] for f in objects(s3, directory)}
    assert left == set(keep), f"kept {sorted(left)}, expected {sorted(keep)}\n{result.stderr}"


def multipart_uploads(h, config, bucket):
    """The multipart uploads in progress in `bucket`, asked through the backup program's own
    S3 client (its endpoint, credentials and settings)."""
    return json.loads(h.check_output(
        "python3 -c %s %s %s", MULTIPART_LIST, config, bucket))


MULTIPART_LIST = """
import importlib.machinery, importlib.util, json, sys
loader = importlib.machinery.SourceFileLoader("backup", "/usr/local/sbin/multinotes-backup")
spec = importlib.util.spec_from_loader("backup", loader)
backup = importlib.util.module_from_spec(spec)
loader.exec_module(backup)
client = backup.s3_client(json.load(open(sys.argv[1])))
print(json.dumps([u["Key"] for u in client.list_multipart_uploads(Bucket=sys.argv[2]).get("Uploads", [])]))
"""


def bad_config(h, path, **changes):
    cfg = json.loads(h.check_output("cat /etc/multinotes-backup/config.json"))
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    h.check_output("install -m 0600 /dev/null %s", path)
    h.check_output("python3 -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' %s %s", path, json.dumps(cfg))
    return path


FAILING_DUMP = "#!/bin/sh\n# emits 80 MB (a multipart upload starts), then fails like a dump that lost its server\nhead -c 83886080 /dev/urandom\necho 'mysqldump: Error 2013: Lost connection' >&2\nexit 2\n"


@pytest.mark.parametrize("case,changes,expect", [
    ("wrong-credentials", {"s3__secret_key": "not-the-secret"}, "SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId|403"),  # pragma: allowlist secret
    ("unreachable-endpoint", {"s3__endpoint": "http://127.0.0.1:9"}, "Could not connect|Connection refused|EndpointConnectionError"),
    ("failing-dump", {"mariadb__dump_command": "/usr/local/bin/ops-failing-dump"}, "Lost connection"),
    # The S3 server's disk (a 2 MiB tmpfs) fills during the multipart upload of an 80 MiB dump:
    # the server drops the connection, so the client's error is the failed upload; the server's
    # journal says why (checked below).
    ("full-disk", {"s3__bucket": "ops-full", "mariadb__dump_command": "/usr/local/bin/ops-big-dump"},
     r"upload of \S+\.sql\.zst\.age failed"),
])
def test_failure_alerts_and_leaves_no_trace(backed_up, hosts, s3, case, changes, expect):
    import re

    h = hosts["ops-12"]
    h.check_output("printf '%%s' %s > /usr/local/bin/ops-failing-dump && chmod 0755 /usr/local/bin/ops-failing-dump",
                   FAILING_DUMP.replace("'", ""))
    h.check_output("printf '#!/bin/sh\\nhead -c 83886080 /dev/urandom\\n' > /usr/local/bin/ops-big-dump && "
                   "chmod 0755 /usr/local/bin/ops-big-dump")
    config = bad_config(h, f"/etc/multinotes-backup/{case}.json", **changes)
    before = objects(s3, prefix_dir("ops-12"))
    latest_before = s3.check_output("cat %s/latest.json", prefix_dir("ops-12"))
    alerts_before = len(alerts(s3))
    since = s3.check_output("date +%s")
    try:
        result = h.run("MULTINOTES_BACKUP_CONFIG=%s multinotes-backup mariadb", config)
    finally:
        h.run("rm -f %s", config)
    assert result.rc != 0, result.stderr
    assert re.search(expect, result.stderr), result.stderr
    new = alerts(s3)[alerts_before:]
    assert len(new) == 1 and new[0]["check"] == "backup-mariadb" and new[0]["host"] == "ops-12", new
    # Previous backups and the latest pointer are untouched, nothing partial was left.
    assert objects(s3, prefix_dir("ops-12")) == before
    assert s3.check_output("cat %s/latest.json", prefix_dir("ops-12")) == latest_before
    assert s3.run("find /srv/s3/ops-full -type f").stdout.strip() == ""
    if case == "full-disk":
        journal = s3.check_output("journalctl -u ops-s3 --since @%s --no-pager", since)
        assert "no space left on device" in journal, journal[-2000:]
        # The aborted multipart upload is gone from the server too, not just its parts' files.
        assert multipart_uploads(h, "/etc/multinotes-backup/config.json", "ops-full") == []


@contextlib.contextmanager
def lock_held(h, store, seconds):
    """Another run (a unit of its own, as cron's is) holding STORE's lock for SECONDS."""
    lock = f"/run/lock/multinotes-backup-{store}.lock"
    h.check_output("systemd-run --unit=ops-hold-lock-%s flock %s sleep %s", store, lock, str(seconds))
    try:
        # Until the unit really holds the lock (flock -n fails), at most 10 s: no fixed sleep.
        h.check_output("for i in $(seq 100); do flock -n %s true || exit 0; sleep 0.1; done; exit 1", lock)
        yield lock
    finally:
        h.run("systemctl stop ops-hold-lock-%s", store)


def test_overlapping_run_exits_and_alerts(backed_up, hosts, s3):
    h = hosts["ops-12"]
    with lock_held(h, "mariadb", 60):
        before = len(alerts(s3))
        result = h.run("multinotes-backup mariadb")
        assert result.rc != 0 and "another run holds" in result.stderr, result.stderr
        assert len(alerts(s3)) == before + 1
        # The operator's playbook says why in its own failure, not only where to look.
        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/backup.yml", limit="ops-12")
        assert rc != 0 and "another run holds /run/lock/multinotes-backup-mariadb.lock" in out, out[-3000:]


def test_the_nightly_run_waits_for_crons_binlog_shipping_in_the_same_second(backed_up, paused_cron, hosts, s3):
    """cron's `binlogs` (every 2 minutes) and the nightly `all` start in the same second
    whenever their minutes meet: `all` waits for the shipping run to end, then ships, and
    nothing alerts. (It used to exit "another run holds" and fail the night's backup.)"""
    h = hosts["ops-12"]
    before = len(alerts(s3))
    # Held longer than the dump before the shipping takes, so the shipping finds it held.
    with lock_held(h, "binlog", 20):
        result = h.run("multinotes-backup all")
    assert result.rc == 0, result.stderr
    assert "multinotes-backup-binlog.lock; waiting up to 600 s" in result.stderr, result.stderr
    assert "binlog: every commit up to" in result.stderr, result.stderr
    assert alerts(s3)[before:] == []


@pytest.mark.parametrize("name", HOSTS)
def test_freshness_check_passes_after_a_backup_and_alerts_when_stale(backed_up, hosts, s3, name):
    h = hosts[name]
    fresh = h.run("multinotes-backup check-freshness")
    assert fresh.rc == 0, fresh.stderr
    stale = f"molecule/stale-{name}/mariadb/multinotes/{stamp(2)}"
    s3_put(h, [stale + ".sql.zst.age", stale + ".manifest.json"])
    config = bad_config(h, "/etc/multinotes-backup/stale.json", s3__prefix=f"molecule/stale-{name}",
                        redis__enabled=False)
    before = len(alerts(s3))
    result = h.run("MULTINOTES_BACKUP_CONFIG=%s multinotes-backup check-freshness", config)
    assert result.rc != 0 and f"newest backup {stamp(2)} is older than" in result.stderr, result.stderr
    new = alerts(s3)[before:]
    assert [a["check"] for a in new] == ["check-freshness"], new


@pytest.mark.parametrize("days,alerted", [(10, True), (90, False)])
def test_certificate_expiry_check(hosts, s3, days, alerted):
    h = hosts["ops-13"]
    h.check_output("rm -rf /etc/ssl/ops-test && mkdir -p /etc/ssl/ops-test")
    h.check_output("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null "
                   "-out /etc/ssl/ops-test/site.pem -days %s -subj /CN=ops.test 2>/dev/null", str(days))
    before = len(alerts(s3))
    result = h.run("multinotes-backup check-certs")
    assert (result.rc != 0) is alerted, result.stderr
    new = alerts(s3)[before:]
    assert [a["check"] for a in new] == (["check-certs"] if alerted else []), new


def cron_entries(h):
    """(environment, {command: schedule}) of /etc/cron.d/multinotes-backup, read as cron reads it."""
    env, entries = {}, {}
    for line in h.file("/etc/cron.d/multinotes-backup").content_string.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        head = line.split()[0]
        if "=" in head:
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
            continue
        fields = line.split(None, 6)
        assert fields[5] == "root", line
        entries[fields[6]] = " ".join(fields[:5])
    return env, entries


@pytest.mark.parametrize("name", HOSTS)
@pytest.mark.parametrize("job", ["all", "check-freshness", "binlogs", "base"])
def test_cron_line_runs_in_crons_own_environment(backed_up, hosts, s3, name, job):
    """The cron line itself, run as cron runs it: the file's variables and HOME/LOGNAME only,
    no terminal, no inherited PATH. `all` writes a new backup (a new stamp in latest.json);
    each job logs to the journal under its tag."""
    h = hosts[name]
    testlib.assert_active(h, "cron")
    cron = h.file("/etc/cron.d/multinotes-backup")
    assert (cron.user, cron.mode) == ("root", 0o644)
    assert (h.file("/etc/multinotes-backup/config.json").user, h.file("/etc/multinotes-backup/config.json").mode) == ("root", 0o600)
    env, entries = cron_entries(h)
    command = next(c for c in entries if c.endswith(f"/usr/local/sbin/multinotes-backup {job}"))
    latest = s3.check_output("cat %s/latest.json", prefix_dir(name))
    cursor = h.check_output("journalctl -n 0 --show-cursor --no-pager").split("cursor: ")[-1].strip()
    cron_env = [f"{k}={v}" for k, v in env.items()] + ["HOME=/root", "LOGNAME=root"]
    result = h.run("setsid env -i " + " ".join(["%s"] * len(cron_env)) + " /bin/sh -c %s < /dev/null",
                   *cron_env, command)
    assert result.rc == 0, result.stdout + result.stderr
    h.check_output("journalctl --flush")
    logged = h.check_output("journalctl -t multinotes-backup --after-cursor %s --no-pager -o cat", cursor)
    assert logged.strip(), f"{job} from cron logged nothing to the journal"
    if job == "all":
        assert s3.check_output("cat %s/latest.json", prefix_dir(name)) != latest, "no new backup from the cron line"


def test_backup_logs_reach_the_journal(backed_up, hosts):
    h = hosts["ops-12"]
    h.check_output("journalctl --flush")
    assert "uploaded s3://" in h.check_output("journalctl -t multinotes-backup --no-pager -n 50")


@pytest.mark.parametrize("bad_vars,named", [
    ({"backup_age_recipients": ["not-a-key"]}, "backup_age_recipients"),
    ({"backup_s3_endpoint": "ftp://ops-s3"}, "backup_s3_endpoint"),
    ({"backup_retention_weekly_days": 7}, "backup_retention_weekly_days"),
    ({"backup_compress_tool": "xz"}, "backup_compress_tool"),
    ({"backup_mariadb_databases": ["multi notes"]}, "backup_mariadb_databases"),
    ({"backup_cron_schedule": "daily"}, "backup_cron_schedule"),
])
def test_bad_input_fails_before_any_change(bad_vars, named):
    testlib.assert_refused_before_any_change(SCENARIO / "converge.yml", limit="ops-12",
                                                   extra_vars=bad_vars, named=named)


@pytest.fixture
def paused_cron(hosts):
    """cron's own binary log shipping (every 2 minutes) ships what a test's run by hand would
    (and a run by hand waits for it): tests that count what they ship pause cron on the hosts
    and wait for a run in progress to end first."""
    for h in hosts.values():
        h.check_output("systemctl stop cron && flock -w 120 /run/lock/multinotes-backup-binlog.lock true")
    try:
        yield
    finally:
        for h in hosts.values():
            h.run("systemctl start cron")


def create_writes_table(h, table):
    """A table in multinotes for a writer: each row carries the time of its own commit."""
    h.check_output("mariadb multinotes -e %s", f"DROP TABLE IF EXISTS {table}; "
                   f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL)")


@contextlib.contextmanager
def writer(h, table, pause=None):
    """A writer committing one row at a time into multinotes.TABLE (PAUSE seconds between
    commits, none by default) as its own systemd unit, from the block's start to its end.
    Yields the unit's name."""
    unit = f"ops-writer-{table}"
    step = f" sleep {pause};" if pause else ""
    h.check_output("systemd-run --unit=%s sh -c %s", unit,
                   f"while :; do mariadb multinotes -e 'INSERT INTO {table} (at) VALUES (NOW(6))' || exit 1;{step} done")
    try:
        yield unit
    finally:
        h.run("systemctl stop %s", unit)


def test_a_backup_taken_during_writes_restores_to_its_manifest(backed_up, hosts, s3, identity):
    """A writer commits every few milliseconds through the whole backup (as Celery beat's
    heartbeat does on the stack): the manifest is from the dump's own moment, so the drill of
    that backup matches it exactly, and the writer is held only for an instant."""
    h = hosts["ops-12"]
    create_writes_table(h, "ops_writes")
    created_at = h.check_output("mariadb -N -e 'SELECT @@GLOBAL.gtid_binlog_pos'")
    with writer(h, "ops_writes") as unit:
        h.check_output("for i in $(seq 100); do [ \"$(mariadb -N multinotes -e 'SELECT COUNT(*) FROM ops_writes')\" "
                       "-gt 20 ] && exit 0; sleep 0.1; done; exit 1")
        started = h.check_output("mariadb -N -e 'SELECT NOW(6)'")
        backup = h.run("multinotes-backup mariadb")
        ended = h.check_output("mariadb -N -e 'SELECT NOW(6)'")
        assert backup.rc == 0, backup.stderr
        assert h.service(unit).is_running, "the writer died during the backup"
    try:
        # The writer went on during the backup: its longest pause is the hold (plus its own step).
        gaps = ("SELECT COUNT(*), COALESCE(MAX(gap), 0) FROM (SELECT at, TIMESTAMPDIFF(MICROSECOND, "
                "LAG(at) OVER (ORDER BY id), at) / 1e6 AS gap FROM ops_writes) w "
                f"WHERE at BETWEEN '{started}' AND '{ended}'")
        during, pause = h.check_output("mariadb -N multinotes -e %s", gaps).split()
        print(f"backup during writes: {during} commits during the backup, longest pause {float(pause):.3f} s")
        assert int(during) >= 3, "the writer did not write during the backup"
        assert float(pause) < 2.0, f"commits were held {pause} s"
        latest = json.loads(s3.check_output("cat %s/latest.json", prefix_dir("ops-12")))
        manifest = json.loads(s3.check_output("cat %s/%s.manifest.json", prefix_dir("ops-12"), latest["stamp"]))
        assert manifest["checksum_method"] == "rows-crc32"
        # The binary log position in the manifest is the dump's moment: each of the writer's
        # rows is one transaction, so exactly the rows in the manifest were committed between
        # the table's creation and that position (where a point-in-time replay starts).
        domain, server, created_seq = created_at.split("-")
        assert manifest["binlog"]["enabled"] is True, manifest["binlog"]
        d, srv, seq = manifest["binlog"]["gtid_binlog_pos"].split("-")
        assert (d, srv) == (domain, server)
        assert int(seq) - int(created_seq) == manifest["tables"]["ops_writes"]["rows"], (manifest["binlog"], created_at)
        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-12",
                                          extra_vars={"backup_restore_identity": identity})
        assert rc == 0, out
        drill = json.loads(h.check_output("cat /var/lib/multinotes-backup/last-drill.json"))
        assert drill["result"] == "pass" and drill["stamp"] == latest["stamp"], drill
        in_drill = int(h.check_output("mariadb -N -e 'SELECT COUNT(*) FROM multinotes_drill.ops_writes'"))
        live = int(h.check_output("mariadb -N -e 'SELECT COUNT(*) FROM multinotes.ops_writes'"))
        assert in_drill == manifest["tables"]["ops_writes"]["rows"] < live, (in_drill, live)
    finally:
        h.run("mariadb multinotes -e 'DROP TABLE IF EXISTS ops_writes'")


def count(h, where, table="multinotes.ops_pitr"):
    return int(h.check_output("mariadb -N -e %s", f"SELECT COUNT(*) FROM {table} WHERE {where}"))


@pytest.mark.parametrize("name", HOSTS)
def test_a_point_in_time_restore_has_every_commit_up_to_that_second_and_none_after(backed_up, paused_cron, hosts, s3, identity, name):
    """A writer commits continuously (each row carries its own time); a dump is taken during
    the writes; T is noted; the writes go on and the binary log is shipped. Restored to T,
    the drill database holds exactly the rows committed at or before T: the dump's, and the
    replayed ones after it. Restored to `latest`, it holds every row."""
    h = hosts[name]
    create_writes_table(h, "ops_pitr")
    with writer(h, "ops_pitr", pause=0.02) as unit:
        h.check_output("multinotes-backup mariadb")
        h.check_output("sleep 2")
        until = h.check_output("date -u '+%F %T'")
        h.check_output("sleep 2")
        shipped = h.run("multinotes-backup binlogs")
        assert shipped.rc == 0, shipped.stderr
        assert h.service(unit).is_running, "the writer died"
    try:
        h.check_output("multinotes-backup binlogs")
        shipped_to = f"{BUCKET_DIR}/molecule/{name}/mariadb-binlog/{h.check_output('cat /var/lib/mysql/multinotes-binlog-epoch')}"
        covered = json.loads(s3.check_output("cat %s/covered.json", shipped_to))
        latest = json.loads(s3.check_output("cat %s/latest.json", prefix_dir(name)))
        in_dump = json.loads(s3.check_output("cat %s/%s.manifest.json", prefix_dir(name), latest["stamp"]))["tables"]["ops_pitr"]["rows"]
        cut = f"at < '{until}' + INTERVAL 1 SECOND"
        expected, after = count(h, cut), count(h, "NOT (" + cut + ")")
        assert expected > in_dump and after > 0, (in_dump, expected, after)

        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit=name, extra_vars={
            "backup_restore_identity": identity, "backup_restore_to": until})
        assert rc == 0, out
        drill = json.loads(h.check_output("cat /var/lib/multinotes-backup/last-drill.json"))
        assert drill["result"] == "pass" and drill["restore_to"] == until.replace("-", "").replace(" ", "T").replace(":", "") + "Z", drill
        assert drill["binlogs"], drill
        assert count(h, "1", "multinotes_drill.ops_pitr") == expected
        assert count(h, "NOT (" + cut + ")", "multinotes_drill.ops_pitr") == 0
        print(f"{name}: restored to {until} UTC: {in_dump} rows from the dump + {expected - in_dump} replayed "
              f"from {len(drill['binlogs'])} binary log files; {after} later rows left out; "
              f"shipped up to {covered['covered_until']}")

        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit=name, extra_vars={
            "backup_restore_identity": identity, "backup_restore_to": "latest"})
        assert rc == 0, out
        assert count(h, "1", "multinotes_drill.ops_pitr") == expected + after
        assert ": pass" in h.check_output("multinotes-backup check-drill")
        # The drills' writes stayed out of the binary log: nothing new to ship.
        before = s3.check_output("ls %s", shipped_to)
        h.check_output("multinotes-backup binlogs")
        assert s3.check_output("ls %s", shipped_to) == before
    finally:
        h.run("mariadb multinotes -e 'DROP TABLE IF EXISTS ops_pitr'")


@pytest.mark.parametrize("name", HOSTS)
def test_a_base_backup_restores_to_a_second_with_the_binary_log(backed_up, paused_cron, hosts, s3, identity, name):
    """A physical base backup (mariadb-backup, streamed through zstd | age | S3) is taken
    while a writer commits; T is noted; the writes go on and the log is shipped. Restored
    from the base to T (the copy prepared and started as a private server, its database
    loaded into the drill and checked against it, the log replayed), the drill holds exactly
    the rows committed at or before T. The copy never touched the host's disk in full."""
    h = hosts[name]
    create_writes_table(h, "ops_base")
    with writer(h, "ops_base", pause=0.02) as unit:
        h.check_output("sleep 1")
        taken = h.run("multinotes-backup base")
        assert taken.rc == 0, taken.stderr
        h.check_output("sleep 2")
        until = h.check_output("date -u '+%F %T'")
        h.check_output("sleep 2")
        h.check_output("multinotes-backup binlogs")
        assert h.service(unit).is_running, "the writer died during the base backup"
    try:
        base_dir = f"{BUCKET_DIR}/molecule/{name}/mariadb-base/server"
        latest = json.loads(s3.check_output("cat %s/latest.json", base_dir))
        manifest = json.loads(s3.check_output("cat %s/%s.manifest.json", base_dir, latest["stamp"]))
        assert manifest["kind"] == "mariadb-backup" and manifest["key"].endswith(".mbstream.zst.age"), manifest
        assert re.fullmatch(r"\d+-\d+-\d+", manifest["binlog"]["gtid_binlog_pos"]), manifest["binlog"]
        assert s3.check_output("head -c 21 %s/%s.mbstream.zst.age", base_dir, latest["stamp"]) == "age-encryption.org/v1"
        assert h.run("ls /var/lib/multinotes-backup | grep -q '^base\\.'").rc != 0, "the base's work directory was left"
        cut = f"at < '{until}' + INTERVAL 1 SECOND"
        expected = count(h, cut, "multinotes.ops_base")
        assert count(h, "NOT (" + cut + ")", "multinotes.ops_base") > 0
        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit=name, extra_vars={
            "backup_restore_identity": identity, "backup_restore_to": until, "backup_restore_from_base": True})
        assert rc == 0, out
        drill = json.loads(h.check_output("cat /var/lib/multinotes-backup/last-drill.json"))
        assert drill["result"] == "pass" and drill["store"] == "mariadb-base" and drill["stamp"] == latest["stamp"], drill
        assert count(h, "1", "multinotes_drill.ops_base") == expected
        assert count(h, "NOT (" + cut + ")", "multinotes_drill.ops_base") == 0
        assert h.run("ls -d /var/tmp/base-restore.*").rc != 0, "the restore's copy was left on disk"
        print(f"{name}: base {latest['stamp']} ({manifest['size']} bytes, GTID {manifest['binlog']['gtid_binlog_pos']}) "
              f"restored to {until} UTC with {len(drill['binlogs'])} binary log files: {expected} rows, none after")
    finally:
        h.run("mariadb multinotes -e 'DROP TABLE IF EXISTS ops_base'")


def shipped_files(s3, name, epoch):
    """The numbers of the binary log files shipped for one server history, in order."""
    listing = s3.check_output("ls %s", f"{BUCKET_DIR}/molecule/{name}/mariadb-binlog/{epoch}").split()
    return sorted(int(m.group(1)) for m in (re.search(r"\.(\d{6})\.manifest\.json$", f) for f in listing) if m)


def binlog_metrics(h):
    text = h.run("cat /var/lib/prometheus/node-exporter/multinotes-backup-binlog.prom").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(multinotes_backup_\w+)\{[^}]*\} (\d+)$", text, re.M)}


def test_shipping_survives_an_s3_outage_and_a_mariadb_restart_and_alerts_while_it_lags(backed_up, paused_cron, hosts, s3, identity):
    """The S3 store goes away for a while, and MariaDB restarts meanwhile (a new binary log
    file). Each shipping run during the outage fails and alerts, and the exported coverage
    stays where it was; once S3 is back the next run ships everything: the files' numbers
    have no gap and a restore to `latest` holds every row written before, during and after."""
    h = hosts["ops-12"]
    create_writes_table(h, "ops_outage")
    # node exporter's textfile directory, where the exporters role makes it: the gauges go there.
    h.check_output("install -d -m 0755 /var/lib/prometheus/node-exporter")

    def write(rows):
        h.check_output("mariadb multinotes -e %s", f"INSERT INTO ops_outage (at) SELECT NOW(6) FROM seq_1_to_{rows}")
    try:
        write(50)
        h.check_output("multinotes-backup binlogs")
        epoch = h.check_output("cat /var/lib/mysql/multinotes-binlog-epoch")
        covered_before = binlog_metrics(h)["multinotes_backup_binlog_covered_until_timestamp_seconds"]
        alerts_before = len(alerts(s3))
        s3.check_output("systemctl stop ops-s3")
        try:
            write(50)
            failed = h.run("multinotes-backup binlogs")
            assert failed.rc != 0 and re.search("Could not connect|Connection refused|EndpointConnectionError", failed.stderr), failed.stderr
            h.check_output("systemctl restart mariadb")
            write(50)
            failed = h.run("multinotes-backup binlogs")
            assert failed.rc != 0, failed.stderr
            lagging = binlog_metrics(h)
            assert lagging["multinotes_backup_last_run_success"] == 0, lagging
            assert lagging["multinotes_backup_binlog_covered_until_timestamp_seconds"] == covered_before, lagging
            new = [a for a in alerts(s3)[alerts_before:] if a["check"] == "backup-binlog"]
            assert len(new) >= 2 and all(a["host"] == "ops-12" for a in new), new
        finally:
            s3.check_output("systemctl start ops-s3")
        s3.check_output("bash -c %s", "for i in $(seq 100); do (: <>/dev/tcp/127.0.0.1/9000) 2>/dev/null && exit 0; "
                        "sleep 0.1; done; exit 1")
        shipped = h.run("multinotes-backup binlogs")
        assert shipped.rc == 0, shipped.stderr
        caught_up = binlog_metrics(h)
        assert caught_up["multinotes_backup_last_run_success"] == 1, caught_up
        assert caught_up["multinotes_backup_binlog_covered_until_timestamp_seconds"] > covered_before, caught_up
        numbers = shipped_files(s3, "ops-12", epoch)
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), f"a gap in the shipped files: {numbers}"
        rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-12", extra_vars={
            "backup_restore_identity": identity, "backup_restore_to": "latest"})
        assert rc == 0, out
        assert h.check_output("mariadb -N -e 'SELECT COUNT(*) FROM multinotes_drill.ops_outage'") == "150"
        print(f"S3 outage with a MariaDB restart: {len(new)} failed runs alerted, then files "
              f"{numbers[0]}-{numbers[-1]} shipped without a gap; all 150 rows restored")
    finally:
        h.run("mariadb multinotes -e 'DROP TABLE IF EXISTS ops_outage'")


@pytest.mark.parametrize("restore_to,message", [
    ("2026-12-01T14:03:27", "must be a UTC time like"),
    ("2999-01-01 00:00:00", "not in\nthe future|not in the future"),
])
def test_a_bad_restore_point_is_refused_before_any_change(identity, restore_to, message):
    rc, out, recap = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-12", extra_vars={
        "backup_restore_identity": identity, "backup_restore_to": restore_to})
    assert rc != 0 and "backup_restore_to" in out and re.search(message, out), out
    assert recap["ops-12"]["changed"] == 0, out


def test_a_restore_point_before_every_backup_is_refused_naming_the_oldest(backed_up, identity):
    rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-12", extra_vars={
        "backup_restore_identity": identity, "backup_restore_to": "2020-01-01 00:00:00"})
    assert rc != 0 and "no complete backup of multinotes was taken at or before 2020-01-01 00:00:00 UTC" in out, out


def rebuild_host(name, image):
    """A new host in place of a destroyed one: the container created again from the image,
    then prepared and converged from the scenario's inventory, as a replacement VM would be."""
    create = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(SCENARIO.parent / "_harness/create.yml"),
         "-e", json.dumps({"ansible_python_interpreter": sys.executable, "harness_network": "multinotes-backup",
                           "harness_platforms": [{"name": name, "image": image}]})],
        env=dict(os.environ, ANSIBLE_CONFIG=str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg")),
        capture_output=True, text=True, timeout=600)
    assert create.returncode == 0, (create.stdout + create.stderr)[-3000:]
    for playbook in ("prepare.yml", "converge.yml"):
        rc, out, _ = testlib.run_playbook(SCENARIO / playbook, limit=name)
        assert rc == 0, out[-3000:]


def test_a_destroyed_database_host_is_rebuilt_and_restored_to_a_second_then_to_its_last_shipped_commit(
        backed_up, paused_cron, hosts, s3, identity):
    """Runs last: it destroys ops-13. A writer commits continuously (each row carries its
    commit time); a dump and a shipping run happen during the writes, T is noted between
    them; the writes go on; then MariaDB is killed -9 and the container removed. A new ops-13
    is created and converged from the same inventory. Restored to T, it holds every row
    committed at or before T and none after; restored to `latest`, exactly the commits up to
    the last shipping run, in order: the loss is the measured RPO."""
    h = hosts["ops-13"]
    create_writes_table(h, "ops_loss")
    with writer(h, "ops_loss", pause=0.02):
        h.check_output("multinotes-backup mariadb")
        h.check_output("sleep 2")
        until = h.check_output("date -u '+%F %T'")
        h.check_output("sleep 2; multinotes-backup binlogs; sleep 3")
    truth = h.check_output("mariadb -N -e 'SELECT id, at FROM multinotes.ops_loss ORDER BY id'").splitlines()
    notes = h.check_output("mariadb -N -e 'SELECT COUNT(*) FROM multinotes.notes'")
    old_epoch = h.check_output("cat /var/lib/mysql/multinotes-binlog-epoch")
    # The host is lost: the server dies, then the machine and its disk are gone.
    h.check_output("systemctl kill -s KILL mariadb")
    image = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", "ops-13"],
                           capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "rm", "-f", "ops-13"], capture_output=True, check=True)
    rebuild_host("ops-13", image)
    restore = {"backup_restore_identity": identity, "backup_restore_target": "multinotes", "backup_restore_confirm_live": True}
    rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-13",
                                      extra_vars={**restore, "backup_restore_to": until})
    assert rc == 0, out
    cut = dt.datetime.fromisoformat(until) + dt.timedelta(seconds=1)
    upto = [r for r in truth if dt.datetime.fromisoformat(r.split("\t")[1]) < cut]
    restored = h.check_output("mariadb -N -e 'SELECT id, at FROM multinotes.ops_loss ORDER BY id'").splitlines()
    assert restored == upto, f"restored to {until}: {len(restored)} rows, {len(upto)} committed up to then"
    assert len(truth) > len(upto), "no commit after T: the test proves nothing"
    # The restore shipped the new server's own log first: under a history of its own.
    new_epoch = h.check_output("cat /var/lib/mysql/multinotes-binlog-epoch")
    assert new_epoch and new_epoch != old_epoch, "the rebuilt server took over the lost one's binary log history"

    rc, out, _ = testlib.run_playbook(PROJECT / "playbooks/restore.yml", limit="ops-13",
                                      extra_vars={**restore, "backup_restore_to": "latest"})
    assert rc == 0, out
    restored = h.check_output("mariadb -N -e 'SELECT id, at FROM multinotes.ops_loss ORDER BY id'").splitlines()
    assert restored and restored == truth[:len(restored)], "the restored commits are not the first ones, in order"
    assert h.check_output("mariadb -N -e 'SELECT COUNT(*) FROM multinotes.notes'") == notes
    covered = json.loads(s3.check_output("cat %s/covered.json", f"{BUCKET_DIR}/molecule/ops-13/mariadb-binlog/{old_epoch}"))
    last_kept, last_lost = (dt.datetime.fromisoformat(rows.split("\t")[1]) for rows in (restored[-1], truth[-1]))
    shipped_until = dt.datetime.strptime(covered["covered_until"], "%Y%m%dT%H%M%SZ")
    # Every commit before the last shipping run is back (its second may hold a few after it).
    assert last_kept >= shipped_until - dt.timedelta(seconds=1), (last_kept, shipped_until)
    rpo = (last_lost - last_kept).total_seconds()
    print(f"host destroyed: {len(truth)} commits; rebuilt and restored to {until}: {len(upto)} rows, none after; "
          f"to latest: {len(restored)}, {len(truth) - len(restored)} lost = measured RPO {rpo:.1f} s (the writes "
          f"after the last shipping run); the new server's binary log history is {new_epoch}, the lost one's {old_epoch}")
    assert rpo <= 5 * 60
