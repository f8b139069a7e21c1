//! The optional in-process memory tier (L1): decoded payloads of recently
//! read entries, bounded by bytes, evicted least recently used first.
//!
//! What it serves and when it forgets:
//! - only live reads ([`crate::Store::get`]); an entry is dropped from the
//!   tier when its TTL runs out, so it never serves an expired entry;
//! - every index change made through this process (put, delete, touch,
//!   clear, purge, import, repair) drops the keys it touches before the
//!   call returns, and a read racing with such a change never stores what
//!   it read (a generation counter guards the insert);
//! - changes made by *other processes* are not seen: an entry is reloaded
//!   from the index once it has been in the tier longer than
//!   [`crate::StoreOptions::memory_tier_max_staleness`] (default 1 s).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::index::Op;
use crate::store::EntryMeta;

/// Bytes counted for an entry beyond its payload and key (map slots, the
/// metadata's fixed part).
const OVERHEAD: usize = 160;

/// The memory tier of one store.
#[derive(Debug)]
pub(crate) struct MemoryTier {
    max_bytes: usize,
    max_staleness_ms: u64,
    generation: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Vec<u8>, Slot>,
    /// Each entry's `order_tick` → key, oldest first. A hit only moves the
    /// entry's `tick`; eviction re-files entries used since they were
    /// filed, so a hit costs no reordering.
    order: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    data: Vec<u8>,
    meta: EntryMeta,
    loaded_at: u64,
    /// Last use.
    tick: u64,
    /// Where the entry is filed in `order` (at most `tick`).
    order_tick: u64,
    cost: usize,
}

impl MemoryTier {
    /// A tier of at most `max_bytes`, or `None` when `max_bytes` is 0.
    pub(crate) fn new(max_bytes: u64, max_staleness: Duration) -> Option<MemoryTier> {
        (max_bytes > 0).then(|| MemoryTier {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_staleness_ms: u64::try_from(max_staleness.as_millis()).unwrap_or(u64::MAX),
            generation: AtomicU64::new(0),
            state: Mutex::default(),
        })
    }

    /// The current generation: read it before looking an entry up in the
    /// index and pass it to [`MemoryTier::insert`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The payload and metadata of `key` if the tier holds it, it is live
    /// at `now` and was loaded less than the max staleness ago.
    pub(crate) fn get(&self, key: &[u8], now: u64) -> Option<(Vec<u8>, EntryMeta)> {
        let mut st = self.state.lock().ok()?;
        let slot = st.entries.get(key)?;
        let fresh = now < slot.meta.expires_at
            && now.saturating_sub(slot.loaded_at) < self.max_staleness_ms;
        if !fresh {
            st.remove(key);
            return None;
        }
        st.tick += 1;
        let tick = st.tick;
        let slot = st.entries.get_mut(key)?;
        slot.tick = tick;
        Some((slot.data.clone(), slot.meta.clone()))
    }

    /// Keeps a payload just read from the index, unless the index changed
    /// since `generation` was read or the entry alone exceeds the bound.
    pub(crate) fn insert(
        &self,
        key: &[u8],
        data: &[u8],
        meta: &EntryMeta,
        now: u64,
        generation: u64,
    ) {
        let cost = OVERHEAD
            + 2 * key.len()
            + data.len()
            + meta
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        if cost > self.max_bytes {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        // Checked under the lock: an invalidation bumps the generation
        // under the same lock, so it either ran before (skip) or runs after
        // (and removes what is inserted here).
        if self.generation() != generation {
            return;
        }
        st.remove(key);
        while st.bytes + cost > self.max_bytes && st.evict_one() {}
        st.tick += 1;
        let tick = st.tick;
        st.order.insert(tick, key.to_vec());
        st.bytes += cost;
        let slot = Slot {
            data: data.to_vec(),
            meta: meta.clone(),
            loaded_at: now,
            tick,
            order_tick: tick,
            cost,
        };
        st.entries.insert(key.to_vec(), slot);
    }

    /// Forgets every key `op` may change; called after the op was applied
    /// (or failed), before the caller returns.
    pub(crate) fn invalidate(&self, op: &Op) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        match op {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Touch { key, .. } => {
                st.remove(key);
            }
            Op::DeleteMany { keys } | Op::Expire { keys, .. } | Op::DropUnused { keys, .. } => {
                keys.iter().for_each(|k| st.remove(k));
            }
            Op::Import { items, .. } => items.iter().for_each(|i| st.remove(&i.key)),
            Op::Evict { keys } => keys.iter().for_each(|(k, _)| st.remove(k)),
            // Blob bookkeeping of the sweeper: no entry changes (a
            // recompressed blob keeps its bytes).
            Op::ClaimBlob { .. }
            | Op::BlobGone { .. }
            | Op::ForgetBlob { .. }
            | Op::Recompressed { .. } => {}
        }
    }

    /// Bytes currently accounted (payloads, keys, metadata estimate).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state.lock().map(|s| s.bytes).unwrap_or(0)
    }
}

impl State {
    fn remove(&mut self, key: &[u8]) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.order_tick);
            self.bytes -= slot.cost;
        }
    }

    /// Removes the least recently used entry; false when there is none.
    fn evict_one(&mut self) -> bool {
        while let Some((filed, key)) = self.order.pop_first() {
            let Some(slot) = self.entries.get_mut(&key) else {
                continue;
            };
            if slot.tick == filed {
                self.bytes -= slot.cost;
                self.entries.remove(&key);
                return true;
            }
            // Used since it was filed: file it at its last use.
            slot.order_tick = slot.tick;
            self.order.insert(slot.tick, key);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::BlobHash;
    use crate::key::Category;

    fn meta(expires_at: u64) -> EntryMeta {
        EntryMeta {
            backend: "b".into(),
            signature: b"s".to_vec(),
            hash: BlobHash::of(b""),
            raw_size: 0,
            stored_size: 0,
            compressed: false,
            inline: true,
            created_at: 0,
            fetched_at: 0,
            expires_at,
            category: Category::Metadata,
            content_type: None,
            headers: Vec::new(),
            hits: 0,
            last_access: 0,
            pinned: false,
        }
    }

    #[test]
    fn evicts_least_recently_used_within_the_bound() {
        let tier =
            MemoryTier::new(3 * (OVERHEAD + 2 + 100) as u64, Duration::from_secs(60)).unwrap();
        for k in [b"a", b"b", b"c"] {
            tier.insert(k, &[0; 100], &meta(1000), 0, tier.generation());
        }
        assert!(tier.get(b"a", 1).is_some()); // b is now the oldest
        tier.insert(b"d", &[0; 100], &meta(1000), 0, tier.generation());
        assert!(tier.get(b"b", 1).is_none());
        assert!(tier.get(b"a", 1).is_some());
        assert!(tier.bytes() <= 3 * (OVERHEAD + 2 + 100));
    }

    #[test]
    fn a_read_racing_a_write_is_not_kept() {
        let tier = MemoryTier::new(1 << 20, Duration::from_secs(60)).unwrap();
        let generation = tier.generation();
        tier.invalidate(&Op::Delete {
            key: serde_bytes::ByteBuf::from(b"k".to_vec()),
            hash: None,
        });
        tier.insert(b"k", b"old", &meta(1000), 0, generation);
        assert!(tier.get(b"k", 1).is_none());
    }

    #[test]
    fn expiry_and_staleness_drop_entries() {
        let tier = MemoryTier::new(1 << 20, Duration::from_millis(50)).unwrap();
        tier.insert(b"k", b"v", &meta(100), 0, tier.generation());
        assert!(tier.get(b"k", 49).is_some());
        assert!(tier.get(b"k", 50).is_none()); // older than the max staleness
        tier.insert(b"k", b"v", &meta(100), 80, tier.generation());
        assert!(tier.get(b"k", 100).is_none()); // expired
        assert_eq!(tier.bytes(), 0);
    }
}
