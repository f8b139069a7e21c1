//! Real processes and real crashes: a second process on an exclusively held cache,
//! `kill -9` of writers in the middle of their work.

mod common;

use std::io::{BufReader, Read, Write};
use std::process::Stdio;
use std::time::Duration;

use blobcache::{Error, PutOptions, Sharing, Store, StoreOptions};
use common::*;

/// Payload number `i` of the worker's put sequence: mixes inline and file
/// blobs, and some duplicates.
fn payload(i: u64) -> Vec<u8> {
    let size = match i % 4 {
        0 => 300,
        1 => 2_000,
        2 => 40_000,
        _ => 120_000,
    };
    json_payload(i % 50, size)
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = std::path::Path::new(parts[1]);
    match parts[0] {
        // Open the store for exclusive use, say so, and hold it until
        // stdin closes.
        "hold" => {
            let opts = StoreOptions::default().sharing(Sharing::Exclusive);
            let store = Store::open(dir, opts).unwrap();
            println!("ready");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(store);
        }
        // Put forever, acknowledging each put on stdout. The index is never
        // flushed on a timer, so after a kill only the journal has them.
        "puts" => {
            let opts = StoreOptions::default().flush_interval(Duration::from_secs(3600));
            let store = Store::open(dir, opts).unwrap();
            for i in 0u64.. {
                store
                    .put("w", format!("k{i}"), &payload(i), &PutOptions::new())
                    .unwrap();
                println!("ack {i}");
            }
        }
        other => panic!("unknown worker {other}"),
    }
}

#[test]
fn an_exclusive_holder_locks_others_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = spawn_worker(&format!("hold|{}", dir.path().display()));
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "ready").is_some());

    let opts = StoreOptions::default().owner_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = Store::open(dir.path(), opts.clone()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    // Asking for exclusive use while it is held fails the same way.
    let err = Store::open(dir.path(), opts.sharing(Sharing::Exclusive)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    // The CLI says the same and exits 2, with no panic or backtrace.
    let o = cli(dir.path())
        .env("BLOBCACHE_OWNER_TIMEOUT", "300ms")
        .args(["get", "b", "s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    drop(holder.stdin.take());
    holder.wait().unwrap();
    let store = open_retry(dir.path(), StoreOptions::default());
    store.put("b", "s", b"after", &PutOptions::new()).unwrap();
}

#[test]
fn acknowledged_puts_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = spawn_worker(&format!("puts|{}", dir.path().display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let target = 150 + round * 70;
        let mut last = None;
        wait_for_line(&mut out, |l| {
            last = l
                .strip_prefix("ack ")
                .and_then(|n| n.parse::<u64>().ok())
                .or(last);
            last.is_some_and(|n| n >= target)
        })
        .expect("worker acknowledged puts");
        kill9(&mut child);
        // Acks printed after the one we stopped reading at are also acked.
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        let acked = rest
            .lines()
            .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()))
            .max()
            .unwrap_or(target)
            .max(target);

        let store = open_retry(dir.path(), StoreOptions::default());
        for i in 0..=acked {
            let hit = store.get("w", format!("k{i}")).unwrap();
            let hit = hit.unwrap_or_else(|| {
                panic!("round {round}: acknowledged put k{i} lost (acked up to {acked})")
            });
            assert_eq!(hit.data, payload(i), "k{i}");
        }
        assert_clean(&store);
    }
}

#[test]
fn kill9_in_the_middle_of_a_200_mib_cli_put() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .put("keep", "me", b"acknowledged before", &PutOptions::new())
            .unwrap();
    }
    let mut child = cli(dir.path())
        .args(["put", "dumps", "big", "-", "--category", "offline_dump"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut src = GenReader::new(8, 200 << 20);
    let mut buf = vec![0u8; 1 << 20];
    // Feed 120 of the 200 MiB, then kill the writer mid-stream.
    for _ in 0..120 {
        src.read_exact(&mut buf).unwrap();
        stdin.write_all(&buf).unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    kill9(&mut child);
    drop(stdin);

    let staged = files_under(&dir.path().join("tmp"));
    assert_eq!(staged.len(), 1, "the killed writer left its staging file");
    let store = open_retry(
        dir.path(),
        StoreOptions::default().staging_grace(Duration::ZERO),
    );
    assert!(
        files_under(&dir.path().join("tmp")).is_empty(),
        "reopen cleaned the dead writer's staging file"
    );
    assert!(
        store.get("dumps", "big").unwrap().is_none(),
        "no half-written entry"
    );
    assert_eq!(
        store.get("keep", "me").unwrap().unwrap().data,
        b"acknowledged before"
    );
    assert!(
        files_under(&dir.path().join("blobs")).is_empty(),
        "no partial blob in place"
    );
    assert_clean(&store);
}

#[test]
fn staging_files_of_live_writers_are_not_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let mut child = cli(dir.path())
        .args(["put", "dumps", "big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut src = GenReader::new(9, 64 << 20);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..20 {
        src.read_exact(&mut buf).unwrap();
        stdin.write_all(&buf).unwrap();
    }
    // Wait for the staging file to appear.
    let tmp = dir.path().join("tmp");
    for _ in 0..500 {
        if !files_under(&tmp).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let staged = files_under(&tmp);
    assert_eq!(staged.len(), 1);
    // Another cleaner (here: the library's own, through a failed open
    // attempt of the directory's lock holder) must leave it alone; the
    // writer holds the lock on it. Simulate the cleaner with try_lock.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&staged[0])
        .unwrap();
    assert!(
        f.try_lock().is_err(),
        "a live writer's staging file is locked"
    );
    for _ in 20..64 {
        src.read_exact(&mut buf).unwrap();
        stdin.write_all(&buf).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let store = open_retry(dir.path(), StoreOptions::default());
    let (got, n) = hash_reader(store.get_reader("dumps", "big").unwrap().unwrap()).unwrap();
    let (want, _) = hash_reader(GenReader::new(9, 64 << 20)).unwrap();
    assert_eq!((got, n), (want, 64 << 20));
}
