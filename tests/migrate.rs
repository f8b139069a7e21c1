//! Format 1 → 2 migration in place (`StoreOptions::format(2)` on a
//! format-1 cache): every entry carried over with its times and headers,
//! a committed format-1 fixture made by the format-1 code, a real
//! `kill -9` at every step, a cache in use left alone, damage never copied.

mod common;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use blobcache::{Category, EntryMeta, PutOptions, Selector, Store, StoreOptions};
use common::*;

fn v2() -> StoreOptions {
    StoreOptions::default().format(2)
}

/// Varied payloads: inline, medium, and blob files (one over 1 MiB).
fn body(i: u64) -> Vec<u8> {
    let size = match i % 6 {
        0 => 90,
        1 => 1_100,
        2 => 9_000,
        3 => 40_000,
        4 => 400,
        _ => 1_300_000,
    };
    json_payload(i, size)
}

fn put_opts(i: u64) -> PutOptions {
    let o = PutOptions::new()
        .ttl(Duration::from_secs(3600 * (1 + i)))
        .fetched_at(1_700_000_000_000 + i)
        .header("etag", format!("\"e{i}\""))
        .header("cache-control", "max-age=60");
    match i % 3 {
        0 => o.category(Category::List).content_type("application/json"),
        1 => o.category(Category::Other("reviews".into())).pinned(true),
        _ => o,
    }
}

/// Fills a format-1 cache with `n` entries (one backend per 4 keys) plus
/// one already expired.
fn fill_v1(dir: &Path, n: u64) -> Store {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    assert_eq!(store.format(), 1);
    for i in 0..n {
        let backend = format!("b{}", i % 4);
        store
            .put(&backend, format!("k/{i}"), &body(i), &put_opts(i))
            .unwrap();
    }
    store
        .put(
            "old",
            "gone",
            b"{\"expired\":true}",
            &PutOptions::new().ttl(Duration::ZERO),
        )
        .unwrap();
    store
}

/// What must survive a migration: everything but where the bytes live.
fn kept(m: &EntryMeta) -> impl PartialEq + std::fmt::Debug {
    (
        m.backend.clone(),
        m.signature.clone(),
        m.hash,
        m.raw_size,
        m.created_at,
        m.fetched_at,
        m.expires_at,
        m.category.clone(),
        m.content_type.clone(),
        m.headers.clone(),
        m.pinned,
    )
}

fn metas(store: &Store) -> Vec<EntryMeta> {
    store
        .list(&Selector::All)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Asserts `store` holds exactly `want` (metadata) with payloads
/// matching their hashes, byte for byte.
fn assert_same(store: &Store, want: &[EntryMeta]) {
    let got = metas(store);
    let got_kept: Vec<_> = got.iter().map(kept).collect();
    let want_kept: Vec<_> = want.iter().map(kept).collect();
    assert_eq!(got_kept, want_kept);
    for m in want {
        let r = store
            .get_reader_stale(&m.backend, &m.signature)
            .unwrap()
            .unwrap_or_else(|| panic!("{}/{:?} unreadable", m.backend, m.signature));
        let (hash, len) = hash_reader(r).unwrap();
        assert_eq!((hash.as_bytes(), len), (&m.hash.0, m.raw_size));
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    ["migrating", "retired"]
        .iter()
        .filter(|n| dir.join(n).exists())
        .map(|n| n.to_string())
        .collect()
}

fn version(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("VERSION"))
        .unwrap()
        .trim()
        .to_string()
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let (what, dir) = spec.split_once('|').unwrap();
    let dir = Path::new(dir);
    match what {
        "migrate" => {
            let store = Store::open(dir, v2()).unwrap();
            println!("migrated {}", store.format());
        }
        "hold-v1" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            println!("ready");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(store);
        }
        other => panic!("unknown worker {other}"),
    }
}

#[test]
fn a_format_1_cache_is_migrated_in_place_with_everything_kept() {
    let dir = tempfile::tempdir().unwrap();
    let before = metas(&fill_v1(dir.path(), 30));
    assert_eq!(before.len(), 31);
    let store = Store::open(dir.path(), v2()).unwrap();
    assert_eq!(store.format(), 2);
    assert_eq!(version(dir.path()), "2");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    let journal = dir.path().join("journal");
    assert!(!journal.exists() || journal.read_dir().unwrap().next().is_none());
    assert_same(&store, &before);
    // Expired stays expired; live entries are served.
    assert!(store.get("old", "gone").unwrap().is_none());
    assert!(store.get_stale("old", "gone").unwrap().is_some());
    assert_eq!(store.get("b1", "k/1").unwrap().unwrap().data, body(1));
    store
        .put("b9", "new", b"after", &PutOptions::new())
        .unwrap();
    drop(store);
    // Later opens need no flag.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.format(), 2);
    assert_eq!(store.get("b9", "new").unwrap().unwrap().data, b"after");
    assert_eq!(metas(&store).len(), 32);
    drop(store);
    // There is no way back.
    let err = Store::open(dir.path(), StoreOptions::default().format(1)).unwrap_err();
    assert!(err.to_string().contains("no migration back"), "{err}");
}

/// Copies a committed fixture cache into `to` (git keeps no empty
/// directories and no modes: the store recreates and checks them).
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cache-v1")
}

/// Writes `tests/fixtures/cache-v1` with the format-1 code (run once, by
/// hand: `BLOBCACHE_WRITE_FIXTURE=1 cargo test --test migrate -- --ignored
/// write_fixture`).
#[test]
#[ignore = "writes the committed fixture"]
fn write_fixture() {
    if std::env::var_os("BLOBCACHE_WRITE_FIXTURE").is_none() {
        return;
    }
    let _ = std::fs::remove_dir_all(fixture());
    let store = Store::open(fixture(), StoreOptions::default()).unwrap();
    for i in 0..12u64 {
        let opts = put_opts(i).ttl(Duration::from_secs(100 * 365 * 86_400));
        store
            .put("fixture", format!("item/{i}"), &fixture_body(i), &opts)
            .unwrap();
    }
    drop(store);
    // Only what a closed cache needs: no lock files, no space reserve.
    std::fs::remove_dir_all(fixture().join("locks")).unwrap();
}

/// The fixture's payloads: JSON of varied sizes (inline in the index) and
/// one incompressible 40 KB payload (a blob file).
fn fixture_body(i: u64) -> Vec<u8> {
    match i {
        11 => noise(11, 40_000),
        _ => json_payload(i, [120, 700, 3_000, 20_000, 70_000, 500][i as usize % 6]),
    }
}

#[test]
fn the_committed_format_1_fixture_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c");
    copy_tree(&fixture(), &cache);
    assert_eq!(version(&cache), "1");
    let before = {
        let v1 = Store::open(&cache, StoreOptions::default()).unwrap();
        assert_eq!(v1.format(), 1);
        metas(&v1)
    };
    assert_eq!(before.len(), 12, "the fixture holds 12 entries");
    let store = Store::open(&cache, v2()).unwrap();
    assert_eq!(store.format(), 2);
    assert_same(&store, &before);
    assert!(
        before.iter().any(|m| !m.inline),
        "the fixture has a blob file"
    );
    for i in 0..12u64 {
        let hit = store.get("fixture", format!("item/{i}")).unwrap().unwrap();
        assert_eq!(hit.data, fixture_body(i), "item/{i}");
    }
}

fn migrate_in_child(dir: &Path, kill_at: &str) -> std::process::ExitStatus {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(WORKER_ARGS)
        .env(WORKER_ENV, format!("migrate|{}", dir.display()))
        .env("BLOBCACHE_TEST_MIGRATE_KILL_AT", kill_at)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c.status().unwrap()
}

#[test]
fn a_migration_killed_at_any_step_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let steps = [
        "copying",
        "built",
        "marked",
        "committed",
        "retired-journal",
        "retired-index",
        "installed-index",
        "retired-blobs",
        "installed-blobs",
        "installed-packs",
    ];
    for step in steps {
        let dir = tempfile::tempdir().unwrap();
        let before = metas(&fill_v1(dir.path(), 14));
        let status = migrate_in_child(dir.path(), step);
        assert_eq!(
            status.signal(),
            Some(9),
            "step {step}: the child was not killed there"
        );
        // Opened without asking: whatever format the crash left, complete.
        let store = open_retry(dir.path(), StoreOptions::default());
        let committed = !matches!(step, "copying" | "built" | "marked");
        assert_eq!(store.format(), if committed { 2 } else { 1 }, "step {step}");
        assert_same(&store, &before);
        drop(store);
        // Asking for format 2 finishes (or redoes) the migration.
        let store = open_retry(dir.path(), v2());
        assert_eq!(store.format(), 2, "step {step}");
        assert!(
            leftovers(dir.path()).is_empty(),
            "step {step}: {:?}",
            leftovers(dir.path())
        );
        assert_same(&store, &before);
    }
}

#[test]
fn a_cache_in_use_is_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let before = metas(&fill_v1(dir.path(), 4));
    let mut holder = spawn_worker(&format!("hold-v1|{}", dir.path().display()));
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "ready").is_some());
    let opts = v2().owner_timeout(Duration::from_millis(300));
    let err = Store::open(dir.path(), opts).unwrap_err();
    assert!(matches!(err, blobcache::Error::Locked { .. }), "{err}");
    assert_eq!(version(dir.path()), "1");
    assert!(leftovers(dir.path()).is_empty());
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.format(), 1);
    assert_same(&store, &before);
}

#[test]
fn a_damaged_payload_is_left_behind_and_the_rest_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let before = metas(&fill_v1(dir.path(), 6));
    // Damage the 1.3 MB entry's blob file (b1/k/5).
    let victim = before.iter().find(|m| m.signature == b"k/5").unwrap();
    assert!(!victim.inline);
    let hex = victim.hash.to_hex();
    let file = dir.path().join("blobs").join(&hex[..2]).join(&hex[2..]);
    assert!(file.is_file(), "the entry has a blob file");
    flip(&file, 2_000);
    let store = Store::open(dir.path(), v2()).unwrap();
    assert_eq!(store.format(), 2);
    assert!(store.get_stale("b1", "k/5").unwrap().is_none());
    let rest: Vec<EntryMeta> = before
        .iter()
        .filter(|m| m.signature != b"k/5")
        .cloned()
        .collect();
    assert_same(&store, &rest);
}

#[test]
fn the_cli_migrates_with_format_2() {
    let dir = tempfile::tempdir().unwrap();
    let before = metas(&fill_v1(dir.path(), 5));
    let o = run_code(dir.path(), &["--format", "2", "stats"], b"", 0);
    assert!(o.status.success());
    assert_eq!(version(dir.path()), "2");
    let o = run_code(dir.path(), &["get", "b2", "k/2"], b"", 0);
    assert_eq!(o.stdout, body(2));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_same(&store, &before);
}
