//! The shared remote tier: a Redis server behind the local cache, shared
//! by the machines of a team or a CI fleet.
//!
//! - Read-through: a local miss of [`crate::Store::get`] (and its stale
//!   and streaming variants) asks Redis for the entry and its blob, checks
//!   the blob's blake3 before anything is served or stored, serves the hit
//!   and stores it locally with its remaining TTL in the background
//!   (`hits.rs`: until then its key is served from the same bytes).
//! - Write-through: after a put succeeded locally, the entry follows to
//!   Redis, from a bounded background queue (default) or before the put
//!   returns ([`RemoteOptions::sync_writes`]).
//! - A Redis that is down, slow or full never fails a get or a put (unless
//!   [`RemoteOptions::fatal_errors`]): a circuit breaker skips it for
//!   [`RemoteOptions::retry_interval`] after an error.
//!
//! Key layout in Redis (`P` is [`RemoteOptions::prefix`]):
//! - `P e:<key>`: one entry (its metadata as CBOR, and its stored blob
//!   bytes when they are at most the store's inline threshold), where
//!   `<key>` is the entry's index key bytes (length-prefixed backend, then
//!   the signature); Redis expires it with the entry's TTL;
//! - `P b:<hex blake3>`: a larger blob's stored (zstd or raw) bytes,
//!   written only if absent (`SET NX`), expiring no earlier than the
//!   longest-lived entry that uses it (`PEXPIRE GT`).
//!
//! This module is the only place that knows about Redis; the store calls
//! [`Remote`] at a handful of points and nothing else.

mod entry;
#[cfg(feature = "redis")]
mod hits;
#[cfg(feature = "redis")]
mod pool;
#[cfg(feature = "redis")]
mod tier;
#[cfg(feature = "redis")]
mod writer;

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
#[cfg(not(feature = "redis"))]
use crate::error::Result;
#[cfg(not(feature = "redis"))]
use crate::store::{PutReport, Store};

/// Default prefix of every key blobcache writes to Redis.
pub const DEFAULT_REMOTE_PREFIX: &str = "blobcache:";

/// Options of the remote tier, given to [`crate::StoreOptions::remote`].
///
/// ```
/// use blobcache::RemoteOptions;
/// use std::time::Duration;
///
/// let opts = RemoteOptions::new("redis://ci:s3cret@cache.internal:6379/0")
///     .prefix("team-a:")
///     .read_only(true)
///     .retry_interval(Duration::from_secs(10));
/// assert_eq!(opts.redacted_url(), "redis://ci:***@cache.internal:6379/0");
/// ```
#[derive(Clone)]
pub struct RemoteOptions {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) sync_writes: bool,
    pub(crate) queue_capacity: usize,
    pub(crate) queue_wait: Duration,
    pub(crate) max_payload: u64,
    pub(crate) read_only: bool,
    pub(crate) fatal_errors: bool,
    pub(crate) retry_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) delete_remote: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("sync_writes", &self.sync_writes)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_wait", &self.queue_wait)
            .field("max_payload", &self.max_payload)
            .field("read_only", &self.read_only)
            .field("fatal_errors", &self.fatal_errors)
            .field("retry_interval", &self.retry_interval)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("delete_remote", &self.delete_remote)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl RemoteOptions {
    /// A remote tier at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://...` (the same over TLS; the server's certificate is
    /// checked against the system's roots, or [`RemoteOptions::ca_file`]),
    /// or `unix:///path/to/redis.sock[?db=N&user=U&pass=P]`. The URL is
    /// checked when the store opens.
    pub fn new(url: impl Into<String>) -> RemoteOptions {
        RemoteOptions {
            url: url.into(),
            prefix: DEFAULT_REMOTE_PREFIX.to_string(),
            sync_writes: false,
            queue_capacity: 1024,
            queue_wait: Duration::from_secs(1),
            max_payload: 32 * 1024 * 1024,
            read_only: false,
            fatal_errors: false,
            retry_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
            pool_size: 4,
            delete_remote: false,
            ca_file: None,
            client_cert: None,
        }
    }

    /// Prefix of every key written and read (default `"blobcache:"`): one
    /// namespace per team or project on a shared Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sends each put to Redis before the put returns (default false: a
    /// background thread sends them from a bounded queue).
    pub fn sync_writes(mut self, yes: bool) -> Self {
        self.sync_writes = yes;
        self
    }

    /// How many writes the background queue holds (default 1024). The
    /// writer thread empties it a batch at a time (one pipeline per few
    /// MiB); a put that finds it full waits for room, see
    /// [`RemoteOptions::queue_wait`].
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// How long a put waits for room in a full background queue (default
    /// 1 s, the default [`RemoteOptions::timeout`]): backpressure, so a
    /// burst of puts faster than Redis takes them slows down instead of
    /// losing writes. A write still finding no room then is not sent,
    /// and counted in [`RemoteStats::dropped`] (waits in
    /// [`RemoteStats::waited`]). Zero: never wait, drop at once. A Redis
    /// that is down does not make puts wait: the circuit breaker skips it
    /// and the queue empties at once.
    pub fn queue_wait(mut self, wait: Duration) -> Self {
        self.queue_wait = wait;
        self
    }

    /// Payloads larger than this many bytes are neither sent nor fetched
    /// (default 32 MiB; Redis caps a value at 512 MB). They stay local.
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Reads through the remote but never writes or deletes anything there
    /// (for untrusted jobs such as pull-request CI).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Makes remote errors fail the call instead of being counted and
    /// skipped: a get whose remote read fails, a synchronous put whose
    /// remote write fails, and opening when Redis cannot be reached.
    /// Background writes can only count their errors. Default false.
    pub fn fatal_errors(mut self, yes: bool) -> Self {
        self.fatal_errors = yes;
        self
    }

    /// After a remote error, how long the tier is skipped before it is
    /// tried again (default 30 s).
    pub fn retry_interval(mut self, every: Duration) -> Self {
        self.retry_interval = every;
        self
    }

    /// Connect, read and write timeout of each remote request (default
    /// 1 s): a slower Redis counts as down.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Idle connections kept for reuse (default 4).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Makes [`crate::Store::delete`] and [`crate::Store::clear`] remove
    /// the entries from Redis too (default false: they touch the local
    /// cache only). Shared blobs are left to expire.
    pub fn delete_remote(mut self, yes: bool) -> Self {
        self.delete_remote = yes;
        self
    }

    /// With a `rediss://` URL: trust the CA certificates in this PEM file
    /// instead of the system's roots (a team's own CA). Read at open.
    pub fn ca_file(mut self, pem: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(pem.into());
        self
    }

    /// With a `rediss://` URL: present this client certificate chain and
    /// its private key (PEM files, read at open) to a Redis that requires
    /// client certificates (`tls-auth-clients yes`).
    pub fn client_cert(
        mut self,
        cert_pem: impl Into<PathBuf>,
        key_pem: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The URL with its password replaced by `***`, for messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with the password (userinfo or `pass=` query) masked.
fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let (start, end) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
            out.replace_range(start..end, "***");
        }
    }
    if let Some(p) = out.find("pass=") {
        let start = p + 5;
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// Whether the tier is being used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RemoteState {
    /// Requests go to Redis.
    #[default]
    Up,
    /// A recent error opened the circuit breaker: Redis is skipped until
    /// the retry interval has passed.
    Down,
}

impl RemoteState {
    /// `"up"` or `"down"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RemoteState::Up => "up",
            RemoteState::Down => "down",
        }
    }
}

/// Figures of the remote tier, counted by this process since the store
/// was opened (see [`crate::Stats::remote`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// The URL, password masked.
    pub url: String,
    /// The key prefix.
    pub prefix: String,
    /// Up, or skipped after an error.
    pub state: RemoteState,
    /// Writes and deletes are never sent.
    pub read_only: bool,
    /// Local misses served from Redis (verified and stored locally).
    pub hits: u64,
    /// Local misses Redis could not serve either.
    pub misses: u64,
    /// Requests that failed (connection, timeout, server error).
    pub errors: u64,
    /// Remote values that failed verification (never served).
    pub corrupt: u64,
    /// Entries written to Redis.
    pub writes: u64,
    /// Blobs Redis already held, so their bytes were not sent again.
    pub deduplicated: u64,
    /// Requests skipped while the tier was down.
    pub skipped: u64,
    /// Writes not sent because the background queue stayed full for the
    /// whole [`RemoteOptions::queue_wait`] (or because the store closed
    /// before they could be sent within its drain budget).
    pub dropped: u64,
    /// Puts that found the background queue full and waited for room
    /// (backpressure); those that got it are sent, the others `dropped`.
    pub waited: u64,
    /// Payloads neither sent nor fetched for being over `max_payload`.
    pub too_large: u64,
    /// Entries removed from Redis ([`RemoteOptions::delete_remote`]).
    pub deleted: u64,
    /// Writes waiting in the background queue now.
    pub queued: u64,
    /// Requests that reached Redis (successes and errors), for `latency_us`.
    pub requests: u64,
    /// Mean latency of those requests, in microseconds.
    pub latency_us: u64,
}

/// The store's handle on its remote tier: a no-op when none is configured.
/// Its methods (`open`, `fill` on a local miss, `after_put`,
/// `after_delete`, `drain`, `stats`, and `pending_record`, `settle`,
/// `handle_dropped` for hits not stored yet) live in `tier.rs`; a build without
/// the `redis` feature gets the no-op versions below.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    #[cfg(feature = "redis")]
    tier: Option<tier::Tier>,
}

#[cfg(not(feature = "redis"))]
impl Remote {
    /// No tier; asking for one is an error in this build.
    pub fn open(
        opts: Option<&RemoteOptions>,
        _store: &crate::options::StoreOptions,
    ) -> Result<Self> {
        match opts {
            None => Ok(Remote::default()),
            Some(opts) => Err(remote_error(
                opts,
                "this build of blobcache has no remote tier (built without the \
                 `redis` feature); rebuild with it or drop the remote option",
            )),
        }
    }

    /// Never fills anything.
    pub fn fill(&self, _: &Store, _: &[u8], _: u64) -> Result<Option<crate::store::Filled>> {
        Ok(None)
    }

    /// Sends nothing.
    pub fn after_put(
        &self,
        _: &Store,
        _: &[u8],
        _: Option<(crate::record::Codec, Vec<u8>)>,
        _: &PutReport,
        _: &crate::options::PutOptions,
    ) -> Result<()> {
        Ok(())
    }

    /// Deletes nothing.
    pub fn after_delete(&self, _: &[u8], _: bool) -> Result<()> {
        Ok(())
    }

    /// Nothing is queued.
    pub fn drain(&self) {}

    /// No hit is pending.
    pub fn pending_record(&self, _: &[u8], _: u64) -> Option<crate::record::Record> {
        None
    }

    /// No hit is pending.
    pub fn settle(&self, _: &Store, _: &[u8]) {}

    /// No hit is pending.
    pub fn handle_dropped(&self, _: &Store) {}

    /// No figures.
    pub fn stats(&self) -> Option<RemoteStats> {
        None
    }
}

/// Builds the error of a failed remote request.
pub(crate) fn remote_error(opts: &RemoteOptions, reason: impl Into<String>) -> Error {
    Error::Remote {
        url: opts.redacted_url(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("unix:///tmp/r.sock?db=1&pass=pw&user=u"),
            "unix:///tmp/r.sock?db=1&pass=***&user=u"
        );
    }
}
