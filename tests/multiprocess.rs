//! Several real processes on one cache: an owner serving guests over
//! `owner.sock`, failover when the owner exits or is killed, hung owners,
//! foreign peers, and a guest killed in the middle of a streamed put.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobcache::{Error, PutOptions, Store, StoreOptions};
use common::*;

/// Payload `i` of worker `id`: every third one is shared by all workers
/// (cross-process dedup); sizes mix inline and file blobs.
fn payload(id: u64, i: u64) -> Vec<u8> {
    let size = [300, 2_000, 40_000, 120_000][(i % 4) as usize];
    if i.is_multiple_of(3) {
        json_payload(i % 7, size)
    } else {
        json_payload(id * 100_000 + i, size)
    }
}

fn key(i: u64) -> String {
    format!("k{i}")
}

fn backend(id: u64) -> String {
    format!("w{id}")
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
        // Open (becoming the owner when first), report, hold until stdin
        // closes.
        "owner" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            println!("ready {} owner={}", std::process::id(), store.is_owner());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(store);
        }
        // Put `n` entries of its own, reading others' entries as it goes;
        // any wrong byte or error panics (a non-zero exit).
        "load" => {
            let id: u64 = parts[2].parse().unwrap();
            let n: u64 = parts[3].parse().unwrap();
            let workers: u64 = parts[4].parse().unwrap();
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            let mut rng = Rng::new(id);
            let mut seen = 0u64;
            for i in 0..n {
                store
                    .put(&backend(id), key(i), &payload(id, i), &PutOptions::new())
                    .unwrap();
                let other = rng.below(workers);
                let m = rng.below(i + 1);
                if let Some(hit) = store.get(&backend(other), key(m)).unwrap() {
                    assert_eq!(hit.data, payload(other, m), "w{other}/k{m} read by w{id}");
                    seen += 1;
                }
                if i.is_multiple_of(10) {
                    println!("progress {i}");
                }
            }
            for i in 0..n {
                let hit = store.get(&backend(id), key(i)).unwrap();
                assert_eq!(hit.map(|h| h.data), Some(payload(id, i)), "own k{i}");
            }
            println!("done {id} seen={seen} owner={}", store.is_owner());
        }
        // A streamed 200 MiB put that says "midway" after 64 MiB and then
        // slows down, waiting to be killed.
        "stream" => {
            let store = Store::open(dir, StoreOptions::default()).unwrap();
            assert!(!store.is_owner(), "the test process owns the cache");
            let src = Announcing {
                inner: GenReader::new(5, 200 << 20),
                read: 0,
            };
            store
                .put_reader("dumps", "big", src, &PutOptions::new())
                .unwrap();
            println!("finished");
        }
        // Connect to the socket as some other user and print what the
        // owner answered.
        "connect" => {
            let mut s = std::os::unix::net::UnixStream::connect(parts[1]).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&[0, 0, 0, 0]);
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            let text = String::from_utf8_lossy(&answer).into_owned();
            println!("answer refused={}", text.contains("Refused"));
        }
        other => panic!("unknown worker {other}"),
    }
}

struct Announcing {
    inner: GenReader,
    read: u64,
}

impl Read for Announcing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.read;
        self.read += n as u64;
        if before < 64 << 20 && self.read >= 64 << 20 {
            println!("midway");
            std::io::stdout().flush()?;
        }
        if self.read >= 64 << 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(n)
    }
}

fn spawn_owner(dir: &std::path::Path) -> (Child, BufReader<std::process::ChildStdout>, u32) {
    let mut owner = spawn_worker(&format!("owner|{}", dir.display()));
    let mut out = BufReader::new(owner.stdout.take().unwrap());
    let line = wait_for_line(&mut out, |l| l.starts_with("ready ")).expect("owner ready");
    assert!(line.ends_with("owner=true"), "{line}");
    let pid = line.split(' ').nth(1).unwrap().parse().unwrap();
    (owner, out, pid)
}

fn spawn_load(dir: &std::path::Path, id: u64, n: u64, workers: u64) -> Child {
    spawn_worker(&format!("load|{}|{id}|{n}|{workers}", dir.display()))
}

/// Waits for a load worker's "done" line and a clean exit.
fn finish_load(mut child: Child) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let done = wait_for_line(&mut out, |l| l.starts_with("done ")).unwrap_or_default();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "load worker failed ({status}); last line {done:?}"
    );
    done
}

/// Every entry of every worker is there with its exact bytes, and the
/// cache verifies clean (refcounts equal live entries, no orphan records).
fn check_all(dir: &std::path::Path, workers: u64, n: u64) {
    let store = open_retry(dir, StoreOptions::default());
    for id in 0..workers {
        for i in 0..n {
            let hit = store.get(&backend(id), key(i)).unwrap();
            assert_eq!(hit.map(|h| h.data), Some(payload(id, i)), "w{id}/k{i}");
        }
    }
    assert_eq!(store.stats().unwrap().entries, workers * n);
    assert_clean(&store);
}

#[test]
fn four_processes_share_one_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (workers, n) = (4, 120);
    let children: Vec<Child> = (0..workers)
        .map(|id| spawn_load(dir.path(), id, n, workers))
        .collect();
    let lines: Vec<String> = children.into_iter().map(finish_load).collect();
    // Exactly one process can have been the first owner; the others were
    // guests at least at the start (owners that finish early hand over).
    assert_eq!(lines.len(), 4);
    check_all(dir.path(), workers, n);
}

#[test]
fn guests_finish_their_work_when_the_owner_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, _out, _) = spawn_owner(dir.path());
    let (workers, n) = (3, 300);
    let mut children: Vec<Child> = (0..workers)
        .map(|id| spawn_load(dir.path(), id, n, workers))
        .collect();
    // Let every guest get going through the owner, then kill the owner.
    let mut outs: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for out in &mut outs {
        assert!(wait_for_line(out, |l| l == "progress 40").is_some());
    }
    kill9(&mut owner);
    for (mut child, mut out) in children.into_iter().zip(outs) {
        let done = wait_for_line(&mut out, |l| l.starts_with("done "));
        let status = child.wait().unwrap();
        assert!(status.success(), "a guest saw an error: {status}");
        assert!(done.is_some());
    }
    check_all(dir.path(), workers, n);
}

#[test]
fn a_guest_takes_over_when_the_owner_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, _out, owner_pid) = spawn_owner(dir.path());
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!store.is_owner());
    assert_eq!(store.owner_pid(), owner_pid);
    store
        .put("b", "before", b"one", &PutOptions::new())
        .unwrap();

    drop(owner.stdin.take());
    assert!(owner.wait().unwrap().success());

    // The next request finds the owner gone and takes over, invisibly.
    assert_eq!(store.get("b", "before").unwrap().unwrap().data, b"one");
    assert!(store.is_owner());
    assert_eq!(store.owner_pid(), std::process::id());
    store.put("b", "after", b"two", &PutOptions::new()).unwrap();
    // And now serves the next process in turn.
    let o = cli(dir.path())
        .args(["get", "b", "after"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout, b"two");
    assert_clean(&store);
}

/// The process holding the `flock` on `path`, read from `/proc/locks`
/// (waiters, marked `->`, are skipped).
fn lock_holder(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().filter(|l| !l.contains("->")).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|x| *x == "FLOCK")?;
        let pid = f.get(i + 3)?.parse().ok()?;
        let file_ino: u64 = f.get(i + 4)?.rsplit(':').next()?.parse().ok()?;
        (file_ino == ino).then_some(pid)
    })
}

#[test]
fn a_guest_serve_takes_over_at_once_when_the_owner_is_killed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, _out, owner_pid) = spawn_owner(dir.path());
    let mut serve = cli(dir.path())
        .args(["--json", "serve", "--until-killed"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let banner: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(banner["owner"], false, "{banner}");
    assert_eq!(banner["owner_pid"], owner_pid, "{banner}");
    let lock = dir.path().join("locks").join("owner.lock");
    assert_eq!(lock_holder(&lock), Some(owner_pid));

    kill9(&mut owner);
    // No request reaches the serve guest: it must notice by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lock_holder(&lock) != Some(serve.id()) {
        assert!(
            Instant::now() < deadline,
            "serve (pid {}) did not take over; the lock is held by {:?}",
            serve.id(),
            lock_holder(&lock)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // CLI calls are now its guests: they do not become owners themselves.
    let put = cli(dir.path())
        .args(["put", "b", "k", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    let got = cli(dir.path()).args(["get", "b", "k"]).output().unwrap();
    assert_eq!(got.status.code(), Some(0), "{got:?}");
    assert_eq!(lock_holder(&lock), Some(serve.id()));
    kill9(&mut serve);
}

#[test]
fn a_hung_owner_gives_a_timeout_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, _out, owner_pid) = spawn_owner(dir.path());
    let opts = StoreOptions::default().owner_timeout(Duration::from_millis(400));
    let store = Store::open(dir.path(), opts).unwrap();
    store.put("b", "s", b"kept", &PutOptions::new()).unwrap();

    signal(owner_pid, rustix::process::Signal::STOP);
    wait_until_stopped(owner_pid);
    let started = Instant::now();
    let err = store.get("b", "s").unwrap_err();
    assert!(
        matches!(err, Error::OwnerTimeout { pid, .. } if pid == owner_pid),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&owner_pid.to_string()), "{err}");

    // Killed, the hung owner frees the cache and the guest takes over.
    kill9(&mut owner);
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"kept");
    assert!(store.is_owner());
}

#[test]
fn a_cli_get_works_while_a_library_process_owns_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.is_owner());
    let body = json_payload(3, 50_000);
    store
        .put("tmdb", "movie/603", &body, &PutOptions::new())
        .unwrap();

    let o = cli(dir.path())
        .args(["get", "tmdb", "movie/603"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout, body);

    let mut put = cli(dir.path())
        .args(["put", "tmdb", "movie/604", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    put.stdin
        .take()
        .unwrap()
        .write_all(b"from the cli")
        .unwrap();
    assert!(put.wait().unwrap().success());
    assert_eq!(
        store.get("tmdb", "movie/604").unwrap().unwrap().data,
        b"from the cli"
    );
    // The guest's statistics reached the owner when it closed.
    let stats = store.stats().unwrap();
    assert!(stats.hits >= 1 && stats.puts >= 2, "{stats:?}");
    assert!(store.is_owner());
}

#[test]
fn a_guest_killed_during_a_streamed_put_leaves_no_entry_and_its_staging_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .put("keep", "me", b"before", &PutOptions::new())
        .unwrap();

    let mut guest = spawn_worker(&format!("stream|{}", dir.path().display()));
    let mut out = BufReader::new(guest.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "midway").is_some());
    kill9(&mut guest);

    assert!(store.get("dumps", "big").unwrap().is_none(), "no entry");
    assert_eq!(
        files_under(&dir.path().join("tmp")).len(),
        1,
        "orphan staging file"
    );
    assert!(files_under(&dir.path().join("blobs")).len() <= 1);
    assert_clean(&store);
    // The next process to open the cache (here a guest in this very
    // process) removes the dead writer's staging file.
    let cleaner = Store::open(
        dir.path(),
        StoreOptions::default().staging_grace(Duration::ZERO),
    )
    .unwrap();
    assert!(!cleaner.is_owner());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert_eq!(cleaner.get("keep", "me").unwrap().unwrap().data, b"before");
}

#[test]
fn a_foreign_program_on_the_socket_gives_a_clear_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreOptions::default()).unwrap());
    // Pose as an owner: hold the lock, answer nonsense on the socket.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("locks/owner.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let listener = UnixListener::bind(dir.path().join("owner.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(&[4, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc]);
        std::thread::sleep(Duration::from_millis(200));
    });
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("same blobcache version"), "{err}");
    server.join().unwrap();
}

#[test]
fn connections_from_another_user_are_refused() {
    if !rustix::process::geteuid().is_root()
        || Command::new("setpriv").arg("--help").output().is_err()
    {
        eprintln!("skipped: needs root and setpriv to run a process as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.is_owner());
    // Loosen the modes (as a careless admin might) so that only the
    // owner's peer-credential check stands in the way.
    use std::os::unix::fs::PermissionsExt;
    let sock = dir.path().join("owner.sock");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(WORKER_ARGS)
        .env(WORKER_ENV, format!("connect|{}", sock.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    if !stdout.contains("answer ") {
        eprintln!("skipped: the test binary cannot run as nobody here: {stdout}");
        return;
    }
    eprintln!("worker as nobody: {}", stdout.trim());
    assert!(stdout.contains("answer refused=true"), "{stdout}");
    // The owner still serves its own user.
    store.put("b", "s", b"fine", &PutOptions::new()).unwrap();
}

/// SIGSTOP takes effect asynchronously: wait for the process state `T`.
fn wait_until_stopped(pid: u32) {
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if state == Some("T") || !std::path::Path::new("/proc").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("process {pid} did not stop");
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn closing_an_owner_whose_directory_was_removed_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store.put("b", "s", b"x", &PutOptions::new()).unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(store);
        let _ = tx.send(());
    });
    // A hang detector, not a speed check: closing takes milliseconds.
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "closing the store hung"
    );
}
