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
//! A torn or damaged frame ends the replay; the segment is cut there.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

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
    /// A torn or damaged frame was found and cut off.
    pub torn: bool,
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

/// Encodes one frame.
pub(crate) fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER + payload.len() + CHECK);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&check(len, seq, payload));
    out
}

/// Reads the next frame; `Ok(None)` at a clean end, `Err(())` when the rest
/// of the input is torn or damaged.
pub(crate) fn read_frame(r: &mut impl Read) -> std::result::Result<Option<(u64, Vec<u8>)>, ()> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header) {
        Ok(0) => return Ok(None),
        Ok(n) if n == HEADER => {}
        _ => return Err(()),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[4..]);
    let seq = u64::from_le_bytes(seq_bytes);
    if len as usize > MAX_FRAME {
        return Err(());
    }
    let mut payload = vec![0u8; len as usize];
    let mut sum = [0u8; CHECK];
    if read_full(r, &mut payload) != Ok(payload.len()) || read_full(r, &mut sum) != Ok(CHECK) {
        return Err(());
    }
    if check(len, seq, &payload) != sum {
        return Err(());
    }
    Ok(Some((seq, payload)))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::result::Result<usize, ()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(got)
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

/// Segments in `dir`, sorted by first sequence number. Foreign files are
/// ignored.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>()
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Replays every frame with a sequence number above `after`, in order,
/// through `apply`. Stops at the first torn frame and cuts the segment
/// there, so later appends start from a clean end.
///
/// Numbers may skip (an append that failed after its transaction; its caller
/// got an error): every operation re-derives its effect from the current
/// index state, so later frames still apply correctly.
pub(crate) fn replay(
    dir: &Path,
    after: u64,
    mut apply: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Replay> {
    let mut out = Replay {
        last_seq: after,
        ..Replay::default()
    };
    for (_, path) in segments(dir)? {
        let file = fsutil::open_rw(&path).ctx("open journal segment", &path)?;
        let mut reader = BufReader::new(&file);
        let mut good_len = 0u64;
        loop {
            match read_frame(&mut reader) {
                Ok(None) => break,
                Ok(Some((seq, payload))) => {
                    // Numbers only grow; one at or below what is already
                    // applied is in the index (or superseded).
                    if seq > out.last_seq {
                        apply(seq, &payload)?;
                        out.applied += 1;
                        out.last_seq = seq;
                    }
                    good_len += (HEADER + payload.len() + CHECK) as u64;
                }
                Err(()) => {
                    log::warn!(
                        "journal {}: torn or damaged frame at byte {good_len}; cutting it off",
                        path.display()
                    );
                    file.set_len(good_len)
                        .ctx("truncate journal segment", &path)?;
                    out.torn = true;
                    break;
                }
            }
        }
        if out.torn {
            break;
        }
    }
    Ok(out)
}

impl Journal {
    /// Starts a new segment whose first frame will be `next_seq`. Older
    /// segments are kept until [`Journal::checkpoint`] says they are durable
    /// in the index.
    pub fn start(dir: &Path, next_seq: u64) -> Result<Journal> {
        fsutil::ensure_private_dir(dir)?;
        let old = segments(dir)?;
        let path = dir.join(segment_name(next_seq));
        let file = fsutil::open_append(&path).ctx("open journal segment", &path)?;
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

    /// Appends one frame with a single write.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<()> {
        let bytes = frame(seq, payload);
        let len = self
            .file
            .metadata()
            .ctx("append to journal", &self.path)?
            .len();
        if let Err(e) = self.file.write_all(&bytes) {
            // A short write (a full disk) would leave a torn frame that
            // hides every later one from replay: cut it off.
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
            let file = fsutil::open_append(&path).ctx("open journal segment", &path)?;
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
                if let Err(e) = fs::remove_file(&path)
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

    #[test]
    fn damaged_length_does_not_allocate() {
        let mut bytes = frame(1, b"x");
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &bytes[..]).is_err());
    }
}
