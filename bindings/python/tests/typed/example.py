"""A typed use of the blobcache API; test_typing.py runs mypy --strict on it.
Every revealed type below is checked: a stub that drifts fails the test."""

from __future__ import annotations

import asyncio
import io
from typing import Any, Dict, List, Optional

import blobcache
from blobcache.requests_cache import BlobcacheCache


def use(path: str) -> None:
    with blobcache.Cache(path, durability="buffered", max_size=1 << 30) as cache:
        cache.set("tmdb", "movie/603", b'{"id":603}', ttl_seconds=60.0, category="metadata")
        got: Optional[bytes] = cache.get("tmdb", "movie/603")
        report: Dict[str, Any] = cache.set_with_meta(
            "tmdb", b"movie/604", "text", response_headers={"ETag": "x"}
        )
        meta = cache.get_with_meta("tmdb", "movie/603")
        if meta is not None:
            payload, headers, fetched_at = meta
            assert isinstance(payload, bytes) and headers.get("ETag") is None
            assert fetched_at > 0.0
        entry = cache.get_stale("tmdb", "movie/603")
        if entry is not None:
            stale: bool = entry.stale
            assert not stale and entry.payload == got
        removed: int = cache.purge_expired()
        ttl: float = cache.default_ttl_seconds("list")
        present: bool = ("tmdb", "movie/603") in cache
        listed: List[Dict[str, Any]] = cache.list("tmdb", limit=10)
        stats: Dict[str, Any] = cache.stats()
        answer = cache.get_or_fetch("tmdb", "movie/605", lambda: b"{}")
        fresh: bool = answer.from_cache
        cache.put_file("dumps", "d", io.BytesIO(b"x" * 10))
        reader = cache.open_reader("dumps", "d")
        if reader is not None:
            with reader:
                data: bytes = reader.read()
                assert data
        cache.set_json("tmdb", "j", {"a": [1, 2]})
        value: Any = cache.get_json("tmdb", "j", default={})

        @cache.memoize("tmdb", ttl=3600)
        def movie(movie_id: int) -> Dict[str, int]:
            return {"id": movie_id}

        @cache.memoize("tmdb")
        async def show(show_id: int) -> Dict[str, int]:
            return {"id": show_id}

        one: Dict[str, int] = movie(1)
        two: Dict[str, int] = asyncio.run(show(2))
        print(report, removed, ttl, present, listed, stats, fresh, value, one, two)
    try:
        blobcache.Cache(path).set("", "k", b"v")
    except blobcache.InvalidKeyError as e:
        as_value_error: ValueError = e
        print(as_value_error)
    backend = BlobcacheCache("http_cache", use_temp=True)
    print(backend.db_path)
