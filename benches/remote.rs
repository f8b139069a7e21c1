//! The remote tier against its floor, on a `redis-server` this bench
//! starts itself (Unix socket, persistence off; `testkit::RedisServer`).
//!
//! - **Remote hit** of a 1 KiB and a 64 KiB JSON entry
//!   (`testkit::json_payload`): store A writes `BENCH_REMOTE_HITS` entries
//!   (default 2,000) under fresh keys; store B, on its own empty
//!   directory, gets each key once. Every timed get is a real local miss
//!   (a key B never saw), then a remote hit: GET, verified (blake3),
//!   served, stored locally in the background (a second row: the wall
//!   time of the timed hits and the `flush` that finishes storing them,
//!   per hit). The floor is a plain Redis GET of the same
//!   keys, the same bytes, with the same client crate on one reused
//!   connection (the tier reuses its pooled connection the same way).
//!   The parts are timed apart: a local miss alone, the Redis GET, zstd
//!   decompression + blake3 of the stored bytes, a local put of the
//!   payload (which also compresses, which a hit does not), and a local
//!   hit (the read that serves the entry once it is stored).
//! - **Put** of `BENCH_REMOTE_PUTS` realistic varied payloads
//!   (`testkit::api_response`, default 20,000) with the tier off, and on
//!   in background mode (the default); two rounds each, alternating, on
//!   fresh directories. The background queue's dropped writes are
//!   reported: a put that is cheap because its write was dropped would not
//!   be a fair figure.
//!
//! Run: `cargo bench --bench remote`. Under `cargo test --benches` it runs
//! a small smoke pass.

mod common;
use common::{Sample, env_u64};

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use blobcache::testkit::{RedisServer, api_response, json_payload};
use blobcache::{PutOptions, RemoteOptions, Store, StoreOptions};

/// Seed of the put workload (the realistic bench's).
const SEED: u64 = 2026;
/// Hits not timed before each row (connections, sled's caches).
const WARMUP: u64 = 50;

fn store(dir: &Path, remote: Option<RemoteOptions>) -> Store {
    let mut opts = StoreOptions::default();
    if let Some(r) = remote {
        opts = opts.remote(r);
    }
    Store::open(dir, opts).unwrap()
}

fn sig(i: u64) -> String {
    format!("movie/{i}")
}

/// One timed row: its label, mean and median in µs.
struct Row {
    label: String,
    mean: f64,
    p50: f64,
}

impl Row {
    fn of(label: impl Into<String>, mut s: Sample) -> Row {
        Row {
            label: label.into(),
            mean: s.mean(),
            p50: s.quantile(0.5),
        }
    }
}

fn print_rows(title: &str, rows: &[Row], floor: f64) {
    println!("\n{title}");
    println!(
        "{:<46} {:>10} {:>10} {:>9}",
        "", "mean µs", "p50 µs", "vs floor"
    );
    for r in rows {
        println!(
            "{:<46} {:>10.1} {:>10.1} {:>8.2}x",
            r.label,
            r.mean,
            r.p50,
            r.mean / floor
        );
    }
}

/// The remote hit of `size`-byte entries against its floor and its parts.
fn hit_row(srv: &RedisServer, tmp: &Path, size: usize, n: u64) {
    let prefix = format!("bench{size}:");
    let remote = || RemoteOptions::new(srv.url()).prefix(&prefix);
    let payload = |i: u64| json_payload(i, size);
    let a = store(
        &tmp.join(format!("a{size}")),
        Some(remote().sync_writes(true)),
    );
    for i in 0..n {
        a.put("tmdb", sig(i), &payload(i), &PutOptions::new())
            .unwrap();
    }
    let apart = redis_keys(srv, &format!("{prefix}b:*")).len();

    // The hit: a local miss, then Redis, verification, local store, served.
    let b = store(&tmp.join(format!("b{size}")), Some(remote()));
    let mut hits = Sample(Vec::new());
    let mut timed_from = Instant::now();
    for i in 0..n {
        let want = payload(i);
        if i == WARMUP {
            timed_from = Instant::now();
        }
        let got = match i < WARMUP {
            true => b.get("tmdb", sig(i)).unwrap(),
            false => hits.time(|| b.get("tmdb", sig(i)).unwrap()),
        };
        assert!(got.expect("a remote hit").data == want, "wrong bytes");
    }
    // Hits are stored locally in the background: until flush() returns,
    // the cost of storing them is not all paid. Wall time of the timed
    // hits and that flush, per hit: the throughput a loop of hits gets.
    b.flush().unwrap();
    let mut through = Sample(Vec::new());
    through
        .0
        .push(timed_from.elapsed().as_secs_f64() * 1e6 / (n - WARMUP) as f64);
    let rs = b.stats().unwrap().remote.unwrap();
    assert_eq!((rs.hits, rs.misses, rs.corrupt), (n, 0, 0), "{rs:?}");

    // The floor: the same keys' values with a plain GET, one connection.
    let mut con = redis::Client::open(srv.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    let mut floor = Sample(Vec::new());
    let mut value_bytes = 0;
    for (j, key) in redis_keys(srv, &format!("{prefix}e:*")).iter().enumerate() {
        let get = |con: &mut redis::Connection| -> Vec<u8> {
            redis::cmd("GET").arg(key).query(con).unwrap()
        };
        let v = match (j as u64) < WARMUP {
            true => get(&mut con),
            false => floor.time(|| get(&mut con)),
        };
        value_bytes += v.len();
        black_box(v);
    }
    let floor = Row::of("plain Redis GET of the entry (the floor)", floor);

    let parts = hit_parts(tmp, size, n);
    let stored = zstd::bulk::compress(&payload(0), 3).unwrap().len();
    let title = format!(
        "remote hit, {size} B JSON entry ({n} keys, {WARMUP} warm-up; stored {stored} B \
         zstd, {} B per Redis value, {apart} blobs kept apart)",
        value_bytes / n as usize
    );
    let mut rows = vec![
        Row::of("remote hit (local miss -> Redis -> served)", hits),
        Row::of("  hits back to back, then flush (wall / hit)", through),
    ];
    let f = floor.mean;
    rows.push(floor);
    rows.extend(parts);
    print_rows(&title, &rows, f);
    let mut b_local = Sample(Vec::new());
    for i in WARMUP..n {
        b_local.time(|| black_box(b.get("tmdb", sig(i)).unwrap()));
    }
    print_rows(
        "",
        &[Row::of("the same keys again (now local hits)", b_local)],
        f,
    );
}

/// The parts of a hit, each timed alone on `n` fresh keys.
fn hit_parts(tmp: &Path, size: usize, n: u64) -> Vec<Row> {
    let c = store(&tmp.join(format!("c{size}")), None);
    let (mut miss, mut verify, mut put, mut compress) = (
        Sample(Vec::new()),
        Sample(Vec::new()),
        Sample(Vec::new()),
        Sample(Vec::new()),
    );
    for i in 0..n {
        let body = json_payload(i, size);
        let z = compress.time(|| zstd::bulk::compress(&body, 3).unwrap());
        verify.time(|| {
            let raw = zstd::bulk::decompress(&z, size).unwrap();
            assert!(blake3::hash(&raw) == blake3::hash(&body));
        });
        miss.time(|| assert!(c.get("tmdb", sig(i)).unwrap().is_none()));
        put.time(|| c.put("tmdb", sig(i), &body, &PutOptions::new()).unwrap());
    }
    vec![
        Row::of("  part: local miss alone (no tier)", miss),
        Row::of("  part: zstd decompress + blake3 (verify)", verify),
        Row::of("  part: local put (includes zstd compress)", put),
        Row::of("  part: of which zstd compress (a hit skips it)", compress),
    ]
}

fn redis_keys(srv: &RedisServer, pattern: &str) -> Vec<Vec<u8>> {
    let mut con = redis::Client::open(srv.url())
        .and_then(|c| c.get_connection())
        .unwrap();
    redis::cmd("KEYS").arg(pattern).query(&mut con).unwrap()
}

/// Mean put latency of `n` realistic payloads on a fresh directory, and
/// the remote figures (writes, dropped) once the queue is drained.
fn put_round(dir: &Path, remote: Option<RemoteOptions>, n: u64) -> (Sample, Option<(u64, u64)>) {
    let s = store(dir, remote);
    let mut puts = Sample(Vec::new());
    for i in 0..n {
        let r = api_response(SEED, i);
        puts.time(|| {
            s.put(r.backend, &r.signature, &r.body, &PutOptions::new())
                .unwrap()
        });
    }
    s.flush().unwrap();
    let remote = s.stats().unwrap().remote.map(|r| (r.writes, r.dropped));
    (puts, remote)
}

fn put_row(srv: &RedisServer, tmp: &Path, n: u64) {
    let mut rows = Vec::new();
    let mut off_means = Vec::new();
    for round in 0..2 {
        let (off, _) = put_round(&tmp.join(format!("off{round}")), None, n);
        off_means.push(off.mean());
        rows.push(Row::of(format!("put, tier off (round {})", round + 1), off));
        let prefix = format!("puts{round}:");
        let on = RemoteOptions::new(srv.url()).prefix(prefix);
        let (on, figures) = put_round(&tmp.join(format!("on{round}")), Some(on), n);
        let (writes, dropped) = figures.unwrap();
        rows.push(Row::of(
            format!(
                "put, tier on, background (round {}): {writes} sent, {dropped} dropped",
                round + 1
            ),
            on,
        ));
    }
    let floor = off_means.iter().sum::<f64>() / off_means.len() as f64;
    print_rows(
        &format!("put of {n} realistic varied payloads (testkit::api_response), vs tier off"),
        &rows,
        floor,
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let smoke = |full: u64, small: u64| if benching { full } else { small };
    let hits = env_u64("BENCH_REMOTE_HITS", smoke(2_000, WARMUP + 50)).max(WARMUP + 1);
    let puts = env_u64("BENCH_REMOTE_PUTS", smoke(20_000, 200));
    let tmp = tempfile::tempdir().unwrap();
    let srv = RedisServer::start(tmp.path(), None).expect("redis-server is required");
    let started = Instant::now();
    for size in [1024, 64 * 1024] {
        hit_row(&srv, tmp.path(), size, hits);
    }
    put_row(&srv, tmp.path(), puts);
    eprintln!(
        "\nremote bench done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
