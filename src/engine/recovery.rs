//! Crash recovery at open: re-applying the index changes that the pack
//! tails hold past their `applied` watermarks.
//!
//! A needle is acknowledged once it is in its pack; its sled insert may
//! then be lost to a `kill -9` (sled writes its log in the background).
//! The engine records, in sled's `applied` tree, how far each pack is
//! applied, but only every `MARK_EVERY` needles, when a pack is sealed
//! and at close. sled recovers a prefix of its writes, so a watermark that
//! survived means every insert before it survived; replaying each pack
//! from its watermark, in pack order, then brings the index to the state
//! of the last acknowledged needle. Replay is a blind set or remove per
//! needle, so re-applying a change the index already had is harmless.
//! A torn tail (a needle cut by the crash, never acknowledged) is cut off.

use sled::Tree;

use super::intent::Intent;
use super::{Engine, Recovery, pack_error};
use crate::error::{Error, Result};
use crate::pack::{FILE_HEADER_LEN, ScannedNeedle, recover_from};

/// Replays every pack's tail into the engine's index.
pub(super) fn replay(engine: &Engine) -> Result<Recovery> {
    let mut done = Recovery::default();
    for id in engine.dir.pack_ids().map_err(pack_error)? {
        let from = watermark(engine, &engine.applied, id)?;
        let path = engine.dir.path(id);
        let len = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io("inspect", &path, e))?
            .len();
        if len <= from {
            continue;
        }
        let Some(found) = recover_from(&engine.dir, id, from).map_err(pack_error)? else {
            log::info!("pack {id:08x} has a live writer; not replayed");
            continue;
        };
        done.truncated += found.truncated;
        done.damaged += found.report.damaged.len() as u64;
        for n in &found.report.needles {
            done.scanned += 1;
            if apply(engine, n)? {
                done.applied += 1;
            }
        }
        if !found.removed {
            engine
                .applied
                .insert(id.to_be_bytes(), &found.report.valid_tail.to_le_bytes())
                .map_err(|e| engine.index_err(e))?;
        }
    }
    if done.scanned > 0 {
        engine.db.flush().map_err(|e| engine.index_err(e))?;
        log::info!(
            "recovered {} index changes from pack tails ({} torn bytes cut)",
            done.applied,
            done.truncated
        );
    }
    Ok(done)
}

/// How far pack `id` is applied (just past its header when unknown).
fn watermark(engine: &Engine, applied: &Tree, id: u32) -> Result<u64> {
    let Some(v) = applied
        .get(id.to_be_bytes())
        .map_err(|e| engine.index_err(e))?
    else {
        return Ok(FILE_HEADER_LEN);
    };
    let bytes: [u8; 8] = v.as_ref().try_into().unwrap_or([0; 8]);
    Ok(u64::from_le_bytes(bytes).max(FILE_HEADER_LEN))
}

/// Re-applies one needle's index change; false when the needle carries
/// none the engine understands (logged, skipped).
fn apply(engine: &Engine, n: &ScannedNeedle) -> Result<bool> {
    let intent = match Intent::decode(&n.record) {
        Ok(i) => i,
        Err(e) => {
            log::warn!(
                "pack {:08x} offset {}: {e}; skipped",
                n.location.pack,
                n.location.offset
            );
            return Ok(false);
        }
    };
    if let Intent::Headers(id) = intent {
        let value = engine
            .reader
            .read(n.location, &n.hash)
            .map_err(pack_error)?;
        engine
            .headers
            .store(id, &value)
            .map_err(|e| engine.index_err(e))?;
        return Ok(true);
    }
    engine.apply(&n.key, &intent)?;
    Ok(true)
}
