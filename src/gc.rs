//! Garbage collection: the sweeper.
//!
//! A sweep ([`Store::gc`]) runs only under `locks/gc.lock`, so two sweeps
//! never overlap, and does its work in small batches (one short index
//! operation each), so gets and puts are never held up for long:
//!
//! 1. **expire**: entries expired for longer than the grace period go
//!    (until then `get_stale` still serves them);
//! 2. **orphans**: file blobs no entry references any more (after `rm`,
//!    `clear`, expiry or eviction) are deleted at once; blob files the index
//!    does not know at all go once they are older than the safety window;
//! 3. **staging**: abandoned files in `tmp/` older than the window go;
//! 4. **evict**: while the cache occupies more than its size cap, the least
//!    recently used unpinned entries with a blob file go, their blobs with
//!    them; when evicting every such entry could not get under the cap
//!    (the index, inline payloads and pinned entries take more), nothing is
//!    evicted and the report says the cache is still over its cap;
//! 5. **recompress**: old zstd blobs are rewritten at a higher level
//!    (same bytes, same hash, atomically replaced).
//!
//! Deleting a blob file races with puts of the same content, which may have
//! found the file in place and be about to reference it. The index settles
//! the race: the sweeper first claims the blob (`Deleting`, only while no
//! entry references it), then removes the file, then marks it `Gone`. The
//! claim and a put's reference are both index operations, so one of them
//! comes first whatever the file's age: a known, unreferenced blob can be
//! claimed at once. A put
//! that meets `Deleting` waits; one that meets `Gone` writes the file again
//! before its record goes in. A blob file the index does not know yet may
//! belong to a put whose record is not in yet: only its age (older than the
//! safety window) makes it an orphan. A sweeper killed between claim and
//! removal leaves a `Deleting` claim: the next sweep, or a put that needs
//! the blob and finds no sweeper holding `gc.lock`, releases it.
//!
//! A dry run walks the same steps and keeps a shadow of what it would have
//! removed (entries, and references to each blob), so that later steps see
//! the cache as the real sweep would: its figures are the real sweep's.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::blobs::{self, BlobHash, Walked};
use crate::clock::add_ms;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::{Op, Outcome, RecordRow};
use crate::record::{BlobInfo, BlobState, Codec, Record};
use crate::store::{Store, WeakStore};

/// Name of the sweeper's lock file in `locks/`.
const GC_LOCK: &str = "gc.lock";
/// Entries read per page when ranking entries for eviction.
const PAGE: usize = 1000;
/// Largest GC batch: one batch of deletes (keys up to 4 KiB each) stays far
/// below the journal's frame limit.
const MAX_BATCH: usize = 10_000;
/// Pause after a background sweep that could not get under the cap, so a
/// cache full of pinned entries is not swept after every put.
const COOLDOWN: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(24 * 3600);

type ProgressFn = Arc<dyn Fn(&GcProgress) + Send + Sync>;
type CancelFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// Options for [`Store::gc`], built with setters.
///
/// ```
/// use blobcache::GcOptions;
/// use std::time::Duration;
///
/// let opts = GcOptions::new()
///     .grace(Duration::from_secs(3 * 24 * 3600))
///     .max_size(2 << 30)
///     .recompress_level(19)
///     .recompress_older_than(Duration::from_secs(14 * 24 * 3600))
///     .wait(true);
/// # let _ = opts;
/// ```
#[derive(Clone)]
pub struct GcOptions {
    pub(crate) grace: Duration,
    pub(crate) safety_window: Duration,
    pub(crate) max_size: Option<u64>,
    pub(crate) recompress_level: Option<i32>,
    pub(crate) recompress_older_than: Duration,
    pub(crate) dry_run: bool,
    pub(crate) wait: bool,
    pub(crate) batch_size: usize,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) cancel: Option<CancelFn>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: 7 * DAY,
            safety_window: Duration::from_secs(600),
            max_size: None,
            recompress_level: None,
            recompress_older_than: 7 * DAY,
            dry_run: false,
            wait: false,
            batch_size: 256,
            progress: None,
            cancel: None,
        }
    }
}

impl fmt::Debug for GcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcOptions")
            .field("grace", &self.grace)
            .field("safety_window", &self.safety_window)
            .field("max_size", &self.max_size)
            .field("recompress_level", &self.recompress_level)
            .field("recompress_older_than", &self.recompress_older_than)
            .field("dry_run", &self.dry_run)
            .field("wait", &self.wait)
            .field("batch_size", &self.batch_size)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl GcOptions {
    /// Defaults: 7-day grace, 10-minute safety window, the store's size cap,
    /// no recompression, fail when another sweep runs, batches of 256.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long an expired entry is kept (served by `get_stale`) before the
    /// sweep removes it (default 7 days).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Unreferenced blob files and staging files younger than this are left
    /// alone (default 10 minutes): a put may have just written the file and
    /// not yet inserted its record. Zero is for a sweep no put runs beside
    /// (a test, a maintenance window): a put in flight may then see its
    /// fresh file swept and fail.
    pub fn safety_window(mut self, window: Duration) -> Self {
        self.safety_window = window;
        self
    }

    /// Evict least recently used unpinned entries until the cache occupies
    /// at most this many bytes on disk (default: the store's
    /// [`crate::StoreOptions::max_size`], if any).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Rewrite zstd blobs older than [`GcOptions::recompress_older_than`]
    /// at this level (clamped to the store's accepted range, at most 19).
    /// Default: no recompression.
    pub fn recompress_level(mut self, level: i32) -> Self {
        self.recompress_level = Some(level.clamp(blobs::MIN_LEVEL, blobs::MAX_LEVEL));
        self
    }

    /// Only blobs stored at least this long ago are recompressed (default
    /// 7 days).
    pub fn recompress_older_than(mut self, age: Duration) -> Self {
        self.recompress_older_than = age;
        self
    }

    /// Report what a sweep would do without changing anything: the figures
    /// are those the real sweep would report, barring changes made by other
    /// writers in between.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// When another sweep is running: wait for it (true) or fail at once
    /// with [`Error::SweepRunning`] (false, the default).
    pub fn wait(mut self, yes: bool) -> Self {
        self.wait = yes;
        self
    }

    /// Index operations touch at most this many entries or blobs each
    /// (default 256, at most 10,000 so one batch's index change fits
    /// in a journal frame); smaller batches hold writers up for less time.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.clamp(1, MAX_BATCH);
        self
    }

    /// Called after every batch with the step and how far it got (for a
    /// progress bar).
    pub fn progress(mut self, f: impl Fn(&GcProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

/// A step of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcStep {
    /// Removing entries expired past the grace period.
    Expire,
    /// Deleting unreferenced blob files.
    Orphans,
    /// Removing abandoned staging files.
    Staging,
    /// Evicting entries to honour the size cap.
    Evict,
    /// Rewriting old blobs at a higher level.
    Recompress,
}

/// Where a sweep stands, passed to the [`GcOptions::progress`] callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcProgress {
    /// The current step.
    pub step: GcStep,
    /// Items done in this step (entries, blobs or files).
    pub done: u64,
    /// Items the step expects to do, when known.
    pub total: Option<u64>,
    /// Bytes done and expected, for steps whose items vary in size
    /// (recompression: stored bytes of the blobs rewritten so far and of
    /// all those due).
    pub bytes: Option<(u64, u64)>,
}

/// What a sweep did (or, with [`GcOptions::dry_run`], would do).
/// Serializes to JSON for `blobcache gc --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Nothing was changed; the figures say what would have been done.
    pub dry_run: bool,
    /// Entries removed because they were expired past the grace period.
    pub entries_expired: u64,
    /// Entries evicted to honour the size cap.
    pub entries_evicted: u64,
    /// Blob files deleted.
    pub blobs_deleted: u64,
    /// Bytes of blob files (allocated blocks) and inline blobs freed.
    pub bytes_freed: u64,
    /// Blobs rewritten at a higher compression level.
    pub blobs_recompressed: u64,
    /// Stored bytes of those blobs before the rewrite.
    pub bytes_recompressed: u64,
    /// Stored bytes the rewrite saved.
    pub bytes_saved: u64,
    /// Abandoned staging files removed from `tmp/`.
    pub staging_removed: u64,
    /// Bytes the cache occupied on disk before the sweep.
    pub disk_bytes_before: u64,
    /// Bytes it occupies after (blobs, index and journal).
    pub disk_bytes_after: u64,
    /// The size cap applied, if any.
    pub max_size: Option<u64>,
    /// The cache still occupies more than the cap after the sweep: what is
    /// left (index, inline payloads, pinned entries) cannot be evicted
    /// below it. Entries are evicted only when that gets under the cap.
    pub still_over_cap: bool,
    /// The sweep stopped early because its store was closed.
    pub cancelled: bool,
    /// How long the sweep took.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Store {
    /// Runs one GC sweep (see the module docs): expiry
    /// past the grace period, orphan blobs, staging files, the size cap,
    /// and optional recompression. Only one sweep runs at a time per cache;
    /// another one gets [`Error::SweepRunning`] or waits, per
    /// [`GcOptions::wait`].
    ///
    /// ```
    /// use blobcache::{GcOptions, PutOptions, Store, StoreOptions};
    /// use std::time::Duration;
    ///
    /// # fn main() -> blobcache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// store.put("tmdb", "movie/603", b"{}", &PutOptions::new().ttl(Duration::ZERO))?;
    /// let report = store.gc(&GcOptions::new().grace(Duration::ZERO))?;
    /// assert_eq!(report.entries_expired, 1);
    /// assert!(store.get_stale("tmdb", "movie/603")?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        self.check_write()?;
        if let Some(e) = self.engine() {
            return self.gc_v2(e, opts);
        }
        let _lock = self.take_gc_lock(opts.wait)?;
        let started = Instant::now();
        let mut sweep = Sweep {
            store: self,
            opts,
            cap: opts.max_size.or(self.options().max_size),
            report: GcReport {
                dry_run: opts.dry_run,
                ..GcReport::default()
            },
            shadow: Shadow::default(),
            start: (0, 0),
        };
        sweep.run()?;
        let mut report = sweep.report;
        report.duration = started.elapsed();
        self.sweeper()
            .index_bytes
            .store(self.index_disk_bytes(), Ordering::Relaxed);
        Ok(report)
    }

    /// [`Store::gc`] on a format-2 cache: the engine's sweep (purge past
    /// the grace, unnamed blob files past the safety window, compaction
    /// of packs at least half dead). A size cap, recompression and dry
    /// runs are not available there yet.
    fn gc_v2(&self, e: &crate::engine::Engine, opts: &GcOptions) -> Result<GcReport> {
        let unsupported = [
            (opts.dry_run, "gc --dry-run"),
            (opts.max_size.is_some(), "a size cap (max_size)"),
            (opts.recompress_level.is_some(), "recompression"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
            return self.v1_only(what).map(|()| GcReport::default());
        }
        let started = Instant::now();
        let before = self.disk_usage_v2()?;
        let sweep = crate::engine::SweepOptions {
            grace: opts.grace,
            safety_window: opts.safety_window,
            wait: opts.wait,
            ..Default::default()
        };
        let Some(r) = e.sweep(&sweep)? else {
            return Err(Error::SweepRunning {
                path: self.layout().root.clone(),
            });
        };
        let freed = r.blob_bytes_removed
            + r.compaction
                .bytes_removed
                .saturating_sub(r.compaction.bytes_written);
        Ok(GcReport {
            entries_expired: r.expired,
            blobs_deleted: r.blob_files_removed,
            bytes_freed: freed,
            disk_bytes_before: before,
            disk_bytes_after: self.disk_usage_v2()?,
            duration: started.elapsed(),
            ..GcReport::default()
        })
    }

    /// Bytes a format-2 cache occupies: packs, blob files and index.
    fn disk_usage_v2(&self) -> Result<u64> {
        let s = self.stats()?;
        Ok(s.disk_bytes())
    }

    fn take_gc_lock(&self, wait: bool) -> Result<File> {
        let layout = self.layout();
        if let Some(f) = layout.try_lock(GC_LOCK)? {
            return Ok(f);
        }
        if !wait {
            return Err(Error::SweepRunning {
                path: layout.root.clone(),
            });
        }
        let path = layout.locks.join(GC_LOCK);
        let f = fsutil::open_in(&layout.root, &path, fsutil::OpenHow::ReadWrite)
            .ctx("open lock file", &path)?;
        f.lock().ctx("lock", &path)?;
        Ok(f)
    }

    /// Bytes the index database and its journal occupy (allocated blocks).
    pub(crate) fn index_disk_bytes(&self) -> u64 {
        let layout = self.layout();
        fsutil::tree_disk_bytes(&layout.index) + fsutil::tree_disk_bytes(&layout.journal)
    }

    /// Bytes the cache occupies on disk, as the size cap counts them.
    fn disk_usage(&self) -> Result<u64> {
        Ok(self.index().state()?.blob_bytes + self.index_disk_bytes())
    }

    /// After a put: wakes the background sweeper when the cache is over its
    /// size cap. Cheap: the index size is the one measured at the last sweep.
    pub(crate) fn after_put(&self) {
        let Some(cap) = self.options().max_size else {
            return;
        };
        let Ok(state) = self.index().state() else {
            return;
        };
        let sweeper = self.sweeper();
        if state.blob_bytes + sweeper.index_bytes.load(Ordering::Relaxed) > cap {
            sweeper.wake();
        }
    }

    /// Claims the file blob `hash` for deletion (see the module docs):
    /// true when the claim holds (no entry references it).
    fn claim_blob(&self, hash: &BlobHash, at: u64) -> Result<bool> {
        let claim = Op::ClaimBlob { hash: *hash, at };
        Ok(self.apply(&claim)? == Outcome::Applied(true))
    }

    /// Removes the file of a claimed blob (when `remove`) and marks it
    /// `Gone`; returns the bytes freed. `Gone` only makes writers check the
    /// file again, so it is right even when the file stays.
    fn remove_claimed(&self, hash: &BlobHash, at: u64, remove: bool) -> Result<u64> {
        let removed = if remove {
            self.blob_store().remove(hash)
        } else {
            Ok(0)
        };
        self.apply(&Op::BlobGone { hash: *hash, at })?;
        removed
    }

    /// Takes back the blob files a refused import linked in (`linked`:
    /// each with the mtime it had then): those no entry references are
    /// claimed and removed as the sweeper does, under `locks/gc.lock`. A
    /// file whose mtime changed was reused meanwhile by another writer (a
    /// put or import refreshes it when it finds the file in place) and
    /// stays; so does one a concurrent put has referenced (the claim fails)
    /// or one a put is placing (it waits for the claim, then writes the
    /// file again). Returns how many went, or `None` when a sweep holds the
    /// lock: the files are then left to GC (orphans older than the safety
    /// window).
    pub(crate) fn reclaim_linked(&self, linked: &[(BlobHash, SystemTime)]) -> Result<Option<u64>> {
        let Some(_lock) = self.layout().try_lock(GC_LOCK)? else {
            return Ok(None);
        };
        let mut removed = 0;
        for (hash, mtime) in linked {
            let now = self.options().clock.now_ms();
            if !self.claim_blob(hash, now)? {
                continue;
            }
            let untouched = self
                .blob_store()
                .file_meta(hash)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t == *mtime);
            self.remove_claimed(hash, now, untouched)?;
            removed += u64::from(untouched);
        }
        Ok(Some(removed))
    }

    /// Releases a `Deleting` claim on `hash` left by a sweeper that died
    /// (nobody holds `gc.lock`), so a put waiting for the blob can go on.
    pub(crate) fn release_stale_claim(&self, hash: &BlobHash) {
        let Ok(Some(_lock)) = self.layout().try_lock(GC_LOCK) else {
            return;
        };
        let stale =
            matches!(self.index().blob_info(hash), Ok(Some(i)) if i.state == BlobState::Deleting);
        if !stale {
            return;
        }
        let op = Op::BlobGone {
            hash: *hash,
            at: self.options().clock.now_ms(),
        };
        if let Err(e) = self.apply(&op) {
            log::warn!("could not release the stale claim on blob {hash}: {e}");
        }
    }
}

/// An entry that may be evicted.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    last_access: u64,
    key: Vec<u8>,
    hash: BlobHash,
    stored_size: u64,
}

/// What a dry run would have removed so far, so that its later steps see
/// the cache as the real sweep would. Empty in a real sweep.
#[derive(Debug, Default)]
struct Shadow {
    /// Entries the dry run removed.
    keys: HashSet<Vec<u8>>,
    /// References to each blob the dry run dropped.
    dropped: HashMap<BlobHash, u64>,
    /// Blobs the dry run deleted.
    freed: HashSet<BlobHash>,
    /// What the index's `blob_bytes` would have lost.
    blob_bytes: u64,
}

/// One sweep in progress.
struct Sweep<'a> {
    store: &'a Store,
    opts: &'a GcOptions,
    cap: Option<u64>,
    report: GcReport,
    shadow: Shadow,
    /// The index's `blob_bytes` and the index's own size when the sweep
    /// began: eviction decides on these less what the sweep freed, so a
    /// dry run decides as the real sweep does (the journal growing with
    /// the sweep's own changes is not something eviction can free).
    start: (u64, u64),
}

impl Sweep<'_> {
    fn run(&mut self) -> Result<()> {
        self.report.max_size = self.cap;
        self.start = (
            self.store.index().state()?.blob_bytes,
            self.store.index_disk_bytes(),
        );
        self.report.disk_bytes_before = self.start.0 + self.start.1;
        self.expire()?;
        self.orphans()?;
        self.staging()?;
        self.evict()?;
        self.recompress()?;
        let usage = self.usage()?;
        self.report.still_over_cap = self.cap.is_some_and(|c| usage > c);
        self.report.disk_bytes_after = match self.dry() {
            true => usage,
            false => self.store.disk_usage()?,
        };
        Ok(())
    }

    /// Disk usage as eviction counts it: the blob bytes left (in a dry
    /// run, what would be left had it done what it reported so far) plus
    /// the index's size when the sweep began.
    fn usage(&self) -> Result<u64> {
        let (blob_bytes, index_bytes) = self.start;
        let left = match self.dry() {
            true => blob_bytes.saturating_sub(self.shadow.blob_bytes),
            false => self.store.index().state()?.blob_bytes,
        };
        Ok(left + index_bytes)
    }

    fn now(&self) -> u64 {
        self.store.options().clock.now_ms()
    }

    fn batch(&self) -> usize {
        self.opts.batch_size.max(1)
    }

    fn dry(&self) -> bool {
        self.opts.dry_run
    }

    /// True when the sweep must stop (its store is being closed).
    fn stopped(&mut self) -> bool {
        let stop = self.opts.cancel.as_ref().is_some_and(|f| f());
        self.report.cancelled |= stop;
        stop
    }

    fn progress(&self, step: GcStep, done: u64, total: Option<u64>) {
        self.progress_bytes(step, done, total, None);
    }

    fn progress_bytes(
        &self,
        step: GcStep,
        done: u64,
        total: Option<u64>,
        bytes: Option<(u64, u64)>,
    ) {
        if let Some(f) = &self.opts.progress {
            f(&GcProgress {
                step,
                done,
                total,
                bytes,
            });
        }
    }

    /// References to `hash` left once the entries the sweep removed are
    /// gone (in a real sweep, the index's count).
    fn refs_left(&self, hash: &BlobHash, info: &BlobInfo) -> u64 {
        let dropped = self.shadow.dropped.get(hash).copied().unwrap_or(0);
        info.refs.saturating_sub(dropped)
    }

    /// Dry run: removes the entry at `key` (whose blob is `hash`) from the
    /// shadow, and counts its inline blob (of `inline_size` bytes) as freed
    /// when that was its last reference.
    fn drop_in_shadow(
        &mut self,
        key: Vec<u8>,
        hash: BlobHash,
        inline_size: Option<u64>,
    ) -> Result<()> {
        if !self.shadow.keys.insert(key) {
            return Ok(());
        }
        let dropped = self.shadow.dropped.entry(hash).or_default();
        *dropped += 1;
        let dropped = *dropped;
        let Some(size) = inline_size else {
            return Ok(());
        };
        if let Some(info) = self.store.index().blob_info(&hash)?
            && info.state == BlobState::Live
            && info.refs == dropped
        {
            self.report.bytes_freed += size;
            self.shadow.blob_bytes += info.disk_bytes;
        }
        Ok(())
    }

    /// The next page of entries after `after` (which it advances), or
    /// `None` at the end.
    fn entry_page(&self, after: &mut Option<Vec<u8>>) -> Result<Option<Vec<RecordRow>>> {
        let page = self.store.index().scan(&[], after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(None);
        };
        *after = Some(last.clone());
        Ok(Some(page))
    }

    fn expire(&mut self) -> Result<()> {
        let before = self.now().saturating_sub(ms(self.opts.grace));
        if self.dry() {
            return self.expire_in_shadow(before);
        }
        let index = self.store.index();
        let total = index.count_expired(before)?;
        if total == 0 {
            return Ok(());
        }
        while !self.stopped() {
            let keys = index.expired_keys(before, self.batch())?;
            if keys.is_empty() {
                break;
            }
            let inline = self.inline_blobs_of(keys.iter().map(|k| k.as_slice()))?;
            let keys = keys.into_iter().map(ByteBuf::from).collect();
            let n = match index.apply(&Op::Expire { keys, before })? {
                Outcome::Count(n) => n,
                _ => 0,
            };
            if n == 0 {
                break;
            }
            self.report.entries_expired += n;
            self.count_freed_inline(&inline)?;
            self.progress(GcStep::Expire, self.report.entries_expired, Some(total));
        }
        Ok(())
    }

    /// Dry run of [`Sweep::expire`]: every entry expired at `before` goes
    /// into the shadow.
    fn expire_in_shadow(&mut self, before: u64) -> Result<()> {
        let mut after = None;
        while let Some(page) = self.entry_page(&mut after)? {
            for (key, rec) in page {
                let Ok(rec) = rec else { continue };
                if rec.expires_at <= before {
                    let inline = rec.inline.then_some(rec.stored_size);
                    self.drop_in_shadow(key, rec.hash, inline)?;
                    self.report.entries_expired += 1;
                }
            }
        }
        Ok(())
    }

    /// The inline blobs (hash and size) of the entries at `keys`.
    fn inline_blobs_of<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<HashMap<BlobHash, u64>> {
        let mut out = HashMap::new();
        for k in keys {
            // An undecodable record has nothing to count.
            if let Ok(Some(l)) = self.store.index().lookup(k)
                && l.record.inline
            {
                out.insert(l.record.hash, l.record.stored_size);
            }
        }
        Ok(out)
    }

    /// Counts the inline blobs among `blobs` that the index has freed.
    fn count_freed_inline(&mut self, blobs: &HashMap<BlobHash, u64>) -> Result<()> {
        for (hash, size) in blobs {
            if self.store.index().blob_info(hash)?.is_none() {
                self.report.bytes_freed += size;
            }
        }
        Ok(())
    }

    /// The next page of the index's blob table after `after` (which it
    /// advances), or `None` at the end or once the sweep is stopped.
    fn blob_page(
        &mut self,
        after: &mut Option<BlobHash>,
    ) -> Result<Option<Vec<(BlobHash, BlobInfo)>>> {
        if self.stopped() {
            return Ok(None);
        }
        let page = self
            .store
            .index()
            .scan_blobs(after.as_ref(), self.batch())?;
        let Some((last, _)) = page.last() else {
            return Ok(None);
        };
        *after = Some(*last);
        Ok(Some(page))
    }

    fn orphans(&mut self) -> Result<()> {
        let window = self.opts.safety_window;
        let mut after = None;
        let mut seen = 0;
        while let Some(page) = self.blob_page(&mut after)? {
            seen += page.len() as u64;
            for (hash, info) in page {
                match info.state {
                    // Known and unreferenced: the claim settles any race
                    // with a put, so the file's age does not matter.
                    BlobState::Live if !info.inline && self.refs_left(&hash, &info) == 0 => {
                        self.delete_blob(&hash)?
                    }
                    // Only one sweeper runs, so a claim found now was left
                    // by one that died: finish its work.
                    BlobState::Deleting => self.finish_claim(&hash)?,
                    BlobState::Gone if add_ms(info.since, window) <= self.now() && !self.dry() => {
                        let since = info.since;
                        self.store.apply(&Op::ForgetBlob { hash, since })?;
                    }
                    _ => {}
                }
            }
            self.progress(GcStep::Orphans, seen, None);
        }
        self.unknown_files()
    }

    /// Deletes old blob files the index does not know: left by a put that
    /// died before inserting its record, or by a replaced index. An old
    /// outboard whose blob file is gone goes too (a read stored it as GC
    /// removed the blob).
    fn unknown_files(&mut self) -> Result<()> {
        let root = &self.store.layout().blobs;
        for (i, (path, what)) in blobs::walk(root)?.into_iter().enumerate() {
            if i % self.batch() == 0 && self.stopped() {
                return Ok(());
            }
            match what {
                Walked::Blob(hash) => self.unknown_blob(&hash, &path)?,
                Walked::Outboard(hash) => self.lone_outboard(&hash, &path)?,
                Walked::Foreign => {}
            }
        }
        Ok(())
    }

    /// Deletes the blob file at `path` if the index does not know `hash`
    /// and the file is older than the safety window.
    fn unknown_blob(&mut self, hash: &BlobHash, path: &Path) -> Result<()> {
        if self.store.index().blob_info(hash)?.is_none() && self.file_is_old(path) {
            self.delete_blob(hash)?;
        }
        Ok(())
    }

    /// Removes the outboard at `path` if its blob file is gone and it is
    /// older than the safety window (with its blob, it goes when the blob
    /// goes).
    fn lone_outboard(&mut self, hash: &BlobHash, path: &Path) -> Result<()> {
        let blobs = self.store.blob_store();
        if self.dry() || blobs.has_file(hash) || !self.file_is_old(path) {
            return Ok(());
        }
        blobs.remove_outboard(hash)
    }

    /// True when the file at `path` (if any) was last written or reused by
    /// a put longer ago than the safety window.
    fn file_is_old(&self, path: &Path) -> bool {
        let window = self.opts.safety_window;
        if window.is_zero() {
            return true;
        }
        match fs::symlink_metadata(path) {
            Ok(m) => m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= window),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Deletes an unreferenced file blob: claim, remove the file, mark gone.
    fn delete_blob(&mut self, hash: &BlobHash) -> Result<()> {
        if self.dry() {
            return self.finish_claim(hash);
        }
        if !self.store.claim_blob(hash, self.now())? {
            return Ok(());
        }
        self.finish_claim(hash)
    }

    /// Removes the file of a claimed blob and marks it gone (in a dry run,
    /// counts what that would free).
    fn finish_claim(&mut self, hash: &BlobHash) -> Result<()> {
        if self.dry() {
            if !self.shadow.freed.insert(*hash) {
                return Ok(());
            }
            let known = self.store.index().blob_info(hash)?;
            if let Some(info) = known.filter(|i| i.state == BlobState::Live) {
                self.shadow.blob_bytes += info.disk_bytes;
            }
            let freed = file_bytes(&self.store.blob_store().path_for(hash));
            self.report.blobs_deleted += 1;
            self.report.bytes_freed += freed;
            return Ok(());
        }
        let freed = self.store.remove_claimed(hash, self.now(), true)?;
        self.report.blobs_deleted += 1;
        self.report.bytes_freed += freed;
        Ok(())
    }

    fn staging(&mut self) -> Result<()> {
        if self.dry() {
            return Ok(());
        }
        let removed = self
            .store
            .blob_store()
            .clean_staging(self.opts.safety_window)?;
        self.report.staging_removed = removed as u64;
        self.progress(GcStep::Staging, removed as u64, Some(removed as u64));
        Ok(())
    }

    fn evict(&mut self) -> Result<()> {
        let Some(cap) = self.cap else {
            return Ok(());
        };
        // Access times reach the records in batches: flush them first.
        self.store.index().checkpoint()?;
        let mut usage = self.usage()?;
        if usage <= cap {
            return Ok(());
        }
        let floor = usage.saturating_sub(self.evictable_bytes()?);
        if floor > cap {
            log::warn!(
                "still over cap: the cache takes {usage} bytes and evicting every \
                 unpinned entry with a blob file would leave {floor}, over the cap of \
                 {cap}; nothing was evicted"
            );
            return Ok(());
        }
        while usage > cap && !self.stopped() {
            let need = usage - cap;
            let candidates = self.lru_candidates(need.saturating_add(need / 4))?;
            if candidates.is_empty() {
                break;
            }
            let before = self.report.entries_evicted;
            for chunk in candidates.chunks(self.batch()) {
                if usage <= cap || self.stopped() {
                    break;
                }
                self.evict_chunk(chunk)?;
                usage = self.usage()?;
                self.progress(GcStep::Evict, self.report.entries_evicted, None);
            }
            if self.report.entries_evicted == before {
                break;
            }
        }
        Ok(())
    }

    /// True for an entry eviction may take: unpinned, with a blob file
    /// (evicting an inline payload frees no file), not removed already.
    fn evictable(&self, key: &[u8], rec: &Record) -> bool {
        !rec.pinned && !rec.inline && !self.shadow.keys.contains(key)
    }

    /// Bytes of blob files that evicting every evictable entry would free:
    /// those of blobs no other entry references.
    fn evictable_bytes(&self) -> Result<u64> {
        let mut refs: HashMap<BlobHash, u64> = HashMap::new();
        let mut after = None;
        while let Some(page) = self.entry_page(&mut after)? {
            for (key, rec) in page {
                if let Ok(rec) = rec
                    && self.evictable(&key, &rec)
                {
                    *refs.entry(rec.hash).or_default() += 1;
                }
            }
        }
        let mut bytes = 0;
        for (hash, n) in refs {
            if let Some(info) = self.store.index().blob_info(&hash)?
                && info.state == BlobState::Live
                && self.refs_left(&hash, &info) <= n
            {
                bytes += info.disk_bytes;
            }
        }
        Ok(bytes)
    }

    /// Evicts one batch and frees the blobs it leaves unreferenced (in a
    /// dry run, in the shadow).
    fn evict_chunk(&mut self, chunk: &[Candidate]) -> Result<()> {
        if self.dry() {
            return self.evict_in_shadow(chunk);
        }
        let keys = chunk
            .iter()
            .map(|c| (ByteBuf::from(c.key.clone()), c.last_access))
            .collect();
        if let Outcome::Count(n) = self.store.apply(&Op::Evict { keys })? {
            self.report.entries_evicted += n;
        }
        for c in chunk {
            let info = self.store.index().blob_info(&c.hash)?;
            // Claiming a known, unreferenced blob is safe at any age: a put
            // that races with it retries.
            if info.is_some_and(|i| i.state == BlobState::Live && i.refs == 0) {
                self.delete_blob(&c.hash)?;
            }
        }
        Ok(())
    }

    fn evict_in_shadow(&mut self, chunk: &[Candidate]) -> Result<()> {
        for c in chunk {
            self.drop_in_shadow(c.key.clone(), c.hash, None)?;
            self.report.entries_evicted += 1;
        }
        for c in chunk {
            if let Some(info) = self.store.index().blob_info(&c.hash)?
                && info.state == BlobState::Live
                && self.refs_left(&c.hash, &info) == 0
            {
                self.delete_blob(&c.hash)?;
            }
        }
        Ok(())
    }

    /// The least recently used evictable entries whose stored sizes add up
    /// to at least `need` bytes, oldest first. Memory stays proportional to
    /// what is evicted, not to the size of the cache.
    fn lru_candidates(&self, need: u64) -> Result<Vec<Candidate>> {
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::new();
        let mut sum = 0u64;
        let mut after = None;
        while let Some(page) = self.entry_page(&mut after)? {
            for (key, rec) in page {
                let Ok(rec) = rec else { continue };
                if !self.evictable(&key, &rec) {
                    continue;
                }
                sum += rec.stored_size;
                heap.push(Candidate {
                    last_access: rec.last_access,
                    key,
                    hash: rec.hash,
                    stored_size: rec.stored_size,
                });
                while let Some(top) = heap.peek()
                    && sum - top.stored_size >= need
                {
                    sum -= top.stored_size;
                    heap.pop();
                }
            }
        }
        Ok(heap.into_sorted_vec())
    }

    fn recompress(&mut self) -> Result<()> {
        let Some(level) = self.opts.recompress_level else {
            return Ok(());
        };
        let due = self.recompress_due(level)?;
        let total = (
            due.len() as u64,
            due.iter().map(|(_, i)| i.stored_size).sum(),
        );
        let mut done = (0, 0);
        self.progress_bytes(GcStep::Recompress, 0, Some(total.0), Some((0, total.1)));
        for (hash, info) in due {
            self.recompress_one(hash, &info, level)?;
            done = (done.0 + 1, done.1 + info.stored_size);
            let bytes = Some((done.1, total.1));
            self.progress_bytes(GcStep::Recompress, done.0, Some(total.0), bytes);
            if self.stopped() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The blobs a recompression to `level` would rewrite.
    fn recompress_due(&mut self, level: i32) -> Result<Vec<(BlobHash, BlobInfo)>> {
        let cutoff = self
            .now()
            .saturating_sub(ms(self.opts.recompress_older_than));
        let mut after = None;
        let mut due = Vec::new();
        while let Some(page) = self.blob_page(&mut after)? {
            due.extend(page.into_iter().filter(|(_, info)| {
                info.state == BlobState::Live
                    && !info.inline
                    && info.codec == Codec::Zstd
                    && info.refs > 0
                    && info.since <= cutoff
                    && info.level.is_none_or(|l| l < level)
            }));
        }
        Ok(due)
    }

    fn recompress_one(&mut self, hash: BlobHash, info: &BlobInfo, level: i32) -> Result<()> {
        if self.dry() {
            self.report.blobs_recompressed += 1;
            self.report.bytes_recompressed += info.stored_size;
            return Ok(());
        }
        let store = self.store.blob_store();
        let Some(r) = store.recompress(&hash, info.raw_size, level)? else {
            return Ok(());
        };
        let op = Op::Recompressed {
            hash,
            level,
            old_stored_size: info.stored_size,
            stored_size: r.stored_size,
            disk_bytes: r.disk_bytes,
        };
        self.store.apply(&op)?;
        if r.replaced {
            self.report.blobs_recompressed += 1;
            self.report.bytes_recompressed += info.stored_size;
            self.report.bytes_saved += info.stored_size.saturating_sub(r.stored_size);
        }
        Ok(())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn file_bytes(path: &Path) -> u64 {
    fs::symlink_metadata(path).map_or(0, |m| fsutil::disk_bytes(&m))
}

/// The background sweeper of one store: a thread woken by its interval or
/// by a put that crossed the size cap. It holds the store weakly and stops
/// when the last handle is dropped.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    wake: Mutex<Option<SyncSender<()>>>,
    /// Index and journal bytes at the last sweep (for the cheap cap check).
    index_bytes: AtomicU64,
}

impl Sweeper {
    fn wake(&self) {
        if let Ok(slot) = self.wake.lock()
            && let Some(tx) = slot.as_ref()
        {
            // A full channel means a sweep is already due.
            let _ = tx.try_send(());
        }
    }
}

/// Starts the background sweeper when the store asks for one (an interval
/// or a size cap).
pub(crate) fn start_background(store: &Store) {
    let opts = store.options();
    if opts.gc_interval.is_none() && opts.max_size.is_none() {
        return;
    }
    let sweeper = store.sweeper();
    sweeper
        .index_bytes
        .store(store.index_disk_bytes(), Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel(1);
    if let Ok(mut slot) = sweeper.wake.lock() {
        *slot = Some(tx);
    }
    let weak = store.downgrade();
    let every = opts.gc_interval;
    let spawned = std::thread::Builder::new()
        .name("blobcache-gc".into())
        .spawn(move || sweeper_loop(&weak, &rx, every));
    if let Err(e) = spawned {
        log::warn!("could not start the background sweeper ({e}); run gc explicitly");
    }
}

fn sweeper_loop(weak: &WeakStore, rx: &Receiver<()>, every: Option<Duration>) {
    let idle = every.unwrap_or(365 * DAY);
    let mut due = false;
    loop {
        let woke = match due {
            true => pause(rx, COOLDOWN),
            false => rx.recv_timeout(idle),
        };
        if let Err(RecvTimeoutError::Disconnected) = woke {
            return;
        }
        // Wake-ups so far are served by the sweep that starts now; one that
        // comes while it runs stays queued and asks for another.
        while rx.try_recv().is_ok() {}
        let Some(store) = weak.upgrade() else { return };
        let again = background_sweep(&store, weak);
        drop(store);
        due = again || rx.try_recv().is_ok();
    }
}

/// Waits `span` whatever wakes come meanwhile (sweeps stay paced);
/// `Disconnected` when the store is gone.
fn pause(rx: &Receiver<()>, span: Duration) -> std::result::Result<(), RecvTimeoutError> {
    let deadline = std::time::Instant::now() + span;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match rx.recv_timeout(left) {
            Err(RecvTimeoutError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Runs one background sweep; true when another should follow: the cache
/// is still over its cap (measured afresh, the index included, since sled
/// and the journal grow after a sweep has measured them) and this sweep
/// made progress (one that freed nothing would free nothing next time).
fn background_sweep(store: &Store, weak: &WeakStore) -> bool {
    let mut opts = store.options().gc.clone();
    opts.wait = false;
    let handles = weak.clone();
    // This thread holds one handle while it sweeps; when it is the only
    // one left, the store is being closed.
    opts.cancel = Some(Arc::new(move || handles.handles() <= 1));
    let report = match store.gc(&opts) {
        Ok(r) => r,
        Err(Error::SweepRunning { .. }) => return false,
        Err(e) => {
            log::warn!("background sweep failed: {e}");
            return false;
        }
    };
    log::debug!("background sweep: {report:?}");
    let progressed = report.disk_bytes_after < report.disk_bytes_before;
    let over = report
        .max_size
        .is_some_and(|cap| report.disk_bytes_after > cap);
    progressed && over && !report.cancelled
}

/// Test hooks: let a test stop a put between placing its blob and inserting
/// its record, to drive the put/GC race deterministically. Not part of the
/// supported API: exported as `test_hooks` with the `test_hooks` feature.
#[doc(hidden)]
#[cfg_attr(not(feature = "test_hooks"), allow(dead_code))]
pub mod hooks {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use crate::blobs::BlobHash;

    type Hook = Arc<dyn Fn() + Send + Sync>;

    static ACTIVE: AtomicBool = AtomicBool::new(false);
    static HOOKS: Mutex<Vec<(BlobHash, Hook)>> = Mutex::new(Vec::new());

    /// Removes its hook when dropped.
    #[derive(Debug)]
    pub struct HookGuard(BlobHash);

    impl Drop for HookGuard {
        fn drop(&mut self) {
            if let Ok(mut hooks) = HOOKS.lock() {
                hooks.retain(|(h, _)| *h != self.0);
                ACTIVE.store(!hooks.is_empty(), Ordering::SeqCst);
            }
        }
    }

    /// Calls `f` in every put of the payload named `hash`, after its blob
    /// is in place and before its record is inserted, until the guard is
    /// dropped.
    pub fn on_blob_placed(hash: BlobHash, f: impl Fn() + Send + Sync + 'static) -> HookGuard {
        if let Ok(mut hooks) = HOOKS.lock() {
            hooks.push((hash, Arc::new(f)));
            ACTIVE.store(true, Ordering::SeqCst);
        }
        HookGuard(hash)
    }

    /// The hook point in `Store::commit_put`: one atomic load when no test
    /// hook is set.
    pub(crate) fn blob_placed(hash: &BlobHash) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let hook = HOOKS.lock().ok().and_then(|hooks| {
            hooks
                .iter()
                .find(|(h, _)| h == hash)
                .map(|(_, f)| Arc::clone(f))
        });
        if let Some(f) = hook {
            f();
        }
    }
}
