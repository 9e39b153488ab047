#!/usr/bin/env python3
"""Test harness: a Docker engine, an apt cache and systemd test-host images, offline.

    harness.py engine    make sure a Docker engine answers (install and start one if root on Debian)
    harness.py cache     make sure the apt cache (apt-cacher-ng on :3142) answers
    harness.py images    build the Debian test-host images whose recipe changed
    harness.py osv       make sure the local advisory endpoint (osv_server.py on :8486) answers
    harness.py up        all four, in that order

Nothing here relies on an engine or cache someone else left running, and nothing is
rebuilt while its recipe is unchanged: an image is tagged with the hash of its recipe.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("MULTINOTES_STATE_DIR", "/var/lib/multinotes-harness"))
APT_CACHE_PORT = 3142
MIRROR = os.environ.get("MULTINOTES_DEBIAN_MIRROR", "http://deb.debian.org/debian")
IMAGE_REPO = "multinotes-debian"

# One entry per test-host image. The packages are what Ansible, Testinfra and systemd
# need to treat a container as a host; roles install everything else themselves.
RECIPES = {
    "12": {"suite": "bookworm"},
    "13": {"suite": "trixie"},
}
INCLUDE = [
    "systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "sudo", "procps",
    "iproute2", "ca-certificates", "openssh-client", "curl",
]
# Files baked into every image, relative to this folder: the apt proxy auto-detect
# (use the host's cache when it answers, go direct when it does not).
BAKED = {
    "apt-proxy-detect": "/usr/local/sbin/apt-proxy-detect",
    "01-proxy-detect.conf": "/etc/apt/apt.conf.d/01-proxy-detect",
}


def log(msg):
    print(f"harness: {msg}", flush=True)


def die(msg):
    print(f"harness: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def quiet(cmd):
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def is_root_debian():
    return os.geteuid() == 0 and Path("/etc/debian_version").exists()


def apt_install(*pkgs):
    missing = [p for p in pkgs if not quiet(["dpkg-query", "-W", "-f=${Status}", p])
               or "install ok installed" not in subprocess.run(
                   ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout]
    if not missing:
        return
    log(f"installing {' '.join(missing)} from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
        stdout=subprocess.DEVNULL)


def wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    die(f"{what} did not come up within {seconds} s")


def engine():
    if quiet(["docker", "info"]):
        log("docker engine answers")
        return
    if not is_root_debian():
        die("no Docker engine answers. Start one (e.g. `sudo systemctl start docker`), "
            "or run this as root on Debian and it will install and start docker.io itself.")
    apt_install("docker.io", "debootstrap")
    STATE.mkdir(parents=True, exist_ok=True)
    logfile = open(STATE / "dockerd.log", "ab")
    log(f"starting dockerd in the background (log: {STATE / 'dockerd.log'})")
    subprocess.Popen(["dockerd"], stdout=logfile, stderr=logfile, stdin=subprocess.DEVNULL,
                     start_new_session=True)
    wait_for(lambda: quiet(["docker", "info"]), 60, "dockerd")
    log("docker engine answers")


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def cache():
    if port_open(APT_CACHE_PORT):
        log(f"apt cache answers on :{APT_CACHE_PORT}")
        return
    if not is_root_debian():
        log(f"no apt cache on :{APT_CACHE_PORT}; containers will download directly (slower)")
        return
    apt_install("apt-cacher-ng")
    # Our own minimal config: the package's stock remaps send Debian requests to mirrors
    # that may be unreachable; without remaps it fetches from the host named in the URL.
    confdir = STATE / "acng"
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / "acng.conf").write_text(
        "CacheDir: /var/cache/apt-cacher-ng\n"
        f"LogDir: {STATE}\n"
        f"Port: {APT_CACHE_PORT}\n"
        "ExThreshold: 14\n")
    Path("/var/cache/apt-cacher-ng").mkdir(parents=True, exist_ok=True)
    logfile = open(STATE / "apt-cacher-ng.out", "ab")
    log("starting apt-cacher-ng in the background")
    subprocess.Popen(["/usr/sbin/apt-cacher-ng", "-c", str(confdir), "ForeGround=1"],
                     stdout=logfile, stderr=logfile, stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: port_open(APT_CACHE_PORT), 30, "apt-cacher-ng")
    log(f"apt cache answers on :{APT_CACHE_PORT}")


# The dependency audit's advisory service in tests: neither PyPI's JSON API nor api.osv.dev
# answers from here, so a snapshot of the PyPA advisory database is served on loopback.
OSV_PORT = 8486
ADVISORY_DB = Path(os.environ.get("MULTINOTES_ADVISORY_DB", HERE.parents[1].parent / "shared" / "advisory-database"))


def osv():
    if port_open(OSV_PORT):
        log(f"advisory endpoint answers on :{OSV_PORT}")
        return
    if not (ADVISORY_DB / "vulns").is_dir():
        die(f"no advisory database at {ADVISORY_DB} (a PyPA advisory-database checkout, vulns/<package>/*.yaml): "
            "set MULTINOTES_ADVISORY_DB to one")
    STATE.mkdir(parents=True, exist_ok=True)
    logfile = open(STATE / "osv-server.log", "ab")
    log(f"starting the advisory endpoint on 127.0.0.1:{OSV_PORT} over {ADVISORY_DB}")
    venv_python = HERE.parents[1] / ".venv" / "bin" / "python"  # PyYAML and packaging are there
    python = str(venv_python) if venv_python.exists() else sys.executable
    subprocess.Popen([python, str(HERE / "osv_server.py"), "--db", str(ADVISORY_DB), "--port", str(OSV_PORT)],
                     stdout=logfile, stderr=logfile, stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: port_open(OSV_PORT), 30, "the advisory endpoint")
    log(f"advisory endpoint answers on :{OSV_PORT}")


def recipe_hash(version):
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": RECIPES[version], "include": INCLUDE}, sort_keys=True).encode())
    for name in sorted(BAKED):
        h.update((HERE / name).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:12]


def image_exists(ref):
    return quiet(["docker", "image", "inspect", ref])


def build_image(version):
    suite = RECIPES[version]["suite"]
    digest = recipe_hash(version)
    ref = f"{IMAGE_REPO}:{version}-{digest}"
    if image_exists(ref):
        run(["docker", "tag", ref, f"{IMAGE_REPO}:{version}"])
        log(f"{IMAGE_REPO}:{version} is current (recipe {digest})")
        return
    apt_install("debootstrap")
    mirror = MIRROR
    if port_open(APT_CACHE_PORT):
        mirror = f"http://127.0.0.1:{APT_CACHE_PORT}/" + MIRROR.split("://", 1)[1]
    log(f"building {ref}: debootstrap {suite} (Debian {version}) via {mirror}")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=f"multinotes-{suite}-"))
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
             suite, str(root), mirror], stdout=subprocess.DEVNULL)
        for name, dest in BAKED.items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(HERE / name, target)
            target.chmod(0o755 if "sbin" in dest else 0o644)
        # The rootfs must name the real mirror, not the build-time cache URL.
        (root / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {suite} main\n"
            f"deb {MIRROR} {suite}-updates main\n"
            f"deb http://deb.debian.org/debian-security {suite}-security main\n")
        # Containers have no console to bring up, and no need for these.
        for unit in ("getty@tty1.service", "serial-getty@.service"):
            (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
            os.symlink("/dev/null", root / "etc/systemd/system" / unit)
        # Package lists were fetched through the build-time URL: drop them, so the
        # first apt run in a container fetches lists for the sources written above.
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / d, ignore_errors=True)
            (root / d / "partial").mkdir(parents=True, exist_ok=True)
            # Ansible's apt cache_valid_time reads this mtime: make the lists look stale.
            os.utime(root / d, (0, 0))
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]',
             "-c", "ENV container=docker", "-", ref], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            die(f"tar of the {suite} rootfs failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    run(["docker", "tag", ref, f"{IMAGE_REPO}:{version}"])
    # Images of older recipes of this version only take space now.
    stale = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                            f"{IMAGE_REPO}"], capture_output=True, text=True).stdout.split()
    for old in stale:
        if old.startswith(f"{IMAGE_REPO}:{version}-") and old != ref:
            quiet(["docker", "image", "rm", old])
    log(f"built {ref} in {time.monotonic() - started:.0f} s")


def images():
    versions = os.environ.get("MULTINOTES_DEBIAN", " ".join(RECIPES)).split()
    for version in versions:
        if version not in RECIPES:
            die(f"MULTINOTES_DEBIAN names Debian {version!r}; known: {', '.join(RECIPES)}")
        build_image(version)


def main(argv):
    steps = {"engine": [engine], "cache": [cache], "images": [images], "osv": [osv],
             "up": [engine, cache, images, osv]}
    if len(argv) != 2 or argv[1] not in steps:
        die(f"usage: {argv[0]} {{{'|'.join(steps)}}}")
    for step in steps[argv[1]]:
        step()


if __name__ == "__main__":
    main(sys.argv)
