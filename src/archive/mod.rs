//! Export and import of a whole cache as one archive, for CI systems that
//! save one file between runs and merge the caches of parallel jobs.
//!
//! An archive is a plain tar stream (`tar tf` lists it):
//!
//! 1. `blobcache-manifest.cbor`: the sealed manifest (see `seal.rs`): the
//!    manifest proper, a CBOR map holding the archive format version
//!    ([`ARCHIVE_FORMAT_VERSION`]), the creation time, the entry count,
//!    the table of blobs (hash, codec, sizes) and every entry's key and
//!    record (TTLs as absolute expiry times); with a blake3 checksum over
//!    it, and, when exported with a [`SignKey`], a keyed-blake3 MAC;
//! 2. `blobs/ab/cdef…`: each blob the entries need, once, as its stored
//!    bytes (a zstd frame or raw bytes, exactly as the cache keeps them,
//!    inline blobs included), copied without recompression.
//!
//! Import checks the checksum (and, given a key, the MAC) before it reads
//! anything else; format 1 archives, which have no checksum, still import
//! without a key, reported as [`ArchiveIntegrity::Unchecked`]. It then
//! streams the archive: each blob member must be listed, once, with the
//! listed size; it is copied to a staging file while it is decoded and its
//! blake3 checked against its name, and only then linked into place (blobs
//! already present are skipped). Records are applied only after the whole
//! archive has been read and every listed blob was there, so a truncated,
//! damaged, unsafe, forged or newer-format archive imports nothing
//! visible; the blob files it had linked in and no entry references are
//! removed again before the error is returned (with the sweeper's claim,
//! see `gc.rs`; left to GC while a sweep runs).
//! Records are applied in batches of [`crate::index::Op::Import`], each one
//! journal frame: a crash during that last phase leaves whole batches
//! applied, and importing the same archive again completes it.

mod export;
mod import;
mod seal;

pub use crate::policy::MergePolicy;
pub use seal::{ArchiveIntegrity, SignKey};

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::blobs::BlobHash;
use crate::error::Result;
use crate::index::{Op, Outcome};
use crate::record::{Codec, Record};
use crate::store::Store;

/// Version of the archive format written by this build; archives of a
/// newer version are refused with [`crate::Error::NewerArchive`].
/// Version 2 added the checksum and the optional signature; version 1
/// archives still import (unchecked, and only without a key).
pub const ARCHIVE_FORMAT_VERSION: u32 = 2;
/// The first version with a sealed (checksummed) manifest.
const SEALED_FORMAT: u32 = 2;

/// Name of the manifest member, always the first one.
const MANIFEST_NAME: &str = "blobcache-manifest.cbor";
/// Largest manifest accepted: bounds what a damaged size field can make
/// import allocate (about two million entries).
const MAX_MANIFEST: u64 = 1 << 30;
/// Page size of index scans.
const PAGE: usize = 1000;

/// How far an export or import has got; passed to the progress callback
/// after the manifest and after each blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Blob members handled so far.
    pub blobs_done: u64,
    /// Blob members in the archive.
    pub blobs_total: u64,
    /// Stored blob bytes handled so far.
    pub bytes_done: u64,
    /// Stored blob bytes in the archive.
    pub bytes_total: u64,
}

/// A progress callback (see [`ExportOptions::progress`]).
type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

fn debug_progress(p: &Option<ProgressFn>) -> &'static str {
    if p.is_some() {
        "Some(<callback>)"
    } else {
        "None"
    }
}

fn debug_key(k: &Option<SignKey>) -> &'static str {
    if k.is_some() {
        "Some(<redacted>)"
    } else {
        "None"
    }
}

/// Which entries [`Store::export`] writes.
///
/// ```
/// use blobcache::ExportOptions;
/// use std::time::{Duration, SystemTime};
///
/// // What a CI job keeps: the tmdb and anilist entries it used.
/// let job_start = SystemTime::now() - Duration::from_secs(600);
/// let opts = ExportOptions::default()
///     .backend("tmdb")
///     .backend("anilist")
///     .live_only(true)
///     .accessed_since(job_start);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
pub struct ExportOptions {
    pub(crate) backends: Vec<String>,
    pub(crate) live_only: bool,
    pub(crate) since: Option<Duration>,
    pub(crate) accessed_since: Option<SystemTime>,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) sign_key: Option<SignKey>,
}

impl fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportOptions")
            .field("backends", &self.backends)
            .field("live_only", &self.live_only)
            .field("since", &self.since)
            .field("accessed_since", &self.accessed_since)
            .field("progress", &debug_progress(&self.progress))
            .field("sign_key", &debug_key(&self.sign_key))
            .finish()
    }
}

impl ExportOptions {
    /// Exports only entries of this backend (repeat for several; none
    /// given: every backend).
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backends.push(name.into());
        self
    }

    /// Leaves out expired entries.
    pub fn live_only(mut self, yes: bool) -> Self {
        self.live_only = yes;
        self
    }

    /// Exports only entries written within `age` of now.
    pub fn since(mut self, age: Duration) -> Self {
        self.since = Some(age);
        self
    }

    /// Exports only entries read or written at or after `t` (for CI: the
    /// job's start, so the saved cache does not grow with every run).
    /// Pending access statistics are flushed first.
    pub fn accessed_since(mut self, t: SystemTime) -> Self {
        self.accessed_since = Some(t);
        self
    }

    /// Calls `f` after the manifest and after each blob is written.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Signs the archive with `key`: a keyed-blake3 MAC over the manifest,
    /// which lists every blob's hash. An import given the same key accepts
    /// only archives signed with it (default: unsigned, checksum only).
    pub fn sign_key(mut self, key: SignKey) -> Self {
        self.sign_key = Some(key);
        self
    }
}

/// How [`Store::import`] merges an archive.
///
/// TTLs travel as absolute expiry times: an entry that had one hour left
/// when the archive was made and is imported two hours later arrives
/// expired (readable with `get_stale` until GC). With
/// [`ImportOptions::ttl_shift`], every expiry moves forward by the time
/// between the export and the import, so entries keep the lifetime they
/// had left at export.
///
/// ```
/// use blobcache::{ImportOptions, MergePolicy};
///
/// let opts = ImportOptions::default().merge(MergePolicy::Keep).ttl_shift(true);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
pub struct ImportOptions {
    pub(crate) merge: MergePolicy,
    pub(crate) ttl_shift: bool,
    pub(crate) skip_damaged: bool,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) sign_key: Option<SignKey>,
}

impl fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportOptions")
            .field("merge", &self.merge)
            .field("ttl_shift", &self.ttl_shift)
            .field("skip_damaged", &self.skip_damaged)
            .field("progress", &debug_progress(&self.progress))
            .field("sign_key", &debug_key(&self.sign_key))
            .finish()
    }
}

impl ImportOptions {
    /// What to do with keys the cache already holds (default
    /// [`MergePolicy::Newer`]).
    pub fn merge(mut self, policy: MergePolicy) -> Self {
        self.merge = policy;
        self
    }

    /// Moves every expiry forward by the time elapsed since the export, so
    /// entries keep their remaining lifetime (default: expiry times are
    /// kept as they are).
    pub fn ttl_shift(mut self, yes: bool) -> Self {
        self.ttl_shift = yes;
        self
    }

    /// Imports what is intact when some blobs fail verification: their
    /// entries are counted as rejected instead of failing the whole import
    /// (default: a damaged blob fails the import and nothing is applied).
    /// Truncated or unsafe archives are refused either way.
    pub fn skip_damaged(mut self, yes: bool) -> Self {
        self.skip_damaged = yes;
        self
    }

    /// Calls `f` after the manifest and after each blob member is read.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Accepts only archives signed with `key`: an unsigned archive fails
    /// with [`crate::Error::UnsignedArchive`], one edited after signing or
    /// signed with another key with [`crate::Error::ForgedArchive`], before
    /// anything is imported. Without a key, a signed archive imports after
    /// its checksum is checked, reported as
    /// [`ArchiveIntegrity::SignatureNotChecked`].
    pub fn sign_key(mut self, key: SignKey) -> Self {
        self.sign_key = Some(key);
        self
    }
}

/// What [`Store::export`] wrote. Serializes (serde) for
/// `blobcache export --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Entries in the manifest.
    pub entries: u64,
    /// Entries left out because their record or blob is unreadable (the
    /// filters do not count here).
    pub skipped: u64,
    /// Blob members written (each blob once).
    pub blobs: u64,
    /// Stored bytes of those blobs.
    pub blob_bytes: u64,
    /// Bytes of the whole archive.
    pub archive_bytes: u64,
    /// True when the archive was signed ([`ExportOptions::sign_key`]).
    pub signed: bool,
}

/// What [`Store::import`] did. Serializes (serde) for
/// `blobcache import --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Entries the archive holds.
    pub entries: u64,
    /// Entries written into the cache.
    pub imported: u64,
    /// Entries left as they were by the merge policy.
    pub skipped: u64,
    /// Entries not imported because their blob failed verification (only
    /// with [`ImportOptions::skip_damaged`]).
    pub rejected: u64,
    /// Blobs copied into the cache.
    pub blobs_imported: u64,
    /// Their stored bytes.
    pub bytes_imported: u64,
    /// Blobs not copied: already present, or needed by no imported entry.
    pub blobs_skipped: u64,
    /// Their stored bytes.
    pub bytes_skipped: u64,
    /// Blobs that failed verification.
    pub blobs_rejected: u64,
    /// Their stored bytes.
    pub bytes_rejected: u64,
    /// What was checked of the manifest: checksum, signature.
    pub integrity: ArchiveIntegrity,
}

/// The manifest proper (in format 1, the first member itself; from
/// format 2 on, sealed in it).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// When the archive was made (ms since epoch).
    created_at: u64,
    entries: u64,
    blobs: Vec<ManifestBlob>,
    records: Vec<ManifestEntry>,
}

/// Only the version, read before the rest so that a newer manifest is
/// refused as such even when its other fields changed shape.
#[derive(Deserialize)]
struct ManifestHead {
    format: u32,
}

/// One blob of the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestBlob {
    hash: BlobHash,
    codec: Codec,
    raw_size: u64,
    stored_size: u64,
    /// Kept inline by the exporting cache (informational).
    inline: bool,
}

/// One entry of the archive.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManifestEntry {
    key: ByteBuf,
    record: Record,
}

/// `blobs/ab/cdef…`, the member name of a blob.
fn member_name(hash: &BlobHash) -> String {
    let hex = hash.to_hex();
    format!("blobs/{}/{}", &hex[..2], &hex[2..])
}

/// The hash a member name stands for, if it is a blob name.
fn member_hash(name: &str) -> Option<BlobHash> {
    let rest = name.strip_prefix("blobs/")?;
    let (dir, file) = rest.split_once('/')?;
    if dir.len() != 2 || file.len() != 62 {
        return None;
    }
    let hex = format!("{dir}{file}");
    let hash = BlobHash::from_hex(&hex)?;
    (hash.to_hex() == hex).then_some(hash)
}

fn report_progress(cb: &Option<ProgressFn>, p: &Progress) {
    if let Some(f) = cb {
        f(p);
    }
}

impl Store {
    /// Removes every unpinned entry neither read nor written since `t`;
    /// returns how many went. The library side of
    /// `blobcache gc --unused-since TIME`: a CI job that exported with
    /// [`ExportOptions::accessed_since`] drops the rest locally too.
    /// Pending access statistics are flushed first; blob files of removed
    /// entries are reclaimed by GC.
    ///
    /// ```
    /// use blobcache::{PutOptions, Store, StoreOptions};
    /// use std::time::{Duration, SystemTime};
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// store.put("tmdb", "movie/603", b"{}", &PutOptions::new())?;
    /// let later = SystemTime::now() + Duration::from_secs(60);
    /// assert_eq!(store.remove_unused_since(later)?, 1);
    /// # Ok::<(), blobcache::Error>(())
    /// ```
    pub fn remove_unused_since(&self, t: SystemTime) -> Result<u64> {
        self.v1_only("removing unused entries (access times are not tracked yet)")?;
        self.flush()?;
        let before = crate::clock::system_time_ms(t);
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.index().scan(&[], after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(removed);
            };
            after = Some(last.clone());
            let keys: Vec<ByteBuf> = page
                .into_iter()
                .filter(|(_, r)| {
                    r.as_ref().is_ok_and(|r| {
                        crate::record::unused_before(r.pinned, r.last_access, r.created_at, before)
                    })
                })
                .map(|(k, _)| ByteBuf::from(k))
                .collect();
            if keys.is_empty() {
                continue;
            }
            if let Outcome::Count(n) = self.apply(&Op::DropUnused { keys, before })? {
                removed += n;
            }
        }
    }
}

impl crate::store::EntryMeta {
    /// True when [`Store::remove_unused_since`] with `t` would remove this
    /// entry: it is not pinned and was neither read nor written since `t`
    /// (for a preview such as `gc --unused-since --dry-run`).
    pub fn is_unused_since(&self, t: SystemTime) -> bool {
        let before = crate::clock::system_time_ms(t);
        crate::record::unused_before(self.pinned, self.last_access, self.created_at, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_round_trip_and_reject_others() {
        let h = BlobHash::of(b"x");
        assert_eq!(member_hash(&member_name(&h)), Some(h));
        for bad in [
            "blobs/../x",
            "/blobs/ab/cd",
            "blobs/AB/cd",
            "blobs/ab",
            MANIFEST_NAME,
        ] {
            assert_eq!(member_hash(bad), None, "{bad}");
        }
        let upper = member_name(&h).to_uppercase().replace("BLOBS", "blobs");
        assert_eq!(member_hash(&upper), None);
    }
}
