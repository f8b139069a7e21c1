//! How several processes use one cache (ARCHITECTURE.md §3).
//!
//! sled admits one process per database. The first process to take
//! `locks/owner.lock` becomes the **owner**: it opens the index and serves
//! the others on `owner.sock`. Every other process is a **guest**: it
//! reads and writes blob files itself and sends only index operations
//! (small CBOR messages, see [`wire`]) to the owner. [`Share`] hides the
//! difference: the store calls the same methods either way.
//!
//! **Failover.** When the owner exits or dies the kernel frees its lock.
//! The next guest request that fails (connection closed, or a `Retry`
//! answer from an owner shutting down) makes that guest take the lock,
//! open the index (replaying the journal), bind a fresh socket and become
//! the owner; or, if another guest won that race, connect to the new
//! owner. The request is then asked again, so the caller never sees the
//! change (it keeps failing over for as long as the owner timeout; each
//! short-lived owner that exits during a request costs it one failover).
//! A long-running guest can stand by ([`crate::StoreOptions::standby`],
//! as `blobcache serve` does): it takes over the moment the owner is gone,
//! so that short-lived processes find a lasting owner.
//!
//! Ops are safe to ask twice: a put re-applied sets the same record, a
//! delete of a missing key is a no-op (a guest looks the key up first, so
//! a delete whose answer was lost with the owner still answers that it
//! removed the entry).
//!
//! **Without sockets** (exclusive mode, a socket path too long for the
//! platform, a filesystem that cannot hold sockets): processes wait for the
//! lock up to the owner timeout, then fail with [`Error::Locked`].

mod client;
mod server;
pub(crate) mod wire;

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use self::client::{CallError, Client};
use self::server::Server;
use self::wire::{Request, Response};
use crate::blobs::BlobHash;
use crate::error::{Error, Result};
use crate::index::{
    Access, BackendTotals, CounterValues, Index, IndexConfig, Lookup, Op, Outcome, RecordRow,
    Snapshot, State,
};
use crate::layout::Layout;
use crate::policy::Sharing;
use crate::record::{BlobInfo, Record};
use crate::store::{Inner, Store};
use crate::verify::{VerifyOptions, VerifyReport};

/// A request fails over at least this many times, and for at least the
/// owner timeout, before giving up. Short-lived owners (CLI calls that
/// found no owner) hand over whenever they exit, so under churn one request
/// can meet several of them: a count alone made such requests fail.
const FAILOVERS: usize = 8;

/// How often a guest standing by checks whether the owner is gone.
const STANDBY_POLL: Duration = Duration::from_millis(50);
/// Pause after a failed take-over before the next try.
const STANDBY_BACKOFF: Duration = Duration::from_secs(1);

/// A guest sends its gathered statistics once this many keys are pending
/// (or once per flush interval).
const REPORT_BATCH: usize = 256;

/// The index, local or reached through the owner.
#[derive(Debug)]
pub(crate) struct Share {
    p: Params,
    current: RwLock<Current>,
    store: OnceLock<Weak<Inner>>,
    pending: Mutex<Pending>,
}

/// What deciding a role needs.
#[derive(Debug)]
struct Params {
    layout: Layout,
    cfg: IndexConfig,
    sharing: Sharing,
    timeout: Duration,
}

#[derive(Debug)]
struct Current {
    /// Bumped at each failover, so threads that saw the same failure
    /// fail over once.
    generation: u64,
    role: Role,
}

#[derive(Debug)]
enum Role {
    Owner(Owner),
    Guest(Arc<Client>),
}

/// What the owner holds. Dropped in order: stop serving, close the index,
/// then release the lock, so the next owner never finds sled still open.
#[derive(Debug)]
struct Owner {
    server: Option<Server>,
    index: Option<Arc<Index>>,
    /// `None` for a read-only copy of the index (nothing to guard).
    lock: Option<File>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        if let Some(mut ix) = self.index.take() {
            // The flusher may hold the index for a moment; sled must be
            // closed before the lock goes.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match Arc::try_unwrap(ix) {
                    Ok(index) => break drop(index),
                    Err(shared) if Instant::now() < deadline => {
                        ix = shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {
                        log::error!("the index stayed in use while closing the cache");
                        break;
                    }
                }
            }
        }
    }
}

/// Statistics a guest gathers between reports.
#[derive(Debug, Default)]
struct Pending {
    counters: CounterValues,
    accesses: HashMap<Vec<u8>, Access>,
    since: Option<Instant>,
}

/// Whether the index was reset (damaged and replaced) when it was opened.
type Reset = bool;

impl Share {
    /// Becomes the owner or a guest of the cache in `layout`.
    pub fn open(
        layout: Layout,
        cfg: IndexConfig,
        sharing: Sharing,
        timeout: Duration,
    ) -> Result<(Share, Reset)> {
        let p = Params {
            layout,
            cfg,
            sharing,
            timeout,
        };
        let (role, reset) = p.acquire(None)?;
        let share = Share {
            p,
            current: RwLock::new(Current {
                generation: 0,
                role,
            }),
            store: OnceLock::new(),
            pending: Mutex::default(),
        };
        Ok((share, reset))
    }

    /// Opens a private read-only copy of the index of a cache that cannot
    /// be written (`reason` says why; see `Index::open_copy`). This
    /// process serves nobody and never fails over: each process reading
    /// such a cache has its own copy.
    pub fn open_copy(layout: Layout, cfg: IndexConfig, reason: &str) -> Result<(Share, Reset)> {
        let (index, reset) =
            Index::open_copy(&layout.root, &layout.index, &layout.journal, &cfg, reason)?;
        let owner = Owner {
            server: None,
            index: Some(index),
            lock: None,
        };
        let share = Share {
            p: Params {
                layout,
                cfg,
                sharing: Sharing::Exclusive,
                timeout: Duration::ZERO,
            },
            current: RwLock::new(Current {
                generation: 0,
                role: Role::Owner(owner),
            }),
            store: OnceLock::new(),
            pending: Mutex::default(),
        };
        Ok((share, reset))
    }

    /// A stand-in for a format-2 cache, whose index is the engine's: it
    /// holds no index, serves nobody, and every index operation reaching
    /// it fails with [`Error::NotOnFormat2`] (counters are dropped).
    pub fn detached(layout: Layout, cfg: IndexConfig) -> Share {
        let owner = Owner {
            server: None,
            index: None,
            lock: None,
        };
        Share {
            p: Params {
                layout,
                cfg,
                sharing: Sharing::Exclusive,
                timeout: Duration::ZERO,
            },
            current: RwLock::new(Current {
                generation: 0,
                role: Role::Owner(owner),
            }),
            store: OnceLock::new(),
            pending: Mutex::default(),
        }
    }

    /// The error of an index operation on a [`Share::detached`] one.
    fn no_index(&self) -> Error {
        Error::NotOnFormat2 {
            path: self.p.layout.root.clone(),
            what: "this operation of the format-1 index (verify, export, import, repair, \
                   remote fill)"
                .into(),
        }
    }

    /// Starts serving guests once the store exists (owners only).
    pub fn start(&self, store: Weak<Inner>) -> Result<()> {
        let store = self.store.get_or_init(|| store);
        let mut cur = self.write_current()?;
        if let Role::Owner(owner) = &mut cur.role
            && owner.server.is_none()
            && owner.lock.is_some()
        {
            owner.server = self.p.serve(store);
        }
        Ok(())
    }

    /// True when this process owns the index.
    pub fn is_owner(&self) -> bool {
        self.read_current()
            .map(|c| matches!(c.role, Role::Owner(_)))
            .unwrap_or(false)
    }

    /// Process id of the owner (this process when it is the owner).
    pub fn owner_pid(&self) -> u32 {
        match self.read_current().as_deref() {
            Ok(Current {
                role: Role::Guest(c),
                ..
            }) => c.owner_pid(),
            _ => std::process::id(),
        }
    }

    fn read_current(&self) -> Result<RwLockReadGuard<'_, Current>> {
        self.current.read().map_err(|_| poisoned())
    }

    fn write_current(&self) -> Result<RwLockWriteGuard<'_, Current>> {
        self.current.write().map_err(|_| poisoned())
    }

    /// Replaces a failed guest role (generation `seen`) by a new owner
    /// role or a connection to the new owner.
    fn failover(&self, seen: u64) -> Result<()> {
        let reset = {
            let mut cur = self.write_current()?;
            if cur.generation != seen {
                return Ok(());
            }
            let (role, reset) = self.p.acquire(self.store.get())?;
            if matches!(role, Role::Owner(_)) {
                log::info!("took over the cache {}", self.p.layout.root.display());
            }
            cur.role = role;
            cur.generation += 1;
            reset
        };
        if reset {
            self.rebuild_after_reset()?;
        }
        Ok(())
    }

    /// Becomes the owner if the owner lock is free (its owner exited or
    /// died); true once this process owns the index.
    fn take_over_if_free(&self) -> Result<bool> {
        let reset = {
            let mut cur = self.write_current()?;
            if matches!(cur.role, Role::Owner(_)) {
                return Ok(true);
            }
            let Some(lock) = self.p.layout.try_lock("owner.lock")? else {
                return Ok(false);
            };
            let (role, reset) = self.p.become_owner(lock, self.store.get())?;
            log::info!(
                "took over the cache {}: its owner is gone",
                self.p.layout.root.display()
            );
            cur.role = role;
            cur.generation += 1;
            reset
        };
        if reset {
            self.rebuild_after_reset()?;
        }
        Ok(true)
    }

    fn rebuild_after_reset(&self) -> Result<()> {
        if let Some(inner) = self.store.get().and_then(Weak::upgrade) {
            crate::verify::rebuild_counts(&Store::from_inner(inner))?;
        }
        Ok(())
    }

    /// Runs `local` on the owned index, or sends `req` to the owner and
    /// unpacks its answer, failing over as needed.
    fn call<T>(
        &self,
        local: impl FnOnce(&Index) -> Result<T>,
        req: impl Fn() -> Request,
        unpack: impl Fn(Response) -> Option<T>,
    ) -> Result<T> {
        self.call_noting_lost(local, req, unpack, &Cell::new(false))
    }

    /// [`Share::call`], setting `lost` when a request was sent and its
    /// answer lost with the owner: it may have been applied before the
    /// request was asked again.
    fn call_noting_lost<T>(
        &self,
        local: impl FnOnce(&Index) -> Result<T>,
        req: impl Fn() -> Request,
        unpack: impl Fn(Response) -> Option<T>,
        lost: &Cell<bool>,
    ) -> Result<T> {
        let mut local = Some(local);
        let mut failovers = 0;
        let mut first_failover: Option<Instant> = None;
        loop {
            let (seen, client) = {
                let cur = self.read_current()?;
                match &cur.role {
                    Role::Owner(o) => {
                        let ix = o.index.clone();
                        drop(cur);
                        return match (ix, local.take()) {
                            (Some(ix), Some(f)) => f(&ix),
                            (None, _) => Err(self.no_index()),
                            _ => Err(poisoned()),
                        };
                    }
                    Role::Guest(c) => (cur.generation, c.clone()),
                }
            };
            let answer = client.call(&req());
            if matches!(answer, Err(CallError::Gone)) {
                lost.set(true);
            }
            match answer {
                Ok(Response::Retry) | Err(CallError::Gone) => {
                    let since = *first_failover.get_or_insert_with(Instant::now);
                    failovers += 1;
                    if failovers > FAILOVERS && since.elapsed() >= self.p.timeout {
                        return Err(Error::Owner {
                            message: format!(
                                "the owner changed {failovers} times in {:.1} s during one \
                                 request",
                                since.elapsed().as_secs_f64()
                            ),
                        });
                    }
                    self.failover(seen)?
                }
                Ok(Response::Error(e)) => return Err(e.into()),
                Ok(resp) => {
                    return unpack(resp).ok_or_else(|| Error::Protocol {
                        path: self.p.layout.root.clone(),
                        detail: "the owner answered a different question".into(),
                    });
                }
                Err(CallError::Timeout) => return Err(client.timeout_error()),
                Err(CallError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// The owned index, for work that only the owner does.
    fn owned(&self) -> Result<Arc<Index>> {
        let cur = self.read_current()?;
        match &cur.role {
            Role::Owner(Owner {
                index: Some(ix), ..
            }) => Ok(ix.clone()),
            Role::Owner(Owner { index: None, .. }) => Err(self.no_index()),
            _ => Err(Error::Owner {
                message: "this operation must run in the owner process".into(),
            }),
        }
    }

    pub fn apply(&self, op: &Op) -> Result<Outcome> {
        // Asked again after a failover, a delete the lost owner had applied
        // finds nothing: what the entry was before says what to answer.
        let before = match op {
            Op::Delete { key, hash } if !self.is_owner() => {
                let held = self.lookup(key)?.map(|l| l.record.hash);
                Some(held.is_some_and(|h| hash.is_none_or(|want| want == h)))
            }
            _ => None,
        };
        let lost = Cell::new(false);
        let outcome = self.call_noting_lost(
            |ix| ix.apply(op),
            || Request::Apply(op.clone()),
            |r| match r {
                Response::Outcome(o) => Some(o),
                _ => None,
            },
            &lost,
        )?;
        if lost.get() && before == Some(true) && outcome == Outcome::Applied(false) {
            return Ok(Outcome::Applied(true));
        }
        Ok(outcome)
    }

    pub fn lookup(&self, key: &[u8]) -> Result<Option<Lookup>> {
        self.call(
            |ix| ix.lookup(key),
            || Request::Lookup(ByteBuf::from(key.to_vec())),
            |r| match r {
                Response::Lookup(l) => Some(l),
                _ => None,
            },
        )
    }

    pub fn inline_bytes(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        self.call(
            |ix| ix.inline_bytes(hash),
            || Request::InlineBytes(*hash),
            |r| match r {
                Response::Bytes(b) => Some(b.map(ByteBuf::into_vec)),
                _ => None,
            },
        )
    }

    pub fn blob_info(&self, hash: &BlobHash) -> Result<Option<BlobInfo>> {
        self.call(
            |ix| ix.blob_info(hash),
            || Request::BlobInfo(*hash),
            |r| match r {
                Response::BlobInfo(b) => Some(b),
                _ => None,
            },
        )
    }

    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<RecordRow>> {
        self.call(
            |ix| ix.scan(prefix, after, limit),
            || Request::Scan {
                prefix: ByteBuf::from(prefix.to_vec()),
                after: after.map(|a| ByteBuf::from(a.to_vec())),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            |r| match r {
                Response::Rows(rows) => {
                    Some(rows.into_iter().map(|(k, v)| (k.into_vec(), v)).collect())
                }
                _ => None,
            },
        )
    }

    pub fn scan_blobs(
        &self,
        after: Option<&BlobHash>,
        limit: usize,
    ) -> Result<Vec<(BlobHash, BlobInfo)>> {
        self.call(
            |ix| ix.scan_blobs(after, limit),
            || Request::ScanBlobs {
                after: after.copied(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            |r| match r {
                Response::Blobs(b) => Some(b),
                _ => None,
            },
        )
    }

    pub fn count_expired(&self, now: u64) -> Result<u64> {
        self.call(
            |ix| ix.count_expired(now),
            || Request::CountExpired(now),
            number,
        )
    }

    pub fn expired_keys(&self, before: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        self.call(
            |ix| ix.expired_keys(before, limit),
            || Request::ExpiredKeys {
                before,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            |r| match r {
                Response::Keys(k) => Some(k.into_iter().map(ByteBuf::into_vec).collect()),
                _ => None,
            },
        )
    }

    pub fn state(&self) -> Result<State> {
        self.call(
            |ix| ix.state(),
            || Request::State,
            |r| match r {
                Response::State(s) => Some(s),
                _ => None,
            },
        )
    }

    pub fn backends(&self) -> Result<Vec<(String, BackendTotals)>> {
        self.call(
            |ix| ix.backends(),
            || Request::Backends,
            |r| match r {
                Response::Backends(b) => Some(b),
                _ => None,
            },
        )
    }

    /// Counter values, including this process's unreported increments.
    pub fn counters(&self) -> Result<CounterValues> {
        self.report();
        self.call(
            |ix| Ok(ix.counters()),
            || Request::Counters,
            |r| match r {
                Response::Counters(c) => Some(c),
                _ => None,
            },
        )
    }

    /// Adds to the counters (a guest gathers and reports them in batches).
    pub fn count(&self, delta: &CounterValues) {
        if let Ok(ix) = self.owned() {
            return ix.count(delta);
        }
        self.gather(|p| add_counters(&mut p.counters, delta));
    }

    /// Records accesses (batched; never one index write per hit).
    pub fn record_access(&self, batch: impl IntoIterator<Item = (Vec<u8>, Access)>) {
        if let Ok(ix) = self.owned() {
            return ix.record_access(batch);
        }
        self.gather(|p| {
            for (k, a) in batch {
                let slot = p.accesses.entry(k).or_default();
                slot.hits += a.hits;
                slot.last = slot.last.max(a.last);
            }
        });
    }

    fn gather(&self, f: impl FnOnce(&mut Pending)) {
        let due = match self.pending.lock() {
            Ok(mut p) => {
                f(&mut p);
                let since = *p.since.get_or_insert_with(Instant::now);
                p.accesses.len() >= REPORT_BATCH || since.elapsed() >= self.p.cfg.flush_interval
            }
            Err(_) => false,
        };
        if due {
            self.report();
        }
    }

    /// Sends a guest's gathered statistics (or applies them, once this
    /// process has become the owner). Statistics are best effort: a
    /// failure is logged, never returned.
    fn report(&self) {
        let taken = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if taken.accesses.is_empty() && taken.counters == CounterValues::default() {
            return;
        }
        let Pending {
            counters, accesses, ..
        } = taken;
        let res = self.call(
            |ix| {
                ix.count(&counters);
                ix.record_access(accesses.clone());
                Ok(())
            },
            || Request::Report {
                counters: counters.clone(),
                accesses: accesses
                    .iter()
                    .map(|(k, a)| (ByteBuf::from(k.clone()), a.clone()))
                    .collect(),
            },
            done,
        );
        if let Err(e) = res {
            log::warn!("could not report statistics to the cache owner: {e}");
        }
    }

    pub fn checkpoint(&self) -> Result<()> {
        self.report();
        self.call(|ix| ix.checkpoint(), || Request::Checkpoint, done)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        self.owned()?.snapshot()
    }

    pub fn rebuild_counts(&self, file_info: &dyn Fn(&Record) -> Option<BlobInfo>) -> Result<u64> {
        self.owned()?.rebuild_counts(file_info)
    }

    /// Runs `verify` in the owner (here, or by asking it).
    /// (A guest's progress callback is not called: the work happens in
    /// the owner.)
    pub fn verify(&self, store: &Store, opts: VerifyOptions) -> Result<VerifyReport> {
        let (full, repair) = (opts.full, opts.repair);
        self.call(
            |_| crate::verify::verify(store, opts),
            || Request::Verify { full, repair },
            |r| match r {
                Response::Verify(v) => Some(v),
                _ => None,
            },
        )
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if !self.is_owner() {
            self.report();
        }
    }
}

fn poisoned() -> Error {
    Error::Owner {
        message: "the sharing state was poisoned by a panic in another thread".into(),
    }
}

impl Params {
    /// Takes the lock (becoming the owner) or connects to the owner,
    /// waiting up to the timeout while neither is possible.
    fn acquire(&self, store: Option<&Weak<Inner>>) -> Result<(Role, Reset)> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut unshared: Option<Error> = None;
        loop {
            if let Some(lock) = self.layout.try_lock("owner.lock")? {
                return self.become_owner(lock, store);
            }
            if self.sharing == Sharing::Shared && unshared.is_none() {
                match Client::connect(&self.layout.root, &self.layout.sock, self.timeout) {
                    Ok(c) => return Ok((Role::Guest(Arc::new(c)), false)),
                    // Nobody listening: the owner is starting, closing, or
                    // does not share. Keep trying both ways.
                    Err(CallError::Gone) => {}
                    Err(CallError::Timeout) => {
                        return Err(Error::OwnerTimeout {
                            path: self.layout.root.clone(),
                            pid: 0,
                            after: self.timeout,
                        });
                    }
                    Err(CallError::Fatal(e @ Error::Protocol { .. })) => return Err(e),
                    Err(CallError::Fatal(e)) => {
                        log::warn!(
                            "cannot reach the owner of {} ({e}); waiting for it to close the cache",
                            self.layout.root.display()
                        );
                        unshared = Some(e);
                    }
                }
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                return Err(Error::Locked {
                    path: self.layout.root.clone(),
                    waited,
                });
            }
            std::thread::sleep(pause.min(self.timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn become_owner(&self, lock: File, store: Option<&Weak<Inner>>) -> Result<(Role, Reset)> {
        // A process that waited for the lock may find the cache migrated
        // to format 2 meanwhile (migrate.rs): its index is not ours to open.
        if let Some(found) = self.layout.read_version()?
            && found != crate::layout::FORMAT_VERSION
        {
            return Err(Error::NotACache {
                path: self.layout.root.clone(),
                reason: format!(
                    "it became a format-{found} cache while this process was waiting for it; \
                     open it again"
                ),
            });
        }
        let (index, reset) = Index::open(&self.layout.index, &self.layout.journal, &self.cfg)?;
        let mut owner = Owner {
            server: None,
            index: Some(index),
            lock: Some(lock),
        };
        if let Some(store) = store {
            owner.server = self.serve(store);
        }
        Ok((Role::Owner(owner), reset))
    }

    /// Binds the owner socket, or explains why other processes will have
    /// to wait instead.
    fn serve(&self, store: &Weak<Inner>) -> Option<Server> {
        let sock = &self.layout.sock;
        if self.sharing == Sharing::Exclusive {
            // Leave nothing for shared processes to connect to.
            let _ = std::fs::remove_file(sock);
            return None;
        }
        match Server::start(sock, store.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!(
                    "cannot serve other processes on {} ({e}); they will wait until this \
                     process closes the cache",
                    sock.display()
                );
                None
            }
        }
    }
}

/// Makes a guest store stand by: a thread takes the cache over as soon as
/// its owner is gone, and ends then or when the store is closed.
pub(crate) fn stand_by(store: &Store) {
    if store.is_owner() || store.options().sharing != Sharing::Shared {
        return;
    }
    let weak = store.downgrade();
    let spawned = std::thread::Builder::new()
        .name("blobcache-standby".into())
        .spawn(move || {
            loop {
                std::thread::sleep(STANDBY_POLL);
                let Some(store) = weak.upgrade() else { return };
                match store.index().take_over_if_free() {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        log::warn!("standing by to take over the cache failed: {e}");
                        std::thread::sleep(STANDBY_BACKOFF);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "could not start standing by ({e}); this process takes over at its next request"
        );
    }
}

fn add_counters(a: &mut CounterValues, d: &CounterValues) {
    a.hits += d.hits;
    a.misses += d.misses;
    a.stale_hits += d.stale_hits;
    a.puts += d.puts;
    a.corrupt += d.corrupt;
    a.index_resets += d.index_resets;
}

fn number(r: Response) -> Option<u64> {
    match r {
        Response::Number(n) => Some(n),
        _ => None,
    }
}

fn done(r: Response) -> Option<()> {
    match r {
        Response::Done => Some(()),
        _ => None,
    }
}

/// Answers one guest request in the owner.
pub(crate) fn serve(store: &Store, req: Request) -> Response {
    let share = store.index();
    let res = match req {
        Request::Apply(op) => store.apply_index(&op).map(Response::Outcome),
        Request::Lookup(k) => share.lookup(&k).map(Response::Lookup),
        Request::InlineBytes(h) => share
            .inline_bytes(&h)
            .map(|b| Response::Bytes(b.map(ByteBuf::from))),
        Request::BlobInfo(h) => share.blob_info(&h).map(Response::BlobInfo),
        Request::Scan {
            prefix,
            after,
            limit,
        } => share
            .scan(&prefix, after.as_deref().map(|a| &a[..]), limit as usize)
            .map(|rows| {
                Response::Rows(
                    rows.into_iter()
                        .map(|(k, v)| (ByteBuf::from(k), v))
                        .collect(),
                )
            }),
        Request::ScanBlobs { after, limit } => share
            .scan_blobs(after.as_ref(), limit as usize)
            .map(Response::Blobs),
        Request::CountExpired(now) => share.count_expired(now).map(Response::Number),
        Request::ExpiredKeys { before, limit } => share
            .expired_keys(before, limit as usize)
            .map(|k| Response::Keys(k.into_iter().map(ByteBuf::from).collect())),
        Request::State => share.state().map(Response::State),
        Request::Backends => share.backends().map(Response::Backends),
        Request::Counters => share.counters().map(Response::Counters),
        Request::Report { counters, accesses } => {
            share.count(&counters);
            share.record_access(accesses.into_iter().map(|(k, a)| (k.into_vec(), a)));
            Ok(Response::Done)
        }
        Request::Checkpoint => share.checkpoint().map(|()| Response::Done),
        Request::Verify { full, repair } => store
            .verify(VerifyOptions::new().full(full).repair(repair))
            .map(Response::Verify),
    };
    res.unwrap_or_else(|e| Response::Error((&e).into()))
}
