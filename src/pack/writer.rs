//! The pack writer: one process's active pack, appended to needle by needle.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::needle::{self, NeedleHeader, Prepared};
use super::{FILE_HEADER_LEN, Location, PackDir, PackError, file_header};
use crate::blobs::BlobHash;
use crate::error::Error;
use crate::policy::Durability;

/// Default size at which a writer seals its pack and starts a new one.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 256 << 20;

/// How a [`PackWriter`] writes.
#[derive(Clone, Debug)]
pub struct PackWriterOptions {
    max_pack_bytes: u64,
    durability: Durability,
    level: Option<i32>,
}

impl Default for PackWriterOptions {
    fn default() -> Self {
        PackWriterOptions {
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
            durability: Durability::Buffered,
            level: Some(3),
        }
    }
}

impl PackWriterOptions {
    /// Options with the defaults (256 MiB packs, buffered, zstd level 3).
    pub fn new() -> Self {
        Self::default()
    }

    /// Size at which the active pack is sealed (at most 4 GiB, so offsets
    /// fit the lean record).
    pub fn max_pack_bytes(mut self, n: u64) -> Self {
        self.max_pack_bytes = n.clamp(FILE_HEADER_LEN + 1, u64::from(u32::MAX));
        self
    }

    /// `Buffered`: an append returns once the OS has the bytes (`kill -9`
    /// loses nothing); `Synced`: after `fdatasync` (power loss loses nothing).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// zstd level, or `None` to store payloads raw.
    pub fn level(mut self, level: Option<i32>) -> Self {
        self.level = level;
        self
    }
}

/// What an append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Where the needle is.
    pub location: Location,
    /// blake3 of the raw payload.
    pub hash: BlobHash,
    /// The needle's header (codec, lengths).
    pub header: NeedleHeader,
}

struct Active {
    id: u32,
    file: File,
    len: u64,
    /// Held for the pack's whole life as the active pack.
    _lock: File,
}

/// Appends needles to this writer's own active pack.
pub struct PackWriter {
    dir: PackDir,
    opts: PackWriterOptions,
    active: Option<Active>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("active", &self.active.as_ref().map(|a| (a.id, a.len)))
            .finish()
    }
}

impl PackWriter {
    /// A writer for the cache at `root` (creates `packs/` and `locks/`).
    /// No pack is created before the first append.
    pub fn open(root: &Path, opts: PackWriterOptions) -> Result<PackWriter, PackError> {
        Ok(PackWriter {
            dir: PackDir::open(root, true)?,
            opts,
            active: None,
            buf: Vec::new(),
        })
    }

    /// Id of the active pack, if one is open.
    pub fn active_pack(&self) -> Option<u32> {
        self.active.as_ref().map(|a| a.id)
    }

    /// Compresses and appends `payload` with `key` and `record` (either
    /// may be empty). When this returns, the needle is complete in the pack
    /// with the writer's durability.
    pub fn append(
        &mut self,
        payload: &[u8],
        key: &[u8],
        record: &[u8],
    ) -> Result<Appended, PackError> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = needle::encode_payload(payload, self.opts.level, key, record, &mut buf)
            .map_err(PackError::Invalid)
            .and_then(|header| self.write_needle(&buf, header));
        self.buf = buf;
        res
    }

    /// Appends `payload` (already prepared) with `key` and a record that
    /// depends on where the needle lands: `record(location)` must return
    /// exactly `record_len` bytes. This lets a needle carry the very index
    /// record that will point at it (the pack is the write-ahead log).
    pub fn append_located(
        &mut self,
        payload: &Prepared<'_>,
        key: &[u8],
        record_len: usize,
        record: impl FnOnce(Location) -> Result<Vec<u8>, String>,
    ) -> Result<Appended, PackError> {
        let len = u32::try_from(payload.needle_len(key.len(), record_len))
            .map_err(|_| PackError::Invalid("needle too large".into()))?;
        let active = self.room_for(u64::from(len))?;
        let location = Location {
            pack: active.id,
            offset: active.len,
            len,
        };
        let rec = record(location).map_err(PackError::Invalid)?;
        if rec.len() != record_len {
            return Err(PackError::Invalid(format!(
                "record of {} bytes where {record_len} were announced",
                rec.len()
            )));
        }
        let mut buf = std::mem::take(&mut self.buf);
        let res = needle::encode(&payload.parts(key, &rec), &mut buf)
            .and_then(|()| NeedleHeader::parse(&buf))
            .map_err(PackError::Invalid)
            .and_then(|header| self.write_needle(&buf, header));
        self.buf = buf;
        let appended = res?;
        if appended.location != location {
            return Err(PackError::Invalid(
                "the needle moved while being framed".into(),
            ));
        }
        Ok(appended)
    }

    /// Appends an already framed needle (compaction copies them as they
    /// are); it is parsed and verified first.
    pub fn append_framed(&mut self, framed: &[u8]) -> Result<Appended, PackError> {
        let n = needle::parse(framed).map_err(PackError::Invalid)?;
        let header = n.header;
        self.write_needle(&framed[..header.total_len()], header)
    }

    fn write_needle(&mut self, bytes: &[u8], header: NeedleHeader) -> Result<Appended, PackError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| PackError::Invalid("needle too large".into()))?;
        let durability = self.opts.durability;
        let active = self.room_for(u64::from(len))?;
        let (id, offset) = (active.id, active.len);
        if let Err(e) = write_at(active, bytes, offset, durability) {
            // Take back a partial needle; if even that fails, seal the pack
            // (scanning it will skip the torn bytes).
            if active.file.set_len(offset).is_err() {
                self.active = None;
            }
            return Err(Error::io("append to", self.dir.path(id), e).into());
        }
        active.len += u64::from(len);
        let location = Location {
            pack: active.id,
            offset,
            len,
        };
        Ok(Appended {
            location,
            hash: header.hash,
            header,
        })
    }

    /// The active pack, rolled over when `len` more bytes would pass the
    /// size limit.
    fn room_for(&mut self, len: u64) -> Result<&mut Active, PackError> {
        let full = self
            .active
            .as_ref()
            .is_some_and(|a| a.len > FILE_HEADER_LEN && a.len + len > self.opts.max_pack_bytes);
        if full {
            self.active = None;
        }
        if self.active.is_none() {
            self.active = Some(self.start_pack()?);
        }
        self.active
            .as_mut()
            .ok_or_else(|| PackError::Invalid("no active pack".into()))
    }

    /// Claims the next free id: its lock first, then the file (create-new),
    /// so two writers never share a pack and a dead writer's pack is never
    /// appended to again.
    fn start_pack(&self) -> Result<Active, PackError> {
        let mut id = self.dir.highest_id()?;
        loop {
            id = id
                .checked_add(1)
                .ok_or_else(|| PackError::Invalid("pack ids exhausted".into()))?;
            let Some(lock) = self.dir.try_lock(id)? else {
                continue;
            };
            let Some(file) = self.dir.create_pack(id)? else {
                continue;
            };
            let synced = self.opts.durability == Durability::Synced;
            let path = self.dir.path(id);
            file.write_all_at(&file_header(id), 0)
                .and_then(|()| if synced { file.sync_all() } else { Ok(()) })
                .map_err(|e| Error::io("write", &path, e))?;
            if synced {
                self.dir.sync()?;
            }
            return Ok(Active {
                id,
                file,
                len: FILE_HEADER_LEN,
                _lock: lock,
            });
        }
    }

    /// Makes everything appended so far durable (fdatasync).
    pub fn sync(&self) -> Result<(), PackError> {
        let Some(a) = &self.active else { return Ok(()) };
        a.file
            .sync_data()
            .map_err(|e| Error::io("sync", self.dir.path(a.id), e).into())
    }
}

fn write_at(a: &Active, bytes: &[u8], offset: u64, d: Durability) -> std::io::Result<()> {
    a.file.write_all_at(bytes, offset)?;
    match d {
        Durability::Synced => a.file.sync_data(),
        Durability::Buffered => Ok(()),
    }
}
