"""The backup program (roles/backup/files/multinotes-backup.py) by its pure logic and its
failure handling, on the controller: stamps, the retention plan, pruning with orphans, and
an upload that fails half-way (a dying producer, a failing store) leaving no object behind
and the `latest` pointer where it was. Real processes stand in the pipeline; the S3 client
is a recording fake, so what the program asks of the store is what is asserted."""

import datetime as dt
import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("multinotes_backup", ROOT / "roles/backup/files/multinotes-backup.py")
mb = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mb)

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def stamp(days_ago, hours=0):
    return (NOW - dt.timedelta(days=days_ago, hours=hours)).strftime(mb.STAMP)


# --- Stamps and retention ------------------------------------------------------------

def test_stamp_round_trips_in_utc():
    assert mb.parse_stamp("20261201T120000Z") == NOW


def test_keys_are_grouped_by_their_stamp_and_others_ignored():
    keys = ["p/mariadb/db/20261201T020000Z.sql.zst.age", "p/mariadb/db/20261201T020000Z.manifest.json",
            "p/mariadb/db/20261130T020000Z.sql.zst.age", "p/mariadb/db/latest.json", "p/mariadb/db/notes.txt"]
    assert mb.backups_by_stamp(keys) == {
        "20261201T020000Z": keys[:2], "20261130T020000Z": [keys[2]]}


@pytest.mark.parametrize("prefix,expected", [
    ("molecule/ops-12", "molecule/ops-12/mariadb/multinotes"),
    ("/molecule/ops-12/", "molecule/ops-12/mariadb/multinotes"),
    ("", "mariadb/multinotes"),
])
def test_base_prefix_has_no_empty_or_doubled_parts(prefix, expected):
    assert mb.base_prefix({"s3": {"prefix": prefix}}, "mariadb", "multinotes") == expected


def test_retention_keeps_every_daily_then_the_newest_of_each_week_then_nothing():
    daily = [stamp(d) for d in range(0, 7)]
    # 2026-11-01 .. 2026-11-22: 22 days, one backup a day, in the weekly window.
    weekly_window = [stamp(d) for d in range(9, 31)]
    old = [stamp(d) for d in (40, 60, 120)]
    keep = mb.retention_plan(daily + weekly_window + old, daily_days=7, weekly_days=35, now=NOW)
    assert set(daily) <= keep
    assert not set(old) & keep
    kept_weekly = sorted(keep - set(daily))
    weeks = [mb.parse_stamp(s).isocalendar()[:2] for s in kept_weekly]
    assert len(weeks) == len(set(weeks)), "two backups kept for one ISO week"
    for s in kept_weekly:  # the newest of its week within the window
        week = mb.parse_stamp(s).isocalendar()[:2]
        assert s == max(x for x in weekly_window if mb.parse_stamp(x).isocalendar()[:2] == week)
    assert len(kept_weekly) == len({mb.parse_stamp(s).isocalendar()[:2] for s in weekly_window})


def test_retention_always_keeps_the_newest_backup_even_when_all_are_old():
    old = [stamp(100), stamp(200)]
    assert mb.retention_plan(old, daily_days=7, weekly_days=35, now=NOW) == {stamp(100)}


def test_retention_of_nothing_is_nothing():
    assert mb.retention_plan([], daily_days=7, weekly_days=35, now=NOW) == set()


class FakeS3:
    """Records what the program asks of the store; `fail_upload` makes the upload raise."""

    def __init__(self, keys=(), fail_upload=None):
        self.objects = {k: b"" for k in keys}
        self.calls = []
        self.fail_upload = fail_upload

    def get_paginator(self, _name):
        fake = self

        class Pages:
            def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's argument names
                return [{"Contents": [{"Key": k} for k in sorted(fake.objects) if k.startswith(Prefix)]}]
        return Pages()

    def upload_fileobj(self, reader, bucket, key, Config=None):  # noqa: N803
        self.calls.append(("upload", key))
        data = b""
        while chunk := reader.read(65536):
            data += chunk
            if self.fail_upload and len(data) > 0:
                raise self.fail_upload
        self.objects[key] = data

    def head_object(self, Bucket, Key):  # noqa: N803
        return {"ContentLength": len(self.objects[Key])}

    def put_object(self, Bucket, Key, Body, ContentType=None):  # noqa: N803
        self.calls.append(("put", Key))
        self.objects[Key] = Body

    def delete_object(self, Bucket, Key):  # noqa: N803
        self.calls.append(("delete", Key))
        self.objects.pop(Key, None)


def test_prune_deletes_outside_the_policy_and_orphans_older_than_a_day(monkeypatch):
    real_now = dt.datetime.now(dt.timezone.utc)

    def ago(days, hours=0):
        return (real_now - dt.timedelta(days=days, hours=hours)).strftime(mb.STAMP)

    base = "p/mariadb/db"
    complete = {ago(0, 1), ago(1), ago(90)}
    orphans = {ago(2): "old", ago(0, 2): "young"}  # a data object without a manifest
    keys = [f"{base}/{s}.sql.zst.age" for s in complete | set(orphans)]
    keys += [f"{base}/{s}.manifest.json" for s in complete] + [f"{base}/latest.json"]
    s3 = FakeS3(keys)
    monkeypatch.setattr(mb, "log", lambda msg: None)
    cfg = {"s3": {"bucket": "b", "prefix": "p"}, "retention": {"daily_days": 7, "weekly_days": 35}}
    mb.prune(cfg, s3, "mariadb", "db")
    deleted = {k for op, k in s3.calls if op == "delete"}
    assert deleted == {f"{base}/{ago(90)}.sql.zst.age", f"{base}/{ago(90)}.manifest.json",
                       f"{base}/{ago(2)}.sql.zst.age"}


# --- The pipeline's failure handling -------------------------------------------------

def procs_of(*argvs):
    """Real processes as pipeline() returns them: [(name, proc, stderr buffer)], last stdout."""
    procs, prev = [], None
    for argv in argvs:
        proc = subprocess.Popen(argv, stdin=prev, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if prev is not None:
            prev.close()
        prev = proc.stdout
        buf = []
        threading.Thread(target=mb.drain, args=(proc.stderr, buf), daemon=True).start()
        procs.append((argv[0], proc, buf))
    return procs, prev


@pytest.fixture
def boto_stub(monkeypatch):
    """upload_stream imports boto3's TransferConfig; the controller has no boto3."""
    transfer = types.ModuleType("boto3.s3.transfer")
    transfer.TransferConfig = lambda **kw: kw
    for name, module in {"boto3": types.ModuleType("boto3"), "boto3.s3": types.ModuleType("boto3.s3"),
                         "boto3.s3.transfer": transfer}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(mb, "log", lambda msg: None)


CFG = {"s3": {"bucket": "b", "prefix": "p"}, "compress": {"tool": "gzip"}, "host": "ops-12"}


def test_the_pipeline_pipes_hold_a_mebibyte_so_the_dump_streams_while_the_uploader_waits(monkeypatch, tmp_path):
    """The real pipeline (source | gzip | age, age a pass-through here): each of its three
    pipes widened to PIPE_BYTES, and the stream is still the compressed source."""
    (tmp_path / "age").write_text("#!/bin/sh\nexec cat\n")
    (tmp_path / "age").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sizes = []
    real = mb.widen_pipe

    def widen(stream):
        real(stream)
        sizes.append(mb.fcntl.fcntl(stream.fileno(), mb.fcntl.F_GETPIPE_SZ))
    monkeypatch.setattr(mb, "widen_pipe", widen)
    cfg = {**CFG, "compress": {"tool": "gzip", "level": 1}, "age_recipients": ["age1test"]}
    procs, out = mb.pipeline(cfg, ["printf", "dump-bytes"])
    stream = out.read()
    assert [proc.wait() for _, proc, _ in procs] == [0, 0, 0]
    assert sizes == [mb.PIPE_BYTES] * 3
    assert gzip.decompress(stream) == b"dump-bytes"


def test_the_s3_client_is_built_beside_the_run_and_its_failure_raised_where_it_is_used(monkeypatch):
    built = threading.Event()

    def s3_client(cfg):
        built.set()
        if cfg["s3"]["endpoint"] == "bad":
            raise ValueError("Invalid endpoint: bad")
        return types.SimpleNamespace(head_object=lambda **kw: {"ContentLength": 3})
    monkeypatch.setattr(mb, "s3_client", s3_client)
    client = mb.S3Client({"s3": {"endpoint": "ok"}})
    assert built.wait(5), "the client was not built in the background"
    assert client.head_object(Bucket="b", Key="k") == {"ContentLength": 3}
    failing = mb.S3Client({"s3": {"endpoint": "bad"}})
    with pytest.raises(ValueError, match="Invalid endpoint: bad"):
        failing.list_objects_v2(Bucket="b")


def test_a_complete_upload_writes_data_then_manifest_then_latest(monkeypatch, boto_stub):
    monkeypatch.setattr(mb, "pipeline", lambda cfg, argv, env=None, on_source_line=None: procs_of(["printf", "dump-bytes"]))
    s3 = FakeS3()
    stamp_ = mb.upload_stream(CFG, s3, "mariadb", "db", "sql.gz.age", ["mariadb-dump"], {"tables": {}})
    key, manifest_key = f"p/mariadb/db/{stamp_}.sql.gz.age", f"p/mariadb/db/{stamp_}.manifest.json"
    assert [c for c in s3.calls] == [("upload", key), ("put", manifest_key), ("put", "p/mariadb/db/latest.json")]
    manifest = json.loads(s3.objects[manifest_key])
    assert manifest["sha256"] == hashlib.sha256(b"dump-bytes").hexdigest() and manifest["size"] == 10
    assert json.loads(s3.objects["p/mariadb/db/latest.json"])["stamp"] == stamp_


def test_a_dying_producer_fails_the_upload_and_leaves_no_object(monkeypatch, boto_stub):
    dying = ["sh", "-c", "printf partial; echo 'mysqldump: Error 2013: Lost connection' >&2; exit 2"]
    monkeypatch.setattr(mb, "pipeline", lambda cfg, argv, env=None, on_source_line=None: procs_of(dying, ["gzip", "-c"]))
    s3 = FakeS3(["p/mariadb/db/latest.json"])
    with pytest.raises(mb.BackupError, match=r"sh exited 2: mysqldump: Error 2013: Lost connection"):
        mb.upload_stream(CFG, s3, "mariadb", "db", "sql.gz.age", ["mariadb-dump"], {})
    assert set(s3.objects) == {"p/mariadb/db/latest.json"}, "a partial object or a moved pointer remains"
    assert not any(op == "put" for op, _ in s3.calls)


def test_a_failing_store_kills_the_pipeline_and_cleans_up(monkeypatch, boto_stub):
    procs = []

    def pipeline(cfg, argv, env=None, on_source_line=None):
        procs[:], out = procs_of(["sh", "-c", "while :; do printf data; done"])
        return procs, out
    monkeypatch.setattr(mb, "pipeline", pipeline)
    s3 = FakeS3(["p/mariadb/db/latest.json"], fail_upload=OSError("No space left on device"))
    with pytest.raises(mb.BackupError, match=r"upload of p/mariadb/db/\S+ failed: No space left on device"):
        mb.upload_stream(CFG, s3, "mariadb", "db", "sql.gz.age", ["mariadb-dump"], {})
    assert all(proc.poll() is not None for _, proc, _ in procs), "the producer was left running"
    assert set(s3.objects) == {"p/mariadb/db/latest.json"}
    assert sorted(op for op, _ in s3.calls) == ["delete", "delete", "upload"]


# --- A manifest from the dump's moment ----------------------------------------------

class FakeSession:
    """Stands in for SqlSession: records (session, sql) in one shared log, answers facts."""

    log = []

    def __init__(self, cfg, defaults_file):
        # ConsistentManifest opens the holder first, then the reader.
        self.name = ("holder", "reader")[sum(1 for _, q in self.log if q == "open") % 2]
        self.log.append((self.name, "open"))
        self.closed = False

    def query(self, sql):
        self.log.append((self.name, sql))
        if sql.startswith("SELECT table_name"):
            return [["notes"]]
        if sql.startswith("SELECT column_name"):
            return [["id"], ["body"]]
        if sql.startswith("SELECT COUNT(*), COALESCE"):
            return [["3", "123456"]]
        if sql.startswith("SELECT @@GLOBAL.gtid_binlog_pos"):
            return [["0-1-42", "1"]]
        return []

    def close(self):
        self.log.append((self.name, "close"))


@pytest.fixture
def sessions(monkeypatch):
    FakeSession.log = []
    monkeypatch.setattr(mb, "SqlSession", FakeSession)
    return FakeSession.log


MCFG = {"mariadb": {"defaults_file": "/etc/multinotes-backup/mariadb.cnf", "dump_command": "mariadb-dump"}}


def statements(log, session):
    return [q for s, q in log if s == session and q not in ("open", "close")]


def test_commits_are_held_from_before_the_manifest_snapshot_until_the_dump_has_its_own(sessions):
    with mb.ConsistentManifest(MCFG, "multinotes") as snap:
        assert statements(sessions, "holder") == [
            f"SET SESSION lock_wait_timeout = {mb.COMMIT_HOLD_LIMIT_S}", "BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT",
            "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.log_bin"]
        assert statements(sessions, "reader") == [
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION WITH CONSISTENT SNAPSHOT"]
        # The reader's snapshot is opened while commits are held, not after.
        held_at = sessions.index(("holder", "BACKUP STAGE BLOCK_COMMIT"))
        assert sessions.index(("reader", "START TRANSACTION WITH CONSISTENT SNAPSHOT")) > held_at
        # Connecting is before the dump's START TRANSACTION: commits stay held.
        assert snap.on_dump_line(b"-- Connecting to localhost...\n") is True
        assert "BACKUP STAGE END" not in statements(sessions, "holder")
        # An error line is kept for the error message and releases nothing.
        assert snap.on_dump_line(b"mariadb-dump: Got error: 1045\n") is False
        assert "BACKUP STAGE END" not in statements(sessions, "holder")
        assert snap.on_dump_line(b"-- Retrieving table structure for table notes...\n") is True
        assert statements(sessions, "holder")[-1] == "BACKUP STAGE END"
        snap.on_dump_line(None)  # EOF after the release: nothing more is sent
        assert statements(sessions, "holder").count("BACKUP STAGE END") == 1
        facts = snap.facts()
    # The binary log position is read while commits are held: the position of both snapshots.
    assert facts == {"tables": {"notes": {"rows": 3, "checksum": "123456"}}, "checksum_method": "rows-crc32",
                     "binlog": {"enabled": True, "gtid_binlog_pos": "0-1-42"}}
    # The facts were read in the reader's snapshot, after the release.
    assert sessions.index(("reader", mb.list_tables_sql("multinotes"))) > sessions.index(("holder", "BACKUP STAGE END"))
    assert ("reader", "close") in sessions and ("holder", "close") in sessions


def test_the_facts_are_read_while_the_dump_streams_not_after_it(sessions, monkeypatch):
    """The digest (a table scan) starts at the dump's snapshot line, in its own thread: by
    the time the dump has ended, it has run, and facts() only collects it."""
    started = threading.Event()
    original = FakeSession.query

    def slow_digest(self, sql):
        if sql.startswith("SELECT COUNT(*), COALESCE"):
            started.set()
        return original(self, sql)
    monkeypatch.setattr(FakeSession, "query", slow_digest)
    with mb.ConsistentManifest(MCFG, "multinotes") as snap:
        snap.on_dump_line(b"-- Retrieving table structure for table notes...\n")
        # The dump is still streaming (no EOF yet) and the digest is already running.
        assert started.wait(5), "the digest did not start at the dump's snapshot"
        snap.on_dump_line(b"-- Sending SELECT query...\n")
        snap.on_dump_line(None)
        assert snap.facts()["tables"] == {"notes": {"rows": 3, "checksum": "123456"}}
    digests = [q for s, q in sessions if s == "reader" and q.startswith("SELECT COUNT(*)")]
    assert len(digests) == 1, "the facts were read more than once"


def test_a_failed_digest_fails_the_manifest_and_the_sessions_close(sessions, monkeypatch):
    original = FakeSession.query

    def broken_digest(self, sql):
        if sql.startswith("SELECT COUNT(*), COALESCE"):
            raise mb.BackupError("mariadb query failed (SELECT ...): Lost connection to server during query")
        return original(self, sql)
    monkeypatch.setattr(FakeSession, "query", broken_digest)
    with pytest.raises(mb.BackupError, match="Lost connection"):
        with mb.ConsistentManifest(MCFG, "multinotes") as snap:
            snap.on_dump_line(b"-- Retrieving table structure for table notes...\n")
            snap.on_dump_line(None)
            snap.facts()
    assert ("reader", "close") in sessions and ("holder", "close") in sessions


def test_a_dump_without_a_snapshot_line_still_gets_its_facts_once(sessions):
    with mb.ConsistentManifest(MCFG, "multinotes") as snap:
        snap.on_dump_line(None)
        assert snap.facts()["tables"] == {"notes": {"rows": 3, "checksum": "123456"}}
    assert sum(1 for s, q in sessions if s == "reader" and q.startswith("SELECT COUNT(*)")) == 1


def test_a_dump_that_ends_before_its_snapshot_releases_the_commits(sessions):
    with mb.ConsistentManifest(MCFG, "multinotes") as snap:
        snap.on_dump_line(None)
        assert statements(sessions, "holder")[-1] == "BACKUP STAGE END"


def test_commits_are_never_held_past_the_limit(sessions, monkeypatch):
    monkeypatch.setattr(mb, "COMMIT_HOLD_LIMIT_S", 0.2)
    with mb.ConsistentManifest(MCFG, "multinotes") as snap:
        deadline = dt.datetime.now() + dt.timedelta(seconds=5)
        while "BACKUP STAGE END" not in statements(sessions, "holder") and dt.datetime.now() < deadline:
            threading.Event().wait(0.02)
        assert statements(sessions, "holder")[-1] == "BACKUP STAGE END"
        with pytest.raises(mb.BackupError, match=r"did not open its snapshot within 0.2 s"):
            snap.facts()


def test_a_failure_while_taking_the_hold_closes_both_sessions(sessions, monkeypatch):
    def refuse(self, sql):
        self.log.append((self.name, sql))
        if sql == "BACKUP STAGE BLOCK_COMMIT":
            raise mb.BackupError("mariadb query failed (BACKUP ...): Access denied; you need the RELOAD privilege")
        return []
    monkeypatch.setattr(FakeSession, "query", refuse)
    with pytest.raises(mb.BackupError, match="RELOAD"):
        with mb.ConsistentManifest(MCFG, "multinotes"):
            pass
    assert ("reader", "close") in sessions and ("holder", "close") in sessions
    assert "BACKUP STAGE END" not in statements(sessions, "holder")


def test_the_row_digest_marks_nulls_and_lengths_and_restores_check_the_manifests_method():
    sql = mb.rows_crc32_sql("multinotes", "no`tes", ["id", "bo`dy"])
    assert sql == ("SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT_WS(',', `id`, `bo``dy`, "
                   "CONCAT(ISNULL(`id`), ISNULL(`bo``dy`)), CONCAT_WS('.', LENGTH(`id`), LENGTH(`bo``dy`))))), 0) "
                   "FROM `multinotes`.`no``tes`")
    # The rows-md5 manifests of earlier backups are still checked their own way.
    sql = mb.rows_md5_sql("multinotes", "no`tes", ["id", "body"])
    assert "QUOTE(`id`), QUOTE(`body`)" in sql and "FROM `multinotes`.`no``tes`" in sql
    asked = []
    mb.table_facts(lambda q: asked.append(q) or ([["notes"]] if q.startswith("SELECT table_name") else
                                                 [["id"]] if q.startswith("SELECT column_name") else [["1", "2"]]),
                   "multinotes", mb.MD5_CHECKSUM_METHOD)
    assert any("MD5(" in q for q in asked) and not any("CRC32(" in q for q in asked)
    asked = []

    def query(sql):
        asked.append(sql)
        if sql.startswith("SELECT table_name"):
            return [["notes"]]
        if sql.startswith("CHECKSUM TABLE"):
            return [["multinotes.notes", "999"]]
        return [["7"]]
    # A manifest from before checksum_method existed: checked with CHECKSUM TABLE, as it was made.
    assert mb.table_facts(query, "multinotes", mb.LEGACY_CHECKSUM_METHOD) == {"notes": {"rows": 7, "checksum": "999"}}
    assert any(q.startswith("CHECKSUM TABLE") for q in asked)
    with pytest.raises(mb.BackupError, match="unknown checksum method 'sha9'"):
        mb.table_facts(query, "multinotes", "sha9")


def test_drain_lines_keeps_error_lines_and_signals_the_end():
    seen = []
    proc = subprocess.Popen(["sh", "-c", "echo '-- Connecting to x...' >&2; echo 'real error' >&2"],
                            stderr=subprocess.PIPE)
    buf = []
    mb.drain_lines(proc.stderr, buf, lambda line: seen.append(line) or (line is not None and line.startswith(b"-- ")))
    proc.wait()
    assert buf == [b"real error\n"]
    assert seen[-1] is None and seen[0] == b"-- Connecting to x...\n"


FAKE_CLIENT = r'''#!/usr/bin/env python3
import sys
for line in sys.stdin:
    line = line.strip().rstrip(";")
    if line.startswith("SELECT '"):
        print(line[len("SELECT '"):-1], flush=True)
    elif line == "SELECT 2":
        print("2\tb", flush=True)
    elif line.startswith("BAD"):
        print("ERROR 1064 (42000) at line 3: You have an error in your SQL syntax", file=sys.stderr)
        sys.exit(1)
'''


def test_a_session_reads_each_result_up_to_its_marker_and_reports_the_clients_error(tmp_path):
    client = tmp_path / "mariadb"
    client.write_text(FAKE_CLIENT)
    client.chmod(0o755)
    session = mb.SqlSession({"mariadb": {"client_command": str(client)}}, None)
    try:
        assert session.query("SET x = 1") == []
        assert session.query("SELECT 2;") == [["2", "b"]]
        with pytest.raises(mb.BackupError, match=r"mariadb query failed \(BAD \.\.\.\): ERROR 1064"):
            session.query("BAD statement")
    finally:
        session.close()
    assert session.proc.poll() is not None


# --- Binary logs: what is shipped, what a restore replays ---------------------------

BINLOG_OUTPUT = b"""/*!40019 SET @@session.max_delayed_threads=0*/;
# at 4
#261205  3:08:05 server id 1  end_log_pos 256 CRC32 0x290b1a29 	Start: binlog v 4, server v 10.11.19 created 261205  3:08:05
#261205  3:08:05 server id 1  end_log_pos 299 CRC32 0x33b80b5a 	Gtid list [0-1-5]
#Q> INSERT INTO t VALUES ('#261205 23:59:59 server id 9 in a value, not a header')
#261205 13:08:11 server id 1  end_log_pos 1106 CRC32 0x95ba396b 	GTID 0-1-9 trans
"""


def test_a_binlogs_event_range_is_read_from_its_event_headers_in_utc():
    first, last = mb.binlog_event_range(BINLOG_OUTPUT.splitlines(keepends=True))
    assert (first.strftime(mb.STAMP), last.strftime(mb.STAMP)) == ("20261205T030805Z", "20261205T130811Z")
    assert mb.binlog_event_range([b"no headers\n"]) is None


def test_the_closed_binlogs_are_all_of_the_index_but_the_one_being_written(tmp_path):
    (tmp_path / "mariadb-bin.index").write_text("./mariadb-bin.000001\n./mariadb-bin.000002\n./mariadb-bin.000003\n")
    assert mb.closed_binlogs(str(tmp_path / "mariadb-bin.index")) == [
        str(tmp_path / "mariadb-bin.000001"), str(tmp_path / "mariadb-bin.000002")]


def binlog_keys(*files):
    """Shipped objects as ship_binlogs names them: (first, last, number) -> data and manifest keys."""
    keys = []
    for first, last, number in files:
        stem = f"p/mariadb-binlog/20261130T000000Z/{first}_{last}_mariadb-bin.{number:06d}"
        keys += [stem + ".zst.age", stem + ".manifest.json"]
    return keys + ["p/mariadb-binlog/20261130T000000Z/covered.json"]


def at(hhmmss):
    return dt.datetime.strptime("20261201T" + hhmmss + "Z", mb.STAMP).replace(tzinfo=dt.timezone.utc)


SHIPPED = [("20261201T000000Z", "20261201T095000Z", 1), ("20261201T100000Z", "20261201T100958Z", 2),
           ("20261201T101000Z", "20261201T102000Z", 3), ("20261201T102001Z", "20261201T110000Z", 4)]


def test_a_replay_reads_from_the_file_of_the_dumps_snapshot_to_the_first_past_the_point():
    objects = mb.binlog_objects(binlog_keys(*SHIPPED))
    assert [o[2] for o in objects] == [f"mariadb-bin.00000{n}" for n in (1, 2, 3, 4)]
    chosen = mb.binlogs_to_replay(objects, dump_stamp=at("100500"), until=at("101500"))
    assert [o[2] for o in chosen] == ["mariadb-bin.000002", "mariadb-bin.000003"]
    # A dump taken in a quiet hour: the file before it is read too (the GTID position skips it).
    chosen = mb.binlogs_to_replay(objects, dump_stamp=at("100500"), until=at("100501"))
    assert [o[2] for o in chosen] == ["mariadb-bin.000002"]


def test_a_missing_binlog_file_refuses_the_replay():
    objects = mb.binlog_objects(binlog_keys(SHIPPED[0], SHIPPED[1], SHIPPED[3]))
    with pytest.raises(mb.BackupError, match=r"between mariadb-bin.000002 and mariadb-bin.000004 are missing"):
        mb.binlogs_to_replay(objects, dump_stamp=at("100500"), until=at("105000"))


def test_binlogs_no_kept_dump_needs_are_pruned(monkeypatch):
    monkeypatch.setattr(mb, "log", lambda msg: None)
    s3 = FakeS3(binlog_keys(*SHIPPED))
    mb.prune_binlogs({"s3": {"bucket": "b", "prefix": "p"}}, s3, oldest_kept=at("102500"))
    deleted = sorted(k for op, k in s3.calls if op == "delete")
    assert deleted == sorted(binlog_keys(SHIPPED[0], SHIPPED[1])[:-1]), "only files ending before the margin go"


@pytest.mark.parametrize("value,error", [
    ("2026-12-01 14:03:27", None),
    ("latest", None),
    ("2026-12-01T14:03:27Z", "is not 'latest' or a UTC time"),
    ("2026-02-30 14:03:27", "is not 'latest' or a UTC time"),
    ("2026-12-01 12:00:01", "is in the future"),
])
def test_the_restore_point_is_a_past_utc_second_or_latest(value, error):
    if error:
        with pytest.raises(mb.BackupError, match=error):
            mb.parse_restore_to(value, NOW)
    else:
        got = mb.parse_restore_to(value, dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc))
        assert got is None if value == "latest" else got.strftime("%Y-%m-%d %H:%M:%S") == value


def test_a_failed_shipping_run_keeps_the_last_covered_time(tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "log", lambda msg: None)
    cfg = {"metrics_dir": str(tmp_path)}
    mb.write_metrics(cfg, "backup-binlog", True, covered=1796400000)
    mb.write_metrics(cfg, "backup-binlog", False)
    text = (tmp_path / "multinotes-backup-binlog.prom").read_text()
    assert 'multinotes_backup_binlog_covered_until_timestamp_seconds{check="backup-binlog"} 1796400000' in text
    assert 'multinotes_backup_last_run_success{check="backup-binlog"} 0' in text


HOLD_LOCK = """
import fcntl, sys, time
fh = open(sys.argv[1], "w")
fcntl.flock(fh, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path, seconds):
    """Another process (as cron's run is) holding PATH's lock for SECONDS."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_of_a_store_fails_at_once_naming_the_lock(tmp_path):
    holder = hold_lock(tmp_path / "multinotes-backup-redis.lock", 30)
    try:
        started = time.monotonic()
        with pytest.raises(mb.BackupError, match=r"another run holds .*multinotes-backup-redis\.lock; not starting"):
            with mb.Lock({"lock_dir": str(tmp_path)}, "redis"):
                pass
        assert time.monotonic() - started < 1
    finally:
        holder.kill()
        holder.wait()


def test_binlog_shipping_waits_for_a_run_in_the_same_second_instead_of_failing(tmp_path, monkeypatch):
    """The nightly `all` run and cron's `binlogs` run start in the same second whenever
    their minutes meet: the second one waits for the first, then ships."""
    said = []
    monkeypatch.setattr(mb, "log", said.append)
    holder = hold_lock(tmp_path / "multinotes-backup-binlog.lock", 1.5)
    try:
        started = time.monotonic()
        with mb.Lock({"lock_dir": str(tmp_path)}, "binlog", wait=mb.BINLOG_LOCK_WAIT_S) as lock:
            waited = time.monotonic() - started
        assert 1.0 < waited < 10, waited
        assert len(said) == 1 and "waiting up to 600 s" in said[0], said
        assert lock.fh.closed
    finally:
        holder.kill()
        holder.wait()


def test_a_wait_for_the_lock_is_bounded_and_then_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(mb, "log", lambda msg: None)
    holder = hold_lock(tmp_path / "multinotes-backup-binlog.lock", 30)
    try:
        started = time.monotonic()
        with pytest.raises(mb.BackupError, match=r"after waiting 1 s; not starting"):
            with mb.Lock({"lock_dir": str(tmp_path)}, "binlog", wait=1):
                pass
        assert 0.9 < time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_a_servers_binlog_history_id_is_made_once_beside_its_logs(tmp_path):
    basename = str(tmp_path / "mariadb-bin")
    assert mb.binlog_epoch(basename, create=False) is None
    assert mb.binlog_epoch(basename, now=NOW) == "20261201T120000Z"
    assert mb.binlog_epoch(basename, now=NOW + dt.timedelta(days=1)) == "20261201T120000Z", "made again"
    (tmp_path / mb.BINLOG_EPOCH_FILE).write_text("garbage\n")
    with pytest.raises(mb.BackupError, match="not a binary log history id"):
        mb.binlog_epoch(basename)


def test_a_dumps_manifest_names_the_binlog_history_only_when_the_log_is_on():
    on = mb.with_epoch(lambda: {"binlog": {"enabled": True, "gtid_binlog_pos": "0-1-5"}}, "20261130T000000Z")()
    off = mb.with_epoch(lambda: {"binlog": {"enabled": False, "gtid_binlog_pos": ""}}, "20261130T000000Z")()
    assert on["binlog"]["epoch"] == "20261130T000000Z" and "epoch" not in off["binlog"]


# --- Physical base backups ----------------------------------------------------------

@pytest.mark.parametrize("line,file,gtid", [
    # MariaDB 11.8's mariadb-backup
    (b"[00] 2026-12-05 06:50:44 MySQL binlog position: filename 'ops-binlog.000002', position '1143269', "
     b"GTID of the last change '0-1-13'\n", "ops-binlog.000002", "0-1-13"),
    # no GTID yet on a server that never committed with the binary log on
    (b"[00] 2026-12-05 06:50:44 MySQL binlog position: filename 'mariadb-bin.000001', position '330'\n",
     "mariadb-bin.000001", ""),
])
def test_the_base_backups_binlog_position_is_read_from_its_log(line, file, gtid):
    position = mb.BasePosition()
    assert position(b"[01] 2026-12-05 06:50:44 Streaming ./sys/sys_config.ibd\n") is False
    assert position.file is None
    assert position(line) is False, "the line must stay in the error buffer"
    assert (position.file, position.gtid) == (file, gtid)
    position(None)  # EOF
    assert (position.file, position.gtid) == (file, gtid)


BCFG = {"s3": {"bucket": "b", "prefix": "p"}, "compress": {"tool": "zstd"}, "host": "ops-12", "state_dir": "",
        "mariadb": {"enabled": True, "databases": ["db"], "defaults_file": "/x.cnf",
                    "base": {"enabled": True, "command": "mariadb-backup", "max_age_hours": 192}}}


def test_a_base_whose_position_was_never_reported_is_not_completed(monkeypatch, boto_stub, tmp_path):
    """mariadb-backup that ends without its position line: no manifest, no latest pointer,
    no object: a base that no replay could start from is not a backup."""
    cfg = {**BCFG, "state_dir": str(tmp_path), "lock_dir": str(tmp_path)}
    monkeypatch.setattr(mb, "mariadb_query", lambda *a, **k: [["1", "/var/lib/mysql/binlog", "11.8.3-MariaDB"]])
    monkeypatch.setattr(mb, "binlog_epoch", lambda basename: "20261205T000000Z")
    monkeypatch.setattr(mb, "pipeline", lambda cfg, argv, env=None, on_source_line=None: procs_of(["printf", "copy"]))
    s3 = FakeS3()
    with pytest.raises(mb.BackupError, match="did not report the binary log position"):
        mb.backup_base(cfg, s3)
    assert s3.objects == {}, "a base without its position was left in the store"
    assert list(tmp_path.glob("base.*")) == [], "the work directory was left"


def test_binlogs_are_kept_for_the_oldest_dump_or_base_whichever_is_older():
    def keys(store, name, *stamps):
        return [f"p/{store}/{name}/{s}.manifest.json" for s in stamps]
    s3 = FakeS3(keys("mariadb", "db", "20261201T021700Z", "20261204T021700Z")
                + keys("mariadb-base", "server", "20261122T013700Z", "20261129T013700Z"))
    assert mb.oldest_recovery_point(BCFG, s3, ["20261203T021700Z"]) == mb.parse_stamp("20261122T013700Z")
    no_base = {**BCFG, "mariadb": {**BCFG["mariadb"], "base": {"enabled": False}}}
    assert mb.oldest_recovery_point(no_base, s3, ["20261203T021700Z"]) == mb.parse_stamp("20261201T021700Z")


def test_the_nightly_run_leaves_the_base_to_a_base_run_in_progress(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(mb, "log", said.append)
    monkeypatch.setattr(mb, "mariadb_query", lambda *a, **k: pytest.fail("a second base backup was started"))
    cfg = {**BCFG, "state_dir": str(tmp_path), "lock_dir": str(tmp_path)}
    holder = hold_lock(tmp_path / f"multinotes-backup-{mb.BASE_STORE}.lock", 30)
    try:
        mb.base_unless_running(cfg, client=None)
    finally:
        holder.kill()
        holder.wait()
    assert len(said) == 1 and said[0].startswith("base: not started, a base backup is running now"), said


def test_the_nightly_runs_base_backup_fails_for_any_other_reason(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise mb.BackupError("mariadb query failed: Access denied")
    monkeypatch.setattr(mb, "mariadb_query", refuse)
    cfg = {**BCFG, "state_dir": str(tmp_path), "lock_dir": str(tmp_path)}
    with pytest.raises(mb.BackupError, match="Access denied"):
        mb.base_unless_running(cfg, client=None)


def test_a_base_is_missing_or_stale_past_its_max_age(monkeypatch):
    now = dt.datetime.now(dt.timezone.utc)
    fresh, old = ((now - dt.timedelta(days=d)).strftime(mb.STAMP) for d in (2, 9))
    assert mb.base_missing_or_stale(BCFG, FakeS3()) is True
    assert mb.base_missing_or_stale(BCFG, FakeS3([f"p/mariadb-base/server/{fresh}.manifest.json"])) is False
    assert mb.base_missing_or_stale(BCFG, FakeS3([f"p/mariadb-base/server/{old}.manifest.json"])) is True
    # A data object without its manifest is not a base.
    assert mb.base_missing_or_stale(BCFG, FakeS3([f"p/mariadb-base/server/{fresh}.mbstream.zst.age"])) is True


# --- The launch check's drill item ---------------------------------------------------

@pytest.mark.parametrize("binlog,drill,ok,says", [
    (True, None, False, "no restore drill was run on this host: run playbooks/restore.yml -e backup_restore_to=latest"),
    (True, {"result": "fail", "error": "differs from the manifest"}, False, "differs from the manifest"),
    (True, {"result": "pass", "stamp": "20261205T021700Z"}, False, "not to a point in time"),
    (True, {"result": "pass", "stamp": "20261205T021700Z", "restore_to": "20261205T070000Z"}, True, "to 20261205T070000Z: pass"),
    (False, {"result": "pass", "stamp": "20261205T021700Z"}, True, ": pass"),
])
def test_the_drill_check_asks_for_a_point_in_time_drill_where_the_log_is_shipped(tmp_path, binlog, drill, ok, says):
    cfg = {"state_dir": str(tmp_path), "mariadb": {"enabled": True}, "binlog": {"enabled": binlog}}
    if drill is not None:
        (tmp_path / "last-drill.json").write_text(json.dumps(drill))
    if ok:
        assert says in mb.check_drill(cfg)
    else:
        with pytest.raises(mb.BackupError) as err:
            mb.check_drill(cfg)
        assert says in str(err.value)


def test_a_replay_knows_when_nothing_was_committed_after_the_backup():
    decoded = ("# at 256\n#261205  7:52:01 server id 1  end_log_pos 298 CRC32 0x1a2b3c4d \tGTID 0-1-95 trans\n"
               "BEGIN\n#261205  7:52:20 server id 1  end_log_pos 640 CRC32 0x00ff00ff \tGTID 0-1-96 trans\n"
               "#261205  7:52:30 server id 1  end_log_pos 700 CRC32 0x0 \tRotate to mariadb-bin.000004  pos: 4\n")
    assert mb.gtids_after("0-1-96", decoded) is False
    assert mb.gtids_after("0-1-95", decoded) is True
    # Another domain's transaction is after a position that does not name that domain.
    assert mb.gtids_after("0-1-96", decoded + "#261205  7:53:00 server id 2  end_log_pos 9 \tGTID 1-2-1 trans\n") is True
    assert mb.gtids_after("0-1-96,1-2-1", decoded + "#261205  7:53:00 server id 2  end_log_pos 9 \tGTID 1-2-1 trans\n") is False
    # The Gtid_list of a new file names the position; it is not a transaction.
    assert mb.gtids_after("0-1-96", "#261205  7:52:31 server id 1  end_log_pos 285 \tGtid list [0-1-96]\n") is False
    assert mb.gtids_after("", decoded) is True
