//! Core store behaviour on real directories: round trips, dedup, TTLs,
//! integrity healing, header redaction, permissions, reopen, bad input.

mod common;

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use blobcache::{
    Category, Clock, Error, GcOptions, ManualClock, ProblemKind, PutOptions, Selector, Store,
    StoreOptions, TtlPolicy, VerifyOptions,
};
use common::*;

fn put(store: &Store, b: &str, s: &str, data: &[u8]) -> blobcache::PutReport {
    store.put(b, s, data, &PutOptions::new()).unwrap()
}

/// The blob files under `dir/blobs` (not their outboards).
fn blob_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_under(&dir.join("blobs"))
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "obao"))
        .collect()
}

/// `blobs/ab/cdef…` of `payload` and its outboard `….obao`.
fn blob_and_outboard(dir: &std::path::Path, payload: &[u8]) -> (PathBuf, PathBuf) {
    let hex = blake3::hash(payload).to_hex().to_string();
    let fanout = dir.join("blobs").join(&hex[..2]);
    (
        fanout.join(&hex[2..]),
        fanout.join(format!("{}.obao", &hex[2..])),
    )
}

/// Reads `r` to its end, or to its first error; returns what it handed
/// out and the error.
fn read_until_error(mut r: impl Read) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

const MIB: usize = 1 << 20;

#[test]
fn round_trips_small_and_large_payloads() {
    let (dir, store, _) = store_with_clock();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one", vec![0x42]),
        ("json", json_payload(1, 1024)),
        ("ten_mib", {
            let mut v = vec![0u8; 10 << 20];
            Rng::new(7).fill(&mut v[..5 << 20]);
            v
        }),
    ];
    for (sig, data) in &cases {
        let r = put(&store, "t", sig, data);
        assert_eq!(r.raw_size, data.len() as u64);
        assert_eq!(r.hash.to_hex(), blake3::hash(data).to_hex().as_str());
    }
    for (sig, data) in &cases {
        let hit = store.get("t", sig).unwrap().expect("hit");
        assert_eq!(&hit.data, data, "payload {sig}");
        assert!(!hit.stale);
        let mut streamed = Vec::new();
        store
            .get_reader("t", sig)
            .unwrap()
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(&streamed, data, "streamed payload {sig}");
    }
    // The 1 KiB JSON is compressed and inline; the 10 MiB one is a file.
    let json = store.meta("t", "json").unwrap().unwrap();
    assert!(json.compressed && json.inline && json.stored_size < 1024);
    let big = store.meta("t", "ten_mib").unwrap().unwrap();
    assert!(!big.inline && big.compressed && big.stored_size < 6 << 20);
    assert_eq!(blob_files(dir.path()).len(), 1);
    assert_clean(&store);
}

#[test]
fn streams_200_mib_in_and_out() {
    let (dir, store, _) = store_with_clock();
    let len = 200u64 << 20;
    let (want, _) = hash_reader(GenReader::new(99, len)).unwrap();
    let r = store
        .put_reader(
            "dumps",
            "full",
            GenReader::new(99, len),
            &PutOptions::new().category(Category::OfflineDump),
        )
        .unwrap();
    assert_eq!(r.raw_size, len);
    assert_eq!(r.hash.to_hex(), want.to_hex().as_str());
    assert!(r.compressed && !r.inline);
    let reader = store.get_reader("dumps", "full").unwrap().unwrap();
    assert_eq!(reader.meta.raw_size, len);
    let (got, n) = hash_reader(reader).unwrap();
    assert_eq!((got, n), (want, len));
    // The staging file is gone; exactly one blob file exists.
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert_eq!(blob_files(dir.path()).len(), 1);
    // A second streamed put of the same bytes writes no new blob.
    let again = store
        .put_reader("dumps", "copy", GenReader::new(99, len), &PutOptions::new())
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(blob_files(dir.path()).len(), 1);
    assert_clean(&store);
}

#[test]
fn incompressible_payloads_are_stored_raw() {
    let (_dir, store, _) = store_with_clock();
    let mut noise = vec![0u8; 64 * 1024];
    Rng::new(3).fill(&mut noise);
    let r = put(&store, "img", "poster", &noise);
    assert!(!r.compressed);
    assert_eq!(r.stored_size, noise.len() as u64);
    assert_eq!(store.get("img", "poster").unwrap().unwrap().data, noise);
    // Streamed incompressible data is stored raw too.
    let mut big = vec![0u8; 12 << 20];
    Rng::new(4).fill(&mut big);
    let r = store
        .put_reader("img", "big", &big[..], &PutOptions::new())
        .unwrap();
    assert!(!r.compressed);
    assert_eq!(store.get("img", "big").unwrap().unwrap().data, big);
}

#[test]
fn identical_payloads_share_one_blob() {
    let (dir, store, _) = store_with_clock();
    let data = json_payload(5, 400 * 1024); // compresses to a file blob
    let a = put(&store, "tmdb", "movie/1", &data);
    let b = put(&store, "anilist", "anime/1", &data);
    assert!(!a.deduplicated && b.deduplicated);
    assert_eq!(a.hash, b.hash);
    assert_eq!(blob_files(dir.path()).len(), 1);
    let stats = store.stats().unwrap();
    assert_eq!((stats.entries, stats.blobs), (2, 1));
    assert_eq!(stats.raw_bytes, 2 * data.len() as u64);
    assert_clean(&store); // checks refcount == 2
    assert!(store.delete("tmdb", "movie/1").unwrap());
    assert_eq!(store.get("anilist", "anime/1").unwrap().unwrap().data, data);
    assert_eq!(blob_files(dir.path()).len(), 1);
    assert_clean(&store); // refcount now 1
    // Inline blobs dedup too, and are freed with their last entry.
    let small = json_payload(6, 900);
    put(&store, "x", "1", &small);
    assert!(put(&store, "x", "2", &small).deduplicated);
    assert_eq!(store.stats().unwrap().blobs, 2);
    store.delete("x", "1").unwrap();
    store.delete("x", "2").unwrap();
    assert_eq!(store.stats().unwrap().blobs, 1);
    assert_clean(&store);
}

#[test]
fn replacing_an_entry_releases_its_old_blob() {
    let (_dir, store, _) = store_with_clock();
    put(&store, "b", "k", b"first version");
    put(&store, "b", "k", b"second version");
    assert_eq!(
        store.get("b", "k").unwrap().unwrap().data,
        b"second version"
    );
    let s = store.stats().unwrap();
    assert_eq!((s.entries, s.blobs), (1, 1));
    assert_clean(&store);
}

#[test]
fn ttl_by_category_and_explicit() {
    let (_dir, store, clock) = store_with_clock();
    let t0 = clock.now_ms();
    let cases = [
        (Category::Metadata, 72 * 3600),
        (Category::List, 24 * 3600),
        (Category::Schedule, 3600),
        (Category::Trending, 3600),
        (Category::OfflineDump, 30 * 24 * 3600),
        (Category::parse("posters"), 72 * 3600),
    ];
    for (cat, secs) in &cases {
        let r = store
            .put(
                "b",
                cat.as_str(),
                b"x",
                &PutOptions::new().category(cat.clone()),
            )
            .unwrap();
        assert_eq!(r.expires_at, t0 + secs * 1000, "{cat}");
        let m = store.meta("b", cat.as_str()).unwrap().unwrap();
        assert_eq!(&m.category, cat);
    }
    let r = store
        .put(
            "b",
            "explicit",
            b"x",
            &PutOptions::new()
                .category(Category::OfflineDump)
                .ttl(Duration::from_secs(90)),
        )
        .unwrap();
    assert_eq!(r.expires_at, t0 + 90_000);
}

#[test]
fn per_store_ttl_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(ManualClock::new(5_000));
    let policy = TtlPolicy::default().with(Category::List, Duration::from_secs(60));
    let opts = StoreOptions::default()
        .clock(clock.clone())
        .ttl_policy(policy)
        .category_ttl(Category::parse("posters"), Duration::from_secs(7));
    let store = Store::open(dir.path(), opts).unwrap();
    let list = store
        .put("b", "l", b"x", &PutOptions::new().category(Category::List))
        .unwrap();
    assert_eq!(list.expires_at, 5_000 + 60_000);
    let p = store
        .put(
            "b",
            "p",
            b"x",
            &PutOptions::new().category(Category::parse("posters")),
        )
        .unwrap();
    assert_eq!(p.expires_at, 5_000 + 7_000);
}

#[test]
fn expired_entries_are_misses_but_readable_stale() {
    let (_dir, store, clock) = store_with_clock();
    store
        .put(
            "b",
            "k",
            b"payload",
            &PutOptions::new().ttl(Duration::from_secs(10)),
        )
        .unwrap();
    clock.advance(Duration::from_millis(9_999));
    assert!(store.get("b", "k").unwrap().is_some());
    assert!(store.contains("b", "k").unwrap());
    clock.advance(Duration::from_millis(1));
    assert!(store.get("b", "k").unwrap().is_none());
    assert!(!store.contains("b", "k").unwrap());
    assert!(store.get_reader("b", "k").unwrap().is_none());
    let stale = store.get_stale("b", "k").unwrap().expect("stale hit");
    assert!(stale.stale);
    assert_eq!(stale.data, b"payload");
    let s = store.stats().unwrap();
    assert_eq!((s.live, s.expired, s.stale_hits), (0, 1, 1));
    // touch brings it back to life.
    assert!(store.touch("b", "k", Duration::from_secs(60)).unwrap());
    assert!(store.get("b", "k").unwrap().is_some());
    assert!(!store.touch("b", "nope", Duration::from_secs(60)).unwrap());
    // purge_expired removes only what is expired.
    store
        .put(
            "b",
            "short",
            b"s",
            &PutOptions::new().ttl(Duration::from_secs(1)),
        )
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.purge_expired().unwrap(), 1);
    assert!(store.get_stale("b", "short").unwrap().is_none());
    assert!(store.get("b", "k").unwrap().is_some());
    assert_clean(&store);
}

#[test]
fn ttl_arithmetic_saturates() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(ManualClock::new(u64::MAX - 10));
    let store = Store::open(dir.path(), StoreOptions::default().clock(clock.clone())).unwrap();
    let r = store
        .put("b", "k", b"x", &PutOptions::new().ttl(Duration::MAX))
        .unwrap();
    assert_eq!(r.expires_at, u64::MAX);
    // A zero TTL is expired at once but still readable stale.
    clock.set(0);
    store
        .put("b", "z", b"x", &PutOptions::new().ttl(Duration::ZERO))
        .unwrap();
    assert!(store.get("b", "z").unwrap().is_none());
    assert!(store.get_stale("b", "z").unwrap().is_some());
}

/// Corrupts `path` by flipping one byte in the middle.
fn flip_byte(path: &std::path::Path) {
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_blob_is_a_miss_and_heals() {
    let (dir, store, _) = store_with_clock();
    let data = json_payload(11, 200 * 1024);
    put(&store, "b", "k", &data);
    let files = blob_files(dir.path());
    assert_eq!(files.len(), 1);
    flip_byte(&files[0]);
    let report = store.verify(VerifyOptions::new().full(true)).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].kind, ProblemKind::CorruptBlob);
    assert!(store.get("b", "k").unwrap().is_none(), "never wrong bytes");
    assert!(store.meta("b", "k").unwrap().is_none(), "entry dropped");
    assert_eq!(store.stats().unwrap().corrupt, 1);
    assert_clean(&store);
    // A new put of the same payload writes a fresh, good blob.
    let r = put(&store, "b", "k", &data);
    assert!(!r.deduplicated);
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, data);
}

#[test]
fn corrupt_blob_is_a_miss_before_any_byte_is_streamed() {
    let (dir, store, _) = store_with_clock();
    let data = json_payload(12, 300 * 1024);
    put(&store, "b", "k", &data);
    let file = &blob_files(dir.path())[0];
    // Same length, different content: only the hash can tell.
    let mut bytes = fs::read(file).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    fs::write(file, bytes).unwrap();
    assert!(
        store.get_reader("b", "k").unwrap().is_none(),
        "a damaged blob is a miss: no stream, so no unverified byte"
    );
    assert!(store.meta("b", "k").unwrap().is_none(), "entry dropped");
    assert_eq!(store.stats().unwrap().corrupt, 1);
}

#[test]
fn missing_and_truncated_blobs_are_misses() {
    let (dir, store, _) = store_with_clock();
    put(&store, "b", "gone", &json_payload(21, 100 * 1024));
    let gone = blob_files(dir.path());
    fs::remove_file(&gone[0]).unwrap();
    put(&store, "b", "cut", &json_payload(22, 100 * 1024));
    let cut = blob_files(dir.path());
    let f = fs::OpenOptions::new().write(true).open(&cut[0]).unwrap();
    f.set_len(cut[0].metadata().unwrap().len() / 2).unwrap();
    assert!(store.get("b", "gone").unwrap().is_none());
    assert!(
        store
            .get_reader("b", "cut")
            .unwrap()
            .is_none_or(|mut r| r.read_to_end(&mut Vec::new()).is_err())
    );
    assert!(store.meta("b", "gone").unwrap().is_none());
    assert!(store.meta("b", "cut").unwrap().is_none());
    assert_eq!(store.stats().unwrap().corrupt, 2);
    assert_clean(&store);
}

#[test]
fn symlink_planted_at_a_blob_path_is_not_followed() {
    let (dir, store, _) = store_with_clock();
    let outside = tempfile::NamedTempFile::new().unwrap();
    fs::write(outside.path(), b"secret outside the cache").unwrap();
    let data = json_payload(31, 100 * 1024);
    put(&store, "b", "k", &data);
    let blob = blob_files(dir.path()).remove(0);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(outside.path(), &blob).unwrap();
    assert!(store.get("b", "k").unwrap().is_none());
    // A put of the same payload replaces the link with a real file and
    // leaves the link's target alone.
    put(&store, "b", "k", &data);
    assert!(fs::symlink_metadata(&blob).unwrap().is_file());
    assert_eq!(
        fs::read(outside.path()).unwrap(),
        b"secret outside the cache"
    );
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, data);
}

#[test]
fn foreign_files_in_the_cache_do_no_harm() {
    let (dir, store, clock) = store_with_clock();
    let data = json_payload(41, 50 * 1024);
    put(&store, "b", "k", &data);
    fs::write(dir.path().join("blobs").join("README"), b"hello").unwrap();
    fs::create_dir_all(dir.path().join("blobs").join("zz")).unwrap();
    fs::write(dir.path().join("blobs").join("zz").join("notes.txt"), b"x").unwrap();
    fs::write(dir.path().join("tmp").join("stray"), b"x").unwrap();
    fs::write(dir.path().join("journal").join("notes.txt"), b"x").unwrap();
    fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, data);
    put(&store, "b", "k2", &json_payload(42, 50 * 1024));
    let report = store.verify(VerifyOptions::new().full(true)).unwrap();
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::ForeignFile),
        "{:?}",
        report.problems
    );
    assert_eq!(report.problems.len(), 2);
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default().clock(clock)).unwrap();
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, data);
}

#[test]
fn secret_headers_are_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default().drop_header("X-Api-Key")).unwrap();
    let opts = PutOptions::new()
        .header("Content-Type", "application/json")
        .header("authorization", "Bearer SECRET-TOKEN-1")
        .header("Cookie", "session=SECRET-TOKEN-2")
        .header("Set-Cookie", "id=SECRET-TOKEN-3")
        .header("Proxy-Authorization", "Basic SECRET-TOKEN-4")
        .header("x-api-key", "SECRET-TOKEN-5")
        .header("ETag", "\"v1\"");
    store.put("tmdb", "movie/1", b"{}", &opts).unwrap();
    let meta = store.meta("tmdb", "movie/1").unwrap().unwrap();
    assert_eq!(
        meta.headers,
        vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("ETag".to_string(), "\"v1\"".to_string()),
        ]
    );
    store.flush().unwrap();
    drop(store);
    for f in files_under(dir.path()) {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w.starts_with(b"SECRET-TOKEN-")),
            "{} holds a secret",
            f.display()
        );
    }
}

#[test]
fn files_are_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store, _) = store_with_clock();
    put(&store, "b", "small", b"x");
    put(&store, "b", "large", &json_payload(51, 100 * 1024));
    store
        .put_reader(
            "b",
            "stream",
            GenReader::new(5, 9 << 20),
            &PutOptions::new(),
        )
        .unwrap();
    drop(store);
    let mut stack = vec![dir.path().to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                seen += 1;
                assert_eq!(
                    m.permissions().mode() & 0o777,
                    0o600,
                    "{}",
                    e.path().display()
                );
            }
        }
    }
    assert!(seen >= 6, "saw only {seen} files");
}

#[test]
fn reopen_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..300u64 {
            let data = json_payload(i, 500 + (i as usize * 97) % 40_000);
            store
                .put("b", format!("k{i}"), &data, &PutOptions::new())
                .unwrap();
            want.push(data);
        }
        assert!(store.get("b", "k1").unwrap().is_some());
        assert!(store.get("b", "missing").unwrap().is_none());
    }
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    for (i, data) in want.iter().enumerate() {
        assert_eq!(
            &store.get("b", format!("k{i}")).unwrap().unwrap().data,
            data
        );
    }
    let s = store.stats().unwrap();
    assert_eq!(s.entries, 300);
    assert_eq!(s.puts, 300);
    assert_eq!((s.hits, s.misses), (301, 1), "counters persist");
    assert_eq!(s.backends.len(), 1);
    assert_eq!(s.backends[0].entries, 300);
    // Hit counts reached the records.
    drop(store);
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.meta("b", "k1").unwrap().unwrap().hits, 2);
    assert_clean(&store);
}

#[test]
fn list_and_clear_by_backend_and_prefix() {
    let (_dir, store, _) = store_with_clock();
    for i in 0..2500 {
        put(
            &store,
            "tmdb",
            &format!("movie/{i:05}"),
            format!("m{i}").as_bytes(),
        );
    }
    for i in 0..10 {
        put(&store, "tmdb", &format!("tv/{i}"), b"tv");
        put(&store, "tmdb2", &format!("movie/{i}"), b"other backend");
    }
    let all: Vec<_> = store
        .list(&Selector::All)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 2520);
    let tmdb: Vec<_> = store
        .list(&Selector::backend("tmdb"))
        .unwrap()
        .map(|m| m.unwrap())
        .collect();
    assert_eq!(tmdb.len(), 2510);
    assert!(tmdb.iter().all(|m| m.backend == "tmdb"));
    assert!(
        tmdb.windows(2).all(|w| w[0].signature < w[1].signature),
        "ordered by signature"
    );
    let tv = store
        .list(&Selector::prefix("tmdb", "tv/"))
        .unwrap()
        .count();
    assert_eq!(tv, 10);
    assert_eq!(
        store.clear(&Selector::prefix("tmdb", "movie/")).unwrap(),
        2500
    );
    assert_eq!(store.list(&Selector::backend("tmdb")).unwrap().count(), 10);
    assert_eq!(store.clear(&Selector::backend("tmdb2")).unwrap(), 10);
    assert_eq!(store.clear(&Selector::All).unwrap(), 10);
    assert_eq!(store.stats().unwrap().entries, 0);
    assert_clean(&store);
}

#[test]
fn bad_keys_get_typed_errors() {
    let (_dir, store, _) = store_with_clock();
    let o = PutOptions::new();
    assert!(matches!(
        store.put("", "s", b"x", &o),
        Err(Error::EmptyBackend)
    ));
    assert!(matches!(
        store.put("a\0b", "s", b"x", &o),
        Err(Error::NulInBackend { .. })
    ));
    assert!(matches!(
        store.put(&"b".repeat(256), "s", b"x", &o),
        Err(Error::KeyTooLong { .. })
    ));
    assert!(matches!(
        store.get("b", vec![b'x'; 5000]),
        Err(Error::KeyTooLong { .. })
    ));
    // Binary signatures are fine.
    store.put("b", [0u8, 255, 10, 0], b"bin", &o).unwrap();
    assert_eq!(
        store.get("b", [0u8, 255, 10, 0]).unwrap().unwrap().data,
        b"bin"
    );
}

#[test]
fn newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
    fs::write(dir.path().join("VERSION"), "99\n").unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NewerFormat { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade blobcache"), "{err}");
    fs::write(dir.path().join("VERSION"), "garbage").unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
}

#[test]
fn a_directory_with_other_content_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.tex"), b"precious").unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing created"
    );
    // A file where the cache directory should be.
    let f = dir.path().join("file");
    fs::write(&f, b"x").unwrap();
    assert!(matches!(
        Store::open(&f, StoreOptions::default()),
        Err(Error::NotACache { .. })
    ));
}

#[test]
fn symlinked_subdirectory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let elsewhere = tempfile::tempdir().unwrap();
    fs::remove_dir_all(dir.path().join("blobs")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("blobs")).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Symlink { .. }), "{err}");
}

#[test]
fn damaged_index_is_moved_aside_and_the_cache_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..50 {
            put(&store, "b", &format!("k{i}"), &json_payload(i, 30_000));
        }
    }
    // Overwrite the database file with garbage.
    let db = dir.path().join("index").join("db");
    let len = fs::metadata(&db).unwrap().len() as usize;
    let mut junk = vec![0u8; len.max(4096)];
    Rng::new(1).fill(&mut junk);
    fs::write(&db, &junk).unwrap();
    fs::write(dir.path().join("index").join("conf"), b"not a sled config").unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let s = store.stats().unwrap();
    assert_eq!(s.index_resets, 1);
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("index.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "damaged index kept for inspection");
    put(&store, "b", "new", b"works");
    assert_eq!(store.get("b", "new").unwrap().unwrap().data, b"works");
    let report = store.verify(VerifyOptions::new()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn undecodable_record_is_an_error_for_that_key_only() {
    // Write a record, then overwrite its value in sled with junk through a
    // raw sled handle while the store is closed.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        put(&store, "b", "bad", b"one");
        put(&store, "b", "good", b"two");
    }
    {
        let db = sled::open(dir.path().join("index")).unwrap();
        let entries = db.open_tree("entries").unwrap();
        let key = blobcache::key::encode("b", b"bad").unwrap();
        entries.insert(key, &b"\xff\x00junk"[..]).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let err = store.get("b", "bad").unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    assert!(err.to_string().contains("b/bad"), "{err}");
    assert_eq!(store.get("b", "good").unwrap().unwrap().data, b"two");
    let listed: Vec<_> = store.list(&Selector::All).unwrap().collect();
    assert_eq!(listed.iter().filter(|r| r.is_err()).count(), 1);
    // delete clears it; verify --repair fixes the refcount it leaked.
    assert!(store.delete("b", "bad").unwrap());
    let report = store.verify(VerifyOptions::new().repair(true)).unwrap();
    assert!(report.repaired > 0);
    assert_clean(&store);
}

#[test]
fn concurrent_writers_and_readers_never_see_wrong_bytes_or_false_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    // Few keys, few payloads (inline and file blobs), so writers keep
    // releasing blobs that readers are about to read.
    let payloads: Vec<Vec<u8>> = (0..4)
        .map(|i| json_payload(i, if i % 2 == 0 { 700 } else { 300_000 }))
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (store, payloads, stop) = (store.clone(), &payloads, &stop);
            s.spawn(move || {
                let mut rng = Rng::new(w);
                for _ in 0..1500 {
                    let k = format!("k{}", rng.below(3));
                    if rng.below(4) == 0 {
                        store.delete("b", &k).unwrap();
                    } else {
                        let p = &payloads[rng.below(4) as usize];
                        store.put("b", &k, p, &PutOptions::new()).unwrap();
                    }
                }
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        for r in 0..2u64 {
            let (store, payloads, stop) = (store.clone(), &payloads, &stop);
            s.spawn(move || {
                let mut rng = Rng::new(100 + r);
                let mut hits = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let k = format!("k{}", rng.below(3));
                    if let Some(hit) = store.get("b", &k).unwrap() {
                        assert!(payloads.contains(&hit.data), "wrong bytes for {k}");
                        hits += 1;
                    }
                }
                assert!(hits > 0);
            });
        }
    });
    assert_eq!(
        store.stats().unwrap().corrupt,
        0,
        "a race was mistaken for corruption"
    );
    assert_clean(&store);
}

#[test]
fn synced_durability_round_trips_through_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().durability(blobcache::Durability::Synced);
    let big = json_payload(61, 300 * 1024);
    {
        let store = Store::open(dir.path(), opts.clone()).unwrap();
        store
            .put("b", "inline", b"small", &PutOptions::new())
            .unwrap();
        store.put("b", "file", &big, &PutOptions::new()).unwrap();
        store
            .put_reader(
                "b",
                "stream",
                GenReader::new(3, 10 << 20),
                &PutOptions::new(),
            )
            .unwrap();
        assert!(store.delete("b", "inline").unwrap());
    }
    let store = Store::open(dir.path(), opts).unwrap();
    assert!(store.get("b", "inline").unwrap().is_none());
    assert_eq!(store.get("b", "file").unwrap().unwrap().data, big);
    let (h, n) = hash_reader(store.get_reader("b", "stream").unwrap().unwrap()).unwrap();
    assert_eq!((h, n), hash_reader(GenReader::new(3, 10 << 20)).unwrap());
    assert_clean(&store);
}

#[test]
fn streamed_puts_report_dedup_truthfully() {
    let (_dir, store, _) = store_with_clock();
    let size = 9 << 20; // over the in-memory limit: streamed
    let first = store
        .put_reader("d", "one", GenReader::new(21, size), &PutOptions::new())
        .unwrap();
    assert!(!first.deduplicated, "a new payload is not a duplicate");
    let second = store
        .put_reader("d", "two", GenReader::new(21, size), &PutOptions::new())
        .unwrap();
    assert!(second.deduplicated, "the same bytes again are");
    assert_eq!(first.hash, second.hash);
}

#[test]
fn a_flipped_byte_in_the_last_group_stops_the_stream_before_it() {
    let (dir, store, _) = store_with_clock();
    // Incompressible, so stored byte i is payload byte i.
    let data = noise(41, 20 * MIB);
    put(&store, "b", "k", &data);
    let (blob, outboard) = blob_and_outboard(dir.path(), &data);
    assert!(
        outboard.is_file(),
        "a payload over 8 MiB carries an outboard"
    );
    flip(&blob, (data.len() - 100) as u64);
    let reader = store
        .get_reader("b", "k")
        .unwrap()
        .expect("the outboard is intact, so the stream opens");
    let (emitted, err) = read_until_error(reader);
    assert_eq!(
        emitted.len(),
        19 * MIB,
        "the 19 verified groups before the damaged one"
    );
    assert!(
        emitted == data[..emitted.len()],
        "every byte handed out is right"
    );
    let err = err.expect("the damaged group is an error");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    // The entry was dropped with its blob and outboard.
    assert!(store.meta("b", "k").unwrap().is_none(), "entry dropped");
    assert!(!blob.exists() && !outboard.exists());
    assert_eq!(store.stats().unwrap().corrupt, 1);
    put(&store, "b", "k", &data);
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, data, "healed");
}

#[test]
fn a_flipped_byte_in_the_outboard_is_a_miss_before_the_first_byte() {
    let (dir, store, _) = store_with_clock();
    let data = json_payload(42, 12 * MIB);
    put(&store, "b", "k", &data);
    let (blob, outboard) = blob_and_outboard(dir.path(), &data);
    let len = fs::metadata(&outboard).unwrap().len();
    // The 16-byte header, then one 32-byte hash per MiB.
    assert_eq!(len, 16 + 32 * 12);
    flip(&outboard, len - 40);
    assert!(
        store.get_reader("b", "k").unwrap().is_none(),
        "a forged or damaged outboard is found before any byte is emitted"
    );
    assert!(store.meta("b", "k").unwrap().is_none(), "entry dropped");
    assert!(!blob.exists() && !outboard.exists());
}

#[test]
fn a_large_blob_without_an_outboard_is_checked_first_and_gets_one() {
    let (dir, store, _) = store_with_clock();
    let data = json_payload(43, 9 * MIB + 123);
    put(&store, "b", "k", &data);
    let (blob, outboard) = blob_and_outboard(dir.path(), &data);
    let original = fs::read(&outboard).unwrap();
    // As a blob written by an older version, or imported.
    fs::remove_file(&outboard).unwrap();
    let mut out = Vec::new();
    let mut r = store.get_reader("b", "k").unwrap().unwrap();
    r.read_to_end(&mut out).unwrap();
    assert!(out == data);
    assert_eq!(fs::read(&outboard).unwrap(), original, "stored by the read");
    assert_clean(&store);

    // Without an outboard, damage is found by the pass, before any byte.
    fs::remove_file(&outboard).unwrap();
    let stored = fs::metadata(&blob).unwrap().len();
    flip(&blob, stored / 2);
    assert!(store.get_reader("b", "k").unwrap().is_none());
    assert!(store.meta("b", "k").unwrap().is_none(), "entry dropped");
    assert!(!outboard.exists(), "no outboard for a damaged blob");
}

#[test]
fn streamed_puts_get_an_outboard_and_gc_removes_it_with_the_blob() {
    let (dir, store, _) = store_with_clock();
    let len = 10 * MIB as u64 + 1;
    let report = store
        .put_reader("b", "k", GenReader::new(44, len), &PutOptions::new())
        .unwrap();
    let hex = report.hash.to_hex();
    let fanout = dir.path().join("blobs").join(&hex[..2]);
    let blob = fanout.join(&hex[2..]);
    let outboard = fanout.join(format!("{}.obao", &hex[2..]));
    assert!(blob.is_file() && outboard.is_file());
    let (h, n) = hash_reader(store.get_reader("b", "k").unwrap().unwrap()).unwrap();
    assert_eq!((h.to_hex().to_string(), n), (hex.clone(), len));
    // A full verify is clean: the outboard is the blob's, not a foreign file.
    assert_clean(&store);
    assert!(store.delete("b", "k").unwrap());
    store
        .gc(&GcOptions::new().safety_window(Duration::ZERO))
        .unwrap();
    assert!(!blob.exists(), "blob removed");
    assert!(!outboard.exists(), "its outboard removed with it");
    assert_clean(&store);
}

#[test]
fn gc_removes_an_old_outboard_left_without_its_blob() {
    let (dir, store, _) = store_with_clock();
    let data = noise(45, 9 * MIB);
    put(&store, "b", "k", &data);
    let (_, outboard) = blob_and_outboard(dir.path(), &data);
    let kept = fs::read(&outboard).unwrap();
    assert!(store.delete("b", "k").unwrap());
    store
        .gc(&GcOptions::new().safety_window(Duration::ZERO))
        .unwrap();
    // A read that stored the outboard as GC removed the blob.
    fs::write(&outboard, kept).unwrap();
    let report = store.verify(VerifyOptions::new()).unwrap();
    assert_eq!(report.orphan_files, 1, "counted as an orphan, not foreign");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store
        .gc(&GcOptions::new().safety_window(Duration::ZERO))
        .unwrap();
    assert!(!outboard.exists());
}

#[test]
fn full_verify_finds_a_damaged_outboard() {
    let (dir, store, _) = store_with_clock();
    let data = noise(46, 9 * MIB);
    put(&store, "b", "k", &data);
    let (_, outboard) = blob_and_outboard(dir.path(), &data);
    flip(&outboard, 20);
    assert!(store.verify(VerifyOptions::new()).unwrap().is_clean());
    let report = store.verify(VerifyOptions::new().full(true)).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].kind, ProblemKind::CorruptBlob);
    assert!(report.problems[0].detail.contains("outboard"));
}
