//! The fuzz targets on the stable toolchain: every checked-in corpus file
//! of `fuzz/corpus/<target>/` is replayed through the same library
//! function the cargo-fuzz target calls (`blobcache::fuzzing`), then each
//! target gets a few thousand proptest-generated inputs. Bugs the fuzzer
//! found have named regression tests at the end.
//!
//! `BLOBCACHE_WRITE_SEEDS=1 cargo test --test fuzz_corpus write_seeds --
//! --ignored` regenerates the hand-made seeds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use blobcache::fuzzing::{self, TARGETS};
use blobcache::testkit::{Rng, json_payload};
use blobcache::{PutOptions, Store, StoreOptions};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of a target's corpus, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// Runs every corpus file of `target`; fails naming each file that panics.
fn replay(target: &str) {
    let files = corpus(target);
    assert!(files.len() >= 5, "corpus of {target} has too few seeds");
    let failed: Vec<String> = files
        .iter()
        .filter(|(_, data)| {
            catch_unwind(AssertUnwindSafe(|| fuzzing::run_target(target, data))).is_err()
        })
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} failed on {failed:#?}");
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    for t in TARGETS {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{t}.rs"));
        let text = std::fs::read_to_string(&src).unwrap();
        assert!(
            text.contains(&format!("fuzzing::{t}(")),
            "{} must call blobcache::fuzzing::{t}",
            src.display()
        );
        assert!(!corpus(t).is_empty());
    }
    assert!(!fuzzing::run_target("no_such_target", b""));
}

#[test]
fn corpus_record_decode() {
    replay("record_decode");
}

#[test]
fn corpus_blob_read() {
    replay("blob_read");
}

#[test]
fn corpus_store_ops() {
    replay("store_ops");
}

#[test]
fn corpus_archive_import() {
    replay("archive_import");
}

#[test]
fn corpus_wire_decode() {
    replay("wire_decode");
}

#[test]
fn corpus_pack_scan() {
    replay("pack_scan");
}

/// The wire corpus sent to a live owner, which must keep serving.
#[test]
fn corpus_wire_owner() {
    for (path, data) in corpus("wire_decode") {
        let res = catch_unwind(AssertUnwindSafe(|| fuzzing::wire_owner(&data)));
        assert!(res.is_ok(), "wire_owner failed on {}", path.display());
    }
}

// ---------------------------------------------------------------------
// Generated inputs
// ---------------------------------------------------------------------

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Damages `data`: flips bytes at the positions given, then truncates
/// to `keep` (a fraction in thousandths) when asked.
fn damage(mut data: Vec<u8>, flips: &[(usize, u8)], keep: Option<u16>) -> Vec<u8> {
    if !data.is_empty() {
        for &(at, x) in flips {
            let i = at % data.len();
            data[i] ^= x.max(1);
        }
    }
    if let Some(k) = keep {
        data.truncate(data.len() * usize::from(k.min(1000)) / 1000);
    }
    data
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u64>(), 0usize..3000).prop_map(|(s, n)| json_payload(s, n)),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)
}

proptest! {
    #![proptest_config(cases(4000))]

    /// Valid records with their blob, intact or damaged, and plain noise.
    #[test]
    fn generated_record_decode(
        payload in payload_strategy(),
        exp in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        flips in flips(),
        keep in proptest::option::of(0u16..=1000),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        use_noise in any::<bool>(),
    ) {
        let data = if use_noise {
            noise
        } else {
            damage(fuzzing::record_seed(&payload, exp), &flips, keep)
        };
        fuzzing::record_decode(&data);
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// A blob file that is the right one, a damaged copy of it, or noise.
    #[test]
    fn generated_blob_read(
        kind in 0u8..3,
        size in 0u16..4096,
        seed in any::<u8>(),
        flips in flips(),
        keep in proptest::option::of(0u16..=1000),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        use_noise in any::<bool>(),
    ) {
        let mut data = vec![kind];
        data.extend_from_slice(&size.to_le_bytes());
        data.push(seed);
        let (payload, _) = fuzzing::blob_read_case(&data);
        let file = if use_noise {
            noise
        } else {
            damage(fuzzing::stored_form(&payload), &flips, keep)
        };
        data.extend_from_slice(&file);
        fuzzing::blob_read(&data);
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Random operation sequences.
    #[test]
    fn generated_store_ops(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::store_ops(&data);
    }
}

/// The seed archives, made once per test process.
fn archives() -> &'static [(String, Vec<u8>)] {
    static SEEDS: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(fuzzing::archive_seeds)
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Real exports, intact or damaged, under every option byte, and noise.
    #[test]
    fn generated_archive_import(
        which in any::<usize>(),
        head in any::<u8>(),
        flips in flips(),
        keep in proptest::option::of(0u16..=1000),
        noise in proptest::collection::vec(any::<u8>(), 0..600),
        use_noise in any::<bool>(),
    ) {
        let seeds = archives();
        let (_, seed) = &seeds[which % seeds.len()];
        let mut data = vec![head];
        if use_noise {
            data.extend_from_slice(&noise);
        } else {
            data.extend_from_slice(&damage(seed[1..].to_vec(), &flips, keep));
        }
        fuzzing::archive_import(&data);
    }
}

/// Valid frame streams (hello, then requests), intact or damaged, and
/// noise.
fn wire_input() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 0..6),
        flips(),
        proptest::option::of(0u16..=1000),
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(kinds, flips, keep, noise, use_noise)| {
            if use_noise {
                noise
            } else {
                damage(fuzzing::wire_seed(&kinds), &flips, keep)
            }
        })
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn generated_wire_decode(data in wire_input()) {
        fuzzing::wire_decode(&data);
    }
}

proptest! {
    #![proptest_config(cases(150))]

    /// The same inputs sent to a live owner.
    #[test]
    fn generated_wire_owner(data in wire_input()) {
        fuzzing::wire_owner(&data);
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Packs built from the input and damaged, real packs given as file
    /// bytes (intact or damaged), and noise.
    #[test]
    fn generated_pack_scan(
        mode in any::<u8>(),
        spec in proptest::collection::vec(any::<u8>(), 0..34),
        ops in proptest::collection::vec(any::<u8>(), 0..24),
        flips in flips(),
        keep in proptest::option::of(0u16..=1000),
        raw in any::<bool>(),
    ) {
        let mut data = vec![mode | 1];
        data.extend_from_slice(&spec);
        data.extend_from_slice(&ops);
        if raw {
            let (pack, _, _) = fuzzing::build_pack(&spec);
            data = vec![mode & !1];
            data.extend_from_slice(&damage(pack, &flips, keep));
        }
        fuzzing::pack_scan(&data);
    }
}

// ---------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn blob_header(kind: u8, size: u16, seed: u8) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&size.to_le_bytes());
    h.push(seed);
    h
}

/// Writes the hand-made seeds into `fuzz/corpus/` (run on demand).
#[test]
#[ignore = "writes into the source tree; run with BLOBCACHE_WRITE_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("BLOBCACHE_WRITE_SEEDS").is_none() {
        return;
    }
    // record_decode
    let json = json_payload(7, 600);
    write_seed(
        "record_decode",
        "record-zstd",
        &fuzzing::record_seed(&json, 5_000),
    );
    let mut noise = vec![0u8; 200];
    Rng::new(3).fill(&mut noise);
    write_seed(
        "record_decode",
        "record-raw",
        &fuzzing::record_seed(&noise, u64::MAX),
    );
    write_seed(
        "record_decode",
        "record-empty-payload",
        &fuzzing::record_seed(b"", 0),
    );
    let seed = fuzzing::record_seed(&json, 5_000);
    write_seed("record_decode", "record-truncated", &seed[..seed.len() / 2]);
    write_seed("record_decode", "empty", b"");
    write_seed("record_decode", "nested-arrays", &[0x81; 300]);
    write_seed(
        "record_decode",
        "huge-map-length",
        b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff",
    );

    // blob_read
    for (name, kind, size, seed) in [
        ("json", 0u8, 3000u16, 1u8),
        ("noise", 1, 2000, 2),
        ("short", 2, 40, b'a'),
        ("empty-payload", 2, 0, 0),
    ] {
        let head = blob_header(kind, size, seed);
        let (payload, _) = fuzzing::blob_read_case(&head);
        let stored = fuzzing::stored_form(&payload);
        let mut good = head.clone();
        good.extend_from_slice(&stored);
        write_seed("blob_read", &format!("{name}-intact"), &good);
        let mut cut = head.clone();
        cut.extend_from_slice(&stored[..stored.len() / 2]);
        write_seed("blob_read", &format!("{name}-truncated"), &cut);
        let mut longer = good.clone();
        longer.push(0);
        write_seed("blob_read", &format!("{name}-trailing-byte"), &longer);
    }
    // A zstd skippable frame before the real one: same bytes after decoding.
    let head = blob_header(0, 3000, 1);
    let (payload, _) = fuzzing::blob_read_case(&head);
    let mut skip = head.clone();
    skip.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
    skip.extend_from_slice(&fuzzing::stored_form(&payload));
    write_seed("blob_read", "json-skippable-frame", &skip);
    // A valid frame of other content under this payload's hash.
    let mut other = head.clone();
    other.extend_from_slice(&fuzzing::stored_form(&json_payload(2, 3000)));
    write_seed("blob_read", "json-other-content", &other);

    // archive_import: real exports, then damaged copies of the first.
    let seeds = fuzzing::archive_seeds();
    for (name, data) in &seeds {
        write_seed("archive_import", name, data);
    }
    let export = &seeds[0].1;
    write_seed(
        "archive_import",
        "export-truncated",
        &export[..export.len() / 2],
    );
    write_seed("archive_import", "export-cut-in-manifest", &export[..700]);
    let flipped = damage(export.clone(), &[(export.len() / 3, 0x40)], None);
    write_seed("archive_import", "export-flipped-blob", &flipped);
    write_seed("archive_import", "not-tar", b"\x00{\"id\":603}");

    // wire_decode: frame streams the owner reads.
    for (name, kinds) in [
        ("hello-only", &[][..]),
        ("state-lookup-scan", &[0, 1, 2]),
        ("counters-disk-blobinfo", &[3, 4, 5]),
        ("inline-expired-keys", &[6, 7, 8]),
        ("report-touch-verify", &[9, 10, 11]),
    ] {
        write_seed("wire_decode", name, &fuzzing::wire_seed(kinds));
    }
    let stream = fuzzing::wire_seed(&[0, 1, 2]);
    write_seed(
        "wire_decode",
        "stream-truncated",
        &stream[..stream.len() - 3],
    );
    write_seed("wire_decode", "huge-length", b"\xff\xff\xff\x7f\xa0");
    write_seed("wire_decode", "over-max-frame", b"\x01\x00\x00\x04\xa0");

    // pack_scan: built packs (mode odd) with damage, real pack bytes (mode even).
    let spec: Vec<u8> = vec![6, 1, 40, 2, 10, 3, 90, 4, 0, 5, 200, 7, 30];
    let seed_with = |name: &str, mode: u8, tail: &[u8]| {
        let mut d = vec![mode];
        d.extend_from_slice(&spec);
        d.extend_from_slice(tail);
        write_seed("pack_scan", name, &d);
    };
    seed_with("built-intact", 1, &[]);
    seed_with("built-two-flips", 1, &[10, 0, 1, 200, 1, 0x80]);
    seed_with("built-truncated", 3, &[0, 0, 0, 140]);
    seed_with("built-header-flip", 1, &[1, 0, 0xff]);
    let (pack, _, _) = fuzzing::build_pack(&spec);
    for (name, bytes) in [
        ("file-intact", pack.clone()),
        ("file-torn-tail", pack[..pack.len() - 25].to_vec()),
        ("file-header-only", pack[..16].to_vec()),
        ("file-short", pack[..9].to_vec()),
        ("file-no-header", pack[16..].to_vec()),
    ] {
        let mut d = vec![0u8];
        d.extend_from_slice(&bytes);
        write_seed("pack_scan", name, &d);
    }
    write_seed("pack_scan", "empty", b"");

    // store_ops: random byte strings of a few lengths.
    for (i, len) in [16usize, 64, 200, 400, 800].into_iter().enumerate() {
        let mut b = vec![0u8; len];
        Rng::new(100 + i as u64).fill(&mut b);
        write_seed("store_ops", &format!("random-{len}"), &b);
    }
}

// ---------------------------------------------------------------------
// Regressions found by fuzzing
// ---------------------------------------------------------------------

/// store_ops found it: closing a store and opening the same directory
/// again at once failed with "could not acquire lock" on the sled
/// database, because sled's background threads release its file lock a
/// moment after the database handle is dropped.
#[test]
fn regression_reopen_right_after_close() {
    // The race shows on a fast filesystem; on disk it hides.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    for i in 0..300u32 {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        if i % 3 == 0 {
            store
                .put("b", i.to_string(), &i.to_le_bytes(), &PutOptions::new())
                .unwrap();
        }
        if i % 3 == 1 {
            let prev = store.get("b", (i - 1).to_string()).unwrap().unwrap();
            assert_eq!(prev.data, (i - 1).to_le_bytes());
        }
    }
}

/// store_ops found it: an entry whose expiry saturated to `u64::MAX` is
/// expired for `get` once the clock reads `u64::MAX`, but `stats` did not
/// count it as expired and `purge_expired` did not remove it (the scan
/// bound `now + 1` saturated and excluded it).
#[test]
fn regression_expiry_saturated_at_clock_max() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(blobcache::ManualClock::new(u64::MAX - 1_000));
    let opts = StoreOptions::default().clock(clock.clone());
    let store = Store::open(dir.path(), opts).unwrap();
    let ttl = PutOptions::new().ttl(std::time::Duration::from_secs(3600));
    let report = store.put("b", "s", b"payload", &ttl).unwrap();
    assert_eq!(report.expires_at, u64::MAX);
    assert!(store.get("b", "s").unwrap().is_some());
    clock.set(u64::MAX);
    assert!(store.get("b", "s").unwrap().is_none());
    assert!(store.get_stale("b", "s").unwrap().unwrap().stale);
    assert_eq!(store.stats().unwrap().expired, 1);
    assert_eq!(store.purge_expired().unwrap(), 1);
    assert!(store.get_stale("b", "s").unwrap().is_none());
}

/// The intact seed archives import (so the target's success path runs),
/// and a truncated one is refused.
#[test]
fn archive_seeds_import_into_a_prefilled_cache() {
    for (name, data) in archives() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .put("tmdb", "movie/603", b"held", &PutOptions::new())
            .unwrap();
        let (opts, archive) = fuzzing::archive_import_case(data);
        let report = store.import(archive, &opts).unwrap();
        let want = if name == "export-empty" { 0 } else { 5 };
        assert_eq!(report.entries, want, "{name}");
        assert_eq!(report.imported + report.skipped, want, "{name}: {report:?}");
        let cut = &archive[..archive.len() / 2];
        if want > 0 {
            assert!(store.import(cut, &opts).is_err(), "{name} truncated");
        }
    }
}
