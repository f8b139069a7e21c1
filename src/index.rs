//! The sled index: entries, expiry order, blob refcounts, inline blobs and
//! meta (sequence number, totals, counters).
//!
//! Trees:
//! - `entries`: key bytes → [`Record`] (CBOR)
//! - `expiry`:  `expires_at (u64 BE) ++ key` → empty, for ordered expiry scans
//! - `blobs`:   hash → [`BlobInfo`] (CBOR): refcount, state, sizes
//! - `inline`:  hash → stored bytes of blobs small enough to live here
//! - `meta`:    `state` → [`State`], `counters` → [`CounterValues`],
//!   `b:<backend>` → [`BackendTotals`]
//!
//! Every mutation is an [`Op`], applied in one sled transaction across all
//! trees (invariant 4) that also stores the op's sequence number, then
//! appended to the journal before the caller is answered (see `journal.rs`).
//! Mutations are serialised by one mutex; reads never take it.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::{IVec, Transactional, Tree};

use crate::blobs::BlobHash;
use crate::error::{Error, Result};
use crate::journal::{self, Journal};
use crate::key;
use crate::record::{BlobInfo, BlobState, Record, from_cbor, to_cbor};

/// Running totals kept in the index, updated in the same transaction as the
/// change they count.
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
    fn load(v: &CounterValues) -> Counters {
        Counters {
            hits: AtomicU64::new(v.hits),
            misses: AtomicU64::new(v.misses),
            stale_hits: AtomicU64::new(v.stale_hits),
            puts: AtomicU64::new(v.puts),
            corrupt: AtomicU64::new(v.corrupt),
            index_resets: AtomicU64::new(v.index_resets),
        }
    }

    fn snapshot(&self) -> CounterValues {
        CounterValues {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale_hits: self.stale_hits.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            index_resets: self.index_resets.load(Ordering::Relaxed),
        }
    }

    fn add(&self, d: &CounterValues) {
        self.hits.fetch_add(d.hits, Ordering::Relaxed);
        self.misses.fetch_add(d.misses, Ordering::Relaxed);
        self.stale_hits.fetch_add(d.stale_hits, Ordering::Relaxed);
        self.puts.fetch_add(d.puts, Ordering::Relaxed);
        self.corrupt.fetch_add(d.corrupt, Ordering::Relaxed);
        self.index_resets
            .fetch_add(d.index_resets, Ordering::Relaxed);
    }
}

/// An entry key with its record, or why the record did not decode.
pub(crate) type RecordRow = (Vec<u8>, std::result::Result<Record, String>);

/// A mutation of the index. Ops are journaled, so applying one must depend
/// only on its fields and the index state, never on the clock or the disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Ops are built one per call and never held in bulk; boxing the record
// would only add an allocation to every put.
#[allow(clippy::large_enum_variant)]
pub enum Op {
    /// Sets `key` to `record`, referencing its blob (created from `blob` if
    /// new, with `inline` bytes for inline blobs) and releasing the blob of
    /// the record it replaces.
    Put {
        /// Entry key.
        key: ByteBuf,
        /// The new record.
        record: Record,
        /// The blob's info, used when the index does not know the blob yet.
        blob: BlobInfo,
        /// Stored bytes of an inline blob.
        inline: Option<ByteBuf>,
        /// The writer re-checked the blob file after seeing it `Gone` with
        /// this `since`; see [`BlobState::Gone`].
        gone_seen: Option<u64>,
    },
    /// Removes `key` (only if it still points to `hash`, when given).
    Delete {
        /// Entry key.
        key: ByteBuf,
        /// Expected blob of the entry.
        hash: Option<BlobHash>,
    },
    /// Removes several keys.
    DeleteMany {
        /// Entry keys.
        keys: Vec<ByteBuf>,
    },
    /// Removes those of `keys` that are still expired at `before` (a key
    /// re-put since it was listed is kept).
    Expire {
        /// Entry keys.
        keys: Vec<ByteBuf>,
        /// Expiry cut-off (ms since epoch), inclusive.
        before: u64,
    },
    /// Sets a new expiry time on `key`.
    Touch {
        /// Entry key.
        key: ByteBuf,
        /// New expiry (ms since epoch).
        expires_at: u64,
    },
}

/// What an op did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The op was applied; `bool` tells whether its target existed.
    Applied(bool),
    /// Number of entries affected.
    Count(u64),
    /// The blob is being deleted (`Deleting`) or was deleted after the
    /// writer's check (`Gone`, with its `since`): write the file again and
    /// retry.
    Retry {
        /// The blob concerned.
        hash: BlobHash,
        /// `Some(since)` when the blob is `Gone`.
        gone_since: Option<u64>,
    },
}

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

/// A copy of the index's bookkeeping; see [`Index::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub state: State,
    pub records: Vec<RecordRow>,
    pub blobs: Vec<(Vec<u8>, std::result::Result<BlobInfo, String>)>,
    pub expiry: Vec<Vec<u8>>,
    pub inline: Vec<Vec<u8>>,
    pub backends: Vec<(String, BackendTotals)>,
}

struct Writer {
    state: State,
    journal: Journal,
}

/// Configuration for opening an [`Index`].
#[derive(Debug, Clone)]
pub(crate) struct IndexConfig {
    pub cache_capacity: u64,
    pub flush_interval: Duration,
    pub sync: bool,
}

/// The sled trees of an open database.
struct Trees {
    path: PathBuf,
    db: sled::Db,
    entries: Tree,
    expiry: Tree,
    blobs: Tree,
    inline: Tree,
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
            inline: tree("inline")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::index(&self.path, e)
    }

    /// Runs `op` as one transaction with sequence number `seq`, updating
    /// `state` on success. Deliberate aborts leave `state` untouched.
    fn run(&self, state: &mut State, op: &Op, seq: u64) -> Result<Outcome> {
        let base = state.clone();
        let trees = (
            &self.entries,
            &self.expiry,
            &self.blobs,
            &self.inline,
            &self.meta,
        );
        let res = trees.transaction(|(entries, expiry, blobs, inline, meta)| {
            let mut tx = Tx {
                entries,
                expiry,
                blobs,
                inline,
                meta,
                state: base.clone(),
                backends: HashMap::new(),
            };
            let outcome = tx.apply(op)?;
            tx.state.seq = seq;
            tx.commit_totals()?;
            Ok((outcome, tx.state))
        });
        match res {
            Ok((outcome, new_state)) => {
                *state = new_state;
                Ok(outcome)
            }
            Err(TransactionError::Abort(Abort::Unchanged(o) | Abort::Retry(o))) => Ok(o),
            Err(TransactionError::Abort(Abort::Invalid(why))) => Err(self.err(why)),
            Err(TransactionError::Storage(e)) => Err(self.err(e)),
        }
    }

    fn load_state(&self) -> std::result::Result<State, OpenFailure> {
        match self.meta.get(STATE) {
            Ok(Some(v)) => {
                from_cbor(&v).map_err(|e| OpenFailure::Damaged(format!("state record: {e}")))
            }
            Ok(None) => Ok(State::default()),
            Err(e) => Err(OpenFailure::Damaged(e.to_string())),
        }
    }

    /// Replays the journal past `state.seq` and makes the result durable.
    fn recover(&self, state: &mut State, journal_dir: &Path) -> Result<()> {
        let replay = journal::replay(journal_dir, state.seq, |s, payload| {
            match from_cbor::<Op>(payload) {
                Ok(op) => self.run(state, &op, s).map(|_| ()),
                Err(e) => {
                    log::warn!("journal frame {s} is not an op ({e}); skipped");
                    Ok(())
                }
            }
        })?;
        if replay.applied > 0 {
            log::info!("replayed {} journaled index operations", replay.applied);
        }
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// The open index. Only the owner process holds one.
pub(crate) struct Index {
    path: PathBuf,
    t: Trees,
    writer: Mutex<Writer>,
    sync: bool,
    access: Mutex<HashMap<Vec<u8>, Access>>,
    counters: Counters,
    _stop: Mutex<Option<mpsc::Sender<()>>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

/// Why opening the sled database failed.
enum OpenFailure {
    /// The database is damaged: move it aside and start afresh.
    Damaged(String),
    /// An environmental error (permissions, I/O): report it.
    Fatal(Error),
}

fn expiry_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

const STATE: &[u8] = b"state";
const COUNTERS: &[u8] = b"counters";
const BACKEND_PREFIX: &[u8] = b"b:";

fn backend_meta_key(key: &[u8]) -> Vec<u8> {
    let len = key.first().map(|&l| usize::from(l)).unwrap_or(0);
    let backend = key.get(1..1 + len).unwrap_or(&[]);
    [BACKEND_PREFIX, backend].concat()
}

/// Why a transaction was aborted on purpose.
#[derive(Debug)]
enum Abort {
    /// Nothing would change; report this outcome without writing.
    Unchanged(Outcome),
    /// Report this outcome (a retry) without writing.
    Retry(Outcome),
    /// The op is malformed (e.g. an inline blob without its bytes).
    Invalid(String),
}

type TxResult<T> = ConflictableTransactionResult<T, Abort>;

fn abort<T>(a: Abort) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(a))
}

/// One transaction's view of the trees plus the totals it is changing.
struct Tx<'a> {
    entries: &'a TransactionalTree,
    expiry: &'a TransactionalTree,
    blobs: &'a TransactionalTree,
    inline: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    state: State,
    backends: HashMap<Vec<u8>, BackendTotals>,
}

impl Tx<'_> {
    /// The record at `key`. An undecodable record reads as `Err(())`: its
    /// blob reference cannot be released, which leaves an orphan that
    /// `verify --repair` and GC clean up.
    fn record(&self, key: &[u8]) -> TxResult<Option<std::result::Result<Record, ()>>> {
        Ok(self.entries.get(key)?.map(|v| {
            from_cbor::<Record>(&v).map_err(|e| {
                log::warn!("undecodable record for {}: {e}", key::display(key));
            })
        }))
    }

    fn blob_info(&self, hash: &BlobHash) -> TxResult<Option<BlobInfo>> {
        let Some(v) = self.blobs.get(hash.0)? else {
            return Ok(None);
        };
        match from_cbor::<BlobInfo>(&v) {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                log::warn!("undecodable blob info for {hash}: {e}; treating as unknown");
                Ok(None)
            }
        }
    }

    fn backend(&mut self, key: &[u8]) -> TxResult<&mut BackendTotals> {
        let mk = backend_meta_key(key);
        if !self.backends.contains_key(&mk) {
            let cur = match self.meta.get(&mk)? {
                Some(v) => from_cbor(&v).unwrap_or_default(),
                None => BackendTotals::default(),
            };
            self.backends.insert(mk.clone(), cur);
        }
        Ok(self.backends.entry(mk).or_default())
    }

    fn add_ref(
        &mut self,
        hash: &BlobHash,
        template: &BlobInfo,
        inline: Option<&[u8]>,
        gone_seen: Option<u64>,
    ) -> TxResult<()> {
        let info = match self.blob_info(hash)? {
            Some(mut info) => match info.state {
                BlobState::Live => {
                    info.refs += 1;
                    info
                }
                BlobState::Deleting => {
                    return abort(Abort::Retry(Outcome::Retry {
                        hash: *hash,
                        gone_since: None,
                    }));
                }
                BlobState::Gone if gone_seen == Some(info.since) => {
                    self.state.blobs += 1;
                    self.state.blob_bytes += template.disk_bytes;
                    BlobInfo {
                        refs: 1,
                        state: BlobState::Live,
                        ..template.clone()
                    }
                }
                BlobState::Gone => {
                    return abort(Abort::Retry(Outcome::Retry {
                        hash: *hash,
                        gone_since: Some(info.since),
                    }));
                }
            },
            None => {
                if template.inline {
                    let Some(bytes) = inline else {
                        return abort(Abort::Invalid(format!(
                            "inline blob {hash} sent without its bytes"
                        )));
                    };
                    self.inline.insert(&hash.0, bytes)?;
                }
                self.state.blobs += 1;
                self.state.blob_bytes += template.disk_bytes;
                BlobInfo {
                    refs: 1,
                    state: BlobState::Live,
                    ..template.clone()
                }
            }
        };
        self.blobs.insert(&hash.0, to_cbor(&info))?;
        Ok(())
    }

    fn drop_ref(&mut self, hash: &BlobHash) -> TxResult<()> {
        let Some(mut info) = self.blob_info(hash)? else {
            log::warn!("entry referenced blob {hash} unknown to the index");
            return Ok(());
        };
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 && info.inline {
            // Inline blobs have no file to race with: free them at once.
            self.blobs.remove(&hash.0)?;
            self.inline.remove(&hash.0)?;
            self.state.blobs = self.state.blobs.saturating_sub(1);
            self.state.blob_bytes = self.state.blob_bytes.saturating_sub(info.disk_bytes);
            return Ok(());
        }
        self.blobs.insert(&hash.0, to_cbor(&info))?;
        Ok(())
    }

    fn put(
        &mut self,
        key: &[u8],
        record: &Record,
        blob: &BlobInfo,
        inline: Option<&[u8]>,
        gone_seen: Option<u64>,
    ) -> TxResult<Outcome> {
        let old = self.record(key)?;
        let mut record = record.clone();
        let old_rec = old.as_ref().and_then(|r| r.as_ref().ok());
        if old_rec.is_none_or(|o| o.hash != record.hash) {
            self.add_ref(&record.hash, blob, inline, gone_seen)?;
            if let Some(o) = old_rec {
                self.drop_ref(&o.hash)?;
            }
        }
        if let Some(o) = old_rec {
            record.hits += o.hits;
            self.expiry.remove(expiry_key(o.expires_at, key))?;
        }
        self.expiry
            .insert(expiry_key(record.expires_at, key), &[])?;
        self.entries.insert(key, to_cbor(&record))?;
        let old_raw = old_rec.map_or(0, |o| o.raw_size);
        let is_new = old.is_none();
        if is_new {
            self.state.entries += 1;
        }
        self.state.raw_bytes = (self.state.raw_bytes + record.raw_size).saturating_sub(old_raw);
        let b = self.backend(key)?;
        b.entries += u64::from(is_new);
        b.raw_bytes = (b.raw_bytes + record.raw_size).saturating_sub(old_raw);
        Ok(Outcome::Applied(!is_new))
    }

    fn delete(&mut self, key: &[u8], hash: Option<&BlobHash>) -> TxResult<bool> {
        let Some(old) = self.record(key)? else {
            return Ok(false);
        };
        if let (Some(want), Ok(rec)) = (hash, &old)
            && rec.hash != *want
        {
            return Ok(false);
        }
        self.entries.remove(key)?;
        self.state.entries = self.state.entries.saturating_sub(1);
        let raw = old.as_ref().map_or(0, |r| r.raw_size);
        self.state.raw_bytes = self.state.raw_bytes.saturating_sub(raw);
        let b = self.backend(key)?;
        b.entries = b.entries.saturating_sub(1);
        b.raw_bytes = b.raw_bytes.saturating_sub(raw);
        if let Ok(rec) = old {
            self.expiry.remove(expiry_key(rec.expires_at, key))?;
            self.drop_ref(&rec.hash)?;
        }
        Ok(true)
    }

    fn touch(&mut self, key: &[u8], expires_at: u64) -> TxResult<bool> {
        let Some(Ok(mut rec)) = self.record(key)? else {
            return Ok(false);
        };
        self.expiry.remove(expiry_key(rec.expires_at, key))?;
        rec.expires_at = expires_at;
        self.expiry.insert(expiry_key(expires_at, key), &[])?;
        self.entries.insert(key, to_cbor(&rec))?;
        Ok(true)
    }

    fn apply(&mut self, op: &Op) -> TxResult<Outcome> {
        let outcome = match op {
            Op::Put {
                key,
                record,
                blob,
                inline,
                gone_seen,
            } => self.put(
                key,
                record,
                blob,
                inline.as_ref().map(|b| b.as_slice()),
                *gone_seen,
            )?,
            Op::Delete { key, hash } => {
                let found = self.delete(key, hash.as_ref())?;
                if !found {
                    return abort(Abort::Unchanged(Outcome::Applied(false)));
                }
                Outcome::Applied(true)
            }
            Op::DeleteMany { keys } => {
                let mut n = 0;
                for k in keys {
                    n += u64::from(self.delete(k, None)?);
                }
                if n == 0 {
                    return abort(Abort::Unchanged(Outcome::Count(0)));
                }
                Outcome::Count(n)
            }
            Op::Expire { keys, before } => {
                let mut n = 0;
                for k in keys {
                    if let Some(Ok(rec)) = self.record(k)?
                        && rec.expires_at <= *before
                    {
                        n += u64::from(self.delete(k, None)?);
                    }
                }
                if n == 0 {
                    return abort(Abort::Unchanged(Outcome::Count(0)));
                }
                Outcome::Count(n)
            }
            Op::Touch { key, expires_at } => {
                if !self.touch(key, *expires_at)? {
                    return abort(Abort::Unchanged(Outcome::Applied(false)));
                }
                Outcome::Applied(true)
            }
        };
        Ok(outcome)
    }

    fn commit_totals(&self) -> TxResult<()> {
        self.meta.insert(STATE, to_cbor(&self.state))?;
        for (k, v) in &self.backends {
            if v.entries == 0 {
                self.meta.remove(k.as_slice())?;
            } else {
                self.meta.insert(k.as_slice(), to_cbor(v))?;
            }
        }
        Ok(())
    }
}

impl Index {
    /// Opens (or creates) the index in `path`, replays `journal_dir`, and
    /// starts the background flusher. A damaged database is moved aside
    /// and replaced by an empty one (the returned flag says so).
    pub fn open(path: &Path, journal_dir: &Path, cfg: &IndexConfig) -> Result<(Arc<Index>, bool)> {
        let (trees, state, reset) = match open_trees(path, cfg) {
            Ok((t, s)) => (t, s, false),
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Damaged(why)) => {
                let aside = move_aside(path)?;
                log::error!(
                    "index {} is damaged ({why}); moved it to {} and started an empty index; \
                     blobs it referenced are orphans that GC will reclaim",
                    path.display(),
                    aside.display()
                );
                match open_trees(path, cfg) {
                    Ok((t, s)) => (t, s, true),
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
        let mut state = state;
        // After a reset the journal still replays: each op is self-contained,
        // so entries acknowledged since the last flush come back.
        trees.recover(&mut state, journal_dir)?;
        let mut journal = Journal::start(journal_dir, state.seq + 1)?;
        journal.checkpoint(state.seq, state.seq + 1)?;
        let counters = match trees.meta.get(COUNTERS) {
            Ok(Some(v)) => from_cbor(&v).unwrap_or_default(),
            _ => CounterValues::default(),
        };
        let index = Index {
            path: path.to_path_buf(),
            t: trees,
            writer: Mutex::new(Writer { state, journal }),
            sync: cfg.sync,
            access: Mutex::new(HashMap::new()),
            counters: Counters::load(&counters),
            _stop: Mutex::new(None),
        };
        if reset {
            index.counters.index_resets.fetch_add(1, Ordering::Relaxed);
        }
        crate::fsutil::tighten_tree(path);
        let index = Arc::new(index);
        Index::spawn_flusher(&index, cfg.flush_interval);
        Ok((index, reset))
    }

    fn spawn_flusher(index: &Arc<Index>, every: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        if let Ok(mut stop) = index._stop.lock() {
            *stop = Some(tx);
        }
        let weak: Weak<Index> = Arc::downgrade(index);
        let spawned = std::thread::Builder::new()
            .name("blobcache-flush".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(index) = weak.upgrade() else { return };
                    if let Err(e) = index.checkpoint() {
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
            .map_err(|_| Error::index(&self.path, "writer lock poisoned by a panic"))
    }

    /// Applies `op`: one transaction, then one journal append (and fsync
    /// under synced durability) before returning.
    pub fn apply(&self, op: &Op) -> Result<Outcome> {
        let mut w = self.lock_writer()?;
        let before = w.state.seq;
        let seq = before + 1;
        let outcome = self.t.run(&mut w.state, op, seq)?;
        if w.state.seq == before {
            // Aborted on purpose: nothing changed, nothing to journal.
            return Ok(outcome);
        }
        w.journal.append(seq, &to_cbor(op))?;
        if self.sync {
            w.journal.sync()?;
        }
        Ok(outcome)
    }

    /// The record at `key` and, for an inline blob, its stored bytes.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Lookup>> {
        let Some(raw) = self
            .t
            .entries
            .get(key)
            .map_err(|e| Error::index(&self.path, e))?
        else {
            return Ok(None);
        };
        let record: Record = from_cbor(&raw).map_err(|reason| Error::CorruptRecord {
            key: key::display(key),
            reason,
        })?;
        let inline = if record.inline {
            self.t
                .inline
                .get(record.hash.0)
                .map_err(|e| Error::index(&self.path, e))?
                .map(|v| ByteBuf::from(v.to_vec()))
        } else {
            None
        };
        Ok(Some(Lookup { record, inline }))
    }

    /// The stored bytes of an inline blob.
    pub fn inline_bytes(&self, hash: &BlobHash) -> Result<Option<IVec>> {
        self.t.inline.get(hash.0).map_err(|e| self.t.err(e))
    }

    /// The index's info on one blob.
    pub fn blob_info(&self, hash: &BlobHash) -> Result<Option<BlobInfo>> {
        match self
            .t
            .blobs
            .get(hash.0)
            .map_err(|e| Error::index(&self.path, e))?
        {
            Some(v) => Ok(from_cbor(&v).ok()),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries whose key starts with `prefix`, after `after`.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RecordRow>> {
        let mut out = Vec::new();
        let iter = match after {
            Some(a) => {
                let mut start = a.to_vec();
                start.push(0);
                self.t.entries.range(start..)
            }
            None => self.t.entries.range(prefix.to_vec()..),
        };
        for item in iter {
            let (k, v): (IVec, IVec) = item.map_err(|e| Error::index(&self.path, e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), from_cbor::<Record>(&v)));
        }
        Ok(out)
    }

    /// Number of entries whose expiry is at or before `now`.
    pub fn count_expired(&self, now: u64) -> Result<u64> {
        let end = (now.saturating_add(1)).to_be_bytes();
        let mut n = 0;
        for item in self.t.expiry.range(..end.to_vec()) {
            item.map_err(|e| Error::index(&self.path, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Keys of up to `limit` entries expired at or before `before`.
    pub fn expired_keys(&self, before: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let end = (before.saturating_add(1)).to_be_bytes();
        let mut out = Vec::new();
        for item in self.t.expiry.range(..end.to_vec()).take(limit) {
            let (k, _) = item.map_err(|e| Error::index(&self.path, e))?;
            out.push(k[8..].to_vec());
        }
        Ok(out)
    }

    /// Current totals.
    pub fn state(&self) -> Result<State> {
        Ok(self.lock_writer()?.state.clone())
    }

    /// Per-backend totals, sorted by backend name.
    pub fn backends(&self) -> Result<Vec<(String, BackendTotals)>> {
        let mut out = Vec::new();
        for item in self.t.meta.scan_prefix(BACKEND_PREFIX) {
            let (k, v) = item.map_err(|e| Error::index(&self.path, e))?;
            let name = String::from_utf8_lossy(&k[BACKEND_PREFIX.len()..]).into_owned();
            out.push((name, from_cbor(&v).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Counter values, including increments not yet flushed.
    pub fn counters(&self) -> CounterValues {
        self.counters.snapshot()
    }

    /// Adds to the counters (flushed with the next checkpoint).
    pub fn count(&self, delta: &CounterValues) {
        self.counters.add(delta);
    }

    /// Records accesses; they reach the records in batches, not one sled
    /// write per hit.
    pub fn record_access(&self, batch: impl IntoIterator<Item = (Vec<u8>, Access)>) {
        let full = match self.access.lock() {
            Ok(mut pending) => {
                for (k, a) in batch {
                    let slot = pending.entry(k).or_default();
                    slot.hits += a.hits;
                    slot.last = slot.last.max(a.last);
                }
                pending.len() >= ACCESS_BATCH
            }
            Err(_) => false,
        };
        if full && let Err(e) = self.flush_access() {
            log::warn!("flushing access statistics failed: {e}");
        }
    }

    /// Writes pending access statistics into the records.
    fn flush_access(&self) -> Result<()> {
        let pending = match self.access.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        // Under the writer lock so a put cannot interleave and lose either
        // its record or these counts.
        let _w = self.lock_writer()?;
        for (k, a) in pending {
            let res = self.t.entries.fetch_and_update(&k, |old| {
                let old = old?;
                let mut rec: Record = from_cbor(old).ok()?;
                rec.hits += a.hits;
                rec.last_access = rec.last_access.max(a.last);
                Some(to_cbor(&rec))
            });
            if let Err(e) = res {
                return Err(Error::index(&self.path, e));
            }
        }
        Ok(())
    }

    /// Flushes access statistics and counters, makes the index durable,
    /// and drops journal segments it no longer needs.
    pub fn checkpoint(&self) -> Result<()> {
        self.flush_access()?;
        let counters = to_cbor(&self.counters.snapshot());
        self.t
            .meta
            .insert(COUNTERS, counters)
            .map_err(|e| Error::index(&self.path, e))?;
        let durable = self.lock_writer()?.state.seq;
        self.t.db.flush().map_err(|e| Error::index(&self.path, e))?;
        let mut w = self.lock_writer()?;
        let next = w.state.seq + 1;
        w.journal.checkpoint(durable, next)
    }

    /// A consistent copy of the index's bookkeeping (not the inline blob
    /// bytes), taken under the writer lock so no op interleaves.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let w = self.lock_writer()?;
        let t = &self.t;
        let mut snap = Snapshot {
            state: w.state.clone(),
            ..Snapshot::default()
        };
        for item in t.entries.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            snap.records.push((k.to_vec(), from_cbor::<Record>(&v)));
        }
        for item in t.blobs.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            snap.blobs.push((k.to_vec(), from_cbor::<BlobInfo>(&v)));
        }
        for item in t.expiry.iter() {
            let (k, _) = item.map_err(|e| t.err(e))?;
            snap.expiry.push(k.to_vec());
        }
        for item in t.inline.iter() {
            let (k, _) = item.map_err(|e| t.err(e))?;
            snap.inline.push(k.to_vec());
        }
        for item in t.meta.scan_prefix(BACKEND_PREFIX) {
            let (k, v) = item.map_err(|e| t.err(e))?;
            let name = String::from_utf8_lossy(&k[BACKEND_PREFIX.len()..]).into_owned();
            snap.backends
                .push((name, from_cbor(&v).unwrap_or_default()));
        }
        Ok(snap)
    }

    /// Rebuilds refcounts, the expiry tree, totals and per-backend counts
    /// from the entries themselves, under the writer lock, and flushes.
    /// Undecodable records are removed. `file_info` describes a file blob
    /// the index has no info for (None: the file is gone, so entries using
    /// it are dropped). Returns the number of index keys changed.
    pub fn rebuild_counts(&self, file_info: &dyn Fn(&Record) -> Option<BlobInfo>) -> Result<u64> {
        let mut w = self.lock_writer()?;
        let t = &self.t;
        let mut changed = 0u64;
        let mut refs: HashMap<[u8; 32], u64> = HashMap::new();
        let mut infos: HashMap<[u8; 32], BlobInfo> = HashMap::new();
        for item in t.blobs.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            match (<[u8; 32]>::try_from(&k[..]), from_cbor::<BlobInfo>(&v)) {
                (Ok(h), Ok(info)) => {
                    infos.insert(h, info);
                }
                _ => {
                    t.blobs.remove(&k).map_err(|e| t.err(e))?;
                    changed += 1;
                }
            }
        }
        let mut state = State {
            seq: w.state.seq,
            ..State::default()
        };
        let mut backends: HashMap<Vec<u8>, BackendTotals> = HashMap::new();
        let mut expiry = std::collections::BTreeSet::new();
        for item in t.entries.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            let rec = match from_cbor::<Record>(&v) {
                Ok(r) => r,
                Err(_) => {
                    t.entries.remove(&k).map_err(|e| t.err(e))?;
                    changed += 1;
                    continue;
                }
            };
            let has_blob = if rec.inline {
                t.inline.contains_key(rec.hash.0).map_err(|e| t.err(e))?
            } else {
                infos.contains_key(&rec.hash.0) || {
                    let made = file_info(&rec);
                    if let Some(info) = made {
                        infos.insert(rec.hash.0, info);
                    }
                    infos.contains_key(&rec.hash.0)
                }
            };
            if !has_blob {
                t.entries.remove(&k).map_err(|e| t.err(e))?;
                changed += 1;
                continue;
            }
            if rec.inline && !infos.contains_key(&rec.hash.0) {
                let n = t
                    .inline
                    .get(rec.hash.0)
                    .map_err(|e| t.err(e))?
                    .map_or(0, |v| v.len() as u64);
                infos.insert(
                    rec.hash.0,
                    BlobInfo {
                        version: crate::record::RECORD_VERSION,
                        refs: 0,
                        state: BlobState::Live,
                        codec: rec.codec,
                        inline: true,
                        raw_size: rec.raw_size,
                        stored_size: n,
                        disk_bytes: n,
                        since: rec.created_at,
                    },
                );
            }
            *refs.entry(rec.hash.0).or_default() += 1;
            state.entries += 1;
            state.raw_bytes += rec.raw_size;
            let b = backends.entry(backend_meta_key(&k)).or_default();
            b.entries += 1;
            b.raw_bytes += rec.raw_size;
            expiry.insert(expiry_key(rec.expires_at, &k));
        }
        for (h, mut info) in infos {
            let n = refs.get(&h).copied().unwrap_or(0);
            let keep = info.state == BlobState::Live && (n > 0 || !info.inline);
            if !keep && info.state == BlobState::Live {
                t.blobs.remove(h).map_err(|e| t.err(e))?;
                t.inline.remove(h).map_err(|e| t.err(e))?;
                changed += 1;
                continue;
            }
            if info.state == BlobState::Live {
                state.blobs += 1;
                state.blob_bytes += info.disk_bytes;
            }
            if info.refs != n {
                info.refs = n;
                changed += 1;
            }
            t.blobs.insert(h, to_cbor(&info)).map_err(|e| t.err(e))?;
        }
        for item in t.expiry.iter() {
            let (k, _) = item.map_err(|e| t.err(e))?;
            if !expiry.remove(k.as_ref()) {
                t.expiry.remove(&k).map_err(|e| t.err(e))?;
                changed += 1;
            }
        }
        for k in expiry {
            t.expiry.insert(k, &[]).map_err(|e| t.err(e))?;
            changed += 1;
        }
        for item in t.meta.scan_prefix(BACKEND_PREFIX) {
            let (k, _) = item.map_err(|e| t.err(e))?;
            t.meta.remove(&k).map_err(|e| t.err(e))?;
        }
        for (k, v) in &backends {
            t.meta
                .insert(k.as_slice(), to_cbor(v))
                .map_err(|e| t.err(e))?;
        }
        if state != w.state {
            changed += 1;
        }
        t.meta
            .insert(STATE, to_cbor(&state))
            .map_err(|e| t.err(e))?;
        w.state = state;
        t.db.flush().map_err(|e| t.err(e))?;
        Ok(changed)
    }

    /// Bytes the index occupies on disk.
    pub fn disk_size(&self) -> u64 {
        self.t.db.size_on_disk().unwrap_or(0)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Ok(mut stop) = self._stop.lock() {
            stop.take();
        }
        if let Err(e) = self.checkpoint() {
            log::warn!("final index flush failed: {e}");
        }
        crate::fsutil::tighten_tree(&self.path);
    }
}

fn open_trees(path: &Path, cfg: &IndexConfig) -> std::result::Result<(Trees, State), OpenFailure> {
    let db = open_db(path, cfg)?;
    let trees = Trees::open(path, db).map_err(|e| OpenFailure::Damaged(e.to_string()))?;
    let state = trees.load_state()?;
    Ok((trees, state))
}

fn open_db(path: &Path, cfg: &IndexConfig) -> std::result::Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache_capacity)
        // Our own flusher flushes and then trims the journal; sled's timer
        // would only add fsyncs.
        .flush_every_ms(None);
    // sled panics on some kinds of damage; a cache must not.
    let opened = catch_unwind(AssertUnwindSafe(|| config.open()));
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
