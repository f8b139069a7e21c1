//! Single-flight across processes: before it calls the upstream, the
//! in-process leader of a key takes an exclusive `flock` on
//! `locks/fetch/<blake3 of the key, hex>.lock`. A second process missing
//! the same key blocks on that lock, then looks the key up again and finds
//! what the first stored.
//!
//! The kernel releases the lock when its holder exits or is killed, so a
//! dead fetcher never blocks anyone: the next process takes the lock and
//! fetches itself. The holder removes the file before releasing it; a
//! process that was blocked on the removed file sees that the path no
//! longer names the file it locked and locks the new one instead, so two
//! processes never both think they hold the lock. A file left by a killed
//! process is harmless: the next fetch of that key takes it and removes it.
//!
//! A cache this process cannot write to (a read-only mount, a full disk)
//! gets no lock: each process then fetches on its own, as before.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::fsutil;
use crate::store::Store;

/// Folder of the per-key lock files, inside `locks/`.
const DIR: &str = "fetch";

/// The exclusive cross-process lock on one key; released (and its file
/// removed) when dropped.
#[derive(Debug)]
pub(crate) struct KeyLock {
    root: PathBuf,
    path: PathBuf,
    file: File,
}

impl KeyLock {
    /// Blocks until this process holds the lock on `key`, or returns
    /// `None` when the cache cannot be locked (read-only, or the lock file
    /// cannot be made: logged) and the caller should fetch without it.
    pub(crate) fn acquire(store: &Store, key: &[u8]) -> Option<KeyLock> {
        if let Some(why) = store.read_only() {
            log::debug!("no cross-process fetch lock: the cache is read-only ({why})");
            return None;
        }
        let layout = store.layout();
        let dir = layout.locks.join(DIR);
        let path = dir.join(format!("{}.lock", blake3::hash(key).to_hex()));
        let taken = fsutil::ensure_dir_in(&layout.root, &dir)
            .and_then(|()| lock(&layout.root, &path).ctx("lock", &path));
        match taken {
            Ok(file) => Some(KeyLock {
                root: layout.root.clone(),
                path,
                file,
            }),
            Err(e) => {
                log::warn!("fetching without a cross-process lock: {e}");
                None
            }
        }
    }
}

/// Opens and locks `path`, until the locked file is the one `path` names.
fn lock(root: &Path, path: &Path) -> std::io::Result<File> {
    loop {
        let file = fsutil::open_in(root, path, fsutil::OpenHow::ReadWrite)?;
        file.lock()?;
        let held = file.metadata()?;
        // The previous holder removes the file before unlocking it: then
        // what we locked is no longer reachable and locks nothing.
        match fsutil::metadata_in(root, path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // Removed while still locked, so nobody can lock this file and
        // believe it is the current one; closing `file` then unlocks.
        if let Err(e) = fsutil::remove_file_in(&self.root, &self.path) {
            log::debug!("could not remove {}: {e}", self.path.display());
        }
        // Explicit only for the reader: the lock goes with the descriptor.
        let _ = self.file.unlock();
    }
}
