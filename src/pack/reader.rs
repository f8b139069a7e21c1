//! Reading needles: `pread` (the default) or a memory map of the pack;
//! every read verifies the needle's checksum and the blake3 of the decoded
//! payload before returning a byte.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use memmap2::Mmap;

use super::needle::{self, HEADER_LEN, MAX_RAW};
use super::{DictDir, FILE_HEADER_LEN, Location, PackDir, PackError, check_file_header};
use crate::blobs::BlobHash;
use crate::error::Error;

/// How a [`PackReader`] gets a needle's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// One `pread` per needle into a fresh buffer.
    #[default]
    Pread,
    /// A read-only map of the whole pack, remapped when the pack has grown.
    Mmap,
}

/// A needle as read back: the payload and what was stored with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needle {
    /// The decoded, verified payload.
    pub payload: Vec<u8>,
    /// The key stored with the needle.
    pub key: Vec<u8>,
    /// The record stored with the needle.
    pub record: Vec<u8>,
    /// blake3 of the payload.
    pub hash: BlobHash,
}

struct OpenPack {
    file: File,
    map: Mutex<Option<Arc<Mmap>>>,
}

/// Reads needles from any pack of one cache; cheap to share between
/// threads.
pub struct PackReader {
    dir: PackDir,
    mode: ReadMode,
    dicts: Option<Arc<DictDir>>,
    open: Mutex<HashMap<u32, Arc<OpenPack>>>,
}

impl std::fmt::Debug for PackReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackReader")
            .field("mode", &self.mode)
            .finish()
    }
}

impl PackReader {
    /// A reader of the packs of the cache at `root`. A symlinked `packs/`
    /// is refused.
    pub fn open(root: &Path, mode: ReadMode) -> Result<PackReader, PackError> {
        Ok(PackReader {
            dir: PackDir::open(root, false)?,
            mode,
            dicts: None,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Reads needles that name a dictionary with those of `dicts`
    /// (without, such needles are errors).
    pub fn with_dictionaries(mut self, dicts: Arc<DictDir>) -> PackReader {
        self.dicts = Some(dicts);
        self
    }

    /// The decoded payload of `n`, with its dictionary when it names one.
    fn payload(&self, n: &needle::NeedleRef<'_>) -> Result<Vec<u8>, String> {
        let id = n.header.dict;
        if id == 0 {
            return n.payload();
        }
        let dicts = self.dicts.as_ref().ok_or_else(|| {
            format!("needle needs zstd dictionary {id}, and this reader has none")
        })?;
        let d = dicts.get(id)?;
        n.payload_with(Some(&d))
    }

    /// The payload at `loc`, verified, and checked to be the payload named
    /// `hash`. A damaged needle, or another needle, is an error, never bytes.
    pub fn read(&self, loc: Location, hash: &BlobHash) -> Result<Vec<u8>, PackError> {
        self.with_needle(loc, |n| {
            if n.header.hash != *hash {
                return Err(format!(
                    "the needle holds {} instead of {hash}",
                    n.header.hash
                ));
            }
            self.payload(n)
        })
    }

    /// The needle at `loc` with its key and record, payload verified.
    pub fn read_needle(&self, loc: Location) -> Result<Needle, PackError> {
        self.with_needle(loc, |n| {
            Ok(Needle {
                payload: self.payload(n)?,
                key: n.key.to_vec(),
                record: n.record.to_vec(),
                hash: n.header.hash,
            })
        })
    }

    /// Drops cached descriptors and maps (after GC removed packs).
    pub fn forget(&self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn with_needle<T>(
        &self,
        loc: Location,
        f: impl FnOnce(&needle::NeedleRef<'_>) -> Result<T, String>,
    ) -> Result<T, PackError> {
        let corrupt = |reason: String| PackError::Corrupt {
            pack: loc.pack,
            offset: loc.offset,
            reason,
        };
        check_location(loc).map_err(corrupt)?;
        let pack = self.pack(loc.pack)?;
        let parse_and = |bytes: &[u8]| {
            let n = needle::parse(bytes)?;
            if n.header.total_len() != loc.len as usize {
                return Err(format!(
                    "the needle is {} bytes, not {}",
                    n.header.total_len(),
                    loc.len
                ));
            }
            f(&n)
        };
        match self.mode {
            ReadMode::Pread => {
                let bytes = self.pread(&pack, loc)?;
                parse_and(&bytes).map_err(corrupt)
            }
            ReadMode::Mmap => {
                let map = self.map_covering(&pack, loc)?;
                let bytes = slice_of(&map, loc)
                    .ok_or_else(|| corrupt("past the end of the pack".into()))?;
                parse_and(bytes).map_err(corrupt)
            }
        }
    }

    fn pread(&self, pack: &OpenPack, loc: Location) -> Result<Vec<u8>, PackError> {
        let mut buf = vec![0u8; loc.len as usize];
        match pack.file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(PackError::Corrupt {
                pack: loc.pack,
                offset: loc.offset,
                reason: "the needle runs past the end of the pack".into(),
            }),
            Err(e) => Err(Error::io("read", self.dir.path(loc.pack), e).into()),
        }
    }

    /// A map of the pack that covers `loc`, remapping once if the pack
    /// grew since it was mapped.
    fn map_covering(&self, pack: &OpenPack, loc: Location) -> Result<Arc<Mmap>, PackError> {
        let mut slot = pack.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = slot.as_ref().filter(|m| slice_of(m, loc).is_some()) {
            return Ok(m.clone());
        }
        let map = crate::mmap::map_pack(&pack.file)
            .map_err(|e| Error::io("map", self.dir.path(loc.pack), e))?;
        let map = Arc::new(map);
        *slot = Some(map.clone());
        Ok(map)
    }

    fn pack(&self, id: u32) -> Result<Arc<OpenPack>, PackError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = open.get(&id) {
            return Ok(p.clone());
        }
        let file = self.dir.open_pack(id, false)?;
        let mut head = [0u8; FILE_HEADER_LEN as usize];
        let read = file.read_exact_at(&mut head, 0);
        read.map_err(|e| e.to_string())
            .and_then(|()| check_file_header(&head, id))
            .map_err(|reason| PackError::Corrupt {
                pack: id,
                offset: 0,
                reason,
            })?;
        let p = Arc::new(OpenPack {
            file,
            map: Mutex::new(None),
        });
        open.insert(id, p.clone());
        Ok(p)
    }
}

fn slice_of(map: &Mmap, loc: Location) -> Option<&[u8]> {
    let start = usize::try_from(loc.offset).ok()?;
    map.get(start..start.checked_add(loc.len as usize)?)
}

/// Refuses locations no writer could have produced, before allocating.
fn check_location(loc: Location) -> Result<(), String> {
    if loc.pack == 0 || loc.offset < FILE_HEADER_LEN {
        return Err("not a needle location".into());
    }
    let max = HEADER_LEN as u64 + 2 * u64::from(u16::MAX) + u64::from(MAX_RAW);
    if (loc.len as usize) < HEADER_LEN || u64::from(loc.len) > max {
        return Err(format!("a needle cannot be {} bytes long", loc.len));
    }
    Ok(())
}
