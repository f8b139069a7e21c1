//! zstd dictionaries for pack needles: trained per backend from its own
//! payloads, stored one file each under `dicts/`, named by a 16-bit id
//! that needles and lean records carry (0 = none).
//!
//! ```text
//! <dir>/dicts/NNNN.zdict   48-byte header, then the dictionary
//!   0  8  magic `BCDICT\0\x01`
//!   8  2  id (u16 LE, never 0)
//!  10  2  zero
//!  12  4  dictionary length (u32 LE)
//!  16 32  blake3 of the dictionary
//! ```
//!
//! A dictionary file is written (fsynced, then renamed into place and the
//! directory fsynced) before any needle names it, whatever the cache's
//! durability: a needle that outlives its dictionary could never be read.
//! Files are never rewritten; a damaged one makes the needles naming it
//! misses (counted), never wrong bytes, since every payload is still
//! checked against its blake3.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use zstd::bulk::{Compressor, Decompressor};

use super::PackError;
use crate::error::{Error, IoContext};
use crate::fsutil::{self, OpenHow};

const MAGIC: [u8; 8] = *b"BCDICT\0\x01";
const HEADER: usize = 48;
/// Largest dictionary accepted from disk (zstd's default size is 110 KB).
pub const MAX_DICT: usize = 1 << 20;

/// One dictionary, with pools of compression and decompression contexts
/// that hold it already loaded (loading it costs more than a small
/// payload's compression).
pub struct Dictionary {
    id: u16,
    bytes: Arc<[u8]>,
    level: i32,
    enc: Mutex<Vec<Compressor<'static>>>,
    dec: Mutex<Vec<Decompressor<'static>>>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Dictionary {
    fn new(id: u16, bytes: Arc<[u8]>, level: i32) -> Dictionary {
        Dictionary {
            id,
            bytes,
            level,
            enc: Mutex::new(Vec::new()),
            dec: Mutex::new(Vec::new()),
        }
    }

    /// Its id, as needles and records name it.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty dictionary (never stored).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `raw` compressed with this dictionary.
    pub fn compress(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        let pooled = self
            .enc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut c = match pooled {
            Some(c) => c,
            None => Compressor::with_dictionary(self.level, &self.bytes)
                .map_err(|e| format!("zstd dictionary {}: {e}", self.id))?,
        };
        let out = c.compress(raw).map_err(|e| e.to_string());
        self.enc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c);
        out
    }

    /// `stored` decompressed with this dictionary, refusing more than
    /// `raw_len` bytes (the caller checks the length and the hash).
    pub fn decompress(&self, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
        let pooled = self
            .dec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut d = match pooled {
            Some(d) => d,
            None => Decompressor::with_dictionary(&self.bytes)
                .map_err(|e| format!("zstd dictionary {}: {e}", self.id))?,
        };
        let out = d
            .decompress(stored, raw_len)
            .map_err(|e| format!("zstd with dictionary {}: {e}", self.id));
        self.dec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
        out
    }
}

/// Trains a dictionary of at most `max_size` bytes from `samples`
/// (zstd's builder; it needs a few hundred varied samples).
pub fn train(samples: &[Vec<u8>], max_size: usize) -> Result<Vec<u8>, String> {
    zstd::dict::from_samples(samples, max_size).map_err(|e| format!("training failed: {e}"))
}

/// The `dicts/` directory of one cache: dictionaries loaded on demand,
/// verified, and kept in memory.
#[derive(Debug)]
pub struct DictDir {
    root: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    level: i32,
    loaded: RwLock<HashMap<u16, Arc<Dictionary>>>,
}

impl DictDir {
    /// Opens `<root>/dicts` (created 0700 when missing; a symlink is
    /// refused). `tmp` is the cache's staging directory; `level` the zstd
    /// level new payloads are compressed at.
    pub fn open(root: &Path, tmp: &Path, level: i32) -> Result<DictDir, PackError> {
        let dir = root.join("dicts");
        fsutil::ensure_private_dir(&dir)?;
        Ok(DictDir {
            root: root.to_path_buf(),
            dir,
            tmp: tmp.to_path_buf(),
            level,
            loaded: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, id: u16) -> PathBuf {
        self.dir.join(format!("{id:04x}.zdict"))
    }

    /// Dictionary `id`, read and verified on first use. A missing or
    /// damaged file is an error naming it (the needle is then a miss).
    pub fn get(&self, id: u16) -> Result<Arc<Dictionary>, String> {
        if let Some(d) = self.cached(id) {
            return Ok(d);
        }
        let bytes = self.load(id)?;
        let d = Arc::new(Dictionary::new(id, bytes.into(), self.level));
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        Ok(loaded.entry(id).or_insert(d).clone())
    }

    fn cached(&self, id: u16) -> Option<Arc<Dictionary>> {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        loaded.get(&id).cloned()
    }

    fn load(&self, id: u16) -> Result<Vec<u8>, String> {
        let path = self.path(id);
        let what = |e: std::io::Error| format!("zstd dictionary {}: {e}", path.display());
        let file = fsutil::open_in(&self.root, &path, OpenHow::Read).map_err(what)?;
        let mut buf = Vec::new();
        let limit = (HEADER + MAX_DICT + 1) as u64;
        file.take(limit).read_to_end(&mut buf).map_err(what)?;
        parse(&buf, id).map_err(|reason| format!("zstd dictionary {}: {reason}", path.display()))
    }

    /// Stores `bytes` as a new dictionary (the next free id) and returns
    /// it. The file is on disk, fsynced, before this returns.
    pub fn create(&self, bytes: &[u8]) -> Result<Arc<Dictionary>, PackError> {
        if bytes.is_empty() || bytes.len() > MAX_DICT {
            return Err(PackError::Invalid(format!(
                "a dictionary of {} bytes (1 to {MAX_DICT} are stored)",
                bytes.len()
            )));
        }
        let id = self.next_id()?;
        let path = self.path(id);
        fsutil::write_atomic(&self.root, &self.tmp, &path, &frame(id, bytes), true)?;
        fsutil::sync_dir_in(&self.root, &self.dir).ctx("sync", &self.dir)?;
        let d = Arc::new(Dictionary::new(id, bytes.into(), self.level));
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        loaded.insert(id, d.clone());
        Ok(d)
    }

    /// Ids of the dictionary files present, ascending.
    pub fn ids(&self) -> Result<Vec<u16>, PackError> {
        let entries = fsutil::list_in(&self.root, &self.dir).ctx("list", &self.dir)?;
        let mut ids: Vec<u16> = entries
            .iter()
            .filter_map(|(p, _)| parse_name(p.file_name()?.to_str()?))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn next_id(&self) -> Result<u16, PackError> {
        let last = self.ids()?.last().copied().unwrap_or(0);
        last.checked_add(1).ok_or_else(|| {
            PackError::Store(Error::io(
                "add a dictionary to",
                &self.dir,
                std::io::Error::other("all 65535 dictionary ids are used"),
            ))
        })
    }
}

fn parse_name(name: &str) -> Option<u16> {
    let hex = name.strip_suffix(".zdict")?;
    if hex.len() != 4 {
        return None;
    }
    u16::from_str_radix(hex, 16).ok().filter(|id| *id != 0)
}

fn frame(id: u16, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + bytes.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(bytes).as_bytes());
    out.extend_from_slice(bytes);
    out
}

fn parse(buf: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let (head, body) = buf
        .split_at_checked(HEADER)
        .ok_or("shorter than its header")?;
    if head[..8] != MAGIC {
        return Err("not a dictionary file".into());
    }
    if u16::from_le_bytes([head[8], head[9]]) != id {
        return Err(format!("the file holds another id than {id}"));
    }
    let len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
    if len != body.len() || len > MAX_DICT {
        return Err(format!("{} bytes where the header says {len}", body.len()));
    }
    if blake3::hash(body).as_bytes()[..] != head[16..48] {
        return Err("checksum mismatch".into());
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        (0..400)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"title":"Movie number {i}","overview":"A story about {}","genres":["drama","comedy"],"vote_average":{}.{}}}"#,
                    i * 7919 % 1000,
                    i % 10,
                    i % 7
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn stored_dictionaries_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fsutil::ensure_private_dir(&tmp).unwrap();
        let dicts = DictDir::open(dir.path(), &tmp, 3).unwrap();
        let trained = train(&samples(), 4096).unwrap();
        let d = dicts.create(&trained).unwrap();
        assert_eq!(d.id(), 1);
        assert_eq!(dicts.create(&trained).unwrap().id(), 2);
        let raw = &samples()[17];
        let z = d.compress(raw).unwrap();
        assert!(z.len() < zstd::bulk::compress(raw, 3).unwrap().len());
        let fresh = DictDir::open(dir.path(), &tmp, 3).unwrap();
        let again = fresh.get(1).unwrap();
        assert_eq!(&again.decompress(&z, raw.len()).unwrap(), raw);
        assert_eq!(fresh.ids().unwrap(), vec![1, 2]);

        let path = dir.path().join("dicts/0002.zdict");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = DictDir::open(dir.path(), &tmp, 3)
            .unwrap()
            .get(2)
            .unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
        let err = fresh.get(9).unwrap_err();
        assert!(err.contains("0009.zdict"), "{err}");
    }
}
