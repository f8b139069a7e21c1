//! Hostile and damaged caches, driven through the real CLI and library on
//! real temp directories: symbolic links planted inside the cache, damaged
//! blobs read through pipes and `-o`, damaged journals.

mod common;

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use blobcache::{PutOptions, Store, StoreOptions};
use common::*;

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// `blobs/ab/cdef…` of `payload` in cache `d`.
fn blob_path(d: &Path, payload: &[u8]) -> PathBuf {
    let hex = blake3::hash(payload).to_hex().to_string();
    d.join("blobs").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn a_symlinked_fanout_dir_is_never_followed_read_or_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    let payload = random(1, 150_000);
    run_code(&d, &["put", "b", "big", "-"], &payload, 0);
    let blob = blob_path(&d, &payload);
    assert!(blob.is_file(), "a file blob");

    // Replace blobs/ab by a link to a directory outside the cache that
    // holds a file under the blob's name.
    let fanout = blob.parent().unwrap().to_path_buf();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let secret = random(2, 150_000);
    let target = outside.join(blob.file_name().unwrap());
    std::fs::write(&target, &secret).unwrap();
    std::fs::remove_dir_all(&fanout).unwrap();
    std::os::unix::fs::symlink(&outside, &fanout).unwrap();

    // get: a miss, nothing printed, to a pipe and with -o.
    let o = run_code(&d, &["get", "b", "big"], b"", 1);
    assert!(o.stdout.is_empty(), "{} bytes printed", o.stdout.len());
    assert_eq!(std::fs::read(&target).unwrap(), secret, "outside intact");
    let out = dir.path().join("out");
    run_code(
        &d,
        &["get", "b", "big", "-o", out.to_str().unwrap()],
        b"",
        1,
    );
    assert!(!out.exists());

    // A put of the same payload is a clear error, writes nothing outside.
    let o = run_code(&d, &["put", "b", "again", "-"], &payload, 2);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&target).unwrap(), secret);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

    // verify, repair and gc do not touch the outside file either.
    run(&d, &["verify", "--repair"], b"");
    run(&d, &["gc"], b"");
    assert_eq!(std::fs::read(&target).unwrap(), secret, "outside intact");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn a_symlinked_blob_file_or_tmp_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    let payload = random(3, 40_000);
    run_code(&d, &["put", "b", "k", "-"], &payload, 0);
    let blob = blob_path(&d, &payload);
    // The blob name itself a link to an outside file with the right bytes.
    let outside = dir.path().join("outside-blob");
    std::fs::rename(&blob, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &blob).unwrap();
    let o = run_code(&d, &["get", "b", "k"], b"", 1);
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read(&outside).unwrap(), payload);

    // tmp/ a link: a put that stages there fails clearly, nothing written.
    let tmp_outside = dir.path().join("outside-tmp");
    std::fs::create_dir(&tmp_outside).unwrap();
    std::fs::remove_dir_all(d.join("tmp")).unwrap();
    std::os::unix::fs::symlink(&tmp_outside, d.join("tmp")).unwrap();
    let o = run(&d, &["put", "b", "k2", "-"], &random(4, 300_000));
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&tmp_outside).unwrap().count(), 0);
}

fn truncate(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

/// Damages the blob of `payload` with `damage`, then checks that `get` to a
/// pipe emits nothing and is a miss, that `-o` leaves no file, and that the
/// entry was dropped.
fn damaged_blob_is_a_miss(payload: &[u8], damage: impl Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    run_code(&d, &["put", "b", "k", "-"], payload, 0);
    run_code(&d, &["put", "b", "k2", "-"], payload, 0);
    let blob = blob_path(&d, payload);
    assert!(blob.is_file());
    damage(&blob);
    // `get | cat`: the reading end sees no byte at all.
    let o = run_code(&d, &["get", "b", "k"], b"", 1);
    assert!(
        o.stdout.is_empty(),
        "{} unverified bytes reached the pipe",
        o.stdout.len()
    );
    // The damaged blob was dropped with the entry (self-healing): the other
    // entry on the same blob is a miss too, also with -o.
    let out = dir.path().join("out");
    run_code(&d, &["get", "b", "k2", "-o", out.to_str().unwrap()], b"", 1);
    assert!(!out.exists(), "-o left a file");
    run_code(&d, &["get", "b", "k"], b"", 1);
    // A new put of the payload heals the cache.
    run_code(&d, &["put", "b", "k", "-"], payload, 0);
    assert_eq!(run_code(&d, &["get", "b", "k"], b"", 0).stdout, payload);
}

#[test]
fn a_20_kb_blob_with_a_flipped_byte_or_cut_short_emits_nothing() {
    let payload = random(5, 20_000);
    damaged_blob_is_a_miss(&payload, |p| flip(p, 12_345));
    damaged_blob_is_a_miss(&payload, |p| truncate(p, 100));
}

fn large_payload() -> Vec<u8> {
    let mut v = Vec::new();
    GenReader::new(6, (64 << 20) + 3 * 1024 * 1024 + 17)
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Damages the blob of a payload over 8 MiB with `damage` (given the blob
/// and its outboard), then checks `get` to a pipe: exit 2, and what reached
/// the pipe is a prefix of the payload in whole 1 MiB groups, shorter than
/// it (never a wrong byte); the entry was dropped, so `-o` is then a miss
/// and leaves no file.
fn damaged_large_blob_emits_only_a_verified_prefix(
    payload: &[u8],
    damage: impl Fn(&Path, &Path),
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    run_code(&d, &["put", "b", "k", "-"], payload, 0);
    let blob = blob_path(&d, payload);
    let outboard = outboard_path(&blob);
    assert!(blob.is_file() && outboard.is_file());
    damage(&blob, &outboard);
    let o = run(&d, &["get", "b", "k"], b"");
    assert_ne!(code(&o), 0, "a damaged payload never exits 0");
    assert!(o.stdout.len() < payload.len(), "the output stops early");
    assert!(
        o.stdout == payload[..o.stdout.len()],
        "a wrong byte reached the pipe"
    );
    assert_eq!(o.stdout.len() % (1 << 20), 0, "whole groups only");
    if o.stdout.is_empty() {
        assert_eq!(code(&o), 1, "nothing written: a miss");
    } else {
        assert_eq!(code(&o), 2, "a verified prefix written: an error");
        assert!(stderr(&o).contains("incomplete"), "{}", stderr(&o));
    }
    let out = dir.path().join("out");
    run_code(&d, &["get", "b", "k", "-o", out.to_str().unwrap()], b"", 1);
    assert!(!out.exists(), "-o left a file");
    run_code(&d, &["put", "b", "k", "-"], payload, 0);
    assert!(run_code(&d, &["get", "b", "k"], b"", 0).stdout == payload);
    o.stdout
}

/// `….obao` beside `blob`.
fn outboard_path(blob: &Path) -> PathBuf {
    let name = blob.file_name().unwrap().to_str().unwrap();
    blob.with_file_name(format!("{name}.obao"))
}

#[test]
fn a_67_mib_blob_with_a_flipped_byte_emits_only_a_verified_prefix() {
    let payload = large_payload();
    let emitted = damaged_large_blob_emits_only_a_verified_prefix(&payload, |p, _| {
        let len = std::fs::metadata(p).unwrap().len();
        flip(p, len * 3 / 4);
    });
    assert!(!emitted.is_empty(), "the groups before the damage stream");
}

#[test]
fn a_67_mib_blob_cut_short_emits_only_a_verified_prefix() {
    let payload = large_payload();
    damaged_large_blob_emits_only_a_verified_prefix(&payload, |p, _| truncate(p, 4096));
}

#[test]
fn a_20_mib_blob_with_a_flipped_byte_in_its_last_group_pipes_19_verified_mib() {
    // Incompressible: stored byte i is payload byte i.
    let payload = random(12, 20 << 20);
    let emitted = damaged_large_blob_emits_only_a_verified_prefix(&payload, |p, _| {
        flip(p, (20 << 20) - 1000)
    });
    assert_eq!(emitted.len(), 19 << 20);
}

#[test]
fn a_flipped_byte_in_an_outboard_is_a_miss_with_nothing_emitted() {
    let payload = random(13, 9 << 20);
    let emitted = damaged_large_blob_emits_only_a_verified_prefix(&payload, |_, outboard| {
        flip(outboard, 100)
    });
    assert!(emitted.is_empty());
}

#[test]
fn a_large_blob_without_its_outboard_streams_after_a_check_and_a_full_verify_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    let payload = large_payload();
    run_code(&d, &["put", "b", "k", "-"], &payload, 0);
    let o = run_code(&d, &["verify"], b"", 0);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!text.contains("foreign"), "{text}");
    let outboard = outboard_path(&blob_path(&d, &payload));
    std::fs::remove_file(&outboard).unwrap();
    assert!(run_code(&d, &["get", "b", "k"], b"", 0).stdout == payload);
    assert!(outboard.is_file(), "the read stored the outboard again");
    run_code(&d, &["verify"], b"", 0);
    // Damage without an outboard: the check before streaming finds it.
    std::fs::remove_file(&outboard).unwrap();
    let blob = blob_path(&d, &payload);
    flip(&blob, std::fs::metadata(&blob).unwrap().len() / 2);
    let o = run_code(&d, &["get", "b", "k"], b"", 1);
    assert!(o.stdout.is_empty());
}

#[test]
fn a_large_inline_threshold_is_clamped_so_index_changes_fit_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().inline_threshold(usize::MAX);
    let store = Store::open(dir.path(), opts).unwrap();
    let payload = random(7, 3 << 20);
    let report = store.put("b", "k", &payload, &PutOptions::new()).unwrap();
    let meta = store.meta("b", "k").unwrap().unwrap();
    assert!(
        !meta.inline,
        "a 3 MiB payload is a file, whatever the setting"
    );
    assert_eq!(meta.hash, report.hash);
    assert_eq!(store.get("b", "k").unwrap().unwrap().data, payload);
}

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else {
        return;
    };
    let (what, dir) = spec.split_once('|').unwrap();
    assert_eq!(what, "put40");
    // 40 acknowledged puts that only the journal holds (no flush), then
    // wait to be killed.
    let opts = StoreOptions::default().flush_interval(Duration::from_secs(3600));
    let store = Store::open(dir, opts).unwrap();
    for i in 0..40u64 {
        let payload = format!("payload {i} ").repeat(20);
        store
            .put("j", format!("k{i}"), payload.as_bytes(), &PutOptions::new())
            .unwrap();
    }
    println!("acked 40");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn a_flipped_byte_in_the_journal_loses_one_entry_of_40_not_39() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_worker(&format!("put40|{}", dir.path().display()));
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert!(wait_for_line(&mut out, |l| l == "acked 40").is_some());
    kill9(&mut child);

    let journal = dir.path().join("journal");
    let mut segments: Vec<_> = files_under(&journal)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    assert_eq!(segments.len(), 1, "one segment holds the 40 puts");
    let seg = segments.pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    flip(&seg, len / 4);

    let store = open_retry(dir.path(), StoreOptions::default());
    let survivors: Vec<u64> = (0..40u64)
        .filter(|i| {
            let hit = store.get("j", format!("k{i}")).unwrap();
            hit.inspect(|h| assert_eq!(h.data, format!("payload {i} ").repeat(20).as_bytes()))
                .is_some()
        })
        .collect();
    assert_eq!(survivors.len(), 39, "survivors: {survivors:?}");
    // The skipped change is recounted at open: verify is clean.
    assert_clean(&store);
}

/// Peak resident set (VmHWM, KiB) of a running process, if readable.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn verify_of_a_300_mib_blob_stays_bounded_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let len = 300u64 << 20;
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let src = GenReader::new(8, len);
        let report = store
            .put_reader("dump", "big", src, &PutOptions::new())
            .unwrap();
        assert_eq!(report.raw_size, len);
    }
    let mut child = cli(dir.path())
        .args(["verify"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, peak) = wait_sampling_peak_rss(&mut child);
    assert!(status.success(), "verify of an intact cache is clean");
    assert!(peak > 0, "the child's status was sampled");
    // The payload is 300 MiB; a streaming check needs a few MiB of
    // buffers and zstd window (before: 608 MiB).
    assert!(peak < 100 * 1024, "verify peaked at {peak} KiB");
}

#[test]
fn get_of_a_300_mib_blob_to_a_pipe_stays_bounded_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let len = 300u64 << 20;
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let src = GenReader::new(14, len);
        store
            .put_reader("dump", "big", src, &PutOptions::new())
            .unwrap();
    }
    let mut child = cli(dir.path())
        .args(["get", "dump", "big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || hash_reader(BufReader::new(stdout)).unwrap());
    let (status, peak) = wait_sampling_peak_rss(&mut child);
    assert!(status.success());
    let (hash, n) = reader.join().unwrap();
    let (want, _) = hash_reader(GenReader::new(14, len)).unwrap();
    assert_eq!((hash, n), (want, len), "the whole payload, verified");
    // One 1 MiB group, the zstd window and buffers: a few MiB.
    assert!(peak > 0 && peak < 100 * 1024, "get peaked at {peak} KiB");
}

#[test]
fn gc_leaves_a_foreign_file_in_tmp_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    run_code(&d, &["put", "b", "k", "-"], &random(9, 40_000), 0);
    // Old enough for any staging grace, but not a staging name.
    let notes = d.join("tmp").join("user-notes.txt");
    std::fs::write(&notes, b"mine").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&notes)
        .unwrap()
        .set_modified(old)
        .unwrap();
    run_code(&d, &["gc"], b"", 0);
    assert_eq!(std::fs::read(&notes).unwrap(), b"mine", "foreign file kept");
}

#[test]
fn verify_repair_tightens_a_0666_blob_and_moves_foreign_files_to_quarantine() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cache");
    let payload = random(11, 40_000);
    run_code(&d, &["put", "b", "k", "-"], &payload, 0);
    let blob = blob_path(&d, &payload);
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o666)).unwrap();
    let notes = blob.parent().unwrap().join("notes.txt");
    std::fs::write(&notes, b"mine").unwrap();
    std::fs::write(d.join("blobs").join("README"), b"also mine").unwrap();

    let o = run_code(&d, &["verify"], b"", 1);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("permissions") && text.contains("0666"),
        "{text}"
    );
    assert_eq!(text.matches("foreign_file").count(), 2, "{text}");

    let o = run_code(&d, &["verify", "--repair"], b"", 0);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("clean now"), "{text}");
    let mode = std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "blob tightened");
    assert!(!notes.exists(), "foreign file moved out of blobs/");
    let hex = blake3::hash(&payload).to_hex().to_string();
    let moved = d
        .join("quarantine")
        .join(format!("{}_notes.txt", &hex[..2]));
    assert_eq!(std::fs::read(moved).unwrap(), b"mine", "kept, not deleted");
    let readme = d.join("quarantine").join("README");
    assert_eq!(std::fs::read(readme).unwrap(), b"also mine");

    // Clean from now on, and the entry is intact.
    run_code(&d, &["verify"], b"", 0);
    let o = run_code(&d, &["get", "b", "k"], b"", 0);
    assert_eq!(o.stdout, payload);
}

#[test]
fn a_full_verify_reports_payload_bytes_as_it_streams_a_large_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let big = noise(7, 20 << 20);
    let small: Vec<Vec<u8>> = (0..3).map(|i| noise(100 + i, 5_000)).collect();
    store.put("b", "big", &big, &PutOptions::new()).unwrap();
    for (i, p) in small.iter().enumerate() {
        store
            .put("b", format!("s{i}"), p, &PutOptions::new())
            .unwrap();
    }
    // A second entry of the same payload is checked (and counted) once.
    store
        .put("b", "again", &small[0], &PutOptions::new())
        .unwrap();
    let want = (big.len() + 3 * 5_000) as u64;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let opts = blobcache::VerifyOptions::new()
        .full(true)
        .byte_progress(std::sync::Arc::new(move |done, total| {
            log.lock().unwrap().push((done, total));
        }));
    assert!(store.verify(opts).unwrap().is_clean());
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|(_, t)| *t == want), "total {want}");
    assert_eq!(seen.last().map(|(d, _)| *d), Some(want));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "never goes back");
    let inside = seen
        .iter()
        .filter(|(d, _)| *d > 15_000 && *d < want - 15_000)
        .count();
    assert!(
        inside >= 10,
        "the 20 MiB blob reports as it streams: {inside}"
    );
    // A quick check reads no payload and reports no bytes.
    let quiet = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let q = quiet.clone();
    let opts = blobcache::VerifyOptions::new().byte_progress(std::sync::Arc::new(move |_, _| {
        q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    store.verify(opts).unwrap();
    assert_eq!(quiet.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Waits for `child`, sampling its peak resident set (KiB) until it exits.
/// VmHWM only grows: the last sample before exit is the peak so far.
fn wait_sampling_peak_rss(child: &mut std::process::Child) -> (std::process::ExitStatus, u64) {
    let mut peak = 0;
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        thread::sleep(Duration::from_millis(5));
    }
}
