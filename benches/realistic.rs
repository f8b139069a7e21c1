//! blobcache side by side with what its users run today, in one run on the
//! same realistic payloads (DESIGN.md §6, issue 12):
//!
//! - `sqlite-rowid`: a rowid table with `UNIQUE (backend, signature)`
//!   (seed 000's design),
//! - `sqlite-norowid`: a `WITHOUT ROWID` table keyed by
//!   `(backend, signature)` (seed 002's design),
//!
//!   both WAL, `synchronous=NORMAL`, one connection per thread, autocommit
//!   per put, cached prepared statements;
//! - `cacache`: the content-addressable cache crate, sync API;
//! - `sled-lean`: raw sled storing a 72-byte record per key (what a lean
//!   index costs: the floor for blobcache's index, no payload at all);
//! - `sled-zstd`: raw sled storing the zstd-3 compressed payload (get
//!   decompresses; no hashing, no metadata, no journal);
//! - `blobcache`: this crate, in-process owner, default options (L1 off);
//! - `blobcache-v2`: this crate on a format-2 cache
//!   (`StoreOptions::format(2)`): `Store` over the storage core v2, the
//!   same defaults;
//! - `engine-v2`: storage core v2 (`blobcache::engine`) used directly,
//!   default options: needles in packs read with `pread`, lean
//!   80-byte records in sled, header sets stored once, a zstd dictionary
//!   per backend trained from its first 1,000 small payloads;
//! - `engine-v2-nodict`: the same without dictionaries;
//! - `engine-v2-mmap`: the same, reading through a map of each pack
//!   (first-touch page faults included: gets start on a fresh open).
//!
//! Workload (`testkit::api_response`): TMDB/AniList/Audnexus-shaped JSON
//! responses of varied sizes (about 90 % records of 430 B-1.3 KB, 9 % list
//! pages, 1 % 10-20 KiB details; mean about 1.2 KiB) under distinct
//! `(backend, signature)` keys in random order.
//!
//! Per system, on its own directory: `BENCH_ENTRIES` puts (default 100,000;
//! every put is timed), close, disk usage of everything in the directory,
//! open + first get (median of 3), `BENCH_GETS` gets of random keys over the
//! whole set (default 20,000, a sample: median and p99; every 64th get's
//! bytes are compared with the generated body), then `BENCH_MIXED_OPS`
//! operations (default 40,000) of 90 % get / 10 % put on 4 threads, as
//! operations per second. `BENCH_SYSTEMS=a,b` runs a subset; cacache runs
//! only up to `BENCH_CACACHE_MAX` entries (default 100,000: at 1M its puts
//! alone would take about 5 minutes).
//!
//! Run: `scripts/bench-table.sh` (or `cargo bench --bench realistic`). Under
//! `cargo test --benches` (no `--bench` argument) it runs a 2,000-entry
//! smoke pass instead.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::{Sample, env_u64};

use blobcache::engine::{Engine, EngineOptions, HeaderSet, PutMeta};
use blobcache::pack::ReadMode;
use blobcache::testkit::{ApiResponse, ResponseKind, Rng, api_key, api_response, disk_usage};
use blobcache::{PutOptions, Store, StoreOptions};

/// Seed of the workload: the same payloads in every run.
const SEED: u64 = 2026;
const TTL_MS: i64 = 72 * 3600 * 1000;
const THREADS: u64 = 4;

/// One thread's connection to a system under test.
trait Handle: Send {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]);
    /// The stored bytes (for `sled-lean`, the record).
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>>;
}

/// A system under test, opened on its own directory.
trait System: Send + Sync {
    fn handle(&self) -> Box<dyn Handle>;
}

const SYSTEMS: [&str; 10] = [
    "sqlite-rowid",
    "sqlite-norowid",
    "cacache",
    "sled-lean",
    "sled-zstd",
    "blobcache",
    "blobcache-v2",
    "engine-v2",
    "engine-v2-nodict",
    "engine-v2-mmap",
];

fn open_system(name: &str, dir: &Path) -> Box<dyn System> {
    match name {
        "sqlite-rowid" => Box::new(Sqlite::open(dir, ROWID_SCHEMA)),
        "sqlite-norowid" => Box::new(Sqlite::open(dir, NOROWID_SCHEMA)),
        "cacache" => Box::new(Cacache(dir.to_path_buf())),
        "sled-lean" => Box::new(RawSled::open(dir, false)),
        "sled-zstd" => Box::new(RawSled::open(dir, true)),
        "blobcache" => Box::new(Blobcache(
            Store::open(dir, StoreOptions::default()).unwrap(),
            PutOptions::new(),
        )),
        "blobcache-v2" => Box::new(Blobcache(
            Store::open(dir, StoreOptions::default().format(2)).unwrap(),
            PutOptions::new(),
        )),
        "engine-v2" => EngineV2::open(dir, EngineOptions::new()),
        "engine-v2-nodict" => EngineV2::open(dir, EngineOptions::new().dictionaries(0, 0)),
        "engine-v2-mmap" => EngineV2::open(dir, EngineOptions::new().read_mode(ReadMode::Mmap)),
        other => panic!("unknown system {other}"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---- SQLite, both schemas --------------------------------------------------

const ROWID_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS responses (id INTEGER PRIMARY KEY, \
    backend TEXT NOT NULL, signature TEXT NOT NULL, body BLOB NOT NULL, \
    fetched_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, UNIQUE (backend, signature));";

const NOROWID_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS responses (backend TEXT NOT NULL, \
    signature TEXT NOT NULL, body BLOB NOT NULL, fetched_at INTEGER NOT NULL, \
    expires_at INTEGER NOT NULL, PRIMARY KEY (backend, signature)) WITHOUT ROWID;";

struct Sqlite(PathBuf);

impl Sqlite {
    fn open(dir: &Path, schema: &str) -> Sqlite {
        let path = dir.join("cache.sqlite");
        sqlite_conn(&path).execute_batch(schema).unwrap();
        Sqlite(path)
    }
}

fn sqlite_conn(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    conn
}

impl System for Sqlite {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(SqliteHandle(sqlite_conn(&self.0)))
    }
}

struct SqliteHandle(rusqlite::Connection);

impl Handle for SqliteHandle {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]) {
        let mut st = self
            .0
            .prepare_cached(
                "INSERT INTO responses (backend, signature, body, fetched_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (backend, signature) DO UPDATE SET \
                 body = excluded.body, fetched_at = excluded.fetched_at, \
                 expires_at = excluded.expires_at",
            )
            .unwrap();
        let now = now_ms();
        st.execute(rusqlite::params![backend, sig, body, now, now + TTL_MS])
            .unwrap();
    }
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT body FROM responses WHERE backend = ?1 AND signature = ?2 \
                 AND expires_at > ?3",
            )
            .unwrap();
        let mut rows = st.query(rusqlite::params![backend, sig, now_ms()]).unwrap();
        rows.next().unwrap().map(|row| row.get(0).unwrap())
    }
}

// ---- cacache ---------------------------------------------------------------

struct Cacache(PathBuf);

impl System for Cacache {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(Cacache(self.0.clone()))
    }
}

impl Handle for Cacache {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]) {
        cacache::write_sync(&self.0, format!("{backend}/{sig}"), body).unwrap();
    }
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>> {
        match cacache::read_sync(&self.0, format!("{backend}/{sig}")) {
            Ok(data) => Some(data),
            Err(cacache::Error::EntryNotFound(..)) => None,
            Err(e) => panic!("cacache read: {e}"),
        }
    }
}

// ---- blobcache -------------------------------------------------------------

struct Blobcache(Store, PutOptions);

impl System for Blobcache {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(Blobcache(self.0.clone(), self.1.clone()))
    }
}

impl Handle for Blobcache {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]) {
        self.0.put(backend, sig, body, &self.1).unwrap();
    }
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>> {
        self.0.get(backend, sig).unwrap().map(|hit| hit.data)
    }
}

// ---- storage core v2 ----------------------------------------------------------

#[derive(Clone)]
struct EngineV2(Arc<Engine>, PutMeta);

impl EngineV2 {
    fn open(dir: &Path, opts: EngineOptions) -> Box<dyn System> {
        let engine = Engine::open(dir, opts).unwrap();
        let meta = PutMeta {
            ttl: Some(Duration::from_millis(TTL_MS as u64)),
            headers: HeaderSet {
                content_type: Some("application/json".into()),
                ..HeaderSet::default()
            },
            ..PutMeta::default()
        };
        Box::new(EngineV2(Arc::new(engine), meta))
    }
}

impl System for EngineV2 {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(self.clone())
    }
}

impl Handle for EngineV2 {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]) {
        self.0.put(backend, sig, body, &self.1).unwrap();
    }
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>> {
        self.0.get(backend, sig).unwrap().map(|hit| hit.data)
    }
}

// ---- raw sled: lean records or compressed payloads ---------------------------

/// Bytes of the `sled-lean` record: pack id, offset, stored and raw
/// lengths, blake3, expiry, created and fetched times, flags.
const LEAN_RECORD: usize = 4 + 8 + 4 + 4 + 32 + 8 + 8 + 8 + 4;

#[derive(Clone)]
struct RawSled {
    db: sled::Db,
    zstd: bool,
}

impl RawSled {
    fn open(dir: &Path, zstd: bool) -> RawSled {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(64 << 20)
            .open()
            .unwrap();
        RawSled { db, zstd }
    }
}

/// Length-prefixed `(backend, signature)`, as blobcache's keys are.
fn sled_key(backend: &str, sig: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + backend.len() + sig.len());
    k.extend_from_slice(&(backend.len() as u16).to_be_bytes());
    k.extend_from_slice(backend.as_bytes());
    k.extend_from_slice(sig.as_bytes());
    k
}

impl System for RawSled {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(SledHandle {
            s: self.clone(),
            offset: 0,
            comp: zstd::bulk::Compressor::new(3).unwrap(),
            decomp: zstd::bulk::Decompressor::new().unwrap(),
        })
    }
}

struct SledHandle {
    s: RawSled,
    offset: u64,
    comp: zstd::bulk::Compressor<'static>,
    decomp: zstd::bulk::Decompressor<'static>,
}

impl SledHandle {
    fn lean_record(&mut self, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::with_capacity(LEAN_RECORD);
        r.extend_from_slice(&1u32.to_le_bytes());
        r.extend_from_slice(&self.offset.to_le_bytes());
        r.extend_from_slice(&((body.len() as u32 / 3).to_le_bytes()));
        r.extend_from_slice(&(body.len() as u32).to_le_bytes());
        // A hash-like 32 bytes (not computed: this row is the index alone).
        let mut hash = [0u8; 32];
        Rng::new(self.offset).fill(&mut hash);
        r.extend_from_slice(&hash);
        let now = now_ms() as u64;
        for t in [now + TTL_MS as u64, now, now] {
            r.extend_from_slice(&t.to_le_bytes());
        }
        r.extend_from_slice(&0u32.to_le_bytes());
        self.offset += body.len() as u64 / 3 + 40;
        r
    }

    fn compressed(&mut self, body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&self.comp.compress(body).unwrap());
        v
    }
}

impl Handle for SledHandle {
    fn put(&mut self, backend: &str, sig: &str, body: &[u8]) {
        let value = if self.s.zstd {
            self.compressed(body)
        } else {
            self.lean_record(body)
        };
        self.s.db.insert(sled_key(backend, sig), value).unwrap();
    }
    fn get(&mut self, backend: &str, sig: &str) -> Option<Vec<u8>> {
        let v = self.s.db.get(sled_key(backend, sig)).unwrap()?;
        if !self.s.zstd {
            return Some(v.to_vec());
        }
        let raw = u32::from_le_bytes(v[..4].try_into().unwrap()) as usize;
        Some(self.decomp.decompress(&v[4..], raw).unwrap())
    }
}

// ---- measurements ------------------------------------------------------------

/// What one system measured.
#[derive(Clone, Copy, Default)]
struct Measured {
    put_mean: f64,
    put_p99: f64,
    get_p50: f64,
    get_p99: f64,
    mixed_ops: f64,
    disk_ratio: f64,
    close_ms: f64,
    open_ms: f64,
}

struct Config {
    entries: u64,
    gets: u64,
    mixed_ops: u64,
    cacache_max: u64,
}

/// Fills the system with entries `0..n`, timing every put; returns the
/// raw bytes stored.
fn fill(h: &mut dyn Handle, n: u64, puts: &mut Sample) -> u64 {
    let mut raw = 0;
    for i in 0..n {
        let r = api_response(SEED, i);
        raw += r.body.len() as u64;
        puts.time(|| h.put(r.backend, &r.signature, &r.body));
        if i > 0 && i % 100_000 == 0 {
            eprintln!("  {i} puts, mean {:.1} us", puts.mean());
        }
    }
    raw
}

/// Gets `count` random keys of `0..n`; every 64th is checked against the
/// generated body (outside the timing).
fn random_gets(name: &str, h: &mut dyn Handle, n: u64, count: u64, gets: &mut Sample) {
    let mut rng = Rng::new(count ^ n);
    for g in 0..count {
        let i = rng.below(n);
        let (backend, sig) = api_key(SEED, i);
        let got = gets.time(|| h.get(backend, &sig));
        let got = got.unwrap_or_else(|| panic!("{name}: entry {i} ({backend} {sig}) missing"));
        if g % 64 == 0 && name != "sled-lean" {
            assert!(got == api_response(SEED, i).body, "{name}: wrong bytes");
        }
        black_box(got);
    }
}

/// Opens the system and gets one key: median wall time of 3 tries, in ms.
fn open_first_get(name: &str, dir: &Path, n: u64) -> f64 {
    let mut times = Sample(Vec::new());
    let (backend, sig) = api_key(SEED, n / 2);
    for _ in 0..3 {
        let sys = times.time(|| {
            let sys = open_system(name, dir);
            assert!(sys.handle().get(backend, &sig).is_some());
            sys
        });
        drop(sys);
    }
    times.quantile(0.5) / 1e3
}

/// One thread's share of the mixed workload, generated before the clock
/// starts: (key of a get, or a response to put).
enum Op {
    Get(&'static str, String),
    Put(ApiResponse),
}

fn mixed_ops(n: u64, ops: u64, thread: u64, next_new: &AtomicU64) -> Vec<Op> {
    let mut rng = Rng::new(0x4d49_5845 + thread);
    (0..ops)
        .map(|_| {
            if rng.below(10) == 0 {
                Op::Put(api_response(SEED, next_new.fetch_add(1, Ordering::Relaxed)))
            } else {
                let (b, s) = api_key(SEED, rng.below(n));
                Op::Get(b, s)
            }
        })
        .collect()
}

/// 90 % gets of random keys, 10 % puts of new entries on 4 threads, one
/// handle (SQLite: one connection) each: operations per second.
fn mixed(sys: &dyn System, n: u64, total: u64) -> f64 {
    let next_new = AtomicU64::new(n);
    let per = total / THREADS;
    let mut work: Vec<(Box<dyn Handle>, Vec<Op>)> = (0..THREADS)
        .map(|t| (sys.handle(), mixed_ops(n, per, t, &next_new)))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (h, ops) in work.iter_mut() {
            s.spawn(move || {
                for op in ops.iter() {
                    match op {
                        Op::Get(b, sig) => {
                            black_box(h.get(b, sig));
                        }
                        Op::Put(r) => h.put(r.backend, &r.signature, &r.body),
                    }
                }
            });
        }
    });
    (per * THREADS) as f64 / start.elapsed().as_secs_f64()
}

fn bench_system(name: &str, cfg: &Config) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Measured::default();
    let mut puts = Sample(Vec::with_capacity(cfg.entries as usize));
    let sys = open_system(name, dir.path());
    let mut h = sys.handle();
    let raw = fill(h.as_mut(), cfg.entries, &mut puts);
    m.put_mean = puts.mean();
    m.put_p99 = puts.quantile(0.99);
    drop(puts);
    let start = Instant::now();
    drop(h);
    drop(sys); // closes: sled flushes, SQLite checkpoints its WAL
    m.close_ms = start.elapsed().as_secs_f64() * 1e3;
    m.disk_ratio = disk_usage(dir.path()).unwrap() as f64 / raw as f64;
    m.open_ms = open_first_get(name, dir.path(), cfg.entries);
    let sys = open_system(name, dir.path());
    let mut h = sys.handle();
    let mut warm = Sample(Vec::new());
    random_gets(name, h.as_mut(), cfg.entries, cfg.gets / 10, &mut warm);
    let mut gets = Sample(Vec::new());
    random_gets(name, h.as_mut(), cfg.entries, cfg.gets, &mut gets);
    m.get_p50 = gets.quantile(0.5);
    m.get_p99 = gets.quantile(0.99);
    drop(h);
    m.mixed_ops = mixed(sys.as_ref(), cfg.entries, cfg.mixed_ops);
    m
}

// ---- the workload's shape ----------------------------------------------------

/// Lines describing the first 20,000 payloads: sizes, kinds, and how zstd-3
/// compresses them (without and with a dictionary trained on 2,000 of them).
fn describe_workload() -> Vec<String> {
    let sample: Vec<ApiResponse> = (0..20_000).map(|i| api_response(SEED, i)).collect();
    let mut sizes = Sample(sample.iter().map(|r| r.body.len() as f64).collect());
    let share = |k: ResponseKind| {
        sample.iter().filter(|r| r.kind == k).count() as f64 * 100.0 / sample.len() as f64
    };
    let mut lines = vec![format!(
        "payloads (first 20,000): mean {:.0} B, median {:.0} B, p90 {:.0} B, p99 {:.0} B, \
         max {:.0} B; records {:.1} %, list pages {:.1} %, details {:.1} %",
        sizes.mean(),
        sizes.quantile(0.5),
        sizes.quantile(0.9),
        sizes.quantile(0.99),
        sizes.quantile(1.0),
        share(ResponseKind::Record),
        share(ResponseKind::Page),
        share(ResponseKind::Detail),
    )];
    let bodies: Vec<&[u8]> = sample.iter().map(|r| r.body.as_slice()).collect();
    let near_1k: Vec<&[u8]> = bodies
        .iter()
        .copied()
        .filter(|b| (900..1150).contains(&b.len()))
        .collect();
    let dict = zstd::dict::from_samples(&bodies[..2000], 16 * 1024).unwrap();
    let test = &bodies[10_000..];
    lines.push(format!(
        "zstd-3 size/raw: all payloads {:.3}, records of 0.9-1.1 KiB {:.3}; \
         with a 16 KiB dictionary trained on 2,000 payloads: all {:.3}",
        zstd_ratio(test, &[]),
        zstd_ratio(&near_1k, &[]),
        zstd_ratio(test, &dict),
    ));
    lines
}

fn zstd_ratio(bodies: &[&[u8]], dict: &[u8]) -> f64 {
    let mut c = zstd::bulk::Compressor::with_dictionary(3, dict).unwrap();
    let raw: usize = bodies.iter().map(|b| b.len()).sum();
    let stored: usize = bodies.iter().map(|b| c.compress(b).unwrap().len()).sum();
    stored as f64 / raw as f64
}

// ---- the table ---------------------------------------------------------------

/// `value (r / w)`: how many times better than SQLite rowid and WITHOUT
/// ROWID (above 1: better). `lower` says smaller values are better.
fn cell(
    v: f64,
    base: Option<(Measured, Measured)>,
    pick: fn(&Measured) -> f64,
    lower: bool,
) -> String {
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    let Some((r, w)) = base else {
        return fmt(v);
    };
    let ratio = |b: f64| if lower { b / v } else { v / b };
    format!(
        "{} ({:.2}x / {:.2}x)",
        fmt(v),
        ratio(pick(&r)),
        ratio(pick(&w))
    )
}

type Metric = (&'static str, fn(&Measured) -> f64, bool);

const METRICS: [Metric; 8] = [
    ("put µs mean", |m| m.put_mean, true),
    ("put µs p99", |m| m.put_p99, true),
    ("get µs median", |m| m.get_p50, true),
    ("get µs p99", |m| m.get_p99, true),
    ("mixed 90/10, 4 threads, ops/s", |m| m.mixed_ops, false),
    ("disk bytes / raw byte", |m| m.disk_ratio, true),
    ("close ms", |m| m.close_ms, true),
    ("open + 1st get ms", |m| m.open_ms, true),
];

fn print_table(cfg: &Config, results: &[(&str, Measured)], notes: &[String]) {
    let find = |s: &str| results.iter().find(|r| r.0 == s).map(|r| &r.1);
    let base = match (find("sqlite-rowid"), find("sqlite-norowid")) {
        (Some(r), Some(w)) => Some((*r, *w)),
        _ => None,
    };
    println!("\n#### {} entries\n", cfg.entries);
    let mut head = "| system |".to_string();
    for (label, _, _) in METRICS {
        head.push_str(&format!(" {label} |"));
    }
    println!("{head}\n|---|{}", "---:|".repeat(METRICS.len()));
    for (name, m) in results {
        let base = base.filter(|_| !name.starts_with("sqlite"));
        let mut line = format!("| {name} |");
        for (_, pick, lower) in METRICS {
            line.push_str(&format!(" {} |", cell(pick(m), base, pick, lower)));
        }
        println!("{line}");
    }
    println!(
        "\nIn brackets: how many times better than sqlite-rowid / sqlite-norowid \
         (above 1: faster, more ops/s or smaller; below 1: blobcache or the floor loses). \
         Puts: all {} timed; gets: a sample of {} random keys over the whole set after \
         {} warm-up gets; mixed: {} operations in total.",
        cfg.entries,
        cfg.gets,
        cfg.gets / 10,
        cfg.mixed_ops
    );
    for l in notes {
        println!("\n{l}");
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let smoke = |full: u64, small: u64| if benching { full } else { small };
    let cfg = Config {
        entries: env_u64("BENCH_ENTRIES", smoke(100_000, 2_000)),
        gets: env_u64("BENCH_GETS", smoke(20_000, 500)),
        mixed_ops: env_u64("BENCH_MIXED_OPS", smoke(40_000, 400)),
        cacache_max: env_u64("BENCH_CACACHE_MAX", 100_000),
    };
    let only = std::env::var("BENCH_SYSTEMS").unwrap_or_default();
    let mut notes = describe_workload();
    for l in &notes {
        eprintln!("{l}");
    }
    let mut results = Vec::new();
    for name in SYSTEMS {
        if !only.is_empty() && !only.split(',').any(|o| o == name) {
            continue;
        }
        if name == "cacache" && cfg.entries > cfg.cacache_max {
            notes.push(format!(
                "cacache: not run above {} entries (its put alone would take minutes at this size).",
                cfg.cacache_max
            ));
            continue;
        }
        eprintln!("{name}: {} entries", cfg.entries);
        let start = Instant::now();
        let m = bench_system(name, &cfg);
        eprintln!("{name}: done in {:.0} s", start.elapsed().as_secs_f64());
        results.push((name, m));
    }
    print_table(&cfg, &results, &notes);
}
