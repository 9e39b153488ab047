#!/usr/bin/env bash
# `make bench`: every benchmark against the demo stack, one after the other, each one's
# output in benchmarks/out/<timestamp>/. Not part of `make test`: it needs `make demo`,
# and benchmark 2 replaces the demo container.
set -u
cd "$(dirname "$0")/.."
out="benchmarks/out/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
{ echo "nproc: $(nproc)"; free -m | sed -n 2p; uname -srm; uptime; } | tee "$out/machine.txt"
status=0
for bench in edge memory rollback backup converge; do
  args=()
  [ "$bench" = converge ] && args=(--recreate-demo)
  echo "== $bench"
  python3 "benchmarks/bench_$bench.py" "${args[@]}" 2>&1 | tee "$out/$bench.md"
  rc=${PIPESTATUS[0]}
  echo "== $bench: exit $rc"
  [ "$rc" -ne 0 ] && status=1
done
echo "bench: results in $out (copy them into benchmarks/RESULTS.md with the machine line)"
exit $status
