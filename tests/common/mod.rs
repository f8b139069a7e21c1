//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use blobcache::{ManualClock, Store, StoreOptions, VerifyOptions};

/// Path of the real CLI binary built by cargo for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_blobcache"))
}

/// A CLI command on `dir` with logging quiet and a clean environment.
pub fn cli(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg("--dir").arg(dir);
    c.env_remove("BLOBCACHE_DIR")
        .env_remove("BLOBCACHE_FORMAT")
        .env("RUST_LOG", "error");
    c
}

/// Runs the CLI on `dir` with `args`, feeding `stdin` from a thread.
pub fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = cli(dir);
    c.args(args);
    run_cmd(c, stdin)
}

/// Runs `c`, feeding `stdin` from a thread.
pub fn run_cmd(mut c: Command, stdin: &[u8]) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The child may not read its stdin at all: ignore broken pipes.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Exit code of a finished CLI run.
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

/// Stderr of a finished CLI run, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts exit code `want`, with the output in the message
/// (stdout only by length when it is large).
pub fn run_code(dir: &Path, args: &[&str], stdin: &[u8], want: i32) -> Output {
    let o = run(dir, args, stdin);
    let stdout = if o.stdout.len() > 4096 {
        format!("{} bytes", o.stdout.len())
    } else {
        format!("{:?}", String::from_utf8_lossy(&o.stdout))
    };
    assert_eq!(
        code(&o),
        want,
        "blobcache {args:?}: stdout {stdout}, stderr {:?}",
        stderr(&o)
    );
    o
}

/// A fresh temp dir holding a store driven by a manual clock at t = 1e12 ms.
pub fn store_with_clock() -> (tempfile::TempDir, Store, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let store = Store::open(dir.path(), StoreOptions::default().clock(clock.clone())).unwrap();
    (dir, store, clock)
}

#[allow(unused_imports)]
pub use blobcache::testkit::{GenReader, Rng, json_payload};

/// Random bytes: never compressible, so `n` > 16 KiB makes a file blob.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

/// blake3 of everything `r` yields.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(blake3::Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((h.finalize(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// Asserts the cache behind `store` passes a full verify.
pub fn assert_clean(store: &Store) {
    let report = store.verify(VerifyOptions::new().full(true)).unwrap();
    assert!(
        report.is_clean(),
        "verify found problems: {:#?}",
        report.problems
    );
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Sends SIGKILL to a child and reaps it.
pub fn kill9(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("child pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
    let _ = child.wait();
}

/// libtest arguments that run only a test file's `worker` entry point.
pub const WORKER_ARGS: [&str; 5] = [
    "--ignored",
    "--exact",
    "worker",
    "--nocapture",
    "--test-threads=1",
];

/// Environment variable that turns a test binary into a worker process.
pub const WORKER_ENV: &str = "BLOBCACHE_TEST_WORKER";

/// Starts this test binary again as a worker running `spec` (see each test
/// file's `worker` entry point). Stdout is piped for its progress lines.
pub fn spawn_worker(spec: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(WORKER_ARGS)
        .env(WORKER_ENV, spec)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The worker's spec, when this process is a worker. Ends the line libtest
/// started ("test worker ... "), so the worker's own lines are whole.
pub fn worker_spec() -> Option<String> {
    let spec = std::env::var(WORKER_ENV).ok()?;
    println!();
    Some(spec)
}

/// Reads the worker's stdout lines until `pred` accepts one (returns it)
/// or the worker ends (returns None).
pub fn wait_for_line(
    out: &mut BufReader<ChildStdout>,
    mut pred: impl FnMut(&str) -> bool,
) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if pred(line.trim_end()) {
            return Some(line.trim_end().to_string());
        }
    }
}

/// Opens `dir`, retrying briefly while a just-killed process's lock is
/// being released by the kernel.
pub fn open_retry(dir: &Path, opts: StoreOptions) -> Store {
    for _ in 0..200 {
        match Store::open(dir, opts.clone()) {
            Ok(s) => return s,
            Err(blobcache::Error::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("open failed: {e}"),
        }
    }
    panic!("cache stayed locked");
}

/// Flips one bit of the byte at `at` of `path`, in place.
pub fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}
