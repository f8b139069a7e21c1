//! Header sets: an entry's content type, category and response headers,
//! stored once per distinct set in the `headers` tree and named by an id
//! in the lean record.
//!
//! The id is the first 8 bytes of the blake3 of the encoded set (0 means
//! "no headers"); the tree's value is that full hash followed by the CBOR
//! encoding, so a read checks what it decodes and a (2^-64) collision of
//! the short id is resolved by probing the next id. Known sets are cached in
//! memory both ways: a put repeating a set costs no index write, a get
//! costs no index read once the set was seen.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::blobs::BlobHash;

/// The metadata of a cached response that is not its body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeaderSet {
    /// The response's content type.
    pub content_type: Option<String>,
    /// The entry's category (e.g. `metadata`, `list`).
    pub category: Option<String>,
    /// Response headers, in the order given.
    pub headers: Vec<(String, String)>,
}

impl HeaderSet {
    /// True when there is nothing to store (id 0).
    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.category.is_none() && self.headers.is_empty()
    }
}

/// What naming a header set found.
pub(crate) enum Named {
    /// Already stored (or empty): use this id, write nothing.
    Known(u64),
    /// Not stored yet: store `value` under `id`.
    New {
        /// The id to record.
        id: u64,
        /// The tree value: full hash, then the encoding.
        value: Vec<u8>,
        /// The full hash, for [`HeaderSets::learn`].
        hash: BlobHash,
    },
}

/// The `headers` tree with its in-memory caches.
pub(crate) struct HeaderSets {
    tree: sled::Tree,
    known: RwLock<HashMap<BlobHash, u64>>,
    loaded: RwLock<HashMap<u64, Arc<HeaderSet>>>,
}

impl HeaderSets {
    pub(crate) fn new(tree: sled::Tree) -> HeaderSets {
        HeaderSets {
            tree,
            known: RwLock::new(HashMap::new()),
            loaded: RwLock::new(HashMap::new()),
        }
    }

    /// The id of `set`, or what to store for it. Callers serialise naming
    /// and storing (the engine holds its writer lock), so two new sets
    /// never race for one id.
    pub(crate) fn name(&self, set: &HeaderSet) -> Result<Named, String> {
        if set.is_empty() {
            return Ok(Named::Known(0));
        }
        let mut encoded = Vec::new();
        ciborium::into_writer(set, &mut encoded).map_err(|e| e.to_string())?;
        let hash = BlobHash::of(&encoded);
        let cached = self.known.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = cached.get(&hash) {
            return Ok(Named::Known(*id));
        }
        drop(cached);
        let mut id = short_id(&hash);
        loop {
            match self.tree.get(id.to_be_bytes()).map_err(|e| e.to_string())? {
                None => break,
                Some(v) if v.get(..32) == Some(&hash.0[..]) => {
                    self.learn(hash, id);
                    return Ok(Named::Known(id));
                }
                Some(_) => id = id.checked_add(1).unwrap_or(1),
            }
        }
        let mut value = hash.0.to_vec();
        value.extend_from_slice(&encoded);
        Ok(Named::New { id, value, hash })
    }

    /// Stores a set's tree value (a put, or replay of a HEADERS needle).
    pub(crate) fn store(&self, id: u64, value: &[u8]) -> Result<(), String> {
        self.tree
            .insert(id.to_be_bytes(), value)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Remembers that `hash` is stored under `id`.
    pub(crate) fn learn(&self, hash: BlobHash, id: u64) {
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, id);
    }

    /// The set named `id`, checked against its hash. A missing or damaged
    /// set is an error, never another set.
    pub(crate) fn get(&self, id: u64) -> Result<Arc<HeaderSet>, String> {
        let cached = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = cached.get(&id) {
            return Ok(s.clone());
        }
        drop(cached);
        if id == 0 {
            return Ok(Arc::new(HeaderSet::default()));
        }
        let value = self
            .tree
            .get(id.to_be_bytes())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("header set {id:016x} is missing"))?;
        let set = Arc::new(decode(&value).map_err(|e| format!("header set {id:016x}: {e}"))?);
        self.loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, set.clone());
        Ok(set)
    }

    /// Number of stored sets.
    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }
}

fn short_id(hash: &BlobHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(b).max(1)
}

/// Decodes a tree value, checking the hash it starts with.
fn decode(value: &[u8]) -> Result<HeaderSet, String> {
    if value.len() < 32 {
        return Err("shorter than its hash".into());
    }
    let (hash, encoded) = value.split_at(32);
    if BlobHash::of(encoded).0[..] != *hash {
        return Err("does not match its hash".into());
    }
    ciborium::from_reader(encoded).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> HeaderSets {
        let db = sled::Config::new().temporary(true).open().unwrap();
        HeaderSets::new(db.open_tree("headers").unwrap())
    }

    #[test]
    fn a_set_is_stored_once_and_read_back_checked() {
        let hs = sets();
        let set = HeaderSet {
            content_type: Some("application/json".into()),
            category: None,
            headers: vec![("etag".into(), "\"abc\"".into())],
        };
        let Named::New { id, value, hash } = hs.name(&set).unwrap() else {
            panic!("a new set is new");
        };
        hs.store(id, &value).unwrap();
        hs.learn(hash, id);
        assert!(matches!(hs.name(&set).unwrap(), Named::Known(i) if i == id));
        assert_eq!(*hs.get(id).unwrap(), set);
        assert!(matches!(
            hs.name(&HeaderSet::default()).unwrap(),
            Named::Known(0)
        ));
        let mut bad = value.clone();
        *bad.last_mut().unwrap() ^= 1;
        hs.store(id + 1, &bad).unwrap();
        assert!(hs.get(id + 1).is_err());
        assert!(hs.get(id + 2).is_err());
    }
}
