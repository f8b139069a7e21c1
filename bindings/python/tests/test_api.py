"""The Cache API against a real cache directory."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time

import pytest

import blobcache


def test_set_get_roundtrip_and_miss(cache):
    assert cache.get("tmdb", "movie/603") is None
    cache.set("tmdb", "movie/603", b'{"id":603}')
    assert cache.get("tmdb", "movie/603") == b'{"id":603}'
    # str payloads are stored as UTF-8; bytes signatures name the same key as str ones
    cache.set("tmdb", b"movie/604", "h\u00e9")
    assert cache.get("tmdb", "movie/604") == "h\u00e9".encode()
    cache.set("tmdb", "raw", bytearray(b"\x00\xff"))
    cache.set("tmdb", "view", memoryview(b"abcdef")[1:3])
    assert cache.get("tmdb", "raw") == b"\x00\xff"
    assert cache.get("tmdb", "view") == b"bc"


def test_replacing_keeps_one_entry(cache):
    cache.set("a", "k", b"one")
    cache.set("a", "k", b"two")
    assert cache.get("a", "k") == b"two"
    assert cache.stats()["entries"] == 1


def test_with_meta_keeps_headers_minus_credentials(cache):
    before = time.time()
    report = cache.set_with_meta(
        "tmdb",
        "movie/603",
        b"{}",
        response_headers={"ETag": '"abc"', "Authorization": "Bearer x", "Set-Cookie": "s=1"},
        ttl_seconds=60,
        content_type="application/json",
    )
    assert report["raw_size"] == 2 and report["inline"]
    payload, headers, fetched_at = cache.get_with_meta("tmdb", "movie/603")
    assert payload == b"{}"
    assert headers == {"ETag": '"abc"'}
    assert before - 1 <= fetched_at <= time.time() + 1
    meta = cache.meta("tmdb", "movie/603")
    assert meta["content_type"] == "application/json"
    assert 59 <= meta["expires_at"] - meta["created_at"] <= 61
    assert cache.get_with_meta("tmdb", "absent") is None


def test_fetched_at_and_header_pairs(cache):
    cache.set_with_meta("b", "s", b"x", response_headers=[("X-A", "1")], fetched_at=1_000_000.5)
    _, headers, fetched_at = cache.get_with_meta("b", "s")
    assert headers == {"X-A": "1"} and fetched_at == 1_000_000.5


def test_category_ttls_and_overrides(cache_dir):
    with blobcache.Cache(cache_dir, category_ttls={"list": 120, "posters": 5}) as c:
        assert c.default_ttl_seconds("metadata") == 72 * 3600
        assert c.default_ttl_seconds("list") == 120
        assert c.default_ttl_seconds("schedule") == 3600
        assert c.default_ttl_seconds("trending") == 3600
        assert c.default_ttl_seconds("offline_dump") == 30 * 24 * 3600
        assert c.default_ttl_seconds("posters") == 5
        assert c.default_ttl_seconds("unknown") == 72 * 3600
        c.set("anilist", "page/1", b"[]", category="list")
        m = c.meta("anilist", "page/1")
        assert m["category"] == "list"
        assert 119 <= m["expires_at"] - m["created_at"] <= 121


def test_expired_is_a_miss_but_stale_readable_until_purged(cache):
    cache.set_with_meta("b", "old", b"v", ttl_seconds=0, response_headers={"ETag": "e"})
    cache.set("b", "new", b"w", ttl_seconds=3600)
    assert cache.get("b", "old") is None
    assert not cache.contains("b", "old") and ("b", "old") not in cache
    entry = cache.get_stale("b", "old")
    assert entry.payload == b"v" and entry.stale and entry.headers == {"ETag": "e"}
    live = cache.get_stale("b", "new")
    assert live.payload == b"w" and not live.stale
    assert cache.purge_expired() == 1
    assert cache.get_stale("b", "old") is None
    assert cache.get("b", "new") == b"w"


def test_delete_touch_contains(cache):
    cache.set("b", "k", b"v", ttl_seconds=3600)
    assert ("b", "k") in cache and cache.contains("b", b"k")
    assert cache.touch("b", "k", 0)
    assert cache.get("b", "k") is None
    assert cache.touch("b", "k", 3600)
    assert cache.get("b", "k") == b"v"
    assert cache.delete("b", "k")
    assert not cache.delete("b", "k")
    assert not cache.touch("b", "k", 10)
    assert ("b", "k") not in cache


def test_clear_by_prefix_backend_and_all(cache):
    for sig in ("movie/1", "movie/2", "tv/1"):
        cache.set("tmdb", sig, b"x")
    cache.set("anilist", "anime/1", b"y")
    assert cache.clear("tmdb", "movie/") == 2
    assert [m["signature"] for m in cache.list("tmdb")] == ["tv/1"]
    assert cache.clear("tmdb") == 1
    assert cache.clear() == 1
    assert cache.list() == []


def test_list_and_stats(cache):
    for i in range(5):
        cache.set("b", f"k{i}", b"payload-%d" % i)
    cache.set("b", "same", b"payload-0")  # deduplicated
    cache.get("b", "k0")
    cache.get("b", "absent")
    metas = cache.list("b")
    assert [m["signature"] for m in metas] == ["k0", "k1", "k2", "k3", "k4", "same"]
    assert len(cache.list(limit=2)) == 2
    s = cache.stats()
    assert s["entries"] == 6 and s["blobs"] == 5
    assert s["hits"] == 1 and s["misses"] == 1 and s["hit_ratio"] == 0.5
    assert s["backends"]["b"]["entries"] == 6
    assert s["disk_bytes"] >= s["index_bytes"] > 0


def test_health_verify_gc(cache):
    cache.set("b", "k", b"v", ttl_seconds=0)
    cache.set("b", "live", b"w")
    h = cache.health()
    assert h["healthy"] and h["entries"] == 2 and h["problems"] == []
    v = cache.verify(full=True)
    assert v["clean"] and v["entries"] == 2
    dry = cache.gc(grace_seconds=0, dry_run=True)
    assert dry["dry_run"] and dry["entries_expired"] == 1
    assert cache.get_stale("b", "k") is not None
    r = cache.gc(grace_seconds=0)
    assert r["entries_expired"] == 1
    assert cache.get_stale("b", "k") is None and cache.get("b", "live") == b"w"


def test_export_import_path_and_file(cache, tmp_path):
    cache.set_with_meta("tmdb", "m/1", b"one", response_headers={"ETag": "1"})
    cache.set("anilist", "a/1", b"two")
    archive = tmp_path / "cache.tar"
    assert cache.export(archive)["entries"] == 2
    buf = io.BytesIO()
    assert cache.export(buf, backend="tmdb")["entries"] == 1
    with blobcache.Cache(tmp_path / "other") as other:
        assert other.import_(str(archive))["imported"] == 2
        assert other.get_with_meta("tmdb", "m/1")[:2] == (b"one", {"ETag": "1"})
        assert other.get("anilist", "a/1") == b"two"
        other.clear()
        buf.seek(0)
        assert other.import_(buf, merge="keep")["imported"] == 1
        assert other.get("anilist", "a/1") is None


def test_streaming_put_file_and_reader_in_bounded_chunks(cache, tmp_path):
    # 48 MiB of varied bytes, streamed in and out.
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    src = tmp_path / "dump.bin"
    with open(src, "wb") as f:
        for i in range(768):
            f.write(bytes([i % 251]) + block[1:])
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    report = cache.put_file("dumps", "all.bin", src)
    assert report["raw_size"] == src.stat().st_size and not report["inline"]
    assert cache.meta("dumps", "all.bin")["category"] == "offline_dump"
    with cache.open_reader("dumps", "all.bin") as r:
        assert r.size == src.stat().st_size and not r.stale
        h = hashlib.sha256()
        while chunk := r.read(1 << 20):
            assert len(chunk) <= 1 << 20
            h.update(chunk)
    assert h.hexdigest() == want
    # a file object source, and readline through a BufferedReader
    cache.put_file("dumps", "lines", io.BytesIO(b"a\nb\n"), category="list")
    with io.BufferedReader(cache.open_reader("dumps", "lines")) as r:
        assert r.readline() == b"a\n" and r.read() == b"b\n"
    assert cache.open_reader("dumps", "absent") is None


def test_reader_of_expired_entry_needs_allow_stale(cache):
    cache.set("b", "k", b"old", ttl_seconds=0)
    assert cache.open_reader("b", "k") is None
    with cache.open_reader("b", "k", allow_stale=True) as r:
        assert r.stale and r.read() == b"old"


def test_get_or_fetch_hit_fetched_and_headers(cache):
    calls = []

    def fetch():
        calls.append(1)
        return b'{"id":1}', {"Cache-Control": "max-age=60", "Cookie": "c=1"}

    first = cache.get_or_fetch("api", "item/1", fetch, honor_cache_control=True)
    assert first.status == "fetched" and not first.from_cache
    assert first.headers == {"Cache-Control": "max-age=60"}
    assert 59 <= first.expires_at - first.fetched_at <= 61
    second = cache.get_or_fetch("api", "item/1", fetch)
    assert second.status == "hit" and second.payload == b'{"id":1}'
    assert len(calls) == 1


def test_get_or_fetch_no_store_is_returned_not_kept(cache):
    r = cache.get_or_fetch(
        "api", "x", lambda: (b"v", {"Cache-Control": "no-store"}), honor_cache_control=True
    )
    assert r.payload == b"v" and r.expires_at is None
    assert cache.get("api", "x") is None


def test_get_or_fetch_error_propagates_or_serves_stale(cache_dir):
    class Down(Exception):
        pass

    def fail():
        raise Down("upstream is down")

    with blobcache.Cache(cache_dir, stale_if_error=3600) as c:
        with pytest.raises(Down, match="upstream is down"):
            c.get_or_fetch("api", "k", fail)
        c.set("api", "k", b"old", ttl_seconds=0)
        r = c.get_or_fetch("api", "k", fail)
        assert r.status == "stale" and r.payload == b"old" and isinstance(r.error, Down)
    with blobcache.Cache(cache_dir, stale_if_error=0) as c:
        c.set("api", "k2", b"old", ttl_seconds=0)
        time.sleep(0.01)
        with pytest.raises(Down):
            c.get_or_fetch("api", "k2", fail)


def test_get_or_fetch_single_flight_across_threads(cache):
    """Eight threads miss the same key at once; fetch runs once. The fetch
    waits until every other thread is inside get_or_fetch, which can only
    happen if the waiting threads released the GIL."""
    calls = []
    started = threading.Barrier(8)
    release = threading.Event()

    def fetch():
        calls.append(1)
        assert release.wait(30)
        return b"shared"

    results = []

    def worker():
        started.wait()
        results.append(cache.get_or_fetch("api", "hot", fetch))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(calls) == 1
    assert sorted(r.status for r in results).count("fetched") >= 1
    assert all(r.payload == b"shared" for r in results)


def test_memoize_sync(cache):
    calls = []

    @cache.memoize("tmdb", ttl=3600)
    def movie(movie_id, lang="en"):
        calls.append(movie_id)
        return {"id": movie_id, "lang": lang}

    assert movie(603) == {"id": 603, "lang": "en"}
    assert movie(603) == {"id": 603, "lang": "en"}
    assert movie(603, lang="de") == {"id": 603, "lang": "de"}
    assert calls == [603, 603]
    assert movie.__name__ == "movie"
    assert len(cache.list("tmdb")) == 2


def test_memoize_async_single_flight_and_stale(cache):
    calls = []
    fail = {"now": False}

    @cache.memoize("anilist", ttl=0.2, key=lambda i: f"anime/{i}")
    async def anime(i):
        calls.append(i)
        await asyncio.sleep(0.05)
        if fail["now"]:
            raise ConnectionError("down")
        return [i, "title"]

    async def main():
        together = await asyncio.gather(*(anime(1) for _ in range(5)))
        assert together == [[1, "title"]] * 5
        assert calls == [1]
        assert cache.get_json("anilist", "anime/1") == [1, "title"]
        await asyncio.sleep(0.3)  # expired now
        fail["now"] = True
        assert await anime(1) == [1, "title"]  # stale-if-error
        with pytest.raises(ConnectionError):
            await anime(2)

    asyncio.run(main())


def test_json_helpers(cache):
    cache.set_json("tmdb", "movie/603", {"id": 603, "title": "The Matrix", "tags": ["sf"]})
    assert cache.get_json("tmdb", "movie/603") == {"id": 603, "title": "The Matrix", "tags": ["sf"]}
    assert cache.get("tmdb", "movie/603") == b'{"id":603,"title":"The Matrix","tags":["sf"]}'
    assert cache.meta("tmdb", "movie/603")["content_type"] == "application/json"
    assert cache.get_json("tmdb", "absent", default={}) == {}


def test_secrets_are_refused_and_never_echoed(cache_dir):
    key = "k-3f9a1c77"
    with blobcache.Cache(cache_dir, deny_secrets=[key], drop_headers=["X-Api-Key"]) as c:
        with pytest.raises(blobcache.SecretInPayloadError) as e:
            c.set("tmdb", "list/1", f'{{"next":"/p/2?api_key={key}"}}')
        assert isinstance(e.value, ValueError) and isinstance(e.value, blobcache.Error)
        assert key not in str(e.value) and "tmdb/list/1" in str(e.value)
        assert c.get("tmdb", "list/1") is None
        c.set_with_meta("tmdb", "ok", b"{}", response_headers={"X-Api-Key": key, "X-B": "1"})
        assert c.get_with_meta("tmdb", "ok")[1] == {"X-B": "1"}
        with pytest.raises(blobcache.SecretInPayloadError):
            c.put_file("tmdb", "dump", io.BytesIO(b"x" * 5_000_000 + key.encode()))
        assert c.get("tmdb", "dump") is None


def test_options_are_applied(cache_dir):
    opts = dict(
        durability="synced",
        compression_level=19,
        memory_tier=1 << 20,
        owner_timeout=5,
        track_access=False,
        exclusive=True,
        max_size=None,
    )
    with blobcache.Cache(cache_dir, **opts) as c:
        c.set("b", "k", json.dumps({"x": "y" * 1000}).encode())
        assert c.get("b", "k").startswith(b'{"x"')
        assert c.meta("b", "k")["compressed"]
        assert c.is_owner()


def test_close_is_idempotent_and_releases_the_directory(cache_dir):
    c = blobcache.Cache(cache_dir, exclusive=True)
    c.set("b", "k", b"v")
    c.close()
    c.close()
    assert c.closed
    with blobcache.Cache(cache_dir, exclusive=True, owner_timeout=2) as again:
        assert again.get("b", "k") == b"v"


def test_help_reads_well():
    doc = blobcache.Cache.__doc__
    assert "durability" in doc and "deny_secrets" in doc
    for name in ("set", "get", "get_with_meta", "get_or_fetch", "memoize", "export", "import_"):
        assert getattr(blobcache.Cache, name).__doc__, name
