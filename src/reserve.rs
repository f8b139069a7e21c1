//! The space reserve: `locks/space.reserve`, a file of [`RESERVE_BYTES`]
//! allocated blocks kept while the disk has room, so that a full disk
//! never locks the cache out of its own index (DESIGN.md §3, invariant 7).
//!
//! Opening the index writes (sled's log, a journal segment, a checkpoint),
//! and so do `rm`, `clear` and `gc`: on a full disk they would all fail
//! with "No space left on device" and the cache could not free its own
//! space. When opening fails that way, the store releases the reserve and
//! tries again; puts are then refused (with [`Error::DiskFull`]) until the
//! reserve can be allocated again, so the room it gave back stays for the
//! commands that free space.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil;

/// Size of the reserve. Measured on a full tmpfs: opening a 2,000-entry
/// index, replaying its journal, a checkpoint and a `clear` of every entry
/// used under 1 MiB; the rest is headroom for larger indexes.
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;

/// Name of the reserve file inside `locks/`.
pub(crate) const RESERVE_NAME: &str = "space.reserve";

/// The reserve of one cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Reserve {
    path: PathBuf,
    tmp: PathBuf,
}

impl Reserve {
    /// The reserve in `locks`, staged through `tmp`.
    pub fn new(locks: &Path, tmp: &Path) -> Reserve {
        Reserve {
            path: locks.join(RESERVE_NAME),
            tmp: tmp.to_path_buf(),
        }
    }

    /// True when the reserve file is in place at full size.
    pub fn is_held(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_file() && fsutil::disk_bytes(&m) >= RESERVE_BYTES)
    }

    /// Allocates the reserve when it is missing or short. Staged in `tmp/`
    /// and renamed into place, so a reader never sees a partial one; a
    /// failed allocation (the disk is full) leaves nothing behind.
    pub fn ensure(&self) -> Result<()> {
        if self.is_held() {
            return Ok(());
        }
        let tmp = fsutil::unique_tmp_name(&self.tmp, "reserve");
        let res = fsutil::create_new(&tmp)
            .and_then(|f| allocate(&f, RESERVE_BYTES))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io("allocate the space reserve", &self.path, e));
        }
        Ok(())
    }

    /// Allocates the reserve again when the disk has room for it and as
    /// much again; false when it is missing and the disk is too full.
    pub fn restore(&self) -> Result<bool> {
        if self.is_held() {
            return Ok(true);
        }
        let parent = self.path.parent().unwrap_or(&self.path);
        let roomy = rustix::fs::statvfs(parent).map_or(true, |st| {
            st.f_bavail.saturating_mul(st.f_frsize) >= 2 * RESERVE_BYTES
        });
        if !roomy {
            return Ok(false);
        }
        match self.ensure() {
            Ok(()) => Ok(true),
            Err(e) if is_disk_full(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the reserve's blocks back to the filesystem. True when there
    /// was one to release.
    pub fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                log::warn!(
                    "could not release the space reserve {}: {e}",
                    self.path.display()
                );
                false
            }
        }
    }
}

/// Allocates `len` bytes of real blocks (not a sparse file).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn allocate(f: &File, len: u64) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    match fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate get zeros written instead.
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => write_zeros(f, len),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn allocate(f: &File, len: u64) -> io::Result<()> {
    write_zeros(f, len)
}

fn write_zeros(mut f: &File, len: u64) -> io::Result<()> {
    use std::io::Write;
    let chunk = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// True when `e` says the disk (or the quota) is full.
pub(crate) fn is_disk_full(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => io_full(source),
        // sled's errors arrive as text.
        Error::Index { message, .. } => {
            message.contains("No space left on device") || message.contains("Disk quota exceeded")
        }
        _ => false,
    }
}

fn io_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Whether this process may change the cache, and how.
#[derive(Debug)]
pub(crate) struct Writable {
    reserve: Reserve,
    /// Why the cache is read-only here (`None`: it is writable).
    read_only: Option<String>,
    /// The reserve is released (or could not be allocated): puts wait
    /// until it can be allocated again.
    low_space: std::sync::atomic::AtomicBool,
}

impl Writable {
    /// The state after opening: `read_only` with its reason, or writable,
    /// with `low_space` when the reserve was released or is missing.
    pub fn new(reserve: Reserve, read_only: Option<String>, low_space: bool) -> Writable {
        Writable {
            reserve,
            read_only,
            low_space: low_space.into(),
        }
    }

    /// Why the cache is read-only, if it is.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Whether a put may go ahead in the cache at `root`: refused on a
    /// read-only cache, and on a full disk until the reserve is back.
    pub fn check_put(&self, root: &Path) -> Result<()> {
        use std::sync::atomic::Ordering;
        self.check_write(root)?;
        if !self.low_space.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !self.reserve.restore()? {
            return Err(Error::DiskFull {
                path: root.to_path_buf(),
            });
        }
        self.low_space.store(false, Ordering::Relaxed);
        log::info!(
            "the space reserve of {} is back: puts resume",
            root.display()
        );
        Ok(())
    }

    /// Refuses any change to a read-only cache.
    pub fn check_write(&self, root: &Path) -> Result<()> {
        match &self.read_only {
            Some(reason) => Err(Error::ReadOnly {
                path: root.to_path_buf(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Releases the reserve after a change that frees space failed on a
    /// full disk; true when there was one to release (retry the change).
    pub fn release_reserve(&self, root: &Path) -> bool {
        if self.read_only.is_some() || !self.reserve.release() {
            return false;
        }
        self.low_space
            .store(true, std::sync::atomic::Ordering::Relaxed);
        warn_released(root);
        true
    }
}

/// Says that the reserve of the cache at `root` was released, and why.
pub(crate) fn warn_released(root: &Path) {
    log::warn!(
        "the disk holding cache {} is full: released its {} space reserve so reads, \
         rm, clear and gc work; puts are refused until space is freed",
        root.display(),
        bytesize::ByteSize::b(RESERVE_BYTES)
    );
}

/// True when `e` says the cache's files cannot be written: a read-only
/// filesystem, or (for the lock file) no write permission.
pub(crate) fn is_read_only(e: &Error) -> bool {
    match e {
        Error::Io { source, op, .. } => {
            source.kind() == io::ErrorKind::ReadOnlyFilesystem
                || (*op == "open lock file" && source.kind() == io::ErrorKind::PermissionDenied)
        }
        _ => false,
    }
}
