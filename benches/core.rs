//! Quick per-operation costs of the store itself (1 KiB JSON put and get).
//! The side-by-side comparison with SQLite, cacache and raw sled lives in
//! `benches/realistic.rs`.

use std::hint::black_box;

use blobcache::testkit::json_payload;
use blobcache::{PutOptions, Store, StoreOptions};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn core(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let opts = PutOptions::new();
    const N: u64 = 10_000;
    for i in 0..N {
        store
            .put("bench", format!("k{i}"), &json_payload(i, 1024), &opts)
            .unwrap();
    }
    let mut g = c.benchmark_group("core_1k");
    let mut next = N;
    g.bench_function("put_new", |b| {
        b.iter_batched(
            || {
                next += 1;
                (format!("k{next}"), json_payload(next, 1024))
            },
            |(k, p)| store.put("bench", k, &p, &opts).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let mut i = 0u64;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(store.get("bench", format!("k{i}")).unwrap().unwrap());
        })
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| black_box(store.get("bench", "absent").unwrap()))
    });
    g.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
