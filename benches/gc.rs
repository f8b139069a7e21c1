//! GC figures: sweep time for 100k entries with half of them expired (and
//! the worst get latency seen while it runs), bytes saved by level-19
//! recompression of JSON payloads, and the cost of access tracking on gets.
//!
//! `cargo bench --bench gc` (plain timing, one run; prints a table).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blobcache::testkit::json_payload;
use blobcache::{GcOptions, ManualClock, PutOptions, Store, StoreOptions};

const HOUR: Duration = Duration::from_secs(3600);

/// A store holding 100k 1 KiB JSON entries, half of them expired.
fn half_expired(dir: &std::path::Path, probe: bool) -> Store {
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    // The probe's own access-statistics flushes (4096 record rewrites under
    // the index writer lock) would be counted as GC stalls: leave them out.
    let opts = StoreOptions::default()
        .clock(clock.clone())
        .track_access(!probe);
    let store = Store::open(dir, opts).unwrap();
    let short = PutOptions::new().ttl(HOUR);
    let long = PutOptions::new().ttl(1000 * HOUR);
    for i in 0..N {
        let opts = if i % 2 == 0 { &short } else { &long };
        store
            .put("bench", format!("k{i}"), &json_payload(i, 1024), opts)
            .unwrap();
    }
    store.flush().unwrap();
    clock.advance(2 * HOUR);
    store
}

const N: u64 = 100_000;

fn sweep_100k() {
    let gc = GcOptions::new().grace(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let store = half_expired(dir.path(), false);
    let t = Instant::now();
    let r = store.gc(&gc).unwrap();
    let took = t.elapsed();
    assert_eq!(r.entries_expired, N / 2);
    println!(
        "sweep of {N} entries (1 KiB JSON, inline), {} expired: {:.2} s ({:.1} µs per expired entry)",
        r.entries_expired,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / r.entries_expired as f64
    );
    drop(store);

    // Again with a client getting and putting throughout the sweep.
    let dir = tempfile::tempdir().unwrap();
    let store = half_expired(dir.path(), true);
    let done = Arc::new(AtomicBool::new(false));
    let (client, stop) = (store.clone(), done.clone());
    let probe = std::thread::spawn(move || {
        let (mut get, mut put, mut n) = (Vec::new(), Vec::new(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            let i = ((n * 7919) % N) | 1;
            let t = Instant::now();
            let _ = client.get("bench", format!("k{i}")).unwrap();
            get.push(t.elapsed());
            let t = Instant::now();
            let body = json_payload(N + n, 1024);
            client
                .put("bench", format!("new{n}"), &body, &PutOptions::new())
                .unwrap();
            put.push(t.elapsed());
            n += 1;
        }
        (get, put)
    });
    let t = Instant::now();
    let r = store.gc(&gc).unwrap();
    let took = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let (mut get, mut put) = probe.join().unwrap();
    assert_eq!(r.entries_expired, N / 2);
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
    };
    println!(
        "  with a client alongside: sweep {:.2} s; {} gets p50 {:.3} / p99 {:.3} / max {:.2} ms; \
         {} puts p50 {:.3} / p99 {:.3} / max {:.2} ms",
        took.as_secs_f64(),
        get.len(),
        pct(&mut get, 0.5),
        pct(&mut get, 0.99),
        pct(&mut get, 1.0),
        put.len(),
        pct(&mut put, 0.5),
        pct(&mut put, 0.99),
        pct(&mut put, 1.0),
    );
}

fn recompression() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let opts = StoreOptions::default().clock(clock.clone());
    let store = Store::open(dir.path(), opts).unwrap();
    let month = PutOptions::new().ttl(720 * HOUR);
    let mut raw = 0u64;
    for i in 0..200u64 {
        let size = (32 * 1024) << (i % 4); // 32 KiB .. 256 KiB
        let p = json_payload(i, size);
        raw += p.len() as u64;
        store.put("bench", format!("k{i}"), &p, &month).unwrap();
    }
    clock.advance(8 * 24 * HOUR);
    let t = Instant::now();
    let r = store.gc(&GcOptions::new().recompress_level(19)).unwrap();
    let took = t.elapsed();
    let after = r.bytes_recompressed - r.bytes_saved;
    println!(
        "recompression 3 -> 19 of {} JSON blobs ({:.1} MiB raw): {} -> {} bytes, {:.1}% saved \
         ({:.2}x smaller), {:.2} s",
        r.blobs_recompressed,
        raw as f64 / (1 << 20) as f64,
        r.bytes_recompressed,
        after,
        100.0 * r.bytes_saved as f64 / r.bytes_recompressed.max(1) as f64,
        r.bytes_recompressed as f64 / after.max(1) as f64,
        took.as_secs_f64()
    );
}

fn get_latency(track: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default().track_access(track)).unwrap();
    const N: u64 = 10_000;
    for i in 0..N {
        store
            .put(
                "bench",
                format!("k{i}"),
                &json_payload(i, 1024),
                &PutOptions::new(),
            )
            .unwrap();
    }
    let keys: Vec<String> = (0..N).map(|i| format!("k{}", i * 7919 % N)).collect();
    for k in &keys {
        store.get("bench", k).unwrap().unwrap();
    }
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        for k in &keys {
            std::hint::black_box(store.get("bench", k).unwrap());
        }
    }
    t.elapsed().as_secs_f64() * 1e9 / (rounds * N) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench --bench gc -- sweep` runs only the parts named.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    if wanted("sweep") {
        sweep_100k();
    }
    if wanted("recompress") {
        recompression();
    }
    if !wanted("get") {
        return;
    }
    let on = get_latency(true);
    let off = get_latency(false);
    println!(
        "get of a 1 KiB JSON entry: {:.2} µs with access tracking, {:.2} µs without \
         ({:+.1}%, {:.0} ns per get)",
        on / 1e3,
        off / 1e3,
        100.0 * (on - off) / off,
        on - off
    );
}
