//! Several processes on one cache (DESIGN.md §4), measured with real
//! processes: this bench binary re-executes itself as the owner or as load
//! workers.
//!
//! 1. criterion: 1 KiB get and put in the owner versus in a guest whose
//!    owner is another process;
//! 2. throughput of a 90% get / 10% put mix with 1, 2 and 4 processes;
//! 3. takeover: time from `kill -9` of an owner holding 100k entries to the
//!    first answered request of a guest (which opens the index itself).
//!
//! Run: `cargo bench --bench share`.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use blobcache::testkit::{Rng, json_payload};
use blobcache::{PutOptions, Store, StoreOptions};
use criterion::{BatchSize, Criterion};

const ROLE: &str = "BLOBCACHE_BENCH_ROLE";
const KEYS: u64 = 10_000;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return child(&role);
    }
    // `cargo bench --bench share -- takeover` runs only the parts named
    // (latency, throughput, takeover).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    if wanted("latency") {
        let mut c = Criterion::default().configure_from_args();
        latency(&mut c);
        c.final_summary();
    }
    if wanted("throughput") {
        throughput();
    }
    if wanted("takeover") {
        takeover();
    }
}

/// Child process roles: `owner|DIR|N` fills N entries then holds the
/// cache until stdin closes; `load|DIR|OPS` runs the mix and prints its
/// elapsed time.
fn child(role: &str) {
    let parts: Vec<&str> = role.split('|').collect();
    let dir = Path::new(parts[1]);
    let n: u64 = parts[2].parse().unwrap();
    match parts[0] {
        "owner" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            fill(&store, n);
            store.flush().unwrap();
            println!("ready {}", store.is_owner());
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        "load" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            println!("open");
            std::io::stdout().flush().unwrap();
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
            let started = Instant::now();
            mix(&store, n, std::process::id() as u64);
            println!("elapsed_us {}", started.elapsed().as_micros());
        }
        other => panic!("unknown role {other}"),
    }
}

fn fill(store: &Store, n: u64) {
    let opts = PutOptions::new();
    for i in 0..n {
        store
            .put("bench", format!("k{i}"), &json_payload(i, 1024), &opts)
            .unwrap();
    }
}

/// 90% gets of existing keys, 10% puts of new ones.
fn mix(store: &Store, ops: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let opts = PutOptions::new();
    for i in 0..ops {
        if rng.below(10) == 0 {
            let body = json_payload(seed * 1_000_000 + i, 1024);
            store
                .put("mix", format!("{seed}/{i}"), &body, &opts)
                .unwrap();
        } else {
            let k = rng.below(KEYS);
            black_box(store.get("bench", format!("k{k}")).unwrap());
        }
    }
}

fn spawn(role: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    l.trim().to_string()
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("share_1k");
    // Owner-local: this process owns the cache.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        fill(&store, KEYS);
        ops(&mut g, &store, "owner");
    }
    // Guest: another process owns it.
    {
        let dir = tempfile::tempdir().unwrap();
        let (mut owner, mut out) = spawn(&format!("owner|{}|{KEYS}", dir.path().display()));
        assert_eq!(line(&mut out), "ready true");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(!store.is_owner());
        ops(&mut g, &store, "guest");
        drop(store);
        drop(owner.stdin.take());
        owner.wait().unwrap();
    }
    g.finish();
}

fn ops(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    store: &Store,
    who: &str,
) {
    let mut i = 0u64;
    g.bench_function(format!("{who}_get_hit"), |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(store.get("bench", format!("k{i}")).unwrap().unwrap());
        })
    });
    let mut next = KEYS;
    let opts = PutOptions::new();
    g.bench_function(format!("{who}_put_new"), |b| {
        b.iter_batched(
            || {
                next += 1;
                (format!("k{next}"), json_payload(next, 1024))
            },
            |(k, p)| store.put("bench", k, &p, &opts).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

fn throughput() {
    const OPS: u64 = 20_000;
    println!("\nmixed 90% get / 10% put, 1 KiB JSON, {OPS} ops per process:");
    for procs in [1usize, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        drop(fill_dir(dir.path()));
        let mut kids: Vec<_> = (0..procs)
            .map(|_| spawn(&format!("load|{}|{OPS}", dir.path().display())))
            .collect();
        for (_, out) in &mut kids {
            assert_eq!(line(out), "open");
        }
        let started = Instant::now();
        for (child, _) in &mut kids {
            writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        }
        for (child, out) in &mut kids {
            assert!(line(out).starts_with("elapsed_us"));
            child.wait().unwrap();
        }
        let wall = started.elapsed();
        let total = OPS * procs as u64;
        println!(
            "  {procs} process(es): {:>8.0} ops/s in all ({:.2} s wall)",
            total as f64 / wall.as_secs_f64(),
            wall.as_secs_f64()
        );
    }
}

fn fill_dir(dir: &Path) -> Store {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    fill(&store, KEYS);
    store
}

fn takeover() {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, mut out) = spawn(&format!("owner|{}|{N}", dir.path().display()));
    assert_eq!(line(&mut out), "ready true");
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!store.is_owner());
    store.get("bench", "k1").unwrap().unwrap();
    let pid = rustix::process::Pid::from_raw(owner.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    owner.wait().unwrap();
    let started = Instant::now();
    let hit = store.get("bench", "k99999").unwrap();
    let took = started.elapsed();
    // For comparison: opening the same cache from scratch in a new store.
    drop(store);
    let reopen = Instant::now();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let reopened = reopen.elapsed();
    assert!(hit.is_some() && store.is_owner());
    println!(
        "\ntakeover after kill -9 of an owner with {N} entries: {:.1} ms to the first answer \
         (a clean open of the same cache: {:.1} ms)",
        took.as_secs_f64() * 1000.0,
        reopened.as_secs_f64() * 1000.0
    );
}
