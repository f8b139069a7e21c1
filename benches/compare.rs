//! blobcache side by side with what users would pick instead, in one run
//! on the same payloads (DESIGN.md §6):
//!
//! - `seed-sqlite`: one SQLite table keyed by `(backend, signature)`, WAL,
//!   `synchronous=NORMAL`, cached prepared statements (what users run today;
//!   every ratio is quoted against it),
//! - `cacache`: the content-addressable cache crate, sync API,
//! - `blobcache`: this crate in-process (the owner), defaults (L1 off),
//! - `blobcache-l1`: the same with the in-process memory tier on,
//! - `sled`: raw insert/get of the same bytes under the same key (our floor).
//!
//! Payloads: realistic API-response JSON of 1 KiB and 16 KiB
//! (`testkit::json_payload`, fixed seeds) and 256 KiB of random bytes.
//! Workloads: hot get, miss, put of a new payload, put of a duplicate
//! payload, mixed 90 % get / 10 % put on 4 threads (time per operation, all
//! threads together), then printed figures: disk bytes per logical byte
//! after 100k puts of 1 KiB JSON, open time at `BENCH_OPEN_ENTRIES` entries
//! (default 100,000), and what a trained zstd dictionary adds on 1 KiB JSON.
//!
//! Run: `scripts/bench-table.sh` (or `cargo bench --bench compare`); at the
//! end the bench prints one table of medians and ratios to seed-sqlite.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blobcache::testkit::{Rng, json_payload};
use blobcache::{PutOptions, Store, StoreOptions};
use criterion::{BenchmarkId, Criterion};

const BACKEND: &str = "tmdb";
const TTL_MS: i64 = 72 * 3600 * 1000;
/// Entries loaded before the get and mixed workloads.
const PRELOAD: u64 = 2_000;

/// One thread's connection to a system under test.
trait Handle: Send {
    fn put(&mut self, sig: &str, payload: &[u8]);
    fn get(&mut self, sig: &str) -> bool;
}

/// A system under test, opened on its own temporary directory.
trait System: Send + Sync {
    fn handle(&self) -> Box<dyn Handle>;
}

const SYSTEMS: [&str; 5] = [
    "seed-sqlite",
    "cacache",
    "blobcache",
    "blobcache-l1",
    "sled",
];

fn open_system(name: &str, dir: &Path) -> Box<dyn System> {
    match name {
        "seed-sqlite" => Box::new(Sqlite::open(dir)),
        "cacache" => Box::new(Cacache(dir.to_path_buf())),
        "blobcache" => Box::new(Blobcache::open(dir, StoreOptions::default())),
        "blobcache-l1" => Box::new(Blobcache::open(
            dir,
            StoreOptions::default().memory_tier(64 << 20),
        )),
        "sled" => Box::new(RawSled::open(dir)),
        other => panic!("unknown system {other}"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---- seed-sqlite ---------------------------------------------------------

struct Sqlite(PathBuf);

impl Sqlite {
    fn open(dir: &Path) -> Sqlite {
        let path = dir.join("cache.sqlite");
        let conn = sqlite_conn(&path);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS cache (backend TEXT, signature TEXT, payload BLOB, \
             expires_at INTEGER, PRIMARY KEY(backend, signature)) WITHOUT ROWID;",
        )
        .unwrap();
        Sqlite(path)
    }
}

fn sqlite_conn(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

impl System for Sqlite {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(SqliteHandle(sqlite_conn(&self.0)))
    }
}

struct SqliteHandle(rusqlite::Connection);

impl Handle for SqliteHandle {
    fn put(&mut self, sig: &str, payload: &[u8]) {
        let mut st = self
            .0
            .prepare_cached(
                "INSERT OR REPLACE INTO cache (backend, signature, payload, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .unwrap();
        st.execute(rusqlite::params![BACKEND, sig, payload, now_ms() + TTL_MS])
            .unwrap();
    }
    fn get(&mut self, sig: &str) -> bool {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT payload FROM cache WHERE backend = ?1 AND signature = ?2 \
                 AND expires_at > ?3",
            )
            .unwrap();
        let mut rows = st.query(rusqlite::params![BACKEND, sig, now_ms()]).unwrap();
        match rows.next().unwrap() {
            Some(row) => {
                let data: Vec<u8> = row.get(0).unwrap();
                black_box(data);
                true
            }
            None => false,
        }
    }
}

// ---- cacache -------------------------------------------------------------

struct Cacache(PathBuf);

impl System for Cacache {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(Cacache(self.0.clone()))
    }
}

impl Handle for Cacache {
    fn put(&mut self, sig: &str, payload: &[u8]) {
        cacache::write_sync(&self.0, format!("{BACKEND}/{sig}"), payload).unwrap();
    }
    fn get(&mut self, sig: &str) -> bool {
        match cacache::read_sync(&self.0, format!("{BACKEND}/{sig}")) {
            Ok(data) => {
                black_box(data);
                true
            }
            Err(cacache::Error::EntryNotFound(..)) => false,
            Err(e) => panic!("cacache read: {e}"),
        }
    }
}

// ---- blobcache -----------------------------------------------------------

struct Blobcache(Store, PutOptions);

impl Blobcache {
    fn open(dir: &Path, opts: StoreOptions) -> Blobcache {
        Blobcache(Store::open(dir, opts).unwrap(), PutOptions::new())
    }
}

impl System for Blobcache {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(Blobcache(self.0.clone(), self.1.clone()))
    }
}

impl Handle for Blobcache {
    fn put(&mut self, sig: &str, payload: &[u8]) {
        self.0.put(BACKEND, sig, payload, &self.1).unwrap();
    }
    fn get(&mut self, sig: &str) -> bool {
        match self.0.get(BACKEND, sig).unwrap() {
            Some(hit) => {
                black_box(hit);
                true
            }
            None => false,
        }
    }
}

// ---- raw sled ------------------------------------------------------------

struct RawSled(sled::Db, PathBuf);

impl RawSled {
    fn open(dir: &Path) -> RawSled {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(64 << 20)
            .open()
            .unwrap();
        RawSled(db, dir.to_path_buf())
    }
}

fn sled_key(sig: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(BACKEND.len() + sig.len() + 1);
    k.extend_from_slice(BACKEND.as_bytes());
    k.push(0);
    k.extend_from_slice(sig.as_bytes());
    k
}

impl System for RawSled {
    fn handle(&self) -> Box<dyn Handle> {
        Box::new(RawSled(self.0.clone(), self.1.clone()))
    }
}

impl Handle for RawSled {
    fn put(&mut self, sig: &str, payload: &[u8]) {
        self.0.insert(sled_key(sig), payload).unwrap();
    }
    fn get(&mut self, sig: &str) -> bool {
        match self.0.get(sled_key(sig)).unwrap() {
            Some(v) => {
                black_box(v);
                true
            }
            None => false,
        }
    }
}

// ---- payloads ------------------------------------------------------------

#[derive(Clone, Copy)]
struct Payload {
    label: &'static str,
    size: usize,
    json: bool,
}

const PAYLOADS: [Payload; 3] = [
    Payload {
        label: "1KiB-json",
        size: 1024,
        json: true,
    },
    Payload {
        label: "16KiB-json",
        size: 16 * 1024,
        json: true,
    },
    Payload {
        label: "256KiB-binary",
        size: 256 * 1024,
        json: false,
    },
];

impl Payload {
    fn make(&self, seed: u64) -> Vec<u8> {
        if self.json {
            return json_payload(seed, self.size);
        }
        let mut b = vec![0u8; self.size];
        Rng::new(seed).fill(&mut b);
        b
    }
}

/// Makes `buf` a payload nobody stored before by writing `n` as digits
/// into it (at the JSON's top-level id), without copying it.
fn make_distinct(buf: &mut [u8], n: u64) {
    let digits = format!("{n:012}");
    let at = 6.min(buf.len().saturating_sub(digits.len()));
    buf[at..at + digits.len()].copy_from_slice(digits.as_bytes());
}

// ---- workloads -----------------------------------------------------------

fn preload(h: &mut dyn Handle, p: Payload) {
    for i in 0..PRELOAD {
        h.put(&format!("k{i}"), &p.make(i));
    }
}

fn single_thread(c: &mut Criterion, p: Payload) {
    for name in SYSTEMS {
        let dir = tempfile::tempdir().unwrap();
        let sys = open_system(name, dir.path());
        let mut h = sys.handle();
        preload(h.as_mut(), p);
        let mut i = 0u64;
        c.benchmark_group(format!("get_hit-{}", p.label))
            .bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    i = (i + 7919) % PRELOAD;
                    assert!(h.get(&format!("k{i}")));
                })
            });
        c.benchmark_group(format!("get_miss-{}", p.label))
            .bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| assert!(!h.get("absent")))
            });
        let mut buf = p.make(1 << 40);
        let mut n = 1u64 << 32;
        c.benchmark_group(format!("put_new-{}", p.label))
            .bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    n += 1;
                    make_distinct(&mut buf, n);
                    h.put(&format!("n{n}"), &buf);
                })
            });
        let dup = p.make(7);
        c.benchmark_group(format!("put_dup-{}", p.label))
            .bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    n += 1;
                    h.put(&format!("d{n}"), &dup);
                })
            });
        drop(h);
        drop(sys);
    }
}

/// 90 % gets of preloaded keys, 10 % puts of new payloads, on 4 threads;
/// reports wall time per operation (all threads together).
fn mixed(c: &mut Criterion, p: Payload) {
    const THREADS: u64 = 4;
    let mut g = c.benchmark_group(format!("mixed4-{}", p.label));
    for name in SYSTEMS {
        let dir = tempfile::tempdir().unwrap();
        let sys: Arc<dyn System> = Arc::from(open_system(name, dir.path()));
        preload(sys.handle().as_mut(), p);
        let counter = Arc::new(AtomicU64::new(1 << 36));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(THREADS);
                let mut hs: Vec<_> = (0..THREADS)
                    .map(|t| (sys.handle(), p.make(1000 + t), Rng::new(t + iters)))
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for (h, buf, rng) in hs.iter_mut() {
                        let counter = &counter;
                        s.spawn(move || {
                            for _ in 0..per {
                                if rng.below(10) == 0 {
                                    let n = counter.fetch_add(1, Ordering::Relaxed);
                                    make_distinct(buf, n);
                                    h.put(&format!("m{n}"), buf);
                                } else {
                                    let k = rng.below(PRELOAD);
                                    black_box(h.get(&format!("k{k}")));
                                }
                            }
                        });
                    }
                });
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * THREADS) as f64)
            })
        });
    }
    g.finish();
}

// ---- printed figures -----------------------------------------------------

fn du(dir: &std::path::Path) -> u64 {
    blobcache::testkit::disk_usage(dir).unwrap()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Disk bytes (everything in the directory, index included) per logical
/// byte after `BENCH_DISK_PUTS` (default 100,000) puts of distinct 1 KiB
/// JSON responses.
fn disk(rows: &mut Vec<Row>) {
    let n = env_u64("BENCH_DISK_PUTS", 100_000);
    let mut row = Row::new(format!("disk B/B, {n} x 1KiB json"), "");
    for name in SYSTEMS {
        if name == "blobcache-l1" {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let sys = open_system(name, dir.path());
        let mut h = sys.handle();
        let mut raw = 0;
        for i in 0..n {
            let body = json_payload(i, 1024);
            raw += body.len() as u64;
            h.put(&format!("movie/{i}"), &body);
        }
        drop(h);
        drop(sys); // closes: sled flushes, SQLite checkpoints its WAL
        let ratio = du(dir.path()) as f64 / raw as f64;
        eprintln!("disk: {name}: {ratio:.3} bytes on disk per raw byte");
        row.set(name, ratio);
    }
    rows.push(row);
}

/// Time to open a store holding `BENCH_OPEN_ENTRIES` entries (default
/// 100,000; 1M takes minutes to load) and read one entry.
fn open_time(rows: &mut Vec<Row>) {
    let n = env_u64("BENCH_OPEN_ENTRIES", 100_000);
    let mut row = Row::new(format!("open+1 get, {n} entries"), "ms");
    for name in ["seed-sqlite", "blobcache", "sled"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let sys: Arc<dyn System> = Arc::from(open_system(name, dir.path()));
            std::thread::scope(|s| {
                for t in 0..2 {
                    let sys = &sys;
                    s.spawn(move || {
                        let mut h = sys.handle();
                        let body = json_payload(t, 200);
                        for i in (t..n).step_by(2) {
                            h.put(&format!("e{i}"), &body);
                        }
                    });
                }
            });
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let sys = open_system(name, dir.path());
            assert!(sys.handle().get("e1"));
            times.push(start.elapsed().as_secs_f64() * 1e3);
            drop(sys);
        }
        let ms = median(&mut times);
        eprintln!("open: {name}: {ms:.1} ms at {n} entries");
        row.set(name, ms);
    }
    rows.push(row);
}

/// What a per-backend zstd dictionary (trained on 2,000 stored responses)
/// adds on 1 KiB JSON at level 3: compressed size and time per payload.
fn zstd_dictionary(rows: &mut Vec<Row>) {
    let samples: Vec<Vec<u8>> = (0..2000).map(|i| json_payload(i, 1024)).collect();
    let dict = zstd::dict::from_samples(&samples, 16 * 1024).unwrap();
    let test: Vec<Vec<u8>> = (5000..7000).map(|i| json_payload(i, 1024)).collect();
    let raw: usize = test.iter().map(Vec::len).sum();
    let mut plain = zstd::bulk::Compressor::new(3).unwrap();
    let mut with = zstd::bulk::Compressor::with_dictionary(3, &dict).unwrap();
    let measure = |c: &mut zstd::bulk::Compressor| {
        let start = Instant::now();
        let stored: usize = test.iter().map(|t| c.compress(t).unwrap().len()).sum();
        let us = start.elapsed().as_secs_f64() * 1e6 / test.len() as f64;
        (stored as f64 / raw as f64, us)
    };
    let (r0, t0) = measure(&mut plain);
    let (r1, t1) = measure(&mut with);
    eprintln!(
        "zstd-3 on 1 KiB JSON: no dictionary {r0:.3} of raw in {t0:.1} us; \
         16 KiB dictionary {r1:.3} of raw in {t1:.1} us"
    );
    let mut row = Row::new("zstd-3 1KiB json, size/raw".into(), "");
    row.note = format!(
        "no dict {r0:.3} ({t0:.1} us), with 16 KiB dict {r1:.3} ({t1:.1} us): {:.2}x smaller",
        r0 / r1
    );
    rows.push(row);
}

// ---- the table -----------------------------------------------------------

struct Row {
    workload: String,
    unit: &'static str,
    values: Vec<(&'static str, f64)>,
    note: String,
}

impl Row {
    fn new(workload: String, unit: &'static str) -> Row {
        Row {
            workload,
            unit,
            values: Vec::new(),
            note: String::new(),
        }
    }
    fn set(&mut self, system: &'static str, v: f64) {
        self.values.push((system, v));
    }
    fn get(&self, system: &str) -> Option<f64> {
        self.values.iter().find(|(s, _)| *s == system).map(|v| v.1)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn criterion_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// Median time (ns) criterion measured for `group/function` in this run
/// (results of earlier runs, for benchmarks filtered out now, are left out).
fn criterion_median(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn timing_rows(since: SystemTime) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in PAYLOADS {
        for w in ["get_hit", "get_miss", "put_new", "put_dup", "mixed4"] {
            let group = format!("{w}-{}", p.label);
            let mut row = Row::new(group.clone(), "us");
            for s in SYSTEMS {
                if let Some(ns) = criterion_median(&group, s, since) {
                    row.set(s, ns / 1e3);
                }
            }
            if !row.values.is_empty() {
                rows.push(row);
            }
        }
    }
    rows
}

fn print_table(rows: &[Row]) {
    let mut head = format!("| {:<28} |", "workload (median)");
    for s in SYSTEMS {
        head.push_str(&format!(" {s:>12} |"));
    }
    println!("\n{head} blobcache / sqlite | blobcache-l1 / sqlite |");
    println!("|{}|", ["---|"; 8].concat().trim_end_matches('|'));
    for r in rows {
        if !r.note.is_empty() {
            println!("| {:<28} | {} |", r.workload, r.note);
            continue;
        }
        let mut line = format!("| {:<28} |", format!("{} {}", r.workload, r.unit));
        for s in SYSTEMS {
            match r.get(s) {
                Some(v) => line.push_str(&format!(" {v:>12.3} |")),
                None => line.push_str(&format!(" {:>12} |", "-")),
            }
        }
        for s in ["blobcache", "blobcache-l1"] {
            match (r.get(s), r.get("seed-sqlite")) {
                (Some(b), Some(q)) if b > 0.0 => line.push_str(&format!(" {:>17.2}x |", q / b)),
                _ => line.push_str(&format!(" {:>18} |", "-")),
            }
        }
        println!("{line}");
    }
    println!(
        "\nTimes: median per operation (mixed4: wall time per operation with 4 threads). \
         Ratios: seed-sqlite / blobcache, so above 1 means blobcache is faster (or smaller on disk)."
    );
}

fn main() {
    let started = SystemTime::now();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|o| o == part);
    for p in PAYLOADS {
        if want("single") {
            single_thread(&mut c, p);
        }
        if want("mixed") {
            mixed(&mut c, p);
        }
    }
    c.final_summary();
    let mut rows = timing_rows(started);
    if want("disk") {
        disk(&mut rows);
    }
    if want("open") {
        open_time(&mut rows);
    }
    if want("dict") {
        zstd_dictionary(&mut rows);
    }
    print_table(&rows);
}
