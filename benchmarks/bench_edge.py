#!/usr/bin/env python3
"""Benchmark 1, edge overhead: requests/s through nginx against the same backend without
it, measured side by side in one run (A, B, A, B, ...) so drift and noise cancel.

- health: GET /health/ through nginx (TLS, HTTP/1.1 keepalive) / the same gunicorn hit
  directly on its Unix socket. Goal: >= 0.8.
- static: a static file through nginx over TLS / the same bytes from nginx over plain
  HTTP. nginx redirects plain HTTP to HTTPS except the ACME challenge location, so the
  plain side serves a copy of the file from the ACME webroot (removed afterwards).

Both sides run inside the web host (docker exec), where the Unix socket is: the load
generator costs the same CPU on both sides. Needs the demo (`make demo`).

    python3 benchmarks/bench_edge.py [--container multinotes-demo] [--rounds 3] [--duration 10]
    # the same comparison between any two URLs on this machine (no container):
    python3 benchmarks/bench_edge.py --local-a https://127.0.0.1:18443/health/ --local-b http://127.0.0.1:18000/health/
"""

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "multinotes.localhost"
STATIC = "/static/core/app.css"
ACME_COPY = "/.well-known/acme-challenge/multinotes-bench-app.css"


def live_socket(container):
    """The gunicorn socket nginx sends to now. Releases are blue/green: the release command
    names the live slot's socket in nginx's upstream include, whose file name has one home
    (group_vars/all/release.yml)."""
    import yaml
    name = yaml.safe_load((HERE.parent / "group_vars/all/release.yml").read_text())["multinotes_nginx_upstream_include"]
    text = sh(["docker", "exec", container, "cat", f"/etc/nginx/{name}"]).stdout
    found = re.search(r"^\s*server\s+unix:([^\s;]+)", text, re.M)
    if not found:
        sys.exit(f"bench_edge: /etc/nginx/{name} in {container} names no unix socket:\n{text}")
    return found[1]


def sh(cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def put(container, source, dest):
    """Copy a file into the container through exec: `docker cp` cannot write into its tmpfs /tmp."""
    subprocess.run(["docker", "exec", "-i", container, "sh", "-c", f"cat > {dest}"],
                   input=Path(source).read_text(), check=True, text=True)


def loadgen(container, args, connections, duration):
    base = ["--connections", str(connections), "--duration", str(duration)]
    if container:
        cmd = ["docker", "exec", container, "python3", "/tmp/multinotes-loadgen.py", *args, *base]
    else:
        cmd = [sys.executable, str(HERE / "loadgen.py"), *args, *base]
    return json.loads(sh(cmd).stdout)


def compare(label, container, side_a, side_b, rounds, connections, duration):
    runs = {"a": [], "b": []}
    for _ in range(rounds):
        for key, side in (("a", side_a), ("b", side_b)):
            runs[key].append(loadgen(container, side[1], connections, duration))
    rps_a = round(statistics.median(r["rps"] for r in runs["a"]), 1)
    rps_b = round(statistics.median(r["rps"] for r in runs["b"]), 1)
    failed = sum(r["failed"] for r in runs["a"] + runs["b"])
    return {"benchmark": label, "a": side_a[0], "b": side_b[0], "rps_a": rps_a, "rps_b": rps_b,
            "ratio": round(rps_a / rps_b, 3) if rps_b else None, "failed": failed,
            "p50_ms_a": round(statistics.median(r["p50_ms"] or 0 for r in runs["a"]), 1),
            "p50_ms_b": round(statistics.median(r["p50_ms"] or 0 for r in runs["b"]), 1), "runs": runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--container", default="multinotes-demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--socket", help="gunicorn's socket in the container (default: the live slot's, "
                        "read from nginx's upstream include)")
    parser.add_argument("--local-a", help="URL of side A on this machine (no container)")
    parser.add_argument("--local-b", help="URL of side B on this machine")
    parser.add_argument("--local-extra", default="--insecure", help="more loadgen arguments for both local sides")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    if args.local_a:
        extra = shlex.split(args.local_extra)
        results.append(compare("local", None, (args.local_a, ["--url", args.local_a, *extra]),
                               (args.local_b, ["--url", args.local_b, *extra]),
                               args.rounds, args.connections, args.duration))
    else:
        c = args.container
        put(c, HERE / "loadgen.py", "/tmp/multinotes-loadgen.py")
        socket = args.socket or live_socket(c)
        tls = ["--host", NAME, "--insecure"]
        results.append(compare(
            "health: nginx TLS / gunicorn socket", c,
            ("nginx https /health/", ["--url", "https://127.0.0.1:443/health/", *tls]),
            ("gunicorn unix socket /health/", ["--url", "http://localhost/health/", "--host", NAME,
                                               "--unix-socket", socket]),
            args.rounds, args.connections, args.duration))
        root = sh(["docker", "exec", c, "sh", "-c", "readlink -f /srv/multinotes/current"]).stdout.strip()
        # The static root of the live release (STATIC_ROOT); see roles/nginx nginx_static_root.
        source = next(p for p in (f"{root}/static/core/app.css", f"{root}/staticfiles/core/app.css")
                      if sh(["docker", "exec", c, "sh", "-c", f"test -f {p} && echo y || true"]).stdout.strip())
        sh(["docker", "exec", c, "sh", "-c", f"mkdir -p /var/www/acme/.well-known/acme-challenge && "
            f"cp {source} /var/www/acme{ACME_COPY} && chmod 0644 /var/www/acme{ACME_COPY}"])
        try:
            results.append(compare(
                "static: nginx TLS / nginx plain HTTP", c,
                (f"nginx https {STATIC}", ["--url", f"https://127.0.0.1:443{STATIC}", *tls]),
                ("nginx http (same bytes, ACME location)", ["--url", f"http://127.0.0.1:80{ACME_COPY}", "--host", NAME]),
                args.rounds, args.connections, args.duration))
        finally:
            subprocess.run(["docker", "exec", c, "rm", "-f", f"/var/www/acme{ACME_COPY}"], check=False)
    print(f"| benchmark | A | B | A req/s | B req/s | A/B | goal | failed | p50 A / B (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        goal = ">= 0.8" if r["benchmark"].startswith("health") else ""
        print(f"| {r['benchmark']} | {r['a']} | {r['b']} | {r['rps_a']} | {r['rps_b']} | {r['ratio']} | {goal} | "
              f"{r['failed']} | {r['p50_ms_a']} / {r['p50_ms_b']} |")
    print(f"\n{args.rounds} rounds of {args.duration:g} s per side, interleaved A/B, {args.connections} keepalive connections.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    # A side that answered nothing is a broken setup, not a ratio.
    dead = [r["benchmark"] for r in results if not (r["rps_a"] and r["rps_b"])]
    if dead:
        print(f"bench_edge: a side answered no request in: {', '.join(dead)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
