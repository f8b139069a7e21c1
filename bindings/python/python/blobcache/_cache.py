"""The :class:`Cache` class: the native store plus the parts that are plain
Python (context manager, file objects, ``get_or_fetch`` results, the
``memoize`` decorator, JSON helpers)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import json
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, NamedTuple, Optional, TypeVar, Union

from . import _native

Signature = Union[str, bytes]
Payload = Union[bytes, bytearray, memoryview, str]
_F = TypeVar("_F", bound=Callable[..., Any])


class Entry(NamedTuple):
    """An entry read with :meth:`Cache.get_stale`."""

    payload: bytes
    """The payload."""
    headers: Dict[str, str]
    """The response headers kept with it (credentials removed)."""
    fetched_at: float
    """When the upstream produced it (epoch seconds)."""
    expires_at: float
    """When it expires or expired (epoch seconds)."""
    stale: bool
    """True when it is expired."""
    meta: Dict[str, Any]
    """All of its metadata (see :meth:`Cache.meta`)."""


class FetchResult(NamedTuple):
    """The answer of :meth:`Cache.get_or_fetch`."""

    payload: bytes
    """The payload."""
    headers: Dict[str, str]
    """The response headers (credentials removed)."""
    status: str
    """``"hit"`` (from the cache), ``"fetched"`` (from ``fetch``) or
    ``"stale"`` (``fetch`` failed; an expired entry was served)."""
    fetched_at: float
    """When the upstream produced the payload (epoch seconds)."""
    expires_at: Optional[float]
    """When the entry expires (epoch seconds); ``None`` when not stored."""
    error: Optional[BaseException]
    """With ``status == "stale"``: the exception ``fetch`` raised."""

    @property
    def from_cache(self) -> bool:
        """True unless the payload came from this call's ``fetch``."""
        return self.status != "fetched"


class Reader(io.RawIOBase):
    """A binary, read-only file object over one payload (from
    :meth:`Cache.open_reader`), read in bounded memory and verified as it
    streams: if the payload is damaged, the read that reaches its end raises
    :class:`blobcache.CorruptPayloadError` instead of ending quietly. Wrap it
    in :class:`io.BufferedReader` for fast ``readline``."""

    def __init__(self, native: _native.NativeReader) -> None:
        super().__init__()
        self._native = native

    @property
    def meta(self) -> Dict[str, Any]:
        """The entry's metadata (see :meth:`Cache.meta`)."""
        return self._native.meta

    @property
    def stale(self) -> bool:
        """True when the entry is expired."""
        return self._native.stale

    @property
    def size(self) -> int:
        """The payload's size in bytes."""
        return self._native.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._native.read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        return self._native.read(-1)

    def close(self) -> None:
        self._native.close()
        super().close()


def _default_key(name: str, args: tuple[Any, ...], kwargs: Dict[str, Any]) -> str:
    """A memoize signature: the function's name and its arguments as JSON
    (``repr`` for what JSON cannot hold)."""
    parts: List[Any] = [list(args), sorted(kwargs.items())]
    return name + ":" + json.dumps(parts, default=repr, separators=(",", ":"), sort_keys=True)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Cache(_native.Cache):
    """A blobcache cache directory, open in this process.

    ``Cache(path=None, **options)`` opens (creating if needed) ``path``: by
    default ``$BLOBCACHE_DIR`` or the platform cache directory's
    ``blobcache`` (``~/.cache/blobcache`` on Linux), the directory the
    ``blobcache`` command line uses. Several processes can open the same
    directory at once, together with the command line; one handle is safe
    to share between threads, and every call releases the GIL.

    Options (all keyword, ``None`` meaning the default):

    - ``durability``: ``"buffered"`` (default: survives ``kill -9``) or
      ``"synced"`` (fsync before returning: survives power loss).
    - ``max_size``: a cap in bytes on the disk space used; the least
      recently used entries are evicted in the background.
    - ``memory_tier``: bytes of recently read payloads to keep in this
      process's memory (default 0, off); ``memory_tier_max_staleness``
      (seconds, default 1) bounds how long another process's change goes
      unseen by it.
    - ``deny_secrets``: strings (API keys, tokens) that must never be stored;
      a put holding one raises :class:`SecretInPayloadError`.
    - ``drop_headers``: header names never to store, besides
      Authorization, Cookie, Set-Cookie and Proxy-Authorization.
    - ``stale_if_error``: seconds after expiry an entry may still be served
      by :meth:`get_or_fetch` when ``fetch`` fails (default 7 days).
    - ``category_ttls``: ``{category: seconds}`` overrides of the default
      TTLs (metadata 72 h, list 24 h, schedule and trending 1 h,
      offline_dump 30 d).
    - ``compression_level`` (zstd, default 3), ``owner_timeout`` (seconds,
      default 10), ``exclusive`` (do not share with other processes),
      ``track_access``, ``inline_threshold``, ``cache_capacity``,
      ``gc_interval`` and ``flush_interval`` (seconds).
    - ``format``: the on-disk format of a new cache, ``1`` (default) or
      ``2``, the storage core v2 (payloads in pack files, a lean index):
      one process at a time for now, no remote tier, size cap or
      ``gc(dry_run=True)`` yet (those raise :class:`Error` saying so);
      ``verify``, ``export`` and ``import_`` work (archives are the same
      for both formats). An existing cache keeps its own format; asking it
      for the other one raises :class:`NotACacheError`.

    Keys are ``(backend, signature)``: a backend name such as ``"tmdb"`` and
    a signature (``str`` or ``bytes``) such as ``"movie/603?lang=en"``.
    Payloads are ``bytes`` (``bytearray``, ``memoryview`` and ``str``, as
    UTF-8, are accepted). Times are epoch seconds, durations seconds.

    Use it as a context manager, or call :meth:`close`.
    """

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_stale(self, backend: str, signature: Signature) -> Optional[Entry]:
        """The entry, live or expired (``stale`` tells), as long as GC has not
        removed it; ``None`` when absent. For serving something when the
        upstream is down."""
        got = self._get_stale(backend, signature)
        if got is None:
            return None
        payload, meta, stale = got
        return Entry(payload, meta["headers"], meta["fetched_at"], meta["expires_at"], stale, meta)

    def open_reader(
        self, backend: str, signature: Signature, *, allow_stale: bool = False
    ) -> Optional[Reader]:
        """The payload as a binary file object (:class:`Reader`) that streams
        it in bounded memory, or ``None`` when absent (or expired, unless
        ``allow_stale``)."""
        native = self._open_reader(backend, signature, allow_stale=allow_stale)
        return None if native is None else Reader(native)

    def get_or_fetch(
        self,
        backend: str,
        signature: Signature,
        fetch: Callable[[], Any],
        *,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = None,
        honor_cache_control: bool = False,
    ) -> FetchResult:
        """Serves the live entry, or calls ``fetch()`` and stores what it
        returns: a payload, or a ``(payload, headers)`` pair.

        Threads of this process asking for the same key at once share one
        call of ``fetch`` (single-flight). When ``fetch`` raises and an entry
        that expired at most ``stale_if_error`` ago exists, that entry is
        served (``status == "stale"``, the exception in ``error``); with
        nothing to serve, ``fetch``'s exception propagates unchanged. With
        ``honor_cache_control``, the response's ``Cache-Control`` sets the
        TTL (``max-age``) or prevents storing (``no-store``)."""
        got = self._get_or_fetch(
            backend,
            signature,
            fetch,
            ttl_seconds=ttl_seconds,
            category=category,
            honor_cache_control=honor_cache_control,
        )
        return FetchResult(*got)

    def set_json(
        self,
        backend: str,
        signature: Signature,
        value: Any,
        *,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = None,
        response_headers: Optional[Mapping[str, str]] = None,
    ) -> None:
        """Stores ``value`` as compact UTF-8 JSON (content type
        ``application/json``)."""
        self.set_with_meta(
            backend,
            signature,
            _json_dumps(value),
            response_headers=response_headers,
            ttl_seconds=ttl_seconds,
            category=category,
            content_type="application/json",
        )

    def get_json(self, backend: str, signature: Signature, default: Any = None) -> Any:
        """The live entry decoded from JSON, or ``default`` when absent."""
        raw = self.get(backend, signature)
        return default if raw is None else json.loads(raw)

    def _stale_within_grace(self, backend: str, signature: Signature) -> Optional[bytes]:
        """An entry that expired at most ``stale_if_error`` ago (or a live one)."""
        e = self.get_stale(backend, signature)
        if e is None:
            return None
        if e.stale and time.time() - e.expires_at > self.stale_if_error_seconds:
            return None
        return e.payload

    def memoize(
        self,
        backend: str,
        ttl: Optional[float] = None,
        *,
        category: Optional[str] = None,
        key: Optional[Callable[..., Signature]] = None,
        dumps: Callable[[Any], bytes] = _json_dumps,
        loads: Callable[[bytes], Any] = json.loads,
    ) -> Callable[[_F], _F]:
        """A decorator caching a function's results under ``backend`` for
        ``ttl`` seconds (else the category's TTL). Works on plain and
        ``async`` functions.

        The signature is the function's qualified name and its arguments as
        JSON, or ``key(*args, **kwargs)``. Values go through JSON by default
        (tuples come back as lists); pass ``dumps``/``loads`` (e.g. pickle's)
        for other types. Concurrent calls with the same arguments share one
        call (threads of this process; for ``async`` functions, tasks of one
        event loop), and when the function raises, a result expired within
        ``stale_if_error`` is returned instead.

        >>> @cache.memoize("tmdb", ttl=3600)            # doctest: +SKIP
        ... def movie(movie_id): return requests.get(...).json()
        """

        def decorate(func: _F) -> _F:
            name = f"{func.__module__}.{func.__qualname__}"

            def signature(args: tuple[Any, ...], kwargs: Dict[str, Any]) -> Signature:
                return key(*args, **kwargs) if key else _default_key(name, args, kwargs)

            if inspect.iscoroutinefunction(func):
                wrapped: Any = self._memoize_async(
                    func, backend, signature, ttl, category, dumps, loads
                )
                return wrapped  # the same signature as func

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                answer = self.get_or_fetch(
                    backend,
                    signature(args, kwargs),
                    lambda: dumps(func(*args, **kwargs)),
                    ttl_seconds=ttl,
                    category=category,
                )
                return loads(answer.payload)

            same: Any = wrapper  # the same signature as func
            return same

        return decorate

    def _memoize_async(
        self,
        func: Callable[..., Awaitable[Any]],
        backend: str,
        signature: Callable[[tuple[Any, ...], Dict[str, Any]], Signature],
        ttl: Optional[float],
        category: Optional[str],
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
    ) -> Callable[..., Awaitable[Any]]:
        flights: Dict[tuple[int, Signature], List[Any]] = {}

        async def fetch_once(sig: Signature, args: tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
            hit = self.get(backend, sig)
            if hit is not None:
                return loads(hit)
            try:
                value = await func(*args, **kwargs)
            except Exception:
                stale = self._stale_within_grace(backend, sig)
                if stale is None:
                    raise
                return loads(stale)
            self.set(backend, sig, dumps(value), ttl_seconds=ttl, category=category)
            return value

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            sig = signature(args, kwargs)
            hit = self.get(backend, sig)
            if hit is not None:
                return loads(hit)
            slot = (id(asyncio.get_running_loop()), sig)
            flight = flights.setdefault(slot, [asyncio.Lock(), 0])
            flight[1] += 1
            try:
                async with flight[0]:
                    return await fetch_once(sig, args, kwargs)
            finally:
                flight[1] -= 1
                if flight[1] == 0:
                    flights.pop(slot, None)

        return wrapper
