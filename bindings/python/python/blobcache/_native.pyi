"""Type stubs of ``blobcache._native``, the extension module (the Rust half
of :class:`blobcache.Cache`). Users import :mod:`blobcache`, not this."""

import os
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

Signature = Union[str, bytes]
Payload = Union[bytes, bytearray, memoryview, str]
Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]
PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

OPTION_NAMES: List[str]
FORMAT_VERSION: int
ARCHIVE_FORMAT_VERSION: int
DEFAULT_STALE_IF_ERROR_SECONDS: int

class NativeReader:
    """Reads one entry's payload, verifying its hash as it goes."""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); ``b""`` at the end."""
    def close(self) -> None:
        """Releases the payload's file; further reads fail."""
    @property
    def closed(self) -> bool:
        """True once closed."""
    @property
    def meta(self) -> Dict[str, Any]:
        """The entry's metadata (see ``Cache.meta``)."""
    @property
    def stale(self) -> bool:
        """True when the entry is expired."""
    @property
    def size(self) -> int:
        """The payload's size in bytes."""

class Cache:
    """A blobcache cache directory, open in this process."""

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]", None] = None,
        *,
        durability: Optional[str] = None,
        compression_level: Optional[int] = None,
        max_size: Optional[int] = None,
        memory_tier: Optional[int] = None,
        memory_tier_max_staleness: Optional[float] = None,
        deny_secrets: Optional[Iterable[Payload]] = None,
        drop_headers: Optional[Iterable[str]] = None,
        stale_if_error: Optional[float] = None,
        category_ttls: Optional[Mapping[str, float]] = None,
        owner_timeout: Optional[float] = None,
        exclusive: Optional[bool] = None,
        track_access: Optional[bool] = None,
        inline_threshold: Optional[int] = None,
        cache_capacity: Optional[int] = None,
        gc_interval: Optional[float] = None,
        flush_interval: Optional[float] = None,
        format: Optional[int] = None,
    ) -> None:
        """Opens (creating if needed) the cache directory ``path``; by default
        ``$BLOBCACHE_DIR`` or the platform cache directory's ``blobcache``."""
    @property
    def path(self) -> Path:
        """The cache directory."""
    @property
    def format(self) -> int:
        """The cache's on-disk format: 1, or 2 for the storage core v2."""
    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
    @property
    def stale_if_error_seconds(self) -> float:
        """The stale-if-error grace in seconds (see ``get_or_fetch``)."""
    def close(self) -> None:
        """Makes everything written durable and lets go of the directory."""
    def is_owner(self) -> bool:
        """True when this process owns the cache's index (informational)."""
    def set(
        self,
        backend: str,
        signature: Signature,
        payload: Payload,
        *,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = None,
    ) -> None:
        """Stores ``payload`` under ``(backend, signature)``, replacing what was there."""
    def set_with_meta(
        self,
        backend: str,
        signature: Signature,
        payload: Payload,
        *,
        response_headers: Optional[Headers] = None,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = None,
        content_type: Optional[str] = None,
        fetched_at: Optional[float] = None,
        pinned: bool = False,
    ) -> Dict[str, Any]:
        """Like ``set``, keeping headers, content type and fetch time; returns what was stored."""
    def get(self, backend: str, signature: Signature) -> Optional[bytes]:
        """The live payload, or ``None`` when absent or expired."""
    def get_with_meta(
        self, backend: str, signature: Signature
    ) -> Optional[Tuple[bytes, Dict[str, str], float]]:
        """``(payload, headers, fetched_at)`` of the live entry, or ``None``."""
    def _get_stale(
        self, backend: str, signature: Signature
    ) -> Optional[Tuple[bytes, Dict[str, Any], bool]]: ...
    def meta(self, backend: str, signature: Signature) -> Optional[Dict[str, Any]]:
        """The entry's metadata as a dict (live or expired), or ``None``."""
    def contains(self, backend: str, signature: Signature) -> bool:
        """True when a live entry exists (the payload is not read)."""
    def __contains__(self, key: Tuple[str, Signature]) -> bool:
        """``(backend, signature) in cache``."""
    def delete(self, backend: str, signature: Signature) -> bool:
        """Removes the entry; True if it existed."""
    def touch(self, backend: str, signature: Signature, ttl_seconds: float) -> bool:
        """Makes the entry expire ``ttl_seconds`` from now; True if it existed."""
    def clear(self, backend: Optional[str] = None, prefix: Optional[Signature] = None) -> int:
        """Removes every entry, a backend's, or those under a prefix; returns how many."""
    def list(
        self,
        backend: Optional[str] = None,
        prefix: Optional[Signature] = None,
        *,
        limit: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """The metadata of the selected entries (expired ones flagged), in key order."""
    def _signatures(self, backend: str) -> List[Signature]: ...
    def _count(self, backend: str) -> int: ...
    def purge_expired(self) -> int:
        """Removes every expired entry now; returns how many."""
    def default_ttl_seconds(self, category: str) -> float:
        """The TTL in seconds a ``set`` with this category and no ``ttl_seconds`` gets."""
    def stats(self) -> Dict[str, Any]:
        """Counts and sizes as a dict (entries, hits, misses, hit_ratio, disk_bytes...)."""
    def health(self) -> Dict[str, Any]:
        """A quick check with the counters worth watching (``healthy``, ``problems``...)."""
    def verify(self, *, full: bool = False, repair: bool = False) -> Dict[str, Any]:
        """Checks the index against the payloads; ``repair=True`` drops what is broken."""
    def gc(
        self,
        *,
        grace_seconds: Optional[float] = None,
        max_size: Optional[int] = None,
        dry_run: bool = False,
        wait: bool = False,
    ) -> Dict[str, Any]:
        """Runs a GC sweep; returns the report as a dict."""
    def flush(self) -> None:
        """Makes everything written so far durable in the index now."""
    def export(
        self, target: PathOrFile, *, backend: Optional[str] = None, live_only: bool = False
    ) -> Dict[str, Any]:
        """Writes the cache (or one backend) as one archive; returns the report."""
    def import_(
        self,
        source: PathOrFile,
        *,
        merge: str = "newer",
        ttl_shift: bool = False,
        skip_damaged: bool = False,
    ) -> Dict[str, Any]:
        """Imports an archive written by ``export``, all or nothing."""
    def put_file(
        self,
        backend: str,
        signature: Signature,
        source: PathOrFile,
        *,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = "offline_dump",
        response_headers: Optional[Headers] = None,
        content_type: Optional[str] = None,
        pinned: bool = False,
    ) -> Dict[str, Any]:
        """Streams a payload from a path or a binary file object in bounded memory."""
    def _open_reader(
        self, backend: str, signature: Signature, *, allow_stale: bool = False
    ) -> Optional[NativeReader]: ...
    def _get_or_fetch(
        self,
        backend: str,
        signature: Signature,
        fetch: Callable[[], Any],
        *,
        ttl_seconds: Optional[float] = None,
        category: Optional[str] = None,
        honor_cache_control: bool = False,
    ) -> Tuple[
        bytes, Dict[str, str], str, float, Optional[float], Optional[BaseException]
    ]: ...
