//! Compaction: packs whose dead fraction reached a threshold are
//! rewritten — each live needle copied to the active pack (re-encoded with
//! its backend's current dictionary), the index flushed, then the old pack
//! removed.
//!
//! Crash safety: a copy is a SET needle like any put, so a crash at any
//! point is repaired by recovery, which replays the copies from the pack
//! that holds them; the old pack is removed only after that pack is
//! fsynced and the index holding the new locations is flushed (so a power
//! loss, not only a killed process, finds the copies). A copy is made
//! only if the key still holds the very record that was read (checked
//! under the writer lock), so a put or delete racing compaction wins.
//! Header sets live in the index once it is flushed; their needles in a
//! removed pack are not needed again. One process holds the engine, so
//! only this process's own active pack is ever excluded.

use std::collections::{HashMap, HashSet};

use super::{Engine, LeanRecord, Place, ReadFailure, invalid, pack_error};
use crate::error::Result;
use crate::key;
use crate::pack::{FILE_HEADER_LEN, Prepared};

/// What [`Engine::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Packs rewritten and removed.
    pub packs_removed: u64,
    /// Live needles copied.
    pub needles_copied: u64,
    /// Copies that now use a dictionary their original did not.
    pub reencoded: u64,
    /// Live entries whose needle was damaged: dropped (counted as corrupt
    /// reads), as a read would have.
    pub damaged: u64,
    /// Bytes of the removed packs.
    pub bytes_removed: u64,
    /// Bytes the copies added to the active pack.
    pub bytes_written: u64,
}

impl Engine {
    /// Rewrites every sealed pack whose dead bytes (overwritten, deleted
    /// and control needles) are at least `min_dead` of its needle bytes
    /// (0.0–1.0; e.g. 0.5), then removes it. Returns what was done.
    pub fn compact(&self, min_dead: f64) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        let victims = self.victims(min_dead)?;
        if victims.is_empty() {
            return Ok(report);
        }
        let mut written = HashSet::new();
        for (key, raw) in self.live_in(&victims)? {
            written.extend(self.copy(&key, &raw, &mut report)?);
        }
        // The copies must outlive the originals on a power loss too, not
        // only a killed process (recovery replays them from their packs).
        self.dir.sync_packs(written).map_err(pack_error)?;
        self.flush()?;
        for (id, bytes) in &victims {
            self.dir.remove_pack(*id).map_err(pack_error)?;
            report.packs_removed += 1;
            report.bytes_removed += bytes;
        }
        self.reader.forget();
        Ok(report)
    }

    /// Sealed packs past the threshold, with their file sizes.
    fn victims(&self, min_dead: f64) -> Result<HashMap<u32, u64>> {
        let active = self.lock_writer().packs.active_pack();
        let stats = self.stats()?;
        let victims = stats.packs.iter().filter(|p| Some(p.pack) != active);
        let victims = victims.filter(|p| {
            let needles = p.file_bytes.saturating_sub(FILE_HEADER_LEN);
            needles > 0 && p.dead_bytes as f64 >= min_dead * needles as f64
        });
        Ok(victims.map(|p| (p.pack, p.file_bytes)).collect())
    }

    /// Keys (with their raw records) whose needle is in one of `packs`.
    fn live_in(&self, packs: &HashMap<u32, u64>) -> Result<Vec<(Vec<u8>, sled::IVec)>> {
        let ids: HashSet<u32> = packs.keys().copied().collect();
        let mut out = Vec::new();
        for kv in self.records.iter() {
            let (k, v) = kv.map_err(|e| self.index_err(e))?;
            let Ok(r) = LeanRecord::decode(&v) else {
                continue;
            };
            if matches!(r.place, Place::Pack(loc) if ids.contains(&loc.pack)) {
                out.push((k.to_vec(), v));
            }
        }
        Ok(out)
    }

    /// Copies the needle of `key` (whose record was `raw`) to the active
    /// pack, unless the key changed meanwhile; returns the pack written.
    fn copy(
        &self,
        key: &[u8],
        raw: &sled::IVec,
        report: &mut CompactReport,
    ) -> Result<Option<u32>> {
        let Ok(old) = LeanRecord::decode(raw) else {
            return Ok(None);
        };
        let payload = match self.payload(&old) {
            Ok(p) => p,
            Err(ReadFailure::Bad(reason)) => {
                report.damaged += 1;
                return self.drop_corrupt(key, raw.clone(), &reason).map(|_| None);
            }
            Err(ReadFailure::Io(e)) => return Err(e),
        };
        let dict = key::decode(key).and_then(|(backend, _)| self.dicts.current(&backend));
        let prepared = match &dict {
            Some(d) => Prepared::with_dictionary(&payload, d),
            None => Prepared::new(&payload, self.opts.level),
        };
        let prepared = prepared.map_err(invalid)?;
        let mut w = self.lock_writer();
        if self
            .records
            .get(key)
            .map_err(|e| self.index_err(e))?
            .as_ref()
            != Some(raw)
        {
            return Ok(None);
        }
        let (record, _) = self.append_set(&mut w, key, &prepared, old)?;
        let Place::Pack(loc) = record.place else {
            return Ok(None);
        };
        report.needles_copied += 1;
        report.bytes_written += u64::from(loc.len);
        report.reencoded += u64::from(old.dict != prepared.dict && prepared.dict != 0);
        Ok(Some(loc.pack))
    }
}
