//! The secret guard: payloads, headers, keys and streamed payloads holding
//! a configured secret are refused, the error never repeats the secret,
//! and a refused put leaves nothing behind.

mod common;

use std::io::{self, Read};

use blobcache::{Error, PutOptions, Store, StoreOptions};

const KEY: &str = "sk-live-4f1c9e2b7a";
const TOKEN: &str = "ghp_Zq81xLmN0pQ";

fn guarded() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().deny_secrets([KEY, TOKEN, ""]);
    let store = Store::open(dir.path(), opts).unwrap();
    (dir, store)
}

/// Asserts `err` is a refusal naming `place`, and that neither its message
/// nor its debug form shows any secret.
fn assert_refused(err: Error, place: &str) {
    let (shown, debug) = (err.to_string(), format!("{err:?}"));
    for secret in [KEY, TOKEN] {
        assert!(!shown.contains(secret), "message leaks: {shown}");
        assert!(!debug.contains(secret), "debug leaks: {debug}");
    }
    match err {
        Error::SecretInPayload { place: p, .. } => assert_eq!(p, place, "{shown}"),
        other => panic!("expected SecretInPayload, got {other:?}"),
    }
}

/// Asserts `err` refuses the payload of `sig` and nothing was kept.
fn assert_payload_refused(dir: &std::path::Path, store: &Store, err: Error, sig: &str) {
    assert_refused(err, "payload");
    assert!(store.get_stale("tmdb", sig).unwrap().is_none());
    assert_nothing_kept(dir, store);
}

/// Asserts the cache holds no entry, no blob and no staging file.
fn assert_nothing_kept(dir: &std::path::Path, store: &Store) {
    let stats = store.stats().unwrap();
    assert_eq!((stats.entries, stats.blobs, stats.puts), (0, 0, 0));
    for sub in ["blobs", "tmp"] {
        let left = common::files_under(&dir.join(sub));
        assert!(left.is_empty(), "{sub}/ still holds {left:?}");
    }
}

#[test]
fn payload_with_a_secret_is_refused() {
    let (dir, store) = guarded();
    let body = format!(r#"{{"results":[],"next":"/discover?api_key={KEY}&page=2"}}"#);
    let err = store
        .put("tmdb", "discover/1", body.as_bytes(), &PutOptions::new())
        .unwrap_err();
    assert_payload_refused(dir.path(), &store, err, "discover/1");
}

#[test]
fn header_value_with_a_secret_is_refused() {
    let (dir, store) = guarded();
    let opts = PutOptions::new()
        .header("Content-Type", "application/json")
        .header("X-Echo-Token", format!("Bearer {TOKEN}"));
    let err = store.put("gh", "repos", b"[]", &opts).unwrap_err();
    assert_refused(err, "header X-Echo-Token");
    assert_nothing_kept(dir.path(), &store);
}

#[test]
fn secret_in_the_signature_or_content_type_is_refused() {
    let (_dir, store) = guarded();
    let sig = format!("search?q=x&api_key={KEY}");
    let err = store
        .put("tmdb", &sig, b"{}", &PutOptions::new())
        .unwrap_err();
    assert_refused(err, "key");
    let ct = PutOptions::new().content_type(format!("text/plain; k={TOKEN}"));
    let err = store.put("tmdb", "a", b"{}", &ct).unwrap_err();
    assert_refused(err, "content type");
}

fn assert_no_headers_kept(store: &Store) {
    let hit = store.get("gh", "user").unwrap().unwrap();
    assert!(hit.meta.headers.is_empty(), "{:?}", hit.meta.headers);
}

#[test]
fn dropped_credential_headers_do_not_count() {
    let (_dir, store) = guarded();
    // Authorization is never stored, so carrying the token there is fine;
    // so is a header the store was told to drop.
    let dir2 = tempfile::tempdir().unwrap();
    let dropping = Store::open(
        dir2.path(),
        StoreOptions::default()
            .deny_secrets([KEY])
            .drop_header("X-Api-Key"),
    )
    .unwrap();
    let auth = PutOptions::new().header("Authorization", format!("Bearer {TOKEN}"));
    store.put("gh", "user", b"{}", &auth).unwrap();
    assert_no_headers_kept(&store);

    let with_key = auth.header("X-Api-Key", KEY);
    dropping.put("gh", "user", b"{}", &with_key).unwrap();
    assert_no_headers_kept(&dropping);
    // Without drop_header the same header is stored, so it is refused.
    let err = store.put("gh", "user", b"{}", &with_key).unwrap_err();
    assert_refused(err, "header X-Api-Key");
}

#[test]
fn clean_puts_pass_and_options_debug_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().deny_secrets([KEY, TOKEN]);
    let shown = format!("{opts:?}");
    assert!(!shown.contains(KEY) && !shown.contains(TOKEN), "{shown}");
    let store = Store::open(dir.path(), opts).unwrap();
    // Part of a secret is not the secret.
    let body = format!("{{\"prefix\":\"{}\"}}", &KEY[..KEY.len() - 1]);
    store
        .put("a", "b", body.as_bytes(), &PutOptions::new())
        .unwrap();
    assert_eq!(store.get("a", "b").unwrap().unwrap().data, body.as_bytes());
}

/// A stream of `len` filler bytes with `secret` written at `at`, handed
/// out in reads of at most `step` bytes.
struct Planted {
    pos: usize,
    len: usize,
    at: usize,
    secret: &'static [u8],
    step: usize,
}

impl Read for Planted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step).min(self.len - self.pos);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i;
            *b = match p.checked_sub(self.at) {
                Some(k) if k < self.secret.len() => self.secret[k],
                _ => FILL[p % FILL.len()],
            };
        }
        self.pos += n;
        Ok(n)
    }
}

const FILL: &[u8] = b"{\"k\":[1,2,3],\"v\":\"abc\"}\n";
const MIB: usize = 1 << 20;

fn planted(at: usize, step: usize) -> Planted {
    Planted {
        pos: 0,
        len: 10 * MIB,
        at,
        secret: TOKEN.as_bytes(),
        step,
    }
}

#[test]
fn streamed_secret_across_chunk_boundaries_is_refused_and_nothing_is_kept() {
    let half = TOKEN.len() / 2;
    // Straddling the in-memory/streamed seam (8 MiB), a 128 KiB chunk seam
    // of the streaming part, and an odd read size.
    let cases = [
        (8 * MIB - half, 64 * 1024),
        (9 * MIB - 3, 128 * 1024),
        (9 * MIB + 77, 4093),
    ];
    for (at, step) in cases {
        let (dir, store) = guarded();
        let err = store
            .put_reader("tmdb", "dump", planted(at, step), &PutOptions::new())
            .unwrap_err();
        assert_payload_refused(dir.path(), &store, err, "dump");
    }
}

#[test]
fn small_streamed_secret_is_refused_and_clean_stream_is_stored() {
    let (dir, store) = guarded();
    let small = Planted {
        len: 4096,
        ..planted(4000, 7)
    };
    let err = store
        .put_reader("a", "small", small, &PutOptions::new())
        .unwrap_err();
    assert_refused(err, "payload");
    assert_nothing_kept(dir.path(), &store);

    let clean = Planted {
        secret: b"",
        ..planted(0, 128 * 1024)
    };
    let report = store
        .put_reader("dump", "clean", clean, &PutOptions::new())
        .unwrap();
    assert_eq!(report.raw_size, 10 * MIB as u64);
    common::assert_clean(&store);
}
