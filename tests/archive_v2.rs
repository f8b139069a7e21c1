//! Export, import and verify on format-2 caches (`StoreOptions::format(2)`):
//! archives cross between the formats both ways with every byte and time
//! kept, damaged or forged archives import nothing, and verify finds (and
//! repairs exactly) a flipped byte in a pack needle and in a blob file. On
//! real temp directories, and through the real CLI binary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blobcache::{
    ArchiveIntegrity, Category, EntryMeta, Error, ExportOptions, ImportOptions, ManualClock,
    MergePolicy, ProblemKind, PutOptions, Selector, SignKey, Store, StoreOptions, VerifyOptions,
};
use common::*;

const T0: u64 = 1_000_000_000_000;

fn v2(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions::default().format(2).clock(clock.clone())
}

fn v1(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions::default().clock(clock.clone())
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// A cache with every kind of entry: small JSON needles with headers,
/// larger needles, blob files (one shared by two keys), a streamed
/// payload, a pinned entry and an expired one.
fn fill(store: &Store, clock: &ManualClock) {
    let meta = PutOptions::new()
        .category(Category::Metadata)
        .header("ETag", "\"v1\"")
        .content_type("application/json");
    for i in 0..30u64 {
        let body = json_payload(i, 200 + (i as usize * 97) % 3000);
        store
            .put("tmdb", format!("movie/{i}"), &body, &meta)
            .unwrap();
        clock.advance(Duration::from_millis(3));
    }
    for i in 0..3u64 {
        let opts = PutOptions::new().category(Category::List);
        let body = json_payload(50 + i, 70_000);
        store
            .put("tmdb", format!("page/{i}"), &body, &opts)
            .unwrap();
    }
    for i in 0..3u64 {
        let body = json_payload(100 + i, 300_000 + i as usize * 1000);
        let opts = PutOptions::new()
            .category(Category::List)
            .fetched_at(T0 - 5);
        store
            .put("anilist", format!("big/{i}"), &body, &opts)
            .unwrap();
        store
            .put("anilist", format!("copy/{i}"), &body, &opts)
            .unwrap();
    }
    let dump = PutOptions::new()
        .category(Category::OfflineDump)
        .pinned(true);
    store
        .put_reader("anidb", "dump/1", GenReader::new(3, 3 << 20), &dump)
        .unwrap();
    let short = PutOptions::new().ttl(Duration::from_secs(60));
    store.put("tmdb", "trending", b"[1,2,3]", &short).unwrap();
    clock.advance(Duration::from_secs(120)); // "trending" is now expired
}

/// What must survive a trip through an archive, per entry, in key order:
/// key, hash, sizes, times, category, content type, headers, pinned flag,
/// and the payload's own blake3 as read back.
type Kept = (
    String,
    Vec<u8>,
    String,
    u64,
    [u64; 3],
    Category,
    Option<String>,
    Vec<(String, String)>,
    bool,
    blake3::Hash,
);

fn kept(store: &Store) -> Vec<Kept> {
    let mut all: Vec<EntryMeta> = store
        .list(&Selector::All)
        .unwrap()
        .map(|m| m.unwrap())
        .collect();
    all.sort_by(|a, b| (&a.backend, &a.signature).cmp(&(&b.backend, &b.signature)));
    all.into_iter()
        .map(|m| {
            let r = store
                .get_reader_stale(&m.backend, &m.signature)
                .unwrap()
                .unwrap();
            let (hash, n) = hash_reader(r).unwrap();
            assert_eq!(n, m.raw_size);
            assert_eq!(hash.as_bytes(), &m.hash.0);
            (
                m.backend,
                m.signature,
                m.hash.to_hex(),
                m.raw_size,
                [m.created_at, m.fetched_at, m.expires_at],
                m.category,
                m.content_type,
                m.headers,
                m.pinned,
                hash,
            )
        })
        .collect()
}

fn export(store: &Store, opts: &ExportOptions) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(&mut out, opts).unwrap();
    out
}

fn entries(store: &Store) -> u64 {
    store.stats().unwrap().entries
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("blobs"))
}

/// Member names and data offsets of a tar archive.
fn members(archive: &[u8]) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (name, e.raw_file_position(), e.size())
        })
        .collect()
}

#[test]
fn archives_cross_between_the_formats_both_ways_byte_exact() {
    let clock = clock();
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let src = Store::open(a.path(), v2(&clock)).unwrap();
    fill(&src, &clock);
    let want = kept(&src);
    assert_eq!(want.len(), 30 + 3 + 6 + 2);
    assert!(want.iter().any(|k| k.0 == "tmdb" && k.1 == b"trending"));

    // format 2 → archive → format 1
    let archive = export(&src, &ExportOptions::default());
    let one = Store::open(b.path(), v1(&clock)).unwrap();
    assert_eq!(one.format(), 1);
    let r = one.import(&archive[..], &ImportOptions::default()).unwrap();
    assert_eq!((r.entries, r.imported), (41, 41), "{r:?}");
    assert_eq!(r.integrity, ArchiveIntegrity::Checksummed);
    // The shared blob file went into the archive once.
    assert_eq!(r.blobs_imported + r.blobs_skipped, 41 - 3);
    assert_eq!(kept(&one), want);
    assert_clean(&one);

    // format 1 → archive → format 2
    let back = export(&one, &ExportOptions::default());
    let two = Store::open(c.path(), v2(&clock)).unwrap();
    let r = two.import(&back[..], &ImportOptions::default()).unwrap();
    assert_eq!(r.imported, 41, "{r:?}");
    assert_eq!(kept(&two), want);
    assert_clean(&two);
    let got = two.get("tmdb", "movie/7").unwrap().unwrap();
    assert_eq!(got.data, json_payload(7, 200 + 7 * 97));
    assert!(two.get("tmdb", "trending").unwrap().is_none(), "expired");
    // The entries survive a reopen of the format-2 cache.
    drop(two);
    let two = Store::open(c.path(), v2(&clock)).unwrap();
    assert_eq!(kept(&two), want);

    // format 2 → format 2, and the filters select the same as format 1's.
    let filtered = ExportOptions::default().backend("anilist").live_only(true);
    let from_two = export(&two, &filtered);
    let from_one = export(&one, &filtered);
    let names = |a: &[u8]| members(a).into_iter().map(|m| m.0).collect::<Vec<_>>();
    assert_eq!(names(&from_two), names(&from_one));
    let d = tempfile::tempdir().unwrap();
    let three = Store::open(d.path(), v2(&clock)).unwrap();
    let r = three
        .import(&from_two[..], &ImportOptions::default())
        .unwrap();
    assert_eq!(r.imported, 6);
    let live = ExportOptions::default()
        .live_only(true)
        .since(Duration::from_secs(3600));
    let r = three
        .import(&export(&two, &live)[..], &ImportOptions::default())
        .unwrap();
    assert_eq!((r.entries, r.imported, r.skipped), (40, 34, 6), "{r:?}");
}

#[test]
fn merge_policies_decide_per_key_on_format_2() {
    let clock = clock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = Store::open(a.path(), v2(&clock)).unwrap();
    let dst = Store::open(b.path(), v2(&clock)).unwrap();
    let o = PutOptions::new();
    dst.put("m", "old", b"held old", &o).unwrap();
    clock.advance(Duration::from_secs(1));
    for k in ["old", "new", "absent"] {
        src.put("m", k, format!("archived {k}").as_bytes(), &o)
            .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    dst.put("m", "new", b"held new", &o).unwrap();
    let archive = export(&src, &ExportOptions::default());
    drop(dst);
    let value = |s: &Store, k: &str| s.get("m", k).unwrap().map(|h| h.data);
    for (policy, imported, old, new) in [
        (MergePolicy::Keep, 1, "held old", "held new"),
        (MergePolicy::Newer, 2, "archived old", "held new"),
        (MergePolicy::Replace, 3, "archived old", "archived new"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(b.path(), dir.path());
        let dst = Store::open(dir.path(), v2(&clock)).unwrap();
        let r = dst
            .import(&archive[..], &ImportOptions::default().merge(policy))
            .unwrap();
        assert_eq!(
            (r.imported, r.skipped),
            (imported, 3 - imported),
            "{policy:?}"
        );
        assert_eq!(value(&dst, "old").unwrap(), old.as_bytes(), "{policy:?}");
        assert_eq!(value(&dst, "new").unwrap(), new.as_bytes(), "{policy:?}");
        assert_eq!(value(&dst, "absent").unwrap(), b"archived absent");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let rel = f.strip_prefix(from).unwrap();
        if rel.starts_with("locks") {
            continue;
        }
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dst).unwrap();
    }
}

#[test]
fn a_format_1_archive_imports_into_format_2() {
    let v1 = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/archive-v1.tar"
    ))
    .unwrap();
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2(&clock)).unwrap();
    let key = ImportOptions::default().sign_key(SignKey::from_bytes([1; 32]));
    let err = store.import(&v1[..], &key).unwrap_err();
    assert!(matches!(err, Error::UnsignedArchive { format: 1 }), "{err}");
    assert_eq!(entries(&store), 0);
    let r = store.import(&v1[..], &ImportOptions::default()).unwrap();
    assert_eq!((r.imported, r.integrity), (5, ArchiveIntegrity::Unchecked));
    assert!(store.get_stale("tmdb", "movie/603").unwrap().is_some());
    assert_eq!(entries(&store), 5);
    assert_clean(&store);
}

#[test]
fn damaged_archives_import_nothing_into_format_2() {
    let clock = clock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = Store::open(a.path(), v2(&clock)).unwrap();
    fill(&src, &clock);
    let archive = export(&src, &ExportOptions::default());
    let dst = Store::open(b.path(), v2(&clock)).unwrap();

    // A flipped byte in the last blob member: every blob before it was
    // verified and taken in, and must be taken back.
    let last = members(&archive).pop().unwrap();
    assert!(last.0.starts_with("blobs/"), "{last:?}");
    let mut flipped = archive.clone();
    flipped[(last.1 + last.2 / 2) as usize] ^= 0x20;
    let err = dst
        .import(&flipped[..], &ImportOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::BadArchive { member: ref m, .. } if *m == last.0),
        "{err}"
    );
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(entries(&dst), 0);
    assert!(
        blob_files(b.path()).is_empty(),
        "{:?}",
        blob_files(b.path())
    );

    // A flipped byte in the manifest.
    let mut bad_manifest = archive.clone();
    let first = &members(&archive)[0];
    bad_manifest[(first.1 + first.2 / 2) as usize] ^= 0x01;
    assert!(
        dst.import(&bad_manifest[..], &ImportOptions::default())
            .is_err()
    );
    assert_eq!(entries(&dst), 0);
    // A truncated archive.
    let cut = &archive[..archive.len() / 2];
    assert!(dst.import(cut, &ImportOptions::default()).is_err());
    assert_eq!(entries(&dst), 0);
    assert!(blob_files(b.path()).is_empty());

    // On request the intact entries come in and the damage is counted.
    let r = dst
        .import(&flipped[..], &ImportOptions::default().skip_damaged(true))
        .unwrap();
    assert_eq!(r.blobs_rejected, 1, "{r:?}");
    assert_eq!(r.imported + r.rejected, 41);
    assert_clean(&dst);
    // And the whole archive still imports afterwards.
    dst.import(&archive[..], &ImportOptions::default()).unwrap();
    assert_eq!(kept(&dst), kept(&src));
}

#[test]
fn signed_archives_are_checked_on_format_2() {
    let clock = clock();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = Store::open(a.path(), v2(&clock)).unwrap();
    for i in 0..5u64 {
        src.put("s", format!("k{i}"), &noise(i, 1000), &PutOptions::new())
            .unwrap();
    }
    let key = |b: u8| SignKey::from_bytes([b; 32]);
    let mut signed = Vec::new();
    let report = src
        .export(&mut signed, &ExportOptions::default().sign_key(key(1)))
        .unwrap();
    assert!(report.signed);
    let unsigned = export(&src, &ExportOptions::default());
    let dst = Store::open(b.path(), v2(&clock)).unwrap();
    let with = |b: u8| ImportOptions::default().sign_key(key(b));

    let err = dst.import(&signed[..], &with(2)).unwrap_err();
    assert!(matches!(err, Error::ForgedArchive), "{err}");
    let err = dst.import(&unsigned[..], &with(1)).unwrap_err();
    assert!(matches!(err, Error::UnsignedArchive { format: 2 }), "{err}");
    assert_eq!(entries(&dst), 0);

    let r = dst.import(&signed[..], &with(1)).unwrap();
    assert_eq!(
        (r.imported, r.integrity),
        (5, ArchiveIntegrity::SignatureVerified)
    );
    let r = dst.import(&signed[..], &ImportOptions::default()).unwrap();
    assert_eq!(r.integrity, ArchiveIntegrity::SignatureNotChecked);
    assert_eq!(dst.get("s", "k3").unwrap().unwrap().data, noise(3, 1000));
}

/// The offset of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn verify_finds_and_repair_removes_exactly_the_damaged_entries() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let opts = || v2(&clock).compression_level(1);
    let store = Store::open(dir.path(), opts()).unwrap();
    // Noise does not compress: needles and blob files hold it as is.
    for i in 0..10u64 {
        store
            .put("v", format!("n{i}"), &noise(i, 2000), &PutOptions::new())
            .unwrap();
    }
    for i in 0..3u64 {
        store
            .put(
                "v",
                format!("big{i}"),
                &noise(50 + i, 400_000),
                &PutOptions::new(),
            )
            .unwrap();
    }
    let gone = noise(99, 300_000);
    store.put("v", "gone", &gone, &PutOptions::new()).unwrap();
    store.delete("v", "gone").unwrap();
    let clean = store.verify(VerifyOptions::new().full(true)).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    assert_eq!(
        (clean.entries, clean.blobs, clean.orphan_files),
        (13, 13, 1)
    );
    store.flush().unwrap();

    // One byte of n3's needle, one byte of big1's blob file.
    let packs = files_under(&dir.path().join("packs"));
    let pack = packs
        .iter()
        .find(|p| find(&std::fs::read(p).unwrap(), &noise(3, 2000)).is_some())
        .unwrap();
    let at = find(&std::fs::read(pack).unwrap(), &noise(3, 2000)).unwrap();
    flip(pack, at as u64 + 100);
    let big1 = store.meta("v", "big1").unwrap().unwrap().hash;
    let hex = big1.to_hex();
    flip(
        &dir.path().join("blobs").join(&hex[..2]).join(&hex[2..]),
        1000,
    );

    // A quick check sees sizes only; a full one finds both.
    assert!(store.verify(VerifyOptions::new()).unwrap().is_clean());
    let found = store.verify(VerifyOptions::new().full(true)).unwrap();
    let mut subjects: Vec<_> = found
        .problems
        .iter()
        .map(|p| (p.kind, p.subject.clone()))
        .collect();
    subjects.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        subjects,
        vec![
            (ProblemKind::CorruptBlob, "v/big1".to_string()),
            (ProblemKind::CorruptBlob, "v/n3".to_string()),
        ],
        "{:#?}",
        found.problems
    );
    assert_eq!(found.repaired, 0);

    let fixed = store
        .verify(VerifyOptions::new().full(true).repair(true))
        .unwrap();
    assert_eq!(fixed.problems.len(), 2);
    assert_eq!(fixed.repaired, 3, "two entries and the damaged file");
    assert_clean(&store);
    let rest = |s: &Store| {
        assert!(s.get("v", "n3").unwrap().is_none());
        assert!(s.get("v", "big1").unwrap().is_none());
        for i in (0..10u64).filter(|&i| i != 3) {
            let hit = s.get("v", format!("n{i}")).unwrap().unwrap();
            assert_eq!(hit.data, noise(i, 2000));
        }
        for i in [0u64, 2] {
            let hit = s.get("v", format!("big{i}")).unwrap().unwrap();
            assert_eq!(hit.data, noise(50 + i, 400_000));
        }
        assert_eq!(s.stats().unwrap().entries, 11);
    };
    rest(&store);
    // The removals were logged: recovery at the next open keeps them.
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    rest(&store);
    // A put heals the entries.
    store
        .put("v", "n3", &noise(3, 2000), &PutOptions::new())
        .unwrap();
    store
        .put("v", "big1", &noise(51, 400_000), &PutOptions::new())
        .unwrap();
    assert_clean(&store);
    assert_eq!(
        store.get("v", "big1").unwrap().unwrap().data,
        noise(51, 400_000)
    );
}

#[test]
fn a_missing_pack_and_a_damaged_pack_header_are_reported() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), v2(&clock)).unwrap();
    store
        .put("p", "a", b"payload a", &PutOptions::new())
        .unwrap();
    store.flush().unwrap();
    let pack = files_under(&dir.path().join("packs")).pop().unwrap();
    flip(&pack, 2);
    let r = store.verify(VerifyOptions::new()).unwrap();
    let kinds: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec![ProblemKind::DamagedPack], "{:#?}", r.problems);
    assert!(
        r.problems[0].subject.ends_with(".pack"),
        "{:#?}",
        r.problems
    );
    flip(&pack, 2);
    drop(store);
    std::fs::remove_file(&pack).unwrap();
    let store = Store::open(dir.path(), v2(&clock)).unwrap();
    let r = store.verify(VerifyOptions::new()).unwrap();
    let kinds: Vec<_> = r
        .problems
        .iter()
        .map(|p| (p.kind, p.subject.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![(ProblemKind::MissingBlob, "p/a")],
        "{:#?}",
        r.problems
    );
    let r = store
        .verify(VerifyOptions::new().full(true).repair(true))
        .unwrap();
    assert_eq!(r.repaired, 1);
    assert_clean(&store);
    assert_eq!(entries(&store), 0);
}

#[test]
fn the_cli_exports_imports_and_verifies_format_2_dirs() {
    let clock = clock();
    let work = tempfile::tempdir().unwrap();
    let (src_dir, dst_dir, one_dir) = (
        work.path().join("src"),
        work.path().join("dst"),
        work.path().join("one"),
    );
    let want = {
        let src = Store::open(&src_dir, v2(&clock)).unwrap();
        fill(&src, &clock);
        kept(&src)
    };
    drop(Store::open(&dst_dir, StoreOptions::default().format(2)).unwrap());
    let file = work.path().join("cache.tar");
    let file = file.to_str().unwrap();
    // An existing format-2 dir needs no flag.
    let o = run_code(&src_dir, &["--json", "export", file], b"", 0);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["entries"], 41);
    run_code(&dst_dir, &["import", file], b"", 0);
    run_code(&dst_dir, &["verify"], b"", 0);
    run_code(&one_dir, &["import", file], b"", 0);
    let dst = Store::open(&dst_dir, StoreOptions::default()).unwrap();
    assert_eq!(dst.format(), 2);
    assert_eq!(kept(&dst), want);
    drop(dst);
    let one = Store::open(&one_dir, StoreOptions::default()).unwrap();
    assert_eq!(one.format(), 1);
    assert_eq!(kept(&one), want);
    drop(one);
    // A damaged format-2 cache: verify says so (exit 1), --repair fixes it.
    let dst = Store::open(&dst_dir, StoreOptions::default()).unwrap();
    let hash = dst.meta("anilist", "big/0").unwrap().unwrap().hash;
    drop(dst);
    let hex = hash.to_hex();
    flip(&dst_dir.join("blobs").join(&hex[..2]).join(&hex[2..]), 10);
    let o = run_code(&dst_dir, &["verify"], b"", 1);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("anilist/big/0") && out.contains("anilist/copy/0"),
        "{out}"
    );
    run_code(&dst_dir, &["verify", "--repair"], b"", 0);
    run_code(&dst_dir, &["verify"], b"", 0);
}
