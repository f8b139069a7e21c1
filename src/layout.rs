//! The cache directory (ARCHITECTURE.md §2):
//!
//! ```text
//! <dir>/
//!   VERSION     format version
//!   index/      sled database (owner only)
//!   journal/    index journal segments (owner only; see journal.rs)
//!   blobs/ab/…  blob files (and `.obao` outboards of those over 8 MiB)
//!   tmp/        staging for atomic writes
//!   locks/      owner.lock, gc.lock, space.reserve, fetch/<key hash>.lock
//!   quarantine/ foreign files `verify --repair` moved out of blobs/
//!   packs/, dicts/  storage core v2 (format-2 caches: see engine/)
//!   migrating/, retired/  a format-1 → 2 migration under way (migrate.rs)
//! ```

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// Format version new caches get by default (the v1 core: sled index with
/// inline payloads, journal, blob files).
pub const FORMAT_VERSION: u32 = 1;
/// Format of caches on the storage core v2 (packs and a lean index; see
/// [`crate::StoreOptions::format`]). The newest format this build reads.
pub const FORMAT_V2: u32 = 2;

/// Names blobcache itself puts in the cache directory.
pub(crate) const OWN_NAMES: &[&str] = &[
    "VERSION",
    "index",
    "journal",
    "blobs",
    "tmp",
    "locks",
    "owner.sock",
    "packs",
    "dicts",
    "quarantine",
    "migrating",
    "retired",
];

/// Paths of one cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub tmp: PathBuf,
    pub locks: PathBuf,
    pub index: PathBuf,
    pub journal: PathBuf,
    /// Where the owner serves guests (see `share`).
    pub sock: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            blobs: root.join("blobs"),
            tmp: root.join("tmp"),
            locks: root.join("locks"),
            index: root.join("index"),
            journal: root.join("journal"),
            sock: root.join("owner.sock"),
        }
    }

    /// Creates the directory tree (0700) or checks an existing one: refuses
    /// a newer format, a directory that holds other things, and symlinked
    /// subdirectories. Writes `VERSION` when missing: `want`, or
    /// [`FORMAT_VERSION`]. Returns the cache's format; an existing cache
    /// keeps its own: asking a format-1 cache for format 2 returns 1 (the
    /// store then migrates it), asking for an older format is an error.
    pub fn prepare(&self, want: Option<u32>) -> Result<u32> {
        if let Some(w) = want.filter(|w| !(FORMAT_VERSION..=FORMAT_V2).contains(w)) {
            return Err(Error::NotACache {
                path: self.root.clone(),
                reason: format!(
                    "format {w} was asked for; this build writes format {FORMAT_VERSION} \
                     (the default) or {FORMAT_V2}"
                ),
            });
        }
        if let Some(parent) = self.root.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        let root_meta = fs::metadata(&self.root);
        if let Ok(m) = &root_meta
            && !m.is_dir()
        {
            return Err(Error::NotACache {
                path: self.root.clone(),
                reason: "it is a file, not a directory".into(),
            });
        }
        if root_meta.is_err() {
            fsutil::ensure_private_dir(&self.root)?;
        } else {
            self.check_existing()?;
            // The root may be a symlink the user chose (e.g. onto another
            // disk); only what is inside it must be real.
            ensure_dir(&fs::canonicalize(&self.root).ctx("resolve", &self.root)?)?;
        }
        for dir in [
            &self.blobs,
            &self.tmp,
            &self.locks,
            &self.index,
            &self.journal,
        ] {
            ensure_dir(dir)?;
        }
        match (self.read_version()?, want) {
            // 1 → 2 is a migration, done by the store (see migrate.rs).
            (Some(found), Some(w)) if w < found => Err(Error::NotACache {
                path: self.root.clone(),
                reason: format!(
                    "it is a format-{found} cache and format {w} was asked for; there is no \
                     migration back to an older format: open it without choosing a format, \
                     or use a new directory for format {w}"
                ),
            }),
            (Some(found), _) => Ok(found),
            (None, want) => {
                let format = want.unwrap_or(FORMAT_VERSION);
                let body = format!("{format}\n");
                let version = self.root.join("VERSION");
                fsutil::write_atomic(&self.root, &self.tmp, &version, body.as_bytes(), true)?;
                Ok(format)
            }
        }
    }

    fn check_existing(&self) -> Result<()> {
        if let Some(found) = self.read_version()? {
            if found > FORMAT_V2 {
                return Err(Error::NewerFormat {
                    path: self.root.clone(),
                    found,
                    supported: FORMAT_V2,
                });
            }
            // Version 1 is the first; 2 is the storage core v2.
            return Ok(());
        }
        // No VERSION: a new cache, or one whose first open was interrupted.
        // Anything else in the directory means it belongs to someone else.
        let entries = fs::read_dir(&self.root).ctx("list", &self.root)?;
        for entry in entries {
            let entry = entry.ctx("list", &self.root)?;
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| OWN_NAMES.contains(&n));
            if !ours {
                return Err(Error::NotACache {
                    path: self.root.clone(),
                    reason: format!(
                        "it already holds {:?} and no blobcache VERSION file; \
                         choose an empty or new directory",
                        name
                    ),
                });
            }
        }
        Ok(())
    }

    /// The format version on disk, `None` when there is no `VERSION` file.
    pub fn read_version(&self) -> Result<Option<u32>> {
        let path = self.root.join("VERSION");
        let text = match fsutil::open_in(&self.root, &path, fsutil::OpenHow::Read) {
            Ok(f) => read_small(f, &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::Symlink { path });
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        match text.trim().parse::<u32>() {
            Ok(v) if v > 0 => Ok(Some(v)),
            _ => Err(Error::NotACache {
                path,
                reason: format!(
                    "VERSION holds {:?}, not a format number; restore it or remove the cache",
                    text.chars().take(40).collect::<String>()
                ),
            }),
        }
    }

    /// Tries to take `locks/<name>`; `Ok(None)` when another process (or
    /// another open store in this one) holds it.
    pub fn try_lock(&self, name: &str) -> Result<Option<File>> {
        let path = self.locks.join(name);
        let f = fsutil::open_in(&self.root, &path, fsutil::OpenHow::ReadWrite)
            .ctx("open lock file", &path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }

    /// Warns when the cache sits on a network filesystem, where file locks
    /// and atomic renames are unreliable. Returns the filesystem's name.
    pub fn warn_if_network_fs(&self) -> Option<&'static str> {
        let name = network_fs_name(&self.root)?;
        log::warn!(
            "cache {} is on a network filesystem ({name}); file locks may not be honoured \
             across machines, so only use it from one machine at a time",
            self.root.display()
        );
        Some(name)
    }
}

/// [`fsutil::ensure_private_dir`], except that on a read-only mount the
/// directory is taken as it is (the store then only reads it).
fn ensure_dir(dir: &Path) -> Result<()> {
    match fsutil::ensure_private_dir(dir) {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::ReadOnlyFilesystem => {
            log::debug!("{} is on a read-only filesystem", dir.display());
            Ok(())
        }
        res => res,
    }
}

fn read_small(f: File, path: &Path) -> Result<String> {
    use std::io::Read;
    let mut s = String::new();
    f.take(64)
        .read_to_string(&mut s)
        .map_err(|e| Error::NotACache {
            path: path.to_path_buf(),
            reason: format!("VERSION is unreadable: {e}"),
        })?;
    Ok(s)
}

/// Names the network filesystem `path` is on, if it is on one.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn network_fs_name(path: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(path).ok()?;
    classify_fs_magic(st.f_type as i64)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn network_fs_name(_path: &Path) -> Option<&'static str> {
    None
}

/// Maps a Linux `statfs.f_type` magic number to a network filesystem name.
pub(crate) fn classify_fs_magic(magic: i64) -> Option<&'static str> {
    match magic as u32 {
        0x6969 => Some("NFS"),
        0x517B => Some("SMB"),
        0xFF53_4D42 => Some("CIFS"),
        0xFE53_4D42 => Some("SMB2"),
        0x00C3_6400 => Some("Ceph"),
        0x5346_414F => Some("AFS"),
        0x0102_1997 => Some("9p"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_magics_are_named() {
        assert_eq!(classify_fs_magic(0x6969), Some("NFS"));
        assert_eq!(
            classify_fs_magic(0xFF53_4D42u32 as i32 as i64),
            Some("CIFS")
        );
        assert_eq!(classify_fs_magic(0xEF53), None); // ext4
    }
}
