#!/usr/bin/env python3
"""Celery metrics for node exporter's textfile collector, printed on stdout in one write.

Run by multinotes-celery-metrics.service with the app's own venv python and env file:
  python multinotes-celery-metrics.py APP QUEUE...
Queue length: LLEN of each queue on the broker (kombu's Redis transport keeps a queue as a
list of that name). Workers: how many answer `celery inspect ping`.
"""

import json
import os
import subprocess
import sys
import time


def queue_lengths(url, queues):
    import redis  # the broker client that kombu itself uses, from the app's venv

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    return {queue: client.llen(queue) for queue in queues}


def workers_answering(app):
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    try:
        proc = subprocess.run([celery, "--app", app, "inspect", "ping", "--timeout", "5", "--json"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"celery inspect ping: {exc}", file=sys.stderr)
        return 0
    if proc.returncode != 0:
        print(f"celery inspect ping: {(proc.stdout + proc.stderr).strip()[-300:]}", file=sys.stderr)
        return 0
    try:
        return len(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return 0


def main():
    app, queues = sys.argv[1], sys.argv[2:]
    lines = [
        "# HELP multinotes_celery_queue_length Tasks waiting in the broker queue.",
        "# TYPE multinotes_celery_queue_length gauge",
    ]
    broker_up = 1
    try:
        for queue, length in queue_lengths(os.environ.get("CELERY_BROKER_URL", ""), queues).items():
            lines.append(f'multinotes_celery_queue_length{{queue="{queue}"}} {length}')
    except Exception as exc:  # noqa: BLE001 - a probe reports failure as a metric
        print(f"broker: {type(exc).__name__}: {exc}", file=sys.stderr)
        broker_up = 0
    lines += [
        "# HELP multinotes_celery_broker_up 1 if the probe read the queue lengths from the broker.",
        "# TYPE multinotes_celery_broker_up gauge",
        f"multinotes_celery_broker_up {broker_up}",
        "# HELP multinotes_celery_workers_responding Workers that answered celery inspect ping.",
        "# TYPE multinotes_celery_workers_responding gauge",
        f"multinotes_celery_workers_responding {workers_answering(app)}",
        "# HELP multinotes_celery_probe_timestamp_seconds When the probe last ran.",
        "# TYPE multinotes_celery_probe_timestamp_seconds gauge",
        f"multinotes_celery_probe_timestamp_seconds {int(time.time())}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
