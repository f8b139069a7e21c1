//! The index journal: what makes an acknowledged write survive `kill -9`.
//!
//! sled keeps recent writes in process memory until its next flush, so a
//! killed owner would forget puts it had already acknowledged. Every index
//! mutation is therefore also appended here, with one `write(2)`, before it
//! is acknowledged (and `fdatasync`ed first under `Durability::Synced`).
//! Each mutation carries a sequence number that sled stores in the same
//! transaction; after sled flushes, segments whose every sequence number is
//! durable in sled are deleted. At open, frames newer than sled's number are
//! replayed.
//!
//! Layout: `journal/<first-seq, 20 digits>.log`. A frame is
//! `len: u32 LE | seq: u64 LE | payload | check: first 8 bytes of blake3(len|seq|payload)`.
//! A damaged frame is skipped: replay resynchronises at the next valid
//! frame. A torn tail is cut off.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, OpenHow};

const HEADER: usize = 12;
const CHECK: usize = 8;
/// Largest payload accepted in a frame: bounds what a damaged length field
/// can make the reader allocate.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Appends frames to the current segment.
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    first_seq: u64,
    has_frames: bool,
    old: Vec<(u64, PathBuf)>,
}

/// What a replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    /// Frames applied (newer than the index).
    pub applied: u64,
    /// Highest sequence number seen.
    pub last_seq: u64,
    /// A torn tail was found and cut off.
    pub torn: bool,
    /// Damaged frames skipped (the replay went on at the next valid one).
    pub damaged: u64,
}

fn check(len: u32, seq: u64, payload: &[u8]) -> [u8; CHECK] {
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; CHECK];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK]);
    out
}

/// Encodes one frame; `None` when the payload exceeds [`MAX_FRAME`] (it
/// could not be read back, and its length must not be truncated).
pub(crate) fn frame(seq: u64, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_FRAME {
        return None;
    }
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + CHECK);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&check(len, seq, payload));
    Some(out)
}

/// One valid frame found in a segment.
struct Found<'a> {
    seq: u64,
    payload: &'a [u8],
    /// Bytes the frame occupies.
    size: usize,
}

/// Parses the frame at the start of `bytes` if it is complete and its
/// checksum holds.
fn parse_frame(bytes: &[u8]) -> Option<Found<'_>> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[4..]);
    let seq = u64::from_le_bytes(seq_bytes);
    let plen = usize::try_from(len).ok().filter(|&l| l <= MAX_FRAME)?;
    let payload = bytes.get(HEADER..HEADER + plen)?;
    let sum = bytes.get(HEADER + plen..HEADER + plen + CHECK)?;
    (check(len, seq, payload) == sum).then_some(Found {
        seq,
        payload,
        size: HEADER + plen + CHECK,
    })
}

/// The first valid frame at or after `from` whose sequence number is above
/// `after` (numbers only grow), with its offset: how replay resynchronises
/// after a damaged frame. A candidate must also carry a number a segment of
/// this size could reach, which rules out almost every offset before its
/// checksum is computed.
fn resync(bytes: &[u8], from: usize, after: u64) -> Option<(usize, Found<'_>)> {
    let most_frames = (bytes.len() / (HEADER + CHECK)) as u64;
    (from..bytes.len().saturating_sub(HEADER + CHECK - 1)).find_map(|at| {
        let seq = u64::from_le_bytes(bytes[at + 4..at + HEADER].try_into().ok()?);
        if seq <= after || seq - after > most_frames {
            return None;
        }
        parse_frame(&bytes[at..]).map(|f| (at, f))
    })
}

/// Reads the next frame; `Ok(None)` at a clean end, `Err(())` when the rest
/// of the input is torn or damaged.
#[cfg(test)]
pub(crate) fn read_frame(r: &mut impl Read) -> std::result::Result<Option<(u64, Vec<u8>)>, ()> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).map_err(drop)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let f = parse_frame(&bytes).ok_or(())?;
    Ok(Some((f.seq, f.payload.to_vec())))
}

/// The error for an index change too large for one journal frame.
pub(crate) fn too_large(len: usize, path: &Path) -> Error {
    Error::io(
        "append to journal",
        path,
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "one index change of {len} bytes exceeds the journal's frame limit of \
                 {MAX_FRAME} bytes; nothing was changed (use a smaller batch or inline threshold)"
            ),
        ),
    )
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// Segments in `dir`, sorted by first sequence number. Foreign files are
/// ignored.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let root = dir.parent().unwrap_or(dir);
    let rd = match fsutil::list_in(root, dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).ctx("list", dir),
    };
    for (path, kind) in rd {
        let name = path.file_name().and_then(|n| n.to_str());
        let Some(stem) = name.and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>()
            && kind == fsutil::Kind::File
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Replays every frame with a sequence number above `after`, in order,
/// through `apply`. A damaged frame costs only itself: the replay
/// resynchronises at the next valid, checksummed frame with a higher
/// number. A torn tail (no valid frame after the damage) is cut off, so
/// later appends start from a clean end.
///
/// Numbers may skip (a damaged frame, or an append that failed after its
/// transaction; its caller got an error): every operation re-derives its
/// effect from the current index state, so later frames still apply
/// correctly.
pub(crate) fn replay(
    dir: &Path,
    after: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Replay> {
    let mut out = Replay {
        last_seq: after,
        ..Replay::default()
    };
    let root = dir.parent().unwrap_or(dir);
    for (_, path) in segments(dir)? {
        let mut file =
            fsutil::open_in(root, &path, OpenHow::ReadWrite).ctx("open journal segment", &path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .ctx("read journal segment", &path)?;
        let good_len = replay_segment(&bytes, &path, &mut out, &mut apply)?;
        if good_len < bytes.len() {
            log::warn!(
                "journal {}: torn tail at byte {good_len}; cutting it off",
                path.display()
            );
            file.set_len(good_len as u64)
                .ctx("truncate journal segment", &path)?;
            out.torn = true;
        }
    }
    Ok(out)
}

/// Applies the frames of one segment; returns where its last valid frame
/// ends.
fn replay_segment(
    bytes: &[u8],
    path: &Path,
    out: &mut Replay,
    apply: &mut impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<usize> {
    let mut at = 0;
    let mut good_len = 0;
    while at < bytes.len() {
        let found = match parse_frame(&bytes[at..]) {
            Some(f) => f,
            None => {
                let Some((next, f)) = resync(bytes, at + 1, out.last_seq) else {
                    break;
                };
                log::warn!(
                    "journal {}: damaged frame at byte {at}; skipped {} bytes to the next \
                     valid frame",
                    path.display(),
                    next - at
                );
                out.damaged += 1;
                at = next;
                f
            }
        };
        // Numbers only grow; one at or below what is already applied is in
        // the index (or superseded).
        if found.seq > out.last_seq {
            apply(found.seq, found.payload)?;
            out.applied += 1;
            out.last_seq = found.seq;
        }
        at += found.size;
        good_len = at;
    }
    Ok(good_len)
}

/// Opens segment `path` in `dir` for appending, never through a link.
fn open_segment(dir: &Path, path: &Path) -> Result<File> {
    let root = dir.parent().unwrap_or(dir);
    fsutil::open_in(root, path, OpenHow::Append).ctx("open journal segment", path)
}

impl Journal {
    /// Starts a new segment whose first frame will be `next_seq`. Older
    /// segments are kept until [`Journal::checkpoint`] says they are durable
    /// in the index.
    pub fn start(dir: &Path, next_seq: u64) -> Result<Journal> {
        fsutil::ensure_private_dir(dir)?;
        let old = segments(dir)?;
        let path = dir.join(segment_name(next_seq));
        let file = open_segment(dir, &path)?;
        let old = old.into_iter().filter(|(_, p)| *p != path).collect();
        Ok(Journal {
            dir: dir.to_path_buf(),
            file,
            path,
            first_seq: next_seq,
            has_frames: false,
            old,
        })
    }

    /// Appends one frame with a single write. A payload over
    /// [`MAX_FRAME`] is refused, and nothing is written.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        let Some(bytes) = frame(seq, payload) else {
            return Err(too_large(payload.len(), &self.path));
        };
        let len = self
            .file
            .metadata()
            .ctx("append to journal", &self.path)?
            .len();
        if let Err(e) = self.file.write_all(&bytes) {
            // A short write (a full disk) would leave a torn frame at the
            // tail: cut it off.
            let _ = self.file.set_len(len);
            return Err(Error::io("append to journal", &self.path, e));
        }
        self.has_frames = true;
        Ok(())
    }

    /// Makes appended frames durable on the device.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().ctx("sync journal", &self.path)
    }

    /// Called after the index flushed everything up to `durable_seq`;
    /// `next_seq` is the number the next append will carry. Starts a fresh
    /// segment and deletes the segments the index no longer needs.
    pub fn checkpoint(&mut self, durable_seq: u64, next_seq: u64) -> Result<()> {
        if self.has_frames {
            let path = self.dir.join(segment_name(next_seq));
            let file = open_segment(&self.dir, &path)?;
            let prev = std::mem::replace(&mut self.path, path);
            self.old.push((self.first_seq, prev));
            self.file = file;
            self.first_seq = next_seq;
            self.has_frames = false;
        }
        // A closed segment holds only numbers below the next segment's first.
        let mut keep = Vec::new();
        let mut firsts: Vec<u64> = self.old.iter().map(|(f, _)| *f).collect();
        firsts.push(self.first_seq);
        for (i, (first, path)) in std::mem::take(&mut self.old).into_iter().enumerate() {
            let upper = firsts[i + 1].saturating_sub(1);
            if upper <= durable_seq {
                let root = self.dir.parent().unwrap_or(&self.dir);
                if let Err(e) = fsutil::remove_file_in(root, &path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    log::warn!("could not remove journal segment {}: {e}", path.display());
                }
            } else {
                keep.push((first, path));
            }
        }
        self.old = keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        let mut w = Journal::start(&j, 1).unwrap();
        w.append(1, b"one").unwrap();
        w.append(2, b"two").unwrap();
        w.append(3, b"three").unwrap();
        drop(w);
        // Tear the last frame.
        let seg = j.join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();

        let mut seen = Vec::new();
        let r = replay(&j, 1, |seq, p| {
            seen.push((seq, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(2, b"two".to_vec())]);
        assert!(r.torn);
        assert_eq!(r.last_seq, 2);
        // The cut leaves a clean end: a second replay sees no tear.
        let again = replay(&j, 0, |_, _| Ok(())).unwrap();
        assert!(!again.torn);
        assert_eq!(again.applied, 2);
    }

    #[test]
    fn checkpoint_deletes_only_durable_segments() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        let mut w = Journal::start(&j, 1).unwrap();
        w.append(1, b"a").unwrap();
        w.append(2, b"b").unwrap();
        w.checkpoint(1, 3).unwrap(); // rotates; seq 2 not durable: keep segment 1
        assert_eq!(segments(&j).unwrap().len(), 2);
        w.checkpoint(2, 3).unwrap(); // all durable: drop segment 1
        let segs = segments(&j).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].0, 3);
        w.append(3, b"c").unwrap();
        let mut seen = Vec::new();
        replay(&j, 2, |s, _| {
            seen.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![3]);
    }

    /// Writes 40 frames and returns the segment and each frame's offset.
    fn forty_frames(j: &Path) -> (PathBuf, Vec<u64>) {
        let mut w = Journal::start(j, 1).unwrap();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for seq in 1..=40u64 {
            let payload = format!("entry {seq} ").repeat(seq as usize);
            offsets.push(at);
            at += (HEADER + payload.len() + CHECK) as u64;
            w.append(seq, payload.as_bytes()).unwrap();
        }
        (j.join(segment_name(1)), offsets)
    }

    fn replayed(j: &Path) -> (Vec<u64>, Replay) {
        let mut seen = Vec::new();
        let r = replay(j, 0, |seq, p| {
            assert_eq!(p, format!("entry {seq} ").repeat(seq as usize).as_bytes());
            seen.push(seq);
            Ok(())
        })
        .unwrap();
        (seen, r)
    }

    fn flip_at(path: &Path, at: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at as usize] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn one_damaged_frame_costs_only_itself() {
        // A flipped byte in a payload, in a checksum, in a sequence number
        // and in a length field: each time 39 of the 40 frames replay.
        for (frame_no, within) in [(10usize, 20u64), (0, 4), (25, 12 + 3), (33, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let j = dir.path().join("journal");
            let (seg, offsets) = forty_frames(&j);
            let at = if within == 4 {
                offsets[frame_no + 1] - 2 // last checksum byte of the frame
            } else {
                offsets[frame_no] + within
            };
            flip_at(&seg, at);
            let (seen, r) = replayed(&j);
            let want: Vec<u64> = (1..=40).filter(|&s| s != frame_no as u64 + 1).collect();
            assert_eq!(seen, want, "damage at byte {at} (frame {})", frame_no + 1);
            assert_eq!(r.damaged, 1);
            assert!(!r.torn, "later frames are valid: nothing is cut");
            assert_eq!(r.last_seq, 40);
        }
    }

    #[test]
    fn damage_in_the_last_frame_is_a_torn_tail_and_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        let (seg, offsets) = forty_frames(&j);
        flip_at(&seg, offsets[39] + 30);
        let (seen, r) = replayed(&j);
        assert_eq!(seen, (1..=39).collect::<Vec<_>>());
        assert!(r.torn);
        assert_eq!(fs::metadata(&seg).unwrap().len(), offsets[39]);
    }

    #[test]
    fn an_oversized_frame_is_refused_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("journal");
        let mut w = Journal::start(&j, 1).unwrap();
        w.append(1, b"before").unwrap();
        let huge = vec![7u8; MAX_FRAME + 1];
        let err = w.append(2, &huge).unwrap_err();
        assert!(err.to_string().contains("frame limit"), "{err}");
        assert!(frame(2, &huge).is_none(), "no truncated length");
        w.append(3, b"after").unwrap();
        drop(w);
        let mut seen = Vec::new();
        let r = replay(&j, 0, |seq, p| {
            seen.push((seq, p.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(1, b"before".to_vec()), (3, b"after".to_vec())]);
        assert!(!r.torn);
    }

    #[test]
    fn damaged_length_does_not_allocate() {
        let mut bytes = frame(1, b"x").unwrap();
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &bytes[..]).is_err());
    }
}
