//! Filesystem primitives with the cache's rules built in: files are created
//! 0600, directories 0700, and nothing inside the cache directory is opened
//! through a symbolic link.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::SystemTime;

use crate::error::{Error, IoContext, Result};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// Mode of every file the cache creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the cache creates.
pub const DIR_MODE: u32 = 0o700;

fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    opts.custom_flags(libc::O_NOFOLLOW);
    opts
}

fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    opts.mode(FILE_MODE);
    opts
}

/// Creates a new file (failing if it exists), mode 0600, for writing.
pub fn create_new(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    no_follow(private(o.write(true).create_new(true))).open(path)
}

/// Opens or creates a file for read/write, mode 0600 when created, without
/// following a symlink at `path`.
pub fn open_rw(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    no_follow(private(o.read(true).write(true).create(true))).open(path)
}

/// Opens or creates a file for appending, mode 0600 when created, without
/// following a symlink at `path`.
pub fn open_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    no_follow(private(o.read(true).append(true).create(true))).open(path)
}

/// Opens an existing file for reading without following a symlink.
pub fn open_read(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    no_follow(o.read(true)).open(path)
}

/// Makes sure `path` is a real directory with mode 0700, creating it (and
/// only it: the parent must exist) when missing. A symlink is refused.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(m) if m.is_dir() => set_dir_mode(path, &m),
        Ok(_) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "expected a directory here but found a file; move it away".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(path),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

fn create_dir(path: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    b.mode(DIR_MODE);
    match b.create(path) {
        Ok(()) => Ok(()),
        // Another process created it between our check and now.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ensure_private_dir(path),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

#[cfg(unix)]
fn set_dir_mode(path: &Path, m: &fs::Metadata) -> Result<()> {
    if m.mode() & 0o777 == DIR_MODE {
        return Ok(());
    }
    // Tighten only directories we own; someone else's directory is theirs.
    if m.uid() != rustix::process::geteuid().as_raw() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).ctx("set permissions of", path)
}

#[cfg(not(unix))]
fn set_dir_mode(_path: &Path, _m: &fs::Metadata) -> Result<()> {
    Ok(())
}

/// fsyncs a directory so a rename or create inside it is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(path)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Bytes a file occupies on disk: its allocated blocks, not its length.
pub fn disk_bytes(m: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        m.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        m.len().div_ceil(4096) * 4096
    }
}

/// Allocated bytes of every file under `dir`, recursively, without
/// following symlinks (0 for a missing directory).
pub fn tree_disk_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for entry in rd.flatten() {
        let Ok(m) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if m.is_dir() {
            total += tree_disk_bytes(&entry.path());
        } else if m.is_file() {
            total += disk_bytes(&m);
        }
    }
    total
}

/// Sets a file's modification time to now, without following symlinks.
pub fn touch(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags_nofollow()
        .open(path)?;
    f.set_modified(SystemTime::now())
}

trait NoFollowExt {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollowExt for OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        no_follow(self)
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling in `tmp_dir`,
/// optionally fsynced, then renamed over `path`.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    use std::io::Write;
    let tmp = unique_tmp_name(tmp_dir, "w");
    let mut f = create_new(&tmp).ctx("create", &tmp)?;
    let res = f
        .write_all(bytes)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        .ctx("write", &tmp)
        .and_then(|()| fs::rename(&tmp, path).ctx("rename into", path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A fresh, unique file name inside `dir`: pid, time and a counter.
pub fn unique_tmp_name(dir: &Path, tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{tag}-{}-{nanos:09}-{n}.part", std::process::id()))
}

/// Tightens everything under `dir` to 0600 files / 0700 directories
/// (used on the index, whose files sled creates with the default mode).
/// Symlinks are left alone and not followed.
pub fn tighten_tree(dir: &Path) {
    #[cfg(unix)]
    {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            let mode = if ft.is_dir() {
                tighten_tree(&path);
                DIR_MODE
            } else if ft.is_file() {
                FILE_MODE
            } else {
                continue;
            };
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}
