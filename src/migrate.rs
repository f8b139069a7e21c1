//! Format 1 → format 2, in place (ARCHITECTURE.md §5). Asking a format-1
//! cache for format 2 ([`crate::StoreOptions::format`]) migrates it.
//!
//! The migration holds `locks/migrate.lock` throughout and the cache
//! itself exclusively while it reads it (another process using the cache
//! makes it fail with [`Error::Locked`] after the owner timeout, changing
//! nothing). It runs in three steps, each leaving a cache that opens:
//!
//! 1. **Build**: every entry of the format-1 cache, expired ones included,
//!    with its times, headers, category and pin, is streamed (verified)
//!    into a format-2 cache built in `migrating/`; then `migrating/BUILT`
//!    is written and everything fsynced. A crash here leaves the format-1
//!    cache as it was (`VERSION` still says 1); the next migration starts
//!    over.
//! 2. **Commit**: `VERSION` is replaced with `2` (atomic rename, fsynced).
//!    From here on every open rolls the migration forward.
//! 3. **Swap** (idempotent): per name, the format-1 directory moves into
//!    `retired/` and the format-2 one out of `migrating/` into its place;
//!    then `migrating/` and `retired/` are removed. An open that finds
//!    either left over (a crash during the swap) finishes it first, under
//!    the same lock.
//!
//! An entry whose payload fails verification is left behind (counted and
//! logged): its bytes are already lost, and the migration never copies a
//! wrong byte. Format-1 processes of this build that waited for the cache
//! while it migrated find `VERSION` changed when they take it over, and
//! fail with a clear error instead of opening the moved index.

use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::engine::{Engine, HeaderSet, PutMeta};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::layout::{FORMAT_V2, Layout};
use crate::options::StoreOptions;
use crate::policy::Sharing;
use crate::store::{EntryMeta, Selector, Store};

/// Where the format-2 cache is built.
pub(crate) const STAGING: &str = "migrating";
/// Where the format-1 directories wait to be removed.
pub(crate) const RETIRED: &str = "retired";
/// Written into [`STAGING`] once the build is complete.
const BUILT: &str = "BUILT";
/// The format-2 directories moved into place, in this order.
const INSTALLED: [&str; 4] = ["index", "blobs", "packs", "dicts"];
/// Format-1 directories with no format-2 counterpart.
const RETIRED_ONLY: [&str; 1] = ["journal"];
/// The environment variable that makes the migrating process kill itself
/// (`SIGKILL`) at the named step: for the crash tests only.
const KILL_AT_ENV: &str = "BLOBCACHE_TEST_MIGRATE_KILL_AT";

/// What a migration carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// Entries now in the format-2 cache.
    pub entries: u64,
    /// Entries left behind because their payload failed verification.
    pub skipped: u64,
    /// Payload bytes carried over.
    pub bytes: u64,
}

/// Migrates the format-1 cache at `layout` to format 2 (see the module
/// docs); `engine` gives the options the new cache is built with. Returns
/// what was carried over; a cache another process finished migrating
/// meanwhile is only checked.
pub(crate) fn to_v2(
    layout: &Layout,
    opts: &StoreOptions,
    engine: impl FnOnce(&Path) -> Result<Engine>,
) -> Result<Migrated> {
    let _lock = take_lock(layout, opts.owner_timeout)?;
    if layout.read_version()? == Some(FORMAT_V2) {
        finish(layout)?;
        return Ok(Migrated::default());
    }
    let started = Instant::now();
    let v1 = Store::open(&layout.root, v1_options(opts))?;
    let staging = layout.root.join(STAGING);
    remove_tree(layout, &staging)?;
    fsutil::ensure_dir_in(&layout.root, &staging)?;
    let copied = copy_all(&v1, engine(&staging)?);
    let report = match copied {
        Ok(r) => r,
        Err(e) => {
            drop(v1);
            // The format-1 cache is untouched; leave no half-built copy.
            let _ = remove_tree(layout, &staging);
            return Err(e);
        }
    };
    kill_point("built");
    let built = staging.join(BUILT);
    fsutil::write_atomic(&layout.root, &layout.tmp, &built, b"1\n", true)?;
    sync_dir(layout, &staging)?;
    kill_point("marked");
    write_version(layout)?;
    kill_point("committed");
    drop(v1);
    finish(layout)?;
    log::info!(
        "migrated {} to format 2: {} entries ({} payload bytes) in {:.1?}{}",
        layout.root.display(),
        report.entries,
        report.bytes,
        started.elapsed(),
        match report.skipped {
            0 => String::new(),
            n => format!("; {n} entries whose payload failed verification were left behind"),
        }
    );
    Ok(report)
}

/// At the open of a format-2 cache: finishes a migration cut short during
/// its swap (a no-op, without taking any lock, when there is none).
pub(crate) fn resume(layout: &Layout, timeout: Duration) -> Result<()> {
    let pending = [STAGING, RETIRED]
        .iter()
        .any(|n| fs::symlink_metadata(layout.root.join(n)).is_ok());
    if !pending {
        return Ok(());
    }
    let _lock = take_lock(layout, timeout)?;
    finish(layout)
}

/// The format-1 cache as the migration reads it: exclusively, with nothing
/// running behind its back (no remote tier, sweep, size cap or standby).
fn v1_options(opts: &StoreOptions) -> StoreOptions {
    let mut o = opts.clone().format(crate::layout::FORMAT_VERSION);
    o.sharing = Sharing::Exclusive;
    o.remote = None;
    o.max_size = None;
    o.gc_interval = None;
    o.standby = false;
    o
}

/// Streams every entry of `v1` into `engine`, then flushes it.
fn copy_all(v1: &Store, engine: Engine) -> Result<Migrated> {
    let mut report = Migrated::default();
    for meta in v1.list(&Selector::All)? {
        let meta = meta?;
        if copy_one(v1, &engine, &meta)? {
            report.entries += 1;
            report.bytes += meta.raw_size;
        } else {
            report.skipped += 1;
        }
        if report.entries == 1 {
            kill_point("copying");
        }
    }
    engine.flush()?;
    Ok(report)
}

/// Copies one entry; `Ok(false)` when its payload failed verification.
fn copy_one(v1: &Store, engine: &Engine, m: &EntryMeta) -> Result<bool> {
    // `None`: the payload failed verification (the read counted it).
    let Some(mut reader) = v1.get_reader_stale(&m.backend, &m.signature)? else {
        log::warn!(
            "migration leaves {}/{} behind: its payload failed verification",
            m.backend,
            String::from_utf8_lossy(&m.signature)
        );
        return Ok(false);
    };
    let meta = PutMeta {
        ttl: None,
        headers: HeaderSet {
            content_type: m.content_type.clone(),
            category: Some(m.category.as_str().to_string()),
            headers: m.headers.clone(),
        },
        pinned: m.pinned,
        fetched_at: Some(m.fetched_at),
        expires_at: Some(m.expires_at),
        created_at: Some(m.created_at),
    };
    match engine.put_reader(&m.backend, &m.signature, &[], &mut reader, &meta) {
        Ok(_) => Ok(true),
        // The source stream failed: its verification found damage.
        Err(e @ Error::Source { .. }) => Ok(skip(m, &e)),
        Err(e) => Err(e),
    }
}

fn skip(m: &EntryMeta, e: &Error) -> bool {
    log::warn!(
        "migration leaves {}/{} behind: {e}",
        m.backend,
        String::from_utf8_lossy(&m.signature)
    );
    false
}

/// The swap (step 3): idempotent, so a crash anywhere in it is finished
/// by the next open.
fn finish(layout: &Layout) -> Result<()> {
    let root = &layout.root;
    let staging = root.join(STAGING);
    let retired = root.join(RETIRED);
    if exists(&staging) && !exists(&staging.join(BUILT)) {
        // `VERSION` says 2 only after `BUILT` was written.
        return Err(Error::NotACache {
            path: root.clone(),
            reason: format!(
                "{} holds an unfinished format-2 copy although VERSION says 2; \
                 restore the cache from a backup or remove it",
                staging.display()
            ),
        });
    }
    fsutil::ensure_dir_in(root, &retired)?;
    for name in RETIRED_ONLY {
        retire(layout, name)?;
    }
    for name in INSTALLED {
        let new = staging.join(name);
        if !exists(&new) {
            continue;
        }
        retire(layout, name)?;
        fsutil::rename_in(root, &new, &root.join(name)).ctx("move into place", &new)?;
        kill_point(&format!("installed-{name}"));
    }
    sync_dir(layout, root)?;
    remove_tree(layout, &retired)?;
    remove_tree(layout, &staging)?;
    sync_dir(layout, root)
}

/// Moves the format-1 `name` out of the way into `retired/`. A directory
/// already retired leaves behind, at most, the empty one an open recreated
/// meanwhile, which is removed.
fn retire(layout: &Layout, name: &str) -> Result<()> {
    let root = &layout.root;
    let (old, to) = (root.join(name), root.join(RETIRED).join(name));
    if !exists(&old) {
        return Ok(());
    }
    if exists(&to) {
        return fs::remove_dir(&old).ctx("remove the empty directory", &old);
    }
    fsutil::rename_in(root, &old, &to).ctx("move aside", &old)?;
    kill_point(&format!("retired-{name}"));
    Ok(())
}

fn write_version(layout: &Layout) -> Result<()> {
    let version = layout.root.join("VERSION");
    let body = format!("{FORMAT_V2}\n");
    fsutil::write_atomic(&layout.root, &layout.tmp, &version, body.as_bytes(), true)?;
    sync_dir(layout, &layout.root)
}

/// Takes `locks/migrate.lock`, waiting up to `timeout`.
fn take_lock(layout: &Layout, timeout: Duration) -> Result<File> {
    let start = Instant::now();
    loop {
        if let Some(lock) = layout.try_lock("migrate.lock")? {
            return Ok(lock);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::Locked {
                path: layout.root.clone(),
                waited,
            });
        }
        std::thread::sleep(Duration::from_millis(20).min(timeout - waited));
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn sync_dir(layout: &Layout, dir: &Path) -> Result<()> {
    fsutil::sync_dir_in(&layout.root, dir).ctx("sync directory", dir)
}

/// Removes `dir` and everything in it (links removed, never followed);
/// nothing there is fine.
fn remove_tree(layout: &Layout, dir: &Path) -> Result<()> {
    match fsutil::metadata_in(&layout.root, dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", dir, e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::NotACache {
                path: dir.to_path_buf(),
                reason: "expected blobcache's migration directory here, found something else; \
                         move it away"
                    .into(),
            });
        }
        Ok(_) => {}
    }
    fs::remove_dir_all(dir).ctx("remove", dir)
}

/// Kills this process with `SIGKILL` when the crash tests ask for `step`.
fn kill_point(step: &str) {
    if std::env::var_os(KILL_AT_ENV).is_some_and(|v| v == step) {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_file_where_the_staging_directory_goes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        fs::write(dir.path().join(STAGING), b"not ours").unwrap();
        let err = remove_tree(&layout, &dir.path().join(STAGING)).unwrap_err();
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(fs::read(dir.path().join(STAGING)).unwrap(), b"not ours");
    }
}
