//! A private, writable copy of a cache's index and journal, for caches
//! that cannot be written (a read-only mount, or a full disk with no
//! reserve left): sled cannot open a database it cannot write, so the
//! copy is opened instead, in the system temp directory, and removed when
//! the index closes. Changes are refused (see `Index::apply`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

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
        copy_tree(index, &scratch.index())?;
        copy_tree(journal, &scratch.journal())?;
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

/// Copies the regular files and directories under `from` into `to`
/// (created 0700); symlinks and other special files are skipped, so
/// nothing outside the cache is read. A missing `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fsutil::ensure_private_dir(to)?;
    let entries = match fs::read_dir(from) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", from, e)),
    };
    for entry in entries {
        let entry = entry.ctx("list", from)?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().ctx("inspect", &src)?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_file() {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let mut from = fsutil::open_read(src).ctx("open", src)?;
    let mut to = fsutil::create_new(dst).ctx("create", dst)?;
    io::copy(&mut from, &mut to).ctx("copy into", dst)?;
    Ok(())
}
