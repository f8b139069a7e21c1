//! Target `pack_scan`: bytes as a pack file, scanned and recovered.

use super::{Scratch, must};
use crate::pack::needle;
use crate::pack::{
    FILE_HEADER_LEN, Location, PackDir, PackReader, ReadMode, ScanReport, file_header, recover,
    scan_bytes,
};
use crate::testkit::{Rng, json_payload};

/// The pack id the target's bytes are scanned as.
const PACK: u32 = 1;

/// Target `pack_scan`. The first byte picks the mode:
/// - even: the rest is a pack file as found on disk;
/// - odd: the rest describes a pack (payload count, then a seed and a
///   size per payload) followed by damage (3-byte flips, and with bit 1
///   of the mode byte a truncation given by the last byte); the pack is
///   built, damaged, and every needle the damage did not touch must be
///   found at its place.
///
/// In both modes the scan report must tile the file (needles and damaged
/// ranges, in order, no overlap, no gap), every needle it reports must
/// parse at its location, and the valid tail must follow the last needle.
/// The bytes are then written as a real pack: the reader returns exactly
/// the scanned needles' payloads, recovery reports what the in-memory scan
/// found and cuts only the torn tail, and a rescan after recovery finds
/// the same needles and no tail.
pub fn pack_scan(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (bytes, intact) = if mode % 2 == 0 {
        (rest.to_vec(), Vec::new())
    } else {
        damaged_pack(mode, rest)
    };
    let verified = scan_bytes(PACK, &bytes, true);
    check_tiling(&bytes, &verified);
    for loc in &intact {
        let found = verified.needles.iter().any(|n| n.location == *loc);
        assert!(found, "undamaged needle at {loc:?} not found: {verified:?}");
    }
    let plain = scan_bytes(PACK, &bytes, false);
    check_tiling(&bytes, &plain);
    on_disk(&bytes, &plain);
}

/// The report covers the file exactly, and each needle is real.
fn check_tiling(bytes: &[u8], r: &ScanReport) {
    let start = if r.header_ok { FILE_HEADER_LEN } else { 0 };
    assert_eq!(r.file_len, bytes.len() as u64);
    let mut spans: Vec<(u64, u64, bool)> = r
        .needles
        .iter()
        .map(|n| (n.location.offset, n.location.end(), true))
        .chain(
            r.damaged
                .iter()
                .map(|d| (d.offset, d.offset + d.len, false)),
        )
        .collect();
    spans.sort_unstable();
    let mut at = start.min(r.file_len);
    for (from, to, _) in &spans {
        assert_eq!(*from, at, "gap or overlap in {r:?}");
        assert!(to > from, "empty span in {r:?}");
        at = *to;
    }
    assert_eq!(at, r.file_len, "the report stops short: {r:?}");
    let last_needle = r
        .needles
        .last()
        .map_or(start.min(r.file_len), |n| n.location.end());
    assert_eq!(r.valid_tail, last_needle);
    for n in &r.needles {
        let slice = &bytes[n.location.offset as usize..n.location.end() as usize];
        let parsed = must(needle::parse(slice), "reparse a scanned needle");
        assert_eq!(parsed.header.hash, n.hash);
        assert_eq!(parsed.key, n.key.as_slice());
    }
}

/// The same bytes as a real pack file: read, recover, rescan.
fn on_disk(bytes: &[u8], plain: &ScanReport) {
    let scratch = Scratch::new("pack_scan");
    must(std::fs::create_dir_all(&scratch.0), "create scratch dir");
    let dir = must(PackDir::open(&scratch.0, true), "open packs dir");
    must(std::fs::write(dir.path(PACK), bytes), "write the pack");
    check_reads(&scratch.0, bytes, plain);
    let Some(rec) = must(recover(&dir, PACK), "recover") else {
        panic!("no writer holds the pack, yet recovery did not run");
    };
    assert_eq!(&rec.report, plain, "recovery scanned something else");
    if rec.removed {
        assert!(plain.needles.is_empty() && !plain.header_ok);
        assert!(bytes.len() < FILE_HEADER_LEN as usize);
        return;
    }
    let len = must(std::fs::metadata(dir.path(PACK)), "stat the pack").len();
    let keep_all = !plain.header_ok && plain.needles.is_empty();
    let want = if keep_all {
        bytes.len() as u64
    } else {
        plain.valid_tail
    };
    assert_eq!(len, want, "recovery cut the wrong length");
    let after = must(std::fs::read(dir.path(PACK)), "read the pack back");
    let again = scan_bytes(PACK, &after, false);
    assert_eq!(again.needles, plain.needles, "recovery lost a needle");
    if !keep_all {
        assert_eq!(again.torn_tail(), 0);
    }
}

/// The reader returns each scanned needle's payload when it decodes and
/// an error when it does not, in both read modes.
fn check_reads(root: &std::path::Path, bytes: &[u8], plain: &ScanReport) {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let reader = must(PackReader::open(root, mode), "open reader");
        for n in &plain.needles {
            let slice = &bytes[n.location.offset as usize..n.location.end() as usize];
            let want = must(needle::parse(slice), "reparse").payload();
            let got = reader.read(n.location, &n.hash);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{mode:?} returned other bytes"),
                (Err(_), Err(_)) => {}
                // Bytes before offset 16 never hold a needle a reader
                // accepts, and a pack with a bad header is refused whole.
                (Ok(_), Err(_)) if !plain.header_ok || n.location.offset < FILE_HEADER_LEN => {}
                (w, g) => panic!("{mode:?} at {:?}: scan {w:?}, reader {g:?}", n.location),
            }
        }
    }
}

/// Builds the pack described by `rest`, damages it, and returns it with
/// the locations of the needles the damage left whole.
fn damaged_pack(mode: u8, rest: &[u8]) -> (Vec<u8>, Vec<Location>) {
    let (mut bytes, locs, used) = build_pack(rest);
    let ops = &rest[used.min(rest.len())..];
    let mut touched = Vec::new();
    if !bytes.is_empty() {
        for op in ops.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([op[0], op[1]])) * 7 % bytes.len();
            bytes[at] ^= op[2].max(1);
            touched.push(at as u64);
        }
    }
    if mode & 2 != 0
        && let Some(&keep) = ops.last()
    {
        bytes.truncate(bytes.len() * usize::from(keep) / 255);
    }
    let end = bytes.len() as u64;
    let intact = locs
        .into_iter()
        .filter(|l| l.end() <= end && !touched.iter().any(|t| (l.offset..l.end()).contains(t)))
        .collect();
    (bytes, intact)
}

/// A pack of the payloads `spec` describes (`[count, (seed, size)...]`):
/// its bytes, its needles' locations, and the spec bytes used.
pub fn build_pack(spec: &[u8]) -> (Vec<u8>, Vec<Location>, usize) {
    let count = spec.first().map_or(0, |c| usize::from(c % 16));
    let mut bytes = file_header(PACK).to_vec();
    let mut locs = Vec::new();
    let mut framed = Vec::new();
    let pairs = spec.get(1..).unwrap_or(&[]).chunks_exact(2).take(count);
    let used = 1 + 2 * pairs.len();
    for (i, pair) in pairs.enumerate() {
        let (seed, size) = (pair[0], usize::from(pair[1]) * 24);
        let payload = if seed % 3 == 0 {
            let mut b = vec![0u8; size];
            Rng::new(u64::from(seed)).fill(&mut b);
            b
        } else {
            json_payload(u64::from(seed), size)
        };
        let level = (seed % 2 == 0).then_some(3);
        let key = [i as u8];
        must(
            needle::encode_payload(&payload, level, &key, b"r", &mut framed),
            "frame",
        );
        let offset = bytes.len() as u64;
        locs.push(Location {
            pack: PACK,
            offset,
            len: framed.len() as u32,
        });
        bytes.extend_from_slice(&framed);
    }
    (bytes, locs, used)
}
