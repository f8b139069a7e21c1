//! Storage core v2's engine on real directories and real processes: round
//! trips of every size tier, expiry, delete, header sets stored once,
//! damage turning into misses, and a writer killed with SIGKILL mid-load
//! whose every acknowledged put is readable after reopening.

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blobcache::engine::{Engine, EngineOptions, HeaderSet, PutMeta, SweepOptions};
use blobcache::pack::{PackDir, ReadMode, scan_file};
use blobcache::testkit::storage_payload as payload;
use blobcache::{Durability, Error, ManualClock};
use common::*;

fn sig(i: u64) -> String {
    format!("movie/{i}?language=en-US")
}

fn json_headers() -> HeaderSet {
    HeaderSet {
        content_type: Some("application/json".into()),
        category: Some("metadata".into()),
        headers: vec![("etag".into(), "\"33a64df5\"".into())],
    }
}

fn meta() -> PutMeta {
    PutMeta {
        ttl: Some(Duration::from_secs(72 * 3600)),
        headers: json_headers(),
        ..PutMeta::default()
    }
}

fn fill(e: &Engine, range: std::ops::Range<u64>) {
    for i in range {
        e.put("tmdb", sig(i), &payload(i), &meta()).unwrap();
    }
}

fn assert_all_readable(e: &Engine, range: std::ops::Range<u64>) {
    for i in range {
        let hit = e
            .get("tmdb", sig(i))
            .unwrap()
            .unwrap_or_else(|| panic!("entry {i} missing"));
        assert!(hit.data == payload(i), "entry {i}: wrong bytes");
        assert_eq!(*hit.headers, json_headers());
        assert_eq!(hit.info.raw_size, payload(i).len() as u64);
        assert_eq!(hit.info.blob_file, payload(i).len() > 256 * 1024, "{i}");
    }
}

#[test]
fn round_trips_of_every_size_survive_reopen_in_both_read_modes() {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions::new()
            .read_mode(mode)
            .max_pack_bytes(32 * 1024);
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        fill(&e, 0..150);
        assert_all_readable(&e, 0..150);
        let s = e.stats().unwrap();
        let blobs = (0..150).filter(|i| payload(*i).len() > 256 * 1024).count() as u64;
        assert_eq!((s.entries, s.blob_entries), (150, blobs));
        assert!(
            blobs > 0 && s.packs.len() > 2,
            "packs roll at 32 KiB: {s:?}"
        );
        let raw: u64 = (0..150).map(|i| payload(i).len() as u64).sum();
        assert_eq!(s.raw_bytes, raw);
        assert!(s.stored_bytes < raw, "{} of {raw}", s.stored_bytes);
        drop(e);
        let e = Engine::open(dir.path(), opts).unwrap();
        assert_eq!(
            e.recovery().scanned,
            0,
            "a clean close leaves nothing to replay"
        );
        assert_all_readable(&e, 0..150);
        let listed = e.list("tmdb", "movie/1").unwrap();
        let want = (0..150).filter(|i| sig(*i).starts_with("movie/1")).count();
        assert_eq!(listed.len(), want);
        assert!(e.list("anilist", "").unwrap().is_empty());
    }
}

#[test]
fn an_overwrite_wins_and_leaves_dead_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    e.put("tmdb", "k", b"first version", &meta()).unwrap();
    e.put("tmdb", "k", b"second", &meta()).unwrap();
    assert_eq!(e.get("tmdb", "k").unwrap().unwrap().data, b"second");
    let s = e.stats().unwrap();
    assert_eq!(s.entries, 1);
    let dead: u64 = s.packs.iter().map(|p| p.dead_bytes).sum();
    assert!(
        dead > 60,
        "the first needle (and the header set's) is dead: {s:?}"
    );
}

#[test]
fn expired_entries_are_misses_but_stale_reads_and_touch_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = Engine::open(dir.path(), EngineOptions::new().clock(clock.clone())).unwrap();
    let body = payload(3);
    let m = PutMeta {
        ttl: Some(Duration::from_secs(3600)),
        fetched_at: Some(999_000),
        ..PutMeta::default()
    };
    e.put("anilist", "anime/1", &body, &m).unwrap();
    e.put("anilist", "anime/2", &body, &PutMeta::default())
        .unwrap();
    let hit = e.get("anilist", "anime/1").unwrap().unwrap();
    assert_eq!(hit.info.expires_at, Some(1_000_000 + 3_600_000));
    assert_eq!(
        (hit.info.fetched_at, hit.info.created_at),
        (999_000, 1_000_000)
    );
    clock.advance(Duration::from_secs(7200));
    assert!(e.get("anilist", "anime/1").unwrap().is_none());
    assert!(!e.contains("anilist", "anime/1").unwrap());
    let stale = e.get_stale("anilist", "anime/1").unwrap().unwrap();
    assert!(stale.expired && stale.data == body);
    assert!(
        e.get("anilist", "anime/2").unwrap().is_some(),
        "no ttl: never expires"
    );
    assert!(
        e.touch("anilist", "anime/1", Some(Duration::from_secs(60)))
            .unwrap()
    );
    assert!(e.get("anilist", "anime/1").unwrap().is_some());
    assert!(!e.touch("anilist", "nothing", None).unwrap());
    drop(e);
    let e = Engine::open(dir.path(), EngineOptions::new().clock(clock.clone())).unwrap();
    assert!(
        e.get("anilist", "anime/1").unwrap().is_some(),
        "touch survives reopen"
    );
}

#[test]
fn delete_removes_and_survives_reopen_bad_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    fill(&e, 0..10);
    assert!(e.delete("tmdb", sig(4)).unwrap());
    assert!(!e.delete("tmdb", sig(4)).unwrap());
    assert!(e.get("tmdb", sig(4)).unwrap().is_none());
    let err = e.put("", "x", b"y", &PutMeta::default()).unwrap_err();
    assert!(err.to_string().contains("backend"), "{err}");
    let long = "s".repeat(10_000);
    assert!(matches!(
        e.put("tmdb", &long, b"y", &PutMeta::default()),
        Err(Error::KeyTooLong { .. })
    ));
    assert!(e.get("tmdb", &long).is_err());
    drop(e);
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    assert!(e.get("tmdb", sig(4)).unwrap().is_none());
    assert_eq!(e.stats().unwrap().entries, 9);
}

#[test]
fn a_header_set_is_stored_once_and_a_repeat_costs_no_index_write() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    let first = e.put("tmdb", "a", b"{}", &meta()).unwrap();
    // Headers: a needle and a sled insert; the entry: a needle and an insert.
    assert_eq!(first.writes, 4);
    for i in 0..20 {
        let r = e.put("tmdb", format!("b{i}"), b"{}", &meta()).unwrap();
        assert_eq!(r.writes, 2, "put {i}: one needle, one insert");
    }
    let other = PutMeta {
        headers: HeaderSet {
            content_type: Some("text/html".into()),
            ..HeaderSet::default()
        },
        ..PutMeta::default()
    };
    assert_eq!(e.put("tmdb", "c", b"<p>", &other).unwrap().writes, 4);
    assert_eq!(
        e.put("tmdb", "d", b"-", &PutMeta::default())
            .unwrap()
            .writes,
        2
    );
    assert_eq!(e.stats().unwrap().header_sets, 2);
    drop(e);
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    assert_eq!(
        *e.get("tmdb", "b7").unwrap().unwrap().headers,
        json_headers()
    );
    assert_eq!(*e.get("tmdb", "c").unwrap().unwrap().headers, other.headers);
    assert!(e.get("tmdb", "d").unwrap().unwrap().headers.is_empty());
    assert_eq!(e.put("tmdb", "e", b"{}", &meta()).unwrap().writes, 2);
}

/// Offset of the last byte of the needle holding `key`'s payload.
fn needle_end(dir: &Path, key: &[u8]) -> (std::path::PathBuf, u64) {
    let d = PackDir::open(dir, false).unwrap();
    for id in d.pack_ids().unwrap() {
        let f = std::fs::File::open(d.path(id)).unwrap();
        let rep = scan_file(id, &f, false).unwrap();
        if let Some(n) = rep.needles.iter().rev().find(|n| n.key == key) {
            return (d.path(id), n.location.end() - 1);
        }
    }
    panic!("no needle for {key:?}");
}

#[test]
fn a_flipped_byte_in_a_pack_or_blob_file_is_a_counted_miss_never_bytes() {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions::new().read_mode(mode);
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        fill(&e, 0..60);
        drop(e);
        let key = blobcache::key::encode("tmdb", sig(5).as_bytes()).unwrap();
        let (pack, at) = needle_end(dir.path(), &key);
        flip(&pack, at);
        let big = blake3::hash(&payload(41)).to_hex().to_string();
        let blob = dir.path().join("blobs").join(&big[..2]).join(&big[2..]);
        flip(&blob, 5000);
        let e = Engine::open(dir.path(), opts).unwrap();
        assert!(e.get("tmdb", sig(5)).unwrap().is_none());
        assert!(e.get_stale("tmdb", sig(41)).unwrap().is_none());
        assert_eq!(e.stats().unwrap().corrupt_reads, 2);
        assert!(
            e.get("tmdb", sig(5)).unwrap().is_none(),
            "dropped, stays a miss"
        );
        assert_eq!(e.stats().unwrap().entries, 58);
        let others: Vec<u64> = (0..60).filter(|i| *i != 5 && *i != 41).collect();
        for i in others {
            assert!(e.get("tmdb", sig(i)).unwrap().unwrap().data == payload(i));
        }
        e.put("tmdb", sig(5), &payload(5), &meta()).unwrap();
        assert!(
            e.get("tmdb", sig(5)).unwrap().unwrap().data == payload(5),
            "heals"
        );
    }
}

#[test]
fn symlinks_planted_in_the_cache_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("packs")).unwrap();
    let err = Engine::open(dir.path(), EngineOptions::new()).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------
// Real processes
// ---------------------------------------------------------------------

/// Entry point of worker processes; does nothing in a normal test run.
/// `put|dir|first|count`: puts entries, printing `ack i` after each
/// returned put (index never flushed in the background: recovery must
/// bring back everything sled had not written). `hold|dir`: opens the
/// engine and waits for stdin to close.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[1]);
    let opts = EngineOptions::new()
        .index_flush(None)
        .max_pack_bytes(1 << 20);
    let e = Engine::open(dir, opts).unwrap();
    let mut out = std::io::stdout().lock();
    if parts[0] == "hold" {
        writeln!(out, "open").unwrap();
        out.flush().unwrap();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return;
    }
    if parts[0] == "compact" {
        // Rewrites every sealed pack, over and over, until killed.
        for round in 0.. {
            let r = e.compact(0.0).unwrap();
            assert_eq!(r.damaged, 0);
            writeln!(out, "round {round} {}", r.needles_copied).unwrap();
            out.flush().unwrap();
        }
    }
    let first: u64 = parts[2].parse().unwrap();
    let count: u64 = parts[3].parse().unwrap();
    for i in first..first + count {
        if i % 97 == 3 && i > first + 10 {
            assert!(e.delete("tmdb", sig(i - 10)).unwrap());
            writeln!(out, "del {}", i - 10).unwrap();
        }
        e.put("tmdb", sig(i), &payload(i), &meta()).unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "done").unwrap();
}

fn open_retry(dir: &Path) -> Engine {
    for _ in 0..200 {
        match Engine::open(dir, EngineOptions::new()) {
            Ok(e) => return e,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    Engine::open(dir, EngineOptions::new()).unwrap()
}

#[test]
fn a_writer_killed_mid_load_loses_no_acknowledged_put() {
    for round in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let first = round * 10_000;
        let spec = format!("put|{}|{first}|1000000", dir.path().display());
        let mut child = spawn_worker(&spec);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let want = 700 + 900 * round as usize;
        let mut acked: HashMap<u64, bool> = HashMap::new();
        while acked.values().filter(|live| **live).count() < want {
            let line = wait_for_line(&mut out, |l| l.starts_with("ack ") || l.starts_with("del "))
                .expect("the worker ended early");
            let (op, i) = line.split_once(' ').unwrap();
            acked.insert(i.parse().unwrap(), op == "ack");
        }
        kill9(&mut child);
        // The worker deletes entry j when it puts j + 10: for the last
        // few entries seen, a delete may have followed unseen.
        let last = *acked.keys().max().unwrap();
        acked.retain(|j, _| (j + 10) % 97 != 3 || j + 10 <= last);
        let e = open_retry(dir.path());
        let rec = e.recovery();
        assert!(rec.applied > 0, "round {round}: nothing replayed: {rec:?}");
        for (i, live) in &acked {
            let got = e.get("tmdb", sig(*i)).unwrap();
            match live {
                true => assert!(
                    got.is_some_and(|h| h.data == payload(*i) && *h.headers == json_headers()),
                    "round {round}: acknowledged put {i} lost or wrong after {rec:?}"
                ),
                false => assert!(got.is_none(), "round {round}: deleted {i} came back"),
            }
        }
        drop(e);
        let e = open_retry(dir.path());
        assert_eq!(e.recovery().scanned, 0, "recovery is not repeated");
    }
}

#[test]
fn a_second_process_is_refused_with_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(
        dir.path(),
        EngineOptions::new().durability(Durability::Synced),
    )
    .unwrap();
    fill(&e, 0..5);
    drop(e);
    let mut child = spawn_worker(&format!("hold|{}", dir.path().display()));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "open").is_some());
    let err = Engine::open(dir.path(), EngineOptions::new()).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    assert_all_readable(&e, 0..5);
}

/// Mean stored size of the api-response entries (i % 60 not special) in
/// `range`.
fn mean_stored(e: &Engine, range: std::ops::Range<u64>) -> f64 {
    let sizes: Vec<u64> = range
        .filter(|i| ![7, 13, 29, 41].contains(&(i % 60)))
        .map(|i| {
            let key = sig(i);
            let (_, info) = e
                .list("tmdb", &key)
                .unwrap()
                .into_iter()
                .find(|(s, _)| s == key.as_bytes())
                .unwrap();
            info.stored_size
        })
        .collect();
    sizes.iter().sum::<u64>() as f64 / sizes.len() as f64
}

#[test]
fn a_backend_dictionary_is_trained_used_and_survives_reopen_and_damage() {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions::new()
            .read_mode(mode)
            .dictionaries(300, 16 * 1024);
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        // 300 samples are complete within the first 400 puts (empty,
        // random and large payloads are not sampled); training runs on
        // its own thread.
        fill(&e, 0..400);
        e.settle();
        fill(&e, 400..900);
        e.put("other", "x", &payload(3), &meta()).unwrap();
        e.settle();
        assert_eq!(e.stats().unwrap().dictionaries, 1, "one, for tmdb only");
        let (before, after) = (mean_stored(&e, 0..300), mean_stored(&e, 400..900));
        assert!(
            after < before * 0.8,
            "needles written with the dictionary are smaller: {before:.0} -> {after:.0}"
        );
        assert_all_readable(&e, 0..900);
        drop(e);

        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        assert_all_readable(&e, 0..900);
        fill(&e, 900..1000);
        e.settle();
        assert_eq!(
            e.stats().unwrap().dictionaries,
            1,
            "reused after reopen, not retrained"
        );
        assert_all_readable(&e, 0..1000);
        drop(e);

        // A damaged dictionary: the needles that need it are counted
        // misses, never bytes; the others still read; the backend trains
        // a new one and puts heal.
        let file = dir.path().join("dicts/0001.zdict");
        flip(&file, 100);
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        let mut misses = 0;
        for i in 0..1000 {
            match e.get("tmdb", sig(i)).unwrap() {
                Some(hit) => assert!(hit.data == payload(i), "entry {i}: wrong bytes"),
                None => misses += 1,
            }
        }
        assert!(misses >= 500, "the entries written with it: {misses}");
        assert_eq!(e.stats().unwrap().corrupt_reads, misses);
        assert_all_readable(&e, 0..300);
        fill(&e, 300..1000);
        e.settle();
        assert_all_readable(&e, 0..1000);
        assert_eq!(e.stats().unwrap().dictionaries, 2, "a new one replaces it");
    }
}

#[test]
fn dictionaries_off_trains_none_and_a_symlinked_dicts_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions::new().dictionaries(0, 16 * 1024);
    let e = Engine::open(dir.path(), opts.clone()).unwrap();
    fill(&e, 0..400);
    e.settle();
    assert_eq!(e.stats().unwrap().dictionaries, 0);
    drop(e);
    let outside = tempfile::tempdir().unwrap();
    std::fs::remove_dir(dir.path().join("dicts")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("dicts")).unwrap();
    let err = Engine::open(dir.path(), opts).unwrap_err().to_string();
    assert!(err.contains("dicts"), "{err}");
}

fn pack_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("packs")).unwrap().count()
}

#[test]
fn compaction_rewrites_mostly_dead_packs_reencodes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Small packs, and a dictionary trained after the first packs are
    // written, so compaction has both dead bytes and needles to re-encode.
    let opts = EngineOptions::new()
        .max_pack_bytes(64 * 1024)
        .dictionaries(300, 16 * 1024);
    let e = Engine::open(dir.path(), opts.clone()).unwrap();
    fill(&e, 0..600);
    e.settle();
    // Overwrite or delete three entries in four.
    for i in 0..600u64 {
        match i % 4 {
            0 => {}
            1 => assert!(e.delete("tmdb", sig(i)).unwrap()),
            _ => {
                let put = e.put("tmdb", sig(i), &payload(i), &meta()).unwrap();
                assert_eq!(put.hash, blake3_of(i));
            }
        }
    }
    let before = e.stats().unwrap();
    let packs_before = pack_count(dir.path());
    let report = e.compact(0.5).unwrap();
    assert!(report.packs_removed > 0, "{report:?}");
    assert!(report.needles_copied > 0, "{report:?}");
    assert!(
        report.reencoded > 0,
        "old needles take the new dictionary: {report:?}"
    );
    assert_eq!(report.damaged, 0);
    let after = e.stats().unwrap();
    assert_eq!(after.entries, before.entries);
    let file_bytes =
        |s: &blobcache::engine::EngineStats| -> u64 { s.packs.iter().map(|p| p.file_bytes).sum() };
    assert!(
        file_bytes(&after) < file_bytes(&before),
        "{} -> {}",
        file_bytes(&before),
        file_bytes(&after)
    );
    assert!(pack_count(dir.path()) < packs_before);
    let check = |e: &Engine| {
        for i in 0..600u64 {
            let hit = e.get("tmdb", sig(i)).unwrap();
            match i % 4 {
                1 => assert!(hit.is_none(), "deleted {i} came back"),
                _ => {
                    let hit = hit.unwrap_or_else(|| panic!("{i} lost"));
                    assert!(hit.data == payload(i), "{i}: wrong bytes");
                    assert_eq!(*hit.headers, json_headers());
                }
            }
        }
    };
    check(&e);
    assert_eq!(e.stats().unwrap().corrupt_reads, 0);
    drop(e);
    let e = Engine::open(dir.path(), opts).unwrap();
    assert_eq!(e.recovery().scanned, 0, "flushed before the packs went");
    check(&e);
    // The pack that was active is sealed now and may be rewritten too.
    let again = e.compact(0.5).unwrap();
    assert_eq!(again.damaged, 0, "{again:?}");
    check(&e);
    let none = e.compact(0.5).unwrap();
    assert_eq!(none.needles_copied, 0, "nothing left to rewrite: {none:?}");
}

fn blake3_of(i: u64) -> blobcache::BlobHash {
    blobcache::BlobHash::of(&payload(i))
}

#[test]
fn gets_racing_a_compaction_never_miss_a_live_entry() {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions::new()
            .read_mode(mode)
            .max_pack_bytes(32 * 1024)
            .dictionaries(0, 0);
        let e = Arc::new(Engine::open(dir.path(), opts).unwrap());
        fill(&e, 0..400);
        for i in (0..400u64).filter(|i| i % 3 != 0) {
            e.delete("tmdb", sig(i)).unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|t| {
                let (e, stop) = (e.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 400 {
                        let i = (reads * 3 + t * 3) % 399;
                        let hit = e.get("tmdb", sig(i)).unwrap();
                        assert!(hit.is_some_and(|h| h.data == payload(i)), "{i} missed");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let report = e.compact(0.5).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() >= 400);
        }
        assert!(report.packs_removed > 0, "{report:?}");
        assert_eq!(e.stats().unwrap().corrupt_reads, 0);
    }
}

#[test]
fn a_compaction_killed_at_any_point_loses_nothing() {
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let opts = EngineOptions::new().max_pack_bytes(1 << 20);
        let e = Engine::open(dir.path(), opts).unwrap();
        fill(&e, 0..3000);
        for i in (0..3000u64).filter(|i| i % 3 == 1) {
            e.delete("tmdb", sig(i)).unwrap();
        }
        drop(e);
        let mut child = spawn_worker(&format!("compact|{}", dir.path().display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        wait_for_line(&mut out, |l| l.starts_with("round ")).expect("the worker ended early");
        std::thread::sleep(Duration::from_millis(round * 40));
        kill9(&mut child);
        let e = open_retry(dir.path());
        for i in 0..3000u64 {
            let hit = e.get("tmdb", sig(i)).unwrap();
            match i % 3 {
                1 => assert!(hit.is_none(), "round {round}: deleted {i} came back"),
                _ => assert!(
                    hit.is_some_and(|h| h.data == payload(i) && *h.headers == json_headers()),
                    "round {round}: {i} lost or wrong after {:?}",
                    e.recovery()
                ),
            }
        }
        assert_eq!(e.stats().unwrap().corrupt_reads, 0, "round {round}");
    }
}

fn blob_file_count(dir: &Path) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let fan = fan.unwrap().path();
        if !fan.is_dir() {
            continue;
        }
        n += std::fs::read_dir(&fan)
            .unwrap()
            .filter(|f| {
                let name = f.as_ref().unwrap().file_name();
                name.to_str().is_some_and(|n| n.len() == 62)
            })
            .count();
    }
    n
}

fn sweep_now() -> SweepOptions {
    SweepOptions {
        safety_window: Duration::ZERO,
        ..SweepOptions::default()
    }
}

#[test]
fn a_sweep_purges_expired_entries_frees_unnamed_blob_files_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let opts = EngineOptions::new()
        .clock(clock.clone())
        .max_pack_bytes(64 * 1024);
    let e = Engine::open(dir.path(), opts.clone()).unwrap();
    // Entries 0..240: three in four live 1 h (and 161), the others 100 h.
    // 41, 101, 161 and 221 are blob files (700 KiB): 101 is deleted and
    // 161 expires, so nobody names their files after the sweep.
    let expires = |i: u64| i % 4 != 1 || i == 161;
    let ttl = |i: u64| Duration::from_secs(if expires(i) { 3600 } else { 360_000 });
    for i in 0..240u64 {
        let m = PutMeta {
            ttl: Some(ttl(i)),
            ..meta()
        };
        e.put("tmdb", sig(i), &payload(i), &m).unwrap();
    }
    assert!(e.delete("tmdb", sig(101)).unwrap());
    let files_before = blob_file_count(dir.path());
    assert!(files_before >= 4, "{files_before} blob files");
    std::fs::create_dir_all(dir.path().join("blobs/zz")).unwrap();
    std::fs::write(dir.path().join("blobs/zz/notes.txt"), b"not ours").unwrap();
    let packs_before = pack_count(dir.path());
    clock.advance(Duration::from_secs(2 * 3600));

    let report = e.sweep(&sweep_now()).unwrap().expect("no other sweep");
    assert_eq!(report.expired, 181, "{report:?}");
    assert_eq!(report.blob_files_removed, 2, "101 and 161: {report:?}");
    let freed = 2;
    assert!(report.blob_bytes_removed > 0);
    assert_eq!(blob_file_count(dir.path()), files_before - freed);
    assert!(report.compaction.packs_removed > 0, "{report:?}");
    assert!(pack_count(dir.path()) < packs_before);
    assert!(
        dir.path().join("blobs/zz/notes.txt").exists(),
        "foreign file kept"
    );
    let check = |e: &Engine| {
        for i in 0..240u64 {
            let hit = e.get_stale("tmdb", sig(i)).unwrap();
            if expires(i) || i == 101 {
                assert!(hit.is_none(), "{i} should be gone");
                continue;
            }
            let hit = hit.unwrap_or_else(|| panic!("{i} lost"));
            assert!(hit.data == payload(i), "{i}: wrong bytes");
        }
        assert_eq!(e.stats().unwrap().corrupt_reads, 0);
    };
    check(&e);
    let again = e.sweep(&sweep_now()).unwrap().unwrap();
    assert_eq!(
        (again.expired, again.blob_files_removed),
        (0, 0),
        "{again:?}"
    );
    drop(e);
    check(&Engine::open(dir.path(), opts).unwrap());
}

#[test]
fn grace_and_the_safety_window_keep_what_they_promise() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let e = Engine::open(dir.path(), EngineOptions::new().clock(clock.clone())).unwrap();
    let m = PutMeta {
        ttl: Some(Duration::from_secs(60)),
        ..meta()
    };
    e.put("tmdb", "small", &payload(1), &m).unwrap();
    e.put("tmdb", "big", &payload(41), &meta()).unwrap();
    assert!(e.delete("tmdb", "big").unwrap());
    clock.advance(Duration::from_secs(120));
    let opts = SweepOptions {
        grace: Duration::from_secs(3600),
        ..SweepOptions::default()
    };
    let report = e.sweep(&opts).unwrap().unwrap();
    assert_eq!(report.expired, 0, "within grace: {report:?}");
    assert_eq!(report.blob_files_removed, 0, "file younger than the window");
    assert!(e.get_stale("tmdb", "small").unwrap().is_some());
    assert_eq!(blob_file_count(dir.path()), 1);
}

#[test]
fn a_sweep_finding_another_sweeper_returns_none_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), EngineOptions::new()).unwrap();
    e.put("tmdb", "big", &payload(41), &meta()).unwrap();
    assert!(e.delete("tmdb", "big").unwrap());
    let held = std::fs::File::open(dir.path().join("locks")).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.path().join("locks/gc.lock"))
    });
    let held = held.unwrap();
    held.try_lock().unwrap();
    assert!(e.sweep(&sweep_now()).unwrap().is_none());
    assert_eq!(blob_file_count(dir.path()), 1);
    drop(held);
    let report = e.sweep(&sweep_now()).unwrap().unwrap();
    assert_eq!(report.blob_files_removed, 1);
    assert_eq!(blob_file_count(dir.path()), 0);
}

#[test]
fn blob_file_puts_racing_sweeps_never_lose_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), EngineOptions::new()).unwrap());
    let big = payload(41);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let (e, stop) = (e.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sweeps = 0u64;
            let mut removed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = e.sweep(&sweep_now()).expect("sweep").expect("one sweeper");
                sweeps += 1;
                removed += r.blob_files_removed;
            }
            (sweeps, removed)
        })
    };
    // The same payload under a new key each round, the old key deleted:
    // between rounds nobody names the file, so sweeps remove it, and a put
    // deduplicating onto a file a sweep is about to remove must keep it.
    for round in 0..150u64 {
        let key = format!("dump/{round}");
        e.put("tmdb", &key, &big, &meta()).unwrap();
        let hit = e.get("tmdb", &key).unwrap();
        assert!(
            hit.is_some_and(|h| h.data == big),
            "round {round} lost its file"
        );
        assert!(e.delete("tmdb", &key).unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sweeps, removed) = sweeper.join().unwrap();
    assert!(
        sweeps > 0 && removed > 0,
        "{sweeps} sweeps, {removed} removed"
    );
    assert_eq!(e.stats().unwrap().corrupt_reads, 0);
}
