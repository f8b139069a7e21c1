//! The `blobcache` command line, driven as a real process on real temp
//! directories: every subcommand's happy and error paths, exit codes,
//! binary-exact payloads, `--json` field names, and streaming in bounded
//! memory.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs the CLI on `dir` with `args`, feeding `stdin` from a thread.
fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = cli(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = thread::spawn(move || {
        // The child may not read its stdin at all: ignore broken pipes.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Exit code of a finished CLI run.
fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts exit code `want`, with the output in the message.
fn run_code(dir: &Path, args: &[&str], stdin: &[u8], want: i32) -> Output {
    let o = run(dir, args, stdin);
    assert_eq!(
        code(&o),
        want,
        "blobcache {args:?}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// Stdout parsed as one JSON document.
fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// Asserts `v` is an object with exactly the documented `fields`.
fn assert_fields(v: &Value, fields: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = fields.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "fields of {v}");
}

/// An error run: exit 2 and exactly one line on stderr, `error: ...`.
fn assert_one_line_error(o: &Output) -> String {
    assert_eq!(code(o), 2, "stderr: {}", stderr(o));
    let err = stderr(o);
    assert!(err.starts_with("error: "), "{err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    err
}

fn put(dir: &Path, backend: &str, sig: &str, payload: &[u8], extra: &[&str]) -> Output {
    let mut args = vec!["put", backend, sig, "-"];
    args.extend_from_slice(extra);
    run_code(dir, &args, payload, 0)
}

fn get(dir: &Path, backend: &str, sig: &str) -> Output {
    run(dir, &["get", backend, sig], b"")
}

/// Fields shared by `put --json` and entries (`get --meta`, `ls`).
const KEY_AND_BLOB_FIELDS: &[&str] = &[
    "backend",
    "signature",
    "hash",
    "raw_size",
    "stored_size",
    "compressed",
    "inline",
];

/// The other fields of an entry.
const ENTRY_ONLY_FIELDS: &[&str] = &[
    "category",
    "content_type",
    "headers",
    "created_at_ms",
    "fetched_at_ms",
    "expires_at_ms",
    "expired",
    "hits",
    "last_access_ms",
    "pinned",
];

fn assert_entry_fields(v: &Value) {
    assert_fields(v, &[KEY_AND_BLOB_FIELDS, ENTRY_ONLY_FIELDS].concat());
}

fn all_bytes() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    // Invalid UTF-8 sequences, CR/LF and NULs around them.
    v.extend_from_slice(b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\r\n\0\0\xf0\x28\x8c\x28");
    v.extend((0..=255u8).rev());
    v
}

#[test]
fn put_then_get_round_trips_and_reports_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let body = br#"{"id":603,"title":"The Matrix"}"#;
    let o = put(dir.path(), "tmdb", "movie/603", body, &[]);
    let line = String::from_utf8(o.stdout).unwrap();
    assert!(
        line.starts_with(&blake3::hash(body).to_hex().to_string()),
        "{line}"
    );
    assert!(line.contains("31 B"), "{line}");
    let o = run_code(dir.path(), &["get", "tmdb", "movie/603"], b"", 0);
    assert_eq!(o.stdout, body);
}

#[test]
fn binary_payloads_are_byte_exact_through_stdin_stdout_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let payload = all_bytes();
    put(dir.path(), "bin", "stdin", &payload, &[]);
    assert_eq!(get(dir.path(), "bin", "stdin").stdout, payload);

    let file = dir.path().join("in.bin");
    std::fs::write(&file, &payload).unwrap();
    run_code(
        dir.path(),
        &["put", "bin", "file", file.to_str().unwrap()],
        b"",
        0,
    );
    let out = dir.path().join("out.bin");
    run_code(
        dir.path(),
        &["get", "bin", "file", "-o", out.to_str().unwrap()],
        b"",
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), payload);
    // A larger random payload goes to a blob file rather than inline.
    let mut big = vec![0u8; 300 * 1024];
    Rng::new(7).fill(&mut big);
    put(dir.path(), "bin", "big", &big, &[]);
    assert_eq!(get(dir.path(), "bin", "big").stdout, big);
}

#[test]
fn get_exit_codes_hit_miss_error() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "b", "s", b"x", &[]);
    assert_eq!(code(&get(dir.path(), "b", "s")), 0);
    let miss = get(dir.path(), "b", "nope");
    assert_eq!(code(&miss), 1);
    assert!(miss.stdout.is_empty());
    // An empty backend is invalid input: an error, not a miss.
    let err = assert_one_line_error(&get(dir.path(), "", "s"));
    assert!(err.contains("backend"), "{err}");
    // A file where the cache directory should be.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a cache").unwrap();
    let err = assert_one_line_error(&get(&file, "b", "s"));
    assert!(err.contains("plain-file"), "{err}");
}

#[test]
fn missing_cache_dir_is_a_miss_or_empty_and_is_not_created() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("never-created");
    assert_eq!(code(&get(&dir, "b", "s")), 1);
    assert_eq!(code(&run(&dir, &["get", "b", "s", "--meta"], b"")), 1);
    let ls = run_code(&dir, &["ls"], b"", 0);
    assert!(ls.stdout.is_empty());
    assert_eq!(
        json(&run_code(&dir, &["--json", "ls"], b"", 0)),
        Value::Array(vec![])
    );
    let stats = json(&run_code(&dir, &["--json", "stats"], b"", 0));
    assert_eq!(stats["entries"], 0);
    assert_eq!(code(&run(&dir, &["rm", "b", "s"], b"")), 1);
    assert_eq!(
        code(&run(&dir, &["touch", "b", "s", "--ttl", "1h"], b"")),
        1
    );
    assert_eq!(code(&run(&dir, &["health"], b"")), 0);
    assert_eq!(code(&run(&dir, &["verify"], b"")), 0);
    assert_eq!(
        json(&run_code(&dir, &["--json", "clear", "--all"], b"", 0))["removed"],
        0
    );
    assert!(!dir.exists(), "a read-only command created the cache");
}

#[test]
fn put_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_code(
        dir.path(),
        &["--json", "put", "tmdb", "movie/1", "-", "--ttl", "90s"],
        b"{}",
        0,
    );
    let v = json(&o);
    assert_fields(
        &v,
        &[KEY_AND_BLOB_FIELDS, &["deduplicated", "expires_at_ms"]].concat(),
    );
    assert_eq!(v["hash"], blake3::hash(b"{}").to_hex().as_str());
    assert_eq!(v["raw_size"], 2);
    assert_eq!(v["deduplicated"], false);
    let again = json(&run_code(
        dir.path(),
        &["--json", "put", "tmdb", "movie/2", "-"],
        b"{}",
        0,
    ));
    assert_eq!(again["deduplicated"], true);
}

#[test]
fn put_options_and_get_meta() {
    let dir = tempfile::tempdir().unwrap();
    put(
        dir.path(),
        "tmdb",
        "list/1",
        b"[1,2]",
        &[
            "--category",
            "list",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer secret",
        ],
    );
    let v = json(&run_code(
        dir.path(),
        &["--json", "get", "tmdb", "list/1", "--meta"],
        b"",
        0,
    ));
    assert_entry_fields(&v);
    assert_eq!(v["category"], "list");
    assert_eq!(v["expired"], false);
    assert_eq!(
        v["headers"],
        serde_json::json!([{"name": "Content-Type", "value": "application/json"}])
    );
    let ttl = v["expires_at_ms"].as_u64().unwrap() - v["created_at_ms"].as_u64().unwrap();
    assert_eq!(ttl, 24 * 3600 * 1000);
    let human = run_code(dir.path(), &["get", "tmdb", "list/1", "--meta"], b"", 0);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("header      Content-Type: application/json"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    // --meta with -o: payload to the file, metadata to stdout.
    let out = dir.path().join("list.json");
    let o = run_code(
        dir.path(),
        &[
            "get",
            "tmdb",
            "list/1",
            "--meta",
            "-o",
            out.to_str().unwrap(),
        ],
        b"",
        0,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"[1,2]");
    assert!(
        String::from_utf8(o.stdout)
            .unwrap()
            .contains("category    list")
    );
}

#[test]
fn put_rejects_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["put", "b", "s", "-", "--ttl", "soon"][..],
        &["put", "b", "s", "-", "--header", "no colon here"],
        &["put", "b", "s", "-", "--category", ""],
    ] {
        let o = run(dir.path(), args, b"x");
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    }
    let missing = dir.path().join("no-such-file.json");
    let err = assert_one_line_error(&run(
        dir.path(),
        &["put", "b", "s", missing.to_str().unwrap()],
        b"",
    ));
    assert!(err.contains("no-such-file.json"), "{err}");
    assert_eq!(code(&get(dir.path(), "b", "s")), 1, "nothing was stored");
}

#[test]
fn put_into_an_unwritable_place_says_so() {
    let parent = tempfile::tempdir().unwrap();
    // root ignores file modes, so as root a read-only filesystem (sysfs)
    // stands in for a directory without write permission.
    let dir = if rustix::process::geteuid().is_root() {
        let sys = Path::new("/sys/blobcache-cli-test");
        if !Path::new("/sys/kernel").exists() {
            eprintln!("skipped: running as root and no sysfs to stand in");
            return;
        }
        sys.to_path_buf()
    } else {
        use std::os::unix::fs::PermissionsExt;
        let locked = parent.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        locked.join("cache")
    };
    let err = assert_one_line_error(&run(&dir, &["put", "b", "s", "-"], b"payload"));
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.to_lowercase().contains("permi"), "{err}");
}

#[test]
fn expired_entries_are_misses_unless_stale() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "b", "old", b"old data", &["--ttl", "0s"]);
    assert_eq!(code(&get(dir.path(), "b", "old")), 1);
    assert_eq!(
        code(&run(dir.path(), &["get", "b", "old", "--meta"], b"")),
        1
    );
    let o = run_code(dir.path(), &["get", "b", "old", "--stale"], b"", 0);
    assert_eq!(o.stdout, b"old data");
    let v = json(&run_code(
        dir.path(),
        &["--json", "get", "b", "old", "--meta", "--stale"],
        b"",
        0,
    ));
    assert_eq!(v["expired"], true);
}

#[test]
fn rm_removes_and_reports_absent_entries() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "b", "s", b"x", &[]);
    let o = run_code(dir.path(), &["rm", "b", "s"], b"", 0);
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "removed b/s\n");
    assert_eq!(code(&get(dir.path(), "b", "s")), 1);
    let v = json(&run_code(dir.path(), &["--json", "rm", "b", "s"], b"", 1));
    assert_fields(&v, &["backend", "signature", "found"]);
    assert_eq!(v["found"], false);
    assert_one_line_error(&run(dir.path(), &["rm", "", "s"], b""));
}

#[test]
fn touch_sets_a_new_ttl_and_revives_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "b", "s", b"x", &["--ttl", "0s"]);
    assert_eq!(code(&get(dir.path(), "b", "s")), 1);
    let v = json(&run_code(
        dir.path(),
        &["--json", "touch", "b", "s", "--ttl", "2h"],
        b"",
        0,
    ));
    assert_fields(&v, &["backend", "signature", "found", "expires_at_ms"]);
    assert_eq!(v["found"], true);
    assert_eq!(code(&get(dir.path(), "b", "s")), 0);
    let o = run_code(dir.path(), &["touch", "b", "s", "--ttl", "3d"], b"", 0);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("expires in 2days 23h"), "{text}");
    run_code(dir.path(), &["touch", "b", "absent", "--ttl", "1h"], b"", 1);
    assert_eq!(
        code(&run(dir.path(), &["touch", "b", "s"], b"")),
        2,
        "--ttl is required"
    );
}

fn ls_lines(dir: &Path, args: &[&str]) -> Vec<String> {
    let o = run_code(dir, args, b"", 0);
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn ls_selects_by_backend_prefix_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "tmdb", "movie/1", b"1", &[]);
    put(d, "tmdb", "movie/2", b"22", &["--ttl", "0s"]);
    put(d, "tmdb", "tv/1", b"333", &[]);
    put(d, "tmdb2", "movie/9", b"4444", &[]);
    assert_eq!(
        ls_lines(d, &["ls"]),
        [
            "tmdb\tmovie/1",
            "tmdb\tmovie/2",
            "tmdb\ttv/1",
            "tmdb2\tmovie/9"
        ]
    );
    assert_eq!(ls_lines(d, &["ls", "tmdb"]).len(), 3);
    assert_eq!(
        ls_lines(d, &["ls", "tmdb", "--prefix", "movie/"]),
        ["tmdb\tmovie/1", "tmdb\tmovie/2"]
    );
    assert_eq!(ls_lines(d, &["ls", "--expired"]), ["tmdb\tmovie/2"]);
    let long = ls_lines(d, &["ls", "tmdb2", "--long"]);
    assert_eq!(long.len(), 2, "{long:?}");
    for col in ["BACKEND", "SIGNATURE", "SIZE", "STORED", "EXPIRES", "HITS"] {
        assert!(long[0].contains(col), "{long:?}");
    }
    assert!(
        long[1].starts_with("tmdb2") && long[1].contains("4 B"),
        "{long:?}"
    );
    assert!(long[1].contains("in 2days 23h"), "{long:?}");
    let v = json(&run_code(d, &["--json", "ls", "tmdb"], b"", 0));
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for e in arr {
        assert_entry_fields(e);
    }
    assert_eq!(arr[1]["expired"], true);
    assert_eq!(arr[2]["raw_size"], 3);
    // --prefix needs a backend.
    assert_eq!(code(&run(d, &["ls", "--prefix", "movie/"], b"")), 2);
}

#[test]
fn clear_needs_confirmation_and_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (b, s) in [("a", "x/1"), ("a", "x/2"), ("a", "y/1"), ("b", "z")] {
        put(d, b, s, s.as_bytes(), &[]);
    }
    // Neither BACKEND nor --all: a usage error.
    assert_eq!(code(&run(d, &["clear"], b"")), 2);
    // Standard input is not a terminal: refuse, remove nothing.
    let err = assert_one_line_error(&run(d, &["clear", "a"], b"y\n"));
    assert!(err.contains("--yes"), "{err}");
    assert_one_line_error(&run(d, &["clear", "--all"], b"y\n"));
    assert_eq!(ls_lines(d, &["ls"]).len(), 4);

    let o = run_code(d, &["clear", "a", "--prefix", "x/", "--yes"], b"", 0);
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "removed 2 entries\n");
    assert_eq!(ls_lines(d, &["ls"]), ["a\ty/1", "b\tz"]);
    let v = json(&run_code(d, &["--json", "clear", "a", "--yes"], b"", 0));
    assert_fields(&v, &["removed"]);
    assert_eq!(v["removed"], 1);
    // Nothing matches: nothing to confirm.
    run_code(d, &["clear", "nobody"], b"", 0);
    run_code(d, &["clear", "--all", "--yes"], b"", 0);
    assert!(ls_lines(d, &["ls"]).is_empty());
}

#[test]
fn stats_reports_totals_ratios_and_backends() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let body = json_payload(3, 4000);
    put(d, "tmdb", "a", &body, &[]);
    put(d, "tmdb", "b", &body, &[]);
    put(d, "anilist", "c", b"{}", &["--ttl", "0s"]);
    get(d, "tmdb", "a");
    get(d, "tmdb", "zzz");
    let v = json(&run_code(d, &["--json", "stats"], b"", 0));
    assert_fields(
        &v,
        &[
            "dir",
            "entries",
            "live",
            "expired",
            "blobs",
            "raw_bytes",
            "unique_raw_bytes",
            "unique_stored_bytes",
            "blob_bytes",
            "index_bytes",
            "disk_bytes",
            "compression_ratio",
            "dedup_ratio",
            "hits",
            "misses",
            "stale_hits",
            "hit_ratio",
            "puts",
            "corrupt_dropped",
            "index_resets",
            "backends",
        ],
    );
    assert_eq!(
        (v["entries"].as_u64(), v["live"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(v["expired"], 1);
    assert_eq!(v["blobs"], 2);
    assert_eq!(v["raw_bytes"], 2 * 4000 + 2);
    assert_eq!(v["unique_raw_bytes"], 4000 + 2);
    assert!(v["compression_ratio"].as_f64().unwrap() > 1.5, "{v}");
    let dedup = v["dedup_ratio"].as_f64().unwrap();
    assert!((dedup - 8002.0 / 4002.0).abs() < 1e-9, "{v}");
    assert_eq!(
        (v["hits"].as_u64(), v["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["hit_ratio"], 0.5);
    let backends = v["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for b in backends {
        assert_fields(b, &["name", "entries", "live", "expired", "raw_bytes"]);
    }
    assert_eq!(backends[0]["name"], "anilist");
    assert_eq!(backends[0]["expired"], 1);
    assert_eq!(backends[1]["live"], 2);
    let text = String::from_utf8(run_code(d, &["stats"], b"", 0).stdout).unwrap();
    assert!(text.contains("entries   3 (2 live, 1 expired)"), "{text}");
    assert!(text.contains("dedup 2.00x"), "{text}");
}

/// Stores a 200 KiB random payload as a blob file and returns that file.
fn put_file_blob(d: &Path) -> std::path::PathBuf {
    let mut payload = vec![0u8; 200 * 1024];
    Rng::new(11).fill(&mut payload);
    put(d, "b", "big", &payload, &[]);
    put(d, "b", "small", b"fine", &[]);
    let hex = blake3::hash(&payload).to_hex().to_string();
    files_under(&d.join("blobs"))
        .into_iter()
        .find(|p| p.to_string_lossy().replace('/', "").ends_with(&hex))
        .expect("the blob file")
}

#[test]
fn health_and_verify_find_and_repair_a_damaged_blob() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let blob = put_file_blob(d);
    let v = json(&run_code(d, &["--json", "health"], b"", 0));
    assert_fields(
        &v,
        &[
            "dir", "exists", "healthy", "entries", "problems", "warnings",
        ],
    );
    assert_eq!(v["healthy"], true);
    let v = json(&run_code(d, &["--json", "verify"], b"", 0));
    assert_fields(
        &v,
        &[
            "entries",
            "blobs",
            "orphan_files",
            "problems",
            "repaired",
            "clean",
        ],
    );
    assert_eq!(v["entries"], 2);

    // Truncate the blob: health (sizes only) and verify both see it.
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    let v = json(&run_code(d, &["--json", "health"], b"", 1));
    assert_eq!(v["healthy"], false);
    assert_eq!(v["problems"][0]["kind"], "corrupt_blob");
    assert_fields(&v["problems"][0], &["kind", "subject", "detail"]);
    let o = run_code(d, &["verify"], b"", 1);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("b/big"), "{text}");
    assert!(text.contains("verify --repair"), "{text}");

    let v = json(&run_code(d, &["--json", "verify", "--repair"], b"", 0));
    assert_eq!(v["clean"], true);
    assert!(v["repaired"].as_u64().unwrap() >= 1, "{v}");
    run_code(d, &["verify"], b"", 0);
    run_code(d, &["health"], b"", 0);
    assert_eq!(code(&get(d, "b", "big")), 1);
    assert_eq!(get(d, "b", "small").stdout, b"fine");
}

#[test]
fn get_into_a_pipe_closed_early_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut payload = Vec::new();
    GenReader::new(5, 4 << 20)
        .read_to_end(&mut payload)
        .unwrap();
    put(dir.path(), "b", "s", &payload, &[]);
    let mut child = cli(dir.path())
        .args(["get", "b", "s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // stdout is dropped here, like `| head -c1` exiting.
    let out = child.wait_with_output().unwrap();
    assert_eq!(first[0], payload[0]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn get_output_file_is_atomic_and_errors_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "b", "s", b"payload", &[]);
    let target = dir.path().join("missing-dir").join("out");
    let err = assert_one_line_error(&run(
        dir.path(),
        &["get", "b", "s", "-o", target.to_str().unwrap()],
        b"",
    ));
    assert!(err.contains("missing-dir"), "{err}");
    // A miss leaves an existing output file untouched.
    let out = dir.path().join("out");
    std::fs::write(&out, b"before").unwrap();
    run_code(
        dir.path(),
        &["get", "b", "nope", "-o", out.to_str().unwrap()],
        b"",
        1,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"before");
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "put", "get", "rm", "touch", "ls", "clear", "stats", "health", "verify",
    ] {
        let o = run_code(dir.path(), &[sub, "--help"], b"", 0);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("Examples:"), "{sub}: {text}");
        assert!(
            text.contains(&format!("blobcache {sub}")) || text.contains("blobcache --json"),
            "{sub}"
        );
    }
    let top = String::from_utf8(run_code(dir.path(), &["--help"], b"", 0).stdout).unwrap();
    assert!(top.contains("Exit codes:"), "{top}");
}

#[test]
fn dir_comes_from_the_environment_and_quiet_silences_confirmations() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(bin())
        .args(["-q", "put", "b", "s", "-"])
        .env("BLOBCACHE_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(dir.path().join("VERSION").exists());
    assert_eq!(code(&get(dir.path(), "b", "s")), 0);
}

/// Peak resident memory of a running process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the child's peak RSS until it exits; returns the largest seen.
fn watch_until_exit(child: &mut Child) -> u64 {
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(peak_rss_kib(child.id()).unwrap_or(0));
        thread::sleep(Duration::from_millis(5));
    }
    peak
}

#[test]
fn a_100_mib_payload_streams_through_put_and_get_in_bounded_memory() {
    const LEN: u64 = 100 << 20;
    const LIMIT_KIB: u64 = 48 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (want, _) = hash_reader(GenReader::new(42, LEN)).unwrap();

    let mut child = cli(dir.path())
        .args(["put", "dump", "2026-11", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = thread::spawn(move || std::io::copy(&mut GenReader::new(42, LEN), &mut stdin));
    let put_peak = watch_until_exit(&mut child);
    assert_eq!(feeder.join().unwrap().unwrap(), LEN);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want.to_hex().to_string()));

    let mut child = cli(dir.path())
        .args(["get", "dump", "2026-11"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut hasher, mut n, mut get_peak) = (blake3::Hasher::new(), 0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = stdout.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        n += k as u64;
        get_peak = get_peak.max(peak_rss_kib(child.id()).unwrap_or(0));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!((hasher.finalize(), n), (want, LEN));
    eprintln!(
        "peak RSS: put {put_peak} KiB, get {get_peak} KiB, payload {} KiB",
        LEN >> 10
    );
    assert!(
        put_peak > 0 && get_peak > 0,
        "could not read /proc/<pid>/status"
    );
    assert!(put_peak < LIMIT_KIB, "put peaked at {put_peak} KiB");
    assert!(get_peak < LIMIT_KIB, "get peaked at {get_peak} KiB");
}
