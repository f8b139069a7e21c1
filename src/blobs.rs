//! The content-addressed blob store: the only code that writes into `blobs/`.
//!
//! A blob is named by the blake3 hash of the *raw* payload and holds either
//! zstd frames or, when compression would not shrink the payload, the raw
//! bytes. Files live at `blobs/ab/cdef…` (first hash byte as a fan-out
//! directory). Every file is written under `tmp/`, optionally fsynced, and
//! then renamed or hard-linked into place, so a blob path either does not
//! exist or holds a complete frame (invariant 1).
//!
//! Small blobs are kept inline in the index instead (see `index.rs`); this
//! module still encodes and decodes them, so the codec and the integrity
//! check are the same for both.
//!
//! Every read verifies the blake3 of what it returns (invariant 2). A
//! missing or corrupt blob is reported as a [`BlobError`], never as bytes.
//! A payload over [`VERIFY_IN_MEMORY_MAX`] also has an outboard beside its
//! blob (`ab/cdef….obao`, see `outboard.rs`), written after the blob and
//! removed before it, so streams verify it one 1 MiB group at a time.

use std::cell::RefCell;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
pub use crate::hash::BlobHash;
pub(crate) use crate::hash::CHUNK;
use crate::outboard::{self, Cv, GroupReader, TreeHasher};
use crate::record::Codec;

/// Why a blob could not be read. `Missing` and `Corrupt` make the entry a
/// miss (and heal the index); `Io` is an environmental failure (permissions,
/// descriptors) that leaves the entry alone and surfaces as an error.
#[derive(Debug)]
pub(crate) enum BlobError {
    Missing,
    Corrupt(String),
    Io(Error),
}

/// Zstd compression level bounds accepted by the store. Levels above 19
/// need windows larger than readers are allowed to allocate.
pub const MAX_LEVEL: i32 = 19;
/// Lowest (fastest) accepted level.
pub const MIN_LEVEL: i32 = -7;
/// Readers refuse zstd frames asking for a window larger than 2^this bytes,
/// so a damaged or hostile frame cannot make them allocate without bound.
const WINDOW_LOG_MAX: u32 = 24;
/// Blob files at least this large are read through a memory map.
const MMAP_MIN: u64 = 256 * 1024;
/// Streamed reads of payloads up to this size are read whole and verified
/// before their first byte is handed out; larger ones are checked one
/// 1 MiB group at a time against their outboard, which blob files above
/// this size carry (see [`Blobs::open_verified`] and `outboard.rs`).
pub(crate) const VERIFY_IN_MEMORY_MAX: u64 = 8 * 1024 * 1024;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `raw` at `level` with a per-thread reused context. Returns
/// `None` when compression fails or does not make the payload smaller.
pub(crate) fn compress(raw: &[u8], level: i32) -> Option<Vec<u8>> {
    if raw.is_empty() {
        return None;
    }
    let out = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        c.compress(raw).ok()
    })?;
    (out.len() < raw.len()).then_some(out)
}

/// Picks raw storage for a stream whose first 128 KiB do not compress.
pub(crate) fn choose_stream_codec(first: &[u8], level: i32) -> Codec {
    let sample = &first[..first.len().min(CHUNK)];
    match compress(sample, level) {
        Some(z) if z.len() < sample.len() - sample.len() / 32 => Codec::Zstd,
        _ => Codec::Raw,
    }
}

/// Decodes stored bytes and checks them against `hash` and `raw_size`.
pub(crate) fn decode(
    stored: &[u8],
    codec: Codec,
    raw_size: u64,
    hash: &BlobHash,
) -> Result<Vec<u8>, BlobError> {
    let raw = match codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => decompress(stored, raw_size)?,
    };
    if raw.len() as u64 != raw_size {
        return Err(BlobError::Corrupt(format!(
            "decoded {} bytes, expected {raw_size}",
            raw.len()
        )));
    }
    if BlobHash::of(&raw) != *hash {
        return Err(BlobError::Corrupt("content does not match its hash".into()));
    }
    Ok(raw)
}

fn decompress(stored: &[u8], raw_size: u64) -> Result<Vec<u8>, BlobError> {
    let cap = usize::try_from(raw_size)
        .map_err(|_| BlobError::Corrupt(format!("raw size {raw_size} does not fit in memory")))?;
    let mut out = Vec::new();
    out.try_reserve_exact(cap)
        .map_err(|_| BlobError::Corrupt(format!("cannot allocate {raw_size} bytes")))?;
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut d = zstd::bulk::Decompressor::new()
                .map_err(|e| BlobError::Corrupt(format!("zstd context: {e}")))?;
            d.window_log_max(WINDOW_LOG_MAX)
                .map_err(|e| BlobError::Corrupt(format!("zstd context: {e}")))?;
            *slot = Some(d);
        }
        let Some(d) = slot.as_mut() else {
            return Err(BlobError::Corrupt("zstd context unavailable".into()));
        };
        d.decompress_to_buffer(stored, &mut out)
            .map_err(|e| BlobError::Corrupt(format!("zstd: {e}")))
    })?;
    Ok(out)
}

/// What [`Blobs::inspect`] found wrong with a blob file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileProblem {
    /// The file is not there (else: it is there, damaged).
    pub missing: bool,
    /// What exactly.
    pub why: String,
}

/// What a write into the blob store produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub hash: BlobHash,
    pub codec: Codec,
    pub raw_size: u64,
    pub stored_size: u64,
    /// Allocated bytes of the blob file.
    pub disk_bytes: u64,
    /// A valid file for this hash was already in place; nothing new was
    /// written.
    pub existed: bool,
}

/// A blob staged by a streaming write: complete in `tmp/` and linked into
/// `blobs/`. The staging name is kept (and locked) until the index has taken
/// the record, so the blob can be linked again if the sweeper deleted it in
/// between; dropping the value removes the staging file.
pub(crate) struct Staged {
    pub written: Written,
    tmp: PathBuf,
    /// The cache directory `tmp` lies in.
    cache: PathBuf,
    /// Linked into place at least once: `written.existed` then tells
    /// whether that first link found the blob already there (later links
    /// find our own file).
    linked: bool,
    /// The payload's group CVs, for its outboard (empty when it needs none).
    cvs: Vec<Cv>,
    _lock: File,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fsutil::remove_file_in(&self.cache, &self.tmp);
    }
}

/// Handle on the `blobs/` and `tmp/` directories. Every file operation
/// goes through `fsutil`'s `*_in` functions from the cache directory, so no
/// symbolic link below it is ever followed (invariant 5).
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    root: PathBuf,
    tmp: PathBuf,
    /// The cache directory (the parent of `blobs/` and `tmp/`).
    cache: PathBuf,
    sync: bool,
}

impl Blobs {
    /// `root` and `tmp` are the `blobs/` and `tmp/` directories of one cache.
    pub fn new(root: PathBuf, tmp: PathBuf, sync: bool) -> Blobs {
        let cache = root
            .parent()
            .map_or_else(|| root.clone(), Path::to_path_buf);
        Blobs {
            root,
            tmp,
            cache,
            sync,
        }
    }

    /// Metadata of `path` (inside the cache) itself, never through a link.
    fn meta(&self, path: &Path) -> io::Result<fs::Metadata> {
        fsutil::metadata_in(&self.cache, path)
    }

    fn remove_path(&self, path: &Path) -> io::Result<()> {
        fsutil::remove_file_in(&self.cache, path)
    }

    /// Metadata of the blob file for `hash` (a link is described, not
    /// followed, at any depth).
    pub fn file_meta(&self, hash: &BlobHash) -> io::Result<fs::Metadata> {
        self.meta(&self.path_for(hash))
    }

    /// True when a blob file (a regular file, not a link) for `hash` is in
    /// place.
    pub fn has_file(&self, hash: &BlobHash) -> bool {
        self.file_meta(hash).is_ok_and(|m| m.is_file())
    }

    /// Refreshes the mtime of the blob file for `hash` (so the sweeper's
    /// safety window restarts), never through a link.
    pub fn touch(&self, hash: &BlobHash) -> io::Result<()> {
        fsutil::touch_in(&self.cache, &self.path_for(hash))
    }

    /// Opens the blob file for `hash` for reading its stored bytes as they
    /// are, refusing a symbolic link at any depth.
    pub fn open_stored(&self, hash: &BlobHash) -> io::Result<File> {
        fsutil::open_in(&self.cache, &self.path_for(hash), fsutil::OpenHow::Read)
    }

    /// `blobs/ab/cdef…` for `hash`.
    pub fn path_for(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// `blobs/ab/cdef….obao`: the outboard beside the blob of `hash`.
    pub fn outboard_path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root
            .join(&hex[..2])
            .join(format!("{}{}", &hex[2..], outboard::SUFFIX))
    }

    /// Makes sure a complete file for `hash` holding `stored` is in place.
    /// An existing file is kept (and its mtime refreshed, so the sweeper's
    /// safety window restarts) unless its length shows it is not the frame we
    /// would write and it fails verification, in which case it is replaced.
    /// `raw` is the payload itself, for the outboard a payload above
    /// [`VERIFY_IN_MEMORY_MAX`] gets (written after the blob).
    pub fn ensure_file(
        &self,
        hash: &BlobHash,
        stored: &[u8],
        raw: &[u8],
        codec: Codec,
    ) -> Result<Written> {
        let raw_size = raw.len() as u64;
        let path = self.path_for(hash);
        let existed = self.existing_is_usable(&path, hash, stored.len() as u64, codec, raw_size)?;
        if !existed {
            self.write_new(&path, stored)?;
        }
        if raw_size > VERIFY_IN_MEMORY_MAX && !self.has_outboard(hash, raw_size) {
            let mut tree = TreeHasher::new();
            tree.update(raw);
            let (_, cvs) = tree.finish();
            self.ensure_outboard(hash, raw_size, &cvs)?;
        }
        let meta = self.meta(&path).ctx("inspect", &path)?;
        Ok(Written {
            hash: *hash,
            codec,
            raw_size,
            stored_size: meta.len(),
            disk_bytes: fsutil::disk_bytes(&meta),
            existed,
        })
    }

    /// True when a regular file for `hash` is present and may be reused.
    fn existing_is_usable(
        &self,
        path: &Path,
        hash: &BlobHash,
        stored_len: u64,
        codec: Codec,
        raw_size: u64,
    ) -> Result<bool> {
        let meta = match self.meta(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx("inspect", path),
        };
        if !meta.is_file() {
            // A foreign symlink or directory at a blob name: never follow or
            // reuse it. Unlinking a symlink does not touch its target.
            log::warn!("replacing foreign non-file at blob path {}", path.display());
            self.remove_foreign(path, &meta)?;
            return Ok(false);
        }
        // Same length as our frame: the same content (a frame of another
        // level would be fine too). Different length: a recompressed blob or
        // a damaged one; decode it to know.
        let usable = meta.len() == stored_len || self.read_file(hash, codec, raw_size).is_ok();
        if usable {
            fsutil::touch_in(&self.cache, path).ctx("refresh mtime of", path)?;
        }
        Ok(usable)
    }

    fn ensure_fanout(&self, path: &Path) -> Result<()> {
        match path.parent() {
            Some(dir) => fsutil::ensure_dir_in(&self.cache, dir),
            None => Ok(()),
        }
    }

    fn write_new(&self, path: &Path, stored: &[u8]) -> Result<()> {
        self.ensure_fanout(path)?;
        let (tmp, mut f) = self.stage()?;
        let res = f
            .write_all(stored)
            .and_then(|()| if self.sync { f.sync_all() } else { Ok(()) })
            .ctx("write", &tmp)
            .and_then(|()| fsutil::rename_in(&self.cache, &tmp, path).ctx("rename into", path))
            .and_then(|()| self.sync_parent(path));
        if res.is_err() {
            let _ = self.remove_path(&tmp);
        }
        res
    }

    fn sync_parent(&self, path: &Path) -> Result<()> {
        if !self.sync {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root);
        fsutil::sync_dir_in(&self.cache, dir).ctx("sync directory", dir)
    }

    /// Creates a locked staging file in `tmp/`. The lock tells the cleaner
    /// that its writer is alive; the kernel drops it if the writer dies.
    /// A new, locked staging file for a blob not yet written.
    fn stage_blob(&self, hash: BlobHash, codec: Codec, raw_size: u64) -> Result<Staged> {
        let (tmp, lock) = self.stage()?;
        Ok(Staged {
            written: Written {
                hash,
                codec,
                raw_size,
                stored_size: 0,
                disk_bytes: 0,
                existed: false,
            },
            tmp,
            cache: self.cache.clone(),
            linked: false,
            cvs: Vec::new(),
            _lock: lock,
        })
    }

    fn stage(&self) -> Result<(PathBuf, File)> {
        let tmp = fsutil::unique_tmp_name(&self.tmp, "blob");
        let f = fsutil::open_in(&self.cache, &tmp, fsutil::OpenHow::CreateNew)
            .ctx("create staging file", &tmp)?;
        f.try_lock().map_err(|e| {
            let _ = self.remove_path(&tmp);
            Error::io("lock staging file", &tmp, io::Error::other(e.to_string()))
        })?;
        Ok((tmp, f))
    }

    /// Streams `first` followed by the rest of `src` into a staged blob,
    /// hashing and compressing as it goes, in bounded memory. `codec` was
    /// chosen by the caller from a sample.
    pub fn write_stream(
        &self,
        first: &[u8],
        src: &mut dyn Read,
        codec: Codec,
        level: i32,
    ) -> std::result::Result<Staged, StreamError> {
        let staged = self
            .stage_blob(BlobHash([0; 32]), codec, 0)
            .map_err(StreamError::Store)?;
        self.fill_staged(staged, first, src, level)
    }

    fn fill_staged(
        &self,
        mut staged: Staged,
        first: &[u8],
        src: &mut dyn Read,
        level: i32,
    ) -> std::result::Result<Staged, StreamError> {
        let tmp = staged.tmp.clone();
        let file = staged
            ._lock
            .try_clone()
            .map_err(|e| io_err("open", &tmp, e))?;
        let buffered = BufWriter::with_capacity(CHUNK, file);
        let mut sink: Box<dyn FinishWrite> = match staged.written.codec {
            Codec::Raw => Box::new(buffered),
            Codec::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(buffered, level)
                    .map_err(|e| io_err("compress", &tmp, e))?;
                enc.window_log(WINDOW_LOG_MAX - 1)
                    .map_err(|e| io_err("compress", &tmp, e))?;
                Box::new(enc)
            }
        };
        let mut hasher = TreeHasher::new();
        hasher.update(first);
        sink.write_all(first)
            .map_err(|e| io_err("write", &tmp, e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Source(e)),
            };
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n])
                .map_err(|e| io_err("write", &tmp, e))?;
        }
        sink.finish_write().map_err(|e| io_err("write", &tmp, e))?;
        if self.sync {
            staged
                ._lock
                .sync_all()
                .map_err(|e| io_err("sync", &tmp, e))?;
        }
        staged.written.raw_size = hasher.len();
        let (hash, cvs) = hasher.finish();
        staged.written.hash = hash;
        staged.cvs = cvs;
        self.link_staged(&mut staged).map_err(StreamError::Store)?;
        Ok(staged)
    }

    /// Puts a staged blob in place under its hash by hard-linking the
    /// staging file (which stays, so this can be repeated). An existing
    /// valid file for the hash is reused.
    pub fn link_staged(&self, staged: &mut Staged) -> Result<()> {
        let w = staged.written.clone();
        let path = self.path_for(&w.hash);
        let tmp_meta = staged._lock.metadata().ctx("inspect", &staged.tmp)?;
        let existed =
            self.existing_is_usable(&path, &w.hash, tmp_meta.len(), w.codec, w.raw_size)?;
        if !existed {
            self.ensure_fanout(&path)?;
            match fsutil::hard_link_in(&self.cache, &staged.tmp, &path) {
                Ok(()) => {}
                // Someone else linked the same content first: equally good.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx("link blob into", &path),
            }
            self.sync_parent(&path)?;
        }
        self.ensure_outboard(&w.hash, w.raw_size, &staged.cvs)?;
        let meta = self.meta(&path).ctx("inspect", &path)?;
        staged.written.stored_size = meta.len();
        staged.written.disk_bytes = fsutil::disk_bytes(&meta);
        if !staged.linked {
            staged.written.existed = existed;
            staged.linked = true;
        }
        Ok(())
    }

    /// Copies a blob's stored bytes (`stored_len` of them, exactly as
    /// another cache keeps them on disk) from `src` into a staging file,
    /// decoding and hashing them on the way, and links the file into place
    /// once it proved to hold `hash`. Used by archive import: no
    /// recompression, one pass, bounded memory.
    pub fn import_stored(
        &self,
        src: &mut dyn Read,
        want: &StoredBlob,
    ) -> std::result::Result<Written, ImportBlobError> {
        let mut staged = self
            .stage_blob(want.hash, want.codec, want.raw_size)
            .map_err(ImportBlobError::Store)?;
        let tmp = staged.tmp.clone();
        let file = staged
            ._lock
            .try_clone()
            .map_err(|e| ImportBlobError::Store(Error::io("open", &tmp, e)))?;
        let mut sink = BufWriter::with_capacity(CHUNK, file);
        staged.cvs = copy_verified_groups(src, &mut sink, want).map_err(|e| match e {
            ImportBlobError::Write(e) => ImportBlobError::Store(Error::io("write", &tmp, e)),
            other => other,
        })?;
        sink.flush()
            .map_err(|e| ImportBlobError::Store(Error::io("write", &tmp, e)))?;
        if self.sync {
            staged
                ._lock
                .sync_all()
                .map_err(|e| ImportBlobError::Store(Error::io("sync", &tmp, e)))?;
        }
        self.link_staged(&mut staged)
            .map_err(ImportBlobError::Store)?;
        Ok(staged.written.clone())
    }

    /// An empty, locked scratch file in `tmp/`, removed when dropped.
    pub fn scratch(&self) -> Result<Scratch> {
        let (path, lock) = self.stage()?;
        // The staging handle is write-only; the scratch is read back too.
        let file =
            fsutil::open_in(&self.cache, &path, fsutil::OpenHow::ReadWrite).ctx("open", &path)?;
        Ok(Scratch {
            path,
            cache: self.cache.clone(),
            file,
            _lock: lock,
        })
    }

    /// Reads, decodes and verifies the blob file for `hash`.
    pub fn read_file(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<Vec<u8>, BlobError> {
        let path = self.path_for(hash);
        let file = self.open_blob(&path)?;
        let len = file
            .metadata()
            .map_err(|e| BlobError::Io(Error::io("inspect", &path, e)))?
            .len();
        if len >= MMAP_MIN {
            let map = crate::mmap::map_blob(&file)
                .map_err(|e| BlobError::Io(Error::io("map", &path, e)))?;
            return decode(&map, codec, raw_size, hash);
        }
        let mut stored = Vec::with_capacity(len as usize);
        (&file)
            .read_to_end(&mut stored)
            .map_err(|e| BlobError::Io(Error::io("read", &path, e)))?;
        decode(&stored, codec, raw_size, hash)
    }

    /// Opens the blob file for `hash` as a stream that hands out no byte
    /// before it is verified. A payload up to [`VERIFY_IN_MEMORY_MAX`] is
    /// read whole and checked first. A larger one is checked one 1 MiB
    /// group at a time against its outboard (whose hashes are first checked
    /// to fold into `hash`): a damaged group fails the read that would have
    /// returned its first byte, with `InvalidData`, after the groups before
    /// it were handed out. A large blob without an outboard (written by an
    /// older version) gets a verification pass first, which also computes
    /// the outboard and stores it for the next read. A damaged outboard, or
    /// damage the pass finds, is reported here as `Corrupt`.
    pub fn open_verified(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<VerifyingReader, BlobError> {
        if raw_size <= VERIFY_IN_MEMORY_MAX {
            let data = self.read_file(hash, codec, raw_size)?;
            let cursor = Box::new(io::Cursor::new(data));
            return Ok(VerifyingReader::new(cursor, *hash, raw_size));
        }
        let path = self.path_for(hash);
        let mut file = self.open_blob(&path)?;
        let cvs = match self.read_outboard(hash, raw_size)? {
            Some(cvs) => cvs,
            None => self.upgrade(&mut file, &path, hash, codec, raw_size)?,
        };
        let groups = GroupReader::new(decoded_file(file, codec)?, cvs, raw_size);
        Ok(VerifyingReader::checked_by_groups(
            Box::new(groups),
            *hash,
            raw_size,
        ))
    }

    /// The pass a large blob without an outboard gets before it streams:
    /// checks the open `file` (bounded memory) and computes the group CVs,
    /// stores them as its outboard (best effort: a read-only cache still
    /// serves the read) and rewinds the file.
    fn upgrade(
        &self,
        file: &mut File,
        path: &Path,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<Vec<Cv>, BlobError> {
        let io_err = |op, e| BlobError::Io(Error::io(op, path, e));
        let first_pass = file.try_clone().map_err(|e| io_err("open", e))?;
        let cvs = hash_checked(decoded_file(first_pass, codec)?, hash, raw_size)?;
        file.seek(io::SeekFrom::Start(0))
            .map_err(|e| io_err("rewind", e))?;
        if let Err(e) = self.ensure_outboard(hash, raw_size, &cvs) {
            log::debug!("no outboard stored for blob {hash}: {e}");
        }
        Ok(cvs)
    }

    /// True when an outboard file of the right length for `hash` is in place.
    fn has_outboard(&self, hash: &BlobHash, raw_size: u64) -> bool {
        self.meta(&self.outboard_path(hash))
            .is_ok_and(|m| m.is_file() && m.len() == outboard::encoded_len(raw_size))
    }

    /// Stores the outboard of a large payload (from its group `cvs`) beside
    /// its blob unless one is there; written through `tmp/` and renamed into
    /// place, after the blob. Payloads up to [`VERIFY_IN_MEMORY_MAX`] get
    /// none.
    fn ensure_outboard(&self, hash: &BlobHash, raw_size: u64, cvs: &[Cv]) -> Result<()> {
        if raw_size <= VERIFY_IN_MEMORY_MAX || cvs.len() < 2 || self.has_outboard(hash, raw_size) {
            return Ok(());
        }
        self.write_new(&self.outboard_path(hash), &outboard::encode(raw_size, cvs))
    }

    /// The group CVs in the outboard of `hash`, checked to fold into `hash`;
    /// `None` when there is no outboard file.
    fn read_outboard(&self, hash: &BlobHash, raw_size: u64) -> Result<Option<Vec<Cv>>, BlobError> {
        let path = self.outboard_path(hash);
        let file = match self.open_blob(&path) {
            Ok(f) => f,
            Err(BlobError::Missing) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(outboard::encoded_len(raw_size) + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| BlobError::Io(Error::io("read", &path, e)))?;
        outboard::decode(&bytes, raw_size, hash)
            .map(Some)
            .map_err(|why| BlobError::Corrupt(format!("outboard {}: {why}", path.display())))
    }

    /// Checks the blob file for `hash` as `verify` does: present, a regular
    /// file not under a symbolic link, `expected_len` bytes long (another
    /// length passes when the file still decodes to the payload: a
    /// recompression whose record update a crash cut short), and with
    /// `full`, decoded and hashed in bounded memory ([`Blobs::check_file`]).
    /// `None` when it is fine.
    pub fn inspect(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
        expected_len: u64,
        full: bool,
        counter: Option<ReadCounter>,
    ) -> Option<FileProblem> {
        let path = self.path_for(hash);
        let damaged = |why: String| {
            Some(FileProblem {
                missing: false,
                why,
            })
        };
        let meta = match self.file_meta(hash) {
            Ok(m) => m,
            Err(e) if fsutil::is_symlink_error(&e) => {
                return damaged(format!("{} lies under a symbolic link", path.display()));
            }
            Err(_) => {
                return Some(FileProblem {
                    missing: true,
                    why: format!("{} does not exist", path.display()),
                });
            }
        };
        if !meta.is_file() {
            return damaged(format!("{} is not a regular file", path.display()));
        }
        if meta.len() != expected_len && self.check_file(hash, codec, raw_size).is_err() {
            let why = format!(
                "{} is {} bytes, expected {expected_len}",
                path.display(),
                meta.len()
            );
            return damaged(why);
        }
        if !full {
            return None;
        }
        let e = self
            .check_file_counted(hash, codec, raw_size, counter)
            .err()?;
        Some(match e {
            BlobError::Missing => FileProblem {
                missing: true,
                why: "missing".into(),
            },
            BlobError::Corrupt(why) => FileProblem {
                missing: false,
                why,
            },
            BlobError::Io(e) => FileProblem {
                missing: false,
                why: e.to_string(),
            },
        })
    }

    /// Checks the blob file for `hash` by streaming it through the decoder
    /// and the hash in bounded memory (no map, no whole-payload buffer), as
    /// `verify` does for every file blob. Its outboard, when there is one,
    /// must hold exactly the group hashes of the payload.
    pub fn check_file(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<(), BlobError> {
        self.check_file_counted(hash, codec, raw_size, None)
    }

    /// [`Blobs::check_file`], telling `counter` how many payload bytes it
    /// has decoded and hashed so far (for progress bars over large blobs).
    pub fn check_file_counted(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
        counter: Option<ReadCounter>,
    ) -> Result<(), BlobError> {
        let file = self.open_blob(&self.path_for(hash))?;
        let mut payload = decoded_file(file, codec)?;
        if let Some(tick) = counter {
            payload = Box::new(Counted {
                inner: payload,
                tick,
                done: 0,
            });
        }
        let cvs = hash_checked(payload, hash, raw_size)?;
        if raw_size <= VERIFY_IN_MEMORY_MAX {
            return Ok(());
        }
        match self.read_outboard(hash, raw_size)? {
            Some(stored) if stored != cvs => Err(BlobError::Corrupt(format!(
                "outboard {} does not match the blob",
                self.outboard_path(hash).display()
            ))),
            _ => Ok(()),
        }
    }

    /// Opens the blob file for `hash` as a verifying stream (checked as it
    /// goes: damage shows at the end, after the bytes were handed out; see
    /// [`Blobs::open_verified`] for callers that emit them).
    pub fn open_reader(
        &self,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<VerifyingReader, BlobError> {
        self.open_reader_at(&self.path_for(hash), hash, codec, raw_size)
    }

    /// Removes the file of `hash` and its outboard (the sweeper's job, once
    /// the index has marked the blob `Deleting`). Returns the bytes the blob
    /// occupied on disk, 0 when there was no file.
    pub fn remove(&self, hash: &BlobHash) -> Result<u64> {
        // The outboard goes first: a crash in between leaves a blob without
        // one (read with a verification pass), never an outboard alone.
        self.remove_outboard(hash)?;
        let path = self.path_for(hash);
        let meta = match self.meta(&path) {
            Ok(m) if m.is_dir() => return Ok(0),
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).ctx("inspect", &path),
        };
        match self.remove_path(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).ctx("remove blob", &path),
        }
        self.sync_parent(&path)?;
        Ok(fsutil::disk_bytes(&meta))
    }

    /// Rewrites the zstd blob `hash` at `level`, streaming in bounded
    /// memory. The new file is decoded and checked against the hash before
    /// it atomically replaces the old one (readers holding the old file
    /// keep reading it); a result that is not smaller is discarded.
    /// Returns `None` when the blob is missing or damaged (reads heal it).
    pub fn recompress(
        &self,
        hash: &BlobHash,
        raw_size: u64,
        level: i32,
    ) -> Result<Option<Rewritten>> {
        let path = self.path_for(hash);
        let old = match self.meta(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if fsutil::is_symlink_error(&e) => return Ok(None),
            Err(e) => return Err(Error::io("inspect", &path, e)),
        };
        let mut src = match self.open_reader(hash, Codec::Zstd, raw_size) {
            Ok(r) => r,
            Err(BlobError::Io(e)) => return Err(e),
            Err(_) => return Ok(None),
        };
        let (tmp, file) = self.stage()?;
        let written = self
            .encode_to(&mut src, &file, raw_size, level)
            .and_then(|()| {
                let mut check = self
                    .open_reader_at(&tmp, hash, Codec::Zstd, raw_size)
                    .map_err(|_| io::Error::other("the new frame does not open"))?;
                io::copy(&mut check, &mut io::sink()).map(drop)
            })
            .and_then(|()| file.metadata());
        let new = match written {
            Ok(m) => m,
            Err(e) => {
                let _ = self.remove_path(&tmp);
                if e.kind() == io::ErrorKind::InvalidData {
                    log::warn!("not recompressing blob {hash}: {e}");
                    return Ok(None);
                }
                return Err(Error::io("recompress into", &tmp, e));
            }
        };
        if new.len() >= old.len() {
            let _ = self.remove_path(&tmp);
            return Ok(Some(Rewritten {
                stored_size: old.len(),
                disk_bytes: fsutil::disk_bytes(&old),
                replaced: false,
            }));
        }
        if let Err(e) = fsutil::rename_in(&self.cache, &tmp, &path) {
            let _ = self.remove_path(&tmp);
            return Err(e).ctx("replace blob", &path);
        }
        self.sync_parent(&path)?;
        let placed = self.meta(&path).ctx("inspect", &path)?;
        Ok(Some(Rewritten {
            stored_size: placed.len(),
            disk_bytes: fsutil::disk_bytes(&placed),
            replaced: true,
        }))
    }

    fn encode_to(
        &self,
        src: &mut dyn Read,
        file: &File,
        raw_size: u64,
        level: i32,
    ) -> io::Result<()> {
        let out = BufWriter::with_capacity(CHUNK, file);
        let mut enc = zstd::stream::write::Encoder::new(out, level)?;
        enc.window_log(WINDOW_LOG_MAX - 1)?;
        enc.set_pledged_src_size(Some(raw_size))?;
        io::copy(src, &mut enc)?;
        enc.finish()?.flush()?;
        if self.sync {
            file.sync_all()?;
        }
        Ok(())
    }
}

/// What [`Blobs::recompress`] left in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Length of the blob file now.
    pub stored_size: u64,
    /// Its allocated bytes.
    pub disk_bytes: u64,
    /// A smaller file replaced the old one.
    pub replaced: bool,
}

impl Blobs {
    /// Opens the blob file at `path` as a verifying stream of `hash`'s bytes.
    fn open_reader_at(
        &self,
        path: &Path,
        hash: &BlobHash,
        codec: Codec,
        raw_size: u64,
    ) -> Result<VerifyingReader, BlobError> {
        reader_over(self.open_blob(path)?, hash, codec, raw_size)
    }
}

/// A verifying stream of `hash`'s bytes over an open blob file, read from
/// its current offset.
fn reader_over(
    file: File,
    hash: &BlobHash,
    codec: Codec,
    raw_size: u64,
) -> Result<VerifyingReader, BlobError> {
    let inner = decoded_file(file, codec)?;
    Ok(VerifyingReader::new(inner, *hash, raw_size))
}

/// Reads all of `payload`, checks its length and hash, and returns its
/// group CVs.
/// Told the number of bytes a stream has produced so far.
pub type ReadCounter = Arc<dyn Fn(u64) + Send + Sync>;

/// A reader that reports the bytes read through it.
struct Counted {
    inner: Box<dyn Read + Send>,
    tick: ReadCounter,
    done: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.tick)(self.done);
        Ok(n)
    }
}

fn hash_checked(
    mut payload: Box<dyn Read + Send>,
    hash: &BlobHash,
    raw_size: u64,
) -> Result<Vec<Cv>, BlobError> {
    let tree =
        outboard::hash_stream(&mut payload).map_err(|e| BlobError::Corrupt(e.to_string()))?;
    if tree.len() != raw_size {
        return Err(BlobError::Corrupt(format!(
            "decoded {} bytes, expected {raw_size}",
            tree.len()
        )));
    }
    let (got, cvs) = tree.finish();
    if got != *hash {
        return Err(BlobError::Corrupt("content does not match its hash".into()));
    }
    Ok(cvs)
}

/// The decoded payload of an open blob file, read from its current offset.
fn decoded_file(file: File, codec: Codec) -> Result<Box<dyn Read + Send>, BlobError> {
    let len = file
        .metadata()
        .map_err(|e| BlobError::Io(Error::io("inspect", "an open blob file", e)))?
        .len();
    // Plain reads, not a memory map: every page of a map that a stream
    // has passed stays in the process's resident set, so streaming a
    // 100 MiB blob would grow RSS by 100 MiB; reads keep it bounded.
    let source: Box<dyn Read + Send> = if len == 0 {
        Box::new(io::empty())
    } else {
        Box::new(file)
    };
    match codec {
        Codec::Raw => Ok(source),
        Codec::Zstd => zstd_decoder(source)
            .map(|d| Box::new(d) as Box<dyn Read + Send>)
            .map_err(|e| BlobError::Corrupt(format!("zstd: {e}"))),
    }
}

impl Blobs {
    /// Removes the damaged file for `hash`, so a later put writes a fresh
    /// copy instead of reusing it. (Should a concurrent put have replaced
    /// it with a good copy in the same instant, that copy goes too: a later
    /// read is then a miss, never wrong bytes.)
    pub fn discard_corrupt(&self, hash: &BlobHash) {
        for path in [self.outboard_path(hash), self.path_for(hash)] {
            if let Err(e) = self.remove_path(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("could not remove corrupt blob {}: {e}", path.display());
            }
        }
    }

    /// Removes the outboard of `hash`, if any (with its blob, or alone when
    /// GC finds it without one).
    pub fn remove_outboard(&self, hash: &BlobHash) -> Result<()> {
        let path = self.outboard_path(hash);
        match self.remove_path(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove outboard", &path),
        }
    }

    /// Removes staging files in `tmp/` whose writer is gone (unlocked) and
    /// whose last write is older than `min_age`. Returns how many went.
    pub fn clean_staging(&self, min_age: std::time::Duration) -> Result<usize> {
        let mut removed = 0;
        let entries = match fsutil::list_in(&self.cache, &self.tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).ctx("list", &self.tmp),
        };
        for (path, _) in entries {
            if self.staging_is_abandoned(&path, min_age) && self.remove_path(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// True for a name [`fsutil::unique_tmp_name`] makes
/// (`<tag>-<pid>-<nanos>-<n>.part`): only those are blobcache's to clean up
/// in `tmp/`; anything else there is someone's file and is left alone.
pub(crate) fn is_staging_name(path: &Path) -> bool {
    let Some(stem) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".part"))
    else {
        return false;
    };
    let mut parts = stem.split('-');
    let tag = parts.next().unwrap_or("");
    let numbers: Vec<&str> = parts.collect();
    !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_lowercase())
        && numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What an entry of `blobs/` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walked {
    /// The blob file of this hash.
    Blob(BlobHash),
    /// The outboard of this hash's blob (`<blob name>.obao`).
    Outboard(BlobHash),
    /// Not ours: a foreign file, a symlink, an odd name.
    Foreign,
}

/// Every entry under `blobs/` and what it is. Nothing is followed: a
/// symlinked fan-out directory is reported as one foreign entry, never
/// listed.
pub(crate) fn walk(root: &Path) -> Result<Vec<(PathBuf, Walked)>> {
    let cache = root.parent().unwrap_or(root);
    let mut out = Vec::new();
    let fanouts = match fsutil::list_in(cache, root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).ctx("list", root),
    };
    for (dir, kind) in fanouts {
        if kind != fsutil::Kind::Dir {
            out.push((dir, Walked::Foreign));
            continue;
        }
        for (path, kind) in fsutil::list_in(cache, &dir).ctx("list", &dir)? {
            let what = if kind == fsutil::Kind::File {
                walked(&path)
            } else {
                Walked::Foreign
            };
            out.push((path, what));
        }
    }
    Ok(out)
}

/// What the file at `path` (in a fan-out directory) is, by its name.
fn walked(path: &Path) -> Walked {
    if let Some(h) = hash_of_path(path) {
        return Walked::Blob(h);
    }
    let outboard_of = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(outboard::SUFFIX))
        .and_then(|blob| hash_of_path(&path.with_file_name(blob)));
    outboard_of.map_or(Walked::Foreign, Walked::Outboard)
}

/// The hash a blob path names (`…/ab/<62 hex>`), if it is one.
pub(crate) fn hash_of_path(path: &Path) -> Option<BlobHash> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    if dir.len() != 2 || name.len() != 62 {
        return None;
    }
    let h = BlobHash::from_hex(&format!("{dir}{name}"))?;
    // Only lower-case hex is ours.
    (h.to_hex() == format!("{dir}{name}")).then_some(h)
}

/// See `staging_is_abandoned`.
const EMPTY_STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl Blobs {
    fn staging_is_abandoned(&self, path: &Path, min_age: std::time::Duration) -> bool {
        if !is_staging_name(path) {
            return false;
        }
        let Ok(meta) = self.meta(path) else {
            return false;
        };
        if !meta.is_file() {
            // A symlink or directory does not belong in tmp/; unlinking a link
            // is safe, directories are left for a human.
            return meta.file_type().is_symlink();
        }
        // A writer creates its staging file and then locks it: an empty file
        // may be one in that instant, so it gets a fixed grace of its own
        // whatever `min_age` says (otherwise the cleaner could remove it, or
        // hold its lock when the writer reaches for it).
        let min_age = if meta.len() == 0 {
            min_age.max(EMPTY_STAGING_GRACE)
        } else {
            min_age
        };
        let old_enough = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            return false;
        }
        // A live writer holds the lock; try_lock succeeds only when it is gone.
        match fsutil::open_in(&self.cache, path, fsutil::OpenHow::ReadWrite) {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => false,
        }
    }
}

impl Blobs {
    fn remove_foreign(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        if meta.is_dir() {
            return Err(Error::NotACache {
                path: path.to_path_buf(),
                reason: "a directory sits where a blob file belongs; remove it".into(),
            });
        }
        self.remove_path(path).ctx("remove foreign file", path)
    }

    fn open_blob(&self, path: &Path) -> Result<File, BlobError> {
        match fsutil::open_in(&self.cache, path, fsutil::OpenHow::Read) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::Missing),
            // A link at the blob name or at any directory above it: it is not
            // our blob, and what it points to is never read.
            Err(e) if fsutil::is_symlink_error(&e) => Err(BlobError::Corrupt(format!(
                "{} is, or lies under, a symbolic link",
                path.display()
            ))),
            Err(e) => Err(BlobError::Io(Error::io("open", path, e))),
        }
    }
}

/// What a blob's stored bytes must turn out to be (see
/// [`Blobs::import_stored`] and [`copy_verified`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredBlob {
    pub hash: BlobHash,
    pub codec: Codec,
    pub raw_size: u64,
    /// Exact number of stored bytes the source holds.
    pub stored_len: u64,
}

/// Why stored bytes copied from a foreign source were refused.
#[derive(Debug)]
pub(crate) enum ImportBlobError {
    /// The source ended after `got` of the `want` stored bytes.
    Truncated { got: u64, want: u64 },
    /// The bytes do not decode to the payload the hash names.
    Corrupt(String),
    /// Writing the copy failed.
    Write(io::Error),
    /// The store failed (staging file, link).
    Store(Error),
}

/// Copies exactly `want.stored_len` stored bytes from `src` into `sink`,
/// decoding them (for zstd) and hashing the payload as they pass, then
/// checks the payload's size and blake3 against `want`.
pub(crate) fn copy_verified(
    src: &mut dyn Read,
    sink: &mut dyn Write,
    want: &StoredBlob,
) -> std::result::Result<(), ImportBlobError> {
    copy_verified_groups(src, sink, want).map(drop)
}

/// [`copy_verified`], returning the payload's group CVs (for its outboard).
fn copy_verified_groups(
    src: &mut dyn Read,
    sink: &mut dyn Write,
    want: &StoredBlob,
) -> std::result::Result<Vec<Cv>, ImportBlobError> {
    let mut tee = Tee {
        src: src.take(want.stored_len),
        sink,
        copied: 0,
        write_err: None,
    };
    let decoded = hash_decoded(&mut tee, want.codec);
    // Whatever the decoder left unread still belongs to the blob.
    let drained = io::copy(&mut tee, &mut io::sink());
    if let Some(e) = tee.write_err.take() {
        return Err(ImportBlobError::Write(e));
    }
    if tee.copied < want.stored_len {
        return Err(ImportBlobError::Truncated {
            got: tee.copied,
            want: want.stored_len,
        });
    }
    let (hash, raw_size, cvs) = decoded.map_err(|e| ImportBlobError::Corrupt(e.to_string()))?;
    drained.map_err(|e| ImportBlobError::Corrupt(e.to_string()))?;
    if raw_size != want.raw_size {
        return Err(ImportBlobError::Corrupt(format!(
            "decodes to {raw_size} bytes, the manifest says {}",
            want.raw_size
        )));
    }
    if hash != want.hash {
        return Err(ImportBlobError::Corrupt(
            "its content does not match its name (blake3 differs)".into(),
        ));
    }
    Ok(cvs)
}

/// Decodes everything `src` yields and returns the payload's hash, size
/// and group CVs.
fn hash_decoded(src: &mut dyn Read, codec: Codec) -> io::Result<(BlobHash, u64, Vec<Cv>)> {
    let mut reader = decoder(src, codec)?;
    let tree = outboard::hash_stream(&mut reader)?;
    let len = tree.len();
    let (hash, cvs) = tree.finish();
    Ok((hash, len, cvs))
}

/// The raw payload of a blob's stored bytes read from `src`, decoded in
/// bounded memory (a zstd window of at most 2^[`WINDOW_LOG_MAX`] bytes).
fn decoder<'a>(src: &'a mut dyn Read, codec: Codec) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match codec {
        Codec::Raw => Box::new(src),
        Codec::Zstd => Box::new(zstd_decoder(src)?),
    })
}

/// A zstd stream decoder over `src` with the readers' window limit.
fn zstd_decoder<R: Read>(
    src: R,
) -> io::Result<zstd::stream::read::Decoder<'static, io::BufReader<R>>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(io::BufReader::with_capacity(CHUNK, src))?;
    d.window_log_max(WINDOW_LOG_MAX)?;
    Ok(d)
}

/// Passes reads through and writes a copy of every byte to `sink`.
struct Tee<'a, R> {
    src: R,
    sink: &'a mut dyn Write,
    copied: u64,
    write_err: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        if let Err(e) = self.sink.write_all(&buf[..n]) {
            let msg = e.to_string();
            self.write_err = Some(e);
            return Err(io::Error::other(msg));
        }
        self.copied += n as u64;
        Ok(n)
    }
}

/// A locked scratch file in `tmp/` (the lock tells the cleaner its writer
/// is alive), removed when dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub path: PathBuf,
    cache: PathBuf,
    pub file: File,
    _lock: File,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fsutil::remove_file_in(&self.cache, &self.path);
    }
}

/// Failure of a streaming write: the source reader or the store.
pub(crate) enum StreamError {
    Source(io::Error),
    Store(Error),
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> StreamError {
    StreamError::Store(Error::io(op, path, e))
}

/// A writer that must be finished explicitly (zstd encoder or plain buffer).
trait FinishWrite: Write {
    fn finish_write(self: Box<Self>) -> io::Result<()>;
}

impl FinishWrite for BufWriter<File> {
    fn finish_write(mut self: Box<Self>) -> io::Result<()> {
        self.flush()
    }
}

impl FinishWrite for zstd::stream::write::Encoder<'static, BufWriter<File>> {
    fn finish_write(self: Box<Self>) -> io::Result<()> {
        let mut inner = (*self).finish()?;
        inner.flush()
    }
}

/// Called once with the reason when a stream turns out to be corrupt.
type CorruptHook = Box<dyn FnOnce(&str) + Send>;

/// Streams a blob's raw bytes, hashing them as they pass. At the end of the
/// stream the hash and length are compared with the expected ones; on a
/// mismatch the final `read` fails with `InvalidData` (and the `on_corrupt`
/// hook runs), so a reader that reads to the end never mistakes damaged
/// bytes for the payload.
pub struct VerifyingReader {
    inner: Box<dyn Read + Send>,
    /// `None` when `inner` checks every byte itself (one group at a time,
    /// against an outboard): only the length is checked here then.
    hasher: Option<blake3::Hasher>,
    expected: BlobHash,
    expected_len: u64,
    seen: u64,
    verified: bool,
    on_corrupt: Option<CorruptHook>,
}

impl fmt::Debug for VerifyingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingReader")
            .field("expected", &self.expected)
            .field("expected_len", &self.expected_len)
            .field("seen", &self.seen)
            .finish()
    }
}

impl VerifyingReader {
    pub(crate) fn new(inner: Box<dyn Read + Send>, expected: BlobHash, expected_len: u64) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(blake3::Hasher::new()),
            expected,
            expected_len,
            seen: 0,
            verified: false,
            on_corrupt: None,
        }
    }

    /// A stream over a [`GroupReader`], which verifies every group before
    /// handing it out (and fails with `InvalidData` where one is wrong), so
    /// the payload is not hashed a second time here.
    pub(crate) fn checked_by_groups(
        inner: Box<dyn Read + Send>,
        expected: BlobHash,
        expected_len: u64,
    ) -> Self {
        VerifyingReader {
            hasher: None,
            ..VerifyingReader::new(inner, expected, expected_len)
        }
    }

    /// A stream over a payload already checked against `expected` (a
    /// remote hit): not hashed a second time, only its length is checked.
    pub(crate) fn verified(data: Vec<u8>, expected: BlobHash) -> Self {
        let len = data.len() as u64;
        VerifyingReader::checked_by_groups(Box::new(io::Cursor::new(data)), expected, len)
    }

    /// Sets the hook that runs once when corruption is detected.
    pub(crate) fn on_corrupt(mut self, f: impl FnOnce(&str) + Send + 'static) -> Self {
        self.on_corrupt = Some(Box::new(f));
        self
    }

    /// Raw size the stream will deliver.
    pub fn len(&self) -> u64 {
        self.expected_len
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.expected_len == 0
    }

    fn corrupt(&mut self, why: String) -> io::Error {
        if let Some(f) = self.on_corrupt.take() {
            f(&why);
        }
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {} is corrupt: {why}", self.expected),
        )
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.corrupt(e.to_string())),
        };
        if n > 0 {
            self.seen += n as u64;
            if self.seen > self.expected_len {
                return Err(self.corrupt("longer than recorded".into()));
            }
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            return Ok(n);
        }
        if self.seen != self.expected_len {
            let why = format!("ended after {} of {} bytes", self.seen, self.expected_len);
            return Err(self.corrupt(why));
        }
        if let Some(h) = &self.hasher
            && BlobHash(*h.finalize().as_bytes()) != self.expected
        {
            return Err(self.corrupt("content does not match its hash".into()));
        }
        self.verified = true;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn compress_refuses_incompressible() {
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let json =
            br#"{"id":1,"title":"x","genres":["a","b"],"overview":"aaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#
                .repeat(20);
        assert!(compress(&json, 3).is_some());
        let packed = compress(&noise, 3);
        assert!(packed.is_none_or(|p| p.len() < noise.len()));
        assert!(compress(b"", 3).is_none());
    }

    #[test]
    fn decode_checks_hash_and_length() {
        let raw = b"hello hello hello hello hello hello".to_vec();
        let h = BlobHash::of(&raw);
        let z = compress(&raw, 3).unwrap();
        assert_eq!(decode(&z, Codec::Zstd, raw.len() as u64, &h).unwrap(), raw);
        assert!(matches!(
            decode(&z, Codec::Zstd, raw.len() as u64 + 1, &h),
            Err(BlobError::Corrupt(_))
        ));
        let other = BlobHash::of(b"nope");
        assert!(matches!(
            decode(&raw, Codec::Raw, raw.len() as u64, &other),
            Err(BlobError::Corrupt(_))
        ));
        // A claimed size that cannot be allocated is corruption, not an abort.
        assert!(decode(&z, Codec::Zstd, u64::MAX, &h).is_err());
    }

    #[test]
    fn walk_names_blobs_outboards_and_foreign_files() {
        let hex = BlobHash::of(b"x").to_hex();
        let dir = Path::new("/c/blobs").join(&hex[..2]);
        let blob = dir.join(&hex[2..]);
        let h = BlobHash::of(b"x");
        assert_eq!(walked(&blob), Walked::Blob(h));
        let ob = dir.join(format!("{}.obao", &hex[2..]));
        assert_eq!(walked(&ob), Walked::Outboard(h));
        for odd in [
            format!("{}.OBAO", &hex[2..]),
            format!("{}.obao", &hex[2..].to_uppercase()),
            format!("{}.obao.obao", &hex[2..]),
            "notes.obao".to_string(),
        ] {
            assert_eq!(walked(&dir.join(odd)), Walked::Foreign);
        }
    }

    #[test]
    fn verifying_reader_rejects_wrong_bytes() {
        let raw = b"payload".to_vec();
        let mut r = VerifyingReader::new(
            Box::new(Cursor::new(b"paylaod".to_vec())),
            BlobHash::of(&raw),
            7,
        );
        let mut out = Vec::new();
        assert_eq!(
            r.read_to_end(&mut out).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut ok =
            VerifyingReader::new(Box::new(Cursor::new(raw.clone())), BlobHash::of(&raw), 7);
        out.clear();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, raw);
    }
}
