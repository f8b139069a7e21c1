//! Remote hits served before they are stored. A hit is served as soon as
//! its bytes are verified; one background thread stores the pending hits
//! locally, a batch at a time, newer-wins (an entry the key got since the
//! hit was fetched, by a local put, is kept). Until a hit is stored, a read
//! of its key is served from the same verified bytes, so it neither goes to
//! Redis again nor returns a different byte.
//!
//! Bounded: a hit that finds [`MAX_HITS`] hits or [`MAX_BYTES`] bytes
//! pending is stored before its get returns (as every hit is when the
//! thread could not start). [`Hits::drain`] (from `flush`) and the last
//! store handle's drop wait until the pending hits are stored. A process
//! killed meanwhile loses only them: nothing was acknowledged, and the next
//! get reads through again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use crate::key;
use crate::options::PutOptions;
use crate::record::{Codec, Record};
use crate::store::{Filled, Store, WeakStore};

/// Hits pending at most.
const MAX_HITS: usize = 1024;
/// Bytes (payloads and stored bytes) of the pending hits at most.
const MAX_BYTES: usize = 64 << 20;

/// A verified remote hit, fetched at `at`, waiting to be stored.
#[derive(Debug)]
pub struct Hit {
    /// The record it gets once stored, served meanwhile.
    pub record: Record,
    /// The verified payload.
    pub data: Vec<u8>,
    /// The stored bytes as they came from Redis, in `codec`.
    pub codec: Codec,
    pub stored: Vec<u8>,
    /// Its metadata and remaining TTL at `at`.
    pub opts: PutOptions,
    pub at: u64,
}

impl Hit {
    fn bytes(&self) -> usize {
        self.data.len() + self.stored.len()
    }

    /// Stores it under `key` (newer-wins).
    fn store_in(&self, store: &Store, key: &[u8]) {
        let (codec, hash) = (self.codec, self.record.hash);
        let stored = self.stored.clone();
        let done =
            store.store_remote_hit(key, &self.data, codec, stored, hash, &self.opts, self.at);
        if let Err(e) = done {
            log::warn!("remote hit {} not stored locally: {e}", key::display(key));
        }
    }
}

/// The pending hits and their thread (which ends once this is dropped).
#[derive(Debug)]
pub struct Hits {
    pending: Arc<Pending>,
    started: bool,
}

#[derive(Debug, Default)]
struct Pending {
    state: Mutex<State>,
    /// Hits arrived, or closing.
    arrived: Condvar,
    /// A batch was stored.
    stored: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// What reads are served from, by index key.
    by_key: HashMap<Vec<u8>, Arc<Hit>>,
    /// In arrival order, for the thread.
    todo: VecDeque<(Vec<u8>, Arc<Hit>)>,
    /// Bytes of the hits in `by_key`.
    bytes: usize,
    /// Hits the thread took and is storing.
    storing: usize,
    /// The key the thread is storing now.
    current: Option<Vec<u8>>,
    /// Callers waiting on `stored` for one key (a delete).
    waiting: usize,
    /// The store, for the thread (set by the first hit).
    store: Option<WeakStore>,
    /// The thread holds a store handle (while it stores a batch).
    holding: bool,
    thread: Option<ThreadId>,
    closing: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn is_idle(&self) -> bool {
        self.todo.is_empty() && self.storing == 0
    }

    /// True when `hit` is still the one pending under `key`.
    fn holds(&self, key: &[u8], hit: &Arc<Hit>) -> bool {
        self.by_key.get(key).is_some_and(|h| Arc::ptr_eq(h, hit))
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(h) = self.by_key.remove(key) {
            self.bytes -= h.bytes();
        }
    }
}

impl Hits {
    /// Starts the thread.
    pub fn spawn() -> Hits {
        let pending = Arc::new(Pending::default());
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("blobcache-remote-hits".into())
            .spawn(move || run(&p))
            .map_err(|e| log::warn!("remote hit thread not started ({e}); hits are stored inline"))
            .ok();
        let started = thread.is_some();
        pending.lock().thread = thread.map(|t| t.thread().id());
        Hits { pending, started }
    }

    /// Takes `hit` to store it in the background; gives it back when the
    /// pending set is full (the caller stores it now).
    #[allow(clippy::result_large_err)] // the hit comes back whole, to be stored now
    pub fn offer(&self, store: &Store, key: &[u8], hit: Hit) -> Result<(), Hit> {
        if !self.started {
            return Err(hit);
        }
        let mut st = self.pending.lock();
        let full = st.by_key.len() >= MAX_HITS || st.bytes + hit.bytes() > MAX_BYTES;
        if full || st.closing {
            return Err(hit);
        }
        if st.store.is_none() {
            st.store = Some(store.downgrade());
        }
        let hit = Arc::new(hit);
        st.remove(key);
        st.bytes += hit.bytes();
        st.by_key.insert(key.to_vec(), hit.clone());
        // The thread waits only when it has nothing to do.
        let wake = st.is_idle();
        st.todo.push_back((key.to_vec(), hit));
        drop(st);
        if wake {
            self.pending.arrived.notify_one();
        }
        Ok(())
    }

    /// The pending hit of `key`, to serve, unless it expired by `now`.
    pub fn serve(&self, key: &[u8], now: u64) -> Option<Filled> {
        let hit = self.pending.lock().by_key.get(key).cloned()?;
        (now < hit.record.expires_at).then(|| Filled {
            record: hit.record.clone(),
            data: hit.data.clone(),
        })
    }

    /// The record of the pending hit of `key`, unless it expired by `now`.
    pub fn record(&self, key: &[u8], now: u64) -> Option<Record> {
        let st = self.pending.lock();
        let hit = st.by_key.get(key)?;
        (now < hit.record.expires_at).then(|| hit.record.clone())
    }

    /// Forgets the pending hits under the index key `prefix` (`exact`:
    /// that key only): superseded by a local put (newer-wins keeps the put
    /// should the thread be storing the hit right now).
    pub fn forget(&self, prefix: &[u8], exact: bool) {
        let mut st = self.pending.lock();
        if st.by_key.is_empty() {
            return;
        }
        if exact {
            st.remove(prefix);
            return;
        }
        let gone: Vec<Vec<u8>> = st
            .by_key
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for k in gone {
            st.remove(&k);
        }
    }

    /// Forgets them before a delete, and waits while the thread stores one
    /// of them, so that the delete comes after it.
    pub fn forget_deleted(&self, prefix: &[u8], exact: bool) {
        self.forget(prefix, exact);
        let p = &self.pending;
        let mut st = p.lock();
        if st.thread == Some(std::thread::current().id()) {
            return;
        }
        let storing = |st: &State| {
            st.current.as_ref().is_some_and(|k| {
                if exact {
                    k == prefix
                } else {
                    k.starts_with(prefix)
                }
            })
        };
        if !storing(&st) {
            return;
        }
        st.waiting += 1;
        while storing(&st) && !st.closing {
            st = p.stored.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.waiting -= 1;
    }

    /// Stores the pending hit of `key` now, on this thread (before a
    /// change to that entry).
    pub fn settle(&self, store: &Store, key: &[u8]) {
        let Some(hit) = self.pending.lock().by_key.get(key).cloned() else {
            return;
        };
        hit.store_in(store, key);
        let mut st = self.pending.lock();
        if st.holds(key, &hit) {
            st.remove(key);
        }
    }

    /// Waits until every pending hit is stored, at most `budget`.
    pub fn drain(&self, budget: Duration) {
        if !self.started {
            return;
        }
        let p = &self.pending;
        let (st, _) = p
            .stored
            .wait_timeout_while(p.lock(), budget, |st| !st.is_idle())
            .unwrap_or_else(PoisonError::into_inner);
        if !st.is_idle() {
            log::warn!("{} remote hits not stored locally in time", st.by_key.len());
        }
    }

    /// A store handle is being dropped: the last one (the thread's own
    /// aside) waits until the pending hits are stored.
    pub fn handle_dropped(&self, store: &Store, budget: Duration) {
        let st = self.pending.lock();
        if st.is_idle() || st.thread == Some(std::thread::current().id()) {
            return;
        }
        let others = store
            .downgrade()
            .handles()
            .saturating_sub(1 + usize::from(st.holding));
        drop(st);
        if others == 0 {
            self.drain(budget);
        }
    }
}

impl Drop for Hits {
    /// The store is gone: the thread ends (it is not joined, as it may be
    /// the thread dropping the store).
    fn drop(&mut self) {
        self.pending.lock().closing = true;
        self.pending.arrived.notify_all();
        self.pending.stored.notify_all();
    }
}

/// The thread: takes the pending hits, stores them, tells who waits.
fn run(p: &Pending) {
    loop {
        let (store, batch) = {
            let mut st = p.lock();
            while st.todo.is_empty() && !st.closing {
                st = p.arrived.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.closing {
                return;
            }
            let Some(store) = st.store.as_ref().and_then(WeakStore::upgrade) else {
                // The store is closing: nothing to store into.
                st.todo.clear();
                continue;
            };
            st.holding = true;
            st.storing = st.todo.len();
            let batch: Vec<_> = st.todo.drain(..).collect();
            (store, batch)
        };
        for (key, hit) in batch {
            {
                let mut st = p.lock();
                if !st.holds(&key, &hit) {
                    continue; // deleted or superseded meanwhile
                }
                st.current = Some(key.clone());
            }
            hit.store_in(&store, &key);
            let mut st = p.lock();
            if st.holds(&key, &hit) {
                st.remove(&key);
            }
            st.current = None;
            if st.waiting > 0 {
                p.stored.notify_all();
            }
        }
        {
            let mut st = p.lock();
            st.storing = 0;
            st.holding = false;
        }
        p.stored.notify_all();
        // May be the last handle: the store then closes on this thread.
        drop(store);
    }
}
