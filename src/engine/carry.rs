//! What archives need of the engine besides puts and gets: a needle's
//! payload for an export, puts that carry an archived entry in with its
//! own times (decided by a merge check under the writer lock, so a racing
//! put is judged too), and taking back the blob files a refused import
//! linked in.

use std::time::SystemTime;

use super::{Engine, EntryInfo, Intent, LeanRecord, Place, PutMeta, ReadFailure, invalid};
use crate::blobs::BlobHash;
use crate::error::{Error, Result};
use crate::key;
use crate::pack::Prepared;
use crate::record::Codec;

/// The payload of an entry an import brings in.
#[derive(Clone, Copy, Debug)]
pub enum Carried<'a> {
    /// The payload's bytes, at most [`Engine::blob_threshold`]: a needle.
    Bytes(&'a [u8]),
    /// A blob file already linked into `blobs/` under its hash (verified
    /// on its way in).
    BlobFile {
        /// blake3 of the payload: the file's name.
        hash: BlobHash,
        /// How the file stores it.
        codec: Codec,
        /// Payload size.
        raw_size: u64,
    },
}

impl Engine {
    /// Payloads larger than this many bytes are blob files.
    pub fn blob_threshold(&self) -> usize {
        self.opts.blob_threshold
    }

    /// The verified payload of the needle the encoded `key` holds, while
    /// that needle holds the payload named `hash`; `None` when the key
    /// changed, is gone, holds a blob file, or its needle is damaged
    /// (logged; `verify` reports and repairs it). A needle moved by a
    /// compaction is read at its new place.
    pub fn needle_payload(&self, key: &[u8], hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        const MOVES: u32 = 3;
        for _ in 0..MOVES {
            let Some((raw, r)) = self.record(key)? else {
                return Ok(None);
            };
            if r.hash != *hash || !matches!(r.place, Place::Pack(_)) {
                return Ok(None);
            }
            match self.payload(&r) {
                Ok(data) => return Ok(Some(data)),
                Err(ReadFailure::Bad(_)) if self.moved(key, &raw)? => continue,
                Err(ReadFailure::Bad(reason)) => {
                    log::warn!("{} is damaged: {reason}", key::display(key));
                    return Ok(None);
                }
                Err(ReadFailure::Io(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Stores an archived entry under the encoded `key` with the times
    /// `meta` gives (`expires_at`, `created_at`, `fetched_at`), if `takes`
    /// accepts what the key holds now (`None`: nothing). The check and the
    /// write happen under the writer lock. Returns whether it was stored.
    /// A [`Carried::BlobFile`] whose file is gone by then (a sweep removed
    /// it) fails with [`Error::Busy`]: run the import again.
    pub fn put_carried(
        &self,
        key: &[u8],
        payload: Carried<'_>,
        meta: &PutMeta,
        takes: &dyn Fn(Option<&EntryInfo>) -> bool,
    ) -> Result<bool> {
        match payload {
            Carried::Bytes(bytes) => self.carry_needle(key, bytes, meta, takes),
            Carried::BlobFile {
                hash,
                codec,
                raw_size,
            } => self.carry_blob_file(key, hash, codec, raw_size, meta, takes),
        }
    }

    fn carry_needle(
        &self,
        key: &[u8],
        payload: &[u8],
        meta: &PutMeta,
        takes: &dyn Fn(Option<&EntryInfo>) -> bool,
    ) -> Result<bool> {
        let template = self.template(payload.len() as u64, meta);
        let dict = key::decode(key).and_then(|(backend, _)| self.dicts.current(&backend));
        let prepared = match &dict {
            Some(d) => Prepared::with_dictionary(payload, d),
            None => Prepared::new(payload, self.opts.level),
        };
        let prepared = prepared.map_err(invalid)?;
        let mut w = self.lock_writer();
        if !self.held_is_taken(key, takes)? {
            return Ok(false);
        }
        let mut writes = 0;
        let header_set = self.name_headers(&mut w, &meta.headers, &mut writes)?;
        let base = LeanRecord {
            header_set,
            ..template
        };
        self.append_set(&mut w, key, &prepared, base)?;
        Ok(true)
    }

    fn carry_blob_file(
        &self,
        key: &[u8],
        hash: BlobHash,
        codec: Codec,
        raw_size: u64,
        meta: &PutMeta,
        takes: &dyn Fn(Option<&EntryInfo>) -> bool,
    ) -> Result<bool> {
        let template = self.template(raw_size, meta);
        let mut w = self.lock_writer();
        if !self.held_is_taken(key, takes)? {
            return Ok(false);
        }
        let stored_size = match self.blobs.file_meta(&hash) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                return Err(Error::Busy {
                    hash: hash.to_hex(),
                    attempts: 1,
                });
            }
        };
        if let Some(named) = w.sweeping.as_mut() {
            named.insert(hash);
        }
        let mut writes = 0;
        let record = LeanRecord {
            place: Place::BlobFile { stored_size },
            hash,
            zstd: codec == Codec::Zstd,
            header_set: self.name_headers(&mut w, &meta.headers, &mut writes)?,
            ..template
        };
        let loc = self.log(&mut w, key, &Intent::Set(record), b"")?;
        self.insert(key, &record)?;
        self.advance_mark(&mut w, loc)?;
        Ok(true)
    }

    /// What `takes` says of the entry `key` holds now (under the writer
    /// lock).
    fn held_is_taken(
        &self,
        key: &[u8],
        takes: &dyn Fn(Option<&EntryInfo>) -> bool,
    ) -> Result<bool> {
        let held = self.record(key)?.map(|(_, r)| EntryInfo::of(&r));
        Ok(takes(held.as_ref()))
    }

    /// Removes the blob files of `linked` (each with the mtime it had when
    /// an import linked it in) that no record names and nobody touched
    /// since: what a refused import takes back. Under the writer lock, like
    /// the sweep's removals (a put linking onto such a file meanwhile
    /// links its own copy again). Returns how many went.
    pub fn remove_unnamed(&self, linked: &[(BlobHash, SystemTime)]) -> Result<u64> {
        let _w = self.lock_writer();
        let named = self.named_blob_files()?;
        let mut removed = 0;
        for (hash, mtime) in linked {
            let untouched = self
                .blobs
                .file_meta(hash)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t == *mtime);
            if named.contains(hash) || !untouched {
                continue;
            }
            self.blobs.remove(hash)?;
            removed += 1;
        }
        Ok(removed)
    }
}
