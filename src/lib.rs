//! # blobcache
//!
//! A persistent, content-addressed cache for upstream responses and large
//! snapshots. Payloads are stored once per distinct content (named by the
//! blake3 hash of their bytes), zstd-compressed, small ones inline in a sled
//! index and large ones as files; the index maps `(backend, signature)` to
//! the blob with a TTL and the response's metadata.
//!
//! ```
//! use blobcache::{PutOptions, Store, StoreOptions};
//! use std::time::Duration;
//!
//! # fn main() -> blobcache::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StoreOptions::default())?;
//! store.put("anilist", "anime/1", b"{\"id\":1}", &PutOptions::new().ttl(Duration::from_secs(3600)))?;
//! assert_eq!(store.get("anilist", "anime/1")?.unwrap().data, b"{\"id\":1}");
//! # Ok(())
//! # }
//! ```
//!
//! See `ARCHITECTURE.md` for the layers, the on-disk format and its
//! invariants, and [`Store`] for the API.
//!
//! Features: `redis` (default) adds the shared remote tier; `cli`
//! (default) builds the `blobcache` binary and its dependencies:
//! embedders that want the library alone use `default-features = false`.
//! `async` (off by default) adds `Store::get_or_fetch_async` for tokio.
//! `testkit`, `fuzzing` and `test_hooks` expose helpers for this crate's
//! tests, benches and fuzz targets; they are not a stable API.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod archive;
mod blobs;
mod clock;
/// Storage core v2 (in progress): the engine over packs, blob files and a
/// lean index; not used by [`Store`] yet.
#[doc(hidden)]
pub mod engine;
mod error;
mod fetch;
mod fsutil;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod hash;
mod index;
mod journal;
pub mod key;
mod l1;
mod layout;
mod migrate;
mod mmap;
mod options;
mod outboard;
/// Storage core v2 (in progress): pack files and the lean record; not
/// used by [`Store`] yet.
#[doc(hidden)]
pub mod pack;
mod policy;
mod record;
mod remote;
mod reserve;
mod secrets;
mod share;
mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod typed;
mod verify;

pub use archive::{
    ARCHIVE_FORMAT_VERSION, ArchiveIntegrity, ExportOptions, ExportReport, ImportOptions,
    ImportReport, MergePolicy, Progress, SignKey,
};
pub use blobs::VerifyingReader;
pub use clock::{Clock, ManualClock, SystemClock, system_time_ms};
pub use error::{Error, FetchError, Result};
pub use fetch::{CacheControl, Fetch, FetchStatus, Fetched};
#[cfg(feature = "test_hooks")]
#[doc(hidden)]
pub use gc::hooks as test_hooks;
pub use gc::{GcOptions, GcProgress, GcReport, GcStep};
pub use hash::BlobHash;
pub use key::{Category, TtlPolicy};
pub use layout::FORMAT_VERSION;
pub use options::{
    DEFAULT_INLINE_THRESHOLD, DEFAULT_STALE_IF_ERROR, Durability, MAX_INLINE_THRESHOLD, PutOptions,
    Sharing, StoreOptions,
};
pub use remote::{DEFAULT_REMOTE_PREFIX, RemoteOptions, RemoteState, RemoteStats};
pub use store::{
    BackendStats, Entries, EntryMeta, EntryReader, Hit, PutReport, Selector, Stats, Store,
};
pub use verify::{
    Problem, ProblemKind, VerifyByteProgress, VerifyOptions, VerifyProgress, VerifyReport,
};

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
