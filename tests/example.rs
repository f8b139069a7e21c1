//! Runs `examples/api_client.rs` against its own local upstream and checks
//! what it reports.

mod common;

#[allow(dead_code)]
#[path = "../examples/api_client.rs"]
mod example;

#[test]
fn api_client_example_caches_and_survives_the_upstream_going_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let r = example::run(dir.path(), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();

    // Phase 1: 6 fetches (account twice: no-store), 2 hits. Phase 2: the
    // expired trending list is fetched again, a movie is a hit. Phase 3,
    // upstream down: 1 hit, 2 stale lists, 2 errors (no-store account and a
    // movie never fetched).
    assert_eq!(
        (r.hits, r.fetched, r.stale, r.errors),
        (4, 7, 2, 2),
        "{log}"
    );
    assert_eq!(r.upstream_requests, 7, "{log}");
    assert_eq!(r.stats.hits, 4, "{log}");
    assert_eq!(r.stats.stale_hits, 2, "{log}");
    // movie/603, movie/604, popular, trending; the account is never stored.
    assert_eq!((r.stats.entries, r.stats.expired), (4, 2), "{log}");

    assert!(log.contains("STALE"), "{log}");
    assert!(log.contains("upstream unreachable"), "{log}");
    // The API key sent on every request and the session cookie are not in
    // the cache.
    for file in std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .flatten()
    {
        let bytes = std::fs::read(file.path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("demo-key-51c0ffee") && !text.contains("s3cr3t"));
    }
}
