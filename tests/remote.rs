//! The remote tier against a real `redis-server` (started per test on a
//! Unix socket in a temp dir, persistence off, killed on drop): two cache
//! directories as two machines, TTLs on the Redis side, Redis killed and
//! restarted under load, tampered values, credentials, read-only mode.
//! Without `redis-server` on PATH these tests fail, saying so.

#![cfg(feature = "redis")]

mod common;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blobcache::testkit::{RedisServer, RedisTls, Rng, json_payload};
use blobcache::{
    Category, Error, PutOptions, RemoteOptions, RemoteState, Selector, Store, StoreOptions,
};
use common::{assert_clean, kill9, open_retry, spawn_worker, wait_for_line, worker_spec};

fn server(dir: &Path) -> RedisServer {
    RedisServer::start(dir, None).expect("redis-server is required for these tests")
}

fn redis_con(s: &RedisServer) -> redis::Connection {
    redis::Client::open(s.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test redis-server")
}

fn dbsize(s: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query(&mut redis_con(s))
        .expect("DBSIZE")
}

fn keys(s: &RedisServer, pattern: &str) -> Vec<Vec<u8>> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut redis_con(s))
        .expect("KEYS")
}

/// A store in `dir` whose remote tier is `remote`.
fn open(dir: &Path, remote: RemoteOptions) -> Store {
    Store::open(dir, StoreOptions::default().remote(remote)).expect("open with a remote tier")
}

fn remote_stats(store: &Store) -> blobcache::RemoteStats {
    store
        .stats()
        .expect("stats")
        .remote
        .expect("remote figures")
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Rng::new(seed).fill(&mut v);
    v
}

#[test]
fn two_directories_share_entries_through_one_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let a = open(&tmp.path().join("a"), RemoteOptions::new(srv.url()));
    let b = open(&tmp.path().join("b"), RemoteOptions::new(srv.url()));

    let small = json_payload(1, 1024);
    let large = random(2, 200_000); // incompressible: a blob kept apart
    let opts = PutOptions::new()
        .category(Category::List)
        .ttl(Duration::from_secs(600))
        .content_type("application/json")
        .header("ETag", "\"v1\"")
        .header("Authorization", "Bearer never-stored")
        .fetched_at(1_700_000_000_000);
    let put_small = a.put("tmdb", "movie/603", &small, &opts).unwrap();
    a.put("tmdb", "dump/1", &large, &opts).unwrap();
    a.put("tmdb", "dump/2", &large, &opts).unwrap(); // same blob, another key
    a.flush().unwrap(); // background writes reach Redis
    let ra = remote_stats(&a);
    assert_eq!((ra.writes, ra.deduplicated, ra.errors), (3, 1, 0), "{ra:?}");
    assert_eq!(
        keys(&srv, "blobcache:b:*").len(),
        1,
        "one blob for two entries"
    );
    assert_eq!(keys(&srv, "blobcache:e:*").len(), 3);

    // B misses locally, hits remotely, and keeps the entry.
    assert!(!b.contains("tmdb", "movie/603").unwrap());
    let hit = b.get("tmdb", "movie/603").unwrap().expect("remote hit");
    assert_eq!(hit.data, small);
    assert_eq!(hit.meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        hit.meta.headers,
        vec![("ETag".to_string(), "\"v1\"".to_string())]
    );
    assert_eq!(hit.meta.category, Category::List);
    assert_eq!(hit.meta.fetched_at, 1_700_000_000_000);
    let drift = hit.meta.expires_at.abs_diff(put_small.expires_at);
    assert!(drift < 1000, "remaining TTL kept (off by {drift} ms)");
    let mut streamed = Vec::new();
    let mut reader = b
        .get_reader("tmdb", "dump/2")
        .unwrap()
        .expect("remote hit, streamed");
    std::io::Read::read_to_end(&mut reader, &mut streamed).unwrap();
    assert_eq!(streamed, large);
    assert_eq!(remote_stats(&b).hits, 2);

    // Now local: served without asking Redis, even once Redis is gone.
    drop(srv);
    assert!(b.contains("tmdb", "movie/603").unwrap());
    assert_eq!(b.get("tmdb", "movie/603").unwrap().unwrap().data, small);
    assert_eq!(b.get("tmdb", "dump/2").unwrap().unwrap().data, large);
    let rb = remote_stats(&b);
    assert_eq!((rb.hits, rb.misses, rb.corrupt), (2, 0, 0), "{rb:?}");
    // A key nobody has: a miss everywhere.
    assert!(b.get("tmdb", "movie/1").unwrap().is_none());
}

#[test]
fn streamed_puts_reach_redis_even_when_their_blob_is_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let sync = RemoteOptions::new(srv.url()).sync_writes(true);
    let a = open(&tmp.path().join("a"), sync.clone());
    let b = open(&tmp.path().join("b"), sync);
    // Over the streaming threshold, yet a few hundred bytes compressed: put
    // in memory it is inline; streamed, it deduplicates onto that blob, so
    // its bytes are not at hand after the put and are read back.
    let zeros = vec![b'0'; 9 << 20];
    let bytes = a.put("dumps", "bytes", &zeros, &PutOptions::new()).unwrap();
    assert!(bytes.inline, "{bytes:?}");
    let streamed = a
        .put_reader("dumps", "streamed", &zeros[..], &PutOptions::new())
        .unwrap();
    assert!(streamed.inline && streamed.deduplicated, "{streamed:?}");
    // A streamed payload that ends up in a blob file.
    let large = random(13, 9 << 20);
    let file = a
        .put_reader("dumps", "file", &large[..], &PutOptions::new())
        .unwrap();
    assert!(!file.inline, "{file:?}");
    let ra = remote_stats(&a);
    assert_eq!((ra.writes, ra.skipped, ra.errors), (3, 0, 0), "{ra:?}");

    assert_eq!(b.get("dumps", "streamed").unwrap().unwrap().data, zeros);
    assert_eq!(b.get("dumps", "file").unwrap().unwrap().data, large);
    assert_eq!(remote_stats(&b).hits, 2);
}

#[test]
fn entries_expire_on_the_redis_side() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let sync = RemoteOptions::new(srv.url()).sync_writes(true);
    let a = open(&tmp.path().join("a"), sync.clone());
    let b = open(&tmp.path().join("b"), sync);
    let ttl = PutOptions::new().ttl(Duration::from_millis(800));
    a.put("anilist", "short", &random(3, 100_000), &ttl)
        .unwrap();
    a.put(
        "anilist",
        "long",
        b"{}",
        &PutOptions::new().ttl(Duration::from_secs(600)),
    )
    .unwrap();
    let mut con = redis_con(&srv);
    let entry = b"blobcache:e:\x07anilistshort".to_vec();
    let pttl: i64 = redis::cmd("PTTL").arg(&entry).query(&mut con).unwrap();
    assert!((1..=800).contains(&pttl), "Redis expiry is the TTL: {pttl}");
    let blob = keys(&srv, "blobcache:b:*");
    assert_eq!(blob.len(), 1);
    std::thread::sleep(Duration::from_millis(1200));
    let left: u64 = redis::cmd("EXISTS")
        .arg(&entry)
        .arg(&blob[0])
        .query(&mut con)
        .unwrap();
    assert_eq!(left, 0, "Redis dropped the entry and its blob");
    assert!(b.get("anilist", "short").unwrap().is_none());
    assert!(b.get("anilist", "long").unwrap().is_some());
    let rb = remote_stats(&b);
    assert_eq!((rb.hits, rb.misses), (1, 1), "{rb:?}");
}

#[test]
fn redis_killed_mid_load_then_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut srv = server(tmp.path());
    let remote = RemoteOptions::new(srv.url())
        .timeout(Duration::from_millis(200))
        .retry_interval(Duration::from_millis(300));
    let a = open(&tmp.path().join("a"), remote.clone());
    let killed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u64)
        .map(|w| {
            let (a, killed) = (a.clone(), killed.clone());
            std::thread::spawn(move || {
                let mut after_kill = 0;
                for i in 0..20_000u64 {
                    if killed.load(Ordering::SeqCst) {
                        after_kill += 1;
                    }
                    if after_kill > 200 {
                        return i;
                    }
                    let sig = format!("w{w}/{i}");
                    let body = json_payload(w * 1000 + i, 200 + (i as usize % 5) * 7000);
                    a.put("load", &sig, &body, &PutOptions::new())
                        .expect("put never fails");
                    let got = a
                        .get("load", &sig)
                        .expect("get never fails")
                        .expect("own put");
                    assert_eq!(got.data, body, "nothing wrong served");
                    // Read-through of keys nobody wrote goes to Redis too.
                    assert!(a.get("load", format!("absent/{w}/{i}")).unwrap().is_none());
                }
                panic!("the load never saw the kill");
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    srv.kill();
    killed.store(true, Ordering::SeqCst);
    let done: Vec<u64> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    let down = remote_stats(&a);
    assert!(down.errors >= 1 && down.writes > 0, "{down:?}");
    for (w, &n) in (0..2u64).zip(&done) {
        for i in (0..n).step_by(37) {
            let body = json_payload(w * 1000 + i, 200 + (i as usize % 5) * 7000);
            assert_eq!(
                a.get("load", format!("w{w}/{i}")).unwrap().unwrap().data,
                body
            );
        }
    }

    srv.restart().unwrap();
    std::thread::sleep(Duration::from_millis(400)); // past the retry interval
    let sync = remote.sync_writes(true);
    let c = open(&tmp.path().join("c"), sync.clone());
    // A put in the first store resumes writing once a request probes Redis.
    let mut resumed = false;
    for i in 0..50 {
        a.put(
            "after",
            format!("k{i}"),
            b"{\"back\":true}",
            &PutOptions::new(),
        )
        .unwrap();
        a.flush().unwrap();
        if remote_stats(&a).state == RemoteState::Up && dbsize(&srv) > 0 {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed, "the tier came back: {:?}", remote_stats(&a));
    c.put("after", "from-c", b"{\"c\":1}", &PutOptions::new())
        .unwrap();
    assert_eq!(
        a.get("after", "from-c").unwrap().unwrap().data,
        b"{\"c\":1}",
        "read-through works again"
    );
    assert!(remote_stats(&a).hits >= 1);
}

#[test]
fn a_tampered_remote_value_is_detected_and_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let sync = RemoteOptions::new(srv.url()).sync_writes(true);
    let a = open(&tmp.path().join("a"), sync.clone());
    let b = open(&tmp.path().join("b"), sync);
    let small = random(5, 600); // raw, travels inside its entry
    let large = random(6, 100_000); // kept apart under its hash
    a.put("b", "small", &small, &PutOptions::new()).unwrap();
    let report = a.put("b", "large", &large, &PutOptions::new()).unwrap();
    let mut con = redis_con(&srv);

    let bkey = format!("blobcache:b:{}", report.hash.to_hex());
    let mut blob: Vec<u8> = redis::cmd("GET").arg(&bkey).query(&mut con).unwrap();
    blob[50_000] ^= 0x01;
    let _: () = redis::cmd("SET")
        .arg(&bkey)
        .arg(&blob)
        .arg("KEEPTTL")
        .query(&mut con)
        .unwrap();

    let ekey = b"blobcache:e:\x01bsmall".to_vec();
    let mut entry: Vec<u8> = redis::cmd("GET").arg(&ekey).query(&mut con).unwrap();
    let at = entry
        .windows(small.len())
        .position(|w| w == small)
        .expect("the small payload travels inside its entry");
    entry[at + 10] ^= 0x80;
    let _: () = redis::cmd("SET")
        .arg(&ekey)
        .arg(&entry)
        .arg("KEEPTTL")
        .query(&mut con)
        .unwrap();
    let garbage = b"blobcache:e:\x01bgarbage".to_vec();
    let _: () = redis::cmd("SET")
        .arg(&garbage)
        .arg(b"\xa1\x61v\x63bad")
        .query(&mut con)
        .unwrap();

    assert!(b.get("b", "large").unwrap().is_none());
    assert!(b.get_reader("b", "small").unwrap().is_none());
    assert!(b.get("b", "garbage").unwrap().is_none());
    let rb = remote_stats(&b);
    assert_eq!((rb.corrupt, rb.hits), (3, 0), "{rb:?}");
    assert_eq!(b.stats().unwrap().entries, 0, "nothing stored locally");
    // The writer's own copies are intact and still served.
    assert_eq!(a.get("b", "large").unwrap().unwrap().data, large);
}

#[test]
fn wrong_credentials_are_a_clear_error_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = RedisServer::start(tmp.path(), Some("right-pw")).expect("redis-server is required");
    let sock = srv.socket();
    for url in [
        format!("unix://{}?pass=wrong-pw", sock.display()),
        format!("unix://{}", sock.display()),
    ] {
        let err = Store::open(
            tmp.path().join("a"),
            StoreOptions::default().remote(RemoteOptions::new(&url)),
        )
        .expect_err("refused credentials fail the open");
        assert!(matches!(err, Error::Remote { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("credentials"), "{msg}");
        assert!(!msg.contains("wrong-pw"), "the password is masked: {msg}");
    }
    let ok = open(
        &tmp.path().join("a"),
        RemoteOptions::new(srv.url()).sync_writes(true),
    );
    ok.put("b", "s", b"{}", &PutOptions::new()).unwrap();
    assert_eq!(remote_stats(&ok).writes, 1);

    let bad = Store::open(
        tmp.path().join("c"),
        StoreOptions::default().remote(RemoteOptions::new("redis://")),
    );
    assert!(
        matches!(bad, Err(Error::Remote { .. })),
        "an unusable URL: {bad:?}"
    );
    let ca_without_tls = Store::open(
        tmp.path().join("c"),
        StoreOptions::default().remote(RemoteOptions::new(srv.url()).ca_file("ca.pem")),
    );
    let msg = ca_without_tls.unwrap_err().to_string();
    assert!(msg.contains("rediss://"), "{msg}");
}

/// A throwaway PKI: a CA, a server certificate for localhost and
/// 127.0.0.1 and a client certificate signed by it, and an unrelated CA.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_issuer = |cn: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let ca = ca_issuer("blobcache test CA");
    let other = ca_issuer("someone else's CA");
    let leaf = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (
            write(&format!("{name}.crt"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let server = leaf("server", vec!["localhost".into(), "127.0.0.1".into()]);
    let client = leaf("client", vec!["ci-runner".into()]);
    Pki {
        ca: write("ca.crt", ca.pem()),
        other_ca: write("other-ca.crt", other.pem()),
        server,
        client,
    }
}

fn tls_server(dir: &Path, pki: &Pki, require_client_cert: bool) -> RedisServer {
    let tls = RedisTls {
        cert: pki.server.0.clone(),
        key: pki.server.1.clone(),
        ca: pki.ca.clone(),
        require_client_cert,
    };
    RedisServer::start_tls(dir, tls).expect("redis-server with TLS is required")
}

#[test]
fn tls_shares_entries_and_refuses_an_untrusted_server_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let srv = tls_server(tmp.path(), &pki, false);
    let trusted = |host: &str| {
        RemoteOptions::new(srv.tls_url(host).unwrap())
            .ca_file(&pki.ca)
            .sync_writes(true)
    };
    let a = open(&tmp.path().join("a"), trusted("localhost"));
    let b = open(&tmp.path().join("b"), trusted("127.0.0.1"));
    let body = json_payload(11, 5000);
    let large = random(12, 150_000); // a blob kept apart
    a.put("tmdb", "movie/42", &body, &PutOptions::new())
        .unwrap();
    a.put("tmdb", "dump/42", &large, &PutOptions::new())
        .unwrap();
    assert_eq!(remote_stats(&a).writes, 2, "{:?}", remote_stats(&a));
    assert_eq!(
        keys(&srv, "blobcache:e:*").len(),
        2,
        "in Redis, sent over TLS"
    );
    assert_eq!(b.get("tmdb", "movie/42").unwrap().unwrap().data, body);
    assert_eq!(b.get("tmdb", "dump/42").unwrap().unwrap().data, large);
    let rb = remote_stats(&b);
    assert_eq!(
        (rb.hits, rb.errors, rb.state),
        (2, 0, RemoteState::Up),
        "{rb:?}"
    );

    // An untrusted server (the system's roots, or another CA) is refused
    // at open, like wrong credentials: a configuration error, not a
    // Redis that is down.
    for opts in [
        RemoteOptions::new(srv.tls_url("localhost").unwrap()),
        RemoteOptions::new(srv.tls_url("localhost").unwrap()).ca_file(&pki.other_ca),
    ] {
        let err = Store::open(tmp.path().join("c"), StoreOptions::default().remote(opts))
            .expect_err("an untrusted certificate fails the open");
        let msg = err.to_string();
        assert!(matches!(err, Error::Remote { .. }), "{err:?}");
        assert!(msg.contains("TLS handshake failed"), "{msg}");
    }
    let missing = Store::open(
        tmp.path().join("c"),
        StoreOptions::default().remote(trusted("localhost").ca_file(tmp.path().join("no.pem"))),
    )
    .expect_err("a missing CA file fails the open");
    assert!(missing.to_string().contains("no.pem"), "{missing}");
}

#[test]
fn tls_client_certificates_via_options_and_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let srv = tls_server(tmp.path(), &pki, true);
    let url = srv.tls_url("localhost").unwrap();
    let with_cert = RemoteOptions::new(&url)
        .ca_file(&pki.ca)
        .client_cert(&pki.client.0, &pki.client.1)
        .sync_writes(true);
    let a = open(&tmp.path().join("a"), with_cert);
    a.put("anilist", "media/1", b"{\"id\":1}", &PutOptions::new())
        .unwrap();
    assert_eq!(remote_stats(&a).writes, 1, "{:?}", remote_stats(&a));

    let err = Store::open(
        tmp.path().join("b"),
        StoreOptions::default().remote(RemoteOptions::new(&url).ca_file(&pki.ca)),
    )
    .expect_err("Redis requires a client certificate");
    assert!(matches!(err, Error::Remote { .. }), "{err:?}");

    let bin = env!("CARGO_BIN_EXE_blobcache");
    let cli = |dir: &str, args: &[&str]| {
        Command::new(bin)
            .arg("--dir")
            .arg(tmp.path().join(dir))
            .args(["--remote", &url])
            .env("BLOBCACHE_REMOTE_CA_FILE", &pki.ca)
            .args(args)
            .output()
            .unwrap()
    };
    let cert = pki.client.0.to_str().unwrap();
    let key = pki.client.1.to_str().unwrap();
    let got = cli(
        "c",
        &[
            "--remote-cert-file",
            cert,
            "--remote-key-file",
            key,
            "get",
            "anilist",
            "media/1",
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, b"{\"id\":1}");
    let half = cli(
        "d",
        &["--remote-cert-file", cert, "get", "anilist", "media/1"],
    );
    assert_eq!(half.status.code(), Some(2), "a certificate without its key");
    let refused = cli("d", &["get", "anilist", "media/1"]);
    assert_eq!(refused.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.starts_with("error: remote cache rediss://"), "{msg}");
}

#[test]
fn a_redis_down_at_open_leaves_the_tier_skipped_unless_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("unix://{}", tmp.path().join("nobody.sock").display());
    let store = open(&tmp.path().join("a"), RemoteOptions::new(&url));
    assert_eq!(remote_stats(&store).state, RemoteState::Down);
    store.put("b", "s", b"{}", &PutOptions::new()).unwrap();
    assert_eq!(store.get("b", "s").unwrap().unwrap().data, b"{}");
    assert!(store.get("b", "absent").unwrap().is_none());
    let r = remote_stats(&store);
    assert!(r.errors >= 1 && r.skipped >= 1, "{r:?}");
    drop(store);

    let fatal = RemoteOptions::new(&url).fatal_errors(true);
    let err = Store::open(tmp.path().join("b"), StoreOptions::default().remote(fatal)).unwrap_err();
    assert!(matches!(err, Error::Remote { .. }), "{err:?}");
}

#[test]
fn read_only_mode_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let writer = open(
        &tmp.path().join("w"),
        RemoteOptions::new(srv.url()).sync_writes(true),
    );
    writer
        .put("team", "shared", b"{\"ok\":1}", &PutOptions::new())
        .unwrap();
    let before = dbsize(&srv);
    assert_eq!(before, 1);

    let ro = RemoteOptions::new(srv.url())
        .read_only(true)
        .delete_remote(true);
    let pr = open(&tmp.path().join("pr"), ro);
    assert_eq!(
        pr.get("team", "shared").unwrap().unwrap().data,
        b"{\"ok\":1}"
    );
    pr.put("team", "poison", &random(7, 50_000), &PutOptions::new())
        .unwrap();
    pr.put("team", "shared", b"{\"evil\":1}", &PutOptions::new())
        .unwrap();
    pr.delete("team", "shared").unwrap();
    pr.clear(&Selector::All).unwrap();
    pr.flush().unwrap();
    assert_eq!(dbsize(&srv), before, "read-only wrote or deleted nothing");
    let r = remote_stats(&pr);
    assert!(r.read_only && r.writes == 0 && r.deleted == 0, "{r:?}");
    assert_eq!(
        writer.get("team", "shared").unwrap().unwrap().data,
        b"{\"ok\":1}"
    );
}

#[test]
fn deletes_stay_local_unless_told_and_large_payloads_stay_local() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let plain = RemoteOptions::new(srv.url())
        .sync_writes(true)
        .max_payload(100_000);
    let a = open(&tmp.path().join("a"), plain.clone());
    a.put("x", "1", b"{}", &PutOptions::new()).unwrap();
    a.put("x", "big", &random(8, 100_001), &PutOptions::new())
        .unwrap();
    assert_eq!(remote_stats(&a).too_large, 1);
    assert_eq!(dbsize(&srv), 1, "the payload over max_payload was not sent");
    assert!(a.delete("x", "1").unwrap());
    assert_eq!(dbsize(&srv), 1, "a plain delete is local");
    assert!(
        a.get("x", "1").unwrap().is_some(),
        "so the entry reads through again"
    );
    drop(a);

    let b = open(&tmp.path().join("b"), plain.delete_remote(true));
    for i in 0..5 {
        b.put("x", format!("p*{i}"), b"{}", &PutOptions::new())
            .unwrap();
        b.put("y", format!("p*{i}"), b"{}", &PutOptions::new())
            .unwrap();
    }
    assert!(!b.delete("x", "1").unwrap(), "not in b's local cache");
    assert_eq!(dbsize(&srv), 10, "but removed from Redis");
    assert_eq!(b.clear(&Selector::prefix("x", "p*")).unwrap(), 5);
    assert_eq!(dbsize(&srv), 5, "clear reached Redis for that prefix only");
    assert_eq!(keys(&srv, "blobcache:e:\x01x*").len(), 0);
    assert_eq!(remote_stats(&b).deleted, 6);
}

#[test]
fn cli_shares_through_redis_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let bin = env!("CARGO_BIN_EXE_blobcache");
    let file = tmp.path().join("body.json");
    std::fs::write(&file, json_payload(9, 3000)).unwrap();
    let run = |dir: &str, args: &[&str]| {
        Command::new(bin)
            .arg("--dir")
            .arg(tmp.path().join(dir))
            .args(args)
            .env("BLOBCACHE_REMOTE", srv.url())
            .output()
            .unwrap()
    };
    let put = run("a", &["put", "tmdb", "movie/1", file.to_str().unwrap()]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = run("b", &["get", "tmdb", "movie/1"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout, json_payload(9, 3000));
    let stats = run("b", &["--json", "stats"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["remote"]["state"], "up", "{v}");
    assert_eq!(v["entries"], 1, "the hit was stored locally: {v}");

    let before = dbsize(&srv);
    let ro = run(
        "c",
        &[
            "--remote-read-only",
            "put",
            "tmdb",
            "movie/2",
            file.to_str().unwrap(),
        ],
    );
    assert!(ro.status.success());
    assert_eq!(dbsize(&srv), before, "--remote-read-only wrote nothing");

    let bad = Command::new(bin)
        .arg("--dir")
        .arg(tmp.path().join("d"))
        .args(["--remote", "redis://", "get", "tmdb", "movie/1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("error: remote cache"), "{err}");
}

/// The local blob file of `hash` in the cache directory `dir`.
fn blob_file(dir: &Path, hash: &blobcache::BlobHash) -> PathBuf {
    let hex = hash.to_hex();
    dir.join("blobs").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn a_remote_hit_is_served_from_the_bytes_it_verified_and_stored_as_it_came() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let sync = RemoteOptions::new(srv.url()).sync_writes(true);
    let level = |n| StoreOptions::default().compression_level(n);
    let a = Store::open(tmp.path().join("a"), level(19).remote(sync.clone())).unwrap();
    let b_dir = tmp.path().join("b");
    let b = Store::open(&b_dir, level(1).remote(sync)).unwrap();
    // Over the inline threshold once compressed: a blob file on both sides.
    let mut body = json_payload(21, 400_000);
    body.extend(random(22, 40_000));
    let put = a.put("tmdb", "big", &body, &PutOptions::new()).unwrap();
    assert!(!put.inline && put.compressed, "{put:?}");
    let plain = Store::open(tmp.path().join("c"), level(1)).unwrap();
    let level1 = plain.put("tmdb", "big", &body, &PutOptions::new()).unwrap();
    assert_ne!(level1.stored_size, put.stored_size, "the levels differ");

    // B's blob file is damaged right after B writes it: a store that read
    // the entry back to serve it would find the damage and miss; the hit
    // is served from the bytes verified when they came from Redis.
    let victim = blob_file(&b_dir, &put.hash);
    let hook = blobcache::test_hooks::on_blob_placed(put.hash, move || {
        let mut bytes = std::fs::read(&victim).expect("B's blob file is in place");
        bytes[1000] ^= 0x01;
        std::fs::write(&victim, bytes).unwrap();
    });
    let hit = b.get("tmdb", "big").unwrap().expect("remote hit");
    b.flush().unwrap(); // the hit is stored (and damaged) by now
    drop(hook);
    assert_eq!(hit.data, body);
    assert_eq!(
        hit.meta.stored_size, put.stored_size,
        "stored as it came (level 19), not compressed again at B's level"
    );
    assert_eq!(remote_stats(&b).hits, 1);
    // The damaged local copy is found by the next read, dropped, and never
    // served; the one after reads through again.
    assert!(b.get("tmdb", "big").unwrap().is_none());
    assert_eq!(b.stats().unwrap().corrupt, 1);
    assert_eq!(b.get("tmdb", "big").unwrap().unwrap().data, body);
    b.flush().unwrap();
    let blob_key = format!("blobcache:b:{}", put.hash.to_hex());
    let in_redis: Vec<u8> = redis::cmd("GET")
        .arg(&blob_key)
        .query(&mut redis_con(&srv))
        .unwrap();
    assert_eq!(
        std::fs::read(blob_file(&b_dir, &put.hash)).unwrap(),
        in_redis
    );

    // Streamed, a remote hit is served from the verified bytes too.
    let small = json_payload(23, 3000);
    a.put("tmdb", "small", &small, &PutOptions::new()).unwrap();
    let mut reader = b.get_reader("tmdb", "small").unwrap().expect("hit");
    let mut streamed = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut streamed).unwrap();
    assert_eq!(streamed, small);
    assert_eq!(remote_stats(&b).hits, 3);
}

#[test]
fn the_background_writer_sends_the_stored_bytes_of_the_put() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let dir = tmp.path().join("a");
    let body = json_payload(31, 8000);
    let z = |level| zstd::bulk::compress(&body, level).unwrap();
    let (z19, z1) = (z(19), z(1));
    assert_ne!(z19, z1);
    let open_at = |level| {
        let opts = StoreOptions::default().compression_level(level);
        Store::open(&dir, opts.remote(RemoteOptions::new(srv.url()))).unwrap()
    };
    let a = open_at(19);
    a.put("tmdb", "first", &body, &PutOptions::new()).unwrap();
    drop(a);
    // Reopened at another level, a put of the same payload reuses the
    // level-19 blob: that is what the store holds, so that is what is sent
    // (compressing the payload again would send a level-1 frame).
    let a = open_at(1);
    let again = a.put("tmdb", "again", &body, &PutOptions::new()).unwrap();
    assert!(again.inline && again.deduplicated, "{again:?}");
    a.flush().unwrap();
    let contains = |v: &[u8], z: &[u8]| v.windows(z.len()).any(|w| w == z);
    let mut con = redis_con(&srv);
    for key in [
        &b"blobcache:e:\x04tmdbfirst"[..],
        b"blobcache:e:\x04tmdbagain",
    ] {
        let v: Vec<u8> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert!(contains(&v, &z19) && !contains(&v, &z1), "{key:?}");
    }
    let r = remote_stats(&a);
    assert_eq!((r.writes, r.dropped), (1, 0), "{r:?}");
}

/// Holds every write command on `srv` (`CLIENT PAUSE ... WRITE`) until
/// the guard is dropped: the background writer blocks in its request.
struct WritesPaused(redis::Connection);

impl WritesPaused {
    fn on(srv: &RedisServer) -> WritesPaused {
        let mut con = redis_con(srv);
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(600_000)
            .arg("WRITE")
            .query(&mut con)
            .unwrap();
        WritesPaused(con)
    }
}

impl Drop for WritesPaused {
    fn drop(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut self.0);
    }
}

#[test]
fn a_full_background_queue_makes_puts_wait_instead_of_dropping_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let remote = RemoteOptions::new(srv.url())
        .queue_capacity(2)
        .queue_wait(Duration::from_secs(600))
        .timeout(Duration::from_secs(600));
    let a = open(&tmp.path().join("a"), remote);
    let paused = WritesPaused::on(&srv);
    let n = 20u64;
    let putter = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                a.put(
                    "q",
                    format!("k{i}"),
                    &json_payload(i, 300),
                    &PutOptions::new(),
                )
                .expect("put");
            }
        })
    };
    // Redis takes no write: the queue fills and a put waits for room.
    while remote_stats(&a).waited == 0 {
        assert!(
            !putter.is_finished(),
            "20 puts cannot all fit: {:?}",
            remote_stats(&a)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!putter.is_finished(), "a put is waiting");
    assert_eq!(remote_stats(&a).dropped, 0);
    drop(paused);
    putter.join().expect("putter");
    a.flush().unwrap();
    let r = remote_stats(&a);
    assert_eq!((r.writes, r.dropped, r.queued), (n, 0, 0), "{r:?}");
    assert_eq!(dbsize(&srv), n, "every write reached Redis");
}

#[test]
fn without_a_queue_wait_a_full_queue_drops_writes_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let remote = RemoteOptions::new(srv.url())
        .queue_capacity(1)
        .queue_wait(Duration::ZERO)
        .timeout(Duration::from_secs(600));
    let a = open(&tmp.path().join("a"), remote);
    let paused = WritesPaused::on(&srv);
    let n = 10u64;
    for i in 0..n {
        a.put("q", format!("k{i}"), b"{}", &PutOptions::new())
            .expect("a put never fails for a full queue");
    }
    // At most one write in flight and one queued; the rest are dropped.
    let r = remote_stats(&a);
    assert!(r.dropped >= n - 2, "{r:?}");
    drop(paused);
    a.flush().unwrap();
    let r = remote_stats(&a);
    assert_eq!(
        r.writes + r.dropped,
        n,
        "every write sent or counted: {r:?}"
    );
    assert_eq!(dbsize(&srv), r.writes);
    assert_eq!(r.waited, 0, "no wait asked for");
}

/// Payload `i` of the pending-hit tests: JSON of a few KiB (inside its
/// entry), and every third one incompressible (a blob kept apart).
fn hit_payload(i: u64) -> Vec<u8> {
    match i % 3 {
        0 => random(100 + i, 60_000),
        _ => json_payload(i, 1000 + (i as usize % 7) * 3000),
    }
}

/// A store in `dir` that `a` wrote `n` hit payloads through `srv` for.
fn shared_entries(srv: &RedisServer, dir: &Path, n: u64) -> Store {
    let a = open(dir, RemoteOptions::new(srv.url()).sync_writes(true));
    for i in 0..n {
        a.put("t", format!("k{i}"), &hit_payload(i), &PutOptions::new())
            .unwrap();
    }
    a
}

#[test]
fn a_remote_hit_is_served_at_once_and_stored_by_flush_or_close() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let n = 60;
    let _a = shared_entries(&srv, &tmp.path().join("a"), n);
    let (b_dir, c_dir) = (tmp.path().join("b"), tmp.path().join("c"));
    let b = open(&b_dir, RemoteOptions::new(srv.url()));
    let c = open(&c_dir, RemoteOptions::new(srv.url()));
    for i in 0..n {
        for s in [&b, &c] {
            let hit = s.get("t", format!("k{i}")).unwrap().expect("remote hit");
            assert_eq!(hit.data, hit_payload(i), "k{i}");
        }
    }
    // Redis goes away: every key is served again, from what was verified
    // (pending or stored), and none goes to Redis again.
    drop(srv);
    for i in 0..n {
        let k = format!("k{i}");
        assert!(b.contains("t", &k).unwrap(), "{k}");
        assert_eq!(b.get("t", &k).unwrap().unwrap().data, hit_payload(i));
    }
    let rb = remote_stats(&b);
    assert_eq!((rb.hits, rb.misses, rb.errors), (n, 0, 0), "{rb:?}");
    // flush() stores what is pending; closing the last handle does too.
    b.flush().unwrap();
    drop(b);
    drop(c);
    for dir in [&b_dir, &c_dir] {
        let local = Store::open(dir, StoreOptions::default()).unwrap();
        assert_eq!(local.stats().unwrap().entries, n, "{}", dir.display());
        for i in 0..n {
            let hit = local.get("t", format!("k{i}")).unwrap().expect("kept");
            assert_eq!(hit.data, hit_payload(i));
        }
        assert_clean(&local);
    }
}

#[test]
fn a_local_change_while_a_hit_is_pending_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let _a = shared_entries(&srv, &tmp.path().join("a"), 3);
    let b_dir = tmp.path().join("b");
    let b = open(&b_dir, RemoteOptions::new(srv.url()));
    let local = b"{\"local\":true}".to_vec();

    // A local put lands while the hit is being stored, after its blob is
    // placed and before its record goes in: the put is newer and stays.
    let raced = Arc::new(AtomicBool::new(false));
    let hook = {
        let (b, local, raced) = (b.clone(), local.clone(), raced.clone());
        let hash = blobcache::BlobHash::of(&hit_payload(0));
        blobcache::test_hooks::on_blob_placed(hash, move || {
            if !raced.swap(true, Ordering::SeqCst) {
                b.put("t", "k0", &local, &PutOptions::new()).unwrap();
            }
        })
    };
    assert_eq!(b.get("t", "k0").unwrap().unwrap().data, hit_payload(0));
    b.flush().unwrap();
    drop(hook);
    assert!(
        raced.load(Ordering::SeqCst),
        "the hit was stored after it was served"
    );
    assert_eq!(b.get("t", "k0").unwrap().unwrap().data, local);

    // A put or a delete right after the hit: the pending hit is dropped.
    assert_eq!(b.get("t", "k1").unwrap().unwrap().data, hit_payload(1));
    b.put("t", "k1", &local, &PutOptions::new()).unwrap();
    assert_eq!(b.get("t", "k1").unwrap().unwrap().data, local);
    assert_eq!(b.get("t", "k2").unwrap().unwrap().data, hit_payload(2));
    b.delete("t", "k2").unwrap();
    assert!(!b.contains("t", "k2").unwrap());
    drop(srv); // so a get cannot read k2 through again
    assert!(b.get("t", "k2").unwrap().is_none(), "deleted, not served");
    b.flush().unwrap();
    drop(b);
    let b = Store::open(&b_dir, StoreOptions::default()).unwrap();
    for k in ["k0", "k1"] {
        assert_eq!(b.get("t", k).unwrap().unwrap().data, local, "{k}");
    }
    assert!(b.get("t", "k2").unwrap().is_none());
    assert_clean(&b);
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    match parts[..] {
        // Read `n` keys through the remote, each checked, each followed by
        // an acknowledged local put; then hold on until killed.
        ["hits", dir, url, n] => {
            let b = open(Path::new(dir), RemoteOptions::new(url));
            for i in 0..n.parse::<u64>().unwrap() {
                let hit = b.get("t", format!("k{i}")).unwrap().expect("remote hit");
                assert_eq!(hit.data, hit_payload(i), "k{i}");
                b.put(
                    "own",
                    format!("k{i}"),
                    &json_payload(i, 500),
                    &PutOptions::new(),
                )
                .unwrap();
                println!("ack {i}");
            }
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        _ => panic!("unknown worker {spec}"),
    }
}

#[test]
fn kill9_while_hits_are_pending_loses_nothing_acknowledged_and_serves_no_wrong_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path());
    let n = 400;
    let _a = shared_entries(&srv, &tmp.path().join("a"), n);
    let b_dir = tmp.path().join("b");
    let spec = format!("hits|{}|{}|{n}", b_dir.display(), srv.url());
    let mut child = spawn_worker(&spec);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let parse = |l: &str| l.strip_prefix("ack ").and_then(|k| k.parse::<u64>().ok());
    let mut last = None;
    wait_for_line(&mut out, |l| {
        last = parse(l).or(last);
        last.is_some_and(|k| k >= n / 2)
    })
    .expect("the worker read hits through");
    kill9(&mut child);
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let acked = rest.lines().filter_map(parse).chain(last).max().unwrap();

    // Without the remote: every acknowledged put is there, and every hit
    // kept is exact.
    let b = open_retry(&b_dir, StoreOptions::default());
    for i in 0..=acked {
        let own = b.get("own", format!("k{i}")).unwrap();
        let own = own.unwrap_or_else(|| panic!("acknowledged put k{i} lost"));
        assert_eq!(own.data, json_payload(i, 500));
    }
    let mut kept = 0;
    for i in 0..n {
        if let Some(hit) = b.get("t", format!("k{i}")).unwrap() {
            assert_eq!(hit.data, hit_payload(i), "k{i}");
            kept += 1;
        }
    }
    assert!(kept <= acked + 2, "{kept} kept of {acked} read");
    assert_clean(&b);
    drop(b);
    // With it, what was not kept reads through again, exact.
    let b = open_retry(
        &b_dir,
        StoreOptions::default().remote(RemoteOptions::new(srv.url())),
    );
    for i in 0..n {
        let hit = b.get("t", format!("k{i}")).unwrap().expect("read through");
        assert_eq!(hit.data, hit_payload(i), "k{i}");
    }
}
