#!/usr/bin/env bash
# Runs benches/compare.rs (blobcache vs seed-sqlite, cacache and raw sled on
# the same payloads, in one run) and prints one table: workload, each
# system's median, blobcache's ratio to seed-sqlite. The table is also saved
# to target/bench-table.md with the machine and its load.
#
#   scripts/bench-table.sh                       # everything (about 10 minutes)
#   BENCH_ONLY=single,disk scripts/bench-table.sh  # parts: single mixed disk open dict
#   BENCH_OPEN_ENTRIES=1000000 scripts/bench-table.sh   # open time at 1M entries
#
# Extra arguments go to criterion (e.g. a filter: `get_hit-1KiB`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-table.md
mkdir -p target
machine="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') x $(nproc) cores, $(uname -sr)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --bench compare -- "$@" | tee target/bench-compare.log
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
{
    echo "machine: $machine"
    echo "load average (1/5/15 min) before: $load_before, after: $load_after"
    sed -n '/^| workload/,$p' target/bench-compare.log
} > "$out"
echo
cat "$out"
