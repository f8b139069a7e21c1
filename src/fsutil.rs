//! Filesystem primitives with the cache's rules built in: files are created
//! 0600, directories 0700, and nothing inside the cache directory is opened
//! through a symbolic link.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::time::SystemTime;

use crate::error::{Error, IoContext, Result};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};

/// Mode of every file the cache creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the cache creates.
pub const DIR_MODE: u32 = 0o700;

/// The error every `*_in` function returns when a component of the path
/// inside the cache directory is a symbolic link (`ELOOP`, which
/// [`IoContext`] turns into [`Error::Symlink`]).
fn symlink_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ELOOP)
}

/// True for the error a `*_in` function gives on a symbolic link.
pub fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// The components of `path` below `root`, which must be plain names.
fn components_below<'p>(root: &Path, path: &'p Path) -> io::Result<Vec<&'p OsStr>> {
    let rel = path.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not inside {}", path.display(), root.display()),
        )
    })?;
    rel.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain path inside the cache", path.display()),
            )),
        })
        .collect()
}

/// Opens directory `name` inside `dir` without following a symbolic link.
fn open_subdir(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_DIRECTORY|O_NOFOLLOW on a link gives ENOTDIR; tell it apart.
        Err(e) if e == Errno::NOTDIR || e == Errno::LOOP => match stat_nofollow(dir, name) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                Err(symlink_error())
            }
            _ => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

fn stat_nofollow(dir: &OwnedFd, name: &OsStr) -> io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// Opens the directory that holds `path` (a path inside `root`), one
/// component at a time from `root` with `O_NOFOLLOW`, and returns it with
/// the last component's name. `root` itself may be a symbolic link (the
/// user chose it); nothing below it is followed.
pub fn parent_in<'p>(root: &Path, path: &'p Path) -> io::Result<(OwnedFd, &'p OsStr)> {
    let mut names = components_below(root, path)?;
    let Some(last) = names.pop() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names the cache directory itself", path.display()),
        ));
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(root, flags, Mode::empty())?;
    for name in names {
        dir = open_subdir(&dir, name)?;
    }
    Ok((dir, last))
}

/// How [`open_in`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenHow {
    /// An existing file, read-only.
    Read,
    /// Read/write, created (0600) when missing.
    ReadWrite,
    /// Read/append, created (0600) when missing.
    Append,
    /// A new file (failing if it exists), write-only, 0600.
    CreateNew,
    /// An existing file, write-only.
    Write,
    /// An existing file, read/write.
    ReadWriteExisting,
    /// A new file (failing if it exists), read/write, 0600.
    ReadWriteNew,
}

impl OpenHow {
    fn flags(self) -> OFlags {
        match self {
            OpenHow::Read => OFlags::RDONLY,
            OpenHow::ReadWrite => OFlags::RDWR | OFlags::CREATE,
            OpenHow::Append => OFlags::RDWR | OFlags::APPEND | OFlags::CREATE,
            OpenHow::CreateNew => OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            OpenHow::Write => OFlags::WRONLY,
            OpenHow::ReadWriteExisting => OFlags::RDWR,
            OpenHow::ReadWriteNew => OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        }
    }
}

/// Opens `path` (inside the cache directory `root`) without following a
/// symbolic link at any component below `root`: a link gives `ELOOP`.
pub fn open_in(root: &Path, path: &Path, how: OpenHow) -> io::Result<File> {
    let (dir, name) = parent_in(root, path)?;
    open_at(&dir, name, how)
}

/// Opens file `name` in the open directory `dir` (reached by
/// [`open_dir_in`] or [`parent_in`]) without following a symbolic link.
pub fn open_at(dir: &OwnedFd, name: impl AsRef<OsStr>, how: OpenHow) -> io::Result<File> {
    let flags = how.flags() | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(FILE_MODE);
    let fd = rustix::fs::openat(dir, name.as_ref(), flags, mode)?;
    Ok(File::from(fd))
}

/// Opens directory `path` (inside `root`, or `root` itself) as [`open_in`]
/// resolves paths, for opening many files in it with [`open_at`].
pub fn open_dir_in(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    if path == root {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        return Ok(rustix::fs::open(root, flags, Mode::empty())?);
    }
    let (parent, name) = parent_in(root, path)?;
    open_subdir(&parent, name)
}

/// The metadata of `path` itself (a symbolic link is described, not
/// followed), reached without following a link at any component.
pub fn metadata_in(root: &Path, path: &Path) -> io::Result<fs::Metadata> {
    let (dir, name) = parent_in(root, path)?;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, flags, Mode::empty())?;
    File::from(fd).metadata()
}

/// Removes the file (or symbolic link, never its target) at `path`.
pub fn remove_file_in(root: &Path, path: &Path) -> io::Result<()> {
    let (dir, name) = parent_in(root, path)?;
    Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
}

/// Renames `from` over `to`, both inside `root`.
pub fn rename_in(root: &Path, from: &Path, to: &Path) -> io::Result<()> {
    let (fdir, fname) = parent_in(root, from)?;
    let (tdir, tname) = parent_in(root, to)?;
    Ok(rustix::fs::renameat(&fdir, fname, &tdir, tname)?)
}

/// Hard-links `from` (not following a link) as `to`, both inside `root`.
pub fn hard_link_in(root: &Path, from: &Path, to: &Path) -> io::Result<()> {
    let (fdir, fname) = parent_in(root, from)?;
    let (tdir, tname) = parent_in(root, to)?;
    Ok(rustix::fs::linkat(
        &fdir,
        fname,
        &tdir,
        tname,
        AtFlags::empty(),
    )?)
}

/// What a directory entry is, as [`list_in`] reports it (links are not
/// followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (socket, fifo, device).
    Other,
}

impl Kind {
    fn of(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// The entries of directory `dir` (inside `root`, reached as [`open_in`]
/// does), each as its full path and kind; `.` and `..` are left out.
pub fn list_in(root: &Path, dir: &Path) -> io::Result<Vec<(std::path::PathBuf, Kind)>> {
    use std::os::unix::ffi::OsStrExt;
    let fd = open_dir_in(root, dir)?;
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => {
                Kind::of(FileType::from_raw_mode(stat_nofollow(&fd, name)?.st_mode))
            }
            t => Kind::of(t),
        };
        out.push((dir.join(name), kind));
    }
    Ok(out)
}

/// fsyncs directory `dir` (inside `root`) so a rename or create in it is
/// durable.
pub fn sync_dir_in(root: &Path, dir: &Path) -> io::Result<()> {
    Ok(rustix::fs::fsync(open_dir_in(root, dir)?)?)
}

/// Makes sure `path` (inside `root`) is a real directory, creating it 0700
/// when missing; a symbolic link there is [`Error::Symlink`].
pub fn ensure_dir_in(root: &Path, path: &Path) -> Result<()> {
    let (dir, name) = parent_in(root, path).ctx("open the parent of", path)?;
    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) => return Ok(()),
        Err(e) if e == Errno::EXIST => {}
        Err(e) => return Err(Error::io("create directory", path, e.into())),
    }
    match open_subdir(&dir, name) {
        Ok(_) => Ok(()),
        Err(e) if is_symlink_error(&e) => Err(Error::Symlink {
            path: path.to_path_buf(),
        }),
        Err(_) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "expected a directory here but found a file; move it away".into(),
        }),
    }
}

/// Sets a file's modification time to now, reached as [`open_in`] does.
pub fn touch_in(root: &Path, path: &Path) -> io::Result<()> {
    open_in(root, path, OpenHow::Write)?.set_modified(SystemTime::now())
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

/// Writes `bytes` to `path` atomically: a temporary sibling in `tmp_dir`,
/// optionally fsynced, then renamed over `path` (both inside `root`,
/// reached as [`open_in`] does).
pub fn write_atomic(
    root: &Path,
    tmp_dir: &Path,
    path: &Path,
    bytes: &[u8],
    sync: bool,
) -> Result<()> {
    use std::io::Write;
    let tmp = unique_tmp_name(tmp_dir, "w");
    let mut f = open_in(root, &tmp, OpenHow::CreateNew).ctx("create", &tmp)?;
    let res = f
        .write_all(bytes)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        .ctx("write", &tmp)
        .and_then(|()| rename_in(root, &tmp, path).ctx("rename into", path));
    if res.is_err() {
        let _ = remove_file_in(root, &tmp);
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
