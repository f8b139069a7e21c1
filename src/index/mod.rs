//! The sled index: entries, expiry order, blobs (refcounts and inline
//! bytes) and meta (totals, counters).
//!
//! Trees:
//! - `entries`: key bytes → [`Record`] (CBOR)
//! - `expiry`:  `expires_at (u64 BE) ++ key` → empty, for ordered expiry scans
//! - `blobs`:   hash → `len u16 | BlobInfo CBOR | inline bytes` (see `tx.rs`)
//! - `meta`:    `state` → [`State`], `counters` → [`CounterValues`],
//!   `b:<backend>` → [`BackendTotals`]
//!
//! Mutations are serialised by one writer lock; each [`Op`] becomes a set of
//! [`tx::Effects`] that is appended to the journal (one `write(2)`) and then
//! written to sled before the caller is answered. Totals live in memory
//! and reach the `meta` tree at each checkpoint, which also flushes sled
//! and trims the journal. Reads never take the writer lock.

mod copy;
mod repair;
mod tx;

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sled::{IVec, Tree};

pub(crate) use repair::{Snapshot, file_blob_info};
use tx::{Effects, Tx, TxError};
pub use tx::{ImportItem, Op, Outcome};

use crate::blobs::BlobHash;
use crate::error::{Error, Result};
use crate::journal::{self, Journal};
use crate::key;
use crate::record::{BlobInfo, Record, from_cbor, to_cbor};

/// Running totals of the index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last applied op.
    #[serde(rename = "seq")]
    pub seq: u64,
    /// Number of entries.
    #[serde(rename = "e")]
    pub entries: u64,
    /// Sum of the raw sizes of all entries (logical bytes).
    #[serde(rename = "r")]
    pub raw_bytes: u64,
    /// Number of blobs known to the index (live or awaiting GC).
    #[serde(rename = "b")]
    pub blobs: u64,
    /// Bytes the blobs occupy: allocated blocks of blob files plus stored
    /// bytes of inline blobs.
    #[serde(rename = "d")]
    pub blob_bytes: u64,
}

/// Per-backend totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTotals {
    /// Entries of the backend.
    #[serde(rename = "e")]
    pub entries: u64,
    /// Sum of their raw sizes.
    #[serde(rename = "r")]
    pub raw_bytes: u64,
}

/// Persistent event counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterValues {
    /// Live hits served.
    #[serde(rename = "h", default)]
    pub hits: u64,
    /// Misses (absent, expired or unreadable).
    #[serde(rename = "m", default)]
    pub misses: u64,
    /// Expired entries served by `get_stale`.
    #[serde(rename = "s", default)]
    pub stale_hits: u64,
    /// Puts acknowledged.
    #[serde(rename = "p", default)]
    pub puts: u64,
    /// Blobs found missing or corrupt on read (entries healed).
    #[serde(rename = "c", default)]
    pub corrupt: u64,
    /// Times a damaged index was moved aside and started afresh.
    #[serde(rename = "x", default)]
    pub index_resets: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    puts: AtomicU64,
    corrupt: AtomicU64,
    index_resets: AtomicU64,
}

impl Counters {
    fn fields(&self) -> [&AtomicU64; 6] {
        [
            &self.hits,
            &self.misses,
            &self.stale_hits,
            &self.puts,
            &self.corrupt,
            &self.index_resets,
        ]
    }

    fn add(&self, d: &CounterValues) {
        let deltas = [
            d.hits,
            d.misses,
            d.stale_hits,
            d.puts,
            d.corrupt,
            d.index_resets,
        ];
        for (a, v) in self.fields().into_iter().zip(deltas) {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> CounterValues {
        let [hits, misses, stale_hits, puts, corrupt, index_resets] =
            self.fields().map(|a| a.load(Ordering::Relaxed));
        CounterValues {
            hits,
            misses,
            stale_hits,
            puts,
            corrupt,
            index_resets,
        }
    }
}

/// An entry key with its record, or why the record did not decode.
pub(crate) type RecordRow = (Vec<u8>, std::result::Result<Record, String>);

/// A record plus, for inline blobs, the stored bytes: all a read needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// The entry's record.
    pub record: Record,
    /// Stored bytes of an inline blob.
    pub inline: Option<ByteBuf>,
}

/// Pending access statistics for one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Hits since the last flush.
    pub hits: u64,
    /// Latest access time.
    pub last: u64,
}

/// Pending access batches are flushed once they hold this many keys.
const ACCESS_BATCH: usize = 4096;
/// Records updated per writer-lock hold while flushing access statistics.
const ACCESS_SLICE: usize = 128;
const STATE: &[u8] = b"state";
const COUNTERS: &[u8] = b"counters";
const BACKEND_PREFIX: &[u8] = b"b:";

/// Configuration for opening an [`Index`].
#[derive(Debug, Clone)]
pub(crate) struct IndexConfig {
    pub cache_capacity: u64,
    pub flush_interval: Duration,
    pub sync: bool,
}

/// The sled trees of an open database.
pub(crate) struct Trees {
    path: PathBuf,
    db: sled::Db,
    entries: Tree,
    expiry: Tree,
    blobs: Tree,
    meta: Tree,
}

impl Trees {
    fn open(path: &Path, db: sled::Db) -> Result<Trees> {
        let tree = |name: &str| db.open_tree(name).map_err(|e| Error::index(path, e));
        Ok(Trees {
            path: path.to_path_buf(),
            entries: tree("entries")?,
            expiry: tree("expiry")?,
            blobs: tree("blobs")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::index(&self.path, e)
    }

    pub(crate) fn tree(&self, id: u8) -> &Tree {
        match id {
            tx::ENTRIES => &self.entries,
            tx::EXPIRY => &self.expiry,
            _ => &self.blobs,
        }
    }

    /// Writes the effects' keys, in order.
    fn write(&self, effects: &Effects) -> Result<()> {
        for w in &effects.writes {
            let tree = self.tree(w.tree);
            let res = match &w.value {
                Some(v) => tree.insert(w.key.as_slice(), v.as_slice()).map(drop),
                None => tree.remove(w.key.as_slice()).map(drop),
            };
            res.map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

/// Totals kept in memory and persisted at checkpoints.
struct Totals {
    state: State,
    backends: HashMap<Vec<u8>, BackendTotals>,
    /// Backends changed since the last checkpoint.
    dirty: HashSet<Vec<u8>>,
}

impl Totals {
    fn absorb(&mut self, effects: &Effects) {
        self.state = effects.state.clone();
        for (k, v) in &effects.backends {
            self.backends.insert(k.to_vec(), v.clone());
            self.dirty.insert(k.to_vec());
        }
    }
}

/// What the writer lock guards.
struct Writer {
    totals: Totals,
    journal: Journal,
}

/// The open index. Only the owner process holds one.
pub(crate) struct Index {
    t: Trees,
    writer: Mutex<Writer>,
    sync: bool,
    access: Mutex<HashMap<Vec<u8>, Access>>,
    counters: Counters,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    /// Set when this is a read-only copy (see `copy.rs`); dropped last,
    /// after sled is closed.
    copy: Option<copy::Scratch>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.t.path).finish()
    }
}

/// Why opening the sled database failed.
enum OpenFailure {
    /// The database is damaged: move it aside and start afresh.
    Damaged(String),
    /// An environmental error (permissions, I/O): report it.
    Fatal(Error),
}

/// What the index held when it was opened.
struct Loaded {
    trees: Trees,
    state: State,
    backends: HashMap<Vec<u8>, BackendTotals>,
    counters: CounterValues,
}

impl Index {
    /// Opens (or creates) the index in `path`, replays `journal_dir`, and
    /// starts the background flusher. A damaged database is moved aside
    /// and replaced by an empty one: the returned flag says so, and the
    /// caller should then rebuild counts (`verify --repair`).
    pub fn open(path: &Path, journal_dir: &Path, cfg: &IndexConfig) -> Result<(Arc<Index>, bool)> {
        Index::open_in(path, journal_dir, cfg, None)
    }

    /// Opens a private copy of the index of a cache that cannot be written
    /// (`reason` says why): reads work, every [`Op`] is refused with
    /// [`Error::ReadOnly`]. The copy (in the system temp directory) is
    /// removed when the index closes.
    pub fn open_copy(
        cache: &Path,
        path: &Path,
        journal_dir: &Path,
        cfg: &IndexConfig,
        reason: &str,
    ) -> Result<(Arc<Index>, bool)> {
        let scratch = copy::Scratch::copy(cache, path, journal_dir, reason)?;
        let (index, journal) = (scratch.index(), scratch.journal());
        Index::open_in(&index, &journal, cfg, Some(scratch))
    }

    fn open_in(
        path: &Path,
        journal_dir: &Path,
        cfg: &IndexConfig,
        copy: Option<copy::Scratch>,
    ) -> Result<(Arc<Index>, bool)> {
        let (loaded, reset) = match load(path, cfg) {
            Ok(l) => (l, false),
            Err(OpenFailure::Fatal(e)) => return Err(e),
            // What looks damaged on a full disk is a write sled could not
            // finish: moving the index aside would lose it.
            Err(OpenFailure::Damaged(why)) if nearly_full(path) => {
                log::warn!(
                    "index {} did not open on a full disk: {why}",
                    path.display()
                );
                return Err(Error::io(
                    "open index",
                    path,
                    std::io::ErrorKind::StorageFull.into(),
                ));
            }
            Err(OpenFailure::Damaged(why)) => {
                let aside = move_aside(path)?;
                log::error!(
                    "index {} is damaged ({why}); moved it to {} and started an empty index; \
                     blobs it referenced are orphans that GC will reclaim",
                    path.display(),
                    aside.display()
                );
                match load(path, cfg) {
                    Ok(l) => (l, true),
                    Err(OpenFailure::Fatal(e)) => return Err(e),
                    Err(OpenFailure::Damaged(why)) => {
                        return Err(Error::index(
                            path,
                            format!("a fresh index failed to open: {why}"),
                        ));
                    }
                }
            }
        };
        let Loaded {
            trees,
            state,
            backends,
            counters,
        } = loaded;
        let mut totals = Totals {
            state,
            backends,
            dirty: HashSet::new(),
        };
        // After a reset the journal still replays: its frames carry whole
        // values, so the entries acknowledged since the last flush come back
        // (the caller then rebuilds refcounts around them).
        let replay = journal::replay(journal_dir, totals.state.seq, |seq, payload| {
            match from_cbor::<Effects>(payload) {
                Ok(effects) => {
                    trees.write(&effects)?;
                    totals.absorb(&effects);
                }
                Err(e) => log::warn!("journal frame {seq} is not readable ({e}); skipped"),
            }
            Ok(())
        })?;
        if replay.applied > 0 {
            log::info!("replayed {} journaled index operations", replay.applied);
        }
        let journal = Journal::start(journal_dir, totals.state.seq + 1)?;
        let writer = Writer { totals, journal };
        let index = Index {
            t: trees,
            writer: Mutex::new(writer),
            sync: cfg.sync,
            access: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            stop: Mutex::new(None),
            copy,
        };
        index.counters.add(&counters);
        if reset {
            index.counters.index_resets.fetch_add(1, Ordering::Relaxed);
        }
        // Persist what the replay rebuilt and drop the replayed segments.
        index.checkpoint()?;
        crate::fsutil::tighten_tree(path);
        let index = Arc::new(index);
        Index::spawn_flusher(&index, cfg.flush_interval);
        Ok((index, reset))
    }

    fn spawn_flusher(index: &Arc<Index>, every: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        if let Ok(mut stop) = index.stop.lock() {
            *stop = Some(tx);
        }
        let weak: Weak<Index> = Arc::downgrade(index);
        let spawned = std::thread::Builder::new()
            .name("blobcache-flush".into())
            .spawn(move || {
                loop {
                    let woken = match rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) => true,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let Some(index) = weak.upgrade() else { return };
                    // Woken: a batch of access statistics is full.
                    let res = if woken {
                        index.flush_access()
                    } else {
                        index.checkpoint()
                    };
                    if let Err(e) = res {
                        log::warn!("index flush failed: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("could not start the index flusher ({e}); flushing only on close");
        }
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        self.writer
            .lock()
            .map_err(|_| self.t.err("writer lock poisoned by a panic"))
    }

    /// Applies `op`: computes its effects, writes them, and appends them to
    /// the journal (fsynced under synced durability) before returning.
    pub fn apply(&self, op: &Op) -> Result<Outcome> {
        if let Some(copy) = &self.copy {
            return Err(copy.refusal());
        }
        let mut w = self.lock_writer()?;
        let mut tx = Tx::new(&self.t, &w.totals.state, &w.totals.backends);
        let outcome = match tx.apply(op) {
            Ok(o) => o,
            Err(TxError::Unchanged(o) | TxError::Retry(o)) => return Ok(o),
            Err(TxError::Invalid(why)) => return Err(self.t.err(why)),
            Err(TxError::Storage(e)) => return Err(self.t.err(e)),
        };
        let mut effects = tx.into_effects();
        let seq = w.totals.state.seq + 1;
        effects.state.seq = seq;
        // Journal first: a checkpoint may flush sled at any moment (it does
        // not hold the writer lock while it flushes), so any of this op's
        // sled writes that reach the disk must already have their frame in
        // the journal, or a kill -9 right after the flush would leave half
        // an op in the index with nothing to complete it. A failed append
        // changes nothing.
        w.journal.append(seq, &to_cbor(&effects))?;
        // Totals follow the journal even if sled fails here: replay
        // completes the op at the next open.
        let written = self.t.write(&effects);
        w.totals.absorb(&effects);
        written?;
        if self.sync {
            w.journal.sync()?;
        }
        Ok(outcome)
    }

    /// The record at `key` and, for an inline blob, its stored bytes.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Lookup>> {
        let Some(raw) = self.t.entries.get(key).map_err(|e| self.t.err(e))? else {
            return Ok(None);
        };
        let record: Record = from_cbor(&raw).map_err(|reason| Error::CorruptRecord {
            key: key::display(key),
            reason,
        })?;
        let inline = if record.inline {
            self.inline_bytes(&record.hash)?
                .map(|v| ByteBuf::from(v.to_vec()))
        } else {
            None
        };
        Ok(Some(Lookup { record, inline }))
    }

    /// The stored bytes of an inline blob.
    pub fn inline_bytes(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        let Some(v) = self.t.blobs.get(hash.0).map_err(|e| self.t.err(e))? else {
            return Ok(None);
        };
        match tx::decode_blob_value(&v) {
            Ok((info, data)) if info.inline => Ok(Some(data.to_vec())),
            _ => Ok(None),
        }
    }

    /// The index's info on one blob.
    pub fn blob_info(&self, hash: &BlobHash) -> Result<Option<BlobInfo>> {
        let v: Option<IVec> = self.t.blobs.get(hash.0).map_err(|e| self.t.err(e))?;
        Ok(v.and_then(|v| tx::decode_blob_value(&v).ok().map(|(info, _)| info)))
    }

    /// Up to `limit` entries whose key starts with `prefix`, after `after`.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RecordRow>> {
        let mut out = Vec::new();
        let start = match after {
            Some(a) => [a, &[0]].concat(),
            None => prefix.to_vec(),
        };
        for item in self.t.entries.range(start..) {
            let (k, v) = item.map_err(|e| self.t.err(e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), from_cbor::<Record>(&v)));
        }
        Ok(out)
    }

    /// Up to `limit` blobs known to the index, in hash order, after `after`
    /// (bookkeeping only, no inline bytes). Undecodable values are skipped.
    pub fn scan_blobs(
        &self,
        after: Option<&BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, BlobInfo)>> {
        let start = match after {
            Some(h) => [&h.0[..], &[0]].concat(),
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for item in self.t.blobs.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.t.err(e))?;
            let (Ok(hash), Ok((info, _))) =
                (<[u8; 32]>::try_from(&k[..]), tx::decode_blob_value(&v))
            else {
                continue;
            };
            out.push((BlobHash(hash), info));
        }
        Ok(out)
    }

    /// Number of entries whose expiry is at or before `now`.
    pub fn count_expired(&self, now: u64) -> Result<u64> {
        let mut n = 0;
        for item in self.expired_at(now) {
            item.map_err(|e| self.t.err(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Keys of up to `limit` entries expired at or before `before`.
    pub fn expired_keys(&self, before: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.expired_at(before).take(limit) {
            let (k, _) = item.map_err(|e| self.t.err(e))?;
            out.push(k.get(8..).unwrap_or_default().to_vec());
        }
        Ok(out)
    }

    /// The expiry-order rows of entries expired at `now` (expiry at or
    /// before it). At `now == u64::MAX` that is every row: an entry whose
    /// expiry saturated to `u64::MAX` is expired then too, as `get` says.
    /// (Fuzzing found `now + 1` saturating and leaving those rows out.)
    fn expired_at(&self, now: u64) -> sled::Iter {
        match now.checked_add(1) {
            Some(end) => self.t.expiry.range(..end.to_be_bytes().to_vec()),
            None => self.t.expiry.iter(),
        }
    }

    /// Current totals.
    pub fn state(&self) -> Result<State> {
        Ok(self.lock_writer()?.totals.state.clone())
    }

    /// Per-backend totals, sorted by backend name.
    pub fn backends(&self) -> Result<Vec<(String, BackendTotals)>> {
        let w = self.lock_writer()?;
        let mut out: Vec<(String, BackendTotals)> = w
            .totals
            .backends
            .iter()
            .filter(|(_, t)| t.entries > 0)
            .map(|(k, t)| {
                let name = String::from_utf8_lossy(&k[BACKEND_PREFIX.len()..]).into_owned();
                (name, t.clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Counter values, including increments not yet flushed.
    pub fn counters(&self) -> CounterValues {
        self.counters.snapshot()
    }

    /// Adds to the counters (persisted with the next checkpoint).
    pub fn count(&self, delta: &CounterValues) {
        self.counters.add(delta);
    }

    /// Records accesses; they reach the records in batches, written by
    /// the flusher thread, not one sled write per hit and not on the
    /// caller's path (unless the flusher falls far behind).
    pub fn record_access(&self, batch: impl IntoIterator<Item = (Vec<u8>, Access)>) {
        let pending = match self.access.lock() {
            Ok(mut pending) => {
                for (k, a) in batch {
                    let slot = pending.entry(k).or_default();
                    slot.hits += a.hits;
                    slot.last = slot.last.max(a.last);
                }
                pending.len()
            }
            Err(_) => 0,
        };
        if pending == ACCESS_BATCH {
            let woke = self
                .stop
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(|tx| tx.send(()).is_ok()))
                .unwrap_or(false);
            if woke {
                return;
            }
        }
        // No flusher, or it is far behind: bound the memory here.
        if pending >= 4 * ACCESS_BATCH
            && let Err(e) = self.flush_access()
        {
            log::warn!("flushing access statistics failed: {e}");
        }
    }

    /// Writes pending access statistics into the records. Not journaled:
    /// a crash loses at most one flush interval of hit counts.
    fn flush_access(&self) -> Result<()> {
        let pending = match self.access.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        // Under the writer lock, so an op cannot interleave and lose either
        // its record or these counts; in small slices, so writers wait for
        // one slice at most.
        let pending: Vec<_> = pending.into_iter().collect();
        for slice in pending.chunks(ACCESS_SLICE) {
            let _w = self.lock_writer()?;
            for (k, a) in slice {
                self.t
                    .entries
                    .fetch_and_update(k, |old| {
                        let mut rec: Record = from_cbor(old?).ok()?;
                        rec.hits += a.hits;
                        rec.last_access = rec.last_access.max(a.last);
                        Some(to_cbor(&rec))
                    })
                    .map_err(|e| self.t.err(e))?;
            }
        }
        Ok(())
    }

    /// Persists totals, access statistics and counters, flushes sled, and
    /// drops the journal segments it made redundant.
    pub fn checkpoint(&self) -> Result<()> {
        self.flush_access()?;
        let durable = {
            let mut w = self.lock_writer()?;
            let meta = &self.t.meta;
            let err = |e| self.t.err(e);
            let t = &mut w.totals;
            meta.insert(STATE, to_cbor(&t.state)).map_err(err)?;
            for k in std::mem::take(&mut t.dirty) {
                match t.backends.get(&k).filter(|b| b.entries > 0) {
                    Some(t) => meta.insert(&k, to_cbor(t)).map(drop).map_err(err)?,
                    None => meta.remove(&k).map(drop).map_err(err)?,
                }
            }
            meta.insert(COUNTERS, to_cbor(&self.counters.snapshot()))
                .map_err(err)?;
            t.state.seq
        };
        self.t.db.flush().map_err(|e| self.t.err(e))?;
        let mut w = self.lock_writer()?;
        let next = w.totals.state.seq + 1;
        w.journal.checkpoint(durable, next)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock() {
            stop.take();
        }
        if let Err(e) = self.checkpoint() {
            log::warn!("final index flush failed: {e}");
        }
        crate::fsutil::tighten_tree(&self.t.path);
    }
}

fn load(path: &Path, cfg: &IndexConfig) -> std::result::Result<Loaded, OpenFailure> {
    let db = open_db(path, cfg)?;
    let damaged = |e: Error| OpenFailure::Damaged(e.to_string());
    let trees = Trees::open(path, db).map_err(damaged)?;
    let state = match trees.meta.get(STATE) {
        Ok(Some(v)) => {
            from_cbor(&v).map_err(|e| OpenFailure::Damaged(format!("state record: {e}")))?
        }
        Ok(None) => State::default(),
        Err(e) => return Err(OpenFailure::Damaged(e.to_string())),
    };
    let counters = match trees.meta.get(COUNTERS) {
        Ok(Some(v)) => from_cbor(&v).unwrap_or_default(),
        _ => CounterValues::default(),
    };
    let mut backends = HashMap::new();
    for item in trees.meta.scan_prefix(BACKEND_PREFIX) {
        let (k, v) = item.map_err(|e| OpenFailure::Damaged(e.to_string()))?;
        backends.insert(k.to_vec(), from_cbor(&v).unwrap_or_default());
    }
    Ok(Loaded {
        trees,
        state,
        backends,
        counters,
    })
}

fn open_db(path: &Path, cfg: &IndexConfig) -> std::result::Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache_capacity)
        // Our own flusher flushes and then trims the journal; sled's timer
        // would only add fsyncs.
        .flush_every_ms(None);
    // sled panics on some kinds of damage; a cache must not.
    drop_partial_snapshots(path);
    let open = || catch_unwind(AssertUnwindSafe(|| config.open()));
    let mut opened = open();
    // We hold owner.lock, so sled's own file lock can only be held by a
    // database of this process that is still closing: sled's background
    // threads let go of the file a moment after the last handle drops.
    // Found by fuzzing (tests/fuzz_corpus.rs, regression_reopen_right_after_close).
    for _ in 0..SLED_LOCK_RETRIES {
        if !matches!(&opened, Ok(Err(e)) if is_sled_lock_busy(e)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        opened = open();
    }
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) => Err(OpenFailure::Fatal(Error::io("open index", path, e))),
        Ok(Err(e)) => Err(OpenFailure::Damaged(e.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked".into());
            Err(OpenFailure::Damaged(why))
        }
    }
}

/// How many times (5 ms apart) opening sled is retried while a closing
/// database of this process still holds its file lock.
const SLED_LOCK_RETRIES: u32 = 1000;

/// True when sled refused to open because its file lock is taken.
fn is_sled_lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// True when the filesystem holding `path` has less than 1 MiB free.
fn nearly_full(path: &Path) -> bool {
    rustix::fs::statvfs(path).is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) < 1 << 20)
}

/// Removes the `snap.*.generating` files a sled open cut short (a full
/// disk): sled would read such a file as the newest snapshot and report
/// the whole index as corrupt. A finished snapshot is renamed away from
/// that name, so these are never needed; we hold `owner.lock`, so no other
/// sled is writing one.
fn drop_partial_snapshots(path: &Path) {
    let Ok(rd) = std::fs::read_dir(path) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let partial = name
            .to_str()
            .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"));
        if partial && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = crate::clock::system_time_ms(std::time::SystemTime::now());
    let name = format!(
        "{}.damaged-{stamp}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("index")
    );
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside).map_err(|e| Error::io("move aside damaged index", path, e))?;
    crate::fsutil::ensure_private_dir(path)?;
    Ok(aside)
}
