//! get_or_fetch: single-flight, errors and panics of the fetching thread,
//! stale-if-error with a manual clock, Cache-Control handling, and
//! single-flight across real `blobcache fetch` processes (one run of CMD,
//! a kill -9 of the fetcher, no lock to be had).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use blobcache::{
    Category, Clock, Error, FetchError, FetchStatus, Fetched, ManualClock, PutOptions, Store,
    StoreOptions,
};

/// The caller's own error type: it must come back unchanged.
#[derive(Debug, PartialEq, Eq)]
struct UpstreamDown {
    code: u16,
}

impl std::fmt::Display for UpstreamDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream answered {}", self.code)
    }
}

const HOUR: Duration = Duration::from_secs(3600);

// Store is a cheap handle meant to be shared across threads.
const _: () = {
    const fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Store>();
};

fn opts() -> PutOptions {
    PutOptions::new().category(Category::Metadata).ttl(HOUR)
}

fn ok(body: &str) -> Result<Fetched, UpstreamDown> {
    Ok(Fetched::new(body.as_bytes().to_vec()).header("Content-Type", "application/json"))
}

fn down() -> Result<Fetched, UpstreamDown> {
    Err(UpstreamDown { code: 503 })
}

fn never() -> Result<Fetched, UpstreamDown> {
    panic!("the fetch closure must not run here")
}

fn assert_answer(f: &blobcache::Fetch<UpstreamDown>, status: FetchStatus, body: &str) {
    assert_eq!((f.status, f.data.as_slice()), (status, body.as_bytes()));
}

/// Asserts `tmdb/sig` is now served from the cache.
fn assert_cached(store: &Store, sig: &str) {
    let again = store.get_or_fetch("tmdb", sig, &opts(), never).unwrap();
    assert_eq!(again.status, FetchStatus::Hit);
}

fn with_clock(opts: StoreOptions) -> (tempfile::TempDir, Store, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000_000));
    let store = Store::open(dir.path(), opts.clock(clock.clone())).unwrap();
    (dir, store, clock)
}

#[test]
fn sixteen_threads_one_key_fetch_once() {
    let (_dir, store, _clock) = common::store_with_clock();
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (store, calls, start) = (store.clone(), calls.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                store
                    .get_or_fetch("tmdb", "movie/603", &opts(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Keep the flight open so the others join it
                        // (correctness does not depend on it: a late
                        // thread finds the stored entry).
                        thread::sleep(Duration::from_millis(200));
                        ok(r#"{"id":603}"#)
                    })
                    .unwrap()
            })
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for a in &answers {
        assert_eq!(a.data, br#"{"id":603}"#);
        assert_ne!(a.status, FetchStatus::Stale);
        assert_eq!(a.headers.len(), 1);
    }
    let fetched = answers
        .iter()
        .filter(|a| a.status == FetchStatus::Fetched)
        .count();
    assert!(fetched >= 1, "the fetching thread reports Fetched");
    assert_cached(&store, "movie/603");
}

#[test]
fn different_keys_fetch_independently() {
    let (_dir, store, _clock) = common::store_with_clock();
    let calls = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (store, calls) = (store.clone(), calls.clone());
            thread::spawn(move || {
                let sig = format!("movie/{i}");
                let body = format!("{{\"id\":{i}}}");
                let f = store
                    .get_or_fetch("tmdb", &sig, &opts(), || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        ok(&body)
                    })
                    .unwrap();
                assert_eq!(f.data, body.as_bytes());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);
}

/// Runs a fetch of `movie/1` whose closure blocks until told to go, then
/// does `then`; returns the channel that releases it and the thread.
fn blocked_leader<T: Send + 'static>(
    store: &Store,
    then: impl FnOnce() -> Result<Fetched, UpstreamDown> + Send + 'static,
    finish: impl FnOnce(Result<blobcache::Fetch<UpstreamDown>, FetchError<UpstreamDown>>) -> T
    + Send
    + 'static,
) -> (mpsc::Sender<()>, thread::JoinHandle<T>, mpsc::Receiver<()>) {
    let (go_tx, go_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let store = store.clone();
    let leader = thread::spawn(move || {
        finish(store.get_or_fetch("tmdb", "movie/1", &opts(), move || {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            then()
        }))
    });
    (go_tx, leader, started_rx)
}

/// Starts a second caller for `movie/1` while the leader's fetch is in
/// progress, then releases the leader; returns the second caller's answer
/// and how often its closure ran.
fn follower_after(
    store: &Store,
    go: mpsc::Sender<()>,
    started: mpsc::Receiver<()>,
) -> (blobcache::Fetch<UpstreamDown>, usize) {
    started.recv().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let follower = {
        let (store, calls) = (store.clone(), calls.clone());
        thread::spawn(move || {
            store
                .get_or_fetch("tmdb", "movie/1", &opts(), || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    ok("from the follower")
                })
                .unwrap()
        })
    };
    // Give the follower time to join the flight; the assertions hold
    // whether or not it did.
    thread::sleep(Duration::from_millis(100));
    go.send(()).unwrap();
    let answer = follower.join().unwrap();
    (answer, calls.load(Ordering::SeqCst))
}

#[test]
fn leader_error_comes_back_unchanged_and_waiters_retry() {
    let (_dir, store, _clock) = common::store_with_clock();
    let (go, leader, started) = blocked_leader(&store, down, |r| r.map(|f| f.data));
    let (answer, follower_calls) = follower_after(&store, go, started);
    match leader.join().unwrap() {
        Err(FetchError::Upstream(e)) => assert_eq!(e, UpstreamDown { code: 503 }),
        other => panic!("expected the upstream error, got {other:?}"),
    }
    assert_eq!(answer.data, b"from the follower");
    assert_eq!(answer.status, FetchStatus::Fetched);
    assert_eq!(follower_calls, 1);
}

#[test]
fn leader_panic_does_not_leave_waiters_hanging() {
    let (_dir, store, _clock) = common::store_with_clock();
    let (go, leader, started) = blocked_leader(
        &store,
        || panic!("fetch closure blew up"),
        |r| r.map(|f| f.data),
    );
    let (answer, follower_calls) = follower_after(&store, go, started);
    assert!(
        leader.join().is_err(),
        "the panic reaches the leader's caller"
    );
    assert_eq!(answer.data, b"from the follower");
    assert_eq!(follower_calls, 1);
    // The key is usable afterwards.
    assert_cached(&store, "movie/1");
}

#[test]
fn stale_if_error_within_grace_only() {
    let day = 24 * HOUR;
    let (_dir, store, clock) = with_clock(StoreOptions::default().stale_if_error(day));
    let first = store
        .get_or_fetch("tmdb", "movie/2", &opts(), || ok("v1"))
        .unwrap();
    assert_eq!(first.status, FetchStatus::Fetched);
    assert_eq!(first.expires_at, Some(clock.now_ms() + 3_600_000));

    // Expired for an hour; the upstream is down: serve stale, with the error.
    clock.advance(2 * HOUR);
    let stale = store
        .get_or_fetch("tmdb", "movie/2", &opts(), down)
        .unwrap();
    assert_eq!(stale.status, FetchStatus::Stale);
    assert!(stale.is_stale());
    assert_eq!(stale.data, b"v1");
    assert_eq!(stale.error, Some(UpstreamDown { code: 503 }));
    assert_eq!(store.stats().unwrap().stale_hits, 1);

    // Expired (exactly) at the end of the grace: still served.
    clock.advance(day - HOUR);
    let edge = store
        .get_or_fetch("tmdb", "movie/2", &opts(), down)
        .unwrap();
    assert_eq!(edge.status, FetchStatus::Stale);

    // Past the grace: the caller's own error.
    clock.advance(Duration::from_millis(1));
    let err = store
        .get_or_fetch("tmdb", "movie/2", &opts(), down)
        .unwrap_err();
    assert_eq!(err.upstream(), Some(UpstreamDown { code: 503 }));

    // The entry is still readable directly; a successful fetch replaces it.
    assert!(store.get_stale("tmdb", "movie/2").unwrap().is_some());
    let fresh = store
        .get_or_fetch("tmdb", "movie/2", &opts(), || ok("v2"))
        .unwrap();
    assert_answer(&fresh, FetchStatus::Fetched, "v2");
}

#[test]
fn nothing_cached_returns_the_upstream_error() {
    let (_dir, store, _clock) = common::store_with_clock();
    let err = store
        .get_or_fetch("tmdb", "movie/3", &opts(), down)
        .unwrap_err();
    assert!(err.to_string().contains("upstream answered 503"), "{err}");
    assert!(matches!(
        err,
        FetchError::Upstream(UpstreamDown { code: 503 })
    ));
}

#[test]
fn no_store_is_returned_but_not_cached() {
    let (_dir, store, _clock) = common::store_with_clock();
    let calls = AtomicUsize::new(0);
    let fetch = || {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, UpstreamDown>(
            Fetched::new(b"session".to_vec())
                .header("Cache-Control", "private, no-store")
                .honor_cache_control(),
        )
    };
    let a = store.get_or_fetch("api", "me", &opts(), fetch).unwrap();
    assert_eq!((a.status, a.expires_at), (FetchStatus::Fetched, None));
    assert_eq!(a.data, b"session");
    assert!(store.get_stale("api", "me").unwrap().is_none());
    store.get_or_fetch("api", "me", &opts(), fetch).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn no_cache_is_stored_expired_and_serves_only_as_stale() {
    let (_dir, store, _clock) = common::store_with_clock();
    let fetch = || ok("list").map(|f| f.cache_control("no-cache"));
    let a = store.get_or_fetch("api", "list", &opts(), fetch).unwrap();
    assert_eq!(a.status, FetchStatus::Fetched);
    assert!(store.get("api", "list").unwrap().is_none());
    let b = store.get_or_fetch("api", "list", &opts(), down).unwrap();
    assert_answer(&b, FetchStatus::Stale, "list");
}

#[test]
fn cache_control_max_age_sets_the_ttl_and_credentials_are_dropped() {
    let (_dir, store, clock) = common::store_with_clock();
    let fetch = || {
        ok("trending").map(|f| {
            f.header("Cache-Control", "public, max-age=600")
                .header("Set-Cookie", "session=abc")
                .honor_cache_control()
        })
    };
    // The category says 72 h; the response says 10 minutes.
    let a = store
        .get_or_fetch("api", "trending", &PutOptions::new(), fetch)
        .unwrap();
    assert_eq!(a.expires_at, Some(clock.now_ms() + 600_000));
    assert!(a.headers.iter().all(|(n, _)| n != "Set-Cookie"));
    let meta = store.meta("api", "trending").unwrap().unwrap();
    assert_eq!(meta.expires_at, clock.now_ms() + 600_000);
    assert_eq!(meta.headers, a.headers);
    clock.advance(Duration::from_secs(601));
    assert!(store.get("api", "trending").unwrap().is_none());
}

#[test]
fn without_cache_control_the_category_ttl_applies() {
    let (_dir, store, clock) = common::store_with_clock();
    let list = PutOptions::new().category(Category::List);
    let a = store
        .get_or_fetch("api", "page/1", &list, || ok("[]"))
        .unwrap();
    assert_eq!(a.expires_at, Some(clock.now_ms() + 24 * 3_600_000));
}

#[test]
fn refused_secret_is_a_store_error() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        store_dir.path(),
        StoreOptions::default().deny_secrets(["tok-991"]),
    )
    .unwrap();
    let err = store
        .get_or_fetch("api", "echo", &opts(), || ok("key=tok-991"))
        .unwrap_err();
    assert!(matches!(
        err,
        FetchError::Store(Error::SecretInPayload { .. })
    ));
    assert!(!err.to_string().contains("tok-991"));
    assert!(store.get_stale("api", "echo").unwrap().is_none());
}

#[test]
fn invalid_key_is_a_store_error_and_the_closure_does_not_run() {
    let (_dir, store, _clock) = common::store_with_clock();
    let err = store.get_or_fetch("", "x", &opts(), never).unwrap_err();
    assert!(matches!(err, FetchError::Store(Error::EmptyBackend)));
}

/// `sh -c SCRIPT sh ARG`: the fetch command of the process tests.
fn sh_fetch(dir: &std::path::Path, script: &str, arg: &std::path::Path) -> std::process::Child {
    common::cli(dir)
        .args(["fetch", "tmdb", "movie/603", "--", "sh", "-c", script, "sh"])
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn fetch_lock_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    common::files_under(&dir.join("locks/fetch"))
}

#[test]
fn four_processes_missing_one_key_run_the_command_once() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let cache = dir.path().join("cache");
    let script = r#"echo run >> "$1"; sleep 1; printf payload"#;
    let children: Vec<_> = (0..4).map(|_| sh_fetch(&cache, script, &counter)).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
        assert_eq!(out.stdout, b"payload");
    }
    assert_eq!(lines(&counter), ["run"], "CMD ran more than once");
    // The lock file goes with the fetch that held it.
    assert_eq!(fetch_lock_files(&cache), Vec::<std::path::PathBuf>::new());
}

/// Polls /proc/locks until process `pid` waits for a file lock.
fn until_blocked_on_a_lock(pid: u32) {
    for _ in 0..6000 {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let waiting = locks.lines().any(|l| {
            let mut words = l.split_whitespace().skip(1);
            words.next() == Some("->") && words.nth(3) == Some(pid.to_string().as_str())
        });
        if waiting {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "process {pid} never waited for the fetch lock:\n{}",
        std::fs::read_to_string("/proc/locks").unwrap()
    );
}

#[test]
fn a_killed_fetching_process_hands_the_fetch_to_the_waiting_one() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let cache = dir.path().join("cache");
    // The first run records its pid and hangs; a later run answers.
    let script = r#"if [ -e "$1" ]; then echo again >> "$1"; printf second; exit 0; fi
        echo $$ > "$1.pid"; echo first >> "$1"; exec sleep 60"#;
    let mut first = sh_fetch(&cache, script, &counter);
    while lines(&counter).is_empty() {
        thread::sleep(Duration::from_millis(10));
    }
    let second = sh_fetch(&cache, script, &counter);
    until_blocked_on_a_lock(second.id());
    assert_eq!(
        lines(&counter),
        ["first"],
        "the second process ran CMD while the first held the lock"
    );

    common::kill9(&mut first);
    let sleeper: i32 = std::fs::read_to_string(counter.with_extension("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(sleeper).unwrap(),
        rustix::process::Signal::KILL,
    );

    let out = second.wait_with_output().unwrap();
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    assert_eq!(out.stdout, b"second");
    assert_eq!(lines(&counter), ["first", "again"]);
    let again = common::run_code(&cache, &["get", "tmdb", "movie/603"], b"", 0);
    assert_eq!(again.stdout, b"second");
}

#[test]
fn without_a_lock_file_the_fetch_runs_anyway() {
    let dir = tempfile::tempdir().unwrap();
    common::run_code(dir.path(), &["stats"], b"", 0);
    // A file where the lock folder would go: the lock cannot be made.
    std::fs::write(dir.path().join("locks/fetch"), b"in the way").unwrap();
    let out = common::run_code(
        dir.path(),
        &["fetch", "tmdb", "movie/1", "--", "printf", "body"],
        b"",
        0,
    );
    assert_eq!(out.stdout, b"body");
    let hit = common::run_code(dir.path(), &["get", "tmdb", "movie/1"], b"", 0);
    assert_eq!(hit.stdout, b"body");
}
