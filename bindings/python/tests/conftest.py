"""Shared fixtures: a fresh cache directory, an open cache, and the
``blobcache`` command-line binary of this checkout."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

import blobcache

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def cache_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: pathlib.Path):
    with blobcache.Cache(cache_dir) as c:
        yield c


def _cli_path() -> pathlib.Path:
    given = os.environ.get("BLOBCACHE_BIN")
    if given:
        return pathlib.Path(given)
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "blobcache"
        if p.exists():
            return p
    raise RuntimeError(
        "the blobcache binary is not built: run `cargo build --bin blobcache` "
        "or set BLOBCACHE_BIN"
    )


@pytest.fixture(scope="session")
def cli_bin() -> pathlib.Path:
    return _cli_path()


@pytest.fixture
def run_cli(cli_bin: pathlib.Path, cache_dir: pathlib.Path):
    """Runs ``blobcache --dir <cache_dir> ARGS``; returns the completed process."""

    def run(*args: str, input: bytes | None = None, check: bool = True):
        return subprocess.run(
            [str(cli_bin), "--dir", str(cache_dir), *args],
            input=input,
            capture_output=True,
            timeout=120,
            check=check,
        )

    return run


@pytest.fixture
def python_child():
    """Starts ``python -c CODE ARGS`` with this interpreter."""

    def start(code: str, *args: str, **kw):
        return subprocess.Popen([sys.executable, "-c", code, *args], **kw)

    return start
