//! Outboards: the blake3 tree of a large payload, cut at 1 MiB groups, so a
//! stream can check each group before it hands out a byte of it.
//!
//! A blob's name is the blake3 hash of its raw payload. Blake3 is a binary
//! tree over 1 KiB chunks; a *group* here is a run of [`GROUP_LEN`] bytes
//! (1,024 chunks) starting at a multiple of [`GROUP_LEN`], which is always a
//! complete subtree of that tree (the last group may be short). Its
//! *chaining value* (CV) is the subtree's non-root hash. The outboard of a
//! payload is the list of its groups' CVs, in order: folded with the blake3
//! tree shape (the left subtree holds the largest power-of-two number of
//! groups less than the total) they give the root, which must be the blob's
//! name, so a forged or damaged outboard is found before any byte is read.
//!
//! On disk (`blobs/ab/<62 hex>.obao`, beside the blob; see ARCHITECTURE.md
//! §2), all integers little-endian:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `BCOBAO\0\x01` |
//! | 8 | 8 | raw payload size |
//! | 16 | 32 × groups | the CVs, group 0 first |
//!
//! This module is pure computation and encoding; `blobs` owns the files.

use std::io::{self, Read};

use blake3::hazmat::{self, HasherExt, Mode};

use crate::hash::{BlobHash, CHUNK};

/// log2 of [`GROUP_LEN`].
pub(crate) const GROUP_LOG: u32 = 20;
/// Bytes per verified group: 1 MiB, 1,024 blake3 chunks. A power of two,
/// so every group is a whole subtree of the blake3 tree. A stream holds one
/// group in memory; the outboard costs 32 bytes per group (1/32,768 of the
/// payload).
pub(crate) const GROUP_LEN: usize = 1 << GROUP_LOG;
/// Suffix of an outboard's file name, after the blob's.
pub(crate) const SUFFIX: &str = ".obao";
const MAGIC: &[u8; 8] = b"BCOBAO\x00\x01";
const HEADER_LEN: usize = 16;

/// The chaining value of one group.
pub(crate) type Cv = hazmat::ChainingValue;

/// Number of groups of a payload of `raw_size` bytes.
pub(crate) fn group_count(raw_size: u64) -> u64 {
    raw_size.div_ceil(GROUP_LEN as u64)
}

/// Byte length of the outboard file for a payload of `raw_size` bytes.
pub(crate) fn encoded_len(raw_size: u64) -> u64 {
    HEADER_LEN as u64 + 32 * group_count(raw_size)
}

/// The CV of group `index` holding `bytes` (1 to [`GROUP_LEN`] bytes) of a
/// payload of more than one group.
pub(crate) fn group_cv(index: u64, bytes: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index << GROUP_LOG);
    h.update(bytes);
    h.finalize_non_root()
}

/// The root hash the CVs of a payload of two or more groups fold into;
/// `None` for fewer than two (a one-group payload's root is not a merge).
pub(crate) fn root(cvs: &[Cv]) -> Option<BlobHash> {
    if cvs.len() < 2 {
        return None;
    }
    let (left, right) = cvs.split_at(left_len(cvs.len()));
    let h = hazmat::merge_subtrees_root(&subtree(left), &subtree(right), Mode::Hash);
    Some(BlobHash(*h.as_bytes()))
}

/// The largest power of two below `n` (n ≥ 2): how many groups the left
/// subtree of `n` groups holds.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree(cvs: &[Cv]) -> Cv {
    match cvs {
        [] => [0; 32],
        [one] => *one,
        _ => {
            let (left, right) = cvs.split_at(left_len(cvs.len()));
            hazmat::merge_subtrees_non_root(&subtree(left), &subtree(right), Mode::Hash)
        }
    }
}

/// The outboard file's bytes.
pub(crate) fn encode(raw_size: u64, cvs: &[Cv]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 32 * cvs.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&raw_size.to_le_bytes());
    for cv in cvs {
        out.extend_from_slice(cv);
    }
    out
}

/// Parses an outboard file and checks that it describes `raw_size` bytes
/// whose blake3 is `hash`. The error says what is wrong.
pub(crate) fn decode(bytes: &[u8], raw_size: u64, hash: &BlobHash) -> Result<Vec<Cv>, String> {
    if bytes.len() as u64 != encoded_len(raw_size) {
        return Err(format!(
            "{} bytes, expected {} for a {raw_size}-byte payload",
            bytes.len(),
            encoded_len(raw_size)
        ));
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err("not an outboard (wrong magic)".into());
    }
    if header[8..16] != raw_size.to_le_bytes() {
        return Err("describes a payload of another size".into());
    }
    let cvs: Vec<Cv> = body
        .chunks_exact(32)
        .filter_map(|c| c.try_into().ok())
        .collect();
    match root(&cvs) {
        Some(r) if r == *hash => Ok(cvs),
        Some(_) => Err("its group hashes do not lead to the blob's hash".into()),
        None => Err("too few groups for an outboard".into()),
    }
}

/// Hashes a payload as it passes, keeping the CV of every group.
pub(crate) struct TreeHasher {
    /// The current group's hasher; group 0's starts at offset 0, so it can
    /// also give the root of a one-group payload.
    group: blake3::Hasher,
    in_group: usize,
    cvs: Vec<Cv>,
    len: u64,
}

impl TreeHasher {
    pub(crate) fn new() -> TreeHasher {
        TreeHasher {
            group: blake3::Hasher::new(),
            in_group: 0,
            cvs: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // A full group is closed only when more bytes come: a payload
            // of exactly one group needs its hasher's root, not its CV.
            if self.in_group == GROUP_LEN {
                self.cvs.push(self.group.finalize_non_root());
                self.group = blake3::Hasher::new();
                self.group.set_input_offset(self.len);
                self.in_group = 0;
            }
            let take = data.len().min(GROUP_LEN - self.in_group);
            self.group.update(&data[..take]);
            self.in_group += take;
            self.len += take as u64;
            data = &data[take..];
        }
    }

    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The payload's hash and its group CVs (empty for one group or less).
    pub(crate) fn finish(mut self) -> (BlobHash, Vec<Cv>) {
        if self.cvs.is_empty() {
            return (BlobHash(*self.group.finalize().as_bytes()), Vec::new());
        }
        self.cvs.push(self.group.finalize_non_root());
        let root = root(&self.cvs).unwrap_or(BlobHash([0; 32]));
        (root, self.cvs)
    }
}

/// Hashes everything `src` yields.
pub(crate) fn hash_stream(src: &mut dyn Read) -> io::Result<TreeHasher> {
    let mut hasher = TreeHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return Ok(hasher),
            Ok(k) => hasher.update(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads a decoded payload one group at a time and hands out a group's
/// bytes only once its CV matches the outboard's. A group that does not
/// match, a payload that ends early or runs long, fails the read with
/// `InvalidData` before any of that group's bytes leave, and every later
/// read fails the same way. Memory: one group.
pub(crate) struct GroupReader {
    inner: Box<dyn Read + Send>,
    cvs: Vec<Cv>,
    raw_size: u64,
    /// Index of the next group to load.
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    failed: Option<String>,
}

impl GroupReader {
    /// `cvs` must have come from [`decode`] or a [`TreeHasher`] over the
    /// same payload (checked against its hash).
    pub(crate) fn new(inner: Box<dyn Read + Send>, cvs: Vec<Cv>, raw_size: u64) -> GroupReader {
        GroupReader {
            inner,
            cvs,
            raw_size,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            failed: None,
        }
    }

    fn fail(&mut self, why: String) -> io::Error {
        self.failed = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Loads and checks the next group; false at the end of the payload.
    fn load(&mut self) -> io::Result<bool> {
        let start = self.next << GROUP_LOG;
        if start >= self.raw_size {
            return self.expect_end().map(|()| false);
        }
        let want = (self.raw_size - start).min(GROUP_LEN as u64) as usize;
        self.buf.resize(want, 0);
        let got = self.fill(want)?;
        if got < want {
            let why = format!(
                "ended after {} of {} bytes",
                start + got as u64,
                self.raw_size
            );
            return Err(self.fail(why));
        }
        let index = self.next;
        let expected = usize::try_from(index).ok().and_then(|i| self.cvs.get(i));
        if expected != Some(&group_cv(index, &self.buf)) {
            let why = format!(
                "bytes {start}..{} (group {index}) do not match the blob's hash tree",
                start + want as u64
            );
            return Err(self.fail(why));
        }
        self.next += 1;
        self.pos = 0;
        Ok(true)
    }

    /// Reads into `buf[..want]` until full or the end; returns bytes read.
    fn fill(&mut self, want: usize) -> io::Result<usize> {
        let mut got = 0;
        while got < want {
            match self.inner.read(&mut self.buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
        Ok(got)
    }

    fn expect_end(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(self.fail("longer than recorded".into())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }
}

impl Read for GroupReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() && !self.load()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn tree_hasher_matches_blake3_at_group_boundaries() {
        for len in [
            0,
            1,
            GROUP_LEN - 1,
            GROUP_LEN,
            GROUP_LEN + 1,
            2 * GROUP_LEN,
            3 * GROUP_LEN + 7,
            5 * GROUP_LEN,
            9 * GROUP_LEN - 1,
        ] {
            let data = payload(len);
            let mut h = TreeHasher::new();
            for piece in data.chunks(100_003) {
                h.update(piece);
            }
            let (hash, cvs) = h.finish();
            assert_eq!(hash, BlobHash::of(&data), "len {len}");
            if len > GROUP_LEN {
                assert_eq!(cvs.len() as u64, group_count(len as u64));
                assert_eq!(root(&cvs), Some(hash));
                let cv1 = group_cv(1, &data[GROUP_LEN..(2 * GROUP_LEN).min(len)]);
                assert_eq!(cvs[1], cv1);
            } else {
                assert!(cvs.is_empty());
            }
        }
    }

    #[test]
    fn decode_refuses_any_damage() {
        let data = payload(3 * GROUP_LEN + 5);
        let (hash, cvs) = {
            let mut h = TreeHasher::new();
            h.update(&data);
            h.finish()
        };
        let good = encode(data.len() as u64, &cvs);
        assert_eq!(decode(&good, data.len() as u64, &hash).unwrap(), cvs);
        for at in [0, 9, 16, 16 + 32 * 3 + 31] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            assert!(decode(&bad, data.len() as u64, &hash).is_err(), "byte {at}");
        }
        assert!(decode(&good[..good.len() - 1], data.len() as u64, &hash).is_err());
        assert!(decode(&good, data.len() as u64 + 1, &hash).is_err());
    }

    #[test]
    fn group_reader_stops_before_a_damaged_group() {
        let data = payload(4 * GROUP_LEN + 100);
        let mut h = TreeHasher::new();
        h.update(&data);
        let (_, cvs) = h.finish();
        let mut bad = data.clone();
        bad[2 * GROUP_LEN + 10] ^= 0x40;
        let mut r = GroupReader::new(
            Box::new(io::Cursor::new(bad)),
            cvs.clone(),
            data.len() as u64,
        );
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, data[..2 * GROUP_LEN]);
        assert!(r.read(&mut [0u8; 10]).is_err());
        // Too long, too short.
        let mut long = data.clone();
        long.push(0);
        let mut r = GroupReader::new(
            Box::new(io::Cursor::new(long)),
            cvs.clone(),
            data.len() as u64,
        );
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let short = data[..data.len() - 1].to_vec();
        let mut r = GroupReader::new(
            Box::new(io::Cursor::new(short)),
            cvs.clone(),
            data.len() as u64,
        );
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let mut r = GroupReader::new(
            Box::new(io::Cursor::new(data.clone())),
            cvs,
            data.len() as u64,
        );
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
    }
}
