#!/usr/bin/python3
# Installed by the backup role as /usr/local/sbin/multinotes-backup (as it is: no template).
"""MultinotesAI backups: stream a dump or snapshot through compress | age | S3, never to disk.

Subcommands: mariadb, redis, all (what cron runs), binlogs, base (a physical base backup
with mariadb-backup), prune, check-freshness, check-certs, check-drill, restore-mariadb
(--to a point, --from-base), restore-redis, alert-test. Settings: /etc/multinotes-backup/config.json.
Any failure exits non-zero and calls the alert hook; a failed run leaves no object behind
and does not touch the previous backups or the latest pointer.
"""

import argparse
import contextlib
import datetime as dt
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CONFIG = os.environ.get("MULTINOTES_BACKUP_CONFIG", "/etc/multinotes-backup/config.json")
STAMP = "%Y%m%dT%H%M%SZ"
STAMP_RE = re.compile(r"/(\d{8}T\d{6}Z)\.")
CHUNK = 1024 * 1024
# Each pipe of a backup's pipeline holds this much (Linux's default is 64 KiB): while the
# uploader waits for its S3 client or a part's PUT, the dump goes on streaming.
PIPE_BYTES = 1024 * 1024


class BackupError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_config():
    with open(CONFIG, encoding="utf-8") as fh:
        return json.load(fh)


def s3_client(cfg):
    # Newer botocore adds trailing CRC checksums that some S3-compatible servers reject;
    # the integrity check here is our own sha256 + size, so only send checksums when required.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    import boto3
    from botocore.config import Config

    s3 = cfg["s3"]
    return boto3.client(
        "s3",
        endpoint_url=s3["endpoint"] or None,
        region_name=s3["region"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        verify=s3["ca_bundle"] or s3["verify_tls"],
        config=Config(
            s3={"addressing_style": "path" if s3["path_style"] else "virtual"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


class S3Client:
    """The S3 client, built in a thread from the start of a run: importing boto3 and
    loading S3's service model take about 0.5 s, which now overlap the database's first
    steps and the dump's first megabytes (PIPE_BYTES) instead of preceding them. The first
    use of a client method waits for it, and raises what building it raised."""

    def __init__(self, cfg):
        self._built = {}
        self._thread = threading.Thread(target=self._build, args=(cfg,), daemon=True)
        self._thread.start()

    def _build(self, cfg):
        try:
            self._built["client"] = s3_client(cfg)
        except BaseException as exc:  # noqa: BLE001 - raised in the thread that uses it
            self._built["error"] = exc

    def __getattr__(self, name):
        self._thread.join()
        if "error" in self._built:
            raise self._built["error"]
        return getattr(self._built["client"], name)


def alert(cfg, check, message):
    """Send one alert through every configured channel; never raises."""
    host = cfg.get("host") or socket.getfqdn()
    payload = {"host": host, "check": check, "status": "failure", "message": message,
               "time": dt.datetime.now(dt.timezone.utc).strftime(STAMP)}
    log(f"ALERT {check}: {message}")
    hook = cfg["alert"].get("webhook_url")
    if hook:
        try:
            req = urllib.request.Request(hook, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
        except Exception as exc:  # noqa: BLE001 - an alert must not hide the failure it reports
            log(f"alert webhook failed: {exc}")
    mail_to = cfg["alert"].get("mail_to")
    if mail_to and shutil.which("sendmail"):
        body = (f"To: {mail_to}\nFrom: {cfg['alert'].get('mail_from') or 'root'}\n"
                f"Subject: [multinotes-backup] {check} failed on {host}\n\n{message}\n")
        try:
            subprocess.run(["sendmail", "-t"], input=body.encode(), timeout=30, check=True)
        except Exception as exc:  # noqa: BLE001
            log(f"alert mail failed: {exc}")


class LockHeld(BackupError):
    """Another run holds a store's lock."""


class Lock:
    """One run per store at a time. A second run exits instead of overlapping, or, given
    `wait` seconds, waits that long for the first to end (binary log shipping: short runs
    every few minutes that the nightly `all` run and cron's `binlogs` both make, often in
    the same second)."""

    POLL_S = 0.2

    def __init__(self, cfg, name, wait=0):
        self.path = os.path.join(cfg["lock_dir"], f"multinotes-backup-{name}.lock")
        self.wait = wait

    def __enter__(self):
        self.fh = open(self.path, "w")  # noqa: SIM115
        deadline, told = time.monotonic() + self.wait, False
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self.fh.close()
                    waited = f" after waiting {self.wait} s" if self.wait else ""
                    raise LockHeld(f"another run holds {self.path}{waited}; not starting a second one") from None
                if not told:
                    log(f"another run holds {self.path}; waiting up to {self.wait} s for it to end")
                    told = True
                time.sleep(self.POLL_S)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


class HashingReader:
    """File-like view of a pipeline's output that hashes and counts what passes through.

    At EOF it checks every process of the pipeline: if one failed, read() raises, so the
    upload is aborted instead of completing with a truncated stream.
    """

    def __init__(self, stream, procs):
        self.stream, self.procs = stream, procs
        self.sha256, self.size = hashlib.sha256(), 0

    def read(self, n=-1):
        data = self.stream.read(CHUNK if n is None or n < 0 else n)
        if data:
            self.sha256.update(data)
            self.size += len(data)
            return data
        failed = []
        for name, proc, errbuf in self.procs:
            rc = proc.wait()
            if rc != 0:
                failed.append(exit_error(name, rc, errbuf))
        if failed:
            raise BackupError("; ".join(failed))
        return b""


def exit_error(name, rc, buf):
    """A failed process of a pipe, as the error says it: its name, exit code and stderr's end."""
    return f"{name} exited {rc}: {b''.join(buf).decode(errors='replace').strip()[-800:]}"


def drain(stream, buf):
    for chunk in iter(lambda: stream.read(4096), b""):
        buf.append(chunk)


def drain_lines(stream, buf, on_line):
    """drain(), line by line: `on_line(line)` sees each line and keeps it out of the error
    buffer by returning True; `on_line(None)` at EOF."""
    try:
        for line in iter(stream.readline, b""):
            if not on_line(line):
                buf.append(line)
    finally:
        on_line(None)


def pipeline(cfg, source_argv, env=None, on_source_line=None):
    """source | compress | age -r ..., returning the processes and the output stream.
    `on_source_line`, if given, reads the source's stderr line by line (see drain_lines)."""
    comp = cfg["compress"]
    compress_argv = ["zstd", f"-{comp['level']}", "-q", "-c", "-T0"] if comp["tool"] == "zstd" else \
        ["gzip", f"-{comp['level']}", "-c"]
    age_argv = ["age", "--encrypt"]
    for recipient in cfg["age_recipients"]:
        age_argv += ["-r", recipient]
    procs = []
    src = subprocess.Popen(source_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    widen_pipe(src.stdout)
    cmp_ = subprocess.Popen(compress_argv, stdin=src.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    src.stdout.close()
    widen_pipe(cmp_.stdout)
    enc = subprocess.Popen(age_argv, stdin=cmp_.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cmp_.stdout.close()
    widen_pipe(enc.stdout)
    for name, proc in ((source_argv[0], src), (compress_argv[0], cmp_), ("age", enc)):
        buf = []
        if proc is src and on_source_line:
            threading.Thread(target=drain_lines, args=(proc.stderr, buf, on_source_line), daemon=True).start()
        else:
            threading.Thread(target=drain, args=(proc.stderr, buf), daemon=True).start()
        procs.append((name, proc, buf))
    return procs, enc.stdout


def widen_pipe(stream):
    """PIPE_BYTES of buffer for a pipe, or its default where the kernel refuses."""
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, ValueError):
        pass


def kill_all(procs):
    for _, proc, _ in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def base_prefix(cfg, store, name):
    return "/".join(p for p in (cfg["s3"]["prefix"].strip("/"), store, name) if p)


def upload_object(cfg, client, key, manifest_key, source_argv, manifest, env=None, on_source_line=None):
    """Stream source | compress | age to KEY, verify its size, then write its manifest.
    `manifest` is a dict, or a function returning one, called once the upload is complete.
    On any failure both objects are deleted and the pipeline killed. Returns the manifest."""
    bucket = cfg["s3"]["bucket"]
    procs, out = pipeline(cfg, source_argv, env=env, on_source_line=on_source_line)
    reader = HashingReader(out, procs)
    from boto3.s3.transfer import TransferConfig

    try:
        client.upload_fileobj(reader, bucket, key, Config=TransferConfig(
            multipart_threshold=64 * CHUNK, multipart_chunksize=64 * CHUNK, max_concurrency=2))
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != reader.size:
            raise BackupError(f"uploaded {key} is {head['ContentLength']} bytes, streamed {reader.size}")
        manifest = dict(manifest() if callable(manifest) else manifest)
        manifest.update({"key": key, "size": reader.size, "sha256": reader.sha256.hexdigest(),
                         "compress": cfg["compress"]["tool"], "encryption": "age",
                         "host": cfg.get("host") or socket.getfqdn()})
        client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest, indent=1, sort_keys=True).encode(),
                          ContentType="application/json")
    except BaseException as exc:
        kill_all(procs)
        for k in (key, manifest_key):
            try:
                client.delete_object(Bucket=bucket, Key=k)
            except Exception:  # noqa: BLE001 - best effort: the endpoint may be the failure
                pass
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"upload of {key} failed: {exc}") from exc
    log(f"uploaded s3://{bucket}/{key} ({reader.size} bytes, sha256 {reader.sha256.hexdigest()})")
    return manifest


def upload_stream(cfg, client, store, name, ext, source_argv, manifest, env=None, on_source_line=None):
    """Upload one backup; the manifest and then the latest pointer only after it verified."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime(STAMP)
    prefix = base_prefix(cfg, store, name)
    key, manifest_key = f"{prefix}/{stamp}.{ext}", f"{prefix}/{stamp}.manifest.json"

    def full_manifest():
        return {**(manifest() if callable(manifest) else manifest), "store": store, "name": name, "stamp": stamp}
    upload_object(cfg, client, key, manifest_key, source_argv, full_manifest, env=env, on_source_line=on_source_line)
    client.put_object(Bucket=cfg["s3"]["bucket"], Key=f"{prefix}/latest.json",
                      Body=json.dumps({"stamp": stamp, "key": key, "manifest": manifest_key}).encode(),
                      ContentType="application/json")
    return stamp


# --- MariaDB -------------------------------------------------------------------------

def client_argv(cfg, defaults_file=None):
    """The mariadb client, with the defaults file when there is one (none: root's socket)."""
    return [cfg["mariadb"]["client_command"]] + ([f"--defaults-extra-file={defaults_file}"] if defaults_file else [])


def mariadb_query(cfg, sql, defaults_file=None, database=None):
    argv = client_argv(cfg, defaults_file) + ["--batch", "--skip-column-names", "-e", sql]
    if database:
        argv.append(database)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise BackupError(f"mariadb query failed: {proc.stderr.strip()}")
    return [line.split("\t") for line in proc.stdout.splitlines()]


def quote_ident(name):
    return "`" + name.replace("`", "``") + "`"


# How a table's content is summed up in the manifest and checked after a restore.
# rows-crc32: COUNT(*) and the sum of each row's CRC32 over its columns' text, with a NULL
# flag and the byte length of every column appended, so the text is unambiguous (a NULL is
# not an empty string, no value can borrow the next one's bytes) without QUOTE()'s copy.
# One consistent read (it can run inside a snapshot, unlike CHECKSUM TABLE), about as
# cheap as the COUNT(*) scan itself: 0.5 s for 200,000 rows of 1 KiB where rows-md5 (the
# first 60 bits of MD5(QUOTE(col)...)) took 1.8-2.1 s (benchmarks/RESULTS.md). Manifests
# name their method and are checked with it: rows-md5 ones as they were made, and those
# without "checksum_method" (the first ones) with CHECKSUM TABLE.
CHECKSUM_METHOD = "rows-crc32"
MD5_CHECKSUM_METHOD = "rows-md5"
LEGACY_CHECKSUM_METHOD = "checksum-table"


def list_tables_sql(database):
    return ("SELECT table_name FROM information_schema.tables WHERE table_schema = "
            f"'{database}' AND table_type = 'BASE TABLE' ORDER BY table_name")


def columns_sql(database, table):
    return ("SELECT column_name FROM information_schema.columns WHERE table_schema = "
            f"'{database}' AND table_name = '{table}' ORDER BY ordinal_position")


def rows_md5_sql(database, table, columns):
    """COUNT(*) and an order-independent sum of per-row digests. QUOTE() makes each row's
    text unambiguous: every value a quoted, escaped literal, NULL the bare word."""
    row = "CONCAT_WS(',', " + ", ".join(f"QUOTE({quote_ident(c)})" for c in columns) + ")"
    return (f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(MD5({row}), 15), 16, 10) AS UNSIGNED)), 0) "
            f"FROM {quote_ident(database)}.{quote_ident(table)}")


def rows_crc32_sql(database, table, columns):
    """COUNT(*) and the sum of CRC32(values, NULL flags, byte lengths) of every row.
    CONCAT_WS skips NULLs; the flags say which were NULL and the lengths where each
    non-NULL value ends, so two different rows never read as the same text."""
    cols = [quote_ident(c) for c in columns]
    row = ("CONCAT_WS(',', " + ", ".join(cols) + ", CONCAT(" + ", ".join(f"ISNULL({c})" for c in cols) +
           "), CONCAT_WS('.', " + ", ".join(f"LENGTH({c})" for c in cols) + "))")
    return f"SELECT COUNT(*), COALESCE(SUM(CRC32({row})), 0) FROM {quote_ident(database)}.{quote_ident(table)}"


ROW_DIGESTS = {CHECKSUM_METHOD: rows_crc32_sql, MD5_CHECKSUM_METHOD: rows_md5_sql}


def table_facts(query, database, method=CHECKSUM_METHOD):
    """Row count and checksum of every base table of `database`; `query(sql)` returns rows."""
    if method != LEGACY_CHECKSUM_METHOD and method not in ROW_DIGESTS:
        raise BackupError(f"unknown checksum method {method!r} in the manifest")
    facts = {}
    for (table, *_rest) in query(list_tables_sql(database)):
        ident = f"{quote_ident(database)}.{quote_ident(table)}"
        if method == LEGACY_CHECKSUM_METHOD:
            count = query(f"SELECT COUNT(*) FROM {ident}")[0][0]
            checksum = query(f"CHECKSUM TABLE {ident}")[0][1]
        else:
            columns = [row[0] for row in query(columns_sql(database, table))]
            count, checksum = query(ROW_DIGESTS[method](database, table, columns))[0][:2]
        facts[table] = {"rows": int(count), "checksum": checksum}
    return facts


class SqlSession:
    """One client session kept open over a pipe: a transaction or a backup lock lives as
    long as it does. Each query is followed by a marker row, so its result ends there."""

    MARK = "multinotes-backup:end-of-result"

    def __init__(self, cfg, defaults_file):
        self.proc = subprocess.Popen(client_argv(cfg, defaults_file) + ["--batch", "--skip-column-names", "--unbuffered"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def query(self, sql):
        try:
            self.proc.stdin.write(f"{sql.strip().rstrip(';')};\nSELECT '{self.MARK}';\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        rows = []
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line == self.MARK:
                return rows
            rows.append(line.split("\t"))
        self.proc.wait()
        raise BackupError(f"mariadb query failed ({sql.split()[0]} ...): {self.proc.stderr.read().strip()}")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# The dump's verbose lines that it prints only once its START TRANSACTION WITH CONSISTENT
# SNAPSHOT has run (client/mysqldump.c: main() starts the transaction before any table).
DUMP_SNAPSHOT_TAKEN = (b"-- Retrieving ", b"-- Sending SELECT", b"-- Skipping ", b"-- Disconnecting")
# Commits wait at most this long for the dump to open its snapshot; past it the backup fails.
COMMIT_HOLD_LIMIT_S = 10


class ConsistentManifest:
    """The manifest's row counts and checksums, from the moment the dump reads.

    mariadb-dump --single-transaction reads in a snapshot of its own: counting in another
    session before or after it races every commit in between (a heartbeat row written
    between the two made a restore drill differ from its manifest). So one session holds
    commits (BACKUP STAGE BLOCK_COMMIT, the RELOAD privilege, as mariadb-backup does) while
    a second opens its snapshot and the dump opens its own; then commits go on, and the
    facts are read in the second session's snapshot, the same commits the dump saw.
    Commits wait while the dump connects: milliseconds, never more than COMMIT_HOLD_LIMIT_S.
    The facts are read in a thread from the moment the dump has its snapshot, while the
    dump streams (a table scan each: reading them after the upload doubled a backup's time).
    """

    def __init__(self, cfg, database):
        self.cfg, self.database = cfg, database
        defaults = cfg["mariadb"]["defaults_file"]
        self.lock, self.held, self.expired, self.error = threading.Lock(), False, False, None
        self.reading, self.read = None, {}
        self.holder, self.reader = SqlSession(cfg, defaults), SqlSession(cfg, defaults)
        self.timer = threading.Timer(COMMIT_HOLD_LIMIT_S, self.release, kwargs={"expired": True})
        self.timer.daemon = True

    def __enter__(self):
        try:
            self.holder.query(f"SET SESSION lock_wait_timeout = {COMMIT_HOLD_LIMIT_S}")
            self.holder.query("BACKUP STAGE START")
            self.holder.query("BACKUP STAGE BLOCK_COMMIT")
            self.held = True
            # No commit until the release: this is the binary log position of both snapshots,
            # where a point-in-time replay of the binlogs after this dump starts.
            gtid, log_bin = self.holder.query("SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.log_bin")[0][:2]
            self.binlog = {"enabled": log_bin == "1", "gtid_binlog_pos": gtid}
            self.timer.start()
            self.reader.query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.reader.query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        except BaseException:
            self.__exit__()
            raise
        return self

    def release(self, expired=False):
        with self.lock:
            if not self.held:
                return
            self.held, self.expired = False, expired
            self.timer.cancel()
            try:
                self.holder.query("BACKUP STAGE END")
            except BackupError as exc:
                self.error = str(exc)
                self.holder.close()  # a session that is gone holds nothing

    def on_dump_line(self, line):
        """drain_lines' callback for the dump's stderr: release at its snapshot (or its end)
        and start reading the facts beside the dump."""
        if line is None or line.startswith(DUMP_SNAPSHOT_TAKEN):
            self.release()
            if line is not None and self.reading is None and not self.expired:
                self.reading = threading.Thread(target=self.read_facts, daemon=True)
                self.reading.start()
        return line is not None and line.startswith(b"-- ")

    def read_facts(self):
        try:
            self.read["tables"] = table_facts(self.reader.query, self.database)
        except BaseException as exc:  # noqa: BLE001 - handed to facts(), in the main thread
            self.read["error"] = exc

    def facts(self):
        if self.expired:
            raise BackupError(f"{self.cfg['mariadb']['dump_command']} did not open its snapshot within "
                              f"{COMMIT_HOLD_LIMIT_S} s of commits being held; the manifest could not "
                              f"be made consistent with the dump")
        if self.error:
            raise BackupError(f"releasing the commits held for the manifest failed: {self.error}")
        if self.reading is None:  # the dump ended without a snapshot line: read them now
            self.read_facts()
        else:
            self.reading.join()
        if "error" in self.read:
            raise self.read["error"]
        return {"tables": self.read["tables"], "checksum_method": CHECKSUM_METHOD, "binlog": self.binlog}

    def __exit__(self, *exc):
        try:
            self.release()
        finally:
            self.reader.close()  # a query still running ends with the session: the thread too
            self.holder.close()
            if self.reading is not None:
                self.reading.join()


def backup_mariadb(cfg, client):
    m = cfg["mariadb"]
    kept, epoch = [], None
    with Lock(cfg, "mariadb"):
        if binlog_enabled(cfg):
            log_bin, basename = mariadb_query(cfg, "SELECT @@GLOBAL.log_bin, @@GLOBAL.log_bin_basename", m["defaults_file"])[0][:2]
            epoch = binlog_epoch(basename) if log_bin == "1" else None
        for database in m["databases"]:
            argv = [m["dump_command"], f"--defaults-extra-file={m['defaults_file']}",
                    "--single-transaction", "--verbose", "--quick", "--routines", "--triggers", "--events",
                    "--hex-blob", "--default-character-set=utf8mb4", database]
            with ConsistentManifest(cfg, database) as snapshot:
                upload_stream(cfg, client, "mariadb", database, "sql." + ext_of(cfg) + ".age", argv,
                              with_epoch(snapshot.facts, epoch), on_source_line=snapshot.on_dump_line)
            kept.append(min(prune(cfg, client, "mariadb", database)))
        if binlog_enabled(cfg):
            prune_binlogs(cfg, client, oldest_recovery_point(cfg, client, kept))


def with_epoch(facts, epoch):
    """The manifest's facts, naming the binary log history a replay from this dump reads."""
    def manifest():
        got = facts()
        if epoch and got["binlog"]["enabled"]:
            got["binlog"]["epoch"] = epoch
        return got
    return manifest


def ext_of(cfg):
    return "zst" if cfg["compress"]["tool"] == "zstd" else "gz"


# --- Binary logs (point-in-time recovery) ------------------------------------------
# Each run closes the binary log when anything was committed since the last run (FLUSH
# BINARY LOGS) and ships every closed file not shipped yet, as it is (compressed and
# encrypted), named by its first and last event:
# <prefix>/mariadb-binlog/<history>/<first>_<last>_<file>. covered.json there says up to
# when every commit is in S3: the recovery point a loss of the host would leave. A restore
# replays these files from a dump's GTID position. <history> is the id of the server's
# binary log history (binlog_epoch): a server rebuilt from nothing starts a new one, so its
# files (numbered from 1 again, GTIDs from 1 again) never mix with those of the lost one.

BINLOG_STORE = "mariadb-binlog"
BINLOG_KEY_RE = re.compile(r"/(\d{8}T\d{6}Z)_(\d{8}T\d{6}Z)_([A-Za-z0-9_.-]+\.\d{6})\.manifest\.json$")
BINLOG_EVENT_RE = re.compile(rb"^#(\d{6}) +(\d{1,2}:\d{2}:\d{2}) server id ")
BINLOG_STATE = "binlog-shipped.json"
BINLOG_EPOCH_FILE = "multinotes-binlog-epoch"
# Shipping runs are short and every few minutes, and the nightly `all` run ships too, often
# in the same second as cron's `binlogs` run: the second waits for the first instead of
# failing. Longer than this, the holder is stuck or the store too slow: fail and alert.
BINLOG_LOCK_WAIT_S = 600
# A dump's snapshot is taken just before its stamp: a restore also reads the files whose
# last event is up to this much older than the stamp (the GTID position skips what the dump has).
BINLOG_SELECT_MARGIN = dt.timedelta(minutes=10)


def binlog_enabled(cfg):
    """Whether this host ships MariaDB's binary log (a config from before it has no "binlog")."""
    return bool((cfg.get("binlog") or {}).get("enabled"))


def binlog_prefix(cfg, epoch=""):
    return base_prefix(cfg, BINLOG_STORE, epoch)


def binlog_epoch(basename, now=None, create=True):
    """The id of this server's binary log history, a UTC stamp: made by the first shipping or
    dump and kept beside the logs in the data directory, so it is lost with them. None when
    there is none yet and CREATE is false."""
    path = os.path.join(os.path.dirname(basename), BINLOG_EPOCH_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            epoch = fh.read().strip()
    except FileNotFoundError:
        if not create:
            return None
        epoch = (now or dt.datetime.now(dt.timezone.utc)).strftime(STAMP)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return binlog_epoch(basename)
        with os.fdopen(fd, "w") as fh:
            fh.write(epoch + "\n")
    if not re.fullmatch(r"\d{8}T\d{6}Z", epoch):
        raise BackupError(f"{path} holds {epoch!r}, not a binary log history id like 20261205T031200Z")
    return epoch


def closed_binlogs(index_path):
    """The files of the binary log index but the last (the one the server writes), as
    absolute paths, in order."""
    directory = os.path.dirname(index_path)
    with open(index_path, encoding="utf-8") as fh:
        names = [line.strip() for line in fh if line.strip()]
    return [os.path.join(directory, os.path.basename(n)) for n in names[:-1]]


def binlog_event_range(lines):
    """(first, last) event time of a binary log, from `TZ=UTC mariadb-binlog FILE` output
    lines (bytes). None when there is no event header."""
    first = last = None
    for line in lines:
        m = BINLOG_EVENT_RE.match(line)
        if m:
            when = dt.datetime.strptime(m.group(1).decode() + " " + m.group(2).decode(), "%y%m%d %H:%M:%S")
            when = when.replace(tzinfo=dt.timezone.utc)
            first = first or when
            last = when
    return (first, last) if first else None


def read_binlog_range(path):
    env = dict(os.environ, TZ="UTC")
    proc = subprocess.Popen(["mariadb-binlog", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    errbuf = []
    threading.Thread(target=drain, args=(proc.stderr, errbuf), daemon=True).start()
    found = binlog_event_range(proc.stdout)
    if proc.wait() != 0 or found is None:
        raise BackupError(f"mariadb-binlog could not read {path}: {b''.join(errbuf).decode(errors='replace').strip()[-400:]}")
    return found


def read_json(path, default):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def write_json(path, data):
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def ship_binlogs(cfg, client):
    m = cfg["mariadb"]
    with Lock(cfg, "binlog", wait=BINLOG_LOCK_WAIT_S):
        def query(sql):
            return mariadb_query(cfg, sql, m["defaults_file"])
        log_bin, basename, gtid = query("SELECT @@GLOBAL.log_bin, @@GLOBAL.log_bin_basename, @@GLOBAL.gtid_binlog_pos")[0][:3]
        if log_bin != "1":
            raise BackupError("the server's binary log is off, so no point in time can be recovered: turn it on "
                              "(mariadb_binlog_enabled in the mariadb role) or set backup_binlog_enabled to false")
        os.makedirs(cfg["state_dir"], exist_ok=True)
        state_path = os.path.join(cfg["state_dir"], BINLOG_STATE)
        epoch = binlog_epoch(basename)
        state = read_json(state_path, {})
        if state.get("epoch") != epoch:  # another server's history (a new data directory)
            state = {"epoch": epoch, "shipped": {}}
        # Read before the flush: every commit up to now is in a file the flush closes.
        now = dt.datetime.now(dt.timezone.utc)
        if gtid != state.get("flushed_gtid"):
            query("FLUSH BINARY LOGS")
            state["flushed_gtid"] = gtid
        closed = closed_binlogs(basename + ".index")
        present = {os.path.basename(path) for path in closed}
        shipped = {name: stem for name, stem in state["shipped"].items() if name in present}
        bucket, prefix = cfg["s3"]["bucket"], binlog_prefix(cfg, epoch)
        for path in closed:
            name = os.path.basename(path)
            if name in shipped or not os.path.exists(path):
                continue
            first, last = read_binlog_range(path)
            stem = f"{prefix}/{first.strftime(STAMP)}_{last.strftime(STAMP)}_{name}"
            upload_object(cfg, client, f"{stem}.{ext_of(cfg)}.age", f"{stem}.manifest.json", ["cat", path],
                          {"store": BINLOG_STORE, "file": name, "first_event": first.strftime(STAMP),
                           "last_event": last.strftime(STAMP)})
            shipped[name] = stem
            state["shipped"] = shipped
            write_json(state_path, state)
        state.update(shipped=shipped, covered_until=now.strftime(STAMP))
        client.put_object(Bucket=bucket, Key=f"{prefix}/covered.json", ContentType="application/json",
                          Body=json.dumps({"covered_until": state["covered_until"], "gtid_binlog_pos": gtid}).encode())
        write_json(state_path, state)
        log(f"binlog: every commit up to {state['covered_until']} (GTID {gtid or 'none'}) is in s3://{bucket}/{prefix}/")
        return now


def binlog_objects(keys):
    """[(first, last, file, stem)] of the shipped binary logs among KEYS, in log order."""
    out = []
    for key in keys:
        m = BINLOG_KEY_RE.search(key)
        if m:
            out.append((parse_stamp(m.group(1)), parse_stamp(m.group(2)), m.group(3), key[:-len(".manifest.json")]))
    return sorted(out, key=lambda o: (o[0], o[2]))


def binlogs_to_replay(objects, dump_stamp, until):
    """The shipped files a replay from a dump stamped DUMP_STAMP up to UNTIL reads: from the
    last that may hold a commit after the dump's snapshot to the first that starts after
    UNTIL. Refuses a gap in the files' numbers (a lost file would silently lose commits)."""
    start = dump_stamp - BINLOG_SELECT_MARGIN
    chosen = [o for o in objects if o[1] >= start and o[0] <= until]
    for (_, _, a, _), (_, _, b, _) in zip(chosen, chosen[1:]):
        base_a, num_a = a.rsplit(".", 1)
        base_b, num_b = b.rsplit(".", 1)
        if base_a == base_b and int(num_b) != int(num_a) + 1:
            raise BackupError(f"binary log files between {a} and {b} are missing from the store: "
                              f"commits in them cannot be replayed")
    return chosen


def prune_binlogs(cfg, client, oldest_kept):
    """Delete the shipped files no kept dump or base backup needs (their last event before
    the oldest one, with the selection margin)."""
    bucket = cfg["s3"]["bucket"]
    keys = list_keys(client, bucket, binlog_prefix(cfg))
    deleted = 0
    for first, last, name, stem in binlog_objects(keys):
        if last < oldest_kept - BINLOG_SELECT_MARGIN:
            for key in [k for k in keys if k.startswith(stem + ".")]:
                client.delete_object(Bucket=bucket, Key=key)
                deleted += 1
    if deleted:
        log(f"retention {BINLOG_STORE}: deleted {deleted} objects older than the oldest kept dump or base")


# --- MariaDB physical base backups (mariadb-backup) -----------------------------------

BASE_STORE, BASE_NAME = "mariadb-base", "server"
# mariadb-backup's line naming the binary log position of its consistent point (it takes
# BACKUP STAGE BLOCK_COMMIT at the end of the copy, so no commit lies across it).
BASE_POSITION = re.compile(rb"MySQL binlog position: filename '([^']*)', position '(\d+)'"
                           rb"(?:, GTID of the last change '([^']*)')?")


def base_enabled(cfg):
    return bool(cfg["mariadb"]["enabled"] and (cfg["mariadb"].get("base") or {}).get("enabled"))


class BasePosition:
    """drain_lines' callback for mariadb-backup's stderr: keeps the binary log position of
    the copy's consistent point. Every line stays in the error buffer (its end is the error)."""

    def __init__(self):
        self.file = self.gtid = None

    def __call__(self, line):
        m = BASE_POSITION.search(line or b"")
        if m:
            self.file, self.gtid = m.group(1).decode(), (m.group(3) or b"").decode()
        return False


def base_argv(cfg, workdir):
    m = cfg["mariadb"]
    return [m["base"]["command"], f"--defaults-extra-file={m['defaults_file']}", "--backup",
            "--stream=mbstream", f"--target-dir={workdir}"]


def backup_base(cfg, client):
    """A physical copy of the whole server (mariadb-backup --stream) through the same
    compress | age | S3 pipeline, never on local disk; its manifest names the GTID position
    a point-in-time replay starts from."""
    m = cfg["mariadb"]
    with Lock(cfg, BASE_STORE):
        log_bin, basename, version = mariadb_query(
            cfg, "SELECT @@GLOBAL.log_bin, @@GLOBAL.log_bin_basename, VERSION()", m["defaults_file"])[0][:3]
        epoch = binlog_epoch(basename) if log_bin == "1" else None
        position = BasePosition()
        os.makedirs(cfg["state_dir"], exist_ok=True)
        workdir = tempfile.mkdtemp(prefix="base.", dir=cfg["state_dir"])  # its few temporary files

        def manifest():
            if position.file is None:
                raise BackupError(f"{m['base']['command']} did not report the binary log position of its copy")
            return {"kind": "mariadb-backup", "server_version": version,
                    "binlog": {"enabled": log_bin == "1", "gtid_binlog_pos": position.gtid,
                               "file": position.file, "epoch": epoch}}
        try:
            upload_stream(cfg, client, BASE_STORE, BASE_NAME, "mbstream." + ext_of(cfg) + ".age",
                          base_argv(cfg, workdir), manifest, on_source_line=position)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        kept = prune(cfg, client, BASE_STORE, BASE_NAME)
        if binlog_enabled(cfg):
            prune_binlogs(cfg, client, oldest_recovery_point(cfg, client, [min(kept)]))


def complete_stamps(cfg, client, store, name):
    keys = list_keys(client, cfg["s3"]["bucket"], base_prefix(cfg, store, name))
    return sorted(s for s, ks in backups_by_stamp(keys).items() if any(k.endswith(".manifest.json") for k in ks))


def oldest_recovery_point(cfg, client, kept):
    """The oldest kept dump or base backup (KEPT: stamps already known): the shipped binary
    log older than it is needed by none."""
    stamps = list(kept)
    if cfg["mariadb"]["enabled"]:
        for database in cfg["mariadb"]["databases"]:
            stamps += complete_stamps(cfg, client, "mariadb", database)[:1]
        if base_enabled(cfg):
            stamps += complete_stamps(cfg, client, BASE_STORE, BASE_NAME)[:1]
    return parse_stamp(min(stamps))


def newest_base(cfg, client):
    return (complete_stamps(cfg, client, BASE_STORE, BASE_NAME) or [None])[-1]


def base_stale(cfg, newest, now):
    """No base (NEWEST is None), or the newest older than its max age."""
    return newest is None or now - parse_stamp(newest) > dt.timedelta(hours=cfg["mariadb"]["base"]["max_age_hours"])


def base_unless_running(cfg, client):
    """`all`'s base backup when none is fresh, unless the base schedule's run is making one
    now (their minutes can meet): that run is the base, and waiting hours for it is not."""
    try:
        backup_base(cfg, client)
    except LockHeld as exc:
        log(f"base: not started, a base backup is running now ({exc})")


def base_missing_or_stale(cfg, client):
    return base_stale(cfg, newest_base(cfg, client), dt.datetime.now(dt.timezone.utc))


def base_for(cfg, client, until):
    """The manifest of the newest complete base backup stamped at or before UNTIL."""
    stamps = [s for s in complete_stamps(cfg, client, BASE_STORE, BASE_NAME) if parse_stamp(s) <= until]
    if not stamps:
        raise BackupError(f"no complete base backup was taken at or before {until:%Y-%m-%d %H:%M:%S} UTC: "
                          f"the oldest point this host can restore to from a base is its oldest base backup")
    manifest = fetch_manifest(cfg, client, BASE_STORE, BASE_NAME, stamps[-1])
    if not (manifest.get("binlog") or {}).get("epoch"):
        raise BackupError(f"the base backup {manifest['stamp']} was taken while the binary log was off: "
                          f"no replay can start from it")
    return manifest


def loader_argv(cfg, defaults, target, live):
    """The client that loads into TARGET; a drill's writes stay out of the binary log (and
    so out of what is shipped)."""
    return client_argv(cfg, defaults) + ([] if live else ["--init-command=SET SESSION sql_log_bin=0"]) + [target]


def recreate_drill(cfg, defaults, target):
    mariadb_query(cfg, f"SET SESSION sql_log_bin=0; DROP DATABASE IF EXISTS {quote_ident(target)}; "
                       f"CREATE DATABASE {quote_ident(target)} CHARACTER SET utf8mb4", defaults)


def run_pipe(src_argv, dst_argv, what, src_env=None):
    """src | dst, both stderrs kept; raises naming the stage that failed."""
    src = subprocess.Popen(src_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=src_env)
    dst = subprocess.Popen(dst_argv, stdin=src.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    src.stdout.close()
    stages = ((src_argv[0], src, []), (dst_argv[0], dst, []))
    for _, proc, buf in stages:
        threading.Thread(target=drain, args=(proc.stderr, buf), daemon=True).start()
    errors = [exit_error(name, proc.returncode, buf) for name, proc, buf in stages if proc.wait() != 0]
    if errors:
        raise BackupError(f"{what} failed: " + "; ".join(errors))


def run_checked(argv, what):
    proc = subprocess.run(argv, capture_output=True, timeout=6 * 3600)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed: " + exit_error(argv[0], proc.returncode, [proc.stdout, proc.stderr]))


class TempServer:
    """A private mariadbd on a prepared copy: no network, no grant tables, no binary log,
    its socket inside the copy. Stopped (and waited for) on exit."""

    def __init__(self, datadir, start_timeout=120):
        self.datadir, self.timeout = datadir, start_timeout
        self.socket = os.path.join(datadir, "restore.sock")

    def __enter__(self):
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", "--user=mysql", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--pid-file={self.datadir}/restore.pid", f"--log-error={self.datadir}/restore.err",
             "--skip-networking", "--skip-grant-tables", "--skip-log-bin", "--innodb-buffer-pool-size=128M"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)
        while dt.datetime.now() < deadline:
            if self.proc.poll() is not None:
                break
            if subprocess.run(["mariadb-admin", f"--socket={self.socket}", "ping"], capture_output=True).returncode == 0:
                return self
            threading.Event().wait(0.2)
        err = ""
        with contextlib.suppress(OSError), open(f"{self.datadir}/restore.err", encoding="utf-8", errors="replace") as fh:
            err = fh.read()[-800:]
        self.__exit__()
        raise BackupError(f"the restored copy's server did not start: {err.strip()}")

    def query(self, sql, database=None):
        argv = ["mariadb", f"--socket={self.socket}", "--batch", "--skip-column-names", "-e", sql] + ([database] if database else [])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise BackupError(f"query on the restored copy failed: {proc.stderr.strip()}")
        return [line.split("\t") for line in proc.stdout.splitlines()]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            subprocess.run(["mariadb-admin", f"--socket={self.socket}", "shutdown"], capture_output=True, timeout=300)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def restore_base_into(cfg, client, args, manifest, defaults, live):
    """The base's copy of args.database into args.target: the copy extracted and prepared in
    a private directory, started as a private server, its database streamed into the target
    (as a dump is); the target's rows then checked against the copy's. Returns the facts."""
    workdir = tempfile.mkdtemp(prefix="base-restore.", dir=cfg["mariadb"]["base"]["restore_dir"])
    try:
        decrypt_into(cfg, client, manifest, args.identity, ["mbstream", "-x", "-C", workdir])
        run_checked([cfg["mariadb"]["base"]["command"], "--prepare", f"--target-dir={workdir}"],
                    f"preparing the base backup {manifest['stamp']}")
        run_checked(["chown", "-R", "mysql:mysql", workdir], "handing the copy to the mysql user")
        with TempServer(workdir) as server:
            copied = table_facts(server.query, args.database)
            if not live:
                recreate_drill(cfg, defaults, args.target)
            dump = [cfg["mariadb"]["dump_command"], f"--socket={server.socket}", "--single-transaction", "--quick",
                    "--routines", "--triggers", "--events", "--hex-blob", "--default-character-set=utf8mb4", args.database]
            run_pipe(dump, loader_argv(cfg, defaults, args.target, live), f"loading {args.database} from the base backup")
        restored = table_facts(lambda sql: mariadb_query(cfg, sql, defaults), args.target)
        if restored != copied:
            raise BackupError(f"{args.target} differs from the base backup's {args.database}: "
                              f"{json.dumps({t: [copied.get(t), restored.get(t)] for t in set(copied) | set(restored) if copied.get(t) != restored.get(t)})}")
        return restored
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- Redis ---------------------------------------------------------------------------

def redis_argv(cfg):
    r = cfg["redis"]
    argv = ["redis-cli", "-h", r["host"], "-p", str(r["port"])]
    if r["user"]:
        argv += ["--user", r["user"]]
    if r["tls"]:
        argv.append("--tls")
    return argv


def redis_env(cfg):
    env = dict(os.environ)
    if cfg["redis"]["password"]:
        env["REDISCLI_AUTH"] = cfg["redis"]["password"]
    return env


def backup_redis(cfg, client):
    with Lock(cfg, "redis"):
        info = subprocess.run(redis_argv(cfg) + ["INFO", "keyspace"], capture_output=True, text=True,
                              env=redis_env(cfg), timeout=60)
        if info.returncode != 0 or "ERR" in info.stdout or "NOAUTH" in info.stdout or "WRONGPASS" in info.stdout:
            raise BackupError(f"redis INFO failed: {(info.stdout + info.stderr).strip()}")
        keyspace = dict(line.split(":", 1) for line in info.stdout.splitlines() if line.startswith("db"))
        # --rdb asks the server for a fresh point-in-time snapshot (the replication
        # full-sync path, a BGSAVE) and streams it: consistent, and no file path needed.
        argv = redis_argv(cfg) + ["--rdb", "-"]
        upload_stream(cfg, client, "redis", cfg["redis"]["name"], "rdb." + ext_of(cfg) + ".age", argv,
                      {"keyspace": keyspace}, env=redis_env(cfg))
        prune(cfg, client, "redis", cfg["redis"]["name"])


# --- Retention -----------------------------------------------------------------------

def list_keys(client, bucket, prefix):
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def backups_by_stamp(keys):
    stamps = {}
    for key in keys:
        m = STAMP_RE.search(key)
        if m:
            stamps.setdefault(m.group(1), []).append(key)
    return stamps


def parse_stamp(stamp):
    return dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.timezone.utc)


def retention_plan(stamps, daily_days, weekly_days, now):
    """Which stamps to keep: all within daily_days, the newest of each ISO week within
    weekly_days, and always the newest complete backup. Age comes from the key name."""
    keep, weeks = set(), {}
    for stamp in sorted(stamps, reverse=True):
        age = now - parse_stamp(stamp)
        if age <= dt.timedelta(days=daily_days):
            keep.add(stamp)
        elif age <= dt.timedelta(days=weekly_days):
            week = parse_stamp(stamp).isocalendar()[:2]
            if week not in weeks:
                weeks[week] = stamp
                keep.add(stamp)
    if stamps:
        keep.add(max(stamps))
    return keep


def prune(cfg, client, store, name):
    bucket, prefix = cfg["s3"]["bucket"], base_prefix(cfg, store, name)
    by_stamp = backups_by_stamp(list_keys(client, bucket, prefix))
    complete = {s: ks for s, ks in by_stamp.items() if any(k.endswith(".manifest.json") for k in ks)}
    now = dt.datetime.now(dt.timezone.utc)
    keep = retention_plan(complete, cfg["retention"]["daily_days"], cfg["retention"]["weekly_days"], now)
    deleted = 0
    for stamp, keys in by_stamp.items():
        # A stamp without a manifest is a run that never finished: drop it after a day.
        orphan = stamp not in complete and now - parse_stamp(stamp) > dt.timedelta(days=1)
        if (stamp in complete and stamp not in keep) or orphan:
            for key in keys:
                client.delete_object(Bucket=bucket, Key=key)
                deleted += 1
                log(f"retention: deleted s3://{bucket}/{key}")
    log(f"retention {store}/{name}: kept {len(keep)} backups, deleted {deleted} objects")
    return keep


# --- Checks --------------------------------------------------------------------------

def targets(cfg):
    out = []
    if cfg["mariadb"]["enabled"]:
        out += [("mariadb", db) for db in cfg["mariadb"]["databases"]]
    if cfg["redis"]["enabled"]:
        out.append(("redis", cfg["redis"]["name"]))
    return out


def check_freshness(cfg, client, max_age_hours=None):
    limit = dt.timedelta(hours=max_age_hours or cfg["freshness_max_age_hours"])
    now, stale = dt.datetime.now(dt.timezone.utc), []
    for store, name in targets(cfg):
        newest = (complete_stamps(cfg, client, store, name) or [None])[-1]
        if newest is None or now - parse_stamp(newest) > limit:
            stale.append(f"{store}/{name}: newest backup {newest or 'none'} is older than {limit}")
        else:
            log(f"{store}/{name}: newest backup {newest} is fresh")
    if base_enabled(cfg):
        newest = newest_base(cfg, client)
        if base_stale(cfg, newest, now):
            stale.append(f"{BASE_STORE}: newest base backup {newest or 'none'} is older than "
                         f"{dt.timedelta(hours=cfg['mariadb']['base']['max_age_hours'])}")
        else:
            log(f"{BASE_STORE}: newest base backup {newest} is fresh")
    if binlog_enabled(cfg):
        stale += binlog_staleness(cfg, client, now)
    if stale:
        raise BackupError("; ".join(stale))


def binlog_staleness(cfg, client, now):
    """[] when this server's binary log was shipped within the RPO, else what is wrong."""
    rpo = dt.timedelta(minutes=cfg["binlog"]["rpo_minutes"])
    basename = mariadb_query(cfg, "SELECT @@GLOBAL.log_bin_basename", cfg["mariadb"]["defaults_file"])[0][0]
    epoch = binlog_epoch(basename, create=False)
    if epoch is None:
        return ["binary log: never shipped from this server (multinotes-backup binlogs)"]
    try:
        covered = covered_until(cfg, client, epoch)
    except BackupError as exc:
        return [f"binary log: {exc}"]
    if now - covered > rpo:
        return [f"binary log: shipped up to {covered:%Y-%m-%d %H:%M:%S} UTC, more than the RPO of {rpo} ago"]
    log(f"binary log: shipped up to {covered:%Y-%m-%d %H:%M:%S} UTC, within the RPO of {rpo}")
    return []


def check_certs(cfg):
    seconds = cfg["certs"]["warn_days"] * 86400
    files = sorted({f for pattern in cfg["certs"]["paths"] for f in glob.glob(pattern)})
    expiring = []
    for path in files:
        end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", path], capture_output=True, text=True)
        if end.returncode != 0:
            expiring.append(f"{path}: not a readable certificate")
            continue
        soon = subprocess.run(["openssl", "x509", "-noout", "-checkend", str(seconds), "-in", path],
                              capture_output=True, text=True)
        if soon.returncode != 0:
            expiring.append(f"{path} expires within {cfg['certs']['warn_days']} days ({end.stdout.strip()})")
        else:
            log(f"{path}: {end.stdout.strip()}")
    if expiring:
        raise BackupError("; ".join(expiring))


# --- Restore -------------------------------------------------------------------------

def fetch_manifest(cfg, client, store, name, stamp):
    bucket, prefix = cfg["s3"]["bucket"], base_prefix(cfg, store, name)
    if stamp in (None, "", "latest"):
        latest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/latest.json")["Body"].read())
        stamp = latest["stamp"]
    return json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/{stamp}.manifest.json")["Body"].read())


def decrypt_into(cfg, client, manifest, identity, sink_argv, sink_stdout=None):
    """S3 object -> sha256 check -> age -d -> decompress -> sink, streamed."""
    body = client.get_object(Bucket=cfg["s3"]["bucket"], Key=manifest["key"])["Body"]
    dec = subprocess.Popen(["age", "--decrypt", "-i", identity], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    unz = subprocess.Popen(["zstd", "-d", "-q", "-c"] if manifest["compress"] == "zstd" else ["gzip", "-d", "-c"],
                           stdin=dec.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dec.stdout.close()
    sink = subprocess.Popen(sink_argv, stdin=unz.stdout, stdout=sink_stdout or subprocess.PIPE, stderr=subprocess.PIPE)
    unz.stdout.close()
    bufs = {}
    for name, proc in (("age", dec), ("decompress", unz), (sink_argv[0], sink)):
        bufs[name] = []
        threading.Thread(target=drain, args=(proc.stderr, bufs[name]), daemon=True).start()
    if sink_stdout is None:
        threading.Thread(target=drain, args=(sink.stdout, []), daemon=True).start()
    sha, size = hashlib.sha256(), 0
    try:
        for chunk in iter(lambda: body.read(CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
            dec.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        dec.stdin.close()
    errors = []
    for name, proc in (("age", dec), ("decompress", unz), (sink_argv[0], sink)):
        if proc.wait() != 0:
            errors.append(exit_error(name, proc.returncode, bufs[name]))
    if sha.hexdigest() != manifest["sha256"] or size != manifest["size"]:
        errors.insert(0, f"{manifest['key']}: sha256/size {sha.hexdigest()}/{size} differ from the manifest's "
                         f"{manifest['sha256']}/{manifest['size']}")
    if errors:
        raise BackupError("; ".join(errors))


def record_drill(cfg, result):
    os.makedirs(cfg["state_dir"], exist_ok=True)
    write_json(os.path.join(cfg["state_dir"], "last-drill.json"), result)


def check_drill(cfg):
    """The last restore drill passed; where the binary log is shipped, it was a restore to
    a point (the dump or base and the log replayed), so point-in-time recovery is proven,
    not only the dumps. Returns the line the launch check shows."""
    drill = read_json(os.path.join(cfg["state_dir"], "last-drill.json"), None)
    if drill is None:
        raise BackupError("no restore drill was run on this host: run playbooks/restore.yml"
                          + (" -e backup_restore_to=latest" if binlog_enabled(cfg) else ""))
    line = (f"drill {drill.get('time')} of {drill.get('store')} {drill.get('stamp')} into {drill.get('target')}"
            + (f" to {drill['restore_to']}" if drill.get("restore_to") else "") + f": {drill.get('result')}")
    if drill.get("result") != "pass":
        raise BackupError(f"{line} ({drill.get('error', 'no error recorded')})")
    if binlog_enabled(cfg) and not drill.get("restore_to"):
        raise BackupError(f"{line}, but not to a point in time: the binary log is shipped here, so the drill must "
                          f"replay it (playbooks/restore.yml -e backup_restore_to=latest)")
    return line


def parse_restore_to(value, now):
    """--to: 'latest' (None: as far as the shipped binary logs go) or a UTC time
    'YYYY-MM-DD HH:MM:SS' that is not in the future."""
    if value == "latest":
        return None
    try:
        when = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise BackupError(f"restore point {value!r} is not 'latest' or a UTC time like 2026-12-01 14:03:27") from None
    if when > now:
        raise BackupError(f"restore point {value} UTC is in the future (now {now:%Y-%m-%d %H:%M:%S} UTC)")
    return when


def covered_until(cfg, client, epoch):
    try:
        body = client.get_object(Bucket=cfg["s3"]["bucket"], Key=f"{binlog_prefix(cfg, epoch)}/covered.json")["Body"].read()
    except Exception as exc:  # noqa: BLE001 - boto3's NoSuchKey and friends
        raise BackupError(f"no binary log has been shipped from this host ({exc}): there is no point in time to restore to") from exc
    return parse_stamp(json.loads(body)["covered_until"])


def dump_for(cfg, client, database, until):
    """The manifest of the newest complete dump of DATABASE stamped at or before UNTIL."""
    stamps = [s for s in complete_stamps(cfg, client, "mariadb", database) if parse_stamp(s) <= until]
    if not stamps:
        raise BackupError(f"no complete backup of {database} was taken at or before {until:%Y-%m-%d %H:%M:%S} UTC: "
                          f"the oldest point this host can restore to is its oldest backup")
    manifest = fetch_manifest(cfg, client, "mariadb", database, stamps[-1])
    if not (manifest.get("binlog") or {}).get("epoch"):
        raise BackupError(f"the backup {manifest['stamp']} was taken while the binary log was off or not shipped: "
                          f"no replay can start from it")
    return manifest


GTID_EVENT = re.compile(r"^#.*\bGTID (\d+)-(\d+)-(\d+)\b", re.M)


def gtids_after(start, decoded):
    """Whether the decoded log (mariadb-binlog's text) holds a transaction after START (a
    gtid_binlog_pos, e.g. '0-1-96,1-2-5'), in any domain."""
    seen = {}
    for part in filter(None, (start or "").split(",")):
        domain, _server, seq = part.split("-")
        seen[int(domain)] = int(seq)
    return any(int(seq) > seen.get(int(domain), 0) for domain, _server, seq in GTID_EVENT.findall(decoded))


def replay_binlogs(cfg, client, args, manifest, until, defaults, live):
    """Replay the shipped binary logs from the dump's GTID position to UNTIL (that second
    included) into the target. Returns the files read."""
    bucket = cfg["s3"]["bucket"]
    prefix = binlog_prefix(cfg, manifest["binlog"]["epoch"])
    chosen = binlogs_to_replay(binlog_objects(list_keys(client, bucket, prefix)),
                               parse_stamp(manifest["stamp"]), until)
    if not chosen:
        return []
    workdir = tempfile.mkdtemp(prefix="replay.", dir=cfg["state_dir"])
    try:
        files = []
        for _, _, name, stem in chosen:
            binlog_manifest = json.loads(client.get_object(Bucket=bucket, Key=stem + ".manifest.json")["Body"].read())
            path = os.path.join(workdir, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                decrypt_into(cfg, client, binlog_manifest, args.identity, ["cat"], sink_stdout=out)
            files.append(path)
        stop = f"--stop-datetime={until + dt.timedelta(seconds=1):%Y-%m-%d %H:%M:%S}"
        start = manifest["binlog"].get("gtid_binlog_pos")
        # Nothing committed after the backup up to the point: nothing to replay. (mariadb-binlog
        # 11.8 fails a --start-position it never passes: "never reached expected GTID state".)
        decoded = subprocess.run(["mariadb-binlog", stop] + files, capture_output=True, text=True,
                                 errors="replace", env=dict(os.environ, TZ="UTC"))
        if decoded.returncode != 0:
            raise BackupError("reading the binary logs failed: " + exit_error("mariadb-binlog", decoded.returncode,
                                                                            [decoded.stderr.encode()]))
        if not gtids_after(start, decoded.stdout):
            log(f"no commit after the backup's position {start} up to {until:%Y-%m-%d %H:%M:%S} UTC: nothing to replay")
            return [name for _, _, name, _ in chosen]
        argv = ["mariadb-binlog", stop, f"--database={args.database}"]
        if start:
            argv.append(f"--start-position={start}")
        if args.target != args.database:
            argv.append(f"--rewrite-db={args.database}->{args.target}")
        run_pipe(argv + files, loader_argv(cfg, defaults, args.target, live), "replay of the binary logs",
                 src_env=dict(os.environ, TZ="UTC"))
        return [name for _, _, name, _ in chosen]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def restore_dump_into(cfg, client, args, manifest, defaults, live, result):
    """A dump into args.target, its rows checked against the dump's manifest."""
    if not live:
        recreate_drill(cfg, defaults, args.target)
    decrypt_into(cfg, client, manifest, args.identity, loader_argv(cfg, defaults, args.target, live))
    restored = table_facts(lambda sql: mariadb_query(cfg, sql, defaults), args.target,
                           manifest.get("checksum_method", LEGACY_CHECKSUM_METHOD))
    mismatches = {t: {"backup": f, "restored": restored.get(t)}
                  for t, f in manifest["tables"].items() if restored.get(t) != f}
    extra = sorted(set(restored) - set(manifest["tables"]))
    result.update(tables=len(manifest["tables"]), rows=sum(f["rows"] for f in restored.values()),
                  mismatches=mismatches, unexpected_tables=extra)
    if mismatches or extra:
        raise BackupError(f"restore of {manifest['key']} into {args.target} differs from the manifest: "
                          f"{json.dumps(mismatches)} {extra}")
    log(f"dump restored: {manifest['key']} -> {args.target}, {len(restored)} tables, "
        f"{result['rows']} rows, counts and checksums match the manifest")


def restore_mariadb(cfg, client, args):
    live = args.target in cfg["mariadb"]["databases"]
    if live and not args.confirm_live:
        raise BackupError(f"{args.target} is a live database: pass --confirm-live to restore over it")
    if not re.match(r"^[A-Za-z0-9_]{1,64}$", args.target):
        raise BackupError(f"target database name {args.target!r} is not [A-Za-z0-9_]{{1,64}}")
    defaults = cfg["mariadb"]["restore_defaults_file"] or None
    result = {"time": dt.datetime.now(dt.timezone.utc).strftime(STAMP), "store": "mariadb",
              "source": args.database, "target": args.target, "result": "fail"}
    try:
        until = None
        if args.to:
            until = parse_restore_to(args.to, dt.datetime.now(dt.timezone.utc))
            if binlog_enabled(cfg):
                # The newest commits first, when the server is still there to give them.
                try:
                    ship_binlogs(cfg, client)
                except BackupError as exc:
                    log(f"could not ship the newest commits ({exc}); restoring from what the store holds")
            manifest = (base_for(cfg, client, until or dt.datetime.now(dt.timezone.utc)) if args.from_base else
                        dump_for(cfg, client, args.database, until or dt.datetime.now(dt.timezone.utc)))
            covered = covered_until(cfg, client, manifest["binlog"]["epoch"])
            if until is None:
                until = covered
            elif until > covered:
                raise BackupError(f"restore point {until:%Y-%m-%d %H:%M:%S} UTC is later than the shipped binary logs "
                                  f"reach ({covered:%Y-%m-%d %H:%M:%S} UTC)")
            result["restore_to"] = until.strftime(STAMP)
        elif args.from_base:
            manifest = (base_for(cfg, client, dt.datetime.now(dt.timezone.utc)) if args.stamp == "latest" else
                        fetch_manifest(cfg, client, BASE_STORE, BASE_NAME, args.stamp))
        else:
            manifest = fetch_manifest(cfg, client, "mariadb", args.database, args.stamp)
        result.update(stamp=manifest["stamp"], key=manifest["key"])
        if args.from_base:
            result["store"] = BASE_STORE
            restored = restore_base_into(cfg, client, args, manifest, defaults, live)
            result.update(tables=len(restored), rows=sum(f["rows"] for f in restored.values()))
            log(f"base restored: {manifest['key']} -> {args.target}, {len(restored)} tables, "
                f"{result['rows']} rows, counts and checksums match the copy's")
        else:
            restore_dump_into(cfg, client, args, manifest, defaults, live, result)
        if until is not None:
            files = replay_binlogs(cfg, client, args, manifest, until, defaults, live)
            after = table_facts(lambda sql: mariadb_query(cfg, sql, defaults), args.target)
            result.update(binlogs=files, rows=sum(f["rows"] for f in after.values()), tables=len(after))
            log(f"replayed {len(files)} binary log files up to {until:%Y-%m-%d %H:%M:%S} UTC: "
                f"{result['rows']} rows in {len(after)} tables")
        result["result"] = "pass"
        log(f"drill passed: {args.target}" + (f" as of {until:%Y-%m-%d %H:%M:%S} UTC" if until else ""))
    except BackupError as exc:
        result["error"] = str(exc)
        raise
    finally:
        record_drill(cfg, result)


def restore_redis(cfg, client, args):
    manifest = fetch_manifest(cfg, client, "redis", cfg["redis"]["name"], args.stamp)
    tmp = args.output + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        decrypt_into(cfg, client, manifest, args.identity, ["cat"], sink_stdout=out)
    os.replace(tmp, args.output)
    log(f"restored {manifest['key']} to {args.output}; keyspace at backup time: {manifest.get('keyspace')}")


# --- Metrics -------------------------------------------------------------------------

COVERED_METRIC = "multinotes_backup_binlog_covered_until_timestamp_seconds"


def write_metrics(cfg, check, ok, covered=None):
    """The run's result for node exporter's textfile collector (if its directory exists):
    last run, last success (kept across failures) and whether the last run succeeded; for
    the binary log shipping also up to when every commit is in S3 (kept across failures)."""
    directory = cfg.get("metrics_dir") or ""
    if not os.path.isdir(directory):
        return
    path = os.path.join(directory, f"multinotes-{check}.prom")
    now = int(dt.datetime.now(dt.timezone.utc).timestamp())
    last_success = now if ok else 0
    previous = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            previous = fh.read()
    if not ok:
        m = re.search(r"^multinotes_backup_last_success_timestamp_seconds\{[^}]*\} (\d+)$", previous, re.M)
        last_success = int(m.group(1)) if m else 0
    if covered is None and check == "backup-binlog":
        m = re.search(rf"^{COVERED_METRIC}\{{[^}}]*\}} (\d+)$", previous, re.M)
        covered = int(m.group(1)) if m else 0
    labels = f'check="{check}"'
    body = "".join([
        "# HELP multinotes_backup_last_run_success 1 if the last backup run succeeded.\n",
        "# TYPE multinotes_backup_last_run_success gauge\n",
        f"multinotes_backup_last_run_success{{{labels}}} {1 if ok else 0}\n",
        "# HELP multinotes_backup_last_run_timestamp_seconds When the last backup run ended.\n",
        "# TYPE multinotes_backup_last_run_timestamp_seconds gauge\n",
        f"multinotes_backup_last_run_timestamp_seconds{{{labels}}} {now}\n",
        "# HELP multinotes_backup_last_success_timestamp_seconds When a backup run last succeeded (0: never).\n",
        "# TYPE multinotes_backup_last_success_timestamp_seconds gauge\n",
        f"multinotes_backup_last_success_timestamp_seconds{{{labels}}} {last_success}\n",
    ])
    if covered is not None:
        body += "".join([
            f"# HELP {COVERED_METRIC} Every commit up to this time is in the S3 store (0: never shipped).\n",
            f"# TYPE {COVERED_METRIC} gauge\n",
            f"{COVERED_METRIC}{{{labels}}} {int(covered)}\n",
        ])
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(body)
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log(f"metrics: could not write {path}: {exc}")


# --- Main ----------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("mariadb", "redis", "all", "binlogs", "base", "check-certs", "check-drill", "alert-test"):
        sub.add_parser(name)
    f = sub.add_parser("check-freshness")
    f.add_argument("--max-age-hours", type=float, help="override freshness_max_age_hours (the launch check asks 24)")
    f.add_argument("--no-alert", action="store_true", help="report by exit code only (the launch check)")
    p = sub.add_parser("prune")
    p.add_argument("store", choices=["mariadb", "redis"])
    p.add_argument("name")
    r = sub.add_parser("restore-mariadb")
    r.add_argument("--identity", required=True)
    r.add_argument("--database", required=True, help="the backed-up database (its key prefix)")
    r.add_argument("--target", required=True)
    r.add_argument("--stamp", default="latest")
    r.add_argument("--confirm-live", action="store_true")
    r.add_argument("--to", default="", help="replay the binary logs up to this UTC time ('YYYY-MM-DD HH:MM:SS') or latest")
    r.add_argument("--from-base", action="store_true", help="start from the newest base backup (mariadb-backup), not a dump")
    r2 = sub.add_parser("restore-redis")
    r2.add_argument("--identity", required=True)
    r2.add_argument("--output", required=True)
    r2.add_argument("--stamp", default="latest")
    args = parser.parse_args()
    cfg = load_config()
    check = {"mariadb": "backup-mariadb", "redis": "backup-redis", "all": "backup",
             "binlogs": "backup-binlog", "base": "backup-base"}.get(args.cmd, args.cmd)
    covered = None
    try:
        if args.cmd == "alert-test":
            alert(cfg, "alert-test", "test alert from multinotes-backup")
            return 0
        if args.cmd == "check-certs":
            check_certs(cfg)
            return 0
        if args.cmd == "check-drill":  # a check the launch check reads: it reports, never alerts
            try:
                print(check_drill(cfg))
            except BackupError as exc:
                print(exc)
                return 1
            return 0
        client = S3Client(cfg)
        if args.cmd in ("mariadb", "all") and (args.cmd == "mariadb" or cfg["mariadb"]["enabled"]):
            backup_mariadb(cfg, client)
        if args.cmd == "all" and cfg["mariadb"]["enabled"] and binlog_enabled(cfg):
            ship_binlogs(cfg, client)
        if args.cmd == "all" and base_enabled(cfg) and base_missing_or_stale(cfg, client):
            base_unless_running(cfg, client)  # the first run on a host, or the base schedule's runs failing
        if args.cmd in ("redis", "all") and (args.cmd == "redis" or cfg["redis"]["enabled"]):
            backup_redis(cfg, client)
        if args.cmd == "binlogs":
            covered = ship_binlogs(cfg, client).timestamp()
        if args.cmd == "base":
            if not base_enabled(cfg):
                raise BackupError("base backups are off on this host (backup_base_enabled in the backup role)")
            backup_base(cfg, client)
        if args.cmd == "prune":
            prune(cfg, client, args.store, args.name)
        elif args.cmd == "check-freshness":
            check_freshness(cfg, client, args.max_age_hours)
        elif args.cmd == "restore-mariadb":
            restore_mariadb(cfg, client, args)
        elif args.cmd == "restore-redis":
            restore_redis(cfg, client, args)
    except Exception as exc:  # noqa: BLE001 - every failure is reported and alerted
        message = str(exc) if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
        if getattr(args, "no_alert", False):
            log(f"{check}: {message}")
        else:
            alert(cfg, check, message)
        if args.cmd in ("mariadb", "redis", "all", "binlogs", "base"):
            write_metrics(cfg, check, False)
        return 1
    if args.cmd in ("mariadb", "redis", "all", "binlogs", "base"):
        write_metrics(cfg, check, True, covered=covered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
