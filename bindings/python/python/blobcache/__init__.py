"""blobcache: a persistent, content-addressed cache for upstream API
responses and large snapshots.

>>> import blobcache, tempfile
>>> with blobcache.Cache(tempfile.mkdtemp()) as cache:
...     cache.set("tmdb", "movie/603", b'{"id":603}', category="metadata")
...     cache.get("tmdb", "movie/603")
b'{"id":603}'

Several processes (and the ``blobcache`` command line) can use one cache
directory at once; one :class:`Cache` can be shared by threads, and every
call releases the GIL. See :class:`Cache` for the API and
:mod:`blobcache.errors` for the exceptions.
"""

from __future__ import annotations

from . import errors
from ._cache import Cache, Entry, FetchResult, Reader
from ._native import ARCHIVE_FORMAT_VERSION, FORMAT_VERSION, OPTION_NAMES
from .errors import *  # noqa: F401,F403

__all__ = [
    "Cache",
    "Entry",
    "FetchResult",
    "Reader",
    "errors",
    "FORMAT_VERSION",
    "ARCHIVE_FORMAT_VERSION",
    "OPTION_NAMES",
    *errors.__all__,
]
