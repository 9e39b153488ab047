#!/usr/bin/env python3
"""Benchmark (issue #20): the web tier's no-op converge against a popular public pair.

(A) this repository's `playbooks/web.yml` (logrotate, nginx, certbot roles) and (B) the
public roles geerlingguy.nginx + geerlingguy.certbot configured for the same site (one
server name, a TLS server block on a self-signed certificate, HTTP -> HTTPS redirect, a
proxy to the app's gunicorn socket, certbot installed with its renewal), each on its own
fresh container from the same image (multinotes-debian:12, started by
molecule/_harness/create.yml as the demo's are; Ansible reaches them by the Docker
connection, as the demo does). Measured in one run, one after the other: each cold
converge, then N no-op converges alternating A and B. Reported: cold seconds, median no-op
seconds, the no-op's ok/changed/skipped, the ratio A/B of the medians (goal: at most 0.5),
beside it the ratio of the minimums and the median of the per-pair ratios (other work on the
machine comes in bursts), the controller's CPU seconds, the load average before and after, and
each side's slowest no-op tasks (profile_tasks, median per task).

A needs nothing of the app to converge: nginx's upstream names gunicorn's socket, which does
not exist here, so both sides answer / with 502; the bench checks that both answer HTTP with
a redirect to HTTPS and complete a TLS handshake for the server name. A's inventory sets only
what the demo's sets for the web edge (multinotes_environment: local, one server name, no
issuance: no ACME CA can reach these containers; a one-year bootstrap certificate); B issues
nothing either (certbot_create_if_missing: false) and takes a self-signed certificate made by
one task before its roles. Both hosts get Debian's `cron` before timing (B's renewal is a cron
job; a standard Debian server has cron). Both use this repository's ansible.cfg; B runs with
ANSIBLE_INJECT_FACT_VARS=True because the public roles read injected facts (ansible_os_family).

The public roles are not part of this repository and are never committed. Put them (git
checkouts, so their commits are recorded) in one directory, e.g. the git-ignored .cache/:

    git clone https://github.com/geerlingguy/ansible-role-nginx .cache/public-roles/geerlingguy.nginx
    git clone https://github.com/geerlingguy/ansible-role-certbot .cache/public-roles/geerlingguy.certbot

(or `ansible-galaxy role install -p .cache/public-roles geerlingguy.nginx geerlingguy.certbot`;
any git mirror of the two repositories works the same way). Then:

    python3 benchmarks/bench_web_roles.py --public-roles .cache/public-roles [--runs 5]

It creates (and at the end removes) the containers webbench-a and webbench-b and the network
webbench; a leftover of an earlier run under those names is replaced. Work files go to
.cache/webbench/.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The ansible-playbook beside this Python (the venv), else the one on PATH.
ANSIBLE_PLAYBOOK = str(next((p for p in [Path(sys.executable).parent / "ansible-playbook"] if p.exists()), "ansible-playbook"))
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)
# profile_tasks' summary lines: "role : Task name ------ 1.23s" (the output limit is lifted below).
TASK_TIME = re.compile(r"^(.+?) -{2,} (\d+\.\d+)s$", re.M)
# A task or handler that reported a change: its banner, profile_tasks' timestamp line, then "changed:".
CHANGED = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\][^\n]*\n(?:[^\n]*\*{3,}\n)?changed:", re.M)
PUBLIC_ROLES = ("geerlingguy.nginx", "geerlingguy.certbot")
NETWORK = "webbench"
HOST_A, HOST_B = "webbench-a", "webbench-b"
WORK = ROOT / ".cache" / "webbench"
GOAL = 0.5
# The socket A's nginx proxies to (group_vars/all/release.yml: the blue slot's); B proxies there too.
APP_SOCKET = "/run/multinotes/gunicorn-blue.sock"
B_CERT, B_KEY = "/etc/ssl/certs/multinotes-selfsigned.pem", "/etc/ssl/private/multinotes-selfsigned.key"


class BenchError(Exception):
    """A step failed; the message says which and shows its output."""


def run(argv, timeout, env=None, check=True):
    """Run a command from the repository root, bounded in time; returns (result, seconds)."""
    started = time.monotonic()
    try:
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv[:4])} ... did not finish within {timeout} s") from exc
    seconds = time.monotonic() - started
    if check and result.returncode:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    return result, seconds


def inventory(host, host_vars):
    """A one-host inventory in group web (JSON is YAML; the yaml inventory plugin reads .json)."""
    return {"all": {"vars": {"ansible_connection": "community.docker.docker", **host_vars},
                    "hosts": {host: {}}, "children": {"web": {"hosts": {host: {}}}}}}


def a_vars(name):
    """What the demo's inventory sets for the web edge (inventories/local/group_vars/all.yml)."""
    return {"multinotes_environment": "local", "nginx_server_names": [name],
            "certbot_issue_enabled": False, "nginx_bootstrap_certificate_days": 365}


def b_play(name):
    """The public pair configured for the same site as A: the same name, HTTPS on a self-signed
    certificate, HTTP redirected to it, the app's socket as upstream, certbot with renewal."""
    tls_and_proxy = "\n".join([
        f"ssl_certificate {B_CERT};",
        f"ssl_certificate_key {B_KEY};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_cache shared:SSL:10m;",
        'add_header Strict-Transport-Security "max-age=31536000" always;',
        "add_header X-Frame-Options DENY always;",
        "add_header X-Content-Type-Options nosniff always;",
        "add_header Referrer-Policy strict-origin-when-cross-origin always;",
        "location /static/ { alias /srv/multinotes/current/static/; expires 1h; }",
        "location / {",
        "    proxy_pass http://multinotes;",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_read_timeout 300s;",
        "}",
    ])
    return [{
        "name": "Converge the web edge with geerlingguy.nginx and geerlingguy.certbot",
        "hosts": "web",
        "become": True,
        "vars": {
            "nginx_remove_default_vhost": True,
            "nginx_listen_ipv6": "{{ ansible_all_ipv6_addresses | default([]) | length > 0 }}",
            "nginx_server_tokens": "off",
            "nginx_client_max_body_size": "250m",
            "nginx_upstreams": [{"name": "multinotes", "keepalive": 16, "servers": [f"unix:{APP_SOCKET}"]}],
            "nginx_vhosts": [
                {"listen": "80", "server_name": name, "filename": "multinotes-http.conf",
                 "return": "301 https://$host$request_uri"},
                {"listen": "443 ssl http2", "server_name": name, "filename": "multinotes-https.conf",
                 "extra_parameters": tls_and_proxy},
            ],
            "certbot_create_if_missing": False,
            "certbot_certs": [{"domains": [name]}],
            "certbot_auto_renew_user": "root",
        },
        "pre_tasks": [{
            "name": "Create a self-signed certificate when none exists",
            "ansible.builtin.command": {
                "argv": ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                         "-days", "365", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                         "-keyout", B_KEY, "-out", B_CERT],
                "creates": B_CERT,
            },
        }],
        "roles": list(PUBLIC_ROLES),
    }]


def role_commit(path):
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown (not a git checkout)"


def check_public_roles(directory):
    missing = [r for r in PUBLIC_ROLES if not (directory / r / "tasks" / "main.yml").is_file()]
    if missing:
        raise BenchError(
            f"--public-roles {directory}: {', '.join(missing)} not found there (expected {directory}/<role>/tasks/main.yml). "
            "Get them as this script's --help says, e.g. git clone https://github.com/geerlingguy/ansible-role-nginx "
            f"{directory}/geerlingguy.nginx (and ansible-role-certbot as geerlingguy.certbot).")
    return {r: role_commit(directory / r) for r in PUBLIC_ROLES}


def containers(action, image, timeout):
    """Create or destroy the two containers with the harness playbooks, as the demo does."""
    spec = {"harness_network": NETWORK, "harness_platforms": [{"name": h, "image": image} for h in (HOST_A, HOST_B)]}
    spec_file = WORK / "containers.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    run([ANSIBLE_PLAYBOOK, f"molecule/_harness/{action}.yml", "-e", f"@{spec_file}"], timeout)


def prepare_host(host, timeout):
    """cron on both hosts before timing: B's renewal is a cron job, and a Debian server has it."""
    run(["docker", "exec", host, "sh", "-c",
         "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -qq -y --no-install-recommends cron"], timeout)


def converge(side, timeout, log_name):
    """One ansible-playbook run of a side; its wall time, recap, task times and load average.
    Its output is kept in .cache/webbench/<log_name>.log."""
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result, seconds = run(side["argv"], timeout, env=side["env"], check=False)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()[0]
    (WORK / f"{log_name}.log").write_text(result.stdout + result.stderr)
    recap = {m[0]: [int(x) for x in m[1:]] for m in RECAP.findall(result.stdout)}
    if result.returncode or side["host"] not in recap:
        raise BenchError(f"{side['label']} failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    ok, changed, unreachable, failed, skipped = recap[side["host"]]
    tasks = [(name.strip(), float(sec)) for name, sec in TASK_TIME.findall(result.stdout)]
    # The controller's CPU seconds (ansible-playbook and its workers): what the other work on
    # the machine inflates far less than wall time.
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return {"seconds": round(seconds, 1), "cpu": round(cpu, 1), "ok": ok, "changed": changed, "skipped": skipped, "failed": failed,
            "unreachable": unreachable, "tasks": tasks, "load": [round(load_before, 2), round(load_after, 2)],
            "changed_tasks": CHANGED.findall(result.stdout)}


def container_address(host):
    result, _ = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", host], 30)
    return result.stdout.split()[0]


def probe(host, name):
    """What a client sees: HTTP on 80 with the site's Host, and HTTPS on 443 with its SNI."""
    address = container_address(host)
    out = {}
    try:
        conn = http.client.HTTPConnection(address, 80, timeout=10)
        conn.request("GET", "/probe", headers={"Host": name})
        response = conn.getresponse()
        out["http"] = f"{response.status} -> {response.getheader('Location')}"
        conn.close()
        context = ssl.create_default_context()
        # Self-signed on both sides: the handshake and the headers are what is compared.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((address, 443), timeout=10) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(4096).decode("latin-1").split("\r\n\r\n")[0].split("\r\n")
            out["https"] = f"{tls.version()}, {head[0]}, HSTS {'yes' if any(h.lower().startswith('strict-transport-security') for h in head) else 'no'}"
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    ok = out.get("http", "").startswith("301 -> https://") and "HTTP/1.1" in out.get("https", "")
    return ok, out


def slowest(runs, limit):
    """Each task's median time over the no-op runs, slowest first."""
    per_task = {}
    for one in runs:
        for name, seconds in one["tasks"]:
            per_task.setdefault(name, []).append(seconds)
    return sorted(((statistics.median(v), k) for k, v in per_task.items()), reverse=True)[:limit]


def positive(low, high):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value
    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                     epilog=__doc__.split("\n\n", maxsplit=1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--public-roles", type=Path, required=True,
                        help="directory holding geerlingguy.nginx/ and geerlingguy.certbot/ (see below how to get them)")
    parser.add_argument("--runs", type=positive(1, 30), default=5, help="no-op runs of each side, alternating (default 5)")
    parser.add_argument("--image", default="multinotes-debian:12", help="image of both containers (default multinotes-debian:12)")
    parser.add_argument("--server-name", default="multinotes.localhost", help="the site's one server name (default: the demo's)")
    parser.add_argument("--cold-timeout", type=positive(60, 3600), default=1200, help="seconds a cold converge may take (default 1200)")
    parser.add_argument("--noop-timeout", type=positive(30, 1800), default=400, help="seconds a no-op converge may take (default 400)")
    parser.add_argument("--top", type=positive(1, 100), default=12, help="slowest no-op tasks listed per side (default 12)")
    parser.add_argument("--keep", action="store_true", help="keep the containers at the end (remove them with the harness's destroy.yml)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()

    if not re.fullmatch(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", args.server_name):
        parser.error(f"--server-name {args.server_name!r} is not a fully qualified DNS name, e.g. multinotes.localhost")
    if shutil.which("docker") is None:
        parser.error("docker is not on PATH: the bench starts its containers with the Docker engine (make harness)")
    try:
        commits = check_public_roles(args.public_roles.resolve())
    except BenchError as exc:
        parser.error(str(exc))
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True, check=False).returncode:
        parser.error(f"image {args.image} not found: build it with `make images`")

    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "a").mkdir(exist_ok=True)
    (WORK / "b").mkdir(exist_ok=True)
    (WORK / "a" / "hosts.json").write_text(json.dumps(inventory(HOST_A, a_vars(args.server_name)), indent=2))
    (WORK / "b" / "hosts.json").write_text(json.dumps(inventory(HOST_B, {}), indent=2))
    (WORK / "b" / "public.json").write_text(json.dumps(b_play(args.server_name), indent=2))
    # Every task in profile_tasks' summary (the bench takes the medians per task).
    common = {"PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all", "ANSIBLE_NOCOLOR": "1"}
    sides = {
        "A": {"label": "A (playbooks/web.yml)", "host": HOST_A, "env": common,
              "argv": [ANSIBLE_PLAYBOOK, "-i", str(WORK / "a" / "hosts.json"), "playbooks/web.yml"]},
        "B": {"label": "B (geerlingguy.nginx + geerlingguy.certbot)", "host": HOST_B,
              "env": {**common, "ANSIBLE_INJECT_FACT_VARS": "True", "ANSIBLE_ROLES_PATH": str(args.public_roles.resolve())},
              "argv": [ANSIBLE_PLAYBOOK, "-i", str(WORK / "b" / "hosts.json"), str(WORK / "b" / "public.json")]},
    }

    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    out = {"started": started.isoformat(timespec="seconds"), "image": args.image, "server_name": args.server_name,
           "public_roles": commits, "nproc": os.cpu_count(), "load_start": load_start}
    status = 1
    try:
        print(f"bench_web_roles: {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, load average {load_start[0]:.2f} "
              f"{load_start[1]:.2f} {load_start[2]:.2f}; public roles {commits}", flush=True)
        containers("destroy", args.image, 300)
        containers("create", args.image, 600)
        for host in (HOST_A, HOST_B):
            prepare_host(host, 600)
        for key in ("A", "B"):
            out[f"cold_{key}"] = converge(sides[key], args.cold_timeout, f"cold-{key}")
            print(f"cold {key}: {out[f'cold_{key}']['seconds']} s, changed={out[f'cold_{key}']['changed']}", flush=True)
        for key in ("A", "B"):
            ok, seen = probe(sides[key]["host"], args.server_name)
            out[f"probe_{key}"] = seen
            print(f"probe {key}: {seen}", flush=True)
            if not ok:
                raise BenchError(f"{sides[key]['label']} does not serve the site as expected after its converge: {seen}")
        for key in ("A", "B"):
            out[f"noop_{key}"] = []
        for i in range(args.runs):
            for key in ("A", "B"):
                one = converge(sides[key], args.noop_timeout, f"noop-{key}-{i + 1}")
                out[f"noop_{key}"].append(one)
                print(f"no-op {key} #{i + 1}: {one['seconds']} s (CPU {one['cpu']} s), ok={one['ok']} changed={one['changed']} "
                      f"skipped={one['skipped']}, load {one['load'][0]} -> {one['load'][1]}", flush=True)
        status = 0
    except BenchError as exc:
        print(f"bench_web_roles: {exc}", file=sys.stderr)
    finally:
        out["load_end"] = os.getloadavg()
        if not args.keep:
            try:
                containers("destroy", args.image, 300)
            except BenchError as exc:
                print(f"bench_web_roles: removing the containers failed: {exc}", file=sys.stderr)
                status = 1
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    if status:
        return status

    median = {k: statistics.median(r["seconds"] for r in out[f"noop_{k}"]) for k in ("A", "B")}
    spread = {k: (min(r["seconds"] for r in out[f"noop_{k}"]), max(r["seconds"] for r in out[f"noop_{k}"])) for k in ("A", "B")}
    ratio = median["A"] / median["B"]
    # The other work on the machine comes in bursts: the least disturbed runs (the minimums), each
    # A beside the B that ran right after it, and the controller's CPU seconds say it with less noise.
    ratio_min = spread["A"][0] / spread["B"][0]
    ratio_pairs = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(out["noop_A"], out["noop_B"]))
    cpu = {k: statistics.median(r["cpu"] for r in out[f"noop_{k}"]) for k in ("A", "B")}
    loads = [x for k in ("A", "B") for r in out[f"noop_{k}"] for x in r["load"]]
    counts = {k: "/".join(str(out[f"noop_{k}"][-1][f]) for f in ("ok", "changed", "skipped")) for k in ("A", "B")}
    changed_every = {k: sorted({c for r in out[f"noop_{k}"] for c in r["changed_tasks"]}) for k in ("A", "B")}
    out.update(median=median, ratio=round(ratio, 3), ratio_min=round(ratio_min, 3), ratio_pairs=round(ratio_pairs, 3),
               cpu_median=cpu)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))

    print()
    print("| date (UTC) | A cold s | B cold s | A no-op s, median (min-max) | B no-op s, median (min-max) "
          "| A/B no-op, medians (goal <= 0.5); of the minimums; median of pairs | controller CPU s A; B "
          "| no-op ok/changed/skipped A; B | load avg start -> end (no-op range) | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {started:%Y-%m-%d %H:%M} | {out['cold_A']['seconds']} | {out['cold_B']['seconds']} "
          f"| {median['A']:.1f} ({spread['A'][0]}-{spread['A'][1]}) | {median['B']:.1f} ({spread['B'][0]}-{spread['B'][1]}) "
          f"| **{ratio:.2f}**; {ratio_min:.2f}; {ratio_pairs:.2f} | {cpu['A']:.1f}; {cpu['B']:.1f} | {counts['A']}; {counts['B']} "
          f"| {load_start[0]:.2f} -> {out['load_end'][0]:.2f} ({min(loads):.1f}-{max(loads):.1f}) | {args.runs} x 2, alternating |")
    print(f"\n{os.cpu_count()} cores; image {args.image}; server name {args.server_name}; "
          f"public roles: " + ", ".join(f"{r} {c}" for r, c in commits.items()))
    for key in ("A", "B"):
        print(f"\nProbe {sides[key]['label']}: {out[f'probe_{key}']}")
        print(f"Changed in a no-op, {key}: {changed_every[key] or 'nothing'}")
        print(f"Slowest no-op tasks, {sides[key]['label']} (median s over {args.runs} runs):")
        for seconds, task in slowest(out[f"noop_{key}"], args.top):
            print(f"- {seconds:.2f} s  {task}")
    return 0 if ratio <= GOAL and all(r["changed"] == 0 for r in out["noop_A"]) else 1


if __name__ == "__main__":
    sys.exit(main())
