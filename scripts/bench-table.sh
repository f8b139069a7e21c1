#!/usr/bin/env bash
# Runs benches/realistic.rs (blobcache against SQLite rowid, SQLite WITHOUT
# ROWID, cacache and raw sled on the same realistic API-response payloads,
# in one run) and prints one markdown table with ratios to both SQLite
# schemas, the machine and its load before and after. The table is saved to
# target/bench-table-<entries>.md.
#
#   scripts/bench-table.sh                          # 100,000 entries
#   BENCH_ENTRIES=1000000 scripts/bench-table.sh    # 1M (cacache left out)
#   BENCH_SYSTEMS=sqlite-rowid,blobcache scripts/bench-table.sh
#
# Other knobs: BENCH_GETS, BENCH_MIXED_OPS, BENCH_CACACHE_MAX (see the bench).
set -euo pipefail
cd "$(dirname "$0")/.."
entries="${BENCH_ENTRIES:-100000}"
out="target/bench-table-$entries.md"
mkdir -p target
machine="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(uname -sr)"
load_before="$(uptime)"
BENCH_ENTRIES="$entries" cargo bench --bench realistic | tee target/bench-realistic.log
load_after="$(uptime)"
{
    echo "machine: $machine"
    echo
    echo "uptime before: $load_before"
    echo
    echo "uptime after: $load_after"
    sed -n '/^#### /,$p' target/bench-realistic.log
} > "$out"
echo
cat "$out"
