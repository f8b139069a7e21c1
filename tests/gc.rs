//! The GC sweeper: expiry after the grace period, orphan blobs, the put/GC
//! race, the size cap with LRU eviction and pinning, recompression, one
//! sweep at a time, the background sweeper, and `kill -9` mid-sweep.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use blobcache::{
    BlobHash, Error, GcOptions, GcStep, ManualClock, PutOptions, Store, StoreOptions, test_hooks,
};
use common::*;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn blob_path(dir: &Path, payload: &[u8]) -> PathBuf {
    let hex = BlobHash::of(payload).to_hex();
    dir.join("blobs").join(&hex[..2]).join(&hex[2..])
}

fn now_gc() -> GcOptions {
    GcOptions::new().safety_window(Duration::ZERO)
}

/// Waits (polling) until `cond` holds; panics after a generous deadline.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A put stopped after its blob is in place, before its record goes in.
struct PausedPut {
    _hook: test_hooks::HookGuard,
    go: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<blobcache::Result<blobcache::PutReport>>,
}

impl PausedPut {
    /// Starts a put of `payload` at `b/<signature>` in another thread and
    /// returns once it has placed its blob (the first time).
    fn start(store: &Store, signature: &'static str, payload: &[u8]) -> PausedPut {
        let (placed_tx, placed_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let first = AtomicBool::new(true);
        let hook = test_hooks::on_blob_placed(BlobHash::of(payload), move || {
            if first.swap(false, Ordering::SeqCst) {
                placed_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
        });
        let (writer, data) = (store.clone(), payload.to_vec());
        let thread =
            std::thread::spawn(move || writer.put("b", signature, &data, &PutOptions::new()));
        placed_rx.recv().unwrap();
        PausedPut {
            _hook: hook,
            go,
            thread,
        }
    }

    /// Lets the put insert its record.
    fn finish(self) -> blobcache::PutReport {
        self.go.send(()).unwrap();
        self.thread.join().unwrap().unwrap()
    }
}

#[test]
fn expiry_waits_for_the_grace_period_then_frees_entries_and_blobs() {
    let (dir, store, clock) = store_with_clock();
    let short = PutOptions::new().ttl(HOUR);
    for i in 0..300u64 {
        store
            .put("tmdb", format!("old/{i}"), &json_payload(i, 500), &short)
            .unwrap();
    }
    let file_payload = noise(1, 40_000);
    store
        .put("tmdb", "old/file", &file_payload, &short)
        .unwrap();
    let fresh = PutOptions::new().ttl(30 * DAY);
    store
        .put("tmdb", "fresh", &json_payload(999, 500), &fresh)
        .unwrap();

    clock.advance(2 * HOUR);
    let r = store.gc(&now_gc()).unwrap();
    assert_eq!(r.entries_expired, 0, "inside the 7-day grace: {r:?}");
    assert!(store.get("tmdb", "old/1").unwrap().is_none());
    assert!(store.get_stale("tmdb", "old/1").unwrap().is_some());

    clock.advance(7 * DAY);
    let dry = store.gc(&now_gc().dry_run(true)).unwrap();
    assert_eq!((dry.dry_run, dry.entries_expired), (true, 301), "{dry:?}");
    assert!(store.get_stale("tmdb", "old/1").unwrap().is_some());
    assert!(blob_path(dir.path(), &file_payload).exists());

    let steps = Arc::new(Mutex::new(Vec::new()));
    let seen = steps.clone();
    let opts = now_gc()
        .batch_size(64)
        .progress(move |p| seen.lock().unwrap().push((p.step, p.done, p.total)));
    let r = store.gc(&opts).unwrap();
    assert_eq!(r.entries_expired, 301, "{r:?}");
    assert_eq!(r.blobs_deleted, 1, "the expired entry's file blob: {r:?}");
    assert!(r.bytes_freed >= 40_000, "{r:?}");
    assert!(!blob_path(dir.path(), &file_payload).exists());
    let expire: Vec<_> = steps
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == GcStep::Expire)
        .cloned()
        .collect();
    assert!(expire.len() >= 5, "batches of 64: {expire:?}");
    assert_eq!(expire.last(), Some(&(GcStep::Expire, 301, Some(301))));

    assert!(store.get_stale("tmdb", "old/1").unwrap().is_none());
    assert!(store.get("tmdb", "fresh").unwrap().is_some());
    let stats = store.stats().unwrap();
    assert_eq!((stats.entries, stats.blobs), (1, 1), "{stats:?}");
    assert_clean(&store);
}

#[test]
fn blob_released_by_rm_goes_at_the_next_sweep_and_young_unknown_files_stay() {
    let (dir, store, _clock) = store_with_clock();
    let payload = noise(2, 40_000);
    let path = blob_path(dir.path(), &payload);
    store.put("b", "k", &payload, &PutOptions::new()).unwrap();
    assert!(store.delete("b", "k").unwrap());
    assert_eq!(store.stats().unwrap().blobs, 1, "kept at refcount 0");

    // The default safety window protects only files the index does not
    // know: a known blob whose last entry went is freed at once.
    let r = store.gc(&GcOptions::new()).unwrap();
    assert_eq!(r.blobs_deleted, 1, "{r:?}");
    assert!(r.bytes_freed >= 40_000, "{r:?}");
    assert!(!path.exists());
    let stats = store.stats().unwrap();
    assert_eq!((stats.blobs, stats.blob_bytes), (0, 0), "{stats:?}");

    // Files the index never knew: an old one is an orphan, a young one may
    // belong to a put in progress.
    let old = noise(3, 30_000);
    let young = noise(4, 30_000);
    for p in [&old, &young] {
        let f = blob_path(dir.path(), p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, p).unwrap();
    }
    File::options()
        .write(true)
        .open(blob_path(dir.path(), &old))
        .unwrap()
        .set_modified(SystemTime::now() - 2 * HOUR)
        .unwrap();
    let r = store.gc(&GcOptions::new()).unwrap();
    assert_eq!(r.blobs_deleted, 1, "{r:?}");
    assert!(!blob_path(dir.path(), &old).exists());
    assert!(blob_path(dir.path(), &young).exists());

    // A payload whose blob was deleted can be stored again.
    store.put("b", "k", &payload, &PutOptions::new()).unwrap();
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, payload);
    assert_clean(&store);
}

#[test]
fn blob_of_a_put_not_yet_recorded_survives_a_sweep() {
    let (dir, store, _clock) = store_with_clock();
    let payload = noise(5, 50_000);
    let put = PausedPut::start(&store, "k", &payload);
    assert!(blob_path(dir.path(), &payload).exists(), "blob written");
    assert!(store.meta("b", "k").unwrap().is_none(), "record not yet in");
    let r = store.gc(&GcOptions::new()).unwrap();
    assert_eq!(r.blobs_deleted, 0, "{r:?}");
    put.finish();

    assert_eq!(store.get("b", "k").unwrap().unwrap().data, payload);
    assert_clean(&store);
}

#[test]
fn put_that_reuses_a_blob_being_deleted_writes_it_again() {
    let (dir, store, _clock) = store_with_clock();
    let payload = noise(6, 50_000);
    store
        .put("b", "first", &payload, &PutOptions::new())
        .unwrap();
    store.delete("b", "first").unwrap();

    // The put finds the unreferenced blob in place and reuses it; before
    // its record goes in, a sweep with the default options deletes it (a
    // known, unreferenced blob is claimed whatever its age).
    let put = PausedPut::start(&store, "second", &payload);
    let r = store.gc(&GcOptions::new()).unwrap();
    assert_eq!(r.blobs_deleted, 1, "{r:?}");
    assert!(!blob_path(dir.path(), &payload).exists());
    let report = put.finish();
    assert!(!report.deduplicated, "the blob had to be written again");

    assert!(blob_path(dir.path(), &payload).exists());
    assert_eq!(store.get("b", "second").unwrap().unwrap().data, payload);
    assert_clean(&store);
}

#[test]
fn size_cap_evicts_least_recently_used_and_keeps_pinned_entries() {
    let (_dir, store, clock) = store_with_clock();
    let n = 14u64;
    for i in 0..n {
        clock.advance(Duration::from_secs(1));
        let opts = PutOptions::new().pinned(i == 0);
        store
            .put("b", format!("k{i}"), &noise(100 + i, 40_000), &opts)
            .unwrap();
    }
    // k1..k3 are read last: the most recently used.
    clock.advance(Duration::from_secs(1));
    for i in 1..=3 {
        assert!(store.get("b", format!("k{i}")).unwrap().is_some());
    }
    store.flush().unwrap();
    let before = store.stats().unwrap();
    let cap = before.disk_bytes() - 5 * 41_000;
    let r = store.gc(&now_gc().max_size(cap)).unwrap();
    let after = store.stats().unwrap();
    assert!(r.entries_evicted >= 5, "{r:?}");
    assert!(after.disk_bytes() <= cap, "{after:?} over cap {cap}");
    assert_eq!(r.disk_bytes_after, after.disk_bytes());

    let present: Vec<bool> = (0..n)
        .map(|i| store.meta("b", format!("k{i}")).unwrap().is_some())
        .collect();
    assert!(present[0], "pinned entry evicted: {present:?}");
    assert!(
        present[1..=3].iter().all(|p| *p),
        "recently read: {present:?}"
    );
    // Evicted entries are exactly the oldest unpinned ones.
    let evicted = present[4..].iter().take_while(|p| !**p).count();
    assert_eq!(evicted as u64, r.entries_evicted, "{present:?}");
    assert!(present[4 + evicted..].iter().all(|p| *p), "{present:?}");
    assert_clean(&store);

    // A cap that evicting everything could not meet evicts nothing.
    let entries = store.stats().unwrap().entries;
    let r = store.gc(&now_gc().max_size(1)).unwrap();
    assert!(r.still_over_cap, "{r:?}");
    assert_eq!(r.entries_evicted, 0, "{r:?}");
    assert_eq!(store.stats().unwrap().entries, entries);
    assert_clean(&store);
}

#[test]
fn put_racing_a_sweep_after_rm_keeps_its_blob() {
    let (dir, store, _clock) = store_with_clock();
    let payload = noise(8, 50_000);
    store.put("b", "a", &payload, &PutOptions::new()).unwrap();
    store.delete("b", "a").unwrap();
    // The put's record goes in first: the sweep that follows finds the
    // blob referenced again and leaves it.
    let put = PausedPut::start(&store, "again", &payload);
    let report = put.finish();
    assert!(report.deduplicated, "the blob in place was reused");
    let r = store.gc(&GcOptions::new()).unwrap();
    assert_eq!(r.blobs_deleted, 0, "{r:?}");
    assert!(blob_path(dir.path(), &payload).exists());
    assert_eq!(store.get("b", "again").unwrap().unwrap().data, payload);
    assert_clean(&store);
}

/// Fills a store with what a sweep frees: entries removed by `rm` and
/// `clear`, expired entries (file and inline blobs, some shared with live
/// entries), and old entries over a size cap.
fn store_with_garbage() -> (tempfile::TempDir, Store, Arc<ManualClock>) {
    let (dir, store, clock) = store_with_clock();
    let short = PutOptions::new().ttl(HOUR);
    let long = PutOptions::new().ttl(30 * DAY);
    for i in 0..30u64 {
        clock.advance(Duration::from_secs(1));
        let opts = if i % 2 == 0 { &short } else { &long };
        store
            .put("old", format!("f{i}"), &noise(300 + i, 40_000), opts)
            .unwrap();
        store
            .put("old", format!("i{i}"), &json_payload(i, 700), opts)
            .unwrap();
    }
    // Shared blobs: an expired entry whose payload a live one still uses.
    store.put("live", "f0", &noise(300, 40_000), &long).unwrap();
    store
        .put("live", "i0", &json_payload(0, 700), &long)
        .unwrap();
    for i in 0..10u64 {
        store
            .put("gone", format!("f{i}"), &noise(400 + i, 40_000), &long)
            .unwrap();
    }
    for i in 1..6u64 {
        assert!(store.delete("old", format!("f{}", 2 * i + 1)).unwrap());
    }
    assert_eq!(
        store.clear(&blobcache::Selector::backend("gone")).unwrap(),
        10
    );
    clock.advance(2 * HOUR);
    store.flush().unwrap();
    (dir, store, clock)
}

#[test]
fn dry_run_predicts_what_the_real_sweep_frees() {
    let (_dir, store, _clock) = store_with_garbage();
    let before = store.stats().unwrap();
    let opts = GcOptions::new().grace(Duration::ZERO);
    let dry = store.gc(&opts.clone().dry_run(true)).unwrap();
    assert_eq!(store.stats().unwrap().entries, before.entries, "{dry:?}");
    let real = store.gc(&opts).unwrap();
    let figures = |r: &blobcache::GcReport| {
        (
            r.entries_expired,
            r.entries_evicted,
            r.blobs_deleted,
            r.bytes_freed,
        )
    };
    assert_eq!(figures(&dry), figures(&real), "dry {dry:?}\nreal {real:?}");
    // 15 expired file blobs, one still used; 5 removed by rm; 10 cleared.
    assert_eq!(real.blobs_deleted, 14 + 5 + 10, "{real:?}");
    assert!(real.bytes_freed >= 29 * 40_000, "{real:?}");
    assert_clean(&store);

    // The same with eviction for a size cap.
    let (_dir, store, _clock) = store_with_garbage();
    let usage = store.stats().unwrap().disk_bytes();
    // 29 blobs go first; six more must be evicted.
    let opts = opts.max_size(usage - 35 * 41_000);
    let dry = store.gc(&opts.clone().dry_run(true)).unwrap();
    let real = store.gc(&opts).unwrap();
    assert!(real.entries_evicted > 0, "{real:?}");
    assert!(!real.still_over_cap, "{real:?}");
    assert_eq!(figures(&dry), figures(&real), "dry {dry:?}\nreal {real:?}");
    assert_clean(&store);
}

#[test]
fn a_cap_eviction_cannot_meet_evicts_nothing_and_says_so() {
    let (_dir, store, _clock) = store_with_clock();
    // Inline payloads (their bytes are in the index) and a pinned file.
    for i in 0..200u64 {
        store
            .put(
                "b",
                format!("i{i}"),
                &json_payload(i, 2_000),
                &PutOptions::new(),
            )
            .unwrap();
    }
    let pinned = PutOptions::new().pinned(true);
    store
        .put("b", "pinned", &noise(9, 200_000), &pinned)
        .unwrap();
    store
        .put("b", "file", &noise(10, 300_000), &PutOptions::new())
        .unwrap();
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    // Evicting the one evictable file could not reach this cap.
    let cap = stats.disk_bytes() - 400_000;
    let r = store.gc(&now_gc().max_size(cap)).unwrap();
    assert_eq!(r.entries_evicted, 0, "{r:?}");
    assert!(r.still_over_cap, "{r:?}");
    assert_eq!(store.stats().unwrap().entries, stats.entries);

    // A cap it can meet evicts only the file entry.
    let cap = stats.disk_bytes() - 100_000;
    let r = store.gc(&now_gc().max_size(cap)).unwrap();
    assert_eq!(r.entries_evicted, 1, "{r:?}");
    assert!(!r.still_over_cap, "{r:?}");
    assert!(store.meta("b", "file").unwrap().is_none());
    assert_eq!(store.stats().unwrap().entries, stats.entries - 1);
    assert_clean(&store);
}

/// Allocated bytes of every regular file under `dir` except the space
/// reserve in `locks/` (which the cache holds on purpose, outside its
/// figures).
fn file_bytes_under(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(dir)
        .iter()
        .filter(|p| !p.starts_with(dir.join("locks")))
        .map(|p| p.symlink_metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn stats_counts_inline_blobs_once() {
    let (dir, store, _clock) = store_with_clock();
    for i in 0..600u64 {
        // Incompressible and under the 16 KiB inline threshold: 6 MB inline.
        store
            .put(
                "b",
                format!("k{i}"),
                &noise(1000 + i, 10_000),
                &PutOptions::new(),
            )
            .unwrap();
    }
    store
        .put("b", "file", &noise(5, 100_000), &PutOptions::new())
        .unwrap();
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    let on_disk = file_bytes_under(dir.path());
    assert!(
        stats.disk_bytes() <= on_disk,
        "stats says {} bytes, the files take {on_disk}: {stats:?}",
        stats.disk_bytes()
    );
    assert!(
        on_disk - stats.disk_bytes() <= 64 << 10,
        "stats says {} bytes, the files take {on_disk}: {stats:?}",
        stats.disk_bytes()
    );
    assert_clean(&store);
}

#[test]
fn recompression_shrinks_old_blobs_and_keeps_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let opts = StoreOptions::default()
        .clock(clock.clone())
        .compression_level(1);
    let store = Store::open(dir.path(), opts).unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| json_payload(i, 400_000)).collect();
    let mut sizes = Vec::new();
    let month = PutOptions::new().ttl(30 * DAY);
    for (i, p) in payloads.iter().enumerate() {
        let r = store.put("b", format!("k{i}"), p, &month).unwrap();
        assert!(!r.inline && r.compressed, "{r:?}");
        sizes.push(std::fs::metadata(blob_path(dir.path(), p)).unwrap().len());
    }
    clock.advance(8 * DAY);
    let young = json_payload(77, 400_000);
    store.put("b", "young", &young, &month).unwrap();

    let gc = GcOptions::new().recompress_level(19);
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let log = ticks.clone();
    let watched = gc.clone().progress(move |p| {
        if p.step == GcStep::Recompress {
            log.lock().unwrap().push((p.done, p.total, p.bytes));
        }
    });
    let r = store.gc(&watched).unwrap();
    assert_eq!(r.blobs_recompressed, 3, "{r:?}");
    assert_eq!(r.bytes_recompressed, sizes.iter().sum::<u64>());
    // The bar knows the blobs and bytes due from the start, and follows bytes.
    let total: u64 = sizes.iter().sum();
    let ticks = ticks.lock().unwrap().clone();
    assert_eq!(ticks.first(), Some(&(0, Some(3), Some((0, total)))));
    assert_eq!(ticks.last(), Some(&(3, Some(3), Some((total, total)))));
    assert_eq!(ticks.len(), 4, "{ticks:?}");
    assert!(r.bytes_saved > 0, "{r:?}");
    for (i, p) in payloads.iter().enumerate() {
        let len = std::fs::metadata(blob_path(dir.path(), p)).unwrap().len();
        assert!(len < sizes[i], "blob {i}: {len} not below {}", sizes[i]);
        let hit = store.get("b", format!("k{i}")).unwrap().unwrap();
        assert_eq!(blake3::hash(&hit.data), blake3::hash(p));
    }
    println!(
        "level 1 -> 19 on 3 x 400 KB JSON: {} -> {} bytes ({:.1}% saved)",
        r.bytes_recompressed,
        r.bytes_recompressed - r.bytes_saved,
        100.0 * r.bytes_saved as f64 / r.bytes_recompressed as f64
    );
    // Size accounting follows the new files exactly.
    let stats = store.stats().unwrap();
    let on_disk: u64 = files_under(&dir.path().join("blobs"))
        .iter()
        .map(|f| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(f).unwrap().blocks() * 512
        })
        .sum();
    assert_eq!(stats.blob_bytes, on_disk, "{stats:?}");
    assert_clean(&store);

    let again = store.gc(&gc).unwrap();
    assert_eq!(again.blobs_recompressed, 0, "already at 19: {again:?}");
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        store.get_stale("b", "k2").unwrap().unwrap().data,
        payloads[2]
    );
    assert_eq!(store.get_stale("b", "young").unwrap().unwrap().data, young);
}

#[test]
fn a_second_sweep_is_refused_or_waits() {
    let (dir, store, _clock) = store_with_clock();
    // Another sweeper (here: another open file description) holds gc.lock.
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.path().join("locks").join("gc.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let err = store.gc(&GcOptions::new()).unwrap_err();
    assert!(matches!(err, Error::SweepRunning { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");

    let waiter = store.clone();
    let waiting = std::thread::spawn(move || waiter.gc(&GcOptions::new().wait(true)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiting.is_finished(),
        "a waiting sweep ran under a held lock"
    );
    drop(lock);
    waiting.join().unwrap().unwrap();

    // Two sweeps of this store: the first is paused mid-way.
    store
        .put("b", "k", b"x", &PutOptions::new().ttl(Duration::ZERO))
        .unwrap();
    let (at_tx, at_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (at_tx, go_rx) = (Mutex::new(at_tx), Mutex::new(go_rx));
    let first = store.clone();
    // Every progress call reports and waits for the go (or its end).
    let opts = GcOptions::new().grace(Duration::ZERO).progress(move |_| {
        let _ = at_tx.lock().unwrap().send(());
        let _ = go_rx.lock().unwrap().recv();
    });
    let sweeping = std::thread::spawn(move || first.gc(&opts));
    at_rx.recv().unwrap();
    let err = store.gc(&GcOptions::new()).unwrap_err();
    assert!(matches!(err, Error::SweepRunning { .. }), "{err}");
    drop(go_tx);
    let r = sweeping.join().unwrap().unwrap();
    assert_eq!(r.entries_expired, 1);
}

#[test]
fn background_sweeper_runs_on_its_interval_and_stops_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let opts = StoreOptions::default()
        .clock(clock.clone())
        .gc_interval(Duration::from_millis(20))
        .gc_options(now_gc().grace(Duration::ZERO));
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    store
        .put("b", "k", b"{}", &PutOptions::new().ttl(HOUR))
        .unwrap();
    clock.advance(2 * HOUR);
    eventually("the background sweep removes the expired entry", || {
        store.get_stale("b", "k").unwrap().is_none()
    });
    drop(store);
    // The sweeper let go of the cache with the last handle.
    let store = open_retry(dir.path(), StoreOptions::default());
    assert_clean(&store);
}

#[test]
fn put_over_the_store_cap_triggers_a_sweep_and_never_fails() {
    let dir = tempfile::tempdir().unwrap();
    // Room for sled's log segments (512 KiB each) and the journal besides
    // the blobs, so that evicting blobs can always get under the cap.
    let cap = 3 << 20;
    // The default safety window: puts run beside the background sweeps, and
    // a zero window would let a sweep take a put's fresh file.
    let opts = StoreOptions::default()
        .max_size(cap)
        .gc_options(GcOptions::new());
    let store = Store::open(dir.path(), opts).unwrap();
    let n = 150u64; // 6 MB of incompressible 40 KB blob files
    for i in 0..n {
        store
            .put(
                "b",
                format!("k{i}"),
                &noise(200 + i, 40_000),
                &PutOptions::new(),
            )
            .unwrap();
    }
    eventually("the cache is back under its cap", || {
        store.stats().unwrap().disk_bytes() <= cap
    });
    assert!(
        store.get("b", format!("k{}", n - 1)).unwrap().is_some(),
        "newest kept"
    );
    let stats = store.stats().unwrap();
    assert!(stats.entries < n, "{stats:?}");
    assert_clean(&store);
}

/// Payload `i` of the crash test: inline and file blobs, some shared.
fn crash_payload(i: u64) -> Vec<u8> {
    let size = [300, 2_000, 60_000, 150_000][(i / 2 % 4) as usize];
    json_payload(i % 90, size)
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let (what, dir) = spec.split_once('|').unwrap();
    if what == "hold-sweep" {
        return hold_sweep(dir);
    }
    assert_eq!(what, "sweep");
    let opts = StoreOptions::default().flush_interval(Duration::from_secs(3600));
    let store = Store::open(dir, opts).unwrap();
    let gc = GcOptions::new()
        .grace(Duration::ZERO)
        .safety_window(Duration::ZERO)
        .batch_size(8)
        .recompress_level(19)
        .recompress_older_than(Duration::ZERO)
        .progress(|p| {
            println!("progress {:?} {}", p.step, p.done);
            std::thread::sleep(Duration::from_millis(2));
        });
    let r = store.gc(&gc).unwrap();
    println!("done {r:?}");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Sweeps, pausing at its first progress report until stdin closes.
fn hold_sweep(dir: &str) {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let paused = AtomicBool::new(false);
    let gc = GcOptions::new().progress(move |_| {
        if !paused.swap(true, Ordering::SeqCst) {
            println!("sweeping");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
    });
    let r = store.gc(&gc).unwrap();
    println!("done {}", r.entries_expired);
}

#[test]
fn two_processes_sweeping_at_once_one_sweeps_the_other_is_refused_or_waits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for i in 0..20u64 {
        store
            .put(
                "b",
                format!("k{i}"),
                &json_payload(i, 500),
                &PutOptions::new(),
            )
            .unwrap();
    }
    // Another process (a guest of this one) starts a sweep and pauses in it.
    let mut other = spawn_worker(&format!("hold-sweep|{}", dir.path().display()));
    let mut out = BufReader::new(other.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l.starts_with("sweeping")).is_some());

    let err = store.gc(&GcOptions::new()).unwrap_err();
    assert!(matches!(err, Error::SweepRunning { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");

    // With `wait`, the second sweep runs once the first is done.
    let waiter = {
        let store = store.clone();
        std::thread::spawn(move || store.gc(&GcOptions::new().wait(true)))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "waits while the other process sweeps"
    );
    drop(other.stdin.take());
    assert!(wait_for_line(&mut out, |l| l.starts_with("done")).is_some());
    assert!(other.wait().unwrap().success());
    waiter.join().unwrap().unwrap();
    assert_clean(&store);
}

#[test]
fn kill9_in_the_middle_of_a_sweep_leaves_a_consistent_cache() {
    let dir = tempfile::tempdir().unwrap();
    let keep = |i: u64| i.is_multiple_of(2);
    {
        let store = Store::open(dir.path(), StoreOptions::default().compression_level(1)).unwrap();
        for i in 0..360u64 {
            let ttl = if keep(i) { DAY } else { Duration::ZERO };
            let opts = PutOptions::new().ttl(ttl);
            store
                .put("w", format!("k{i}"), &crash_payload(i), &opts)
                .unwrap();
        }
        for i in 360..400u64 {
            store
                .put("w", format!("k{i}"), &crash_payload(i), &PutOptions::new())
                .unwrap();
            store.delete("w", format!("k{i}")).unwrap();
        }
    }
    // Each round kills the sweeper in another step (a round resumes the
    // work the previous one left).
    let kills = [
        ("Expire", 3),
        ("Orphans", 2),
        ("Recompress", 5),
        ("Recompress", 12),
    ];
    for (round, (step, nth)) in kills.into_iter().enumerate() {
        let mut child = spawn_worker(&format!("sweep|{}", dir.path().display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = 0;
        let prefix = format!("progress {step} ");
        let last = wait_for_line(&mut out, |l| {
            lines += usize::from(l.starts_with(&prefix));
            lines >= nth || l.starts_with("done")
        });
        kill9(&mut child);
        println!("round {round}: killed after {last:?}");

        let store = open_retry(dir.path(), StoreOptions::default());
        assert_clean(&store);
        for i in (0..360).filter(|i| keep(*i)) {
            let hit = store.get("w", format!("k{i}")).unwrap();
            let hit = hit.unwrap_or_else(|| panic!("round {round}: live entry k{i} lost"));
            assert_eq!(hit.data, crash_payload(i), "k{i}");
        }
        // Payloads whose blobs the sweep was deleting can be stored again.
        for i in 360..370u64 {
            store
                .put(
                    "w",
                    format!("again{i}"),
                    &crash_payload(i),
                    &PutOptions::new(),
                )
                .unwrap();
            store.delete("w", format!("again{i}")).unwrap();
        }
    }
    let store = open_retry(dir.path(), StoreOptions::default());
    store.gc(&now_gc().grace(Duration::ZERO)).unwrap();
    assert_clean(&store);
    let stats = store.stats().unwrap();
    assert_eq!(stats.entries, 180, "{stats:?}");
    assert_eq!(stats.expired, 0, "{stats:?}");
}
