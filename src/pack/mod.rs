//! Storage core v2 (in progress, not used by [`crate::Store`] yet): small
//! and medium payloads as needles in append-only pack files.
//!
//! ```text
//! <dir>/packs/NNNNNNNN.pack       16-byte file header, then needles
//! <dir>/locks/pack-NNNNNNNN.lock  held (exclusive) by the pack's writer
//! ```
//!
//! Each writing process appends to its own active pack, which it holds
//! under an exclusive lock; a pack whose lock is free is sealed and never
//! appended to again. Every read verifies the needle's checksum and the
//! blake3 of the decoded payload. See `ARCHITECTURE.md`, "Storage core v2",
//! for the byte layouts and the recovery rules.
//!
//! Layering: this module depends only on the format helpers below it
//! (`fsutil`, `mmap`, the blob codec, errors), never on the store, sharing
//! or GC.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::fsutil::{self, OpenHow};

pub mod dict;
pub mod needle;
pub mod reader;
pub mod record;
pub mod scan;
pub mod writer;

pub use dict::{DictDir, Dictionary};
pub use needle::{HEADER_LEN, MAX_RAW, NeedleCodec, Prepared};
pub use reader::{Needle, PackReader, ReadMode};
pub use record::{LEAN_LEN, LeanRecord, Place};
pub use scan::{
    Damaged, Recovered, ScanReport, ScannedNeedle, recover, recover_from, scan_bytes, scan_file,
    scan_file_from,
};
pub use writer::{Appended, PackWriter, PackWriterOptions};

/// Bytes of a pack file's header: `BCPACK\0\x01`, the pack id (u32 LE),
/// four zero bytes.
pub const FILE_HEADER_LEN: u64 = 16;
const FILE_MAGIC: [u8; 8] = *b"BCPACK\0\x01";

/// Where a needle lives: its pack, its offset in the pack, its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Pack id (the file `packs/{id:08x}.pack`); 0 is never used.
    pub pack: u32,
    /// Offset of the needle's first byte.
    pub offset: u64,
    /// Length of the whole needle.
    pub len: u32,
}

impl Location {
    /// Offset just past the needle.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Why a pack operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The needle at this location is damaged or is not the one asked for;
    /// no byte of it is returned.
    #[error("pack {pack:08x} holds no valid needle at offset {offset}: {reason}")]
    Corrupt {
        /// Pack id.
        pack: u32,
        /// Offset asked for.
        offset: u64,
        /// What the check found.
        reason: String,
    },
    /// The pack file does not exist (removed by GC, or never written).
    #[error("pack {pack:08x} does not exist")]
    Missing {
        /// Pack id.
        pack: u32,
    },
    /// The payload cannot be framed (too large, key too long).
    #[error("cannot write the needle: {0}")]
    Invalid(String),
    /// A filesystem failure, a symlink, a directory that is not ours.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The `packs/` directory of one cache, held open (without following a
/// symlink) so every pack is opened relative to the real directory.
#[derive(Debug)]
pub struct PackDir {
    /// The cache directory.
    root: PathBuf,
    packs: PathBuf,
    locks: PathBuf,
    fd: OwnedFd,
}

/// File name of pack `id`.
pub fn pack_name(id: u32) -> String {
    format!("{id:08x}.pack")
}

fn lock_name(id: u32) -> String {
    format!("pack-{id:08x}.lock")
}

/// Parses `NNNNNNNN.pack` or `pack-NNNNNNNN.lock` names.
fn parse_id(name: &str) -> Option<u32> {
    let hex = name
        .strip_suffix(".pack")
        .or_else(|| name.strip_prefix("pack-")?.strip_suffix(".lock"))?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

impl PackDir {
    /// Opens `<root>/packs` (and `<root>/locks`), creating them 0700 when
    /// `create` is set. A symlink at either is refused.
    pub fn open(root: &Path, create: bool) -> Result<PackDir, PackError> {
        let packs = root.join("packs");
        let locks = root.join("locks");
        if create {
            fsutil::ensure_private_dir(&packs)?;
            fsutil::ensure_private_dir(&locks)?;
        }
        let fd = fsutil::open_dir_in(root, &packs).map_err(|e| dir_error(&packs, e))?;
        Ok(PackDir {
            root: root.to_path_buf(),
            packs,
            locks,
            fd,
        })
    }

    /// Path of pack `id` (for messages and tests).
    pub fn path(&self, id: u32) -> PathBuf {
        self.packs.join(pack_name(id))
    }

    /// Opens pack `id` for reading, never through a symlink.
    pub(crate) fn open_pack(&self, id: u32, write: bool) -> Result<File, PackError> {
        let how = if write {
            OpenHow::ReadWriteExisting
        } else {
            OpenHow::Read
        };
        match fsutil::open_at(&self.fd, pack_name(id), how) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PackError::Missing { pack: id }),
            Err(e) => Err(file_error(&self.path(id), e)),
        }
    }

    /// Creates pack `id` (0600); `Ok(None)` when it already exists.
    fn create_pack(&self, id: u32) -> Result<Option<File>, PackError> {
        match fsutil::open_at(&self.fd, pack_name(id), OpenHow::ReadWriteNew) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(file_error(&self.path(id), e)),
        }
    }

    /// Takes pack `id`'s writer lock; `Ok(None)` when a live writer has it.
    pub(crate) fn try_lock(&self, id: u32) -> Result<Option<File>, PackError> {
        let path = self.locks.join(lock_name(id));
        let f = fsutil::open_in(&self.root, &path, OpenHow::ReadWrite)
            .map_err(|e| file_error(&path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e).into()),
        }
    }

    /// Ids of the packs present, ascending.
    pub fn pack_ids(&self) -> Result<Vec<u32>, PackError> {
        let mut ids = self.ids_in(&self.packs, ".pack")?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// The largest id any pack or pack lock ever used: lock files outlive
    /// their packs, so an id is never handed out twice.
    fn highest_id(&self) -> Result<u32, PackError> {
        let packs = self.ids_in(&self.packs, ".pack")?;
        let locks = self.ids_in(&self.locks, ".lock")?;
        Ok(packs.into_iter().chain(locks).max().unwrap_or(0))
    }

    /// fsyncs the directory so a new pack's name is durable.
    fn sync(&self) -> Result<(), PackError> {
        rustix::fs::fsync(&self.fd).map_err(|e| Error::io("sync", &self.packs, e.into()).into())
    }

    /// Makes packs `ids` and their names durable (fdatasync of each, then
    /// of the directory): what a writer in `Buffered` mode never does.
    pub(crate) fn sync_packs(&self, ids: impl IntoIterator<Item = u32>) -> Result<(), PackError> {
        for id in ids {
            let file = self.open_pack(id, false)?;
            file.sync_data()
                .map_err(|e| Error::io("sync", self.path(id), e))?;
        }
        self.sync()
    }

    /// Removes pack `id` (never through a symlink).
    pub(crate) fn remove_pack(&self, id: u32) -> Result<(), PackError> {
        let path = self.path(id);
        fsutil::remove_file_in(&self.root, &path).map_err(|e| Error::io("remove", &path, e).into())
    }

    /// Ids in the names of the files in `dir` ending with `suffix`.
    fn ids_in(&self, dir: &Path, suffix: &str) -> Result<Vec<u32>, PackError> {
        let entries = match fsutil::list_in(&self.root, dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(dir_error(dir, e)),
        };
        let ids = entries.iter().filter_map(|(path, _)| {
            let name = path.file_name()?.to_str()?;
            name.ends_with(suffix).then(|| parse_id(name))?
        });
        Ok(ids.collect())
    }
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn dir_error(path: &Path, e: io::Error) -> PackError {
    if fsutil::is_symlink_error(&e) || is_symlink(path) {
        return Error::Symlink {
            path: path.to_path_buf(),
        }
        .into();
    }
    if e.raw_os_error() == Some(libc::ENOTDIR) {
        return Error::NotACache {
            path: path.to_path_buf(),
            reason: "expected the packs directory here but found a file; move it away".into(),
        }
        .into();
    }
    Error::io("open", path, e).into()
}

fn file_error(path: &Path, e: io::Error) -> PackError {
    if fsutil::is_symlink_error(&e) || is_symlink(path) {
        return Error::Symlink {
            path: path.to_path_buf(),
        }
        .into();
    }
    Error::io("open", path, e).into()
}

/// The 16-byte header a pack file starts with.
pub fn file_header(id: u32) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&id.to_le_bytes());
    h
}

/// Checks a pack file's header against the pack id it should carry.
fn check_file_header(bytes: &[u8], id: u32) -> Result<(), String> {
    if bytes.len() < FILE_HEADER_LEN as usize {
        return Err("the pack file is shorter than its header".into());
    }
    if bytes[..8] != FILE_MAGIC {
        return Err("not a pack file (bad header)".into());
    }
    let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if found != id {
        return Err(format!("the file's header names pack {found:08x}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_id(&pack_name(0x1234)), Some(0x1234));
        assert_eq!(parse_id(&lock_name(7)), Some(7));
        assert_eq!(parse_id("1234.pack"), None);
        assert_eq!(parse_id("zzzzzzzz.pack"), None);
        assert!(check_file_header(&file_header(9), 9).is_ok());
        assert!(check_file_header(&file_header(9), 8).is_err());
    }
}
