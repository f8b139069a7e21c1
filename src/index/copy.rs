//! A private, writable copy of a cache's index and journal, for caches
//! that cannot be written (a read-only mount, or a full disk with no
//! reserve left): sled cannot open a database it cannot write, so the
//! copy is opened instead, in the system temp directory, and removed when
//! the index closes. Changes are refused (see `Index::apply`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, OpenHow};

/// The copy's directory, removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub dir: PathBuf,
    /// The cache directory the copy was taken from.
    pub cache: PathBuf,
    /// Why the cache could not be opened for writing.
    pub reason: String,
}

impl Scratch {
    /// Copies `index` and `journal` into a fresh private temp directory.
    pub fn copy(cache: &Path, index: &Path, journal: &Path, reason: &str) -> Result<Scratch> {
        let dir = fsutil::unique_tmp_name(&std::env::temp_dir(), "blobcache-readonly");
        fsutil::ensure_private_dir(&dir)?;
        let scratch = Scratch {
            dir,
            cache: cache.to_path_buf(),
            reason: reason.to_string(),
        };
        let roots = Roots {
            cache,
            copy: &scratch.dir,
        };
        roots.copy_tree(index, &scratch.index())?;
        roots.copy_tree(journal, &scratch.journal())?;
        Ok(scratch)
    }

    pub fn index(&self) -> PathBuf {
        self.dir.join("index")
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal")
    }

    /// The error every change to a read-only index gets.
    pub fn refusal(&self) -> Error {
        Error::ReadOnly {
            path: self.cache.clone(),
            reason: self.reason.clone(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            log::warn!(
                "could not remove the index copy {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// The two directories a copy goes between: every path is resolved
/// below one of them without following a symbolic link.
struct Roots<'a> {
    cache: &'a Path,
    copy: &'a Path,
}

impl Roots<'_> {
    /// Copies the regular files and directories under `from` (in the
    /// cache) into `to` (in the copy, created 0700); symlinks and other
    /// special files are skipped, so nothing outside the cache is read. A
    /// missing `from` copies nothing.
    fn copy_tree(&self, from: &Path, to: &Path) -> Result<()> {
        fsutil::ensure_dir_in(self.copy, to)?;
        let entries = match fsutil::list_in(self.cache, from) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("list", from),
        };
        for (src, kind) in entries {
            let Some(name) = src.file_name() else {
                continue;
            };
            let dst = to.join(name);
            match kind {
                fsutil::Kind::Dir => self.copy_tree(&src, &dst)?,
                fsutil::Kind::File => self.copy_file(&src, &dst)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn copy_file(&self, src: &Path, dst: &Path) -> Result<()> {
        let mut from = fsutil::open_in(self.cache, src, OpenHow::Read).ctx("open", src)?;
        let mut to = fsutil::open_in(self.copy, dst, OpenHow::CreateNew).ctx("create", dst)?;
        io::copy(&mut from, &mut to).ctx("copy into", dst)?;
        Ok(())
    }
}
