"""bench/bench.py keeps working: its smoke mode runs (the systems the test
venv has), checks every byte it reads back, and prints the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "bench.py"


def test_bench_smoke_run_prints_the_table(tmp_path):
    systems = "sqlite-norowid,sqlite-rowid,blobcache,blobcache-v2"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--systems", systems, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("2,000 entries: payload mean "), r.stdout
    for name in systems.split(","):
        assert f"\n| {name} | " in r.stdout, r.stdout
    assert "| blobcache vs the faster SQLite" in r.stdout, r.stdout
    assert "| blobcache-v2 vs the faster SQLite" in r.stdout, r.stdout
    assert list(tmp_path.iterdir()) == [], "the bench left its caches behind"


def test_bench_rejects_an_unknown_system():
    r = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--systems", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown systems ['nope']" in r.stderr, r.stderr
