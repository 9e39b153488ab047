#!/usr/bin/env python3
"""Build a release artifact of a Django app on the controller.

The artifact is one tarball: the app's source (src/), a wheelhouse of every dependency
in its pinned requirements file (wheelhouse/), and RELEASE.json. It is named
<version>-<content hash>: the hash covers the source files, the requirements and the
target Pythons, so the same input always gives the same name and an existing artifact
is reused, never rebuilt. Wheels are downloaded for every target Python (Debian 12 has
3.11, Debian 13 has 3.13) with --only-binary, so hosts install with
`pip install --no-index --find-links wheelhouse` and never reach PyPI.

Prints one JSON line: {"changed", "release_id", "version", "path"}.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".git", "staticfiles", "node_modules", ".venv", "venv", ".pytest_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".sqlite3", ".log")


def source_files(source):
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if not name.endswith(SKIP_SUFFIXES):
                path = Path(root) / name
                yield path.relative_to(source), path


def content_hash(source, requirements, pythons, platforms):
    digest = hashlib.sha256()
    for rel, path in source_files(source):
        digest.update(f"src/{rel}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(requirements.read_bytes())
    digest.update(json.dumps([pythons, platforms]).encode())
    return digest.hexdigest()


def deps_hash(requirements, pythons, platforms):
    """The wheelhouse's cache key: the requirements file and the target Pythons/platforms."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(json.dumps([pythons, platforms]).encode())
    return digest.hexdigest()[:16]


def add_file(tar, arcname, data, mode=0o644):
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--requirements", type=Path)
    parser.add_argument("--version")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--python", action="append", required=True, dest="pythons")
    parser.add_argument("--platform", action="append", required=True, dest="platforms")
    args = parser.parse_args()

    source = args.source.resolve()
    requirements = (args.requirements or source / "requirements.txt").resolve()
    version = args.version or (source / "VERSION").read_text().strip()
    digest = content_hash(source, requirements, args.pythons, args.platforms)
    release_id = f"{version}-{digest[:12]}"
    artifact = args.out / f"{release_id}.tar.gz"
    result = {"release_id": release_id, "version": version, "path": str(artifact)}
    if artifact.exists():
        print(json.dumps(dict(result, changed=False)))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    # The wheels depend on the requirements and the targets only: a release that changes
    # code only reuses the last download (pip download is most of a build's time).
    cached = args.out / "wheelhouses" / deps_hash(requirements, args.pythons, args.platforms)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        wheelhouse = cached if cached.is_dir() else Path(tmp) / "wheelhouse"
        for python in ([] if cached.is_dir() else args.pythons):
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
                   "--dest", str(wheelhouse), "-r", str(requirements)]
            for platform in args.platforms:
                cmd += ["--platform", platform]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stdout + proc.stderr)
                sys.stderr.write(f"build_artifact: no wheels for Python {python}: pin a version with a wheel "
                                 "for it, or pick a pure-Python alternative.\n")
                return 1
        if wheelhouse != cached:  # downloaded now: it becomes the cache (same file system, one rename)
            cached.parent.mkdir(exist_ok=True)
            os.replace(wheelhouse, cached)
            wheelhouse = cached
        release = {"release_id": release_id, "version": version, "content_sha256": digest,
                   "pythons": args.pythons, "platforms": args.platforms}
        partial = Path(tmp) / "artifact.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            for rel, path in source_files(source):
                add_file(tar, f"src/{rel}", path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)
            for wheel in sorted(wheelhouse.iterdir()):
                add_file(tar, f"wheelhouse/{wheel.name}", wheel.read_bytes())
            add_file(tar, "requirements.txt", requirements.read_bytes())
            add_file(tar, "RELEASE.json", (json.dumps(release, indent=2) + "\n").encode())
        os.replace(partial, artifact)
    print(json.dumps(dict(result, changed=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
