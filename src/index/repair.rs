//! Whole-index views for `verify`, and the rebuild of derived data
//! (refcounts, expiry order, totals) from the entries themselves.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::tx::{backend_meta_key, decode_blob_value, encode_blob_value, expiry_key};
use super::{BackendTotals, Index, State};
use crate::error::Result;
use crate::record::{BlobInfo, BlobState, RECORD_VERSION, Record, from_cbor};

/// A consistent copy of the index's bookkeeping (no blob bytes).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub state: State,
    pub records: Vec<super::RecordRow>,
    pub blobs: Vec<(Vec<u8>, std::result::Result<BlobInfo, String>)>,
    pub expiry: Vec<Vec<u8>>,
    /// Hashes of the blobs whose bytes are inline.
    pub inline: Vec<Vec<u8>>,
    pub backends: Vec<(String, BackendTotals)>,
}

impl Index {
    /// Copies the index's bookkeeping under the writer lock, so no op
    /// interleaves.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let w = self.lock_writer()?;
        let t = &self.t;
        let mut snap = Snapshot {
            state: w.totals.state.clone(),
            ..Snapshot::default()
        };
        for item in t.entries.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            snap.records.push((k.to_vec(), from_cbor::<Record>(&v)));
        }
        for item in t.blobs.iter() {
            let (k, v) = item.map_err(|e| t.err(e))?;
            let info = decode_blob_value(&v).map(|(info, _)| info);
            if info.as_ref().is_ok_and(|i| i.inline) {
                snap.inline.push(k.to_vec());
            }
            snap.blobs.push((k.to_vec(), info));
        }
        for item in t.expiry.iter() {
            let (k, _) = item.map_err(|e| t.err(e))?;
            snap.expiry.push(k.to_vec());
        }
        for (k, b) in &w.totals.backends {
            if b.entries > 0 {
                let name = String::from_utf8_lossy(&k[super::BACKEND_PREFIX.len()..]).into_owned();
                snap.backends.push((name, b.clone()));
            }
        }
        snap.backends.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(snap)
    }

    /// Rebuilds refcounts, the expiry order, totals and per-backend counts
    /// from the entries, under the writer lock, and flushes. Undecodable
    /// records and entries whose blob is unknown and absent are removed.
    /// `file_info` describes a file blob the index has no info for (`None`:
    /// no such file). Returns the number of index keys changed.
    pub fn rebuild_counts(&self, file_info: &dyn Fn(&Record) -> Option<BlobInfo>) -> Result<u64> {
        let mut w = self.lock_writer()?;
        let t = &self.t;
        let err = |e| t.err(e);
        let mut changed = 0u64;
        let mut blobs: HashMap<[u8; 32], (BlobInfo, Vec<u8>)> = HashMap::new();
        for item in t.blobs.iter() {
            let (k, v) = item.map_err(err)?;
            match (<[u8; 32]>::try_from(&k[..]), decode_blob_value(&v)) {
                (Ok(h), Ok((info, data))) => {
                    blobs.insert(h, (info, data.to_vec()));
                }
                _ => {
                    t.blobs.remove(&k).map_err(err)?;
                    changed += 1;
                }
            }
        }
        let mut state = State {
            seq: w.totals.state.seq,
            ..State::default()
        };
        let mut backends: HashMap<Vec<u8>, BackendTotals> = HashMap::new();
        let mut refs: HashMap<[u8; 32], u64> = HashMap::new();
        let mut expiry = BTreeSet::new();
        for item in t.entries.iter() {
            let (k, v) = item.map_err(err)?;
            let usable = from_cbor::<Record>(&v).ok().filter(|rec| {
                let h = rec.hash.0;
                if !blobs.contains_key(&h)
                    && !rec.inline
                    && let Some(info) = file_info(rec)
                {
                    blobs.insert(h, (info, Vec::new()));
                }
                blobs.get(&h).is_some_and(|(i, _)| i.inline == rec.inline)
            });
            let Some(rec) = usable else {
                t.entries.remove(&k).map_err(err)?;
                changed += 1;
                continue;
            };
            *refs.entry(rec.hash.0).or_default() += 1;
            state.entries += 1;
            state.raw_bytes += rec.raw_size;
            let b = backends.entry(backend_meta_key(&k)).or_default();
            b.entries += 1;
            b.raw_bytes += rec.raw_size;
            expiry.insert(expiry_key(rec.expires_at, &k));
        }
        for (h, (mut info, data)) in blobs {
            let n = refs.get(&h).copied().unwrap_or(0);
            if info.state == BlobState::Live && n == 0 && info.inline {
                t.blobs.remove(h).map_err(err)?;
                changed += 1;
                continue;
            }
            if info.state == BlobState::Live {
                state.blobs += 1;
                state.blob_bytes += info.disk_bytes;
            }
            if info.refs != n {
                info.refs = n;
                let value = encode_blob_value(&info, info.inline.then_some(data.as_slice()));
                t.blobs.insert(h, value).map_err(err)?;
                changed += 1;
            }
        }
        for item in t.expiry.iter() {
            let (k, _) = item.map_err(err)?;
            if !expiry.remove(k.as_ref()) {
                t.expiry.remove(&k).map_err(err)?;
                changed += 1;
            }
        }
        changed += expiry.len() as u64;
        for k in expiry {
            t.expiry.insert(k, &[]).map_err(err)?;
        }
        let totals = &mut w.totals;
        if state != totals.state || backends != totals.backends {
            changed += 1;
        }
        let all_keys: HashSet<Vec<u8>> = totals
            .backends
            .keys()
            .chain(backends.keys())
            .cloned()
            .collect();
        totals.dirty.extend(all_keys);
        totals.state = state;
        totals.backends = backends;
        drop(w);
        self.checkpoint()?;
        Ok(changed)
    }
}

/// A blob info for a file found on disk (used when rebuilding).
pub(crate) fn file_blob_info(rec: &Record, stored_size: u64, disk_bytes: u64) -> BlobInfo {
    BlobInfo {
        version: RECORD_VERSION,
        refs: 0,
        state: BlobState::Live,
        codec: rec.codec,
        inline: false,
        raw_size: rec.raw_size,
        stored_size,
        disk_bytes,
        since: rec.created_at,
        level: None,
    }
}
