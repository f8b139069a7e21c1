//! Scanning and recovery: walking a pack needle by needle without the
//! index, verifying each, resynchronising after damage, and trimming the
//! torn tail a dead writer left.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::needle::{self, HEADER_LEN, MAGIC, NeedleCodec};
use super::{FILE_HEADER_LEN, Location, PackDir, PackError, check_file_header};
use crate::blobs::BlobHash;
use crate::error::Error;

/// Bytes read from the pack at a time.
const WINDOW: usize = 1 << 20;

/// A valid needle found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedNeedle {
    /// Where it is.
    pub location: Location,
    /// blake3 of its raw payload.
    pub hash: BlobHash,
    /// How its payload is stored.
    pub codec: NeedleCodec,
    /// Its zstd dictionary (0 = none).
    pub dict: u16,
    /// Decoded payload length.
    pub raw_len: u32,
    /// The key stored with it.
    pub key: Vec<u8>,
    /// The record stored with it.
    pub record: Vec<u8>,
}

/// A byte range of a pack that holds no valid needle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damaged {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What a scan found, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// The pack scanned.
    pub pack: u32,
    /// The file header is intact and names this pack.
    pub header_ok: bool,
    /// Valid needles (checksum verified; payload too when asked).
    pub needles: Vec<ScannedNeedle>,
    /// Ranges holding no valid needle (the header excepted).
    pub damaged: Vec<Damaged>,
    /// Offset just past the last valid needle (or past the header): where
    /// a torn tail starts.
    pub valid_tail: u64,
    /// Length of the file.
    pub file_len: u64,
}

impl ScanReport {
    /// Bytes after the last valid needle.
    pub fn torn_tail(&self) -> u64 {
        self.file_len - self.valid_tail
    }
}

/// Something a pack can be read from at an offset.
trait Source {
    fn len(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct FileSource<'a> {
    file: &'a File,
    len: u64,
}

impl Source for FileSource<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// A buffered view of a source: the scan asks for byte ranges, mostly in
/// order, and gets them without one read per needle.
struct Window<'a, S: Source + ?Sized> {
    src: &'a S,
    start: u64,
    buf: Vec<u8>,
}

impl<'a, S: Source + ?Sized> Window<'a, S> {
    fn new(src: &'a S) -> Self {
        Window {
            src,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// `n` bytes at `off`, or `None` when the source ends before them.
    fn get(&mut self, off: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = off.checked_add(n as u64).filter(|e| *e <= self.src.len()) else {
            return Ok(None);
        };
        let have = off >= self.start && end <= self.start + self.buf.len() as u64;
        if !have {
            let take = (self.src.len() - off).min(WINDOW.max(n) as u64) as usize;
            self.buf.resize(take, 0);
            self.src.read_at(&mut self.buf, off)?;
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }
}

/// Scans a pack held in memory (the fuzz target's entry point).
pub fn scan_bytes(pack: u32, bytes: &[u8], verify_payloads: bool) -> ScanReport {
    match scan_source(pack, bytes, verify_payloads, 0) {
        Ok(r) => r,
        // Reading from a slice only fails past its end, which the window
        // never asks for; report the whole slice as damaged if it did.
        Err(_) => ScanReport {
            pack,
            header_ok: false,
            needles: Vec::new(),
            damaged: vec![Damaged {
                offset: 0,
                len: bytes.len() as u64,
            }],
            valid_tail: 0,
            file_len: bytes.len() as u64,
        },
    }
}

/// Scans an open pack file. With `verify_payloads`, each needle's payload
/// is also decoded and hash-checked (a needle that fails is damage);
/// needles that name a zstd dictionary are checked by their checksum only
/// (the scan has no dictionaries).
pub fn scan_file(pack: u32, file: &File, verify_payloads: bool) -> io::Result<ScanReport> {
    scan_file_from(pack, file, 0, verify_payloads)
}

/// Scans an open pack file from offset `from` on (a needle boundary, e.g.
/// how far an index has applied the pack); `damaged`, `needles` and
/// `valid_tail` then describe only the bytes from there.
pub fn scan_file_from(
    pack: u32,
    file: &File,
    from: u64,
    verify_payloads: bool,
) -> io::Result<ScanReport> {
    let len = file.metadata()?.len();
    scan_source(pack, &FileSource { file, len }, verify_payloads, from)
}

fn scan_source<S: Source + ?Sized>(
    pack: u32,
    src: &S,
    verify: bool,
    from: u64,
) -> io::Result<ScanReport> {
    let mut w = Window::new(src);
    let header_ok = match w.get(0, FILE_HEADER_LEN as usize)? {
        Some(h) => check_file_header(h, pack).is_ok(),
        None => false,
    };
    let start = if header_ok {
        FILE_HEADER_LEN.max(from)
    } else {
        0
    };
    let mut report = ScanReport {
        pack,
        header_ok,
        needles: Vec::new(),
        damaged: Vec::new(),
        valid_tail: start,
        file_len: src.len(),
    };
    let mut off = start;
    while off < report.file_len {
        if let Some(n) = needle_at(&mut w, pack, off, verify)? {
            off = n.location.end();
            report.valid_tail = off;
            report.needles.push(n);
            continue;
        }
        let next = resync(&mut w, pack, off + 1, verify)?;
        let end = next.as_ref().map_or(report.file_len, |n| n.location.offset);
        report.damaged.push(Damaged {
            offset: off,
            len: end - off,
        });
        let Some(n) = next else { break };
        off = n.location.end();
        report.valid_tail = off;
        report.needles.push(n);
    }
    Ok(report)
}

/// The valid needle starting exactly at `off`, if there is one.
fn needle_at<S: Source + ?Sized>(
    w: &mut Window<'_, S>,
    pack: u32,
    off: u64,
    verify: bool,
) -> io::Result<Option<ScannedNeedle>> {
    let Some(head) = w.get(off, HEADER_LEN)? else {
        return Ok(None);
    };
    let Ok(header) = needle::NeedleHeader::parse(head) else {
        return Ok(None);
    };
    let total = header.total_len();
    let Some(bytes) = w.get(off, total)? else {
        return Ok(None);
    };
    let Ok(n) = needle::parse(bytes) else {
        return Ok(None);
    };
    // A needle naming a dictionary is checked by its checksum here; its
    // payload is verified when it is read with the dictionary.
    if verify && n.header.dict == 0 && n.payload().is_err() {
        return Ok(None);
    }
    Ok(Some(ScannedNeedle {
        location: Location {
            pack,
            offset: off,
            len: total as u32,
        },
        hash: n.header.hash,
        codec: n.header.codec,
        dict: n.header.dict,
        raw_len: n.header.raw_len,
        key: n.key.to_vec(),
        record: n.record.to_vec(),
    }))
}

/// The first valid needle at or after `from`: each occurrence of the
/// magic is tried in turn.
fn resync<S: Source + ?Sized>(
    w: &mut Window<'_, S>,
    pack: u32,
    mut from: u64,
    verify: bool,
) -> io::Result<Option<ScannedNeedle>> {
    let len = w.src.len();
    while from < len {
        let n = (len - from).min(WINDOW as u64) as usize;
        let hit = match w.get(from, n)? {
            Some(chunk) => memchr::memmem::find(chunk, &MAGIC),
            None => None,
        };
        let Some(i) = hit else {
            // A magic cut by the chunk's end is found by the next chunk.
            if from + (n as u64) >= len {
                return Ok(None);
            }
            from += (n - (MAGIC.len() - 1)).max(1) as u64;
            continue;
        };
        let at = from + i as u64;
        if let Some(found) = needle_at(w, pack, at, verify)? {
            return Ok(Some(found));
        }
        from = at + 1;
    }
    Ok(None)
}

/// What recovery did to a sealed pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The scan (before trimming).
    pub report: ScanReport,
    /// Torn-tail bytes cut off.
    pub truncated: u64,
    /// The file held no needle and no valid header and was removed.
    pub removed: bool,
}

/// Recovers pack `id` if no live writer holds it (`Ok(None)` otherwise):
/// scans it, cuts a torn tail (bytes after the last valid needle, which
/// no acknowledged append can have produced) and removes a file that
/// never got its header. Damage between valid needles is left for GC.
pub fn recover(dir: &PackDir, id: u32) -> Result<Option<Recovered>, PackError> {
    recover_from(dir, id, 0)
}

/// [`recover`] scanning only from offset `from` on (a needle boundary
/// before which the pack is known to be sound).
pub fn recover_from(dir: &PackDir, id: u32, from: u64) -> Result<Option<Recovered>, PackError> {
    let Some(_lock) = dir.try_lock(id)? else {
        return Ok(None);
    };
    let file = dir.open_pack(id, true)?;
    let path = dir.path(id);
    let report = scan_file_from(id, &file, from, false).map_err(|e| Error::io("scan", &path, e))?;
    if !report.header_ok && report.needles.is_empty() {
        // Either a file whose writer died before writing its header, or
        // something that is not a pack: only the former is removed.
        if report.file_len >= FILE_HEADER_LEN {
            return Ok(Some(Recovered {
                report,
                truncated: 0,
                removed: false,
            }));
        }
        dir.remove_pack(id)?;
        return Ok(Some(Recovered {
            report,
            truncated: 0,
            removed: true,
        }));
    }
    let truncated = report.torn_tail();
    if truncated > 0 {
        file.set_len(report.valid_tail)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("truncate", &path, e))?;
    }
    Ok(Some(Recovered {
        report,
        truncated,
        removed: false,
    }))
}
