//! `Store` on the storage core v2 (`StoreOptions::format(2)`): the public
//! API over the engine, on real temp directories, with a real second
//! process and a real `kill -9`.

mod common;

use std::io::{BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

use blobcache::{
    Error, ExportOptions, GcOptions, ManualClock, PutOptions, Selector, Store, StoreOptions,
    VerifyOptions,
};
use common::*;

fn v2() -> StoreOptions {
    StoreOptions::default().format(2)
}

/// Payloads of varied sizes: small JSON, a search page, one over the
/// engine's 256 KiB blob threshold.
fn sized(i: u64) -> Vec<u8> {
    let size = match i % 5 {
        0 => 60,
        1 => 900,
        2 => 9_000,
        3 => 70_000,
        _ => 300_000,
    };
    json_payload(i, size)
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let (what, dir) = spec.split_once('|').unwrap();
    let dir = std::path::Path::new(dir);
    match what {
        "hold" => {
            let store = Store::open(dir, v2()).unwrap();
            println!("ready");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(store);
        }
        "puts" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            for i in 0u64.. {
                store
                    .put("w", format!("k{i}"), &sized(i), &PutOptions::new())
                    .unwrap();
                println!("ack {i}");
            }
        }
        other => panic!("unknown worker {other}"),
    }
}

#[test]
fn round_trips_of_varied_sizes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), v2()).unwrap();
        assert_eq!(store.format(), 2);
        for i in 0..40 {
            let opts = PutOptions::new()
                .content_type("application/json")
                .header("ETag", format!("\"{i}\""))
                .header("Authorization", "Bearer secret");
            let r = store
                .put("tmdb", format!("movie/{i}"), &sized(i), &opts)
                .unwrap();
            assert_eq!(r.raw_size, sized(i).len() as u64);
            assert_eq!(r.hash, blobcache::BlobHash::of(&sized(i)));
        }
        let hit = store.get("tmdb", "movie/3").unwrap().unwrap();
        assert_eq!(hit.data, sized(3));
        assert_eq!(hit.meta.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            hit.meta.headers,
            vec![("ETag".to_string(), "\"3\"".to_string())],
            "Authorization is never stored"
        );
    }
    let version = std::fs::read_to_string(dir.path().join("VERSION")).unwrap();
    assert_eq!(version.trim(), "2");
    // Reopened without asking for a format: VERSION decides.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.format(), 2);
    for i in 0..40 {
        let hit = store.get("tmdb", format!("movie/{i}")).unwrap().unwrap();
        assert_eq!(hit.data, sized(i), "movie/{i}");
        assert_eq!(hit.meta.raw_size, sized(i).len() as u64);
    }
    assert!(store.get("tmdb", "movie/99").unwrap().is_none());
    let s = store.stats().unwrap();
    assert_eq!(s.entries, 40);
    assert_eq!(s.hits, 40);
    assert_eq!(s.misses, 1);
    let raw: u64 = (0..40).map(|i| sized(i).len() as u64).sum();
    assert_eq!(s.raw_bytes, raw);
    assert!(s.disk_bytes() > 0);
    assert_eq!(s.backends.len(), 1);
    assert_eq!(s.backends[0].entries, 40);
}

#[test]
fn streamed_puts_and_reads_return_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2()).unwrap();
    for (i, size) in [(0u64, 10usize), (1, 200_000), (2, 3 << 20)] {
        let payload = json_payload(i, size);
        let r = store
            .put_reader("big", format!("k{i}"), &payload[..], &PutOptions::new())
            .unwrap();
        assert_eq!(r.raw_size, size as u64);
        let mut back = Vec::new();
        let mut reader = store.get_reader("big", format!("k{i}")).unwrap().unwrap();
        reader.read_to_end(&mut back).unwrap();
        assert_eq!(back, payload, "k{i}");
    }
    // A failing source stores nothing.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("upstream reset"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }
    let err = store
        .put_reader("big", "broken", Failing(1 << 20), &PutOptions::new())
        .unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err}");
    assert!(store.meta("big", "broken").unwrap().is_none());
}

#[test]
fn ttl_stale_touch_delete_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Store::open(dir.path(), v2().clock(clock.clone())).unwrap();
    let ttl = PutOptions::new().ttl(Duration::from_secs(60));
    store.put("a", "short", b"one", &ttl).unwrap();
    store.put("a", "kept", b"two", &ttl).unwrap();
    store.put("a", "gone", b"three", &ttl).unwrap();
    clock.advance(Duration::from_secs(30));
    assert!(store.touch("a", "kept", Duration::from_secs(3600)).unwrap());
    assert!(!store.touch("a", "absent", Duration::from_secs(1)).unwrap());
    assert!(store.delete("a", "gone").unwrap());
    assert!(!store.delete("a", "gone").unwrap());
    clock.advance(Duration::from_secs(60));
    assert!(store.get("a", "short").unwrap().is_none(), "expired");
    assert!(!store.contains("a", "short").unwrap());
    let stale = store.get_stale("a", "short").unwrap().unwrap();
    assert!(stale.stale);
    assert_eq!(stale.data, b"one");
    assert_eq!(store.get("a", "kept").unwrap().unwrap().data, b"two");
    assert!(store.get_stale("a", "gone").unwrap().is_none());
    let s = store.stats().unwrap();
    assert_eq!((s.entries, s.expired, s.live), (2, 1, 1));
    assert_eq!(store.purge_expired().unwrap(), 1);
    assert!(store.get_stale("a", "short").unwrap().is_none());
    assert_eq!(store.stats().unwrap().entries, 1);
}

#[test]
fn list_and_clear_by_backend_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2()).unwrap();
    for i in 0..2_500u64 {
        let backend = if i % 2 == 0 { "tmdb" } else { "anilist" };
        let sig = format!("{}/{i:05}", if i % 3 == 0 { "movie" } else { "tv" });
        store
            .put(backend, sig, &sized(i % 4), &PutOptions::new())
            .unwrap();
    }
    let all: Vec<_> = store
        .list(&Selector::All)
        .unwrap()
        .map(|m| m.unwrap())
        .collect();
    assert_eq!(all.len(), 2_500, "paged past the first 1000");
    let movies = Selector::prefix("tmdb", "movie/");
    let listed: Vec<_> = store.list(&movies).unwrap().map(|m| m.unwrap()).collect();
    let want = (0..2_500u64).filter(|i| i % 2 == 0 && i % 3 == 0).count();
    assert_eq!(listed.len(), want);
    assert!(
        listed
            .iter()
            .all(|m| m.backend == "tmdb" && m.signature.starts_with(b"movie/"))
    );
    assert!(
        listed.windows(2).all(|w| w[0].signature < w[1].signature),
        "key order"
    );
    assert_eq!(store.clear(&movies).unwrap(), want as u64);
    assert_eq!(store.list(&movies).unwrap().count(), 0);
    assert_eq!(store.clear(&Selector::backend("anilist")).unwrap(), 1_250);
    let left = store.stats().unwrap();
    assert_eq!(left.entries, (1_250 - want) as u64);
    assert_eq!(store.clear(&Selector::All).unwrap(), left.entries);
}

#[test]
fn memory_tier_never_serves_a_replaced_or_deleted_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2().memory_tier(8 << 20)).unwrap();
    store.put("b", "s", b"first", &PutOptions::new()).unwrap();
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"first");
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"first");
    store.put("b", "s", b"second", &PutOptions::new()).unwrap();
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"second");
    store.delete("b", "s").unwrap();
    assert!(store.get("b", "s").unwrap().is_none());
}

#[test]
fn gc_sweeps_expired_entries_and_reclaims_packs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(5_000_000));
    let store = Store::open(dir.path(), v2().clock(clock.clone())).unwrap();
    let short = PutOptions::new().ttl(Duration::from_secs(1));
    for i in 0..200u64 {
        store.put("g", format!("e{i}"), &sized(i), &short).unwrap();
    }
    store.put("g", "keep", b"kept", &PutOptions::new()).unwrap();
    clock.advance(Duration::from_secs(10));
    let gc = GcOptions::new()
        .grace(Duration::ZERO)
        .safety_window(Duration::ZERO);
    let r = store.gc(&gc).unwrap();
    assert_eq!(r.entries_expired, 200);
    // One payload in five is over the blob threshold: its file goes.
    assert_eq!(r.blobs_deleted, 40, "{r:?}");
    assert!(r.bytes_freed >= 40 * 1000, "{r:?}");
    assert!(r.disk_bytes_after < r.disk_bytes_before, "{r:?}");
    assert_eq!(store.get("g", "keep").unwrap().unwrap().data, b"kept");
    assert_eq!(store.stats().unwrap().entries, 1);
    // What format 2 does not do yet is refused clearly, changing nothing.
    let err = store.gc(&GcOptions::new().dry_run(true)).unwrap_err();
    assert!(matches!(err, Error::NotOnFormat2 { .. }), "{err}");
}

#[test]
fn what_format_2_lacks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2()).unwrap();
    store.put("b", "s", b"x", &PutOptions::new()).unwrap();
    // Access times are not tracked: what needs them is refused.
    let since = std::time::SystemTime::now();
    let by_access = ExportOptions::default().accessed_since(since);
    let err = store.export(Vec::new(), &by_access).unwrap_err();
    assert!(matches!(err, Error::NotOnFormat2 { .. }), "{err}");
    assert!(err.to_string().contains("format-2"), "{err}");
    let err = store.remove_unused_since(since).unwrap_err();
    assert!(matches!(err, Error::NotOnFormat2 { .. }), "{err}");
    // Verify, export and import work (tests/archive_v2.rs).
    assert!(store.verify(VerifyOptions::new()).unwrap().is_clean());
    drop(store);
    let capped = Store::open(dir.path(), v2().max_size(1 << 30)).unwrap_err();
    assert!(matches!(capped, Error::NotOnFormat2 { .. }), "{capped}");
    // The entry is still there.
    let store = Store::open(dir.path(), v2()).unwrap();
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"x");
}

#[test]
fn formats_are_never_mixed_up() {
    let v1 = tempfile::tempdir().unwrap();
    Store::open(v1.path(), StoreOptions::default())
        .unwrap()
        .put("b", "s", b"v1", &PutOptions::new())
        .unwrap();
    // Format 1 asked of a format-1 cache opens it as it is; format 2
    // migrates it (tests/migrate.rs), and there is no way back.
    let store = Store::open(v1.path(), StoreOptions::default().format(1)).unwrap();
    assert_eq!(store.format(), 1);
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"v1");
    drop(store);
    let store = Store::open(v1.path(), v2()).unwrap();
    assert_eq!(store.format(), 2);
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"v1");
    drop(store);
    let err = Store::open(v1.path(), StoreOptions::default().format(1)).unwrap_err();
    assert!(
        err.to_string().contains("format-2 cache and format 1"),
        "{err}"
    );

    let fresh = tempfile::tempdir().unwrap();
    let err = Store::open(fresh.path().join("c"), StoreOptions::default().format(7)).unwrap_err();
    assert!(err.to_string().contains("format 7 was asked for"), "{err}");
    assert!(!fresh.path().join("c").join("VERSION").exists());
}

#[test]
fn a_second_process_gets_a_clear_error_and_the_cache_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), v2())
        .unwrap()
        .put("b", "s", b"before", &PutOptions::new())
        .unwrap();
    let mut holder = spawn_worker(&format!("hold|{}", dir.path().display()));
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "ready").is_some());
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"before");
}

#[test]
fn acknowledged_puts_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), v2()).unwrap());
    let mut child = spawn_worker(&format!("puts|{}", dir.path().display()));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut last = None;
    wait_for_line(&mut out, |l| {
        last = l
            .strip_prefix("ack ")
            .and_then(|n| n.parse::<u64>().ok())
            .or(last);
        last.is_some_and(|n| n >= 120)
    })
    .expect("worker acknowledged puts");
    kill9(&mut child);
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let acked = rest
        .lines()
        .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(120)
        .max(120);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.format(), 2);
    for i in 0..=acked {
        let hit = store.get("w", format!("k{i}")).unwrap();
        let hit = hit.unwrap_or_else(|| panic!("acknowledged put k{i} lost (acked {acked})"));
        assert_eq!(hit.data, sized(i), "k{i}");
    }
}
