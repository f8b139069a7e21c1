"""Format 2 (the storage core v2) from Python: the same API, the format
kept by the directory, and a clear error for what it does not do yet."""

from __future__ import annotations

import pytest

import blobcache


def test_format2_round_trips_and_keeps_its_format(cache_dir, run_cli):
    payloads = {f"movie/{i}": (b'{"id":%d,"t":"' % i) + b"x" * (i * 97 % 5000) + b'"}' for i in range(300)}
    with blobcache.Cache(cache_dir, format=2) as c:
        assert c.format == 2
        for sig, body in payloads.items():
            c.set("tmdb", sig, body, ttl_seconds=3600)
        c.set_with_meta("tmdb", "h", b"{}", response_headers={"etag": "1"})
        assert c.get("tmdb", "movie/7") == payloads["movie/7"]
        assert c.delete("tmdb", "movie/8")
        assert c.get("tmdb", "movie/8") is None
    # Reopened without asking: the directory says format 2.
    with blobcache.Cache(cache_dir) as c:
        assert c.format == 2
        for sig, body in payloads.items():
            got = c.get("tmdb", sig)
            assert got == (None if sig == "movie/8" else body)
        payload, headers, _fetched = c.get_with_meta("tmdb", "h")
        assert payload == b"{}" and headers["etag"] == "1"
        assert c.stats()["entries"] == len(payloads)
    # The command line reads what Python wrote.
    assert run_cli("get", "tmdb", "movie/9").stdout == payloads["movie/9"]


def test_format2_migrates_a_format1_cache_and_there_is_no_way_back(cache_dir):
    with blobcache.Cache(cache_dir) as c:
        assert c.format == 1
        c.set("a", "k", b"v1", ttl_seconds=600)
        c.set_with_meta("a", "m", b"{}", response_headers={"etag": "7"})
    with blobcache.Cache(cache_dir, format=2) as c:
        assert c.format == 2
        assert c.get("a", "k") == b"v1"
        assert c.get_with_meta("a", "m")[1]["etag"] == "7"
    with pytest.raises(blobcache.NotACacheError, match="no migration back"):
        blobcache.Cache(cache_dir, format=1)
    with pytest.raises(blobcache.NotACacheError, match="format 3"):
        blobcache.Cache(cache_dir.parent / "other", format=3)
    with pytest.raises(TypeError, match="format"):
        blobcache.Cache(cache_dir.parent / "other", format="two")
    # Nothing was lost by the refused opens.
    with blobcache.Cache(cache_dir) as c:
        assert c.format == 2
        assert c.get("a", "k") == b"v1"


def test_what_format2_lacks_raises_and_changes_nothing(cache_dir, tmp_path):
    with blobcache.Cache(cache_dir, format=2) as c:
        c.set("a", "k", b"v")
        with pytest.raises(blobcache.Error, match="format-2"):
            c.gc(dry_run=True)
        assert c.get("a", "k") == b"v"


def test_verify_export_and_import_work_on_format2(cache_dir, tmp_path):
    archive = str(tmp_path / "a.tar")
    with blobcache.Cache(cache_dir, format=2) as c:
        c.set("a", "k", b"v")
        assert c.verify(full=True)["clean"]
        c.export(archive)
    with blobcache.Cache(tmp_path / "v2", format=2) as c:
        c.import_(archive)
        assert c.get("a", "k") == b"v"
    with blobcache.Cache(tmp_path / "v1") as c:
        c.import_(archive)
        assert c.get("a", "k") == b"v"
