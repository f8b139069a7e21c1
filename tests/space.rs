//! A full disk and a read-only mount, on real small filesystems (tmpfs
//! mounts with `size=`; they need root, as in CI): reads keep working, the
//! cache can free its own space, and changes fail with a clear message.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use blobcache::testkit::Rng;
use blobcache::{Error, GcOptions, Store, StoreOptions};
use common::cli;

/// A tmpfs mounted on a temp dir for the test's lifetime.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "24m"), or `None` (with a loud
    /// message) when the test does not run as root.
    fn tmpfs(size: &str) -> Option<Mount> {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "SKIPPED: this test mounts a tmpfs and needs root (CI runs as root); \
                 nothing was checked"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let opts = format!("size={size},mode=0700");
        mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"], dir.path());
        Some(Mount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, how: &str) {
        mount(&["-o", &format!("remount,{how}")], self.path());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .status();
    }
}

fn mount(args: &[&str], at: &Path) {
    let out = std::process::Command::new("mount")
        .args(args)
        .arg(at)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        at.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cli(dir).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asserts `args` fails with exit code 2 and a message containing `needle`.
fn refused(dir: &Path, args: &[&str], needle: &str) {
    let out = run(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
}

/// Incompressible bytes, different for each seed.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Writes a file of `bytes` into `dir` as payload `name`, outside the cache.
fn payload_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    let st = rustix::fs::statvfs(path).unwrap();
    assert!(
        st.f_bavail * st.f_frsize < 4096,
        "the filesystem is not full"
    );
}

fn entries(dir: &Path) -> u64 {
    let stats: serde_json::Value = serde_json::from_slice(&ok(dir, &["--json", "stats"])).unwrap();
    stats["entries"].as_u64().unwrap()
}

#[test]
fn full_disk_serves_reads_and_frees_its_own_space() {
    let Some(mnt) = Mount::tmpfs("24m") else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let cache = mnt.path().join("cache");
    // Acknowledged puts until the disk refuses one.
    let mut acked = Vec::new();
    for i in 0..64u64 {
        let bytes = payload(i, 700_000);
        let file = payload_file(outside.path(), "p", &bytes);
        let key = format!("k{i:02}");
        let out = run(&cache, &["put", "b", &key, file.to_str().unwrap()]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("full"), "put failed for another reason: {err}");
            break;
        }
        acked.push((key, bytes));
    }
    assert!(acked.len() > 10 && acked.len() < 64, "{} puts", acked.len());
    // Small entries live in the index (inline blobs).
    let small = payload_file(outside.path(), "small", b"{\"small\":true}");
    ok(&cache, &["put", "s", "small", small.to_str().unwrap()]);
    fill(&mnt.path().join("filler"));

    // Reads of everything acknowledged, byte for byte.
    for (key, bytes) in &acked {
        assert_eq!(&ok(&cache, &["get", "b", key]), bytes, "get b {key}");
    }
    assert_eq!(ok(&cache, &["get", "s", "small"]), b"{\"small\":true}");
    let listed = String::from_utf8(ok(&cache, &["ls"])).unwrap();
    assert_eq!(listed.lines().count(), acked.len() + 1, "{listed}");
    assert_eq!(entries(&cache), acked.len() as u64 + 1);
    ok(&cache, &["verify"]);

    // Puts fail with a clear message, and lose nothing.
    let one = payload_file(outside.path(), "one", &payload(99, 10_000));
    refused(
        &cache,
        &["put", "b", "new", one.to_str().unwrap()],
        "full disk",
    );
    refused(
        &cache,
        &["put", "s", "tiny", small.to_str().unwrap()],
        "full disk",
    );

    // The cache frees its own space: rm, clear, gc all work.
    ok(&cache, &["rm", "b", &acked[0].0]);
    ok(&cache, &["clear", "b", "--yes"]);
    ok(&cache, &["gc"]);
    assert_eq!(entries(&cache), 1);
    {
        let store = Store::open(&cache, StoreOptions::default()).unwrap();
        let report = store
            .gc(&GcOptions::new().safety_window(std::time::Duration::ZERO))
            .unwrap();
        assert!(report.bytes_freed >= 10 * 700_000, "{report:?}");
    }
    // With space back, puts work again and nothing was damaged.
    ok(&cache, &["put", "b", "new", one.to_str().unwrap()]);
    assert_eq!(ok(&cache, &["get", "s", "small"]), b"{\"small\":true}");
    ok(&cache, &["verify"]);
    assert_eq!(entries(&cache), 2);
}

#[test]
fn read_only_mount_serves_reads_and_refuses_changes() {
    let Some(mnt) = Mount::tmpfs("32m") else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let cache = mnt.path().join("cache");
    let big = payload(1, 300_000);
    let big_file = payload_file(outside.path(), "big", &big);
    ok(&cache, &["put", "dumps", "d1", big_file.to_str().unwrap()]);
    let small = payload_file(outside.path(), "small", b"{\"id\":603}");
    ok(
        &cache,
        &["put", "tmdb", "movie/603", small.to_str().unwrap()],
    );
    mnt.remount("ro");

    // The private index copies go to TMPDIR: each is removed on close.
    let tmp = tempfile::tempdir().unwrap();
    let env = |args: &[&str]| {
        let out = cli(&cache)
            .env("TMPDIR", tmp.path())
            .args(args)
            .output()
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?} behind");
        out
    };
    let get = env(&["get", "dumps", "d1"]);
    assert!(get.status.success(), "{:?}", get);
    assert_eq!(get.stdout, big);
    assert_eq!(env(&["get", "tmdb", "movie/603"]).stdout, b"{\"id\":603}");
    let ls = env(&["ls"]);
    assert!(ls.status.success());
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 2);
    let stats: serde_json::Value =
        serde_json::from_slice(&env(&["--json", "stats"]).stdout).unwrap();
    assert_eq!(stats["entries"], 2);
    let verify = env(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");

    for args in [
        &["put", "tmdb", "movie/604", small.to_str().unwrap()][..],
        &["rm", "tmdb", "movie/603"],
        &["clear", "--all", "--yes"],
        &["touch", "tmdb", "movie/603", "--ttl", "1h"],
        &["gc"],
    ] {
        let out = env(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("read-only"), "{args:?}: {err}");
    }

    // The library says so, and refuses changes with a typed error.
    let store = Store::open(&cache, StoreOptions::default()).unwrap();
    assert!(store.read_only().is_some());
    let refused = store.put("tmdb", "x", b"{}", &Default::default());
    assert!(
        matches!(refused, Err(Error::ReadOnly { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        store.delete("tmdb", "movie/603"),
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(
        store.get("tmdb", "movie/603").unwrap().unwrap().data,
        b"{\"id\":603}"
    );
    drop(store);
    mnt.remount("rw");
    ok(&cache, &["verify"]);
}
