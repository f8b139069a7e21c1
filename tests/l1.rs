//! The in-process memory tier (`StoreOptions::memory_tier`): hits are
//! served from memory, every change made through the store drops what it
//! changed, TTLs hold, the byte bound holds, and another process's writes
//! show up after the configured max staleness.
//!
//! "Served from memory" is observed for real: entries are stored as blob
//! files (inline threshold 0), the files are deleted, and a read that still
//! returns the payload can only have come from the tier.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blobcache::{ManualClock, PutOptions, Selector, Store, StoreOptions};
use common::{json_payload, noise};

const HOUR: Duration = Duration::from_secs(3600);

fn options(clock: &Arc<ManualClock>, tier: u64) -> StoreOptions {
    StoreOptions::default()
        .clock(clock.clone())
        .inline_threshold(0)
        .memory_tier(tier)
        .memory_tier_max_staleness(HOUR)
}

fn open(tier: u64) -> (tempfile::TempDir, Store, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let store = Store::open(dir.path(), options(&clock, tier)).unwrap();
    (dir, store, clock)
}

/// Deletes every blob file, so only the memory tier can still serve.
fn remove_blob_files(dir: &Path) {
    let mut stack = vec![dir.join("blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

fn data(store: &Store, sig: &str) -> Option<Vec<u8>> {
    store.get("tmdb", sig).unwrap().map(|h| h.data)
}

/// Puts a 4 KiB payload at movie/1, reads it once, deletes the blob
/// files; returns the payload.
fn read_then_remove_blob_files(store: &Store, dir: &Path) -> Vec<u8> {
    let body = json_payload(1, 4096);
    store
        .put("tmdb", "movie/1", &body, &PutOptions::new())
        .unwrap();
    assert_eq!(data(store, "movie/1").as_ref(), Some(&body));
    remove_blob_files(dir);
    body
}

#[test]
fn a_hot_entry_is_served_from_memory_and_counted_as_a_hit() {
    let (dir, store, _) = open(1 << 20);
    let body = read_then_remove_blob_files(&store, dir.path());
    let hit = store
        .get("tmdb", "movie/1")
        .unwrap()
        .expect("served from memory");
    assert_eq!(hit.data, body);
    assert!(!hit.stale);
    assert_eq!(hit.meta.signature, b"movie/1");
    assert_eq!(store.stats().unwrap().hits, 2);
}

#[test]
fn without_the_tier_the_same_read_is_a_miss() {
    let (dir, store, _) = open(0);
    read_then_remove_blob_files(&store, dir.path());
    assert_eq!(data(&store, "movie/1"), None);
}

#[test]
fn a_put_replaces_what_memory_holds() {
    let (_dir, store, _) = open(1 << 20);
    let (v1, v2) = (json_payload(1, 2048), json_payload(2, 2048));
    store
        .put("tmdb", "movie/1", &v1, &PutOptions::new())
        .unwrap();
    assert_eq!(data(&store, "movie/1"), Some(v1));
    store
        .put("tmdb", "movie/1", &v2, &PutOptions::new())
        .unwrap();
    assert_eq!(data(&store, "movie/1"), Some(v2));
}

#[test]
fn delete_and_clear_drop_entries_from_memory() {
    let (_dir, store, _) = open(1 << 20);
    for sig in ["movie/1", "movie/2", "list/1"] {
        let body = json_payload(sig.len() as u64, 2048);
        store.put("tmdb", sig, &body, &PutOptions::new()).unwrap();
        assert!(data(&store, sig).is_some());
    }
    assert!(store.delete("tmdb", "list/1").unwrap());
    assert_eq!(data(&store, "list/1"), None);
    let removed = store.clear(&Selector::prefix("tmdb", "movie/")).unwrap();
    assert_eq!(removed, 2);
    assert_eq!(data(&store, "movie/1"), None);
    assert_eq!(data(&store, "movie/2"), None);
}

#[test]
fn touch_moves_the_expiry_memory_respects() {
    let (_dir, store, clock) = open(1 << 20);
    let opts = PutOptions::new().ttl(HOUR);
    store.put("tmdb", "movie/1", b"{\"id\":1}", &opts).unwrap();
    assert!(data(&store, "movie/1").is_some());
    assert!(
        store
            .touch("tmdb", "movie/1", Duration::from_secs(10))
            .unwrap()
    );
    assert!(data(&store, "movie/1").is_some());
    clock.advance(Duration::from_secs(11));
    assert_eq!(data(&store, "movie/1"), None);
}

#[test]
fn an_expired_entry_is_never_served_from_memory() {
    let (_dir, store, clock) = open(1 << 20);
    let opts = PutOptions::new().ttl(Duration::from_secs(10));
    store.put("tmdb", "movie/1", b"{\"id\":1}", &opts).unwrap();
    assert!(data(&store, "movie/1").is_some());
    clock.advance(Duration::from_secs(9));
    assert!(data(&store, "movie/1").is_some());
    clock.advance(Duration::from_secs(1));
    assert_eq!(data(&store, "movie/1"), None);
    let stale = store.get_stale("tmdb", "movie/1").unwrap().unwrap();
    assert!(stale.stale);
}

#[test]
fn memory_holds_at_most_its_byte_bound_most_recent_first() {
    const SIZE: usize = 8 * 1024;
    const BOUND: u64 = 64 * 1024;
    let (dir, store, _) = open(BOUND);
    let sigs: Vec<String> = (0..20).map(|i| format!("movie/{i}")).collect();
    for (i, sig) in sigs.iter().enumerate() {
        let body = json_payload(i as u64, SIZE);
        store.put("tmdb", sig, &body, &PutOptions::new()).unwrap();
        assert!(data(&store, sig).is_some());
    }
    remove_blob_files(dir.path());
    let served: Vec<bool> = sigs.iter().map(|s| data(&store, s).is_some()).collect();
    let n = served.iter().filter(|s| **s).count();
    assert!(n >= 1, "nothing was served from memory");
    assert!(
        n as u64 * SIZE as u64 <= BOUND,
        "{n} entries of {SIZE} B served from a {BOUND} B tier"
    );
    // The ones kept are the most recently read.
    assert!(served[20 - n..].iter().all(|s| *s), "{served:?}");
}

#[test]
fn another_process_writes_are_seen_after_the_max_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let owner = Store::open(
        dir.path(),
        options(&clock, 1 << 20).memory_tier_max_staleness(Duration::from_secs(5)),
    )
    .unwrap();
    // A second open of the same directory is a guest of the owner (the
    // same path another process takes; its writes reach the owner's index
    // over the socket, not through the owner's Store).
    let guest = Store::open(dir.path(), options(&clock, 0)).unwrap();
    assert!(owner.is_owner() && !guest.is_owner());
    let (v1, v2) = (json_payload(1, 2048), json_payload(2, 2048));
    owner
        .put("tmdb", "movie/1", &v1, &PutOptions::new())
        .unwrap();
    assert_eq!(data(&owner, "movie/1").as_ref(), Some(&v1));
    guest
        .put("tmdb", "movie/1", &v2, &PutOptions::new())
        .unwrap();
    assert_eq!(data(&guest, "movie/1").as_ref(), Some(&v2));
    // Documented: the owner's memory tier does not see the guest's write...
    assert_eq!(data(&owner, "movie/1").as_ref(), Some(&v1));
    // ...until the entry has been held for the max staleness.
    clock.advance(Duration::from_secs(5));
    assert_eq!(data(&owner, "movie/1"), Some(v2));
}

#[test]
fn gc_expiry_and_eviction_drop_entries_from_the_tier() {
    let (_dir, store, clock) = open(8 << 20);
    let hour = Duration::from_secs(3600);
    store
        .put(
            "b",
            "short",
            &json_payload(1, 1024),
            &PutOptions::new().ttl(hour),
        )
        .unwrap();
    store
        .put(
            "b",
            "long",
            // A blob file: evicting an inline payload frees no file, so
            // eviction leaves those alone.
            &noise(2, 100_000),
            &PutOptions::new().ttl(100 * hour),
        )
        .unwrap();
    assert!(store.get("b", "short").unwrap().is_some());
    assert!(
        store.get("b", "long").unwrap().is_some(),
        "now held in memory"
    );

    // Expired past the grace, then removed by GC.
    clock.advance(Duration::from_secs(2 * 3600));
    let gc = blobcache::GcOptions::new()
        .grace(Duration::ZERO)
        .safety_window(Duration::ZERO);
    store.gc(&gc).unwrap();
    assert!(store.get_stale("b", "short").unwrap().is_none());

    // Evicted for a size cap: the tier must not serve it.
    assert!(
        store.get("b", "long").unwrap().is_some(),
        "held in memory again"
    );
    let cap = store.stats().unwrap().disk_bytes() - 50_000;
    let report = store.gc(&gc.max_size(cap)).unwrap();
    assert!(report.entries_evicted >= 1, "{report:?}");
    assert!(store.meta("b", "long").unwrap().is_none());
    assert!(
        store.get("b", "long").unwrap().is_none(),
        "an evicted entry is not served from memory"
    );
}
