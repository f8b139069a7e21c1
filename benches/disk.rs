//! Disk bytes used for 10,000 realistic JSON responses (1-16 KiB) versus
//! their raw size. Prints one line per configuration.

use blobcache::testkit::{Rng, json_payload};
use blobcache::{PutOptions, Store, StoreOptions};

fn du(dir: &std::path::Path) -> u64 {
    blobcache::testkit::disk_usage(dir).unwrap()
}

fn main() {
    let n = 10_000u64;
    for (label, opts) in [
        ("inline <=16KiB (default)", StoreOptions::default()),
        ("file per blob", StoreOptions::default().inline_threshold(0)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts).unwrap();
        let mut rng = Rng::new(42);
        let mut raw = 0u64;
        for i in 0..n {
            let size = 1024 + rng.below(15 * 1024) as usize;
            let body = json_payload(i, size);
            raw += body.len() as u64;
            store
                .put("tmdb", format!("movie/{i}"), &body, &PutOptions::new())
                .unwrap();
        }
        drop(store);
        let disk = du(dir.path());
        println!(
            "{label:>26}: {n} responses, raw {:.1} MiB, on disk {:.1} MiB, {:.3} disk bytes per raw byte",
            raw as f64 / 1048576.0,
            disk as f64 / 1048576.0,
            disk as f64 / raw as f64
        );
    }
}
