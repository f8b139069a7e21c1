//! The one error type of the crate.
//!
//! Every message says what happened, to which path or key, and what to do
//! about it. Nothing in this crate panics on bad input: damaged files,
//! foreign files, full disks and busy caches all arrive here.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in blobcache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend name is empty.
    #[error("invalid key: the backend name is empty; pass a name such as \"tmdb\"")]
    EmptyBackend,

    /// The backend name contains a NUL byte.
    #[error("invalid key: backend {backend:?} contains a NUL byte")]
    NulInBackend {
        /// The offending backend name (lossy UTF-8).
        backend: String,
    },

    /// The backend or the signature is longer than the format allows.
    #[error("invalid key: the {part} is {len} bytes long, the limit is {max} bytes")]
    KeyTooLong {
        /// `"backend"` or `"signature"`.
        part: &'static str,
        /// Length that was given.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },

    /// Another process holds the cache and this store was opened in
    /// exclusive mode.
    #[error(
        "cache {} is in use by another process; close it, wait for it to finish, \
         or open the store in shared mode",
        path.display()
    )]
    Locked {
        /// The cache directory.
        path: PathBuf,
    },

    /// The cache was written by a newer version of blobcache.
    #[error(
        "cache {} has format version {found}, newer than the {supported} this blobcache \
         understands; upgrade blobcache or use another cache directory",
        path.display()
    )]
    NewerFormat {
        /// The cache directory.
        path: PathBuf,
        /// Version found in the `VERSION` file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },

    /// The directory is not a blobcache directory, or its `VERSION` file
    /// cannot be understood.
    #[error("{} is not a usable blobcache directory: {reason}", path.display())]
    NotACache {
        /// The directory (or file) that was rejected.
        path: PathBuf,
        /// Why it was rejected and what to do.
        reason: String,
    },

    /// A path inside the cache is a symbolic link; blobcache never follows
    /// links planted in its directory.
    #[error(
        "refusing to use {}: it is a symbolic link inside the cache directory; \
         remove it and retry",
        path.display()
    )]
    Symlink {
        /// The offending path.
        path: PathBuf,
    },

    /// A filesystem operation failed.
    #[error("could not {op} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// What was being done (`"create"`, `"write"`, `"rename"`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Reading from a caller-supplied reader (a streamed payload) failed.
    #[error("reading the payload for {key} failed: {source}")]
    Source {
        /// The key being written, as `backend/signature`.
        key: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The index database reported an error.
    #[error("index database at {} failed: {message}", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// What sled said.
        message: String,
    },

    /// The record stored for one key cannot be decoded. Other keys are not
    /// affected; deleting the key clears the problem.
    #[error(
        "the index record for {key} cannot be decoded ({reason}); \
         delete the key or run `blobcache verify --repair`"
    )]
    CorruptRecord {
        /// The key, as `backend/signature`.
        key: String,
        /// What the decoder said.
        reason: String,
    },

    /// A payload or one of its headers contained a configured secret.
    #[error(
        "refusing to store {key}: its {place} contains a configured secret; \
         strip credentials from the response before caching it"
    )]
    SecretInPayload {
        /// The key, as `backend/signature`.
        key: String,
        /// `"payload"` or `"header <name>"`; never the secret itself.
        place: String,
    },

    /// The payload is too large to be returned as one buffer in memory.
    #[error(
        "the payload of {key} is {size} bytes, too large to load into memory; \
         use get_reader to stream it"
    )]
    TooLarge {
        /// The key, as `backend/signature`.
        key: String,
        /// Raw size of the payload.
        size: u64,
    },

    /// An index operation could not complete because the blob it needs is
    /// being deleted by the sweeper, and retrying did not help.
    #[error("blob {hash} stayed busy (being swept) after {attempts} attempts; retry later")]
    Busy {
        /// Hex hash of the blob.
        hash: String,
        /// How many attempts were made.
        attempts: u32,
    },

    /// Another garbage-collection sweep holds `locks/gc.lock`.
    #[error(
        "a GC sweep is already running on cache {} (locks/gc.lock is held); \
         wait for it to finish, or ask to wait (GcOptions::wait / --wait)",
        path.display()
    )]
    SweepRunning {
        /// The cache directory.
        path: PathBuf,
    },
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull => " (the disk is full: free space or lower the cache size cap)",
        io::ErrorKind::QuotaExceeded => " (disk quota exceeded: free space or raise the quota)",
        io::ErrorKind::PermissionDenied => {
            " (permission denied: check the owner and mode of the cache directory)"
        }
        io::ErrorKind::ReadOnlyFilesystem => " (the filesystem is read-only)",
        io::ErrorKind::FileTooLarge => " (the file size limit was reached)",
        _ => "",
    }
}

impl Error {
    /// Builds an [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Index`] from a sled error.
    pub(crate) fn index(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Index {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

/// Extension to attach an operation and a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] with `op` and `path`.
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
