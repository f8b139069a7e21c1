//! Churn and chaos with real processes: short CLI calls put, get and
//! remove entries while a `serve` owner and the CLI calls themselves are
//! killed with `kill -9` at random. No call that was not killed may fail,
//! every acknowledged entry reads back byte for byte, and `verify` is
//! clean at the end. Bounded in time (`BLOBCACHE_CHURN_SECS`, default 15).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// CLI workers running at once.
const WORKERS: u64 = 4;
/// A call that takes longer than this is a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

fn run_secs() -> u64 {
    std::env::var("BLOBCACHE_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// Payload `n` of worker `w`: inline and file sizes, some shared by every
/// worker (cross-process dedup).
fn payload(w: u64, n: u64) -> Vec<u8> {
    let size = [200, 3_000, 30_000, 70_000][(n % 4) as usize];
    if n.is_multiple_of(5) {
        json_payload(n % 3, size)
    } else {
        json_payload(w * 1_000_000 + n, size)
    }
}

/// Children that the killer may pick, by a serial number.
#[derive(Default)]
struct Victims {
    next: AtomicU64,
    children: Mutex<HashMap<u64, Arc<Mutex<Child>>>>,
}

impl Victims {
    fn add(&self, child: Child) -> (u64, Arc<Mutex<Child>>) {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let child = Arc::new(Mutex::new(child));
        self.children.lock().unwrap().insert(id, child.clone());
        (id, child)
    }

    fn remove(&self, id: u64) {
        self.children.lock().unwrap().remove(&id);
    }

    /// Kills one child at random (`kill -9`); the child's own lock makes
    /// sure a reaped process is never signalled.
    fn kill_one(&self, rng: &mut Rng) -> bool {
        let picked = {
            let all = self.children.lock().unwrap();
            if all.is_empty() {
                return false;
            }
            let i = rng.below(all.len() as u64) as usize;
            all.values().nth(i).cloned()
        };
        let Some(child) = picked else { return false };
        let mut c = child.lock().unwrap();
        if c.try_wait().unwrap().is_none() {
            let _ = c.kill();
            return true;
        }
        false
    }
}

/// Runs one CLI call to its end (or its death by the killer).
fn call(dir: &Path, victims: &Victims, args: &[&str], stdin: &[u8]) -> (ExitStatus, Output) {
    let mut cmd = cli(dir);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Small inputs: they fit in the pipe, so writing cannot block.
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        use std::io::Read;
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        use std::io::Read;
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let (id, child) = victims.add(child);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.lock().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < CALL_DEADLINE,
            "blobcache {args:?} hung for {CALL_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    victims.remove(id);
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (status, output)
}

/// What the workers saw.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    killed: u64,
    failures: Vec<String>,
}

/// One worker: puts fresh keys, reads acknowledged ones back, removes
/// some; a killed call leaves its key unknown (it is never checked).
fn worker(dir: &Path, w: u64, victims: &Victims, stop: &AtomicBool) -> Tally {
    let mut rng = Rng::new(w + 1);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut t = Tally::default();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let roll = rng.below(10);
        let (args, stdin, expect): (Vec<String>, Vec<u8>, Option<Vec<u8>>) =
            if roll < 5 || acked.is_empty() {
                n += 1;
                let sig = format!("k{n}");
                let data = payload(w, n);
                acked.push((sig.clone(), data.clone()));
                let args = ["put", &format!("w{w}"), &sig, "-"].map(String::from);
                (args.to_vec(), data, None)
            } else {
                let i = rng.below(acked.len() as u64) as usize;
                let (sig, data) = acked[i].clone();
                if roll < 9 {
                    let args = ["get", &format!("w{w}"), &sig].map(String::from);
                    (args.to_vec(), Vec::new(), Some(data))
                } else {
                    acked.swap_remove(i);
                    let args = ["rm", &format!("w{w}"), &sig].map(String::from);
                    (args.to_vec(), Vec::new(), None)
                }
            };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, out) = call(dir, victims, &argv, &stdin);
        t.calls += 1;
        if status.code().is_none() {
            // Killed: the outcome of this call is unknown.
            t.killed += 1;
            if argv[0] == "put" {
                acked.pop();
            }
            continue;
        }
        let failed = match &expect {
            Some(data) => status.code() != Some(0) || out.stdout != *data,
            None => !status.success(),
        };
        if failed {
            t.failures.push(format!(
                "blobcache {argv:?}: {status}, {} bytes out (want {:?}), stderr {:?}",
                out.stdout.len(),
                expect.as_ref().map(Vec::len),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // Every acknowledged entry is still there, byte for byte.
    for (sig, data) in &acked {
        let (status, out) = call(dir, victims, &["get", &format!("w{w}"), sig], b"");
        if status.code() != Some(0) || out.stdout != *data {
            t.failures.push(format!(
                "acknowledged w{w}/{sig} lost: {status}, stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    t
}

fn spawn_serve(dir: &Path) -> Child {
    cli(dir)
        .args(["serve", "--until-killed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn churn_and_kill9_fail_no_call_and_leave_the_cache_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    let victims = Arc::new(Victims::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (root, victims, stop) = (root.clone(), victims.clone(), stop.clone());
            std::thread::spawn(move || worker(&root, w, &victims, &stop))
        })
        .collect();

    // The owner: a serve process, killed and restarted; CLI calls are
    // killed at random in between.
    let end = Instant::now() + Duration::from_secs(run_secs());
    let mut rng = Rng::new(99);
    let mut serve = spawn_serve(&root);
    let (mut serve_kills, mut cli_kills) = (0, 0);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        if rng.below(3) == 0 {
            kill9(&mut serve);
            serve_kills += 1;
            if rng.below(2) == 0 {
                serve = spawn_serve(&root);
            } else {
                // For a while no serve: CLI calls own the cache in turn.
                std::thread::sleep(Duration::from_millis(300));
                serve = spawn_serve(&root);
            }
        } else if victims.kill_one(&mut rng) {
            cli_kills += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    kill9(&mut serve);

    let calls: u64 = tallies.iter().map(|t| t.calls).sum();
    let killed: u64 = tallies.iter().map(|t| t.killed).sum();
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    eprintln!(
        "churn: {calls} calls, {killed} killed by {cli_kills} CLI kills, {serve_kills} owner kills"
    );
    assert!(calls > 50, "too few calls to mean anything: {calls}");
    assert!(serve_kills > 0);
    assert!(
        failures.is_empty(),
        "{} failed calls: {failures:#?}",
        failures.len()
    );

    let verify = cli(&root).args(["verify"]).output().unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify after the chaos: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
