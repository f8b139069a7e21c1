//! The public API: [`Store`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_bytes::ByteBuf;

use crate::blobs::{self, BlobError, BlobHash, Blobs, Staged, StreamError, VerifyingReader};
use crate::clock::add_ms;
use crate::engine::{self, Engine, EngineOptions, EntryInfo, HeaderSet, PutMeta};
use crate::error::{Error, Result};
use crate::index::{
    Access, CounterValues, ImportItem, IndexConfig, Lookup, Op, Outcome, RecordRow,
};
use crate::key::{self, Category};
use crate::l1::MemoryTier;
use crate::layout::{FORMAT_V2, Layout};
use crate::options::{Durability, PutOptions, StoreOptions};
use crate::policy::MergePolicy;
use crate::record::{self, BlobInfo, BlobState, Codec, RECORD_VERSION, Record};
use crate::reserve::{self, Reserve, Writable};
use crate::share::Share;
use crate::verify::{VerifyOptions, VerifyReport};

/// How many times a put retries while the sweeper is deleting its blob.
const PUT_ATTEMPTS: u32 = 50;
/// Payloads read by `put_reader` are buffered up to this size; larger ones
/// are streamed to a staging file.
const STREAM_MIN: usize = 8 * 1024 * 1024;
/// Page size of list and clear scans.
const PAGE: usize = 1000;

/// A persistent, content-addressed cache in one directory.
///
/// `Store` is a cheap handle (an `Arc` inside): clone it freely and use it
/// from many threads; it is `Send + Sync`.
///
/// ```
/// use blobcache::{Category, PutOptions, Store, StoreOptions};
///
/// # fn main() -> blobcache::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = Store::open(dir.path(), StoreOptions::default())?;
///
/// let body = br#"{"id":603,"title":"The Matrix"}"#;
/// let opts = PutOptions::new()
///     .category(Category::Metadata)
///     .header("Content-Type", "application/json")
///     .header("Authorization", "Bearer secret"); // never stored
/// store.put("tmdb", "movie/603", body, &opts)?;
///
/// let hit = store.get("tmdb", "movie/603")?.expect("fresh entry");
/// assert_eq!(hit.data, body);
/// assert_eq!(hit.meta.headers, vec![("Content-Type".to_string(), "application/json".to_string())]);
/// assert!(store.get("tmdb", "movie/604")?.is_none());
///
/// // One store, many threads: each clone is the same cache.
/// let workers: Vec<_> = (0..4)
///     .map(|i| {
///         let store = store.clone();
///         std::thread::spawn(move || store.put("tmdb", format!("movie/{i}"), b"{}", &PutOptions::new()))
///     })
///     .collect();
/// for w in workers {
///     w.join().expect("worker panicked")?;
/// }
/// assert!(store.contains("tmdb", "movie/3")?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What a [`Store`] handle shares: its clones (and the owner socket's
/// serving threads, weakly) point here.
#[derive(Debug)]
pub(crate) struct Inner {
    layout: Layout,
    opts: StoreOptions,
    blobs: Blobs,
    share: Share,
    flights: crate::fetch::Flights,
    sweeper: crate::gc::Sweeper,
    l1: Option<MemoryTier>,
    writable: Writable,
    remote: crate::remote::Remote,
    /// The storage core v2 of a format-2 cache (then `share` is
    /// detached: see [`Share::detached`]).
    engine: Option<Engine>,
    /// A format-2 cache's counters, since open.
    counts: V2Counts,
}

/// Counters of a format-2 cache (its index keeps none yet).
#[derive(Debug, Default)]
struct V2Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    puts: AtomicU64,
}

impl V2Counts {
    fn add(&self, d: &CounterValues) {
        self.hits.fetch_add(d.hits, Ordering::Relaxed);
        self.misses.fetch_add(d.misses, Ordering::Relaxed);
        self.stale_hits.fetch_add(d.stale_hits, Ordering::Relaxed);
        self.puts.fetch_add(d.puts, Ordering::Relaxed);
    }
}

/// What a put stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReport {
    /// blake3 of the payload: the blob's name.
    pub hash: BlobHash,
    /// Payload size.
    pub raw_size: u64,
    /// Size of the stored blob (compressed unless `compressed` is false).
    pub stored_size: u64,
    /// The blob is zstd-compressed (false: compression did not help).
    pub compressed: bool,
    /// The blob lives in the index rather than as a file.
    pub inline: bool,
    /// The blob already existed; no new blob was written.
    pub deduplicated: bool,
    /// Expiry time (ms since epoch).
    pub expires_at: u64,
}

/// Everything known about an entry besides its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    /// Backend name.
    pub backend: String,
    /// Signature bytes.
    pub signature: Vec<u8>,
    /// blake3 of the payload.
    pub hash: BlobHash,
    /// Payload size.
    pub raw_size: u64,
    /// Stored blob size.
    pub stored_size: u64,
    /// The blob is zstd-compressed.
    pub compressed: bool,
    /// The blob lives in the index.
    pub inline: bool,
    /// When the entry was written (ms since epoch).
    pub created_at: u64,
    /// When the upstream produced the payload (ms since epoch).
    pub fetched_at: u64,
    /// When `get` stops serving the entry (ms since epoch).
    pub expires_at: u64,
    /// The entry's category.
    pub category: Category,
    /// Content type, when given at put.
    pub content_type: Option<String>,
    /// Response headers, in order, secrets removed.
    pub headers: Vec<(String, String)>,
    /// Hits served (updated in batches, so it may lag by a second).
    pub hits: u64,
    /// Last access (ms since epoch; batched like `hits`).
    pub last_access: u64,
    /// Exempt from size-cap eviction.
    pub pinned: bool,
}

impl EntryMeta {
    fn from_record(key: &[u8], r: &Record) -> EntryMeta {
        let (backend, signature) = key::decode(key).unwrap_or_default();
        EntryMeta {
            backend,
            signature,
            hash: r.hash,
            raw_size: r.raw_size,
            stored_size: r.stored_size,
            compressed: r.codec == Codec::Zstd,
            inline: r.inline,
            created_at: r.created_at,
            fetched_at: r.fetched_at,
            expires_at: r.expires_at,
            category: Category::parse(&r.category),
            content_type: r.content_type.clone(),
            headers: r.headers.clone(),
            hits: r.hits,
            last_access: r.last_access,
            pinned: r.pinned,
        }
    }

    /// The metadata of a format-2 entry: its payload lives in a pack
    /// needle or a blob file, never in the index (`inline` is false), and
    /// its hits are not tracked yet (`hits` 0, `last_access` its creation).
    fn from_info(key: &[u8], i: &EntryInfo, h: &HeaderSet) -> EntryMeta {
        let (backend, signature) = key::decode(key).unwrap_or_default();
        EntryMeta {
            backend,
            signature,
            hash: i.hash,
            raw_size: i.raw_size,
            stored_size: i.stored_size,
            compressed: i.compressed,
            inline: false,
            created_at: i.created_at,
            fetched_at: i.fetched_at,
            expires_at: i.expires_at.unwrap_or(u64::MAX),
            category: h
                .category
                .as_deref()
                .map_or(Category::Metadata, Category::parse),
            content_type: h.content_type.clone(),
            headers: h.headers.clone(),
            hits: 0,
            last_access: i.created_at,
            pinned: i.pinned,
        }
    }

    /// The signature as text (lossy for non-UTF-8 signatures).
    pub fn signature_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.signature)
    }

    /// True when the entry is expired at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at
    }
}

/// A cache hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The payload, verified against its hash.
    pub data: Vec<u8>,
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// The entry is expired (only [`Store::get_stale`] returns such hits).
    pub stale: bool,
}

/// A streamed hit: the payload as a [`Read`]; no wrong byte is ever read
/// from it. A payload up to 8 MiB was verified whole before the reader was
/// handed out (a damaged one is a miss); its hash is checked again as it
/// streams. A larger one is verified one 1 MiB group at a time against the
/// blob's outboard (itself checked against the hash when the reader
/// opened): the `read` that reaches a damaged group returns an
/// `InvalidData` error instead of any of its bytes, after the correct
/// groups before it, and the entry is dropped. A read to the end that
/// returns end-of-file has delivered exactly the payload.
#[derive(Debug)]
pub struct EntryReader {
    /// The entry's metadata.
    pub meta: EntryMeta,
    /// The entry is expired.
    pub stale: bool,
    reader: VerifyingReader,
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

/// Which entries a list or clear applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every entry.
    All,
    /// Every entry of a backend.
    Backend(String),
    /// Entries of a backend whose signature starts with the bytes given.
    Prefix(String, Vec<u8>),
}

impl Selector {
    /// Every entry of `backend`.
    pub fn backend(backend: impl Into<String>) -> Selector {
        Selector::Backend(backend.into())
    }

    /// Entries of `backend` whose signature starts with `prefix`.
    pub fn prefix(backend: impl Into<String>, prefix: impl AsRef<[u8]>) -> Selector {
        Selector::Prefix(backend.into(), prefix.as_ref().to_vec())
    }

    fn key_prefix(&self) -> Result<Vec<u8>> {
        match self {
            Selector::All => Ok(Vec::new()),
            Selector::Backend(b) => key::prefix(b, b""),
            Selector::Prefix(b, p) => key::prefix(b, p),
        }
    }
}

/// Counts and sizes of the whole cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries, live and expired.
    pub entries: u64,
    /// Entries not yet expired.
    pub live: u64,
    /// Expired entries still kept (readable with `get_stale`).
    pub expired: u64,
    /// Distinct blobs (including orphans awaiting GC).
    pub blobs: u64,
    /// Sum of the entries' payload sizes (what the cache holds logically).
    pub raw_bytes: u64,
    /// Bytes the blob files occupy (allocated blocks). Inline blobs are
    /// stored in the index and counted in [`Stats::index_bytes`].
    pub blob_bytes: u64,
    /// Bytes the index database and its journal occupy on disk
    /// (allocated blocks).
    pub index_bytes: u64,
    /// Live hits served.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// Expired entries served by `get_stale`.
    pub stale_hits: u64,
    /// Puts acknowledged.
    pub puts: u64,
    /// Entries dropped because their blob was missing or corrupt.
    pub corrupt: u64,
    /// Times a damaged index was replaced by an empty one.
    pub index_resets: u64,
    /// Per-backend counts, sorted by name.
    pub backends: Vec<BackendStats>,
    /// The remote tier's state and figures (counted by this process since
    /// it opened the store), when one is configured.
    pub remote: Option<crate::remote::RemoteStats>,
}

impl Stats {
    /// Total bytes on disk: blobs plus index; what a size cap
    /// ([`crate::StoreOptions::max_size`]) is measured against.
    pub fn disk_bytes(&self) -> u64 {
        self.blob_bytes + self.index_bytes
    }

    /// Hits / (hits + misses), or `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// Counts of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Backend name.
    pub name: String,
    /// Its entries.
    pub entries: u64,
    /// Sum of their payload sizes.
    pub raw_bytes: u64,
}

/// What a read found: the entry in the local index (and whether it is
/// expired), or a remote hit just verified and stored locally.
enum Found {
    Local(Lookup, bool),
    Remote(Filled),
}

/// A remote hit, stored locally: the record inserted and the payload,
/// verified against `record.hash` (the only check it gets).
#[derive(Debug)]
pub(crate) struct Filled {
    /// The record now in the index.
    pub record: Record,
    /// The payload.
    pub data: Vec<u8>,
}

/// How a put gets its blob into place; see `Store::commit_put`.
enum Source<'a> {
    /// The payload is in memory.
    Bytes {
        payload: &'a [u8],
        encoded: Option<(Codec, Vec<u8>)>,
    },
    /// The payload was streamed into a staging file.
    Staged(Staged),
}

impl Store {
    /// Opens the cache in `dir`, creating it if needed.
    ///
    /// Creates the layout (0700 directories, 0600 files), writes or checks
    /// `VERSION` (a newer format is refused) and removes staging files left
    /// by dead writers. Then, with the default [`crate::Sharing::Shared`], this
    /// process becomes the cache's owner (it opens the index, replays its
    /// journal and serves other processes on `owner.sock`) or, when another
    /// process already owns it, a guest of that owner: the API is the same
    /// either way, and a guest takes over when the owner goes away.
    ///
    /// While another process holds the cache without sharing it, waits up
    /// to [`StoreOptions::owner_timeout`] and then returns
    /// [`Error::Locked`].
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let layout = Layout::new(dir.as_ref());
        let format = layout.prepare(opts.format)?;
        layout.warn_if_network_fs();
        if format != FORMAT_V2 && opts.format == Some(FORMAT_V2) {
            v2_supports(&layout, &opts)?;
            crate::migrate::to_v2(&layout, &opts, |root| {
                Engine::open(root, engine_options(&opts))
            })?;
            return Store::open_v2(layout, opts);
        }
        if format == FORMAT_V2 {
            crate::migrate::resume(&layout, opts.owner_timeout)?;
            return Store::open_v2(layout, opts);
        }
        let sync = opts.durability == Durability::Synced;
        let blobs = Blobs::new(layout.blobs.clone(), layout.tmp.clone(), sync);
        let removed = blobs.clean_staging(opts.staging_grace)?;
        if removed > 0 {
            log::info!("removed {removed} abandoned staging files");
        }
        let cfg = IndexConfig {
            cache_capacity: opts.cache_capacity,
            flush_interval: opts.flush_interval,
            sync,
        };
        let remote = crate::remote::Remote::open(opts.remote.as_ref(), &opts)?;
        let (share, reset, writable) = open_share(&layout, cfg, &opts)?;
        let l1 = MemoryTier::new(opts.memory_tier, opts.memory_tier_max_staleness);
        let store = Store {
            inner: Arc::new(Inner {
                layout,
                opts,
                blobs,
                share,
                flights: Default::default(),
                sweeper: crate::gc::Sweeper::default(),
                l1,
                writable,
                remote,
                engine: None,
                counts: V2Counts::default(),
            }),
        };
        if reset {
            // Entries replayed from the journal into the fresh index carry
            // refcounts of the old one: recount them.
            crate::verify::rebuild_counts(&store)?;
        }
        store.inner.share.start(Arc::downgrade(&store.inner))?;
        if store.inner.opts.standby {
            crate::share::stand_by(&store);
        }
        crate::gc::start_background(&store);
        Ok(store)
    }

    /// Opens a format-2 cache: the engine over packs and a lean index, in
    /// this process alone (no owner socket, no background sweep yet).
    fn open_v2(layout: Layout, opts: StoreOptions) -> Result<Store> {
        v2_supports(&layout, &opts)?;
        let engine = Engine::open(&layout.root, engine_options(&opts))?;
        let reserve = Reserve::new(&layout.root, &layout.locks, &layout.tmp);
        let low_space = !hold_reserve(&reserve, &layout);
        let cfg = IndexConfig {
            cache_capacity: opts.cache_capacity,
            flush_interval: opts.flush_interval,
            sync: opts.durability == Durability::Synced,
        };
        let blobs = Blobs::new(
            layout.blobs.clone(),
            layout.tmp.clone(),
            opts.durability == Durability::Synced,
        );
        Ok(Store {
            inner: Arc::new(Inner {
                share: Share::detached(layout.clone(), cfg),
                layout,
                remote: crate::remote::Remote::open(None, &opts)?,
                l1: MemoryTier::new(opts.memory_tier, opts.memory_tier_max_staleness),
                opts,
                blobs,
                flights: Default::default(),
                sweeper: crate::gc::Sweeper::default(),
                writable: Writable::new(reserve, None, low_space),
                engine: Some(engine),
                counts: V2Counts::default(),
            }),
        })
    }

    /// The storage core v2 of a format-2 cache; `None` for format 1.
    pub(crate) fn engine(&self) -> Option<&Engine> {
        self.inner.engine.as_ref()
    }

    /// The cache's format (`VERSION`): 1, or 2 for the storage core v2.
    pub fn format(&self) -> u32 {
        match self.inner.engine {
            Some(_) => FORMAT_V2,
            None => crate::layout::FORMAT_VERSION,
        }
    }

    /// Fails with [`Error::NotOnFormat2`] on a format-2 cache: `what` is
    /// not available there yet.
    pub(crate) fn v1_only(&self, what: &str) -> Result<()> {
        match self.inner.engine {
            Some(_) => Err(Error::NotOnFormat2 {
                path: self.inner.layout.root.clone(),
                what: what.into(),
            }),
            None => Ok(()),
        }
    }

    /// Drops `key` from the memory tier after a format-2 change.
    pub(crate) fn forget_v2(&self, keys: &[Vec<u8>]) {
        let Some(t) = &self.inner.l1 else {
            return;
        };
        let keys = keys.iter().map(|k| ByteBuf::from(k.clone())).collect();
        t.invalidate(&Op::DeleteMany { keys });
    }

    /// What a format-2 put records, from the put's options.
    fn put_meta(&self, opts: &PutOptions) -> PutMeta {
        let o = &self.inner.opts;
        PutMeta {
            ttl: Some(opts.ttl.unwrap_or_else(|| o.ttl.ttl_for(&opts.category))),
            headers: HeaderSet {
                content_type: opts.content_type.clone(),
                category: Some(opts.category.as_str().to_string()),
                headers: record::redact_headers(&opts.headers, &o.drop_headers),
            },
            pinned: opts.pinned,
            fetched_at: opts.fetched_at,
            ..PutMeta::default()
        }
    }

    /// Counts a format-2 put and forgets the key's memory-tier copy.
    fn committed_v2(&self, key: &[u8], done: Result<engine::PutReport>) -> Result<PutReport> {
        self.forget_v2(&[key.to_vec()]);
        let r = done?;
        self.count(|c| c.puts = 1);
        Ok(PutReport {
            hash: r.hash,
            raw_size: r.raw_size,
            stored_size: r.stored_size,
            compressed: r.compressed,
            inline: false,
            deduplicated: r.deduplicated,
            expires_at: r.expires_at,
        })
    }

    /// Why this store cannot change the cache (a read-only filesystem, or
    /// a full disk with no reserve left), or `None` when it can. A
    /// read-only store serves gets, lists, stats and verify from a private
    /// copy of the index; every change fails with [`Error::ReadOnly`].
    pub fn read_only(&self) -> Option<&str> {
        self.inner.writable.read_only()
    }

    /// Fails with [`Error::ReadOnly`] when this store cannot change the
    /// cache.
    pub(crate) fn check_write(&self) -> Result<()> {
        self.inner.writable.check_write(&self.inner.layout.root)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Store {
        Store { inner }
    }

    /// True when this process owns the cache's index (and serves other
    /// processes); false for a guest. Informational: the API behaves the
    /// same either way, and a guest may become the owner at any request.
    pub fn is_owner(&self) -> bool {
        self.inner.share.is_owner()
    }

    /// Process id of the cache's current owner.
    pub fn owner_pid(&self) -> u32 {
        self.inner.share.owner_pid()
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    fn now(&self) -> u64 {
        self.inner.opts.clock.now_ms()
    }

    fn count(&self, f: impl FnOnce(&mut CounterValues)) {
        let mut d = CounterValues::default();
        f(&mut d);
        match self.inner.engine {
            Some(_) => self.inner.counts.add(&d),
            None => self.inner.share.count(&d),
        }
    }

    /// Stores `payload` under `(backend, signature)`, replacing what was
    /// there. Identical payloads share one blob.
    pub fn put(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        payload: &[u8],
        opts: &PutOptions,
    ) -> Result<PutReport> {
        let key = key::encode(backend, signature.as_ref())?;
        self.guard_put(backend, signature.as_ref(), &key, Some(payload), opts)?;
        if let Some(e) = self.engine() {
            let done = e.put(backend, signature, payload, &self.put_meta(opts));
            return self.committed_v2(&key, done);
        }
        self.put_bytes(&key, payload, opts)
    }

    /// Refuses a put that would store a configured secret (see
    /// [`StoreOptions::deny_secrets`]); a streamed payload is checked as it
    /// is read instead.
    fn guard_put(
        &self,
        backend: &str,
        signature: &[u8],
        key: &[u8],
        payload: Option<&[u8]>,
        opts: &PutOptions,
    ) -> Result<()> {
        self.inner.writable.check_put(&self.inner.layout.root)?;
        let o = &self.inner.opts;
        o.secrets
            .check_put(backend, signature, key, payload, opts, &o.drop_headers)
    }

    /// Stores an in-memory payload, then hands the remote tier the stored
    /// form the put produced (compressed once, here), when it has one.
    fn put_bytes(&self, key: &[u8], payload: &[u8], opts: &PutOptions) -> Result<PutReport> {
        let mut source = Source::Bytes {
            payload,
            encoded: None,
        };
        let (hash, raw_size) = (BlobHash::of(payload), payload.len() as u64);
        let (report, _) = self.commit_put(key, &mut source, hash, raw_size, opts, None)?;
        let stored = match source {
            Source::Bytes { encoded, .. } => encoded,
            Source::Staged(_) => None,
        };
        let remote = &self.inner.remote;
        remote.after_put(self, key, stored, &report, opts)?;
        Ok(report)
    }

    /// Refuses to keep a remote hit that no local put could store (a
    /// read-only cache, a configured secret): checked before it is served.
    #[cfg(feature = "redis")]
    pub(crate) fn check_remote_hit(
        &self,
        key: &[u8],
        payload: &[u8],
        opts: &PutOptions,
    ) -> Result<()> {
        let (backend, signature) = key::decode(key).unwrap_or_default();
        self.guard_put(&backend, &signature, key, Some(payload), opts)
    }

    /// The record a remote hit fetched at `at` gets once stored (`stored`:
    /// its stored bytes in `codec`), to serve it before it is.
    #[cfg(feature = "redis")]
    pub(crate) fn remote_hit_record(
        &self,
        hash: &BlobHash,
        codec: Codec,
        stored: &[u8],
        raw_size: u64,
        opts: &PutOptions,
        at: u64,
    ) -> Record {
        let n = stored.len() as u64;
        let blob = BlobInfo {
            version: RECORD_VERSION,
            refs: 1,
            state: BlobState::Live,
            codec,
            inline: stored.len() <= self.inner.opts.inline_threshold,
            raw_size,
            stored_size: n,
            disk_bytes: n,
            since: at,
            level: None,
        };
        self.new_record(hash, &blob, opts, at)
    }

    /// Stores a remote hit fetched at `at`, already verified against
    /// `hash` (and checked by [`Store::check_remote_hit`]), with its stored
    /// bytes as they came: neither verified nor compressed again, and not
    /// sent back there. Newer wins: an entry the key got after `at` (a
    /// local put since) is kept. Returns the record of the hit.
    #[cfg(feature = "redis")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store_remote_hit(
        &self,
        key: &[u8],
        payload: &[u8],
        codec: Codec,
        stored: Vec<u8>,
        hash: BlobHash,
        opts: &PutOptions,
        at: u64,
    ) -> Result<Record> {
        let mut source = Source::Bytes {
            payload,
            encoded: Some((codec, stored)),
        };
        let raw_size = payload.len() as u64;
        let (_, record) = self.commit_put(key, &mut source, hash, raw_size, opts, Some(at))?;
        Ok(record)
    }

    /// Stores a payload read from `src`, in bounded memory: payloads over a
    /// few MiB are hashed and compressed as they stream into a staging file.
    /// With [`StoreOptions::deny_secrets`], the stream is scanned as it is
    /// read; a payload holding a secret is refused and nothing is kept.
    pub fn put_reader(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        src: impl Read,
        opts: &PutOptions,
    ) -> Result<PutReport> {
        let key = key::encode(backend, signature.as_ref())?;
        self.guard_put(backend, signature.as_ref(), &key, None, opts)?;
        let mut src = self.inner.opts.secrets.scan_reader(src);
        let tripped = src.tripped();
        let read_error = |e| match tripped.load(std::sync::atomic::Ordering::SeqCst) {
            true => crate::secrets::refusal(Some(&key), "payload"),
            false => source_error(&key, e),
        };
        if let Some(e) = self.engine() {
            let done = e.put_reader(backend, signature, &[], &mut src, &self.put_meta(opts));
            let done = match done {
                Err(Error::Source { source, .. }) => Err(read_error(source)),
                other => other,
            };
            return self.committed_v2(&key, done);
        }
        let mut first = Vec::new();
        (&mut src)
            .take(STREAM_MIN as u64)
            .read_to_end(&mut first)
            .map_err(read_error)?;
        if first.len() < STREAM_MIN {
            return self.put_bytes(&key, &first, opts);
        }
        let codec = blobs::choose_stream_codec(&first, self.inner.opts.compression_level);
        let staged = self
            .inner
            .blobs
            .write_stream(&first, &mut src, codec, self.inner.opts.compression_level)
            .map_err(|e| match e {
                StreamError::Source(e) => read_error(e),
                StreamError::Store(e) => e,
            })?;
        let (hash, raw) = (staged.written.hash, staged.written.raw_size);
        let mut source = Source::Staged(staged);
        let (report, _) = self.commit_put(&key, &mut source, hash, raw, opts, None)?;
        let remote = &self.inner.remote;
        remote.after_put(self, &key, None, &report, opts)?;
        Ok(report)
    }

    /// Gets the blob into place and inserts the record, retrying while the
    /// sweeper is deleting the same blob. Returns the report and the record
    /// inserted; `source` keeps the stored bytes it encoded, if any.
    /// `hit_at`: a remote hit fetched then, recorded as created then and
    /// inserted only over an older entry (see [`MergePolicy::Newer`]).
    fn commit_put(
        &self,
        key: &[u8],
        source: &mut Source<'_>,
        hash: BlobHash,
        raw_size: u64,
        opts: &PutOptions,
        hit_at: Option<u64>,
    ) -> Result<(PutReport, Record)> {
        let now = hit_at.unwrap_or_else(|| self.now());
        let mut gone_seen = None;
        let mut reuse_known = true;
        for attempt in 0..PUT_ATTEMPTS {
            let (blob, inline, existed) =
                self.place_blob(source, &hash, raw_size, now, reuse_known)?;
            let record = self.new_record(&hash, &blob, opts, now);
            let expires_at = record.expires_at;
            let item = ImportItem {
                key: ByteBuf::from(key.to_vec()),
                record: record.clone(),
                blob: blob.clone(),
                inline: inline.map(ByteBuf::from),
                gone_seen,
            };
            let op = match hit_at {
                None => item.into_put(),
                Some(_) => Op::Import {
                    items: vec![item],
                    policy: MergePolicy::Newer,
                },
            };
            crate::gc::hooks::blob_placed(&hash);
            match self.apply(&op)? {
                Outcome::Retry { gone_since, .. } => {
                    reuse_known = false;
                    match gone_since {
                        Some(since) => gone_seen = Some(since),
                        None => {
                            // A claim no sweeper is finishing (its process
                            // died) is released here.
                            if attempt >= 2 {
                                self.release_stale_claim(&hash);
                            }
                            std::thread::sleep(Duration::from_millis(2 + 2 * u64::from(attempt)))
                        }
                    }
                }
                _ => {
                    self.count(|c| c.puts = 1);
                    self.after_put();
                    let report = PutReport {
                        hash,
                        raw_size,
                        stored_size: blob.stored_size,
                        compressed: blob.codec == Codec::Zstd,
                        inline: blob.inline,
                        deduplicated: existed,
                        expires_at,
                    };
                    return Ok((report, record));
                }
            }
        }
        Err(Error::Busy {
            hash: hash.to_hex(),
            attempts: PUT_ATTEMPTS,
        })
    }

    /// Makes sure the blob is stored (file in place, or inline bytes ready)
    /// and returns its info, the inline bytes to send, and whether it
    /// already existed.
    fn place_blob(
        &self,
        source: &mut Source<'_>,
        hash: &BlobHash,
        raw_size: u64,
        now: u64,
        reuse_known: bool,
    ) -> Result<(BlobInfo, Option<Vec<u8>>, bool)> {
        let template = |codec, inline, stored_size, disk_bytes| BlobInfo {
            version: RECORD_VERSION,
            refs: 1,
            state: BlobState::Live,
            codec,
            inline,
            raw_size,
            stored_size,
            disk_bytes,
            since: now,
            level: None,
        };
        if reuse_known && let Some(info) = self.reusable_blob(hash)? {
            return Ok((info, None, true));
        }
        match source {
            Source::Staged(staged) => {
                self.inner.blobs.link_staged(staged)?;
                let w = &staged.written;
                Ok((
                    template(w.codec, false, w.stored_size, w.disk_bytes),
                    None,
                    w.existed,
                ))
            }
            Source::Bytes { payload, encoded } => {
                let level = self.inner.opts.compression_level;
                let (codec, stored) =
                    encoded.get_or_insert_with(|| match blobs::compress(payload, level) {
                        Some(z) => (Codec::Zstd, z),
                        None => (Codec::Raw, payload.to_vec()),
                    });
                if stored.len() <= self.inner.opts.inline_threshold {
                    let n = stored.len() as u64;
                    return Ok((template(*codec, true, n, n), Some(stored.clone()), false));
                }
                let w = self
                    .inner
                    .blobs
                    .ensure_file(hash, stored, payload, *codec)?;
                Ok((
                    template(w.codec, false, w.stored_size, w.disk_bytes),
                    None,
                    w.existed,
                ))
            }
        }
    }

    /// The index's info on `hash` if the blob can be reused as it is, so a
    /// duplicate payload is neither compressed nor written again.
    pub(crate) fn reusable_blob(&self, hash: &BlobHash) -> Result<Option<BlobInfo>> {
        let Some(info) = self.inner.share.blob_info(hash)? else {
            return Ok(None);
        };
        if info.state != BlobState::Live {
            return Ok(None);
        }
        if info.inline {
            return Ok(Some(info));
        }
        let on_disk = self.inner.blobs.file_meta(hash).ok();
        let intact = on_disk.is_some_and(|m| m.is_file() && m.len() == info.stored_size);
        if intact && self.inner.blobs.touch(hash).is_ok() {
            return Ok(Some(info));
        }
        Ok(None)
    }

    fn new_record(&self, hash: &BlobHash, blob: &BlobInfo, opts: &PutOptions, now: u64) -> Record {
        let ttl = opts
            .ttl
            .unwrap_or_else(|| self.inner.opts.ttl.ttl_for(&opts.category));
        Record {
            version: RECORD_VERSION,
            hash: *hash,
            codec: blob.codec,
            inline: blob.inline,
            raw_size: blob.raw_size,
            stored_size: blob.stored_size,
            created_at: now,
            fetched_at: opts.fetched_at.unwrap_or(now),
            expires_at: add_ms(now, ttl),
            category: opts.category.as_str().to_string(),
            content_type: opts.content_type.clone(),
            headers: record::redact_headers(&opts.headers, &self.inner.opts.drop_headers),
            hits: 0,
            last_access: now,
            pinned: opts.pinned,
        }
    }

    /// The live entry at `(backend, signature)`, or `None` if it is absent,
    /// expired, or its blob is missing or damaged (such an entry is dropped
    /// and the event logged and counted).
    pub fn get(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<Option<Hit>> {
        self.read(backend, signature.as_ref(), false)
    }

    /// Like [`Store::get`], but also returns an expired entry (flagged
    /// `stale`) as long as GC has not removed it: for serving something when
    /// the upstream is down.
    pub fn get_stale(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<Option<Hit>> {
        self.read(backend, signature.as_ref(), true)
    }

    fn read(&self, backend: &str, signature: &[u8], allow_stale: bool) -> Result<Option<Hit>> {
        let key = key::encode(backend, signature)?;
        let now = self.now();
        let l1 = self.inner.l1.as_ref().filter(|_| !allow_stale);
        if let Some((data, meta)) = l1.and_then(|t| t.get(&key, now)) {
            self.note_hit(&key, now, false);
            return Ok(Some(Hit {
                data,
                meta,
                stale: false,
            }));
        }
        let generation = l1.map(MemoryTier::generation);
        if let Some(e) = self.engine() {
            let found = match allow_stale {
                true => e.get_stale(backend, signature)?,
                false => e.get(backend, signature)?,
            };
            let Some(hit) = found else {
                self.count(|c| c.misses = 1);
                return Ok(None);
            };
            let meta = EntryMeta::from_info(&key, &hit.info, &hit.headers);
            return Ok(Some(self.served(
                &key,
                hit.data,
                meta,
                now,
                hit.expired,
                l1,
                generation,
            )));
        }
        // A second attempt is needed only when the entry changed between the
        // record look-up and the blob read (a concurrent put or delete).
        for _ in 0..3 {
            let (Lookup { record, inline }, stale) =
                match self.lookup_live(&key, now, allow_stale)? {
                    None => return Ok(None),
                    Some(Found::Local(lookup, stale)) => (lookup, stale),
                    // Verified once, in the tier: served as it is.
                    Some(Found::Remote(Filled { record, data })) => {
                        let meta = EntryMeta::from_record(&key, &record);
                        return Ok(Some(
                            self.served(&key, data, meta, now, false, l1, generation),
                        ));
                    }
                };
            let data = match &inline {
                Some(stored) => blobs::decode(stored, record.codec, record.raw_size, &record.hash),
                None if record.inline => Err(BlobError::Missing),
                None => self
                    .inner
                    .blobs
                    .read_file(&record.hash, record.codec, record.raw_size),
            };
            match data {
                Ok(data) => {
                    let meta = EntryMeta::from_record(&key, &record);
                    return Ok(Some(
                        self.served(&key, data, meta, now, stale, l1, generation),
                    ));
                }
                Err(e) => {
                    if self.unusable(&key, &record, e)? {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The hit of verified `data` described by `meta`: counted, and kept in the
    /// memory tier (when it has one and is not serving stale entries).
    #[allow(clippy::too_many_arguments)]
    fn served(
        &self,
        key: &[u8],
        data: Vec<u8>,
        meta: EntryMeta,
        now: u64,
        stale: bool,
        l1: Option<&MemoryTier>,
        generation: Option<u64>,
    ) -> Hit {
        self.note_hit(key, now, stale);
        if let (Some(t), Some(g)) = (l1, generation) {
            t.insert(key, &data, &meta, now, g);
        }
        Hit { data, meta, stale }
    }

    /// Handles a blob that could not be read: environmental errors are
    /// returned; a missing or damaged blob drops the entry (true), unless
    /// the entry changed meanwhile (false: read again).
    fn unusable(&self, key: &[u8], record: &Record, err: BlobError) -> Result<bool> {
        match err {
            BlobError::Io(e) => Err(e),
            BlobError::Missing => Ok(self.heal(key, record, "its blob is missing")),
            BlobError::Corrupt(why) => Ok(self.heal(key, record, &why)),
        }
    }

    /// Looks the key up and applies expiry; on a local miss (or an expired
    /// entry) asks the remote tier, whose hit comes back verified and
    /// already stored. Counts a miss when there is nothing to serve.
    fn lookup_live(&self, key: &[u8], now: u64, allow_stale: bool) -> Result<Option<Found>> {
        let found = self.inner.share.lookup(key)?;
        let expired = |l: &Lookup| now >= l.record.expires_at;
        if found.as_ref().is_none_or(expired)
            && let Some(filled) = self.inner.remote.fill(self, key, now)?
        {
            return Ok(Some(Found::Remote(filled)));
        }
        let Some(lookup) = found else {
            self.count(|c| c.misses = 1);
            return Ok(None);
        };
        let stale = now >= lookup.record.expires_at;
        if stale && !allow_stale {
            self.count(|c| c.misses = 1);
            return Ok(None);
        }
        Ok(Some(Found::Local(lookup, stale)))
    }

    fn note_hit(&self, key: &[u8], now: u64, stale: bool) {
        self.count(|c| {
            if stale {
                c.stale_hits = 1;
            } else {
                c.hits = 1;
            }
        });
        if !self.inner.opts.track_access {
            return;
        }
        self.inner
            .share
            .record_access([(key.to_vec(), Access { hits: 1, last: now })]);
    }

    /// Drops an entry whose blob is missing or damaged, so the cache heals
    /// itself; the next put of the same payload writes a fresh blob.
    /// Returns false, doing nothing, when the entry no longer holds
    /// `record`: then the blob went away with a concurrent change, not
    /// through damage.
    fn heal(&self, key: &[u8], record: &Record, why: &str) -> bool {
        if let Ok(current) = self.inner.share.lookup(key)
            && current.is_none_or(|l| {
                l.record.hash != record.hash || l.record.created_at != record.created_at
            })
        {
            return false;
        }
        log::warn!(
            "entry {} dropped: blob {} is unusable ({why})",
            key::display(key),
            record.hash
        );
        self.count(|c| {
            c.corrupt = 1;
            c.misses = 1;
        });
        if !record.inline {
            self.inner.blobs.discard_corrupt(&record.hash);
        }
        let op = Op::Delete {
            key: ByteBuf::from(key.to_vec()),
            hash: Some(record.hash),
        };
        if let Err(e) = self.apply(&op) {
            log::warn!("could not drop entry {}: {e}", key::display(key));
        }
        true
    }

    /// Streams the live entry's payload (see [`EntryReader`]); large blobs
    /// are never loaded whole (memory: one 1 MiB group plus the zstd
    /// window).
    pub fn get_reader(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
    ) -> Result<Option<EntryReader>> {
        self.open_reader(backend, signature.as_ref(), false)
    }

    /// Like [`Store::get_reader`], but also serves an expired entry.
    pub fn get_reader_stale(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
    ) -> Result<Option<EntryReader>> {
        self.open_reader(backend, signature.as_ref(), true)
    }

    fn open_reader(
        &self,
        backend: &str,
        signature: &[u8],
        allow_stale: bool,
    ) -> Result<Option<EntryReader>> {
        if self.engine().is_some() {
            // Read whole and verified (payloads of format 2 are not
            // streamed from the cache yet).
            let Some(hit) = self.read(backend, signature, allow_stale)? else {
                return Ok(None);
            };
            let hash = hit.meta.hash;
            return Ok(Some(EntryReader {
                meta: hit.meta,
                stale: hit.stale,
                reader: VerifyingReader::verified(hit.data, hash),
            }));
        }
        let key = key::encode(backend, signature)?;
        let now = self.now();
        let (Lookup { record, inline }, stale) = match self.lookup_live(&key, now, allow_stale)? {
            None => return Ok(None),
            Some(Found::Local(lookup, stale)) => (lookup, stale),
            Some(Found::Remote(Filled { record, data })) => {
                self.note_hit(&key, now, false);
                return Ok(Some(EntryReader {
                    meta: EntryMeta::from_record(&key, &record),
                    stale: false,
                    reader: VerifyingReader::verified(data, record.hash),
                }));
            }
        };
        let opened = match inline {
            Some(stored) => blobs::decode(&stored, record.codec, record.raw_size, &record.hash)
                .map(|data| {
                    VerifyingReader::new(
                        Box::new(std::io::Cursor::new(data)),
                        record.hash,
                        record.raw_size,
                    )
                }),
            None if record.inline => Err(BlobError::Missing),
            // Nothing reaches the caller before it is verified.
            None => self
                .inner
                .blobs
                .open_verified(&record.hash, record.codec, record.raw_size),
        };
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                self.unusable(&key, &record, e)?;
                return Ok(None);
            }
        };
        let healer = self.clone();
        let (hkey, hrec) = (key.clone(), record.clone());
        let reader = reader.on_corrupt(move |why| {
            healer.heal(&hkey, &hrec, why);
        });
        self.note_hit(&key, now, stale);
        Ok(Some(EntryReader {
            meta: EntryMeta::from_record(&key, &record),
            stale,
            reader,
        }))
    }

    /// The entry's metadata (live or expired) without reading its payload.
    pub fn meta(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<Option<EntryMeta>> {
        let key = key::encode(backend, signature.as_ref())?;
        if let Some(e) = self.engine() {
            let info = e.info(backend, signature)?;
            return Ok(info.map(|(i, h)| EntryMeta::from_info(&key, &i, &h)));
        }
        let local = self.inner.share.lookup(&key)?.map(|l| l.record);
        // A remote hit served but not stored yet counts as held.
        let now = self.now();
        let record = match local {
            Some(r) if now < r.expires_at => Some(r),
            other => self.inner.remote.pending_record(&key, now).or(other),
        };
        Ok(record.map(|r| EntryMeta::from_record(&key, &r)))
    }

    /// True when a live (unexpired) entry exists. Does not read the blob.
    pub fn contains(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<bool> {
        let now = self.now();
        Ok(self
            .meta(backend, signature)?
            .is_some_and(|m| !m.is_expired_at(now)))
    }

    /// Removes the entry; true if it existed. Its blob is freed when no
    /// other entry uses it (files are reclaimed by GC).
    pub fn delete(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<bool> {
        let key = key::encode(backend, signature.as_ref())?;
        if let Some(e) = self.engine() {
            let done = e.delete(backend, signature);
            self.forget_v2(&[key]);
            return done;
        }
        self.inner.remote.after_delete(&key, true)?;
        let op = Op::Delete {
            key: ByteBuf::from(key),
            hash: None,
        };
        Ok(self.apply(&op)? == Outcome::Applied(true))
    }

    /// Sets the entry to expire `ttl` from now (extending or shortening
    /// it); true if it existed.
    pub fn touch(&self, backend: &str, signature: impl AsRef<[u8]>, ttl: Duration) -> Result<bool> {
        let key = key::encode(backend, signature.as_ref())?;
        if let Some(e) = self.engine() {
            let done = e.touch(backend, signature, Some(ttl));
            self.forget_v2(&[key]);
            return done;
        }
        self.inner.remote.settle(self, &key);
        let op = Op::Touch {
            key: ByteBuf::from(key),
            expires_at: add_ms(self.now(), ttl),
        };
        Ok(self.apply(&op)? == Outcome::Applied(true))
    }

    /// The entries selected, in key order (backend, then signature),
    /// fetched a page at a time. Expired entries are included; check
    /// [`EntryMeta::is_expired_at`].
    pub fn list(&self, selector: &Selector) -> Result<Entries> {
        Ok(Entries {
            store: self.clone(),
            prefix: selector.key_prefix()?,
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        })
    }

    /// Removes the selected entries; returns how many.
    pub fn clear(&self, selector: &Selector) -> Result<u64> {
        self.clear_with_progress(selector, |_| {})
    }

    /// Like [`Store::clear`], calling `progress` with the running count of
    /// removed entries after each page (about a thousand entries).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use blobcache::{PutOptions, Selector, Store, StoreOptions};
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// store.put("tmdb", "movie/1", b"{}", &PutOptions::new())?;
    /// let mut last = 0;
    /// let n = store.clear_with_progress(&Selector::backend("tmdb"), |done| last = done)?;
    /// assert_eq!((n, last), (1, 1));
    /// # Ok::<(), blobcache::Error>(())
    /// ```
    pub fn clear_with_progress(
        &self,
        selector: &Selector,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let prefix = selector.key_prefix()?;
        if let Some(e) = self.engine() {
            return self.clear_v2(e, &prefix, progress);
        }
        self.inner.remote.after_delete(&prefix, false)?;
        let mut removed = 0;
        loop {
            let page = self.inner.share.scan(&prefix, None, PAGE)?;
            if page.is_empty() {
                return Ok(removed);
            }
            let keys = page.into_iter().map(|(k, _)| ByteBuf::from(k)).collect();
            if let Outcome::Count(n) = self.apply(&Op::DeleteMany { keys })? {
                removed += n;
                progress(removed);
            }
        }
    }

    /// [`Store::clear_with_progress`] on a format-2 cache.
    fn clear_v2(&self, e: &Engine, prefix: &[u8], mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut removed = 0;
        loop {
            let page = e.scan(prefix, None, PAGE)?;
            if page.is_empty() {
                return Ok(removed);
            }
            let keys: Vec<Vec<u8>> = page.into_iter().map(|(k, ..)| k).collect();
            let done = e.delete_keys(&keys);
            self.forget_v2(&keys);
            removed += done?;
            progress(removed);
        }
    }

    /// Removes every expired entry now (without GC's grace period); returns
    /// how many.
    pub fn purge_expired(&self) -> Result<u64> {
        if let Some(e) = self.engine() {
            return e.purge_expired();
        }
        let now = self.now();
        let mut removed = 0;
        loop {
            let keys = self.inner.share.expired_keys(now, PAGE)?;
            if keys.is_empty() {
                return Ok(removed);
            }
            let keys = keys.into_iter().map(ByteBuf::from).collect();
            match self.apply(&Op::Expire { keys, before: now })? {
                Outcome::Count(0) => return Ok(removed),
                Outcome::Count(n) => removed += n,
                _ => return Ok(removed),
            }
        }
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<Stats> {
        if let Some(e) = self.engine() {
            return self.stats_v2(e);
        }
        let index = &self.inner.share;
        let state = index.state()?;
        let expired = index.count_expired(self.now())?.min(state.entries);
        let c = index.counters()?;
        let backends = index
            .backends()?
            .into_iter()
            .map(|(name, t)| BackendStats {
                name,
                entries: t.entries,
                raw_bytes: t.raw_bytes,
            })
            .collect();
        Ok(Stats {
            entries: state.entries,
            live: state.entries - expired,
            expired,
            blobs: state.blobs,
            raw_bytes: state.raw_bytes,
            blob_bytes: state.blob_bytes,
            index_bytes: self.index_disk_bytes(),
            hits: c.hits,
            misses: c.misses,
            stale_hits: c.stale_hits,
            puts: c.puts,
            corrupt: c.corrupt,
            index_resets: c.index_resets,
            backends,
            remote: self.inner.remote.stats(),
        })
    }

    /// [`Store::stats`] of a format-2 cache: `blobs` counts one payload per
    /// entry, `blob_bytes` the pack files plus the blob files' stored
    /// sizes; counters are this process's since open.
    fn stats_v2(&self, e: &Engine) -> Result<Stats> {
        let s = e.stats()?;
        let c = &self.inner.counts;
        let packs: u64 = s.packs.iter().map(|p| p.file_bytes).sum();
        let backends = s
            .backends
            .into_iter()
            .map(|(name, entries, raw_bytes)| BackendStats {
                name,
                entries,
                raw_bytes,
            })
            .collect();
        Ok(Stats {
            entries: s.entries,
            live: s.entries - s.expired,
            expired: s.expired,
            blobs: s.entries,
            raw_bytes: s.raw_bytes,
            blob_bytes: packs + s.blob_file_bytes,
            index_bytes: self.index_disk_bytes(),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stale_hits: c.stale_hits.load(Ordering::Relaxed),
            puts: c.puts.load(Ordering::Relaxed),
            corrupt: s.corrupt_reads,
            index_resets: 0,
            backends,
            remote: None,
        })
    }

    /// Makes everything written so far durable in the index now (it
    /// otherwise happens every flush interval and on close). With a remote
    /// tier, first waits (a few seconds at most) until the remote hits
    /// served so far are stored locally and the queued writes are sent.
    pub fn flush(&self) -> Result<()> {
        if let Some(e) = self.engine() {
            return e.flush();
        }
        self.inner.remote.drain();
        self.inner.share.checkpoint()
    }

    /// Checks the whole cache for inconsistencies and, with
    /// [`VerifyOptions::repair`], fixes them. Writes wait while the index
    /// is snapshotted (and while it is repaired); reads go on.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// use blobcache::{PutOptions, Store, StoreOptions, VerifyOptions};
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// store.put("b", "s", b"payload", &PutOptions::new())?;
    /// let report = store.verify(VerifyOptions::new().full(true))?;
    /// assert!(report.is_clean(), "{:?}", report.problems);
    /// # Ok::<(), blobcache::Error>(())
    /// ```
    pub fn verify(&self, opts: VerifyOptions) -> Result<VerifyReport> {
        if let Some(e) = self.engine() {
            return crate::verify::verify_v2(self, e, opts);
        }
        self.inner.share.verify(self, opts)
    }

    /// Applies `op` to the index, then drops what it changed from the
    /// memory tier. Every index change goes through here.
    pub(crate) fn apply(&self, op: &Op) -> Result<Outcome> {
        let outcome = self.apply_index(op);
        if let Some(t) = &self.inner.l1 {
            t.invalidate(op);
        }
        outcome
    }

    /// Applies `op` to the index (here or in the owner). A change that
    /// frees space and fails on a full disk releases the space reserve and
    /// is tried again.
    pub(crate) fn apply_index(&self, op: &Op) -> Result<Outcome> {
        let outcome = self.inner.share.apply(op);
        match &outcome {
            Err(e)
                if reserve::is_disk_full(e)
                    && op.frees_space()
                    && self.inner.writable.release_reserve(&self.inner.layout.root) =>
            {
                self.inner.share.apply(op)
            }
            _ => outcome,
        }
    }

    pub(crate) fn index(&self) -> &Share {
        &self.inner.share
    }

    pub(crate) fn flights(&self) -> &crate::fetch::Flights {
        &self.inner.flights
    }

    pub(crate) fn blob_store(&self) -> &Blobs {
        &self.inner.blobs
    }

    pub(crate) fn layout_root(&self) -> PathBuf {
        self.inner.layout.root.clone()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    pub(crate) fn sweeper(&self) -> &crate::gc::Sweeper {
        &self.inner.sweeper
    }

    /// A handle that does not keep the store open (for the sweeper and
    /// standby threads).
    pub(crate) fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }
}

impl Drop for Store {
    /// The last handle waits (bounded) until the remote hits served but
    /// not stored yet are stored: closing the store keeps them.
    fn drop(&mut self) {
        self.inner.remote.handle_dropped(self);
    }
}

/// A non-owning [`Store`] handle.
#[derive(Clone, Debug)]
pub(crate) struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    /// The store, if any handle still holds it open.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }

    /// How many [`Store`] handles are alive.
    pub fn handles(&self) -> usize {
        self.0.strong_count()
    }
}

impl Store {
    /// One page of [`Store::list`]: entries under `prefix` after `after`.
    fn scan_page(&self, prefix: &[u8], after: Option<&[u8]>) -> Result<Vec<ListedRow>> {
        if let Some(e) = self.engine() {
            let rows = e.scan(prefix, after, PAGE)?;
            return Ok(rows
                .into_iter()
                .map(|(k, i, h)| {
                    let meta = EntryMeta::from_info(&k, &i, &h);
                    (k, Ok(meta))
                })
                .collect());
        }
        let rows: Vec<RecordRow> = self.inner.share.scan(prefix, after, PAGE)?;
        Ok(rows
            .into_iter()
            .map(|(k, rec)| {
                let meta = rec.map(|r| EntryMeta::from_record(&k, &r));
                (k, meta)
            })
            .collect())
    }
}

/// A listed key with its metadata, or why its record cannot be read.
type ListedRow = (Vec<u8>, std::result::Result<EntryMeta, String>);

/// Iterator over listed entries (see [`Store::list`]).
#[derive(Debug)]
pub struct Entries {
    store: Store,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    page: std::vec::IntoIter<ListedRow>,
    done: bool,
}

impl Iterator for Entries {
    type Item = Result<EntryMeta>;

    fn next(&mut self) -> Option<Result<EntryMeta>> {
        loop {
            if let Some((k, meta)) = self.page.next() {
                return Some(match meta {
                    Ok(m) => Ok(m),
                    Err(reason) => Err(Error::CorruptRecord {
                        key: key::display(&k),
                        reason,
                    }),
                });
            }
            if self.done {
                return None;
            }
            let page = match self.store.scan_page(&self.prefix, self.after.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if page.len() < PAGE {
                self.done = true;
            }
            self.after = page.last().map(|(k, _)| k.clone());
            if page.is_empty() {
                return None;
            }
            self.page = page.into_iter();
        }
    }
}

/// Opens the index as owner or guest; on a full disk releases the space
/// reserve and tries again; on a read-only (or still full) disk opens a
/// private read-only copy instead (ARCHITECTURE.md §2, invariant 7).
fn open_share(
    layout: &Layout,
    cfg: IndexConfig,
    opts: &StoreOptions,
) -> Result<(Share, bool, Writable)> {
    let reserve = Reserve::new(&layout.root, &layout.locks, &layout.tmp);
    let open = || {
        Share::open(
            layout.clone(),
            cfg.clone(),
            opts.sharing,
            opts.owner_timeout,
        )
    };
    let mut err = match open() {
        Ok((share, reset)) => {
            let low_space = !hold_reserve(&reserve, layout);
            return Ok((share, reset, Writable::new(reserve, None, low_space)));
        }
        Err(e) => e,
    };
    if reserve::is_disk_full(&err) && reserve.release() {
        reserve::warn_released(&layout.root);
        match open() {
            Ok((share, reset)) => return Ok((share, reset, Writable::new(reserve, None, true))),
            Err(e) => err = e,
        }
    }
    let reason = if reserve::is_disk_full(&err) {
        "the disk is full and its space reserve is used up"
    } else if reserve::is_read_only(&err) {
        "its filesystem cannot be written"
    } else {
        return Err(err);
    };
    log::debug!(
        "opening {} for writing failed: {err}",
        layout.root.display()
    );
    log::warn!(
        "cache {} is read-only ({reason}): reads are served from a private copy of its \
         index, changes are refused",
        layout.root.display()
    );
    let (share, reset) = Share::open_copy(layout.clone(), cfg, reason)?;
    Ok((
        share,
        reset,
        Writable::new(reserve, Some(reason.into()), false),
    ))
}

/// Fails with [`Error::NotOnFormat2`] when `opts` asks for something a
/// format-2 cache does not do yet.
fn v2_supports(layout: &Layout, opts: &StoreOptions) -> Result<()> {
    let unsupported = [
        (opts.remote.is_some(), "the remote tier"),
        (opts.max_size.is_some(), "a size cap (max_size)"),
        (
            opts.gc_interval.is_some(),
            "the background sweep (gc_interval)",
        ),
    ];
    match unsupported.iter().find(|(set, _)| *set) {
        Some((_, what)) => Err(Error::NotOnFormat2 {
            path: layout.root.clone(),
            what: (*what).into(),
        }),
        None => Ok(()),
    }
}

/// The engine options a format-2 cache opens with.
fn engine_options(opts: &StoreOptions) -> EngineOptions {
    EngineOptions::new()
        .level(Some(opts.compression_level))
        .durability(opts.durability)
        .cache_bytes(opts.cache_capacity)
        .index_flush(Some(opts.flush_interval))
        .clock(opts.clock.clone())
}

/// Makes sure the space reserve is allocated; false when the disk is too
/// full for it (puts then wait until it is).
fn hold_reserve(reserve: &Reserve, layout: &Layout) -> bool {
    match reserve.restore() {
        Ok(true) => true,
        Ok(false) => {
            log::warn!(
                "the disk holding cache {} is nearly full: puts are refused until space is freed",
                layout.root.display()
            );
            false
        }
        Err(e) => {
            // Not a full disk (e.g. an odd filesystem): the cache works
            // without a reserve.
            log::debug!("no space reserve for {}: {e}", layout.root.display());
            true
        }
    }
}

fn source_error(key: &[u8], e: std::io::Error) -> Error {
    Error::Source {
        key: key::display(key),
        source: e,
    }
}
