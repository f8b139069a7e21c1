//! The engine's sweep: expired entries purged, blob files no entry names
//! removed, then packs compacted — one sweep at a time per cache, under
//! `locks/gc.lock`.
//!
//! Blob files are found live by marking (every record naming a blob file),
//! not by reference counts, so a put writes no count. The race with a put
//! is closed under the writer lock: while a sweep runs, every blob-file
//! put records its hash in the writer's `sweeping` set, and the sweep
//! removes a file only under the writer lock and only when its hash is not
//! in that set; a put that finds its file gone (swept between its link and
//! the lock) links its staged copy again before it inserts the record.
//! Files younger than the safety window are left alone too (a put's
//! staging and linking happen before it takes the lock).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{CompactReport, Engine, LeanRecord, Place};
use crate::blobs::{self, BlobHash, Walked};
use crate::error::{Error, Result};
use crate::fsutil;

/// What [`Engine::sweep`] does.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// An entry is purged once it has been expired this long (it can be
    /// served stale until then).
    pub grace: Duration,
    /// A blob file no entry names is removed only once it is this old.
    pub safety_window: Duration,
    /// Packs whose dead fraction reached this are rewritten (0.0–1.0);
    /// above 1.0 turns compaction off.
    pub min_dead: f64,
    /// Wait for a sweep running elsewhere instead of returning `None`.
    pub wait: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            grace: Duration::ZERO,
            safety_window: Duration::from_secs(3600),
            min_dead: 0.5,
            wait: false,
        }
    }
}

/// What [`Engine::sweep`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepReport {
    /// Expired entries purged.
    pub expired: u64,
    /// Blob files removed (no entry named them).
    pub blob_files_removed: u64,
    /// Disk bytes those files occupied.
    pub blob_bytes_removed: u64,
    /// What compaction did.
    pub compaction: CompactReport,
    /// How long the sweep took.
    pub elapsed: Duration,
}

/// Ends the writer's `sweeping` set however the sweep ends.
struct Marking<'a>(&'a Engine);

impl Drop for Marking<'_> {
    fn drop(&mut self) {
        self.0.lock_writer().sweeping = None;
    }
}

impl Engine {
    /// Purges expired entries, removes unnamed blob files and compacts
    /// packs. `Ok(None)` when another sweep holds `locks/gc.lock` and
    /// `opts.wait` is false.
    pub fn sweep(&self, opts: &SweepOptions) -> Result<Option<SweepReport>> {
        let started = Instant::now();
        let Some(_lock) = self.sweep_lock(opts.wait)? else {
            return Ok(None);
        };
        let mut report = SweepReport {
            expired: self.purge_expired_past(opts.grace)?,
            ..SweepReport::default()
        };
        self.sweep_blob_files(opts.safety_window, &mut report)?;
        if opts.min_dead <= 1.0 {
            report.compaction = self.compact(opts.min_dead)?;
        }
        report.elapsed = started.elapsed();
        Ok(Some(report))
    }

    /// Takes `locks/gc.lock`: `None` when it is held and `wait` is false.
    fn sweep_lock(&self, wait: bool) -> Result<Option<File>> {
        let locks = self.root.join("locks");
        fsutil::ensure_private_dir(&locks)?;
        let path = locks.join("gc.lock");
        let f = fsutil::open_in(&self.root, &path, fsutil::OpenHow::ReadWrite)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        if wait {
            f.lock().map_err(|e| Error::io("lock", &path, e))?;
            return Ok(Some(f));
        }
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }

    /// Removes every expired entry now (no grace, no lock: entries only,
    /// their bytes wait for a sweep); returns how many.
    pub fn purge_expired(&self) -> Result<u64> {
        self.purge_expired_past(Duration::ZERO)
    }

    /// Removes every entry expired at least `grace` ago; returns how many.
    fn purge_expired_past(&self, grace: Duration) -> Result<u64> {
        let now = self.opts.clock.now_ms();
        let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut purged = 0;
        for kv in self.records.iter() {
            let (key, raw) = kv.map_err(|e| self.index_err(e))?;
            let Ok(r) = LeanRecord::decode(&raw) else {
                continue;
            };
            if r.expires_at.saturating_add(grace) > now {
                continue;
            }
            purged += u64::from(self.delete_if_unchanged(&key, &raw)?);
        }
        Ok(purged)
    }

    /// Logs and applies a DELETE of `key` if it still holds `raw` (a put
    /// racing the sweep wins); true when it was removed.
    pub(super) fn delete_if_unchanged(&self, key: &[u8], raw: &sled::IVec) -> Result<bool> {
        let mut w = self.lock_writer();
        let now = self.records.get(key).map_err(|e| self.index_err(e))?;
        if now.as_ref() != Some(raw) {
            return Ok(false);
        }
        let intent = super::Intent::Delete;
        let loc = self.log(&mut w, key, &intent, b"")?;
        self.apply(key, &intent)?;
        self.advance_mark(&mut w, loc)?;
        Ok(true)
    }

    /// Marks the blob files the index names, then removes the others
    /// older than `window` (see the module doc for the race with puts).
    fn sweep_blob_files(&self, window: Duration, report: &mut SweepReport) -> Result<()> {
        self.lock_writer().sweeping = Some(HashSet::new());
        let _marking = Marking(self);
        let named = self.named_blob_files()?;
        for (path, hash) in self.blob_files()? {
            if named.contains(&hash) || !older_than(&path, window) {
                continue;
            }
            let w = self.lock_writer();
            if w.sweeping.as_ref().is_some_and(|s| s.contains(&hash)) {
                continue;
            }
            let bytes = self.blobs.remove(&hash)?;
            drop(w);
            report.blob_files_removed += 1;
            report.blob_bytes_removed += bytes;
        }
        Ok(())
    }

    /// The hashes of the blob files the index names.
    pub(super) fn named_blob_files(&self) -> Result<HashSet<BlobHash>> {
        let mut named = HashSet::new();
        for kv in self.records.iter() {
            let (_, raw) = kv.map_err(|e| self.index_err(e))?;
            let Ok(r) = LeanRecord::decode(&raw) else {
                continue;
            };
            if matches!(r.place, Place::BlobFile { .. }) {
                named.insert(r.hash);
            }
        }
        Ok(named)
    }

    /// The blob files under `blobs/` (outboards and foreign files left
    /// out: an outboard goes with its blob, foreign files are not ours).
    fn blob_files(&self) -> Result<Vec<(PathBuf, BlobHash)>> {
        let walked = blobs::walk(&self.root.join("blobs"))?;
        Ok(walked
            .into_iter()
            .filter_map(|(path, what)| match what {
                Walked::Blob(h) => Some((path, h)),
                Walked::Outboard(_) | Walked::Foreign => None,
            })
            .collect())
    }
}

/// True when the file at `path` was last modified at least `window` ago
/// (false when that cannot be told: the file is kept).
fn older_than(path: &std::path::Path, window: Duration) -> bool {
    let Ok(modified) = std::fs::symlink_metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age >= window)
}
