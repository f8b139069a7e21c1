"""The stubs and inline annotations describe the API: mypy --strict accepts
a typed program using it, and rejects one that misuses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "typed"


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_typed_program_passes_mypy_strict():
    r = mypy(str(HERE / "example.py"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found in 1 source file" in r.stdout


def test_mypy_rejects_wrong_types(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import blobcache\n"
        "c = blobcache.Cache()\n"
        "c.set('tmdb', 603, b'x')\n"  # a signature is str or bytes
        "n: str = c.purge_expired()\n"  # an int
        "c.get('tmdb', 'k').decode()\n"  # may be None
        "blobcache.Cache(max_size='big')\n"  # an int option
    )
    r = mypy(str(bad))
    assert r.returncode == 1, r.stdout + r.stderr
    for line in (3, 4, 5, 6):
        assert f"bad.py:{line}: error" in r.stdout, r.stdout
    assert "Found 4 errors" in r.stdout, r.stdout


def test_the_typed_example_runs(tmp_path):
    # What mypy accepted also does what its annotations say at run time.
    code = "import sys, example; example.use(sys.argv[1])"
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c")],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "{'id': 1} {'id': 2}" in r.stdout, r.stdout
    assert "backend name" in r.stdout or "empty" in r.stdout, r.stdout
