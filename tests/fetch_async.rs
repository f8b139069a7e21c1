//! get_or_fetch_async (feature `async`): single-flight across tasks, a slow
//! fetch that must not stall a current-thread runtime, stale-if-error as
//! in the sync API, a cancelled leader, and the async example against its
//! local upstream.
#![cfg(feature = "async")]

mod common;

#[allow(dead_code)]
#[path = "../examples/async_fetch.rs"]
mod example;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blobcache::{Category, Clock, FetchError, FetchStatus, Fetched, PutOptions, Store};

/// The caller's own error type: it must come back unchanged.
#[derive(Debug, PartialEq, Eq)]
struct UpstreamDown(u16);

const HOUR: Duration = Duration::from_secs(3600);
/// Far longer than any step here takes: reaching it means a task hung.
const HUNG: Duration = Duration::from_secs(60);

fn opts() -> PutOptions {
    PutOptions::new().category(Category::Metadata).ttl(HOUR)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (yielding to the runtime) until `n` callers wait for `sig`.
async fn until_waiters(store: &Store, sig: &str, n: usize) {
    while store.fetch_waiters("tmdb", sig) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fetch_ok(
    store: &Store,
    sig: &str,
    body: &'static str,
) -> Result<blobcache::Fetch<UpstreamDown>, FetchError<UpstreamDown>> {
    let fetch = async move { Ok(Fetched::new(body.as_bytes().to_vec())) };
    store.get_or_fetch_async("tmdb", sig, &opts(), fetch).await
}

#[test]
fn twenty_tasks_one_key_fetch_once_and_share_the_bytes() {
    let (_dir, store, _clock) = common::store_with_clock();
    let calls = Arc::new(AtomicUsize::new(0));
    let answers = multi_thread().block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, calls) = (store.clone(), calls.clone());
                tokio::spawn(async move {
                    let watcher = store.clone();
                    let fetch = async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Hold the fetch until the other 19 wait for it.
                        until_waiters(&watcher, "movie/603", 19).await;
                        Ok::<_, UpstreamDown>(Fetched::new(&b"{\"id\":603}"[..]))
                    };
                    store
                        .get_or_fetch_async("tmdb", "movie/603", &opts(), fetch)
                        .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(
                tokio::time::timeout(HUNG, t)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        answers
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(answers.len(), 20);
    for a in &answers {
        assert_eq!(
            (a.status, a.data.as_slice()),
            (FetchStatus::Fetched, &b"{\"id\":603}"[..])
        );
    }
    assert_eq!(store.stats().unwrap().entries, 1);
}

#[test]
fn a_slow_fetch_does_not_stall_other_tasks_on_a_current_thread_runtime() {
    let (_dir, store, _clock) = common::store_with_clock();
    let ticks = Arc::new(AtomicUsize::new(0));
    let (fast_done_tx, fast_done_rx) = tokio::sync::oneshot::channel::<usize>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (slow, waiter, ticks_seen_by_slow, fast) = current_thread().block_on(async {
        // A ticker: it only advances while the one thread is free.
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let slow = {
            let (store, ticks) = (store.clone(), ticks.clone());
            tokio::spawn(async move {
                let fetch = async move {
                    let _ = started_tx.send(());
                    // The slow upstream: 2 s on the tokio timer, and not
                    // before the other key's fetch has finished.
                    let (_, fast_ticks) =
                        tokio::join!(tokio::time::sleep(Duration::from_secs(2)), fast_done_rx);
                    let seen = ticks.load(Ordering::SeqCst);
                    assert!(fast_ticks.is_ok(), "the fast task never finished");
                    Ok::<_, UpstreamDown>(Fetched::new(seen.to_string().into_bytes()))
                };
                store
                    .get_or_fetch_async("tmdb", "slow", &opts(), fetch)
                    .await
            })
        };
        started_rx.await.unwrap();
        // A second task for the slow key waits for it, without blocking
        // the thread (a blocking wait here would hang the whole runtime).
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { fetch_ok(&store, "slow", "never used").await })
        };
        until_waiters(&store, "slow", 1).await;
        let fast = fetch_ok(&store, "fast", "quick").await.unwrap();
        let _ = fast_done_tx.send(ticks.load(Ordering::SeqCst));
        let slow = tokio::time::timeout(HUNG, slow)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let waiter = tokio::time::timeout(HUNG, waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        ticker.abort();
        let seen: usize = String::from_utf8(slow.data.clone())
            .unwrap()
            .parse()
            .unwrap();
        (slow, waiter, seen, fast)
    });
    assert_eq!(fast.status, FetchStatus::Fetched);
    assert_eq!(
        (slow.status, waiter.status),
        (FetchStatus::Fetched, FetchStatus::Fetched)
    );
    assert_eq!(slow.data, waiter.data, "the waiter shares the slow fetch");
    // The ticker ran while the slow fetch was pending (one tick per 10 ms of
    // a 2 s sleep; more than one proves the thread was not held).
    assert!(
        ticks_seen_by_slow > 1,
        "ticker stalled: {ticks_seen_by_slow}"
    );
}

#[test]
fn stale_if_error_within_the_grace_only_as_in_the_sync_api() {
    let (_dir, store, clock) = common::store_with_clock();
    let grace = blobcache::DEFAULT_STALE_IF_ERROR;
    current_thread().block_on(async {
        let first = fetch_ok(&store, "trending", "[603]").await.unwrap();
        assert_eq!(first.status, FetchStatus::Fetched);
        clock.advance(HOUR + Duration::from_secs(1));

        let down = async { Err::<Fetched, _>(UpstreamDown(503)) };
        let stale = store
            .get_or_fetch_async("tmdb", "trending", &opts(), down)
            .await
            .unwrap();
        assert!(stale.is_stale());
        assert_eq!(stale.data, b"[603]");
        assert_eq!(stale.error, Some(UpstreamDown(503)));
        assert_eq!(stale.expires_at, first.expires_at);

        clock.advance(grace);
        let down = async { Err::<Fetched, _>(UpstreamDown(502)) };
        match store
            .get_or_fetch_async("tmdb", "trending", &opts(), down)
            .await
        {
            Err(FetchError::Upstream(e)) => assert_eq!(e, UpstreamDown(502)),
            other => panic!("past the grace: {other:?}"),
        }
    });
    let now = clock.now_ms();
    assert!(store.meta("tmdb", "trending").unwrap().unwrap().expires_at < now);
}

#[test]
fn a_cancelled_leader_hands_the_fetch_to_a_waiter() {
    let (_dir, store, _clock) = common::store_with_clock();
    let answer = current_thread().block_on(async {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let store = store.clone();
            tokio::spawn(async move {
                let hang = async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<Fetched, UpstreamDown>>().await
                };
                store
                    .get_or_fetch_async("tmdb", "movie/1", &opts(), hang)
                    .await
            })
        };
        started_rx.await.unwrap();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { fetch_ok(&store, "movie/1", "from the waiter").await })
        };
        until_waiters(&store, "movie/1", 1).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        tokio::time::timeout(HUNG, waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
    assert_eq!(answer.status, FetchStatus::Fetched);
    assert_eq!(answer.data, b"from the waiter");
    assert_eq!(store.fetch_waiters("tmdb", "movie/1"), 0);
}

#[test]
fn a_thread_and_a_task_share_one_fetch() {
    let (_dir, store, _clock) = common::store_with_clock();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let thread = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.get_or_fetch("tmdb", "both", &opts(), || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok::<_, UpstreamDown>(Fetched::new(&b"from the thread"[..]))
            })
        })
    };
    started_rx.recv().unwrap();
    let answer = current_thread().block_on(async {
        let task = {
            let store = store.clone();
            tokio::spawn(async move { fetch_ok(&store, "both", "from the task").await })
        };
        until_waiters(&store, "both", 1).await;
        release_tx.send(()).unwrap();
        tokio::time::timeout(HUNG, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
    assert_eq!(answer.data, b"from the thread");
    assert_eq!(thread.join().unwrap().unwrap().data, b"from the thread");
}

#[test]
fn async_example_fetches_once_per_key_and_serves_stale_when_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let r = example::run(dir.path(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    // Phase 1: 11 answers (10 tasks for one movie, one for another), each
    // fetched or, for a task that came late, a hit; phase 2: 2 hits;
    // phase 3, upstream down: 2 stale, 1 error (never fetched).
    assert_eq!(r.hits + r.fetched, 13, "{log}");
    assert_eq!((r.stale, r.errors), (2, 1), "{log}");
    assert_eq!(r.upstream_requests, 2, "{log}");
    assert_eq!(r.distinct_bodies, 1, "{log}");
    assert_eq!((r.stats.entries, r.stats.expired), (2, 2), "{log}");
    assert!(
        log.contains("STALE") && log.contains("upstream unreachable"),
        "{log}"
    );
}
