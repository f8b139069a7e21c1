//! The remote tier on a real Redis: read-through, write-through, deletes
//! and figures. Every request goes through [`Shared::call`], which applies
//! the circuit breaker, the fatal-errors option and the counters.

use crate::blobs::BlobHash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};
use serde_bytes::ByteBuf;

use super::entry::{self, RemoteEntry, codec_of};
use super::hits::{Hit, Hits};
use super::pool::{self, Breaker, Pool};
use super::writer::Writer;
use super::{Remote, RemoteOptions, RemoteState, RemoteStats, remote_error};
use crate::blobs::{self, BlobError};
use crate::clock::Clock;
use crate::error::Result;
use crate::key;
use crate::options::{PutOptions, StoreOptions};
use crate::record::Codec;
use crate::store::{Filled, PutReport, Store};

/// Keys deleted per `UNLINK` (and asked for per `SCAN` step) by a clear.
const DELETE_BATCH: usize = 1000;
/// A put's stored bytes larger than this wait in the background queue as
/// a reference to the local blob file, read when sent, so a full queue
/// holds a bounded amount of memory.
const QUEUED_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of blobs sent per pipeline: a batch of writes is split into
/// pipelines of about this size.
const PIPELINE_BYTES: usize = 4 * 1024 * 1024;

/// One write ready to send: the entry's key and value, the blob kept
/// apart (its key and stored bytes), and the TTL left.
struct Ready {
    ekey: Vec<u8>,
    value: Vec<u8>,
    apart: Option<(String, Vec<u8>)>,
    ttl_ms: u64,
}

/// A connected remote tier.
#[derive(Debug)]
pub struct Tier {
    shared: Arc<Shared>,
    writer: Option<Writer>,
    /// Hits served before they are stored (none with `fatal_errors`:
    /// then a hit is stored before it is served, so a failure fails it).
    hits: Option<Hits>,
}

/// What the tier and its background writer share.
pub struct Shared {
    pub opts: RemoteOptions,
    pool: Pool,
    breaker: Breaker,
    counts: Counts,
    clock: Arc<dyn Clock>,
    /// Stored blobs up to this size travel inside their entry.
    inline_max: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("opts", &self.opts).finish()
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    writes: AtomicU64,
    deduplicated: AtomicU64,
    skipped: AtomicU64,
    pub dropped: AtomicU64,
    pub waited: AtomicU64,
    too_large: AtomicU64,
    deleted: AtomicU64,
    requests: AtomicU64,
    latency_us: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A write waiting to be sent: the entry without its bytes, and where the
/// bytes are.
#[derive(Debug)]
pub struct Job {
    key: Vec<u8>,
    entry: RemoteEntry,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// The stored bytes the local put produced (or the index holds),
    /// already in `Codec`: sent as they are, never compressed again.
    Stored(Codec, Vec<u8>),
    /// The local blob file, holding the stored bytes in `Codec`.
    File(crate::blobs::Blobs, BlobHash, Codec),
}

impl Tier {
    /// Connects to the Redis named by `opts` and checks it answers. A bad
    /// URL, a TLS handshake that fails (untrusted certificate), or
    /// credentials Redis refuses are errors; an unreachable Redis marks the
    /// tier down (an error with `fatal_errors`).
    fn open(opts: &RemoteOptions, store: &StoreOptions) -> Result<Tier> {
        let client = pool::client(opts)?;
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            pool: Pool::new(client, opts.pool_size, opts.timeout),
            breaker: Breaker::new(opts.retry_interval),
            counts: Counts::default(),
            clock: store.clock.clone(),
            inline_max: store.inline_threshold,
        });
        shared.probe()?;
        let writer = (!opts.sync_writes && !opts.read_only)
            .then(|| Writer::spawn(shared.clone(), opts.queue_capacity));
        let hits = (!opts.fatal_errors).then(Hits::spawn);
        Ok(Tier {
            shared,
            writer,
            hits,
        })
    }

    /// On a local miss: a pending hit of `key`, else Redis. A verified hit
    /// is served at once and stored in the background, or now when the
    /// pending set is full.
    fn fill(&self, store: &Store, key: &[u8], now: u64) -> Result<Option<Filled>> {
        if let Some(filled) = self.hits.as_ref().and_then(|h| h.serve(key, now)) {
            return Ok(Some(filled));
        }
        let s = &self.shared;
        let Some(hit) = s.fetch(store, key, now)? else {
            return Ok(None);
        };
        let record = hit.record.clone();
        let hit = match &self.hits {
            Some(h) => {
                let data = hit.data.clone();
                match h.offer(store, key, hit) {
                    Ok(()) => {
                        bump(&s.counts.hits);
                        return Ok(Some(Filled { record, data }));
                    }
                    Err(hit) => hit,
                }
            }
            None => hit,
        };
        let Hit {
            data,
            codec,
            stored,
            opts,
            at,
            ..
        } = hit;
        match store.store_remote_hit(key, &data, codec, stored, record.hash, &opts, at) {
            Ok(record) => {
                bump(&s.counts.hits);
                Ok(Some(Filled { record, data }))
            }
            Err(err) => s.not_kept(key, err),
        }
    }
}

impl Remote {
    /// Connects the tier described by `opts` (none: a no-op handle). A
    /// wrong password, a failed TLS handshake or a bad URL is an error
    /// here; an unreachable Redis only marks the tier down (unless errors
    /// are fatal).
    pub fn open(opts: Option<&RemoteOptions>, store: &StoreOptions) -> Result<Remote> {
        let tier = opts.map(|o| Tier::open(o, store)).transpose()?;
        Ok(Remote { tier })
    }

    /// On a local miss: fetches `key` from Redis, verifies it (once) and
    /// stores it locally. `Some`: the entry is now in the local cache, and
    /// here are its record and verified payload, to serve as they are.
    pub fn fill(&self, store: &Store, key: &[u8], now: u64) -> Result<Option<Filled>> {
        match &self.tier {
            Some(t) => t.fill(store, key, now),
            None => Ok(None),
        }
    }

    /// The record of the remote hit of `key` served but not stored yet.
    pub fn pending_record(&self, key: &[u8], now: u64) -> Option<crate::record::Record> {
        self.hits()?.record(key, now)
    }

    /// Stores the remote hit of `key` served but not stored yet, now.
    pub fn settle(&self, store: &Store, key: &[u8]) {
        if let Some(h) = self.hits() {
            h.settle(store, key);
        }
    }

    /// A store handle is being dropped; the last one waits (bounded) until
    /// the remote hits served so far are stored locally.
    pub fn handle_dropped(&self, store: &Store) {
        if let Some(t) = &self.tier
            && let Some(h) = &t.hits
        {
            h.handle_dropped(store, t.shared.drain_budget());
        }
    }

    fn hits(&self) -> Option<&Hits> {
        self.tier.as_ref()?.hits.as_ref()
    }

    /// After a local put: sends the entry to Redis (queued or now).
    /// `stored` is the stored form (codec and bytes) the put encoded, when
    /// it has it in memory; it is sent as it is.
    pub fn after_put(
        &self,
        store: &Store,
        key: &[u8],
        stored: Option<(Codec, Vec<u8>)>,
        report: &PutReport,
        opts: &PutOptions,
    ) -> Result<()> {
        let Some(t) = &self.tier else {
            return Ok(());
        };
        if let Some(h) = &t.hits {
            h.forget(key, true); // the local put is newer
        }
        let s = &t.shared;
        if s.opts.read_only {
            return Ok(());
        }
        if report.raw_size > s.opts.max_payload {
            bump(&s.counts.too_large);
            return Ok(());
        }
        let Some(body) = body_of(store, key, stored, report)? else {
            bump(&s.counts.skipped);
            return Ok(());
        };
        let o = store.options();
        let job = Job {
            key: key.to_vec(),
            entry: RemoteEntry::of_put(report, opts, o.clock.now_ms(), &o.drop_headers),
            body,
        };
        match &t.writer {
            Some(w) => {
                w.enqueue(job);
                Ok(())
            }
            None => s.write(job),
        }
    }

    /// After a local delete or clear: removes the entries under the index
    /// key `prefix` from Redis when told to (`exact`: only that key).
    pub fn after_delete(&self, prefix: &[u8], exact: bool) -> Result<()> {
        let Some(t) = &self.tier else {
            return Ok(());
        };
        if let Some(h) = &t.hits {
            h.forget_deleted(prefix, exact);
        }
        let s = &t.shared;
        if s.opts.read_only || !s.opts.delete_remote {
            return Ok(());
        }
        if exact {
            let k = entry::entry_key(&s.opts.prefix, prefix);
            if let Some(n) = s.call(|c| redis::cmd("DEL").arg(&k).query::<u64>(c))? {
                s.counts.deleted.fetch_add(n, Ordering::Relaxed);
            }
            return Ok(());
        }
        s.delete_matching(&entry::entry_pattern(&s.opts.prefix, prefix))
    }

    /// Waits (bounded by the tier's timeout) until the remote hits served
    /// so far are stored locally and the queued writes are sent.
    pub fn drain(&self) {
        let Some(t) = &self.tier else {
            return;
        };
        let budget = t.shared.drain_budget();
        if let Some(h) = &t.hits {
            h.drain(budget);
        }
        if let Some(w) = &t.writer {
            w.drain(budget);
        }
    }

    /// The tier's figures, `None` without a tier.
    pub fn stats(&self) -> Option<RemoteStats> {
        let t = self.tier.as_ref()?;
        let s = &t.shared;
        let c = &s.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = get(&c.requests);
        Some(RemoteStats {
            url: s.opts.redacted_url(),
            prefix: s.opts.prefix.clone(),
            state: match s.breaker.is_open() {
                true => RemoteState::Down,
                false => RemoteState::Up,
            },
            read_only: s.opts.read_only,
            hits: get(&c.hits),
            misses: get(&c.misses),
            errors: get(&c.errors),
            corrupt: get(&c.corrupt),
            writes: get(&c.writes),
            deduplicated: get(&c.deduplicated),
            skipped: get(&c.skipped),
            dropped: get(&c.dropped),
            waited: get(&c.waited),
            too_large: get(&c.too_large),
            deleted: get(&c.deleted),
            queued: t.writer.as_ref().map_or(0, Writer::pending),
            requests,
            latency_us: get(&c.latency_us).checked_div(requests).unwrap_or(0),
        })
    }
}

/// Where the stored bytes of a put are: in memory (`stored`, what the put
/// encoded; kept for the queue only up to [`QUEUED_BYTES_MAX`]), in the
/// local blob file (read when sent), or (a put that deduplicated onto an
/// inline blob) in the local index, read back here. Never the raw payload:
/// nothing is compressed twice. `None`: the entry changed meanwhile.
fn body_of(
    store: &Store,
    key: &[u8],
    stored: Option<(Codec, Vec<u8>)>,
    report: &PutReport,
) -> Result<Option<Body>> {
    let at_hand = stored.filter(|(_, b)| report.inline || b.len() <= QUEUED_BYTES_MAX);
    if let Some((codec, bytes)) = at_hand {
        return Ok(Some(Body::Stored(codec, bytes)));
    }
    if !report.inline {
        let codec = codec_of(report.compressed);
        return Ok(Some(Body::File(
            store.blob_store().clone(),
            report.hash,
            codec,
        )));
    }
    let Some(found) = store.index().lookup(key)? else {
        return Ok(None);
    };
    Ok(found
        .inline
        .filter(|_| found.record.hash == report.hash)
        .map(|stored| Body::Stored(found.record.codec, stored.into_vec())))
}

/// True for errors that mean the credentials or their rights are wrong.
fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

impl Shared {
    /// Runs one request through the breaker. `Ok(None)`: skipped, or
    /// failed and counted (errors are returned only when fatal).
    fn call<T>(&self, f: impl FnMut(&mut Connection) -> RedisResult<T>) -> Result<Option<T>> {
        let fatal = self.opts.fatal_errors;
        if !fatal && !self.breaker.allow() {
            bump(&self.counts.skipped);
            return Ok(None);
        }
        let started = Instant::now();
        let out = self.pool.run(f);
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        bump(&self.counts.requests);
        self.counts.latency_us.fetch_add(us, Ordering::Relaxed);
        match out {
            Ok(v) => {
                if self.breaker.succeed() {
                    log::info!("remote cache {} is back", self.opts.redacted_url());
                }
                Ok(Some(v))
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed<T>(&self, e: RedisError) -> Result<Option<T>> {
        bump(&self.counts.errors);
        let url = self.opts.redacted_url();
        if self.opts.fatal_errors {
            return Err(remote_error(&self.opts, e.to_string()));
        }
        if self.breaker.fail() {
            log::warn!(
                "remote cache {url} failed ({e}); working locally, retrying in {}",
                humantime::format_duration(self.opts.retry_interval)
            );
        }
        Ok(None)
    }

    /// The check at open: credentials refused and failed TLS handshakes
    /// are always errors (a wrong configuration, not a Redis that is down).
    fn probe(&self) -> Result<()> {
        match self.pool.run(|c| redis::cmd("PING").query::<String>(c)) {
            Ok(_) => Ok(()),
            Err(e) if is_auth_error(&e) => Err(remote_error(
                &self.opts,
                format!(
                    "Redis refused the credentials ({e}); check the user and password \
                     in the URL (and the user's ACL rules)"
                ),
            )),
            Err(e) => match pool::tls_failure(&e) {
                Some(tls) => Err(remote_error(
                    &self.opts,
                    format!(
                        "the TLS handshake failed ({tls}); check the CA file \
                         (--remote-ca-file), the host name in the URL, and the \
                         client certificate if Redis requires one"
                    ),
                )),
                None => self.failed::<()>(e).map(|_| ()),
            },
        }
    }

    /// The tier's counters.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// How long draining the queue may take.
    pub fn drain_budget(&self) -> Duration {
        (self.opts.timeout * 3).max(Duration::from_secs(2))
    }

    /// A local miss asks Redis: the entry, then (kept apart) its blob. The
    /// stored bytes are decoded and checked against the entry's blake3
    /// here, once; the verified payload is what is served, and the stored
    /// bytes (in the codec they came in) are what is kept locally. `None`:
    /// nothing to serve (counted).
    fn fetch(&self, store: &Store, key: &[u8], now: u64) -> Result<Option<Hit>> {
        let ekey = entry::entry_key(&self.opts.prefix, key);
        let Some(value) =
            self.call(|c| redis::cmd("GET").arg(&ekey).query::<Option<Vec<u8>>>(c))?
        else {
            return Ok(None);
        };
        let Some(value) = value else {
            return Ok(self.miss());
        };
        let mut e = match RemoteEntry::decode(&value) {
            Ok(e) => e,
            Err(why) => return Ok(self.corrupt(key, &why)),
        };
        if e.expires_at <= now {
            return Ok(self.miss());
        }
        if e.raw_size > self.opts.max_payload {
            bump(&self.counts.too_large);
            return Ok(self.miss());
        }
        let stored = match e.blob.take() {
            Some(b) => b.into_vec(),
            None => match self.fetch_blob(&e)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        let data = match blobs::decode(&stored, e.codec, e.raw_size, &e.hash) {
            Ok(raw) => raw,
            Err(BlobError::Corrupt(why)) => return Ok(self.corrupt(key, &why)),
            Err(BlobError::Missing) => return Ok(self.miss()),
            Err(BlobError::Io(err)) => return Err(err),
        };
        let opts = e.put_options(now);
        if let Err(err) = store.check_remote_hit(key, &data, &opts) {
            return self.not_kept(key, err);
        }
        let raw_size = data.len() as u64;
        Ok(Some(Hit {
            record: store.remote_hit_record(&e.hash, e.codec, &stored, raw_size, &opts, now),
            data,
            codec: e.codec,
            stored,
            opts,
            at: now,
        }))
    }

    /// A verified hit the local cache refuses to keep: not served (an
    /// error with `fatal_errors`).
    fn not_kept<T>(&self, key: &[u8], err: crate::Error) -> Result<Option<T>> {
        if self.opts.fatal_errors {
            return Err(err);
        }
        log::warn!("remote hit {} not stored locally: {err}", key::display(key));
        Ok(self.miss())
    }

    /// The blob of an entry kept apart; `None` (counted) when Redis lost it
    /// or could not be asked.
    fn fetch_blob(&self, e: &RemoteEntry) -> Result<Option<Vec<u8>>> {
        let bkey = entry::blob_key(&self.opts.prefix, &e.hash);
        match self.call(|c| redis::cmd("GET").arg(&bkey).query::<Option<Vec<u8>>>(c))? {
            Some(Some(b)) => Ok(Some(b)),
            Some(None) => Ok(self.miss()),
            None => Ok(None),
        }
    }

    fn miss<T>(&self) -> Option<T> {
        bump(&self.counts.misses);
        None
    }

    fn corrupt<T>(&self, key: &[u8], why: &str) -> Option<T> {
        bump(&self.counts.corrupt);
        log::warn!(
            "remote entry {} refused: {why}; not served",
            key::display(key)
        );
        self.miss()
    }

    /// Sends one entry (and its blob) to Redis.
    pub fn write(&self, job: Job) -> Result<()> {
        self.write_batch(vec![job])
    }

    /// Sends entries (and their blobs) to Redis, as few pipelines as
    /// their size allows: one round trip for entries whose bytes travel
    /// inside them, one more to ask which blobs kept apart Redis already
    /// holds (whose bytes are then not sent again).
    pub fn write_batch(&self, jobs: Vec<Job>) -> Result<()> {
        let mut ready = Vec::with_capacity(jobs.len());
        let mut bytes = 0;
        for job in jobs {
            let Some(w) = self.prepare(job)? else {
                continue;
            };
            bytes += w.value.len() + w.apart.as_ref().map_or(0, |(_, b)| b.len());
            ready.push(w);
            if bytes >= PIPELINE_BYTES {
                self.send(&std::mem::take(&mut ready))?;
                bytes = 0;
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        self.send(&ready)
    }

    /// What one job sends: its entry value (the blob inside when small),
    /// and a blob kept apart. `None`: nothing to send (expired, gone).
    fn prepare(&self, job: Job) -> Result<Option<Ready>> {
        let ttl_ms = job.entry.expires_at.saturating_sub(self.clock.now_ms());
        if ttl_ms == 0 {
            return Ok(None);
        }
        let Some((codec, stored)) = self.load(job.body)? else {
            return Ok(None);
        };
        let mut e = job.entry;
        e.codec = codec;
        let ekey = entry::entry_key(&self.opts.prefix, &job.key);
        if stored.len() <= self.inline_max {
            e.blob = Some(ByteBuf::from(stored));
            let value = e.encode();
            return Ok(Some(Ready {
                ekey,
                value,
                apart: None,
                ttl_ms,
            }));
        }
        let bkey = entry::blob_key(&self.opts.prefix, &e.hash);
        Ok(Some(Ready {
            ekey,
            value: e.encode(),
            apart: Some((bkey, stored)),
            ttl_ms,
        }))
    }

    /// Sends prepared writes in one pipeline (after one `EXISTS` round
    /// trip when some carry a blob kept apart). A blob is written only if
    /// absent and its expiry raised to at least its entry's (`PEXPIRE GT`);
    /// then the entry, with its TTL.
    fn send(&self, ready: &[Ready]) -> Result<()> {
        let apart: Vec<&String> = ready
            .iter()
            .filter_map(|w| w.apart.as_ref().map(|(k, _)| k))
            .collect();
        let sent = self.call(|c| {
            let present: Vec<bool> = match apart.is_empty() {
                true => Vec::new(),
                false => {
                    let mut ask = redis::pipe();
                    for k in &apart {
                        ask.cmd("EXISTS").arg(*k);
                    }
                    ask.query(c)?
                }
            };
            let mut p = redis::pipe();
            let mut known = present.iter();
            let mut sending = std::collections::HashSet::new();
            let mut deduplicated = 0u64;
            for w in ready {
                if let Some((bkey, stored)) = &w.apart {
                    let held = known.next().copied().unwrap_or(false);
                    // Redis holds it, or an earlier write of this batch sends it.
                    if held || !sending.insert(bkey) {
                        deduplicated += 1;
                    } else {
                        p.cmd("SET")
                            .arg(bkey)
                            .arg(stored)
                            .arg("NX")
                            .arg("PX")
                            .arg(w.ttl_ms)
                            .ignore();
                    }
                    p.cmd("PEXPIRE").arg(bkey).arg(w.ttl_ms).arg("GT").ignore();
                }
                p.cmd("SET")
                    .arg(&w.ekey)
                    .arg(&w.value)
                    .arg("PX")
                    .arg(w.ttl_ms)
                    .ignore();
            }
            p.query::<()>(c)?;
            Ok(deduplicated)
        })?;
        if let Some(deduplicated) = sent {
            self.counts
                .writes
                .fetch_add(ready.len() as u64, Ordering::Relaxed);
            self.counts
                .deduplicated
                .fetch_add(deduplicated, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The stored bytes of a write and their codec; `None` when the local
    /// blob went away meanwhile (nothing to send).
    fn load(&self, body: Body) -> Result<Option<(Codec, Vec<u8>)>> {
        match body {
            Body::Stored(codec, stored) => Ok(Some((codec, stored))),
            Body::File(blobs, hash, codec) => {
                match read_blob_file(&blobs, &hash, self.opts.max_payload) {
                    Ok(stored) => Ok(stored.map(|s| (codec, s))),
                    Err(e) if self.opts.fatal_errors => Err(e),
                    Err(e) => {
                        log::debug!("not sending blob {hash}: {e}");
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Removes every entry matching `pattern` (a clear).
    fn delete_matching(&self, pattern: &[u8]) -> Result<()> {
        let mut cursor: u64 = 0;
        loop {
            let Some((next, keys)) = self.call(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(DELETE_BATCH)
                    .query::<(u64, Vec<Vec<u8>>)>(c)
            })?
            else {
                return Ok(());
            };
            if !keys.is_empty()
                && let Some(n) = self.call(|c| redis::cmd("UNLINK").arg(&keys).query::<u64>(c))?
            {
                self.counts.deleted.fetch_add(n, Ordering::Relaxed);
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// The stored bytes of a local blob file (never through a symlink);
/// `None` when it is gone or over `max` bytes.
fn read_blob_file(
    blobs: &crate::blobs::Blobs,
    hash: &BlobHash,
    max: u64,
) -> Result<Option<Vec<u8>>> {
    use crate::error::IoContext;
    use std::io::Read;
    let path = &blobs.path_for(hash);
    let file = match blobs.open_stored(hash) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::Error::io("open", path, e)),
    };
    let len = file.metadata().ctx("inspect", path)?.len();
    if len > max {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (&file).take(max).read_to_end(&mut out).ctx("read", path)?;
    Ok(Some(out))
}
