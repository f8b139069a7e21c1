//! Export and import throughput for a cache of mixed payloads (default
//! 1 GiB raw; set `BLOBCACHE_BENCH_BYTES` to change it), archive size versus
//! the cache's size on disk, against `tar --zstd` of the cache directory
//! (what a CI user would otherwise script), in the same run.
//!
//! Run: `cargo bench --bench archive`. Page caches are warm (the data was
//! just written), so the figures are CPU and copy costs, not disk reads.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use blobcache::testkit::{GenReader, Rng, json_payload};
use blobcache::{Category, ExportOptions, ImportOptions, PutOptions, Store, StoreOptions};

const MIB: f64 = 1024.0 * 1024.0;

fn du(dir: &Path) -> u64 {
    blobcache::testkit::disk_usage(dir).unwrap()
}

/// 70 % streamed dumps (64 MiB, half random), 15 % incompressible 1 MiB
/// images, 15 % JSON responses of 2-16 KiB. Returns the raw bytes stored.
fn fill(store: &Store, bytes: u64) -> (u64, u64) {
    let dump = PutOptions::new().category(Category::OfflineDump);
    let meta = PutOptions::new().category(Category::Metadata);
    let mut raw = 0u64;
    let mut entries = 0u64;
    let mut i = 0u64;
    while raw < bytes * 70 / 100 {
        let n = (64u64 << 20).min(bytes * 70 / 100 - raw).max(1);
        let src = GenReader::new(i, n);
        store
            .put_reader("anidb", format!("dump/{i}"), src, &dump)
            .unwrap();
        raw += n;
        entries += 1;
        i += 1;
    }
    let mut rng = Rng::new(9);
    while raw < bytes * 85 / 100 {
        let mut img = vec![0u8; 1 << 20];
        rng.fill(&mut img);
        store
            .put("covers", format!("img/{i}"), &img, &meta)
            .unwrap();
        raw += img.len() as u64;
        entries += 1;
        i += 1;
    }
    while raw < bytes {
        let size = 2048 + rng.below(14 * 1024) as usize;
        let body = json_payload(i, size);
        store
            .put("tmdb", format!("movie/{i}"), &body, &meta)
            .unwrap();
        raw += body.len() as u64;
        entries += 1;
        i += 1;
    }
    (raw, entries)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let bytes: u64 = std::env::var("BLOBCACHE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let store = Store::open(&cache, StoreOptions::default()).unwrap();
    let (raw, entries) = fill(&store, bytes);
    store.flush().unwrap();
    let on_disk = du(&cache);
    println!(
        "cache: {entries} entries, {:.1} MiB raw, {:.1} MiB on disk",
        raw as f64 / MIB,
        on_disk as f64 / MIB
    );

    let archive = work.path().join("cache.tar");
    let (report, secs) = timed(|| {
        let f = std::fs::File::create(&archive).unwrap();
        store.export(f, &ExportOptions::default()).unwrap()
    });
    let size = report.archive_bytes;
    println!(
        "blobcache export: {:.2} s, {:.0} MB/s of archive, {:.0} MB/s of raw payload; \
         archive {:.1} MiB = {:.3} x on-disk cache, {} blobs",
        secs,
        size as f64 / 1e6 / secs,
        raw as f64 / 1e6 / secs,
        size as f64 / MIB,
        size as f64 / on_disk as f64,
        report.blobs
    );
    drop(store);

    let target = work.path().join("restored");
    let dst = Store::open(&target, StoreOptions::default()).unwrap();
    let (report, secs) = timed(|| {
        let f = std::io::BufReader::new(std::fs::File::open(&archive).unwrap());
        dst.import(f, &ImportOptions::default()).unwrap()
    });
    assert_eq!(report.imported, entries);
    println!(
        "blobcache import: {:.2} s, {:.0} MB/s of archive, {:.0} MB/s of raw payload \
         (every blob decoded and blake3-checked)",
        secs,
        size as f64 / 1e6 / secs,
        raw as f64 / 1e6 / secs
    );
    drop(dst);

    let tarball = work.path().join("cache.tar.zst");
    let (status, secs) = timed(|| {
        Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&cache)
            .arg(".")
            .status()
    });
    match status {
        Ok(s) if s.success() => {
            let tsize = std::fs::metadata(&tarball).unwrap().len();
            println!(
                "tar --zstd -cf:   {:.2} s, {:.0} MB/s of raw payload; {:.1} MiB = {:.3} x on-disk cache \
                 ({:.2} x the blobcache archive)",
                secs,
                raw as f64 / 1e6 / secs,
                tsize as f64 / MIB,
                tsize as f64 / on_disk as f64,
                tsize as f64 / size as f64
            );
            let out = work.path().join("untarred");
            std::fs::create_dir(&out).unwrap();
            let (status, secs) = timed(|| {
                Command::new("tar")
                    .arg("--zstd")
                    .arg("-xf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&out)
                    .status()
            });
            if status.is_ok_and(|s| s.success()) {
                println!(
                    "tar --zstd -xf:   {:.2} s, {:.0} MB/s of raw payload (no verification, \
                     no merge: replaces the directory)",
                    secs,
                    raw as f64 / 1e6 / secs
                );
            }
        }
        other => println!("tar --zstd not available ({other:?}); skipped"),
    }
}
