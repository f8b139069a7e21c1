"""A requests-cache backend on blobcache.

>>> from requests_cache import CachedSession              # doctest: +SKIP
>>> from blobcache.requests_cache import BlobcacheCache
>>> session = CachedSession(backend=BlobcacheCache("http_cache", use_cache_dir=True))

Constructed like requests-cache's SQLite backend: ``cache_name`` is the cache
directory (relative to the working directory, or to the user cache directory
with ``use_cache_dir=True``, or the temp directory with ``use_temp=True``), and
each table (``responses``, ``redirects``) is one blobcache backend in it.
Responses go through requests-cache's serializers (pickle by default), so
everything requests-cache stores round-trips. Entries are kept until
requests-cache deletes them: blobcache's TTL is the response's own expiry
(responses without one are kept for 100 years), and expired responses stay
readable for revalidation until requests-cache or ``blobcache gc`` removes
them. Keyword arguments named like :class:`blobcache.Cache` options (e.g.
``durability``, ``max_size``, ``deny_secrets``) open the cache with them; the
others are requests-cache's.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Optional

from requests_cache.backends.base import BaseCache, BaseStorage
from requests_cache.backends.sqlite import get_cache_path
from requests_cache.serializers import SerializerType, pickle_serializer

from . import OPTION_NAMES, Cache

__all__ = ["BlobcacheCache", "BlobcacheStorage"]

#: TTL of responses that never expire (100 years).
NEVER_EXPIRES_SECONDS = 100 * 365 * 24 * 3600.0

# Type tags of stored values: what the serializer (or, without one, the
# caller) handed over must come back as the same type.
_BYTES, _STR, _PICKLED = b"\x00", b"\x01", b"\x02"

_open: "weakref.WeakValueDictionary[tuple, Cache]" = weakref.WeakValueDictionary()
_open_lock = threading.Lock()


def _shared_cache(path: str, options: dict) -> Cache:
    """One Cache per directory and process, shared by every storage on it."""
    import os

    key = (os.getpid(), path)
    with _open_lock:
        cache = _open.get(key)
        if cache is None or cache.closed:
            cache = Cache(path, **options)
            _open[key] = cache
        return cache


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return _BYTES + value
    if isinstance(value, str):
        return _STR + value.encode("utf-8", "surrogatepass")
    return _PICKLED + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(raw: bytes) -> Any:
    tag, body = raw[:1], raw[1:]
    if tag == _BYTES:
        return body
    if tag == _STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == _PICKLED:
        return pickle.loads(body)
    raise ValueError("not a value stored by blobcache.requests_cache")


def _ttl_of(value: Any) -> float:
    """Seconds until the response expires (0 if it has), or 100 years."""
    expires: Optional[datetime] = getattr(value, "expires", None)
    if expires is None:
        return NEVER_EXPIRES_SECONDS
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return max((expires - datetime.now(timezone.utc)).total_seconds(), 0.0)


class BlobcacheStorage(BaseStorage):
    """A dict-like view of one blobcache backend (``table_name``) in the
    cache directory ``cache_name``.

    Args:
        cache_name: The cache directory.
        table_name: The blobcache backend holding this table's entries.
        serializer: A requests-cache serializer (pickle by default).
        use_cache_dir: Put a relative ``cache_name`` in the user cache directory.
        use_temp: Put a relative ``cache_name`` in the temp directory.
        cache: An open :class:`blobcache.Cache` to use instead of opening one.
        kwargs: :class:`blobcache.Cache` options; others are ignored.
    """

    def __init__(
        self,
        cache_name: Any = "http_cache",
        table_name: str = "responses",
        serializer: Optional[SerializerType] = pickle_serializer,
        use_cache_dir: bool = False,
        use_temp: bool = False,
        cache: Optional[Cache] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(serializer=serializer, **kwargs)
        self.table_name = table_name
        if cache is None:
            path = str(get_cache_path(cache_name, use_cache_dir, use_temp))
            options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
            cache = _shared_cache(path, options)
        self.cache = cache

    @property
    def db_path(self) -> str:
        """The cache directory."""
        return str(self.cache.path)

    def __getitem__(self, key: str) -> Any:
        raw = self.cache.get_stale(self.table_name, key)
        if raw is None:
            raise KeyError(key)
        return self.deserialize(key, _decode(raw.payload))

    def __setitem__(self, key: str, value: Any) -> None:
        data = _encode(self.serialize(value))
        self.cache.set(self.table_name, key, data, ttl_seconds=_ttl_of(value))

    def __delitem__(self, key: str) -> None:
        if not self.cache.delete(self.table_name, key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, bytes)):
            return False
        return self.cache.meta(self.table_name, key) is not None

    def __iter__(self) -> Iterator[str]:
        yield from self.cache._signatures(self.table_name)

    def __len__(self) -> int:
        return self.cache._count(self.table_name)

    def bulk_delete(self, keys: Iterable[str]) -> None:
        """Deletes several keys; missing ones are ignored."""
        for k in keys:
            self.cache.delete(self.table_name, k)

    def clear(self) -> None:
        """Deletes every entry of this table."""
        self.cache.clear(self.table_name)

    def close(self) -> None:
        """Nothing to release per table: the shared cache closes with the process."""


class BlobcacheCache(BaseCache):
    """requests-cache backend storing responses and redirects in a blobcache
    cache directory; see :class:`BlobcacheStorage` for the arguments."""

    def __init__(
        self,
        cache_name: Any = "http_cache",
        serializer: Optional[SerializerType] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(cache_name=str(cache_name), **kwargs)
        skwargs = {"serializer": serializer, **kwargs} if serializer else kwargs
        self.responses: BlobcacheStorage = BlobcacheStorage(
            cache_name, table_name="responses", **skwargs
        )
        kwargs.pop("cache", None)
        self.redirects: BlobcacheStorage = BlobcacheStorage(
            cache_name,
            table_name="redirects",
            serializer=None,
            cache=self.responses.cache,
            **kwargs,
        )

    @property
    def db_path(self) -> str:
        """The cache directory."""
        return self.responses.db_path
