//! Storage core v2 (in progress, not used by [`crate::Store`] yet): the
//! engine over pack files, blob files and a lean sled index.
//!
//! ```text
//! <dir>/packs/NNNNNNNN.pack   needles: payloads and the index changes they carry
//! <dir>/locks/pack-*.lock     one per pack, held by its writer
//! <dir>/index/                sled: `records` key -> 80-byte lean record,
//!                             `headers` id -> header set, `applied` pack -> offset,
//!                             `dicts` backend -> dictionary id
//! <dir>/dicts/NNNN.zdict      zstd dictionaries (one per backend, and past ones)
//! <dir>/blobs/ab/cd…          payloads above the blob threshold, one file each
//! <dir>/tmp/                  staging of blob files
//! ```
//!
//! A put is one needle appended to this process's pack, carrying the key
//! and the very lean record the index will hold (so the pack is the
//! write-ahead log, as in WiscKey), then one sled insert. After a crash,
//! [`Engine::open`] re-applies the needles past each pack's `applied`
//! watermark. Every read verifies the needle's checksum and the payload's
//! blake3; a damaged payload is a miss, counted, and the entry is dropped.
//!
//! Layering: the engine uses the format and storage layers below it
//! (`pack`, `blobs`, `key`, `fsutil`, `clock`, errors), never the store,
//! sharing, GC, archives or the CLI. One process at a time: sled locks the
//! index, and other processes will reach the engine through the owner
//! socket (not wired yet). See `ARCHITECTURE.md`, "Storage core v2".

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::blobs::{self, BlobError, BlobHash, Blobs, StreamError};
use crate::clock::{Clock, SystemClock, add_ms};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::key;
use crate::pack::{
    DictDir, Dictionary, FILE_HEADER_LEN, LeanRecord, Location, NeedleCodec, PackDir, PackError,
    PackReader, PackWriter, PackWriterOptions, Place, Prepared, ReadMode,
};
use crate::policy::Durability;
use crate::record::Codec;

mod carry;
mod check;
mod compact;
mod dictionaries;
pub mod headers;
mod intent;
mod recovery;
mod sweep;

pub use carry::Carried;
pub use check::{CheckOptions, CheckProgress, CheckReport, Damage, Finding};
pub use compact::CompactReport;
use dictionaries::Dictionaries;
pub use headers::HeaderSet;
use headers::{HeaderSets, Named};
use intent::{Intent, SET_LEN};
pub use sweep::{SweepOptions, SweepReport};

/// Payloads larger than this go to blob files (streamed, one file each,
/// deduplicated by name) instead of pack needles.
pub const DEFAULT_BLOB_THRESHOLD: usize = 256 * 1024;
/// The `applied` watermark of the active pack is written every this many
/// needles (and when a pack is sealed, and at close).
const MARK_EVERY: u32 = 1024;

/// How an [`Engine`] stores and reads.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    level: Option<i32>,
    blob_threshold: usize,
    max_pack_bytes: u64,
    durability: Durability,
    read_mode: ReadMode,
    cache_bytes: u64,
    index_flush: Option<Duration>,
    dict_samples: usize,
    dict_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            level: Some(3),
            blob_threshold: DEFAULT_BLOB_THRESHOLD,
            max_pack_bytes: crate::pack::writer::DEFAULT_MAX_PACK_BYTES,
            durability: Durability::Buffered,
            read_mode: ReadMode::Pread,
            cache_bytes: 64 << 20,
            index_flush: Some(Duration::from_millis(500)),
            dict_samples: 1000,
            dict_bytes: 32 * 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

impl EngineOptions {
    /// The defaults: zstd 3, 256 KiB blob threshold, 256 MiB packs,
    /// buffered, `pread` reads, 64 MiB index cache, a 32 KiB dictionary
    /// per backend trained from its first 1,000 small payloads.
    pub fn new() -> Self {
        Self::default()
    }

    /// zstd level, or `None` to store payloads raw.
    pub fn level(mut self, level: Option<i32>) -> Self {
        self.level = level.map(|l| l.clamp(blobs::MIN_LEVEL, blobs::MAX_LEVEL));
        self
    }

    /// Payloads larger than this many bytes become blob files (at most
    /// the needle limit, 64 MiB).
    pub fn blob_threshold(mut self, bytes: usize) -> Self {
        self.blob_threshold = bytes.min(crate::pack::MAX_RAW as usize);
        self
    }

    /// Size at which the active pack is sealed.
    pub fn max_pack_bytes(mut self, bytes: u64) -> Self {
        self.max_pack_bytes = bytes;
        self
    }

    /// `Buffered` (acknowledged once the OS has the needle) or `Synced`
    /// (after `fdatasync` of the pack; the index itself is never waited for).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// `pread` per read, or a memory map of each pack.
    pub fn read_mode(mut self, mode: ReadMode) -> Self {
        self.read_mode = mode;
        self
    }

    /// sled's cache size.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// How often sled flushes in the background (`None`: only at close;
    /// tests use it to make crash recovery do all the work).
    pub fn index_flush(mut self, every: Option<Duration>) -> Self {
        self.index_flush = every;
        self
    }

    /// Per-backend zstd dictionaries: once a backend without one has
    /// put `samples` payloads of at most 16 KiB since open, a dictionary
    /// of at most `max_bytes` is trained from them and its later needles
    /// use it (0 samples: never). Earlier needles keep their encoding.
    pub fn dictionaries(mut self, samples: usize, max_bytes: usize) -> Self {
        self.dict_samples = samples;
        self.dict_bytes = max_bytes.clamp(256, crate::pack::dict::MAX_DICT);
        self
    }

    /// The clock expiry is judged by.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// What a put records besides the payload.
#[derive(Clone, Debug, Default)]
pub struct PutMeta {
    /// Time to live (`None`: never expires).
    pub ttl: Option<Duration>,
    /// Content type, category and headers (stored once per distinct set).
    pub headers: HeaderSet,
    /// Never evicted by a size cap.
    pub pinned: bool,
    /// When the upstream produced the payload, ms since the epoch
    /// (`None`: now).
    pub fetched_at: Option<u64>,
    /// An absolute expiry, ms since the epoch, taking precedence over
    /// `ttl` (`u64::MAX`: never): for entries carried over from elsewhere
    /// (a format-1 cache, an archive) that keep their own times.
    pub expires_at: Option<u64>,
    /// When the entry was first stored, ms since the epoch (`None`: now).
    pub created_at: Option<u64>,
}

/// What a put did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReport {
    /// blake3 of the payload.
    pub hash: BlobHash,
    /// Payload size.
    pub raw_size: u64,
    /// Bytes the payload takes where it is stored (needle or blob file).
    pub stored_size: u64,
    /// The payload went to a blob file.
    pub blob_file: bool,
    /// The payload is stored zstd-compressed.
    pub compressed: bool,
    /// The blob file already existed (same content): nothing new written.
    pub deduplicated: bool,
    /// Expiry, ms since the epoch (`u64::MAX`: never).
    pub expires_at: u64,
    /// Writes this put made: pack appends, sled inserts, blob files.
    pub writes: u32,
}

/// One entry of [`Engine::scan`]: its encoded key, metadata and header
/// set.
pub type Scanned = (Vec<u8>, EntryInfo, Arc<HeaderSet>);

/// An entry's metadata, from its lean record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// blake3 of the payload.
    pub hash: BlobHash,
    /// Payload size.
    pub raw_size: u64,
    /// Stored size (needle or blob file).
    pub stored_size: u64,
    /// Expiry, ms since the epoch (`None`: never).
    pub expires_at: Option<u64>,
    /// When the entry was written (ms).
    pub created_at: u64,
    /// When the upstream produced it (ms).
    pub fetched_at: u64,
    /// Pinned.
    pub pinned: bool,
    /// Held in a blob file (else a pack needle).
    pub blob_file: bool,
    /// Stored zstd-compressed.
    pub compressed: bool,
}

impl EntryInfo {
    fn of(r: &LeanRecord) -> EntryInfo {
        EntryInfo {
            hash: r.hash,
            raw_size: r.raw_size,
            stored_size: r.stored_size(),
            expires_at: (r.expires_at != u64::MAX).then_some(r.expires_at),
            created_at: r.created_at,
            fetched_at: r.fetched_at,
            pinned: r.pinned,
            blob_file: matches!(r.place, Place::BlobFile { .. }),
            compressed: r.zstd,
        }
    }
}

/// A payload read back, verified.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The payload.
    pub data: Vec<u8>,
    /// Its metadata.
    pub info: EntryInfo,
    /// Its header set.
    pub headers: Arc<HeaderSet>,
    /// Past its expiry (only [`Engine::get_stale`] returns these).
    pub expired: bool,
}

/// One pack's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackStats {
    /// Pack id.
    pub pack: u32,
    /// Length of the file.
    pub file_bytes: u64,
    /// Bytes of needles the index points to.
    pub live_bytes: u64,
    /// Everything else: overwritten, deleted and control needles (what
    /// compaction would reclaim).
    pub dead_bytes: u64,
}

/// What the engine holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Entries in the index (expired ones included).
    pub entries: u64,
    /// Of those, entries past their expiry.
    pub expired: u64,
    /// Per backend, in name order: its name, entries and payload bytes.
    pub backends: Vec<(String, u64, u64)>,
    /// Sum of payload sizes.
    pub raw_bytes: u64,
    /// Sum of stored sizes.
    pub stored_bytes: u64,
    /// Entries whose payload is a blob file.
    pub blob_entries: u64,
    /// Sum of those entries' stored sizes (a file shared by equal
    /// payloads counts once per entry).
    pub blob_file_bytes: u64,
    /// Distinct header sets stored.
    pub header_sets: u64,
    /// zstd dictionaries stored (every backend's, past and current).
    pub dictionaries: u64,
    /// Every pack.
    pub packs: Vec<PackStats>,
    /// Reads that found a damaged or missing payload (since open).
    pub corrupt_reads: u64,
    /// What recovery did at open.
    pub recovery: Recovery,
}

/// What [`Engine::open`] re-applied from the pack tails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Needles read past the watermarks.
    pub scanned: u64,
    /// Index changes re-applied (all scanned needles; re-applying one the
    /// index already had is harmless).
    pub applied: u64,
    /// Torn-tail bytes cut off.
    pub truncated: u64,
    /// Damaged ranges skipped.
    pub damaged: u64,
}

struct Writer {
    packs: PackWriter,
    /// The last needle written: its pack's watermark is due.
    last: Option<Location>,
    since_mark: u32,
    /// While a sweep runs: the blob files puts named since it began
    /// (see `sweep`).
    sweeping: Option<std::collections::HashSet<BlobHash>>,
}

/// The v2 storage engine of one cache directory. `Send + Sync`; clone an
/// `Arc` of it to share between threads.
pub struct Engine {
    root: PathBuf,
    index_path: PathBuf,
    opts: EngineOptions,
    db: sled::Db,
    records: sled::Tree,
    applied: sled::Tree,
    headers: HeaderSets,
    dicts: Arc<Dictionaries>,
    writer: Mutex<Writer>,
    reader: PackReader,
    dir: PackDir,
    blobs: Blobs,
    corrupt: AtomicU64,
    recovery: Recovery,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("index", &self.index_path)
            .finish()
    }
}

/// Why a payload could not be returned.
enum ReadFailure {
    /// Damaged or missing: a miss, counted.
    Bad(String),
    /// The filesystem failed: an error.
    Io(Error),
}

impl Engine {
    /// Opens (creating when needed) the engine at `root`, re-applying the
    /// index changes the pack tails hold past their watermarks.
    pub fn open(root: &Path, opts: EngineOptions) -> Result<Engine> {
        fsutil::ensure_private_dir(root)?;
        let index_path = root.join("index");
        for d in ["index", "blobs", "tmp"] {
            fsutil::ensure_private_dir(&root.join(d))?;
        }
        let db = open_sled(&index_path, &opts)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| Error::index(&index_path, e));
        let (records, applied) = (tree("records")?, tree("applied")?);
        let headers = HeaderSets::new(tree("headers")?);
        let wopts = PackWriterOptions::new()
            .max_pack_bytes(opts.max_pack_bytes)
            .durability(opts.durability)
            .level(opts.level);
        let packs = PackWriter::open(root, wopts).map_err(pack_error)?;
        let level = opts.level.unwrap_or(3);
        let dict_dir = Arc::new(DictDir::open(root, &root.join("tmp"), level).map_err(pack_error)?);
        let dicts = Arc::new(Dictionaries::open(
            dict_dir.clone(),
            tree("dicts")?,
            &index_path,
        )?);
        let reader = PackReader::open(root, opts.read_mode)
            .map_err(pack_error)?
            .with_dictionaries(dict_dir);
        let dir = PackDir::open(root, false).map_err(pack_error)?;
        let blobs = Blobs::new(
            root.join("blobs"),
            root.join("tmp"),
            opts.durability == Durability::Synced,
        );
        blobs.clean_staging(Duration::from_secs(60))?;
        let mut engine = Engine {
            root: root.to_path_buf(),
            index_path,
            opts,
            db,
            records,
            applied,
            headers,
            dicts,
            writer: Mutex::new(Writer {
                packs,
                last: None,
                since_mark: 0,
                sweeping: None,
            }),
            reader,
            dir,
            blobs,
            corrupt: AtomicU64::new(0),
            recovery: Recovery::default(),
        };
        engine.recovery = recovery::replay(&engine)?;
        Ok(engine)
    }

    /// Stores `payload` under `(backend, signature)`. When this returns,
    /// the needle carrying the entry is in the pack with the engine's
    /// durability; the index insert follows it.
    pub fn put(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        payload: &[u8],
        meta: &PutMeta,
    ) -> Result<PutReport> {
        let key = key::encode(backend, signature.as_ref())?;
        let template = self.template(payload.len() as u64, meta);
        if payload.len() > self.opts.blob_threshold {
            return self.put_blob_file(&key, payload, template, &meta.headers);
        }
        let dict = self.dicts.current(backend);
        let report = self.put_needle(&key, payload, template, &meta.headers, dict.as_deref())?;
        if dict.is_none() && self.opts.level.is_some() {
            self.dicts.sample(
                backend,
                payload,
                self.opts.dict_samples,
                self.opts.dict_bytes,
            );
        }
        Ok(report)
    }

    /// A payload in this process's pack: compressed and hashed outside
    /// the writer lock; append and index insert inside it, so the pack's
    /// order is the index's order.
    fn put_needle(
        &self,
        key: &[u8],
        payload: &[u8],
        template: LeanRecord,
        headers: &HeaderSet,
        dict: Option<&Dictionary>,
    ) -> Result<PutReport> {
        let prepared = match dict {
            Some(d) => Prepared::with_dictionary(payload, d),
            None => Prepared::new(payload, self.opts.level),
        };
        let prepared = prepared.map_err(invalid)?;
        let mut w = self.lock_writer();
        let mut writes = 0;
        let header_set = self.name_headers(&mut w, headers, &mut writes)?;
        let base = LeanRecord {
            header_set,
            ..template
        };
        let (record, more) = self.append_set(&mut w, key, &prepared, base)?;
        writes += more;
        Ok(PutReport {
            hash: prepared.hash,
            raw_size: record.raw_size,
            stored_size: record.stored_size(),
            blob_file: false,
            compressed: record.zstd,
            deduplicated: false,
            expires_at: record.expires_at,
            writes,
        })
    }

    /// Appends a SET needle holding `prepared` for `key` whose record is
    /// `base` pointed at the needle, and applies it to the index (under
    /// the writer lock `w`). Returns the record and the writes made.
    fn append_set(
        &self,
        w: &mut Writer,
        key: &[u8],
        prepared: &Prepared<'_>,
        base: LeanRecord,
    ) -> Result<(LeanRecord, u32)> {
        let record_at = |loc: Location| LeanRecord {
            place: Place::Pack(loc),
            hash: prepared.hash,
            zstd: prepared.codec == NeedleCodec::Zstd,
            dict: prepared.dict,
            ..base
        };
        let appended = w
            .packs
            .append_located(prepared, key, SET_LEN, |loc| {
                Intent::Set(record_at(loc)).encode()
            })
            .map_err(pack_error)?;
        let record = record_at(appended.location);
        self.insert(key, &record)?;
        let marks = self.advance_mark(w, appended.location)?;
        Ok((record, 2 + marks))
    }

    /// A payload in a blob file: streamed into `tmp/` and linked into
    /// place (outside the writer lock), then a needle with the record and
    /// the index insert.
    fn put_blob_file(
        &self,
        key: &[u8],
        payload: &[u8],
        template: LeanRecord,
        headers: &HeaderSet,
    ) -> Result<PutReport> {
        let (codec, level) = self.stream_codec(payload);
        let staged = self.stage_blob_file(payload, codec, level)?;
        self.commit_blob_file(key, staged, template, headers)
    }

    /// The codec and level of a blob file whose payload starts with
    /// `first`.
    fn stream_codec(&self, first: &[u8]) -> (Codec, i32) {
        match self.opts.level {
            Some(l) => (blobs::choose_stream_codec(first, l), l),
            None => (Codec::Raw, 0),
        }
    }

    /// Stores a payload of `first` followed by what `rest` yields, in
    /// bounded memory: small ones as [`Engine::put`] does, larger ones
    /// streamed into a blob file. A failing `rest` is an
    /// [`Error::Source`] and stores nothing.
    pub fn put_reader(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        first: &[u8],
        rest: &mut dyn Read,
        meta: &PutMeta,
    ) -> Result<PutReport> {
        let key = key::encode(backend, signature.as_ref())?;
        let source = |e| Error::Source {
            key: key::display(&key),
            source: e,
        };
        let mut head = Vec::new();
        let limit = (self.opts.blob_threshold + 1).saturating_sub(first.len()) as u64;
        rest.take(limit).read_to_end(&mut head).map_err(source)?;
        if first.len() + head.len() <= self.opts.blob_threshold {
            return self.put(backend, signature, &[first, &head[..]].concat(), meta);
        }
        let (codec, level) = self.stream_codec(first);
        let mut chained = (&head[..]).chain(rest);
        let staged = match self.blobs.write_stream(first, &mut chained, codec, level) {
            Ok(staged) => staged,
            Err(StreamError::Source(e)) => return Err(source(e)),
            Err(StreamError::Store(e)) => return Err(e),
        };
        let template = self.template(staged.written.raw_size, meta);
        self.commit_blob_file(&key, staged, template, &meta.headers)
    }

    /// The record of a put at `now` before its payload is placed.
    fn template(&self, raw_size: u64, meta: &PutMeta) -> LeanRecord {
        let now = self.opts.clock.now_ms();
        LeanRecord {
            place: Place::BlobFile { stored_size: 0 },
            hash: BlobHash([0; 32]),
            raw_size,
            zstd: false,
            dict: 0,
            expires_at: meta
                .expires_at
                .unwrap_or_else(|| meta.ttl.map_or(u64::MAX, |t| add_ms(now, t))),
            created_at: meta.created_at.unwrap_or(now),
            fetched_at: meta.fetched_at.unwrap_or(now),
            pinned: meta.pinned,
            header_set: 0,
        }
    }

    /// Names the staged blob file in a needle and the index (under the
    /// writer lock).
    fn commit_blob_file(
        &self,
        key: &[u8],
        mut staged: blobs::Staged,
        template: LeanRecord,
        headers: &HeaderSet,
    ) -> Result<PutReport> {
        let mut w = self.lock_writer();
        self.keep_blob_file(&mut w, &mut staged)?;
        let written = &staged.written;
        let mut writes = 1;
        let record = LeanRecord {
            place: Place::BlobFile {
                stored_size: written.stored_size,
            },
            hash: written.hash,
            zstd: written.codec == Codec::Zstd,
            header_set: self.name_headers(&mut w, headers, &mut writes)?,
            ..template
        };
        let loc = self.log(&mut w, key, &Intent::Set(record), b"")?;
        self.insert(key, &record)?;
        writes += 2;
        writes += self.advance_mark(&mut w, loc)?;
        Ok(PutReport {
            hash: written.hash,
            raw_size: record.raw_size,
            stored_size: written.stored_size,
            blob_file: true,
            compressed: record.zstd,
            deduplicated: written.existed,
            expires_at: record.expires_at,
            writes,
        })
    }

    /// Streams `payload` into a staged blob file linked into place. A
    /// sweep may remove an existing file of the same content while this
    /// links onto it (the file is named by nobody yet): that shows as the
    /// file not found, and the staging is done again, a bounded number of
    /// times.
    fn stage_blob_file(&self, payload: &[u8], codec: Codec, level: i32) -> Result<blobs::Staged> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            let e = match self
                .blobs
                .write_stream(payload, &mut std::io::empty(), codec, level)
            {
                Ok(staged) => return Ok(staged),
                Err(StreamError::Store(e)) => e,
                Err(StreamError::Source(e)) => {
                    return Err(Error::io("read payload for", &self.index_path, e));
                }
            };
            let vanished = matches!(&e, Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound);
            if !vanished || attempt == ATTEMPTS {
                return Err(e);
            }
            log::debug!("a sweep removed a blob file while a put linked it: staging again");
            attempt += 1;
        }
    }

    /// Makes sure the blob file of `staged` is in place before a record
    /// names it (under the writer lock `w`): a sweep may have removed it
    /// between the link and the lock, and a sweep running now must keep it.
    fn keep_blob_file(&self, w: &mut Writer, staged: &mut blobs::Staged) -> Result<()> {
        let hash = staged.written.hash;
        if !self.blobs.has_file(&hash) {
            self.blobs.link_staged(staged)?;
        }
        if let Some(named) = w.sweeping.as_mut() {
            named.insert(hash);
        }
        Ok(())
    }

    /// The id of `set`, storing it first (a needle, then the index) when
    /// it is new.
    fn name_headers(&self, w: &mut Writer, set: &HeaderSet, writes: &mut u32) -> Result<u64> {
        let (id, value, hash) = match self.headers.name(set).map_err(|e| self.index_err(e))? {
            Named::Known(id) => return Ok(id),
            Named::New { id, value, hash } => (id, value, hash),
        };
        let loc = self.log(w, b"", &Intent::Headers(id), &value)?;
        self.headers
            .store(id, &value)
            .map_err(|e| self.index_err(e))?;
        self.headers.learn(hash, id);
        *writes += 2 + self.advance_mark(w, loc)?;
        Ok(id)
    }

    /// Appends a needle carrying `intent` (and `payload`) for `key`.
    fn log(&self, w: &mut Writer, key: &[u8], intent: &Intent, payload: &[u8]) -> Result<Location> {
        let record = intent.encode().map_err(invalid)?;
        let appended = w.packs.append(payload, key, &record).map_err(pack_error)?;
        Ok(appended.location)
    }

    fn insert(&self, key: &[u8], record: &LeanRecord) -> Result<()> {
        let bytes = record.encode().map_err(invalid)?;
        self.records
            .insert(key, &bytes[..])
            .map(drop)
            .map_err(|e| self.index_err(e))
    }

    /// Notes that the needle at `loc` is applied; writes the pack's
    /// watermark when a pack was sealed or `MARK_EVERY` needles passed.
    /// Returns the writes made (0 or 1 or 2).
    fn advance_mark(&self, w: &mut Writer, loc: Location) -> Result<u32> {
        let mut writes = 0;
        if let Some(last) = w.last.filter(|l| l.pack != loc.pack) {
            self.mark(last)?;
            writes += 1;
        }
        w.last = Some(loc);
        w.since_mark += 1;
        if w.since_mark >= MARK_EVERY {
            self.mark(loc)?;
            w.since_mark = 0;
            writes += 1;
        }
        Ok(writes)
    }

    /// Records that pack `loc.pack` is applied up to the end of `loc`.
    fn mark(&self, loc: Location) -> Result<()> {
        self.applied
            .insert(loc.pack.to_be_bytes(), &loc.end().to_le_bytes())
            .map(drop)
            .map_err(|e| self.index_err(e))
    }

    /// The entry, if present and not expired; payload verified.
    pub fn get(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<Option<Hit>> {
        self.read(backend, signature.as_ref(), false)
    }

    /// The entry even when expired (`Hit::expired` says so); payload
    /// verified.
    pub fn get_stale(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<Option<Hit>> {
        self.read(backend, signature.as_ref(), true)
    }

    fn read(&self, backend: &str, signature: &[u8], stale: bool) -> Result<Option<Hit>> {
        let key = key::encode(backend, signature)?;
        let Some((raw, record)) = self.record(&key)? else {
            return Ok(None);
        };
        let expired = record.expires_at <= self.opts.clock.now_ms();
        if expired && !stale {
            return Ok(None);
        }
        let headers = match self.headers.get(record.header_set) {
            Ok(h) => h,
            Err(reason) => return self.drop_corrupt(&key, raw, &reason),
        };
        let data = match self.payload(&record) {
            Ok(d) => d,
            Err(ReadFailure::Bad(reason)) if self.moved(&key, &raw)? => {
                // Compaction moved the needle and removed its pack between
                // the lookup and the read: read the new location.
                log::debug!("{} moved while read ({reason})", key::display(&key));
                return self.read(backend, signature, stale);
            }
            Err(ReadFailure::Bad(reason)) => return self.drop_corrupt(&key, raw, &reason),
            Err(ReadFailure::Io(e)) => return Err(e),
        };
        Ok(Some(Hit {
            data,
            info: EntryInfo::of(&record),
            headers,
            expired,
        }))
    }

    /// True when `key` holds a record other than `raw` now, pointing at
    /// another needle of the same payload (a compaction moved it).
    fn moved(&self, key: &[u8], raw: &sled::IVec) -> Result<bool> {
        let Some(now) = self.records.get(key).map_err(|e| self.index_err(e))? else {
            return Ok(false);
        };
        let (Ok(a), Ok(b)) = (LeanRecord::decode(raw), LeanRecord::decode(&now)) else {
            return Ok(false);
        };
        Ok(now != *raw && a.hash == b.hash && a.place != b.place)
    }

    /// The record of `key` with its raw bytes. An undecodable record is
    /// dropped and counted, like a damaged payload.
    fn record(&self, key: &[u8]) -> Result<Option<(sled::IVec, LeanRecord)>> {
        let Some(raw) = self.records.get(key).map_err(|e| self.index_err(e))? else {
            return Ok(None);
        };
        match LeanRecord::decode(&raw) {
            Ok(r) => Ok(Some((raw, r))),
            Err(reason) => self.drop_corrupt(key, raw, &reason).map(|_| None),
        }
    }

    fn payload(&self, r: &LeanRecord) -> Result<Vec<u8>, ReadFailure> {
        match r.place {
            Place::Pack(loc) => self.reader.read(loc, &r.hash).map_err(|e| match e {
                PackError::Store(e) => ReadFailure::Io(e),
                other => ReadFailure::Bad(other.to_string()),
            }),
            Place::BlobFile { .. } => {
                let codec = if r.zstd { Codec::Zstd } else { Codec::Raw };
                self.blobs
                    .read_file(&r.hash, codec, r.raw_size)
                    .map_err(|e| match e {
                        BlobError::Io(e) => ReadFailure::Io(e),
                        BlobError::Missing => ReadFailure::Bad("blob file missing".into()),
                        BlobError::Corrupt(s) => ReadFailure::Bad(s),
                    })
            }
        }
    }

    /// A damaged entry: logged, counted, removed from the index (unless
    /// a put replaced it meanwhile), and a miss.
    fn drop_corrupt(&self, key: &[u8], raw: sled::IVec, reason: &str) -> Result<Option<Hit>> {
        log::warn!("dropping {}: {reason}", key::display(key));
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .records
            .compare_and_swap(key, Some(raw), None::<&[u8]>)
            .map_err(|e| self.index_err(e))?;
        Ok(None)
    }

    /// True when the entry is present and not expired (payload not read).
    pub fn contains(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<bool> {
        let key = key::encode(backend, signature.as_ref())?;
        let now = self.opts.clock.now_ms();
        Ok(self.record(&key)?.is_some_and(|(_, r)| r.expires_at > now))
    }

    /// Removes the entry; false when there was none. The payload's bytes
    /// stay until compaction (packs) or the sweep (blob files).
    pub fn delete(&self, backend: &str, signature: impl AsRef<[u8]>) -> Result<bool> {
        let key = key::encode(backend, signature.as_ref())?;
        self.change(&key, |_| Intent::Delete)
    }

    /// Removes the entries under the encoded keys `keys` (see
    /// [`crate::key::encode`]); returns how many existed.
    pub fn delete_keys(&self, keys: &[Vec<u8>]) -> Result<u64> {
        let mut removed = 0;
        for k in keys {
            removed += u64::from(self.change(k, |_| Intent::Delete)?);
        }
        Ok(removed)
    }

    /// The entry's metadata and header set (expired ones included),
    /// without reading its payload.
    pub fn info(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
    ) -> Result<Option<(EntryInfo, Arc<HeaderSet>)>> {
        let key = key::encode(backend, signature.as_ref())?;
        let Some((raw, record)) = self.record(&key)? else {
            return Ok(None);
        };
        match self.headers.get(record.header_set) {
            Ok(h) => Ok(Some((EntryInfo::of(&record), h))),
            Err(reason) => self.drop_corrupt(&key, raw, &reason).map(|_| None),
        }
    }

    /// Up to `limit` entries whose encoded key starts with `prefix` and
    /// sorts after `after`, in key order, with their header sets (expired
    /// ones included). Undecodable records are skipped and logged.
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Scanned>> {
        let range = match after {
            Some(a) => self
                .records
                .range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.records.range::<&[u8], _>(prefix..),
        };
        let mut out = Vec::new();
        for kv in range {
            let (k, v) = kv.map_err(|e| self.index_err(e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            let decoded = LeanRecord::decode(&v)
                .and_then(|r| Ok((EntryInfo::of(&r), self.headers.get(r.header_set)?)));
            match decoded {
                Ok((info, headers)) => out.push((k.to_vec(), info, headers)),
                Err(e) => log::warn!("skipping {}: {e}", key::display(&k)),
            }
        }
        Ok(out)
    }

    /// Gives the entry a new time to live from now (`None`: never
    /// expires); false when there is no entry.
    pub fn touch(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let now = self.opts.clock.now_ms();
        let expires_at = ttl.map_or(u64::MAX, |t| add_ms(now, t));
        let key = key::encode(backend, signature.as_ref())?;
        self.change(&key, |r| Intent::Set(LeanRecord { expires_at, ..r }))
    }

    /// Logs and applies the change `f` makes to an existing entry; false
    /// when there is no entry.
    fn change(&self, key: &[u8], f: impl FnOnce(LeanRecord) -> Intent) -> Result<bool> {
        let mut w = self.lock_writer();
        let Some((_, record)) = self.record(key)? else {
            return Ok(false);
        };
        let intent = f(record);
        let loc = self.log(&mut w, key, &intent, b"")?;
        self.apply(key, &intent)?;
        self.advance_mark(&mut w, loc)?;
        Ok(true)
    }

    /// Applies a SET or DELETE to the index (a live change, or replay).
    fn apply(&self, key: &[u8], intent: &Intent) -> Result<()> {
        match intent {
            Intent::Set(r) => self.insert(key, r),
            Intent::Delete => self
                .records
                .remove(key)
                .map(drop)
                .map_err(|e| self.index_err(e)),
            Intent::Headers(_) => Err(self.index_err("a header set is not an entry change")),
        }
    }

    /// Entries of `backend` whose signature starts with `prefix` (expired
    /// ones included), in key order.
    pub fn list(
        &self,
        backend: &str,
        prefix: impl AsRef<[u8]>,
    ) -> Result<Vec<(Vec<u8>, EntryInfo)>> {
        let start = key::prefix(backend, prefix.as_ref())?;
        let skip = 1 + backend.len();
        let mut out = Vec::new();
        for kv in self.records.scan_prefix(&start) {
            let (k, v) = kv.map_err(|e| self.index_err(e))?;
            match LeanRecord::decode(&v) {
                Ok(r) => out.push((k[skip..].to_vec(), EntryInfo::of(&r))),
                Err(e) => log::warn!("skipping {}: {e}", key::display(&k)),
            }
        }
        Ok(out)
    }

    /// Counts entries and bytes (walks the whole index).
    pub fn stats(&self) -> Result<EngineStats> {
        let mut s = EngineStats {
            header_sets: self.headers.len() as u64,
            dictionaries: self.dicts.stored()?,
            corrupt_reads: self.corrupt.load(Ordering::Relaxed),
            recovery: self.recovery,
            ..EngineStats::default()
        };
        let mut live: HashMap<u32, u64> = HashMap::new();
        let now = self.opts.clock.now_ms();
        for kv in self.records.iter() {
            let (k, v) = kv.map_err(|e| self.index_err(e))?;
            let Ok(r) = LeanRecord::decode(&v) else {
                continue;
            };
            count_backend(&mut s.backends, &k, r.raw_size);
            s.expired += u64::from(r.expires_at <= now);
            s.entries += 1;
            s.raw_bytes += r.raw_size;
            s.stored_bytes += r.stored_size();
            match r.place {
                Place::Pack(loc) => *live.entry(loc.pack).or_default() += u64::from(loc.len),
                Place::BlobFile { stored_size } => {
                    s.blob_entries += 1;
                    s.blob_file_bytes += stored_size;
                }
            }
        }
        for id in self.dir.pack_ids().map_err(pack_error)? {
            let path = self.dir.path(id);
            let file_bytes = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io("inspect", &path, e))?
                .len();
            let live_bytes = live.get(&id).copied().unwrap_or(0);
            s.packs.push(PackStats {
                pack: id,
                file_bytes,
                live_bytes,
                dead_bytes: file_bytes.saturating_sub(FILE_HEADER_LEN + live_bytes),
            });
        }
        Ok(s)
    }

    /// Waits for the dictionary trainings in progress (they run on their
    /// own threads; dropping the engine waits too).
    pub fn settle(&self) {
        self.dicts.settle();
    }

    /// What recovery did when this engine was opened.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Writes the watermark of the active pack and flushes the index, so
    /// the next open has nothing to re-apply.
    pub fn flush(&self) -> Result<()> {
        let mut w = self.lock_writer();
        if let Some(last) = w.last {
            self.mark(last)?;
            w.since_mark = 0;
        }
        self.db.flush().map_err(|e| self.index_err(e))?;
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_err(&self, e: impl std::fmt::Display) -> Error {
        Error::index(&self.index_path, e)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.dicts.settle();
        if let Err(e) = self.flush() {
            log::warn!("closing the engine: {e}");
        }
        closed_here(&self.index_path, Some(true));
    }
}

/// Index paths whose engine this process dropped: sled's background
/// threads let go of its file lock a moment after the last handle, so a
/// reopen in this process waits for that instead of reporting another
/// process. (Found by the engine tests under load.)
static CLOSED_HERE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// How long a reopen in this process waits for its own closing sled.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

fn closed_here(path: &Path, mark: Option<bool>) -> bool {
    let mut closed = CLOSED_HERE.lock().unwrap_or_else(PoisonError::into_inner);
    let known = closed.iter().any(|p| p == path);
    match mark {
        Some(true) if !known => closed.push(path.to_path_buf()),
        Some(false) => closed.retain(|p| p != path),
        _ => {}
    }
    known
}

fn open_sled(path: &Path, opts: &EngineOptions) -> Result<sled::Db> {
    let flush = opts
        .index_flush
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(opts.cache_bytes)
        .flush_every_ms(flush);
    let started = std::time::Instant::now();
    let mut opened = config.open();
    while matches!(&opened, Err(e) if is_lock_busy(e))
        && closed_here(path, None)
        && started.elapsed() < REOPEN_WAIT
    {
        std::thread::sleep(Duration::from_millis(5));
        opened = config.open();
    }
    let db = opened.map_err(|e| {
        if !is_lock_busy(&e) {
            return Error::index(path, e);
        }
        let why = format!(
            "another process has this cache's v2 index open ({e}); the v2 engine admits one \
             process, others will reach it through the owner socket"
        );
        Error::index(path, why)
    })?;
    closed_here(path, Some(false));
    Ok(db)
}

/// True when sled refused to open because its file lock is taken (sled
/// reports it as an `Other` error with this text).
fn is_lock_busy(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Adds an entry of `raw_size` bytes under `key` to the per-backend
/// counts (keys arrive in order, so a backend's entries are adjacent).
fn count_backend(backends: &mut Vec<(String, u64, u64)>, key: &[u8], raw_size: u64) {
    let len = key.first().map_or(0, |&l| usize::from(l));
    let name = key.get(1..=len).unwrap_or_default();
    match backends.last_mut() {
        Some((last, n, bytes)) if last.as_bytes() == name => {
            *n += 1;
            *bytes += raw_size;
        }
        _ => backends.push((String::from_utf8_lossy(name).into_owned(), 1, raw_size)),
    }
}

fn pack_error(e: PackError) -> Error {
    match e {
        PackError::Store(e) => e,
        other => Error::io("use", "packs", std::io::Error::other(other.to_string())),
    }
}

fn invalid(reason: String) -> Error {
    Error::io("frame a needle in", "packs", std::io::Error::other(reason))
}
