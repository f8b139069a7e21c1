//! Storage core v2's pack files on real files and real processes: write,
//! read and scan round trips, two writers at once, a writer killed with
//! SIGKILL mid-load, damage, and symlinks planted in the cache.

mod common;

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use blobcache::pack::{
    self, Location, PackDir, PackError, PackReader, PackWriter, PackWriterOptions, ReadMode,
    recover, scan_file,
};
use blobcache::testkit::api_payload;
use blobcache::{BlobHash, Durability, Error};
use common::*;

const MODES: [ReadMode; 2] = [ReadMode::Pread, ReadMode::Mmap];

/// Payload `i` of the tests: the realistic size mix, plus an empty one,
/// an incompressible one and a 300 KiB one.
fn payload(i: u64) -> Vec<u8> {
    match i % 50 {
        7 => Vec::new(),
        13 => {
            let mut b = vec![0u8; 3000];
            Rng::new(i).fill(&mut b);
            b
        }
        29 => json_payload(i, 300 * 1024),
        _ => api_payload(i),
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("tmdb/movie/{i}").into_bytes()
}

/// Appends payloads `range` and returns their locations.
fn fill(w: &mut PackWriter, range: std::ops::Range<u64>) -> Vec<(u64, Location, BlobHash)> {
    range
        .map(|i| {
            let a = w.append(&payload(i), &key(i), &i.to_le_bytes()).unwrap();
            (i, a.location, a.hash)
        })
        .collect()
}

fn scan_pack(dir: &Path, id: u32) -> pack::ScanReport {
    let d = PackDir::open(dir, false).unwrap();
    let f = std::fs::File::open(d.path(id)).unwrap();
    scan_file(id, &f, true).unwrap()
}

#[test]
fn write_read_scan_round_trip_of_varied_sizes_in_both_read_modes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PackWriterOptions::new().max_pack_bytes(64 * 1024);
    let mut w = PackWriter::open(dir.path(), opts).unwrap();
    let written = fill(&mut w, 0..400);
    let packs: HashSet<u32> = written.iter().map(|(_, l, _)| l.pack).collect();
    assert!(packs.len() > 3, "rolled over at the size limit: {packs:?}");
    for mode in MODES {
        let r = PackReader::open(dir.path(), mode).unwrap();
        for (i, loc, hash) in &written {
            assert_eq!(r.read(*loc, hash).unwrap(), payload(*i), "{mode:?} {i}");
            let n = r.read_needle(*loc).unwrap();
            assert_eq!((n.key, n.record), (key(*i), i.to_le_bytes().to_vec()));
        }
    }
    // The scanner finds exactly the needles written, in order, no damage.
    let mut found = Vec::new();
    for id in PackDir::open(dir.path(), false)
        .unwrap()
        .pack_ids()
        .unwrap()
    {
        let rep = scan_pack(dir.path(), id);
        assert!(rep.header_ok && rep.damaged.is_empty(), "{rep:?}");
        assert_eq!(rep.torn_tail(), 0);
        found.extend(
            rep.needles
                .iter()
                .map(|n| (n.location, n.hash, n.key.clone())),
        );
    }
    let want: Vec<_> = written.iter().map(|(i, l, h)| (*l, *h, key(*i))).collect();
    assert_eq!(found, want);
    // Small JSON was compressed, noise was not.
    let r = PackReader::open(dir.path(), ReadMode::Pread).unwrap();
    assert!(r.read_needle(written[1].1).is_ok());
    assert!(written[1].1.len < payload(1).len() as u32);
    assert!(written[13].1.len > 3000);
}

#[test]
fn files_are_private_and_synced_writes_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PackWriterOptions::new()
        .durability(Durability::Synced)
        .level(None);
    let mut w = PackWriter::open(dir.path(), opts).unwrap();
    let written = fill(&mut w, 0..20);
    w.sync().unwrap();
    let d = PackDir::open(dir.path(), false).unwrap();
    let id = w.active_pack().unwrap();
    for p in [dir.path().join("packs"), dir.path().join("locks")] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().mode() & 0o777,
            0o700,
            "{p:?}"
        );
    }
    assert_eq!(std::fs::metadata(d.path(id)).unwrap().mode() & 0o777, 0o600);
    let r = PackReader::open(dir.path(), ReadMode::Pread).unwrap();
    for (i, loc, hash) in written {
        assert_eq!(r.read(loc, &hash).unwrap(), payload(i));
    }
}

#[test]
fn a_location_for_other_content_or_out_of_range_is_an_error_not_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap();
    let written = fill(&mut w, 0..5);
    let r = PackReader::open(dir.path(), ReadMode::Pread).unwrap();
    let (_, loc, _) = written[2];
    let other = written[3].2;
    assert!(matches!(
        r.read(loc, &other),
        Err(PackError::Corrupt { .. })
    ));
    let shifted = Location {
        offset: loc.offset + 1,
        ..loc
    };
    let longer = Location {
        len: loc.len + 1,
        ..loc
    };
    let past = Location {
        offset: 1 << 40,
        ..loc
    };
    let huge = Location {
        len: u32::MAX,
        ..loc
    };
    for bad in [shifted, longer, past, huge] {
        for mode in MODES {
            let r = PackReader::open(dir.path(), mode).unwrap();
            let e = r.read(bad, &written[2].2).unwrap_err();
            assert!(
                matches!(e, PackError::Corrupt { .. }),
                "{bad:?} {mode:?}: {e}"
            );
        }
    }
    let missing = Location {
        pack: loc.pack + 9,
        ..loc
    };
    assert!(matches!(
        r.read(missing, &other),
        Err(PackError::Missing { .. })
    ));
}

#[test]
fn one_flipped_byte_fails_that_read_and_the_scan_skips_only_that_needle() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap();
    let written = fill(&mut w, 0..60);
    let id = w.active_pack().unwrap();
    drop(w);
    let path = PackDir::open(dir.path(), false).unwrap().path(id);
    // Damage needle 20: a byte in its payload, then (separately) in its header.
    for at in [written[20].1.end() - 3, written[20].1.offset + 9] {
        let mut bytes = std::fs::read(&path).unwrap();
        let orig = bytes.clone();
        bytes[at as usize] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        for mode in MODES {
            let r = PackReader::open(dir.path(), mode).unwrap();
            for (i, loc, hash) in &written {
                let got = r.read(*loc, hash);
                if *i == 20 {
                    assert!(matches!(got, Err(PackError::Corrupt { .. })), "{mode:?}");
                } else {
                    assert_eq!(got.unwrap(), payload(*i), "{mode:?} {i}");
                }
            }
        }
        let rep = scan_pack(dir.path(), id);
        let found: Vec<Location> = rep.needles.iter().map(|n| n.location).collect();
        let want: Vec<Location> = written.iter().filter(|w| w.0 != 20).map(|w| w.1).collect();
        assert_eq!(found, want);
        let bad = written[20].1;
        assert_eq!(
            rep.damaged,
            vec![pack::Damaged {
                offset: bad.offset,
                len: u64::from(bad.len)
            }]
        );
        std::fs::write(&path, orig).unwrap();
    }
}

#[test]
fn recovery_cuts_a_torn_tail_keeps_every_needle_and_spares_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap();
    let written = fill(&mut w, 0..30);
    let id = w.active_pack().unwrap();
    let d = PackDir::open(dir.path(), false).unwrap();
    assert!(recover(&d, id).unwrap().is_none(), "the writer is alive");
    drop(w);
    // What a writer killed in the middle of a large append leaves.
    let path = d.path(id);
    let whole = std::fs::read(&path).unwrap();
    let (_, last, _) = written[29];
    let torn = whole[last.offset as usize..last.offset as usize + 100].to_vec();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    let rec = recover(&d, id).unwrap().unwrap();
    assert_eq!(rec.truncated, 100);
    assert_eq!(rec.report.needles.len(), 30);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole.len() as u64);
    let r = PackReader::open(dir.path(), ReadMode::Mmap).unwrap();
    for (i, loc, hash) in written {
        assert_eq!(r.read(loc, &hash).unwrap(), payload(i));
    }
    // A new writer never appends to the recovered pack.
    let mut w = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap();
    let a = w.append(b"after", b"", b"").unwrap();
    assert!(a.location.pack > id);
    // A pack whose writer died before writing the header is removed.
    drop(w);
    let stub = d.path(a.location.pack + 1);
    std::fs::write(&stub, b"BCPA").unwrap();
    let rec = recover(&d, a.location.pack + 1).unwrap().unwrap();
    assert!(rec.removed && !stub.exists());
}

#[test]
fn symlinked_packs_dir_or_pack_file_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    // packs/ itself a symlink.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("packs")).unwrap();
    let e = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap_err();
    assert!(matches!(e, PackError::Store(Error::Symlink { .. })), "{e}");
    let e = PackReader::open(dir.path(), ReadMode::Pread).unwrap_err();
    assert!(matches!(e, PackError::Store(Error::Symlink { .. })), "{e}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    // One pack replaced by a symlink to a copy of itself outside the cache.
    let dir = tempfile::tempdir().unwrap();
    let mut w = PackWriter::open(dir.path(), PackWriterOptions::new()).unwrap();
    let (_, loc, hash) = fill(&mut w, 0..3)[1];
    drop(w);
    let d = PackDir::open(dir.path(), false).unwrap();
    let copy = outside.path().join("copy.pack");
    std::fs::copy(d.path(loc.pack), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(d.path(loc.pack)).unwrap();
    std::os::unix::fs::symlink(&copy, d.path(loc.pack)).unwrap();
    for mode in MODES {
        let r = PackReader::open(dir.path(), mode).unwrap();
        let e = r.read(loc, &hash).unwrap_err();
        assert!(matches!(e, PackError::Store(Error::Symlink { .. })), "{e}");
    }
    let before = std::fs::read(&copy).unwrap();
    assert!(recover(&d, loc.pack).is_err());
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        before,
        "nothing outside was touched"
    );
}

// ---------------------------------------------------------------------
// Real processes
// ---------------------------------------------------------------------

/// Entry point of worker processes; does nothing in a normal test run.
#[test]
#[ignore = "entry point for worker processes spawned by other tests"]
fn worker() {
    let Some(spec) = worker_spec() else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[1]);
    let count: u64 = parts[2].parse().unwrap();
    let first: u64 = parts[3].parse().unwrap();
    let opts = PackWriterOptions::new().max_pack_bytes(512 * 1024);
    let mut w = PackWriter::open(dir, opts).unwrap();
    let mut out = std::io::stdout().lock();
    for i in first..first + count {
        let a = w.append(&payload(i), &key(i), b"").unwrap();
        let l = a.location;
        // Printed only once the append has returned: an acknowledgement.
        writeln!(out, "ack {i} {} {} {}", l.pack, l.offset, l.len).unwrap();
        out.flush().unwrap();
    }
    writeln!(out, "done").unwrap();
}

fn parse_ack(line: &str) -> Option<(u64, Location)> {
    let f: Vec<u64> = line
        .strip_prefix("ack ")?
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    Some((
        f[0],
        Location {
            pack: f[1] as u32,
            offset: f[2],
            len: f[3] as u32,
        },
    ))
}

fn collect_acks(
    child: &mut std::process::Child,
    stop_after: Option<usize>,
) -> Vec<(u64, Location)> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acks = Vec::new();
    while let Some(line) = wait_for_line(&mut out, |l| l.starts_with("ack ") || l == "done") {
        let Some(ack) = parse_ack(&line) else {
            // Drain libtest's last lines so the worker never hits a closed pipe.
            let _ = std::io::Read::read_to_end(&mut out, &mut Vec::new());
            break;
        };
        acks.push(ack);
        if stop_after.is_some_and(|n| acks.len() >= n) {
            break;
        }
    }
    acks
}

#[test]
fn two_processes_append_to_their_own_packs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut a = spawn_worker(&format!("w|{d}|1500|0"));
    let mut b = spawn_worker(&format!("w|{d}|1500|100000"));
    let acks_a = collect_acks(&mut a, None);
    let acks_b = collect_acks(&mut b, None);
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert_eq!((acks_a.len(), acks_b.len()), (1500, 1500));
    let packs_a: HashSet<u32> = acks_a.iter().map(|(_, l)| l.pack).collect();
    let packs_b: HashSet<u32> = acks_b.iter().map(|(_, l)| l.pack).collect();
    assert!(packs_a.is_disjoint(&packs_b), "{packs_a:?} {packs_b:?}");
    let r = PackReader::open(dir.path(), ReadMode::Pread).unwrap();
    for (i, loc) in acks_a.iter().chain(&acks_b) {
        let n = r.read_needle(*loc).unwrap();
        assert_eq!((n.payload, n.key), (payload(*i), key(*i)));
    }
    let scanned: usize = packs_a
        .union(&packs_b)
        .map(|id| {
            let rep = scan_pack(dir.path(), *id);
            assert!(rep.damaged.is_empty(), "{rep:?}");
            rep.needles.len()
        })
        .sum();
    assert_eq!(scanned, 3000);
}

#[test]
fn a_writer_killed_mid_load_loses_no_acknowledged_needle() {
    for round in 0..3u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_worker(&format!("w|{}|1000000|{}", dir.path().display(), round * 7));
        let acks = collect_acks(&mut child, Some(400 + 300 * round as usize));
        kill9(&mut child);
        let d = PackDir::open(dir.path(), false).unwrap();
        let mut found = HashSet::new();
        for id in d.pack_ids().unwrap() {
            let rec = recover(&d, id).unwrap().expect("the writer is dead");
            assert!(
                rec.report
                    .damaged
                    .iter()
                    .all(|x| x.offset >= rec.report.valid_tail)
            );
            found.extend(rec.report.needles.iter().map(|n| n.location));
            let after = scan_pack(dir.path(), id);
            assert!(
                after.damaged.is_empty() && after.torn_tail() == 0,
                "{after:?}"
            );
        }
        let r = PackReader::open(dir.path(), ReadMode::Mmap).unwrap();
        for (i, loc) in &acks {
            assert!(
                found.contains(loc),
                "round {round}: ack {i} at {loc:?} not found by the scan"
            );
            assert_eq!(r.read_needle(*loc).unwrap().payload, payload(*i));
        }
    }
}
