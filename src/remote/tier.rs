//! The remote tier on a real Redis: read-through, write-through, deletes
//! and figures. Every request goes through [`Shared::call`], which applies
//! the circuit breaker, the fatal-errors option and the counters.

use crate::blobs::BlobHash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};
use serde_bytes::ByteBuf;

use super::entry::{self, ENTRY_VERSION, RemoteEntry};
use super::pool::{Breaker, Pool};
use super::writer::Writer;
use super::{RemoteOptions, RemoteState, RemoteStats, remote_error};
use crate::blobs::{self, BlobError};
use crate::clock::Clock;
use crate::error::Result;
use crate::key::{self, Category};
use crate::options::{PutOptions, StoreOptions};
use crate::record::{self, Codec};
use crate::store::{PutReport, Store};

/// Keys deleted per `UNLINK` (and asked for per `SCAN` step) by a clear.
const DELETE_BATCH: usize = 1000;

/// A connected remote tier.
#[derive(Debug)]
pub struct Tier {
    shared: Arc<Shared>,
    writer: Option<Writer>,
}

/// What the tier and its background writer share.
pub struct Shared {
    pub opts: RemoteOptions,
    pool: Pool,
    breaker: Breaker,
    counts: Counts,
    clock: Arc<dyn Clock>,
    level: i32,
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
    /// The raw payload, to be compressed like the store does.
    Raw(Vec<u8>),
    /// The local blob file, holding the stored bytes in `Codec`.
    File(crate::blobs::Blobs, BlobHash, Codec),
}

impl Tier {
    /// Connects to the Redis named by `opts` and checks it answers. A bad
    /// URL, TLS, or credentials Redis refuses are errors; an unreachable
    /// Redis marks the tier down (an error with `fatal_errors`).
    pub fn open(opts: &RemoteOptions, store: &StoreOptions) -> Result<Tier> {
        if opts.url.starts_with("rediss://") || opts.url.starts_with("valkeys://") {
            return Err(remote_error(
                opts,
                "TLS (rediss://) is not supported by this build; reach Redis over a \
                 trusted network, a Unix socket, or a TLS tunnel such as stunnel",
            ));
        }
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| remote_error(opts, format!("the URL is not usable: {e}")))?;
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            pool: Pool::new(client, opts.pool_size, opts.timeout),
            breaker: Breaker::new(opts.retry_interval),
            counts: Counts::default(),
            clock: store.clock.clone(),
            level: store.compression_level,
            inline_max: store.inline_threshold,
        });
        shared.probe()?;
        let writer = (!opts.sync_writes && !opts.read_only)
            .then(|| Writer::spawn(shared.clone(), opts.queue_capacity));
        Ok(Tier { shared, writer })
    }

    /// See [`super::Remote::fill`].
    pub fn fill(&self, store: &Store, key: &[u8], now: u64) -> Result<bool> {
        self.shared.fill(store, key, now)
    }

    /// See [`super::Remote::after_put`].
    pub fn after_put(
        &self,
        store: &Store,
        key: &[u8],
        payload: Option<&[u8]>,
        report: &PutReport,
        opts: &PutOptions,
    ) -> Result<()> {
        let s = &self.shared;
        if s.opts.read_only {
            return Ok(());
        }
        if report.raw_size > s.opts.max_payload {
            bump(&s.counts.too_large);
            return Ok(());
        }
        let body = match (report.inline, payload) {
            (false, _) => Body::File(
                store.blob_store().clone(),
                report.hash,
                codec_of(report.compressed),
            ),
            (true, Some(p)) => Body::Raw(p.to_vec()),
            // A streamed payload whose blob was already inline: its bytes
            // are not at hand; the entry stays local.
            (true, None) => {
                bump(&s.counts.skipped);
                return Ok(());
            }
        };
        let o = store.options();
        let entry = RemoteEntry {
            version: ENTRY_VERSION,
            hash: report.hash,
            codec: codec_of(report.compressed),
            raw_size: report.raw_size,
            fetched_at: opts.fetched_at.unwrap_or_else(|| o.clock.now_ms()),
            expires_at: report.expires_at,
            category: opts.category.as_str().to_string(),
            content_type: opts.content_type.clone(),
            headers: record::redact_headers(&opts.headers, &o.drop_headers),
            pinned: opts.pinned,
            blob: None,
        };
        let job = Job {
            key: key.to_vec(),
            entry,
            body,
        };
        match &self.writer {
            Some(w) => {
                w.enqueue(job);
                Ok(())
            }
            None => s.write(job),
        }
    }

    /// See [`super::Remote::after_delete`].
    pub fn after_delete(&self, prefix: &[u8], exact: bool) -> Result<()> {
        let s = &self.shared;
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

    /// See [`super::Remote::drain`].
    pub fn drain(&self) {
        if let Some(w) = &self.writer {
            w.drain(self.shared.drain_budget());
        }
    }

    /// See [`super::Remote::stats`].
    pub fn stats(&self) -> RemoteStats {
        let s = &self.shared;
        let c = &s.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = get(&c.requests);
        RemoteStats {
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
            too_large: get(&c.too_large),
            deleted: get(&c.deleted),
            queued: self.writer.as_ref().map_or(0, Writer::pending),
            requests,
            latency_us: get(&c.latency_us).checked_div(requests).unwrap_or(0),
        }
    }
}

fn codec_of(compressed: bool) -> Codec {
    match compressed {
        true => Codec::Zstd,
        false => Codec::Raw,
    }
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

    /// The check at open: credentials refused are always an error.
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
            Err(e) => self.failed::<()>(e).map(|_| ()),
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

    fn fill(&self, store: &Store, key: &[u8], now: u64) -> Result<bool> {
        let ekey = entry::entry_key(&self.opts.prefix, key);
        let Some(value) =
            self.call(|c| redis::cmd("GET").arg(&ekey).query::<Option<Vec<u8>>>(c))?
        else {
            return Ok(false);
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
                None => return Ok(false),
            },
        };
        let raw = match blobs::decode(&stored, e.codec, e.raw_size, &e.hash) {
            Ok(raw) => raw,
            Err(BlobError::Corrupt(why)) => return Ok(self.corrupt(key, &why)),
            Err(BlobError::Missing) => return Ok(self.miss()),
            Err(BlobError::Io(err)) => return Err(err),
        };
        let opts = put_options(&e, now);
        match store.put_remote_hit(key, &raw, e.codec, stored, e.hash, &opts) {
            Ok(_) => {
                bump(&self.counts.hits);
                Ok(true)
            }
            Err(err) if !self.opts.fatal_errors => {
                log::warn!("remote hit {} not stored locally: {err}", key::display(key));
                Ok(self.miss())
            }
            Err(err) => Err(err),
        }
    }

    /// The blob of an entry kept apart; `None` (counted) when Redis lost it
    /// or could not be asked.
    fn fetch_blob(&self, e: &RemoteEntry) -> Result<Option<Vec<u8>>> {
        let bkey = entry::blob_key(&self.opts.prefix, &e.hash);
        match self.call(|c| redis::cmd("GET").arg(&bkey).query::<Option<Vec<u8>>>(c))? {
            Some(Some(b)) => Ok(Some(b)),
            Some(None) => {
                self.miss();
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn miss(&self) -> bool {
        bump(&self.counts.misses);
        false
    }

    fn corrupt(&self, key: &[u8], why: &str) -> bool {
        bump(&self.counts.corrupt);
        log::warn!(
            "remote entry {} refused: {why}; not served",
            key::display(key)
        );
        self.miss()
    }

    /// Sends one entry (and its blob) to Redis.
    pub fn write(&self, job: Job) -> Result<()> {
        let ttl_ms = job.entry.expires_at.saturating_sub(self.clock.now_ms());
        if ttl_ms == 0 {
            return Ok(());
        }
        let Some((codec, stored)) = self.load(job.body)? else {
            return Ok(());
        };
        let mut e = job.entry;
        e.codec = codec;
        let ekey = entry::entry_key(&self.opts.prefix, &job.key);
        if stored.len() <= self.inline_max {
            e.blob = Some(ByteBuf::from(stored));
            let value = e.encode();
            let sent = self.call(|c| {
                redis::cmd("SET")
                    .arg(&ekey)
                    .arg(&value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query::<()>(c)
            })?;
            if sent.is_some() {
                bump(&self.counts.writes);
            }
            return Ok(());
        }
        self.write_apart(&ekey, &e, &stored, ttl_ms)
    }

    /// Writes a blob under its hash (only if absent, its expiry raised to
    /// at least the entry's), then the entry.
    fn write_apart(&self, ekey: &[u8], e: &RemoteEntry, stored: &[u8], ttl_ms: u64) -> Result<()> {
        let bkey = entry::blob_key(&self.opts.prefix, &e.hash);
        let value = e.encode();
        let sent = self.call(|c| {
            let present: bool = redis::cmd("EXISTS").arg(&bkey).query(c)?;
            let mut p = redis::pipe();
            if !present {
                p.cmd("SET")
                    .arg(&bkey)
                    .arg(stored)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            p.cmd("PEXPIRE").arg(&bkey).arg(ttl_ms).arg("GT").ignore();
            p.cmd("SET")
                .arg(ekey)
                .arg(&value)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
            p.query::<()>(c)?;
            Ok(present)
        })?;
        if let Some(present) = sent {
            bump(&self.counts.writes);
            if present {
                bump(&self.counts.deduplicated);
            }
        }
        Ok(())
    }

    /// The stored bytes of a write and their codec; `None` when the local
    /// blob went away meanwhile (nothing to send).
    fn load(&self, body: Body) -> Result<Option<(Codec, Vec<u8>)>> {
        match body {
            Body::Raw(raw) => Ok(Some(match blobs::compress(&raw, self.level) {
                Some(z) => (Codec::Zstd, z),
                None => (Codec::Raw, raw),
            })),
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

/// How a remote hit is stored locally: same metadata, remaining TTL.
fn put_options(e: &RemoteEntry, now: u64) -> PutOptions {
    let mut o = PutOptions::new()
        .ttl(Duration::from_millis(e.expires_at.saturating_sub(now)))
        .category(Category::parse(&e.category))
        .headers(e.headers.iter().cloned())
        .fetched_at(e.fetched_at)
        .pinned(e.pinned);
    if let Some(ct) = &e.content_type {
        o = o.content_type(ct.clone());
    }
    o
}
