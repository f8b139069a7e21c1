//! Target `archive_import`: arbitrary bytes imported as an export archive.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Scratch, fuzz_options, must};
use crate::blobs::BlobHash;
use crate::layout::OWN_NAMES;
use crate::testkit::{Rng, json_payload};
use crate::{
    ExportOptions, ImportOptions, ImportReport, ManualClock, MergePolicy, PutOptions, Selector,
    Store, VerifyOptions,
};

/// The clock of the importing cache (ms since epoch).
const NOW: u64 = 1_000_000_000_000;
/// Inline threshold of both caches: small blobs inline, larger ones files.
const INLINE: usize = 256;

/// Splits an `archive_import` input into import options and archive bytes.
///
/// Byte 0 picks the options: bits 0-1 the merge policy (0 and 3 newer,
/// 1 keep, 2 replace), bit 2 `skip_damaged`, bit 3 `ttl_shift`. The rest
/// is the archive. An empty input is an empty archive with the defaults.
pub fn archive_import_case(data: &[u8]) -> (ImportOptions, &[u8]) {
    let Some((&head, archive)) = data.split_first() else {
        return (ImportOptions::default(), data);
    };
    let merge = match head & 3 {
        1 => MergePolicy::Keep,
        2 => MergePolicy::Replace,
        _ => MergePolicy::Newer,
    };
    let opts = ImportOptions::default()
        .merge(merge)
        .skip_damaged(head & 4 != 0)
        .ttl_shift(head & 8 != 0);
    (opts, archive)
}

/// Puts the entries every importing cache starts with; seed archives hold
/// some of the same keys, so merge policies get exercised.
fn prefill(store: &Store, variant: u64) {
    let opts = PutOptions::new().ttl(Duration::from_secs(3600));
    let mut noise = vec![0u8; 700];
    Rng::new(variant).fill(&mut noise);
    let entries: [(&str, &str, Vec<u8>); 3] = [
        ("tmdb", "movie/603", json_payload(variant, 120)),
        ("tmdb", "movie/604", noise),
        ("anilist", "anime/1", json_payload(variant + 1, 1500)),
    ];
    for (backend, sig, payload) in entries {
        must(store.put(backend, sig, &payload, &opts), "prefill put");
    }
}

/// One entry as seen from outside, with its bytes.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    backend: String,
    signature: Vec<u8>,
    hash: BlobHash,
    expires_at: u64,
    created_at: u64,
    data: Vec<u8>,
}

/// Every entry of the cache, read back in full; each must be readable and
/// match its hash.
fn snapshot(store: &Store) -> Vec<Seen> {
    let metas = must(store.list(&Selector::All), "list");
    let mut seen = Vec::new();
    for meta in metas {
        let meta = must(meta, "list entry");
        let hit = must(store.get_stale(&meta.backend, &meta.signature), "get_stale");
        let Some(hit) = hit else {
            panic!(
                "{}/{} is listed but cannot be read",
                meta.backend,
                String::from_utf8_lossy(&meta.signature)
            );
        };
        assert!(
            BlobHash::of(&hit.data) == meta.hash,
            "{}/{} served bytes that do not match its hash",
            meta.backend,
            String::from_utf8_lossy(&meta.signature)
        );
        assert_eq!(hit.data.len() as u64, meta.raw_size, "size differs");
        seen.push(Seen {
            backend: meta.backend,
            signature: meta.signature,
            hash: meta.hash,
            expires_at: meta.expires_at,
            created_at: meta.created_at,
            data: hit.data,
        });
    }
    seen
}

/// The names directly inside `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = must(std::fs::read_dir(dir), "read_dir")
        .map(|e| {
            must(e, "read_dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

/// Nothing was written next to the cache directory, and the cache
/// directory holds only its own layout.
fn check_confined(parent: &Path, root: &Path) {
    assert_eq!(
        names(parent),
        ["cache"],
        "the import wrote next to the cache directory"
    );
    let stray: Vec<String> = names(root)
        .into_iter()
        .filter(|n| !OWN_NAMES.contains(&n.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "the import created {stray:?} in the cache"
    );
    for fan in names(&root.join("blobs")) {
        let dir = root.join("blobs").join(&fan);
        assert!(
            fan.len() == 2 && dir.is_dir(),
            "stray blobs/{fan} after import"
        );
        for file in names(&dir) {
            let hex = format!("{fan}{file}");
            assert!(
                BlobHash::from_hex(&hex).is_some(),
                "stray blobs/{fan}/{file} after import"
            );
        }
    }
}

/// Target `archive_import`: arbitrary bytes (after an options byte, see
/// [`archive_import_case`]) imported into a cache that already holds a
/// few entries.
///
/// The import must return a report or a typed error, never panic. After
/// an error, every entry is exactly as before. After a report, every
/// entry reads back bytes matching its hash, no entry went missing, the
/// report's counts add up and a full verify is clean. Either way nothing
/// is created outside the cache directory, nor inside it outside its
/// layout.
pub fn archive_import(data: &[u8]) {
    let (opts, archive) = archive_import_case(data);
    let scratch = Scratch::new("archive_import");
    let root = scratch.0.join("cache");
    let clock = Arc::new(ManualClock::new(NOW));
    let store = must(Store::open(&root, fuzz_options(&clock, INLINE)), "open");
    prefill(&store, 1);
    let before = snapshot(&store);
    let result = store.import(archive, &opts);
    check_confined(&scratch.0, &root);
    let after = snapshot(&store);
    match result {
        Err(_) => assert!(after == before, "a failed import changed the entries"),
        Ok(report) => check_imported(&store, &report, &before, &after),
    }
}

fn check_imported(store: &Store, report: &ImportReport, before: &[Seen], after: &[Seen]) {
    let settled = report.imported + report.skipped + report.rejected;
    assert_eq!(settled, report.entries, "report counts: {report:?}");
    for old in before {
        assert!(
            after
                .iter()
                .any(|s| s.backend == old.backend && s.signature == old.signature),
            "an import removed {}/{}",
            old.backend,
            String::from_utf8_lossy(&old.signature)
        );
    }
    let added = (after.len() - before.len()) as u64;
    assert!(added <= report.imported, "{added} new keys: {report:?}");
    let verify = must(store.verify(VerifyOptions::new().full(true)), "verify");
    assert!(verify.is_clean(), "after import: {:?}", verify.problems);
}

/// Real archives to seed `archive_import` with, each with its options
/// byte in front: exports (a few KiB) of caches holding inline and file
/// blobs, expired and live entries, keys the importing cache also holds,
/// and an empty one.
pub fn archive_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, head, variant) in [
        ("newer", 0u8, 1u64),
        ("keep", 1, 2),
        ("replace-skip-damaged", 2 | 4, 3),
        ("newer-ttl-shift", 8, 4),
    ] {
        let mut data = vec![head];
        data.extend_from_slice(&export_seed(variant, false));
        out.push((format!("export-{name}"), data));
    }
    let mut empty = vec![0u8];
    empty.extend_from_slice(&export_seed(5, true));
    out.push(("export-empty".into(), empty));
    out
}

/// An export of a small cache (`variant` varies payloads and clock).
fn export_seed(variant: u64, empty: bool) -> Vec<u8> {
    let scratch = Scratch::new("archive_seed");
    let clock = Arc::new(ManualClock::new(NOW - 5_000 + variant));
    let store = must(
        Store::open(&scratch.0, fuzz_options(&clock, INLINE)),
        "open",
    );
    if !empty {
        prefill(&store, variant);
        let short = PutOptions::new().ttl(Duration::from_millis(10));
        must(store.put("tmdb", "movie/605", b"[605]", &short), "put");
        let dup = json_payload(variant, 120);
        must(
            store.put("anilist", "anime/2", &dup, &PutOptions::new()),
            "put",
        );
    }
    let mut archive = Vec::new();
    must(
        store.export(&mut archive, &ExportOptions::default()),
        "export",
    );
    archive
}
