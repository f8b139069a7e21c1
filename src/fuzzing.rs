//! Bodies of the fuzz targets, as plain library functions.
//!
//! Each function takes the raw bytes a fuzzer produces and checks one
//! promise of the cache against them. The cargo-fuzz targets in `fuzz/`
//! only call these functions, and `tests/fuzz_corpus.rs` calls the same
//! functions with every checked-in corpus file and with proptest-generated
//! inputs, so the corpora are replayed on the stable toolchain by `cargo
//! test`.
//!
//! The functions **panic when a promise is broken** (wrong bytes served, a
//! store that disagrees with its model, a round trip that changes a value):
//! a panic is how a fuzzer notices. Bad input alone must never make them
//! panic; it must make the library return a miss or a typed error.
//!
//! Targets that need a cache directory create one per input under
//! `$BLOBCACHE_FUZZ_DIR`, else `/dev/shm` when present, else the system
//! temp directory, and remove it afterwards.
//!
//! Adding a target is one function here plus one file in
//! `fuzz/fuzz_targets/` calling it (and one line in `tests/fuzz_corpus.rs`).
//!
//! ```
//! blobcache::fuzzing::record_decode(b"\xa1\x61v\x01");
//! blobcache::fuzzing::blob_read(b"\x00\x40\x00\x07not a zstd frame");
//! blobcache::fuzzing::archive_import(b"\x00not a tar archive");
//! blobcache::fuzzing::wire_decode(b"\x05\x00\x00\x00\xa0");
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::blobs::{self, BlobHash};
use crate::index::{BackendTotals, CounterValues, State};
use crate::key::{self, Category, MAX_SIGNATURE_LEN, TtlPolicy};
use crate::record::{BlobInfo, from_cbor, to_cbor};
use crate::testkit::{Rng, json_payload};
use crate::{Clock, Error, ManualClock, PutOptions, Selector, Store, StoreOptions, VerifyOptions};

mod archive_import;
mod pack_scan;
mod wire_decode;

pub use archive_import::{archive_import, archive_import_case, archive_seeds};
pub use pack_scan::{build_pack, pack_scan};
pub use wire_decode::{wire_decode, wire_owner, wire_seed};

/// The names of the targets, as used for `fuzz/fuzz_targets/<name>.rs`
/// and `fuzz/corpus/<name>/`.
pub const TARGETS: &[&str] = &[
    "record_decode",
    "blob_read",
    "store_ops",
    "archive_import",
    "wire_decode",
    "pack_scan",
];

/// Runs the target called `name` on `data`; false when no target has
/// that name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "record_decode" => record_decode(data),
        "blob_read" => blob_read(data),
        "store_ops" => store_ops(data),
        "archive_import" => archive_import(data),
        "wire_decode" => wire_decode(data),
        "pack_scan" => pack_scan(data),
        _ => return false,
    }
    true
}

/// Unwraps a result the harness itself needs (not the code under test),
/// panicking with a message that names the step.
fn must<T, E: Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("fuzz harness: {what} failed: {e}"),
    }
}

// ---------------------------------------------------------------------
// record_decode
// ---------------------------------------------------------------------

/// Target `record_decode`: `data` as a value stored in the index.
///
/// The bytes are decoded as an entry [`Record`], and as the other CBOR
/// values the index keeps (blob info, totals, counters). Decoding must
/// not panic; a value that decodes must encode and decode back to
/// itself. When `data` holds a record followed by more bytes, those
/// bytes are read as the record's stored blob: the blob decoder must
/// then return a miss or bytes that match the record's hash and size.
pub fn record_decode(data: &[u8]) {
    round_trips::<BlobInfo>(data);
    round_trips::<State>(data);
    round_trips::<CounterValues>(data);
    round_trips::<BackendTotals>(data);
    let Some(record) = round_trips::<Record>(data) else {
        return;
    };
    let Some(stored) = after_first_item(data) else {
        return;
    };
    if let Ok(raw) = blobs::decode(stored, record.codec, record.raw_size, &record.hash) {
        assert_eq!(raw.len() as u64, record.raw_size, "decoded size differs");
        assert!(BlobHash::of(&raw) == record.hash, "decoded bytes differ");
    }
}

/// A valid `record_decode` input, for seeds and generated cases: the CBOR
/// record a put of `payload` writes (expiring at `expires_at`), followed
/// by the blob bytes it stores (zstd, or raw when that is not smaller).
pub fn record_seed(payload: &[u8], expires_at: u64) -> Vec<u8> {
    let stored = stored_form(payload);
    let codec = if stored.as_slice() == payload {
        crate::record::Codec::Raw
    } else {
        crate::record::Codec::Zstd
    };
    let record = Record {
        version: crate::record::RECORD_VERSION,
        hash: BlobHash::of(payload),
        codec,
        inline: true,
        raw_size: payload.len() as u64,
        stored_size: stored.len() as u64,
        created_at: 1_000,
        fetched_at: 1_000,
        expires_at,
        category: "metadata".into(),
        content_type: Some("application/json".into()),
        headers: vec![("ETag".into(), "\"1\"".into())],
        hits: 0,
        last_access: 1_000,
        pinned: false,
    };
    let mut out = to_cbor(&record);
    out.extend_from_slice(&stored);
    out
}

pub use crate::record::{Codec, Record};

/// Encodes a record exactly as the index stores it (for property tests).
pub fn encode_record(record: &Record) -> Vec<u8> {
    to_cbor(record)
}

/// Decodes a record exactly as the index reads it (for property tests).
pub fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    from_cbor(bytes)
}

/// Decodes `data` as a `T`; if that works, checks that encoding and
/// decoding again gives the same value.
fn round_trips<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = from_cbor(data).ok()?;
    let again: T = match from_cbor(&to_cbor(&value)) {
        Ok(v) => v,
        Err(e) => panic!("{value:?} encodes to CBOR that does not decode: {e}"),
    };
    assert_eq!(value, again, "CBOR round trip changed the value");
    Some(value)
}

/// The bytes after the first CBOR item of `data`, if it holds one.
fn after_first_item(data: &[u8]) -> Option<&[u8]> {
    let mut cursor = std::io::Cursor::new(data);
    ciborium::from_reader::<ciborium::Value, _>(&mut cursor).ok()?;
    let used = usize::try_from(cursor.position()).ok()?;
    data.get(used..)
}

// ---------------------------------------------------------------------
// Scratch cache directories
// ---------------------------------------------------------------------

/// A directory that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(target: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("BLOBCACHE_FUZZ_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                let shm = Path::new("/dev/shm");
                shm.is_dir().then(|| shm.to_path_buf())
            })
            .unwrap_or_else(std::env::temp_dir);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "blobcache-fuzz-{target}-{}-{n}",
            std::process::id()
        ));
        // A directory of the same name can only be a leftover of a killed
        // run with a recycled pid.
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Store options shared by the targets: a manual clock, and blobs kept
/// inline only up to `inline_threshold` stored bytes.
fn fuzz_options(clock: &Arc<ManualClock>, inline_threshold: usize) -> StoreOptions {
    StoreOptions::default()
        .clock(clock.clone())
        .inline_threshold(inline_threshold)
}

// ---------------------------------------------------------------------
// blob_read
// ---------------------------------------------------------------------

/// The payload kinds of [`blob_read`], chosen by its first input byte.
fn blob_read_payload(kind: u8, size: u16, seed: u8) -> Vec<u8> {
    let size = usize::from(size);
    match kind % 3 {
        // Compressible: stored as zstd.
        0 => json_payload(u64::from(seed), size),
        // Incompressible: stored raw.
        1 => {
            let mut b = vec![0u8; size];
            Rng::new(u64::from(seed)).fill(&mut b);
            b
        }
        // Short and repetitive.
        _ => vec![seed; size % 64],
    }
}

/// Splits a `blob_read` input into its payload and the file bytes.
///
/// Input layout: byte 0 picks the payload kind (`% 3`: JSON, noise, a
/// short run of one byte), bytes 1-2 its size (u16 little-endian), byte 3
/// its seed; the rest is written over the payload's blob file. Inputs
/// shorter than 4 bytes are padded with zeros.
pub fn blob_read_case(data: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut head = [0u8; 4];
    let n = data.len().min(4);
    head[..n].copy_from_slice(&data[..n]);
    let payload = blob_read_payload(head[0], u16::from_le_bytes([head[1], head[2]]), head[3]);
    (payload, &data[n..])
}

/// The bytes blob_read's put writes as the blob file for the payload an
/// input header names (a helper for building seeds): the zstd frame, or
/// the raw payload when compression does not help.
pub fn stored_form(payload: &[u8]) -> Vec<u8> {
    blobs::compress(payload, StoreOptions::default().get_compression_level())
        .unwrap_or_else(|| payload.to_vec())
}

/// Target `blob_read`: arbitrary bytes as the blob file of a payload.
///
/// Puts the payload [`blob_read_case`] names under two keys (one blob,
/// stored as a file), replaces the blob file with the input's bytes, then
/// reads one key through `get_reader` and the other through `get`. Each
/// must be a miss or exactly the payload. A put of the same payload
/// afterwards must be readable again (the cache healed), and a full
/// verify must find nothing wrong.
pub fn blob_read(data: &[u8]) {
    let (payload, file_bytes) = blob_read_case(data);
    let scratch = Scratch::new("blob_read");
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let store = must(
        Store::open(&scratch.0, fuzz_options(&clock, 0)),
        "open store",
    );
    let opts = PutOptions::new();
    let report = must(store.put("fuzz", "a", &payload, &opts), "put a");
    must(store.put("fuzz", "b", &payload, &opts), "put b");
    let path = store.blob_store().path_for(&report.hash);
    if let Some(dir) = path.parent() {
        must(std::fs::create_dir_all(dir), "create fan-out directory");
    }
    must(std::fs::write(&path, file_bytes), "overwrite blob file");
    // The target damages content, not permissions: keep the mode the store
    // gives its files (a newly created file would otherwise get the umask's).
    let mode = std::fs::Permissions::from_mode(crate::fsutil::FILE_MODE);
    must(std::fs::set_permissions(&path, mode), "keep blob file mode");

    if let Some(mut reader) = must(store.get_reader("fuzz", "a"), "get_reader a") {
        let mut out = Vec::new();
        if reader.read_to_end(&mut out).is_ok() {
            assert!(out == payload, "get_reader served wrong bytes");
        }
    }
    if let Some(hit) = must(store.get("fuzz", "b"), "get b") {
        assert!(hit.data == payload, "get served wrong bytes");
    }
    must(store.put("fuzz", "c", &payload, &opts), "put c");
    let healed = must(store.get("fuzz", "c"), "get c");
    assert!(
        healed.is_some_and(|h| h.data == payload),
        "a fresh put after damage is not readable"
    );
    // The file may still be damaged, or replaced by another valid encoding
    // of the payload (reads then serve it; verify sees a size that differs
    // from the index's). Verify may report that, and nothing else, and its
    // repair must leave a clean cache.
    let full = VerifyOptions::new().full(true);
    let report = must(store.verify(full.clone().repair(true)), "verify");
    let only_blob = |p: &crate::Problem| p.kind == crate::ProblemKind::CorruptBlob;
    assert!(
        report.problems.iter().all(only_blob),
        "verify: {:?}",
        report.problems
    );
    let after = must(store.verify(full), "verify after repair");
    assert!(after.is_clean(), "after repair: {:?}", after.problems);
}

// ---------------------------------------------------------------------
// store_ops
// ---------------------------------------------------------------------

/// Most operations run per `store_ops` input.
pub const MAX_OPS: usize = 48;

const BACKENDS: &[&str] = &["tmdb", "tmdb2", "t", "anilist"];
const SIGNATURES: &[&[u8]] = &[b"", b"movie/1", b"movie/10", b"m", b"\xff\x00sig"];

/// Which key an operation targets.
#[derive(Arbitrary, Clone, Debug)]
pub enum KeyRef {
    /// One of a few backends and signatures (prefixes of each other, so
    /// ordering and prefix bugs show).
    Known(u8, u8),
    /// A fixed backend and any signature (possibly too long).
    Custom(u8, Vec<u8>),
}

impl KeyRef {
    fn resolve(&self) -> (&'static str, Vec<u8>) {
        match self {
            KeyRef::Known(b, s) => (
                BACKENDS[usize::from(*b) % BACKENDS.len()],
                SIGNATURES[usize::from(*s) % SIGNATURES.len()].to_vec(),
            ),
            KeyRef::Custom(b, sig) => (BACKENDS[usize::from(*b) % BACKENDS.len()], sig.clone()),
        }
    }
}

/// A payload to put.
#[derive(Arbitrary, Clone, Debug)]
pub enum PayloadRef {
    /// The empty payload.
    Empty,
    /// JSON-like (compresses well) of the given size.
    Json(u8, u16),
    /// Random bytes (stored raw) of the given size.
    Noise(u8, u16),
    /// These bytes.
    Bytes(Vec<u8>),
    /// The payload of an earlier put (dedup).
    Again(u8),
}

/// A TTL for a put or a touch.
#[derive(Arbitrary, Clone, Debug)]
pub enum TtlRef {
    /// Expired at once.
    Zero,
    /// Milliseconds.
    Millis(u32),
    /// Nanoseconds (sub-millisecond parts are truncated).
    Nanos(u64),
    /// The longest duration there is (saturates: never expires).
    Max,
    /// No TTL: the category's default.
    Category(u8),
}

impl TtlRef {
    fn duration(&self) -> Option<Duration> {
        match self {
            TtlRef::Zero => Some(Duration::ZERO),
            TtlRef::Millis(ms) => Some(Duration::from_millis(u64::from(*ms))),
            TtlRef::Nanos(ns) => Some(Duration::from_nanos(*ns)),
            TtlRef::Max => Some(Duration::MAX),
            TtlRef::Category(_) => None,
        }
    }

    fn category(&self) -> Category {
        const NAMES: &[&str] = &["metadata", "list", "schedule", "offline_dump", "posters"];
        match self {
            TtlRef::Category(c) => Category::parse(NAMES[usize::from(*c) % NAMES.len()]),
            _ => Category::Metadata,
        }
    }
}

/// One operation of a `store_ops` input.
#[derive(Arbitrary, Clone, Debug)]
pub enum StoreOp {
    /// `put`.
    Put(KeyRef, PayloadRef, TtlRef),
    /// `get`.
    Get(KeyRef),
    /// `get_stale`.
    GetStale(KeyRef),
    /// `get_reader`, read to the end.
    GetReader(KeyRef),
    /// `delete`.
    Delete(KeyRef),
    /// `touch`.
    Touch(KeyRef, TtlRef),
    /// `purge_expired`.
    PurgeExpired,
    /// Close the store and open it again.
    Reopen,
    /// Move the clock forward by this many milliseconds.
    Advance(u32),
    /// Set the clock to any value (it may go backwards).
    SetClock(u64),
    /// `list` one backend (or everything).
    List(Option<u8>),
    /// `clear` one backend.
    Clear(u8),
    /// `flush`.
    Flush,
}

/// A decoded `store_ops` input: store settings, then operations.
#[derive(Clone, Debug)]
pub struct OpsCase {
    /// Initial clock reading (ms since epoch).
    pub start_ms: u64,
    /// Inline threshold of the store, in stored bytes.
    pub inline_threshold: usize,
    /// The operations, at most [`MAX_OPS`].
    pub ops: Vec<StoreOp>,
}

/// Decodes a `store_ops` input (also handy to print a failing input).
pub fn decode_store_ops(data: &[u8]) -> OpsCase {
    let mut u = Unstructured::new(data);
    let start_ms = match u.int_in_range(0u8..=3).unwrap_or(0) {
        0 => 1_000_000_000_000,
        1 => 0,
        2 => u64::MAX - 1_000,
        _ => u.arbitrary().unwrap_or(0),
    };
    let inline_threshold = match u.int_in_range(0u8..=2).unwrap_or(0) {
        0 => crate::DEFAULT_INLINE_THRESHOLD,
        1 => 0,
        _ => 100,
    };
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match StoreOp::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    OpsCase {
        start_ms,
        inline_threshold,
        ops,
    }
}

/// The in-memory model of the store: key → (payload, expires_at).
#[derive(Default)]
struct Model {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
}

impl Model {
    /// The payload a `get` at `now` must return.
    fn live(&self, key: &[u8], now: u64) -> Option<&Vec<u8>> {
        self.entries
            .get(key)
            .filter(|(_, exp)| !expired(*exp, now))
            .map(|(p, _)| p)
    }

    fn expired_count(&self, now: u64) -> u64 {
        self.entries
            .values()
            .filter(|(_, exp)| expired(*exp, now))
            .count() as u64
    }
}

/// The model's expiry rule: an entry is expired once the clock reaches
/// its expiry time.
fn expired(expires_at: u64, now: u64) -> bool {
    now >= expires_at
}

/// The model's TTL arithmetic: whole milliseconds, saturating.
fn model_expiry(now: u64, ttl: Duration) -> u64 {
    let ms = ttl.as_millis().min(u128::from(u64::MAX)) as u64;
    now.saturating_add(ms)
}

/// State of one `store_ops` run.
struct Run {
    scratch: Scratch,
    clock: Arc<ManualClock>,
    inline_threshold: usize,
    store: Option<Store>,
    model: Model,
    history: Vec<Vec<u8>>,
}

/// Target `store_ops`: a sequence of operations (see [`StoreOp`],
/// decoded by [`decode_store_ops`]) run against a real store in a scratch
/// directory with a manual clock, and against a plain in-memory model.
/// Every read must agree with the model, as must the counts in `stats`,
/// `list`, and the results of delete, touch, purge and clear; a full
/// verify at the end must find nothing wrong.
pub fn store_ops(data: &[u8]) {
    run_store_ops(&decode_store_ops(data));
}

/// Runs a decoded `store_ops` case (see [`store_ops`]).
pub fn run_store_ops(case: &OpsCase) {
    let mut run = Run {
        scratch: Scratch::new("store_ops"),
        clock: Arc::new(ManualClock::new(case.start_ms)),
        inline_threshold: case.inline_threshold,
        store: None,
        model: Model::default(),
        history: Vec::new(),
    };
    run.reopen();
    for (i, op) in case.ops.iter().enumerate() {
        run.step(op);
        run.check_stats(i, op);
    }
    run.check_list(None);
    let report = must(
        run.store().verify(VerifyOptions::new().full(true)),
        "verify",
    );
    assert!(report.is_clean(), "verify: {:?}", report.problems);
}

impl Run {
    fn store(&self) -> &Store {
        match &self.store {
            Some(s) => s,
            None => panic!("fuzz harness: store not open"),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn reopen(&mut self) {
        // Close first: the owner lock is released when the store drops.
        self.store = None;
        let opts = fuzz_options(&self.clock, self.inline_threshold);
        self.store = Some(must(Store::open(&self.scratch.0, opts), "open store"));
    }

    fn payload(&self, p: &PayloadRef) -> Vec<u8> {
        match p {
            PayloadRef::Empty => Vec::new(),
            PayloadRef::Json(seed, size) => json_payload(u64::from(*seed), usize::from(*size)),
            PayloadRef::Noise(seed, size) => {
                let mut b = vec![0u8; usize::from(*size)];
                Rng::new(u64::from(*seed)).fill(&mut b);
                b
            }
            PayloadRef::Bytes(b) => b.clone(),
            PayloadRef::Again(i) if !self.history.is_empty() => {
                self.history[usize::from(*i) % self.history.len()].clone()
            }
            PayloadRef::Again(_) => Vec::new(),
        }
    }

    /// Runs one operation on the store and the model, comparing results.
    fn step(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Put(k, p, ttl) => self.put(k, p, ttl),
            StoreOp::Get(k) => self.get(k, false),
            StoreOp::GetStale(k) => self.get(k, true),
            StoreOp::GetReader(k) => self.get_reader(k),
            StoreOp::Delete(k) => self.delete(k),
            StoreOp::Touch(k, ttl) => self.touch(k, ttl),
            StoreOp::PurgeExpired => self.purge(),
            StoreOp::Reopen => self.reopen(),
            StoreOp::Advance(ms) => self.clock.advance(Duration::from_millis(u64::from(*ms))),
            StoreOp::SetClock(ms) => self.clock.set(*ms),
            StoreOp::List(b) => {
                self.check_list(b.map(|b| BACKENDS[usize::from(b) % BACKENDS.len()]))
            }
            StoreOp::Clear(b) => self.clear(BACKENDS[usize::from(*b) % BACKENDS.len()]),
            StoreOp::Flush => must(self.store().flush(), "flush"),
        }
    }

    /// The encoded key, or `None` after checking that the store refuses
    /// it the way [`key::encode`] does.
    fn key<T: std::fmt::Debug>(
        &self,
        k: &KeyRef,
        result: impl FnOnce(&Store, &str, &[u8]) -> crate::Result<T>,
    ) -> Option<(Vec<u8>, T)> {
        let (backend, sig) = k.resolve();
        let got = result(self.store(), backend, &sig);
        if sig.len() > MAX_SIGNATURE_LEN {
            assert!(
                matches!(got, Err(Error::KeyTooLong { .. })),
                "a {}-byte signature was not refused: {got:?}",
                sig.len()
            );
            return None;
        }
        let key = must(key::encode(backend, &sig), "encode key");
        Some((key, must(got, "store operation")))
    }

    fn put(&mut self, k: &KeyRef, p: &PayloadRef, ttl: &TtlRef) {
        let payload = self.payload(p);
        let mut opts = PutOptions::new().category(ttl.category());
        if let Some(d) = ttl.duration() {
            opts = opts.ttl(d);
        }
        let now = self.now();
        let Some((key, report)) = self.key(k, |s, b, sig| s.put(b, sig, &payload, &opts)) else {
            return;
        };
        let ttl = ttl
            .duration()
            .unwrap_or_else(|| TtlPolicy::default().ttl_for(&ttl.category()));
        let expires_at = model_expiry(now, ttl);
        assert_eq!(report.expires_at, expires_at, "put reported another expiry");
        assert_eq!(report.raw_size, payload.len() as u64);
        assert!(
            report.hash == BlobHash::of(&payload),
            "put reported another hash"
        );
        self.history.push(payload.clone());
        self.model.entries.insert(key, (payload, expires_at));
    }

    fn get(&mut self, k: &KeyRef, stale: bool) {
        let now = self.now();
        let Some((key, hit)) = self.key(k, |s, b, sig| {
            if stale {
                s.get_stale(b, sig)
            } else {
                s.get(b, sig)
            }
        }) else {
            return;
        };
        let want = if stale {
            self.model.entries.get(&key).map(|(p, _)| p)
        } else {
            self.model.live(&key, now)
        };
        let got = hit.as_ref().map(|h| &h.data);
        assert!(
            got == want,
            "get{} of {} at {now}: store has {:?} bytes, model {:?}",
            if stale { "_stale" } else { "" },
            key::display(&key),
            got.map(Vec::len),
            want.map(Vec::len)
        );
        if let (Some(hit), Some((_, exp))) = (&hit, self.model.entries.get(&key)) {
            assert_eq!(hit.meta.expires_at, *exp, "expiry differs");
            assert_eq!(hit.stale, expired(*exp, now), "stale flag differs");
        }
    }

    fn get_reader(&mut self, k: &KeyRef) {
        let now = self.now();
        let Some((key, reader)) = self.key(k, |s, b, sig| s.get_reader(b, sig)) else {
            return;
        };
        let got = reader.map(|mut r| {
            let mut out = Vec::new();
            must(r.read_to_end(&mut out), "read stream");
            out
        });
        assert!(
            got.as_ref() == self.model.live(&key, now),
            "get_reader of {} differs from the model",
            key::display(&key)
        );
    }

    fn delete(&mut self, k: &KeyRef) {
        let Some((key, existed)) = self.key(k, |s, b, sig| s.delete(b, sig)) else {
            return;
        };
        let modelled = self.model.entries.remove(&key).is_some();
        assert_eq!(existed, modelled, "delete of {}", key::display(&key));
    }

    fn touch(&mut self, k: &KeyRef, ttl: &TtlRef) {
        let d = ttl.duration().unwrap_or(Duration::from_secs(60));
        let now = self.now();
        let Some((key, existed)) = self.key(k, |s, b, sig| s.touch(b, sig, d)) else {
            return;
        };
        let entry = self.model.entries.get_mut(&key);
        assert_eq!(existed, entry.is_some(), "touch of {}", key::display(&key));
        if let Some((_, exp)) = entry {
            *exp = model_expiry(now, d);
        }
    }

    fn purge(&mut self) {
        let now = self.now();
        let removed = must(self.store().purge_expired(), "purge_expired");
        let before = self.model.entries.len();
        self.model.entries.retain(|_, (_, exp)| !expired(*exp, now));
        let want = (before - self.model.entries.len()) as u64;
        assert_eq!(
            removed, want,
            "purge_expired at {now} removed another count"
        );
    }

    fn clear(&mut self, backend: &str) {
        let removed = must(self.store().clear(&Selector::backend(backend)), "clear");
        let prefix = must(key::prefix(backend, b""), "prefix");
        let before = self.model.entries.len();
        self.model.entries.retain(|k, _| !k.starts_with(&prefix));
        let want = (before - self.model.entries.len()) as u64;
        assert_eq!(removed, want, "clear of {backend} removed another count");
    }

    /// `list` must give the model's keys, in key order, with their expiry.
    fn check_list(&self, backend: Option<&str>) {
        let selector = backend.map_or(Selector::All, Selector::backend);
        let prefix = must(
            backend.map_or(Ok(Vec::new()), |b| key::prefix(b, b"")),
            "prefix",
        );
        let listed: Vec<(Vec<u8>, u64)> = must(self.store().list(&selector), "list")
            .map(|m| {
                let m = must(m, "list entry");
                let key = must(key::encode(&m.backend, &m.signature), "encode listed key");
                (key, m.expires_at)
            })
            .collect();
        let want: Vec<(Vec<u8>, u64)> = self
            .model
            .entries
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, (_, exp))| (k.clone(), *exp))
            .collect();
        assert_eq!(listed, want, "list of {backend:?} differs from the model");
    }

    /// `stats` must count the model's entries, live and expired.
    fn check_stats(&self, i: usize, op: &StoreOp) {
        let now = self.now();
        let stats = must(self.store().stats(), "stats");
        let entries = self.model.entries.len() as u64;
        let expired = self.model.expired_count(now);
        assert_eq!(
            (stats.entries, stats.expired),
            (entries, expired),
            "stats after op {i} ({op:?}) at {now}: (entries, expired)"
        );
        let raw: u64 = self
            .model
            .entries
            .values()
            .map(|(p, _)| p.len() as u64)
            .sum();
        assert_eq!(
            stats.raw_bytes, raw,
            "stats.raw_bytes after op {i} ({op:?})"
        );
    }
}
