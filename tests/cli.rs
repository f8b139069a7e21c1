//! The `blobcache` command line, driven as a real process on real temp
//! directories: every subcommand's happy and error paths, exit codes,
//! binary-exact payloads, `--json` field names, and streaming in bounded
//! memory.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

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
    // Printed to two units, rounded to the nearest hour.
    assert!(text.contains("expires in 3 days"), "{text}");
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
    assert!(long[1].contains("in 3 days"), "{long:?}");
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
            "remote",
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
        assert_fields(
            b,
            &[
                "name",
                "entries",
                "live",
                "expired",
                "raw_bytes",
                "stored_bytes",
                "blob_bytes",
            ],
        );
    }
    assert_eq!(backends[0]["name"], "anilist");
    assert_eq!(backends[0]["expired"], 1);
    assert_eq!(backends[1]["live"], 2);
    // tmdb's two entries share one blob: stored twice, one blob's bytes.
    let one = backends[1]["blob_bytes"].as_u64().unwrap();
    assert!(one > 0 && one < 4000, "{v}");
    assert_eq!(backends[1]["stored_bytes"].as_u64(), Some(2 * one));
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
            "dir", "exists", "healthy", "entries", "problems", "warnings", "remote",
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
        "put",
        "get",
        "fetch",
        "rm",
        "touch",
        "ls",
        "clear",
        "stats",
        "health",
        "verify",
        "gc",
        "export",
        "import",
        "serve",
        "completions",
        "man",
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

/// The fields of `gc --json`: the library's `GcReport` plus `entries_unused`.
const GC_FIELDS: &[&str] = &[
    "dry_run",
    "entries_expired",
    "entries_evicted",
    "blobs_deleted",
    "bytes_freed",
    "blobs_recompressed",
    "bytes_recompressed",
    "bytes_saved",
    "staging_removed",
    "disk_bytes_before",
    "disk_bytes_after",
    "max_size",
    "still_over_cap",
    "cancelled",
    "duration_ms",
    "entries_unused",
];

#[test]
fn gc_frees_what_rm_and_expiry_release_and_its_dry_run_says_so_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..6u64 {
        put(
            d,
            "b",
            &format!("gone{i}"),
            &noise(i, 100_000),
            &["--ttl", "0s"],
        );
        put(d, "b", &format!("rm{i}"), &noise(10 + i, 100_000), &[]);
        run_code(d, &["rm", "b", &format!("rm{i}")], b"", 0);
    }
    put(d, "b", "live", &noise(99, 100_000), &[]);
    let args = ["--json", "gc", "--grace", "0s"];
    let dry = json(&run_code(d, &[&args[..], &["--dry-run"]].concat(), b"", 0));
    let real = json(&run_code(d, &args, b"", 0));
    for field in ["entries_expired", "blobs_deleted", "bytes_freed"] {
        assert_eq!(dry[field], real[field], "{field}: dry {dry}, real {real}");
    }
    assert_eq!(real["blobs_deleted"], 12, "{real}");
    assert!(real["bytes_freed"].as_u64().unwrap() >= 1_200_000, "{real}");
    assert_eq!(get(d, "b", "live").stdout, noise(99, 100_000));
    assert!(
        files_under(&d.join("blobs")).len() == 1,
        "only the live blob is left"
    );
}

#[test]
fn gc_over_a_cap_it_cannot_meet_evicts_nothing_warns_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..20u64 {
        put(
            d,
            "b",
            &format!("k{i}"),
            format!("{{\"id\":{i}}}").as_bytes(),
            &[],
        );
    }
    let o = run_code(d, &["gc", "--max-size", "4KiB"], b"", 1);
    assert!(stderr(&o).contains("still over cap"), "{}", stderr(&o));
    let v = json(&run_code(
        d,
        &["--json", "gc", "--max-size", "4KiB"],
        b"",
        1,
    ));
    assert_eq!(
        (v["entries_evicted"].clone(), v["still_over_cap"].clone()),
        (0.into(), true.into())
    );
    let v = json(&run_code(d, &["--json", "stats"], b"", 0));
    assert_eq!(v["entries"], 20, "{v}");
}

#[test]
fn gc_removes_entries_expired_past_the_grace_and_dry_run_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "b", "old", b"old data", &["--ttl", "0s"]);
    put(d, "b", "live", b"live data", &[]);

    // The default grace (7 days) keeps the expired entry for get --stale.
    let v = json(&run_code(d, &["--json", "gc"], b"", 0));
    assert_fields(&v, GC_FIELDS);
    assert_eq!(v["entries_expired"], 0);
    assert_eq!(v["entries_unused"], Value::Null);
    assert_eq!(code(&run(d, &["get", "b", "old", "--stale"], b"")), 0);

    let v = json(&run_code(
        d,
        &["--json", "gc", "--grace", "0s", "--dry-run"],
        b"",
        0,
    ));
    assert_fields(&v, GC_FIELDS);
    assert_eq!(
        (v["dry_run"].clone(), v["entries_expired"].clone()),
        (Value::Bool(true), 1.into())
    );
    assert_eq!(code(&run(d, &["get", "b", "old", "--stale"], b"")), 0);

    let o = run_code(d, &["gc", "--grace", "0s", "--max-size", "1GiB"], b"", 0);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("expired     1 entry removed"), "{text}");
    assert!(text.contains("cap 1.0 GiB"), "{text}");
    assert!(!text.contains("dry run"), "{text}");
    assert_eq!(code(&run(d, &["get", "b", "old", "--stale"], b"")), 1);
    assert_eq!(get(d, "b", "live").stdout, b"live data");
}

#[test]
fn gc_unused_since_drops_entries_not_used_since_then() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "b", "s", b"x", &[]);
    // A time after the put: the entry was not used since.
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(120))
            .to_string();
    let v = json(&run_code(
        d,
        &["--json", "gc", "--unused-since", "1h"],
        b"",
        0,
    ));
    assert_eq!(v["entries_unused"], 0);
    let v = json(&run_code(
        d,
        &["--json", "gc", "--unused-since", &later],
        b"",
        0,
    ));
    assert_eq!(v["entries_unused"], 1);
    assert_eq!(code(&get(d, "b", "s")), 1);
}

#[test]
fn gc_of_no_cache_is_empty_and_bad_flags_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let absent = d.join("absent");
    let v = json(&run_code(&absent, &["--json", "gc"], b"", 0));
    assert_eq!(v["entries_expired"], 0);
    assert!(!absent.exists(), "gc of no cache creates none");
    for args in [
        &["gc", "--max-size", "lots"][..],
        &["gc", "--grace", "soon"],
        &["gc", "--recompress-level", "40"],
        &["gc", "--unused-since", "yesterday-ish"],
        &["gc", "--recompress-older-than", "3d"],
    ] {
        let o = run(d, args, b"");
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn gc_while_another_sweep_runs_fails_or_waits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "b", "s", b"x", &[]);
    // Hold the sweeper's lock as a running sweep would.
    let lock = std::fs::File::create(d.join("locks").join("gc.lock")).unwrap();
    lock.lock().unwrap();
    let err = assert_one_line_error(&run(d, &["gc"], b""));
    assert!(err.contains("already running"), "{err}");
    assert!(
        err.contains("--wait") && !err.contains("GcOptions"),
        "{err}"
    );

    let waiting = cli(d)
        .args(["--json", "gc", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whether it already blocks on the lock or has not started yet, it can
    // only finish once the lock is released.
    thread::sleep(Duration::from_millis(200));
    lock.unlock().unwrap();
    let o = waiting.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_fields(&json(&o), GC_FIELDS);
}

/// Puts a small JSON entry, a binary one and a file-sized one into `d`.
fn fill_for_export(d: &Path) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut big = Vec::new();
    GenReader::new(7, 300 << 10).read_to_end(&mut big).unwrap();
    let entries = vec![
        ("tmdb", "movie/603", br#"{"id":603}"#.to_vec()),
        ("tmdb", "bin", all_bytes()),
        ("anidb", "dump/1", big),
    ];
    for (b, s, payload) in &entries {
        put(d, b, s, payload, &[]);
    }
    entries
}

/// The fields of `export --json`.
const EXPORT_FIELDS: &[&str] = &[
    "entries",
    "skipped",
    "blobs",
    "blob_bytes",
    "archive_bytes",
    "signed",
];

/// The fields of `import --json`.
const IMPORT_FIELDS: &[&str] = &[
    "entries",
    "imported",
    "skipped",
    "rejected",
    "blobs_imported",
    "bytes_imported",
    "blobs_skipped",
    "bytes_skipped",
    "blobs_rejected",
    "bytes_rejected",
    "integrity",
];

#[test]
fn export_to_a_file_and_import_into_an_empty_dir_round_trips_byte_exact() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = fill_for_export(src.path());
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("cache.tar");
    let a = archive.to_str().unwrap();

    let v = json(&run_code(src.path(), &["--json", "export", a], b"", 0));
    assert_fields(&v, EXPORT_FIELDS);
    assert_eq!(v["entries"], 3);
    assert_eq!(
        v["archive_bytes"],
        std::fs::metadata(&archive).unwrap().len()
    );
    // Written through a temporary file that is gone now.
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cache.tar")]);

    let target = dst.path().join("cache");
    let o = run_code(&target, &["import", a], b"", 0);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.starts_with("imported 3 entries of 3"), "{text}");
    for (b, s, payload) in &entries {
        assert_eq!(&get(&target, b, s).stdout, payload, "{b}/{s}");
    }
    // Again: every key is held, nothing newer comes in.
    let v = json(&run_code(&target, &["--json", "import", a], b"", 0));
    assert_fields(&v, IMPORT_FIELDS);
    assert_eq!(
        (v["imported"].clone(), v["skipped"].clone()),
        (0.into(), 3.into())
    );
}

#[test]
fn export_to_stdout_pipes_into_import_of_another_dir() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = fill_for_export(src.path());
    let mut export = cli(src.path())
        .args(["--json", "export", "-", "--backend", "tmdb"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let import = cli(dst.path())
        .args(["--json", "import", "-"])
        .stdin(Stdio::from(export.stdout.take().unwrap()))
        .output()
        .unwrap();
    let exported = export.wait_with_output().unwrap();
    assert_eq!(code(&exported), 0, "{}", stderr(&exported));
    // stdout carried the archive: the report went to stderr.
    let report: Value = serde_json::from_slice(&exported.stderr).unwrap();
    assert_eq!(report["entries"], 2);
    assert_eq!(code(&import), 0, "{}", stderr(&import));
    assert_eq!(json(&import)["imported"], 2);
    for (b, s, payload) in &entries {
        let o = get(dst.path(), b, s);
        if *b == "tmdb" {
            assert_eq!(&o.stdout, payload, "{b}/{s}");
        } else {
            assert_eq!(code(&o), 1, "{b}/{s} was not selected");
        }
    }
}

#[test]
fn import_of_a_truncated_archive_fails_in_one_line_and_imports_nothing() {
    let src = tempfile::tempdir().unwrap();
    fill_for_export(src.path());
    let archive = run_code(src.path(), &["export", "-"], b"", 0).stdout;
    let dst = tempfile::tempdir().unwrap();
    put(dst.path(), "keep", "me", b"kept", &[]);
    for cut in (1..10).map(|k| archive.len() * k / 10) {
        let err = assert_one_line_error(&run(dst.path(), &["import", "-"], &archive[..cut]));
        assert!(err.contains("nothing from it was imported"), "{err}");
        let listed = json(&run_code(dst.path(), &["--json", "ls"], b"", 0));
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(1),
            "cut at {cut}: {listed}"
        );
    }
    let missing = dst.path().join("absent.tar");
    let err = assert_one_line_error(&run(
        dst.path(),
        &["import", missing.to_str().unwrap()],
        b"",
    ));
    assert!(err.contains("absent.tar"), "{err}");
}

#[test]
fn export_into_a_missing_directory_fails_and_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    put(src.path(), "b", "s", b"x", &[]);
    let target = src.path().join("no").join("such").join("cache.tar");
    let err = assert_one_line_error(&run(src.path(), &["export", target.to_str().unwrap()], b""));
    assert!(err.contains("no/such"), "{err}");
    assert!(!src.path().join("no").exists());
}

#[test]
fn import_merge_keep_and_replace() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    put(a.path(), "b", "k", b"held", &[]);
    put(b.path(), "b", "k", b"archived", &[]);
    put(b.path(), "b", "new", b"only in the archive", &[]);
    let archive = run_code(b.path(), &["export", "-"], b"", 0).stdout;

    let v = json(&run_code(
        a.path(),
        &["--json", "import", "-", "--merge", "keep"],
        &archive,
        0,
    ));
    assert_eq!(
        (v["imported"].clone(), v["skipped"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(get(a.path(), "b", "k").stdout, b"held");
    assert_eq!(get(a.path(), "b", "new").stdout, b"only in the archive");

    let v = json(&run_code(
        a.path(),
        &["--json", "import", "-", "--merge", "replace"],
        &archive,
        0,
    ));
    assert_eq!(v["imported"], 2);
    assert_eq!(get(a.path(), "b", "k").stdout, b"archived");

    assert_eq!(
        code(&run(
            a.path(),
            &["import", "-", "--merge", "newest"],
            &archive
        )),
        2
    );
}

#[test]
fn serve_owns_the_cache_while_other_processes_use_it_and_stops_at_stdin_eof() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut server = cli(d)
        .args(["serve", "--gc-interval", "1h", "--max-size", "1GiB"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap());
    let first = wait_for_line(&mut lines, |_| true).expect("serve printed a line");
    assert!(first.contains("as its owner"), "{first}");

    put(d, "tmdb", "movie/603", b"{\"id\":603}", &[]);
    assert_eq!(get(d, "tmdb", "movie/603").stdout, b"{\"id\":603}");
    let v = json(&run_code(d, &["--json", "stats"], b"", 0));
    assert_eq!(v["entries"], 1);
    // The other processes were guests: serve still owns the cache. A second
    // serve (stdin already at EOF) says so and stops at once.
    let v = json(&run_code(d, &["--json", "serve"], b"", 0));
    assert_fields(&v, &["dir", "owner", "owner_pid", "pid"]);
    assert_eq!(v["owner"], false);
    assert_eq!(v["owner_pid"], server.id());

    drop(server.stdin.take());
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(get(d, "tmdb", "movie/603").stdout, b"{\"id\":603}");
}

/// Runs the CLI on `dir` with extra environment variables and the default
/// log filter (no RUST_LOG), feeding `stdin`.
fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut c = cli(dir);
    c.env_remove("RUST_LOG").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_cmd(c, stdin)
}

/// The `--json get --meta` document of an entry.
fn meta(dir: &Path, backend: &str, sig: &str) -> Value {
    json(&run_code(
        dir,
        &["--json", "get", backend, sig, "--meta"],
        b"",
        0,
    ))
}

/// Milliseconds an entry lives: expires_at - created_at.
fn ttl_ms(v: &Value) -> u64 {
    v["expires_at_ms"].as_u64().unwrap() - v["created_at_ms"].as_u64().unwrap()
}

#[test]
fn categories_are_read_in_any_case_and_unknown_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "b", "t", b"1", &["--category", "Trending"]);
    let v = meta(d, "b", "t");
    assert_eq!(v["category"], "trending");
    assert_eq!(ttl_ms(&v), 3_600_000);
    put(d, "b", "o", b"2", &["--category", "OFFLINE_DUMP"]);
    assert_eq!(meta(d, "b", "o")["category"], "offline_dump");
    let err = assert_one_line_error(&run(
        d,
        &["put", "b", "x", "-", "--category", "trendy"],
        b"3",
    ));
    assert!(err.contains("\"trendy\""), "{err}");
    for name in ["metadata", "list", "schedule", "trending", "offline_dump"] {
        assert!(err.contains(name), "{err}");
    }
    assert_eq!(code(&get(d, "b", "x")), 1, "nothing stored");
    let listed = ls_lines(d, &["ls", "--category", "TRENDING"]);
    assert_eq!(listed, ["b\tt"]);
}

/// An RFC 3339 time `shift` from now, written in the zone `offset_h` hours
/// east of UTC, optionally without seconds.
fn rfc3339_at(shift: i64, offset_h: i64, seconds: bool) -> String {
    let now = std::time::SystemTime::now();
    let t = now + Duration::from_secs((shift + offset_h * 3600 + 86_400) as u64)
        - Duration::from_secs(86_400);
    let utc = humantime::format_rfc3339_seconds(t).to_string();
    let civil = utc.trim_end_matches('Z');
    let civil = if seconds { civil } else { &civil[..16] };
    match offset_h {
        0 => format!("{civil}Z"),
        h => format!("{civil}{}{:02}:00", if h > 0 { '+' } else { '-' }, h.abs()),
    }
}

/// Entries `export --accessed-since TIME` selects, with `env` set.
fn accessed_since(d: &Path, time: &str, env: &[(&str, &str)]) -> u64 {
    let tar = d.join("sel.tar");
    let o = run_env(
        d,
        &[
            "--json",
            "export",
            tar.to_str().unwrap(),
            "--accessed-since",
            time,
        ],
        env,
        b"",
    );
    assert_eq!(code(&o), 0, "{time}: {}", stderr(&o));
    json(&o)["entries"].as_u64().unwrap()
}

#[test]
fn times_take_any_offset_local_times_dates_and_durations_ago() {
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().join("cache");
    put(d, "b", "s", b"x", &[]);
    let utc = [("TZ", "UTC")];
    // An hour ahead / behind, in zones east and west of UTC, with and
    // without seconds.
    for (offset, seconds) in [(5, true), (-7, false), (0, false), (9, false)] {
        assert_eq!(
            accessed_since(d, &rfc3339_at(3600, offset, seconds), &utc),
            0
        );
        assert_eq!(
            accessed_since(d, &rfc3339_at(-3600, offset, seconds), &utc),
            1
        );
    }
    // A time without an offset is local: an hour ago in UTC+3 reads three
    // hours later on the wall clock (POSIX TZ: "XXX-3" is UTC+3).
    let wall = rfc3339_at(-3600, 3, false)[..16].to_string();
    assert_eq!(accessed_since(d, &wall, &[("TZ", "XXX-3")]), 1);
    assert_eq!(accessed_since(d, &wall, &utc), 0, "in UTC it is 2h ahead");
    assert_eq!(
        accessed_since(d, &wall.replace('T', " "), &[("TZ", "XXX-3")]),
        1
    );
    // Dates are local midnights; durations count back from now.
    assert_eq!(accessed_since(d, "2000-01-01", &utc), 1);
    assert_eq!(accessed_since(d, "2999-01-01", &utc), 0);
    assert_eq!(accessed_since(d, "1h", &utc), 1);
    let err = assert_one_line_error(&run(d, &["gc", "--unused-since", "soonish"], b""));
    assert!(
        err.contains("RFC 3339") && err.contains("duration ago"),
        "{err}"
    );

    // gc --unused-since --dry-run previews, changing nothing.
    let later = rfc3339_at(120, 2, true);
    let v = json(&run_code(
        d,
        &["--json", "gc", "--unused-since", &later, "--dry-run"],
        b"",
        0,
    ));
    assert_eq!(
        (v["entries_unused"].as_u64(), v["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(get(d, "b", "s").stdout, b"x", "still there");
    let v = json(&run_code(
        d,
        &["--json", "gc", "--unused-since", &later],
        b"",
        0,
    ));
    assert_eq!(v["entries_unused"], 1);
    assert_eq!(code(&get(d, "b", "s")), 1);
}

#[test]
fn put_pins_sets_content_type_and_honors_cache_control() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ct = ["--header", "Content-Type: application/json"];
    put(d, "b", "plain", b"{}", &ct);
    let v = meta(d, "b", "plain");
    assert_eq!(v["content_type"], "application/json");
    assert_eq!(v["pinned"], false);
    put(
        d,
        "b",
        "typed",
        b"<a/>",
        &[&ct[..], &["--content-type", "text/xml", "--pin"]].concat(),
    );
    let v = meta(d, "b", "typed");
    assert_eq!(
        (v["content_type"].as_str(), v["pinned"].as_bool()),
        (Some("text/xml"), Some(true))
    );
    let cc = [
        "--header",
        "Cache-Control: public, max-age=600",
        "--ttl",
        "5h",
    ];
    put(d, "b", "ignored", b"1", &cc);
    assert_eq!(
        ttl_ms(&meta(d, "b", "ignored")),
        5 * 3_600_000,
        "not honored unless asked"
    );
    put(
        d,
        "b",
        "honored",
        b"2",
        &[&cc[..], &["--honor-cache-control"]].concat(),
    );
    assert_eq!(ttl_ms(&meta(d, "b", "honored")), 600_000);
    put(
        d,
        "b",
        "fallback",
        b"3",
        &["--ttl", "5h", "--honor-cache-control"],
    );
    assert_eq!(ttl_ms(&meta(d, "b", "fallback")), 5 * 3_600_000);
    let o = put(
        d,
        "b",
        "nostore",
        b"4",
        &[
            "--header",
            "Cache-Control: no-store",
            "--honor-cache-control",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("not stored"));
    assert_eq!(code(&get(d, "b", "nostore")), 1);
    // An empty signature is refused (a shell variable that expanded to
    // nothing), for every command taking one.
    for args in [
        &["put", "b", "", "-"][..],
        &["get", "b", ""],
        &["rm", "b", ""],
    ] {
        let err = assert_one_line_error(&run(d, args, b"5"));
        assert!(err.contains("signature is empty"), "{err}");
    }
}

#[test]
fn deny_secret_and_drop_header_work_as_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = "k-3f9a1c77";
    let body = format!("{{\"next\":\"/p/2?api_key={secret}\"}}");
    let err = assert_one_line_error(&run(
        d,
        &["--deny-secret", secret, "put", "b", "s", "-"],
        body.as_bytes(),
    ));
    assert!(err.contains("secret") && !err.contains(secret), "{err}");
    let list = format!("other,{secret}");
    let env = [("BLOBCACHE_DENY_SECRET", list.as_str())];
    let err = assert_one_line_error(&run_env(d, &["put", "b", "s", "-"], &env, body.as_bytes()));
    assert!(!err.contains(secret), "{err}");
    assert_eq!(code(&get(d, "b", "s")), 1, "nothing stored");
    let o = run_env(d, &["put", "b", "s", "-"], &env, b"no key here");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains(secret));
    let h = [
        "--header",
        "X-Api-Key: abc",
        "--header",
        "X-Trace: t1",
        "--header",
        "ETag: e",
    ];
    put(
        d,
        "b",
        "flag",
        b"1",
        &[&["--drop-header", "x-api-key"][..], &h].concat(),
    );
    let names = |v: &Value| -> Vec<String> {
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&meta(d, "b", "flag")), ["X-Trace", "ETag"]);
    let args = [&["put", "b", "env", "-"][..], &h].concat();
    let o = run_env(
        d,
        &args,
        &[("BLOBCACHE_DROP_HEADER", "X-API-KEY,x-trace")],
        b"2",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(names(&meta(d, "b", "env")), ["ETag"]);
}

#[test]
fn export_of_a_missing_cache_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("cahce");
    let tar = dir.path().join("out.tar");
    let err = assert_one_line_error(&run(&typo, &["export", tar.to_str().unwrap()], b""));
    assert!(
        err.contains("cahce") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!typo.exists(), "no cache created");
    assert!(!tar.exists(), "no archive written");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing at all"
    );
    // To standard output too: nothing is written.
    let o = run(&typo, &["export", "-"], b"");
    assert_eq!(code(&o), 2);
    assert!(o.stdout.is_empty() && !typo.exists());
}

#[test]
fn messages_are_one_line_quiet_on_a_miss_and_free_of_internals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Usage errors: one line, exit 2.
    for args in [
        &["--bogus", "ls"][..],
        &["put"],
        &["put", "b"],
        &["gc", "--grace", "soon"],
        &["nosuchcommand"],
    ] {
        let err = assert_one_line_error(&run(d, args, b""));
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    put(d, "b", "s", b"x", &[]);
    // rm/touch of an absent entry: exit 1 and silence, like a get miss.
    for args in [
        &["rm", "b", "absent"][..],
        &["touch", "b", "absent", "--ttl", "1h"],
        &["get", "b", "absent"],
    ] {
        let o = run_env(d, args, &[], b"");
        assert_eq!(code(&o), 1, "{args:?}");
        assert_eq!((stderr(&o), o.stdout.len()), (String::new(), 0), "{args:?}");
    }
    // No temporary file names: the error names the destination.
    let dest = d.join("no-such-dir").join("out.json");
    let err = assert_one_line_error(&run(
        d,
        &["get", "b", "s", "-o", dest.to_str().unwrap()],
        b"",
    ));
    assert!(
        err.contains("no-such-dir/out.json") && !err.contains(".blobcache-"),
        "{err}"
    );
    // No fragments of the input: a JSON file, a gzip file, random bytes.
    let mut rnd = vec![0u8; 4096];
    Rng::new(5).fill(&mut rnd);
    let gzip = [&[0x1f, 0x8b, 0x08, 0x00][..], &rnd[..600]].concat();
    for (input, marker) in [
        (
            &b"{\"results\":[{\"title\":\"secret-looking\"}]}"[..],
            "secret-looking",
        ),
        (&gzip[..], ""),
        (&rnd[..], ""),
    ] {
        let err = assert_one_line_error(&run(d, &["import", "-"], input));
        assert!(err.contains("not a blobcache archive"), "{err}");
        assert!(err.is_ascii(), "raw bytes in {err:?}");
        assert!(marker.is_empty() || !err.contains(marker), "{err}");
    }
}

/// Standard output of a successful run, as text.
fn stdout_text(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(run_code(dir, args, b"", 0).stdout).unwrap()
}

#[test]
fn bash_completion_loads_and_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = d.join("blobcache.bash");
    std::fs::write(&script, stdout_text(d, &["completions", "bash"])).unwrap();
    // Load it in a real bash, then ask it what follows `blobcache ` and
    // `blobcache ls --so`.
    let probe = format!(
        "set -e; source {}; complete -p blobcache; \
         COMP_WORDS=(blobcache ''); COMP_CWORD=1; COMP_LINE='blobcache '; COMP_POINT=10; \
         _blobcache blobcache '' blobcache; echo \"subs: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(blobcache ls --so); COMP_CWORD=2; \
         _blobcache blobcache --so ls; echo \"flags: ${{COMPREPLY[*]}}\"",
        script.display()
    );
    let o = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &probe])
        .output()
        .expect("bash is required for this test");
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text} {}", stderr(&o));
    assert!(text.contains("-F _blobcache blobcache"), "{text}");
    let subs = text.lines().find(|l| l.starts_with("subs:")).unwrap();
    for sub in ["put", "get", "ls", "gc", "completions", "man"] {
        assert!(subs.split(' ').any(|w| w == sub), "{sub} in {subs}");
    }
    let flags = text.lines().find(|l| l.starts_with("flags:")).unwrap();
    assert!(flags.contains("--sort"), "{flags}");
    for shell in ["zsh", "fish"] {
        let s = stdout_text(d, &["completions", shell]);
        assert!(
            s.contains("blobcache") && s.contains("completions"),
            "{shell}"
        );
    }
    let err = assert_one_line_error(&run(d, &["completions", "tcsh"], b""));
    assert!(err.contains("bash"), "{err}");
    assert!(!d.join("VERSION").exists(), "no cache created");
}

#[test]
fn man_page_renders_with_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let page = stdout_text(d, &["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH blobcache 1"),
        "{page:.200}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section}");
    }
    // Every global flag's environment variable is named beside it.
    for var in [
        "BLOBCACHE_DIR",
        "BLOBCACHE_JSON",
        "BLOBCACHE_QUIET",
        "BLOBCACHE_OWNER_TIMEOUT",
        "BLOBCACHE_REMOTE",
        "BLOBCACHE_REMOTE_READ_ONLY",
    ] {
        assert!(page.contains(var), "{var} missing from the man page");
    }
    // Rendered by groff when present (.ci/run installs it); otherwise only
    // the roff structure above is checked.
    let Ok(o) = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(page.as_bytes())?;
            c.wait_with_output()
        })
    else {
        eprintln!("groff not found: only the roff structure was checked");
        return;
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "groff warnings");
    let o = std::process::Command::new("groff")
        .args(["-man", "-Tascii", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(page.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    for word in [
        "NAME",
        "SYNOPSIS",
        "--dir",
        "--json",
        "fetch",
        "blobcache-completions(1)",
    ] {
        assert!(text.contains(word), "{word} in {text:.400}");
    }
}

#[test]
fn verbose_says_what_it_does_and_keeps_sled_below() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "b", "s", b"x", &[]);
    let o = run_env(d, &["-v", "get", "b", "s"], &[], b"");
    assert_eq!(code(&o), 0);
    let err = stderr(&o);
    assert!(err.contains("opened") && err.contains("owns it"), "{err}");
    let env = run_env(d, &["get", "b", "s"], &[("BLOBCACHE_VERBOSE", "1")], b"");
    assert!(stderr(&env).contains("opened"), "{}", stderr(&env));
    // -vvv traces our own crate; sled stays at info (it printed thousands
    // of lines for one get at trace).
    let o = run_env(d, &["-vvv", "get", "b", "s"], &[], b"");
    assert_eq!(code(&o), 0);
    let lines = stderr(&o).lines().count();
    assert!((1..200).contains(&lines), "{lines} lines: {}", stderr(&o));
    let quiet = run_env(d, &["get", "b", "s"], &[], b"");
    assert_eq!(stderr(&quiet), "");
}

#[test]
fn ttls_and_expiries_print_in_whole_units() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (ttl, shown) in [
        ("1y", "in 1 year"),
        ("90m", "in 1h 30m"),
        ("3d", "in 3 days"),
    ] {
        let o = put(d, "b", ttl, b"x", &["--ttl", ttl]);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains(&format!("expires {shown}")), "{ttl}: {text}");
    }
    let long = ls_lines(d, &["ls", "--long"]);
    let header = long[0].find("EXPIRES").unwrap();
    let hits = long[0].find("HITS").unwrap();
    for row in &long[1..] {
        assert_eq!(row.find(" in ").map(|i| i + 1), Some(header), "{long:?}");
        assert!(row.len() > hits && row.ends_with('0'), "{long:?}");
    }
}

#[test]
fn ls_sorts_filters_and_limits_and_orders_backends_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(d, "zz", "a", b"1", &["--ttl", "1h"]);
    put(
        d,
        "anilist",
        "b",
        b"333",
        &["--ttl", "3h", "--category", "list"],
    );
    put(d, "anilist", "a", b"22", &["--ttl", "2h"]);
    for _ in 0..2 {
        run_code(d, &["get", "zz", "a"], b"", 0);
    }
    run_code(d, &["get", "anilist", "b"], b"", 0);
    let names = ["anilist\ta", "anilist\tb", "zz\ta"];
    assert_eq!(ls_lines(d, &["ls"]), names);
    assert_eq!(ls_lines(d, &["ls", "--sort", "name"]), names);
    assert_eq!(
        ls_lines(d, &["ls", "--sort", "size"]),
        ["anilist\tb", "anilist\ta", "zz\ta"]
    );
    assert_eq!(
        ls_lines(d, &["ls", "--sort", "expires"]),
        ["zz\ta", "anilist\ta", "anilist\tb"]
    );
    assert_eq!(
        ls_lines(d, &["ls", "--sort", "hits", "--limit", "2"]),
        ["zz\ta", "anilist\tb"]
    );
    assert_eq!(ls_lines(d, &["ls", "--category", "LIST"]), ["anilist\tb"]);
    assert_eq!(ls_lines(d, &["ls", "--limit", "0"]), Vec::<String>::new());
    let v = json(&run_code(
        d,
        &["--json", "ls", "--sort", "size", "--limit", "1"],
        b"",
        0,
    ));
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["raw_size"], 3);
    for bad in [
        &["ls", "--sort", "colour"][..],
        &["ls", "--category", "misc"],
    ] {
        assert_one_line_error(&run(d, bad, b""));
    }
    // stats lists backends by name too.
    let v = json(&run_code(d, &["--json", "stats"], b"", 0));
    let order: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["anilist", "zz"]);
}

#[test]
fn global_flags_have_environment_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = run_env(
        d,
        &["put", "b", "s", "-"],
        &[("BLOBCACHE_QUIET", "1")],
        b"x",
    );
    assert_eq!((code(&o), o.stdout.len()), (0, 0), "{}", stderr(&o));
    let o = run_env(
        d,
        &["put", "b", "s", "-"],
        &[("BLOBCACHE_QUIET", "0")],
        b"x",
    );
    assert!(!o.stdout.is_empty(), "0 is false");
    let o = run_env(
        d,
        &["put", "b", "s", "-"],
        &[("BLOBCACHE_JSON", "true")],
        b"x",
    );
    assert_eq!(json(&o)["raw_size"], 1);
    let o = run_env(d, &["ls"], &[("BLOBCACHE_OWNER_TIMEOUT", "soon")], b"");
    let err = assert_one_line_error(&o);
    assert!(err.contains("soon"), "{err}");
    // Every global flag of the help names its variable.
    let help = stdout_text(d, &["--help"]);
    for var in [
        "BLOBCACHE_DIR",
        "BLOBCACHE_JSON",
        "BLOBCACHE_QUIET",
        "BLOBCACHE_VERBOSE",
        "BLOBCACHE_DENY_SECRET",
        "BLOBCACHE_DROP_HEADER",
        "BLOBCACHE_OWNER_TIMEOUT",
        "BLOBCACHE_REMOTE",
        "BLOBCACHE_REMOTE_PREFIX",
        "BLOBCACHE_REMOTE_READ_ONLY",
        "BLOBCACHE_REMOTE_DELETE",
    ] {
        assert!(help.contains(var), "{var}");
    }
}

#[test]
fn fetch_runs_the_command_on_a_miss_only_and_serves_stale_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().join("cache");
    let runs = dir.path().join("runs");
    let script = format!("printf '{{\"id\":603}}'; echo run >> {}", runs.display());
    let fetch = |sig: &str, extra: &[&str], cmd: &[&str]| {
        let args = [&["fetch", "tmdb", sig][..], extra, &["--"], cmd].concat();
        run(d, &args, b"")
    };
    let runs_so_far = || std::fs::read_to_string(&runs).map_or(0, |s| s.lines().count());
    let o = fetch("movie/603", &["--ttl", "1h"], &["sh", "-c", &script]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, b"{\"id\":603}");
    assert_eq!(runs_so_far(), 1);
    // A hit: the command does not run again.
    let o = fetch("movie/603", &[], &["sh", "-c", &script]);
    assert_eq!((code(&o), &o.stdout[..]), (0, &b"{\"id\":603}"[..]));
    assert_eq!(runs_so_far(), 1);
    assert_eq!(get(d, "tmdb", "movie/603").stdout, b"{\"id\":603}");
    assert_eq!(ttl_ms(&meta(d, "tmdb", "movie/603")), 3_600_000);

    // A failing command stores nothing, even what it printed.
    let err = assert_one_line_error(&fetch(
        "movie/1",
        &[],
        &["sh", "-c", "printf partial; exit 7"],
    ));
    assert!(
        err.contains("exited with 7") && err.contains("nothing stored"),
        "{err}"
    );
    assert_eq!(code(&get(d, "tmdb", "movie/1")), 1);
    let err = assert_one_line_error(&fetch("movie/1", &[], &["/no/such/program"]));
    assert!(err.contains("cannot run"), "{err}");

    // Expired, and the upstream fails: the stale entry is served, exit 3.
    put(d, "tmdb", "movie/2", b"old", &["--ttl", "0s"]);
    let o = fetch("movie/2", &[], &["false"]);
    assert_eq!(
        (code(&o), &o.stdout[..]),
        (3, &b"old"[..]),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("stale"), "{}", stderr(&o));
    let o = fetch("movie/2", &["--stale-if-error", "0s"], &["false"]);
    assert_eq!(code(&o), 2, "outside the window: {}", stderr(&o));
    // Expired, and the upstream answers: refreshed.
    let o = fetch("movie/2", &[], &["printf", "new"]);
    assert_eq!((code(&o), &o.stdout[..]), (0, &b"new"[..]));
    assert_eq!(get(d, "tmdb", "movie/2").stdout, b"new");

    // The command is required, after `--`.
    assert_one_line_error(&run(d, &["fetch", "tmdb", "movie/3"], b""));
    assert_one_line_error(&run(d, &["fetch", "tmdb", "", "--", "true"], b""));
}

#[test]
fn import_on_a_terminal_shows_the_step_and_bytes() {
    // `script` gives the command a pseudo-terminal, where bars are drawn.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("script (util-linux) not found: progress bars not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let mut payload = vec![0u8; 3 << 20];
    Rng::new(9).fill(&mut payload);
    for sig in ["a", "b"] {
        payload[0] = sig.as_bytes()[0];
        put(&src, "b", sig, &payload, &[]);
    }
    let tar = dir.path().join("a.tar");
    run_code(&src, &["export", tar.to_str().unwrap()], b"", 0);
    let cmd = format!(
        "{} --dir {} import {}",
        bin().display(),
        dst.display(),
        tar.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("importing blob"), "{text}");
    assert!(text.contains(" MiB/6"), "bytes of the total: {text}");
    assert!(text.contains("imported 2 entries"), "{text}");
    assert_eq!(get(&dst, "b", "b").stdout, payload);
}

#[test]
fn format_2_is_chosen_for_a_new_cache_and_kept_by_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    put(&dir, "tmdb", "movie/1", b"{\"id\":1}", &["--format", "2"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("VERSION")).unwrap().trim(),
        "2"
    );
    // Later calls need no flag: the directory says format 2.
    assert_eq!(get(&dir, "tmdb", "movie/1").stdout, b"{\"id\":1}");
    let mut c = cli(&dir);
    c.env("BLOBCACHE_FORMAT", "2")
        .args(["put", "tmdb", "movie/2", "-"]);
    assert_eq!(code(&run_cmd(c, b"two")), 0);
    assert_eq!(get(&dir, "tmdb", "movie/2").stdout, b"two");
    // Asking it for format 1 is one clear line; nothing is lost.
    let err = assert_one_line_error(&run(
        &dir,
        &["--format", "1", "get", "tmdb", "movie/1"],
        b"",
    ));
    assert!(
        err.contains("format-2 cache and format 1 was asked for"),
        "{err}"
    );
    // What format 2 lacks says so; verify works.
    let err = assert_one_line_error(&run(&dir, &["gc", "--dry-run"], b""));
    assert!(err.contains("format-2 cache"), "{err}");
    run_code(&dir, &["verify"], b"", 0);
    assert_eq!(get(&dir, "tmdb", "movie/1").stdout, b"{\"id\":1}");
}

#[test]
fn an_unknown_format_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let o = run(&dir, &["--format", "3", "put", "a", "k", "-"], b"x");
    let err = assert_one_line_error(&o);
    assert!(err.contains("--format"), "{err}");
    assert!(!dir.exists(), "a refused format must create nothing");
}
