"""The exceptions blobcache raises.

Every one is a :class:`Error`; those caused by a bad argument are also a
:class:`ValueError`, those of the filesystem also an :class:`OSError` (with
``errno`` set when the system gave one). Messages are the Rust library's,
unchanged: what happened, to which path or key, and what to do.
"""

from __future__ import annotations

__all__ = [
    "Error",
    "InvalidKeyError",
    "ClosedError",
    "LockedError",
    "OwnerTimeoutError",
    "ProtocolError",
    "OwnerError",
    "NewerFormatError",
    "NotACacheError",
    "IoError",
    "SymlinkError",
    "CorruptPayloadError",
    "IndexDatabaseError",
    "CorruptRecordError",
    "SecretInPayloadError",
    "TooLargeError",
    "NotConfirmedError",
    "EncodeError",
    "BusyError",
    "BadArchiveError",
    "ArchiveMissingBlobError",
    "NewerArchiveError",
    "SweepRunningError",
]


class Error(Exception):
    """Base class of every error blobcache raises."""


class InvalidKeyError(Error, ValueError):
    """The backend name is empty or has a NUL byte, or the backend or the
    signature is longer than the format allows."""


class ClosedError(Error, ValueError):
    """The cache was closed (or was opened in the parent of a fork)."""


class LockedError(Error):
    """Another process holds the cache without sharing it."""


class OwnerTimeoutError(Error, TimeoutError):
    """The process owning the cache did not answer within ``owner_timeout``."""


class ProtocolError(Error):
    """The owner process speaks another blobcache version."""


class OwnerError(Error):
    """The owner process failed to serve a request."""


class NewerFormatError(Error):
    """The cache directory was written by a newer blobcache."""


class NotACacheError(Error):
    """The directory is not a usable blobcache directory."""


class IoError(Error, OSError):
    """A filesystem operation failed (``errno`` is set when known)."""


class SymlinkError(IoError):
    """A path inside the cache directory is a symbolic link; it is never followed."""


class CorruptPayloadError(IoError):
    """A streamed payload failed its hash check; the entry was dropped."""


class IndexDatabaseError(Error):
    """The index database reported an error."""


class CorruptRecordError(Error):
    """The index record of one key cannot be decoded; delete the key."""


class SecretInPayloadError(Error, ValueError):
    """A payload, header, content type or signature holds a configured secret;
    nothing was stored. The message never repeats the secret."""


class TooLargeError(Error):
    """The payload is too large to load into memory; use ``open_reader``."""


class NotConfirmedError(Error):
    """A destructive operation needed a confirmation."""


class EncodeError(Error, ValueError):
    """A value could not be encoded."""


class BusyError(Error):
    """A payload stayed busy (being swept) after several attempts; retry."""


class BadArchiveError(Error, ValueError):
    """An archive being imported is truncated, damaged or unsafe; nothing was imported."""


class ArchiveMissingBlobError(BadArchiveError):
    """An archive entry needs a payload the archive lacks; nothing was imported."""


class NewerArchiveError(Error):
    """The archive was written by a newer blobcache."""


class SweepRunningError(Error):
    """Another GC sweep is running (pass ``wait=True`` to wait for it)."""
