#!/usr/bin/env python3
"""Benchmark 5, backup throughput: the whole dump pipeline (`multinotes-backup mariadb`: the
commit hold and manifest snapshot, mariadb-dump | zstd | age | S3 upload, the manifest's row
digests, retention) against a bare `mariadb-dump > /dev/null` of the same database with the
same options, on the same host, alternating, --rounds times each; where base backups are on
(backup_base_enabled), `multinotes-backup base` (mariadb-backup | zstd | age | S3) too. #18's
goal: the dump or base pipeline at least 70 % of the bare dump's throughput (bare seconds /
pipeline seconds).

It seeds a table of --rows rows (about 1 KiB each) into the demo's database, outside the
binary log (so the shipping does not run beside it), and drops it afterwards.

    python3 benchmarks/bench_backup.py [--container multinotes-demo] [--rows 200000] [--rounds 3]
"""

import argparse
import statistics
import subprocess
import time

DEFAULTS_FILE = "/etc/multinotes-backup/mariadb.cnf"
# The options the backup program dumps with (roles/backup/files/multinotes-backup.py).
DUMP = ("mariadb-dump --defaults-extra-file={defaults} --single-transaction --quick --routines --triggers --events "
        "--hex-blob --default-character-set=utf8mb4 {db} > /dev/null")
GOAL = 0.70


def run(container, command, check=True):
    """Seconds a shell command takes inside the container."""
    started = time.monotonic()
    done = subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"{command!r} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.monotonic() - started, done.stdout.strip()


def sql(container, statement, db="multinotes"):
    return run(container, f"mariadb -N {db} -e \"{statement}\"")[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--container", default="multinotes-demo")
    parser.add_argument("--database", default="multinotes")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    c, db = args.container, args.database
    sql(c, "SET SESSION sql_log_bin=0; DROP TABLE IF EXISTS bench_rows; "
           "CREATE TABLE bench_rows (id INT AUTO_INCREMENT PRIMARY KEY, body VARCHAR(1000) NOT NULL); "
           f"INSERT INTO bench_rows (body) SELECT REPEAT(MD5(seq), 30) FROM seq_1_to_{args.rows}; "
           "ANALYZE LOCAL TABLE bench_rows", db)
    try:
        size = sql(c, "SELECT ROUND(SUM(data_length + index_length) / 1048576) FROM information_schema.tables "
                      f"WHERE table_schema = '{db}'", db)
        _, dump_bytes = run(c, DUMP.format(defaults=DEFAULTS_FILE, db=db).replace("> /dev/null", "| wc -c"))
        bare, piped, base = [], [], []
        # Where base backups are on (backup_base_enabled), the physical pipeline is measured too.
        with_base = run(c, "python3 -c 'import json; print(json.load(open(\"/etc/multinotes-backup/config.json\"))"
                           "[\"mariadb\"].get(\"base\", {}).get(\"enabled\", False))'")[1] == "True"
        load = [run(c, "cut -d' ' -f1 /proc/loadavg")[1]]
        for _ in range(args.rounds):
            bare.append(run(c, DUMP.format(defaults=DEFAULTS_FILE, db=db))[0])
            piped.append(run(c, "multinotes-backup mariadb")[0])
            if with_base:
                base.append(run(c, "multinotes-backup base")[0])
            load.append(run(c, "cut -d' ' -f1 /proc/loadavg")[1])
    finally:
        sql(c, "SET SESSION sql_log_bin=0; DROP TABLE IF EXISTS bench_rows", db)
    ratio = statistics.median(bare) / statistics.median(piped)
    mib = int(dump_bytes) / 1048576
    print(f"Database {db} on {c}: {size} MiB on disk, a {mib:.0f} MiB dump ({args.rows:,} seeded rows); "
          f"{args.rounds} rounds, alternating; load average (1 min) {' -> '.join(load)}\n")
    print("| run | seconds (each round) | median s | MiB/s of dump |")
    print("|---|---|---|---|")
    rows = [("bare `mariadb-dump > /dev/null`", bare), ("`multinotes-backup mariadb` (the dump pipeline)", piped)]
    if base:
        rows.append(("`multinotes-backup base` (mariadb-backup, the whole server)", base))
    for name, times in rows:
        print(f"| {name} | {', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} | "
              f"{mib / statistics.median(times):.0f} |")
    print(f"\ndump pipeline / bare throughput = {ratio:.2f} (goal >= {GOAL})")
    if base:
        base_ratio = statistics.median(bare) / statistics.median(base)
        print(f"base pipeline / bare dump throughput = {base_ratio:.2f} (goal >= {GOAL})")
        ratio = max(ratio, base_ratio)
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
