#!/bin/sh
# The redis scenario's dependency step: build the roles as the multinotes.platform
# collection and install that tarball, the way a user does, into .cache/collection-redis/,
# the first place the scenario's ANSIBLE_COLLECTIONS_PATH looks. Its converge then runs
# multinotes.platform.redis from the installed copy, never from roles/.
# No arguments: Molecule runs a shell dependency's command with no shell when quiet.
set -eu
cd "$(dirname "$0")/../.."
out=.cache/collection-redis
rm -rf "$out"
ansible-galaxy collection build --output-path "$out/build" .
# --no-deps: offline, the dependencies come bundled with the pinned ansible package.
ANSIBLE_COLLECTIONS_PATH="$out" ansible-galaxy collection install --offline --no-deps -p "$out" "$out"/build/multinotes-platform-*.tar.gz
