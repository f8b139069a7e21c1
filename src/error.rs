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

    /// Another process holds the cache without sharing it (it was opened
    /// in exclusive mode, or Unix sockets are unavailable), and it did not
    /// let go within the owner timeout; or this store asked for exclusive
    /// use while another process holds the cache.
    #[error(
        "cache {} is in use by another process that does not share it \
         (waited {}); close that process, wait for it to finish, \
         or open both in shared mode",
        path.display(),
        humantime::format_duration(*waited)
    )]
    Locked {
        /// The cache directory.
        path: PathBuf,
        /// How long this process waited for the lock.
        waited: std::time::Duration,
    },

    /// The process that owns the cache did not answer in time.
    #[error(
        "the process owning cache {} (pid {pid}) did not answer within {}; \
         it may be hung or overloaded: check it, or raise StoreOptions::owner_timeout",
        path.display(),
        humantime::format_duration(*after)
    )]
    OwnerTimeout {
        /// The cache directory.
        path: PathBuf,
        /// The owner's process id (0 when unknown).
        pid: u32,
        /// How long this process waited.
        after: std::time::Duration,
    },

    /// The owner process answered with something this build does not
    /// understand: another blobcache version, or not blobcache at all.
    #[error(
        "cannot share cache {} with its owner process: {detail}; \
         run the same blobcache version in every process that shares a cache",
        path.display()
    )]
    Protocol {
        /// The cache directory.
        path: PathBuf,
        /// What did not match.
        detail: String,
    },

    /// The owner process reported an error while serving this process.
    #[error("the process owning the cache failed to serve a request: {message}")]
    Owner {
        /// The owner's error message.
        message: String,
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
        "refusing to use {}: it is, or lies under, a symbolic link inside the \
         cache directory; remove the link and retry",
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

    /// A destructive operation needs a confirmation that was not given
    /// (on the command line: no `--yes`, and no terminal to ask on).
    #[error(
        "{action} needs confirmation and there is no terminal to ask on; nothing was removed: \
         pass --yes to confirm"
    )]
    NotConfirmed {
        /// What would have been done, e.g. "clearing 12 entries of backend tmdb".
        action: String,
    },

    /// A value given to a typed put could not be serialised.
    #[error(
        "could not encode the value for {key} as {format}: {reason}; \
         check the type's Serialize implementation"
    )]
    Encode {
        /// The key, as `backend/signature`.
        key: String,
        /// `"CBOR"` or `"JSON"`.
        format: &'static str,
        /// What the serialiser said.
        reason: String,
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

    /// An archive being imported is truncated, damaged or unsafe (a member
    /// with a path that could escape, a link, a device, a blob whose content
    /// does not match its name). Nothing from it was applied.
    #[error(
        "cannot import the archive: member {member}: {reason}; nothing from it was imported \
         (export it again, or check how it was copied)"
    )]
    BadArchive {
        /// The member concerned (its name as stored in the archive).
        member: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An archive record needs a blob the archive does not contain.
    #[error(
        "cannot import the archive: the entry {key} needs blob {hash}, which the archive \
         does not contain; nothing from it was imported (export it again)"
    )]
    ArchiveMissingBlob {
        /// The entry, as `backend/signature`.
        key: String,
        /// Hex hash of the missing blob.
        hash: String,
    },

    /// The archive was written by a newer version of blobcache.
    #[error(
        "the archive has format version {found}, newer than the {supported} this blobcache \
         reads; upgrade blobcache to import it"
    )]
    NewerArchive {
        /// Version found in the archive's manifest.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },

    /// A signing key was given for the import, and the archive is not
    /// signed (format 1 archives never are).
    #[error(
        "cannot import the archive: it is not signed (format {format}) and a signing key was \
         given; nothing from it was imported: export it with the same key \
         (ExportOptions::sign_key / --sign-key-file), or import without a key to accept \
         unsigned archives"
    )]
    UnsignedArchive {
        /// The archive's format version.
        format: u32,
    },

    /// The archive's signature does not match the key given: it was edited
    /// after it was signed (say, a poisoned CI cache), or signed with
    /// another key. Nothing from it was imported.
    #[error(
        "cannot import the archive: its signature does not match the signing key given: it \
         was edited after it was signed, or signed with another key; nothing from it was \
         imported: do not use this archive, export it again with the right key"
    )]
    ForgedArchive,

    /// A signing key file cannot be used.
    #[error("cannot use the signing key file {}: {reason}", path.display())]
    BadSignKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never the key itself).
        reason: String,
    },

    /// Writing an exported archive to its destination failed.
    #[error(
        "writing the archive failed: {source}{}; check the destination",
        io_hint(source)
    )]
    ArchiveWrite {
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The disk holding the cache is full. The cache released its space
    /// reserve so that reads, `rm`, `clear` and `gc` keep working; puts are
    /// refused until the reserve can be allocated again.
    #[error(
        "cache {} is on a full disk: puts are refused until space is freed \
         (run `blobcache gc`, `rm` or `clear`, or free space on that disk); reads go on",
        path.display()
    )]
    DiskFull {
        /// The cache directory.
        path: PathBuf,
    },

    /// The cache was opened read-only (its filesystem is mounted read-only
    /// or not writable): reads work, changes are refused.
    #[error(
        "cache {} is read-only ({reason}): gets, ls, stats and verify work, changes do not; \
         remount it read-write or copy it to a writable directory",
        path.display()
    )]
    ReadOnly {
        /// The cache directory.
        path: PathBuf,
        /// Why it is read-only.
        reason: String,
    },

    /// The remote tier (Redis) is misconfigured, refused the credentials,
    /// or failed while its errors are fatal
    /// ([`crate::RemoteOptions::fatal_errors`]).
    #[error("remote cache {url}: {reason}")]
    Remote {
        /// The remote's URL, password masked.
        url: String,
        /// What went wrong and what to do.
        reason: String,
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

    /// The operation is not available on a format-2 cache yet (see
    /// [`crate::StoreOptions::format`]).
    #[error(
        "{} is a format-2 cache (storage core v2): {what} is not available on it yet; \
         use a format-1 cache (the default) for it",
        path.display()
    )]
    NotOnFormat2 {
        /// The cache directory.
        path: PathBuf,
        /// What was asked.
        what: String,
    },
}

/// The error of [`crate::Store::get_or_fetch`]: the caller's own fetch
/// error, unchanged, or a failure of the cache itself.
#[derive(Debug, thiserror::Error)]
pub enum FetchError<E> {
    /// The fetch closure failed and no stale entry within the
    /// stale-if-error grace could be served instead. This is the closure's
    /// error as it returned it.
    #[error("fetching from the upstream failed and nothing cached could be served: {0}")]
    Upstream(E),
    /// The cache failed: an invalid key, an I/O error, or a fetched
    /// response refused by the secret guard.
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> FetchError<E> {
    /// The upstream error, if that is what this is.
    pub fn upstream(self) -> Option<E> {
        match self {
            FetchError::Upstream(e) => Some(e),
            FetchError::Store(_) => None,
        }
    }
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
        self.map_err(|e| {
            // Every open inside the cache refuses links with ELOOP.
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Error::Symlink { path: path.into() };
            }
            Error::io(op, path, e)
        })
    }
}
