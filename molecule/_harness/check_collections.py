#!/usr/bin/env python3
"""Fail loudly if a collection pinned in collections/requirements.yml is not installed.

Offline, the collections come bundled with the pinned `ansible` package; with Galaxy,
from `ansible-galaxy collection install -r collections/requirements.yml -p collections`.
Either way every pinned collection must be importable at its pinned version or newer.
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def version_tuple(text):
    return tuple(int(part) for part in text.split("+")[0].split("-")[0].split("."))


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "collections/requirements.yml"
    wanted = yaml.safe_load(source.read_text())["collections"]
    listing = subprocess.run(["ansible-galaxy", "collection", "list", "--format", "json"],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
    installed = {}
    for path_collections in json.loads(listing).values():
        for name, info in path_collections.items():
            installed.setdefault(name, info["version"])
    problems = []
    for item in wanted:
        have = installed.get(item["name"])
        if have is None:
            problems.append(f"{item['name']} {item['version']} is pinned but not installed")
        elif version_tuple(have) < version_tuple(item["version"]):
            problems.append(f"{item['name']} is {have}, older than the pinned {item['version']}")
    if problems:
        for problem in problems:
            print(f"check_collections: MISSING: {problem}", file=sys.stderr)
        print("check_collections: install them: ansible-galaxy collection install "
              "-r collections/requirements.yml -p collections", file=sys.stderr)
        return 1
    print(f"check_collections: all {len(wanted)} pinned collections present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
