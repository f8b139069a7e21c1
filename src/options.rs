//! Options for opening a store and for writing entries.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::gc::GcOptions;
use crate::key::{Category, TtlPolicy};
pub use crate::policy::{Durability, Sharing};
use crate::secrets::SecretGuard;

/// Options for [`crate::Store::open`], built with setters:
///
/// ```
/// use blobcache::{Durability, StoreOptions};
///
/// let opts = StoreOptions::default()
///     .compression_level(9)
///     .durability(Durability::Synced)
///     .drop_header("X-Api-Key");
/// assert_eq!(opts.get_compression_level(), 9);
/// ```
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub(crate) compression_level: i32,
    pub(crate) durability: Durability,
    pub(crate) cache_capacity: u64,
    pub(crate) inline_threshold: usize,
    pub(crate) ttl: TtlPolicy,
    pub(crate) drop_headers: Vec<String>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) flush_interval: Duration,
    pub(crate) staging_grace: Duration,
    pub(crate) sharing: Sharing,
    pub(crate) owner_timeout: Duration,
    pub(crate) standby: bool,
    pub(crate) secrets: SecretGuard,
    pub(crate) stale_if_error: Duration,
    pub(crate) max_size: Option<u64>,
    pub(crate) gc_interval: Option<Duration>,
    pub(crate) gc: GcOptions,
    pub(crate) track_access: bool,
    pub(crate) memory_tier: u64,
    pub(crate) memory_tier_max_staleness: Duration,
    pub(crate) remote: Option<crate::remote::RemoteOptions>,
    pub(crate) format: Option<u32>,
}

/// Blobs whose stored (compressed) size is at most this many bytes live in
/// the index by default rather than as files.
pub const DEFAULT_INLINE_THRESHOLD: usize = 16 * 1024;
/// Largest accepted [`StoreOptions::inline_threshold`]: payloads above it
/// are files, whatever the setting says.
pub const MAX_INLINE_THRESHOLD: usize = 1024 * 1024;

/// How long after expiry [`crate::Store::get_or_fetch`] may still serve an
/// entry when the upstream fails (7 days).
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compression_level: 3,
            durability: Durability::Buffered,
            cache_capacity: 64 * 1024 * 1024,
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            ttl: TtlPolicy::default(),
            drop_headers: Vec::new(),
            clock: Arc::new(SystemClock),
            flush_interval: Duration::from_millis(1000),
            staging_grace: Duration::from_secs(60),
            sharing: Sharing::Shared,
            owner_timeout: Duration::from_secs(10),
            standby: false,
            secrets: SecretGuard::default(),
            stale_if_error: DEFAULT_STALE_IF_ERROR,
            max_size: None,
            gc_interval: None,
            gc: GcOptions::default(),
            track_access: true,
            memory_tier: 0,
            memory_tier_max_staleness: Duration::from_secs(1),
            remote: None,
            format: None,
        }
    }
}

impl StoreOptions {
    /// The on-disk format of a new cache: 1 (the default today) or 2, the
    /// storage core v2 (payloads in append-only pack files, a lean sled
    /// index; see ARCHITECTURE.md §5). Left unset, an existing cache
    /// opens in the format its `VERSION` file names. Asking a format-1
    /// cache for format 2 **migrates it in place** at open: every entry,
    /// expired ones included, is carried over with its times, headers,
    /// category and pin, crash-safely (a `kill -9` at any point leaves a
    /// cache that opens, in format 1 or 2, with every entry); it needs the
    /// cache to itself (another process using it makes the open fail with
    /// [`crate::Error::Locked`] after the owner timeout, changing nothing)
    /// and room for the new copy beside the old one until it is done.
    /// Asking a format-2 cache for format 1 is an error (no way back);
    /// any other number is refused at open.
    ///
    /// Format 2 is being brought up: one process at a time (a second one
    /// gets a clear error rather than becoming a guest), no remote tier,
    /// no size cap, no background sweep (run [`crate::Store::gc`]);
    /// verify, export and import work (archives are the same for both
    /// formats; exporting by access time is refused, access times are not
    /// tracked yet); counters restart at each open.
    pub fn format(mut self, format: u32) -> Self {
        self.format = Some(format);
        self
    }

    /// The format asked for with [`StoreOptions::format`], if any.
    pub fn get_format(&self) -> Option<u32> {
        self.format
    }

    /// zstd level for new blobs, clamped to `-7..=19` (default 3).
    pub fn compression_level(mut self, level: i32) -> Self {
        self.compression_level = level.clamp(crate::blobs::MIN_LEVEL, crate::blobs::MAX_LEVEL);
        self
    }

    /// The configured compression level. Named `get_` because
    /// [`StoreOptions::compression_level`] is the builder method (the
    /// convention of `std::process::Command`; see ARCHITECTURE.md, "API
    /// naming").
    pub fn get_compression_level(&self) -> i32 {
        self.compression_level
    }

    /// When writes are acknowledged (default [`Durability::Buffered`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Memory sled may use for its page cache, in bytes (default 64 MiB).
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Blobs whose stored size is at most this many bytes are kept inline
    /// in the index instead of as files (default 16 KiB, at most
    /// [`MAX_INLINE_THRESHOLD`]: larger values are clamped, so one put's
    /// index change always fits in a journal frame).
    pub fn inline_threshold(mut self, bytes: usize) -> Self {
        self.inline_threshold = bytes.min(MAX_INLINE_THRESHOLD);
        self
    }

    /// The TTL table used when a put names a category but no TTL.
    pub fn ttl_policy(mut self, policy: TtlPolicy) -> Self {
        self.ttl = policy;
        self
    }

    /// Overrides the default TTL of one category.
    pub fn category_ttl(mut self, category: Category, ttl: Duration) -> Self {
        self.ttl = self.ttl.with(category, ttl);
        self
    }

    /// A response header never to store (compared case-insensitively), in
    /// addition to Authorization, Cookie, Set-Cookie and Proxy-Authorization.
    pub fn drop_header(mut self, name: impl Into<String>) -> Self {
        self.drop_headers.push(name.into());
        self
    }

    /// The clock used for TTLs and timestamps (default: system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often the index is flushed to disk and its journal trimmed
    /// (default 1 s). Acknowledged writes are safe in the journal between
    /// flushes; this bounds how much is replayed after a crash.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Refuses every write whose payload, stored header values, content
    /// type or signature contains one of `secrets` (API keys, tokens), with
    /// [`crate::Error::SecretInPayload`]; the error never repeats the secret.
    /// Streamed payloads ([`crate::Store::put_reader`]) are scanned as they
    /// arrive, across chunk boundaries, and a refused stream leaves nothing
    /// behind. Headers that are always dropped (`Authorization`, `Cookie`,
    /// ...) or named in [`StoreOptions::drop_header`] are removed before the
    /// check, so passing a request's headers along is fine. Empty secrets
    /// are ignored; calling this again adds to the list. The secrets never
    /// appear in this struct's `Debug` output.
    ///
    /// ```
    /// use blobcache::{Error, PutOptions, Store, StoreOptions};
    ///
    /// # fn main() -> blobcache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let api_key = "k-3f9a1c77";
    /// let store = Store::open(dir.path(), StoreOptions::default().deny_secrets([api_key]))?;
    ///
    /// // An upstream that echoes the key back in its response:
    /// let body = format!(r#"{{"id":1,"next":"/page/2?api_key={api_key}"}}"#);
    /// let err = store.put("tmdb", "list/1", body.as_bytes(), &PutOptions::new()).unwrap_err();
    /// assert!(matches!(err, Error::SecretInPayload { .. }));
    /// assert!(!err.to_string().contains(api_key));
    /// assert!(store.get("tmdb", "list/1")?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn deny_secrets<S: AsRef<[u8]>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets.extend(secrets);
        self
    }

    /// How long after its expiry an entry may still be served by
    /// [`crate::Store::get_or_fetch`] when the fetch fails
    /// (stale-if-error; default 7 days). Entries past this are not served,
    /// and the fetch error is returned instead.
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.stale_if_error = grace;
        self
    }

    /// Keeps up to `bytes` of decoded, recently read payloads in this
    /// process's memory (default 0: off), so a hot [`crate::Store::get`]
    /// skips the index, decompression and hashing. Entries leave it least
    /// recently used first, when their TTL runs out, and when this process
    /// puts, deletes, touches or clears them. Writes by *other processes*
    /// sharing the cache are not seen by this tier until an entry has been
    /// held [`StoreOptions::memory_tier_max_staleness`] (default 1 s).
    /// A hit served from memory carries the metadata as it was loaded (its
    /// `hits` and `last_access` do not move while it stays in memory; the
    /// hit is still counted). Off by default because it trades that
    /// cross-process staleness and memory for speed: turn it on in a
    /// process that reads the same entries again and again.
    ///
    /// ```
    /// use blobcache::{PutOptions, Store, StoreOptions};
    ///
    /// # fn main() -> blobcache::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(dir.path(), StoreOptions::default().memory_tier(32 << 20))?;
    /// store.put("tmdb", "movie/603", b"{\"id\":603}", &PutOptions::new())?;
    /// let first = store.get("tmdb", "movie/603")?; // from the index, now kept in memory
    /// let again = store.get("tmdb", "movie/603")?; // from memory
    /// assert_eq!(first, again);
    /// # Ok(())
    /// # }
    /// ```
    pub fn memory_tier(mut self, bytes: u64) -> Self {
        self.memory_tier = bytes;
        self
    }

    /// How long the memory tier may serve an entry before reloading it
    /// from the index, which bounds how long a change made by another
    /// process goes unseen (default 1 s; the entry's TTL applies as well).
    pub fn memory_tier_max_staleness(mut self, max: Duration) -> Self {
        self.memory_tier_max_staleness = max;
        self
    }

    /// Puts a shared remote tier (a Redis server) behind this cache: a
    /// local miss reads through it, a put writes through to it. See
    /// [`crate::RemoteOptions`] and the README's remote-tier section.
    /// Opening fails with [`crate::Error::Remote`] when the URL is not
    /// usable or Redis refuses the credentials; a Redis that is down only
    /// leaves the tier skipped. Default: none.
    pub fn remote(mut self, remote: crate::remote::RemoteOptions) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Staging files in `tmp/` left by a dead writer are removed once they
    /// are this old (default 60 s).
    pub fn staging_grace(mut self, grace: Duration) -> Self {
        self.staging_grace = grace;
        self
    }

    /// Whether other processes may use the cache at the same time (default
    /// [`Sharing::Shared`]).
    pub fn sharing(mut self, sharing: Sharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// How long a guest waits for the owner process to answer a request,
    /// and how long opening (or taking over) waits for an owner to appear
    /// or for an unshared cache to be released (default 10 s). A hung owner
    /// yields [`crate::Error::OwnerTimeout`] after this long, never a hang.
    pub fn owner_timeout(mut self, timeout: Duration) -> Self {
        self.owner_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// A guest that stands by takes the cache over as soon as its owner
    /// exits or dies (it checks every 50 ms), instead of at its next
    /// request: for long-running processes such as `blobcache serve`, so
    /// that short-lived ones find an owner that stays. Default: false.
    pub fn standby(mut self, yes: bool) -> Self {
        self.standby = yes;
        self
    }

    /// A cap on the bytes the cache occupies on disk (blob files by their
    /// allocated blocks, inline blobs, the index and its journal). A put
    /// that crosses it wakes a background sweep that evicts the least
    /// recently used unpinned entries; the put itself never fails for it.
    /// Sweeps run by [`crate::Store::gc`] honour it too unless their
    /// options set their own cap. Default: no cap.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Runs a background GC sweep this often while the store is open (the
    /// thread stops when the last handle is dropped). Default: off.
    pub fn gc_interval(mut self, every: Duration) -> Self {
        self.gc_interval = Some(every.max(Duration::from_millis(10)));
        self
    }

    /// Options of the background sweeps (default [`GcOptions::default`];
    /// `wait` is ignored: a background sweep skips its turn when another
    /// sweep runs).
    pub fn gc_options(mut self, opts: GcOptions) -> Self {
        self.gc = opts;
        self
    }

    /// Whether gets record their access time and hit count (in batches)
    /// for LRU eviction and `hits` (default true). Turning it off saves a
    /// little per get; eviction then goes by write time.
    pub fn track_access(mut self, yes: bool) -> Self {
        self.track_access = yes;
        self
    }
}

/// Options for one write.
///
/// ```
/// use blobcache::{Category, PutOptions};
/// use std::time::Duration;
///
/// let opts = PutOptions::new()
///     .category(Category::List)
///     .header("Content-Type", "application/json")
///     .header("ETag", "\"abc\"");
/// let dump = PutOptions::new().category(Category::OfflineDump).pinned(true);
/// let short = PutOptions::new().ttl(Duration::from_secs(90));
/// # let _ = (opts, dump, short);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) category: Category,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) content_type: Option<String>,
    pub(crate) fetched_at: Option<u64>,
    pub(crate) pinned: bool,
}

impl PutOptions {
    /// Defaults: category metadata, TTL from the store's policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// An explicit TTL, overriding the category's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The category (picks the TTL when none is given).
    pub fn category(mut self, category: Category) -> Self {
        self.category = category;
        self
    }

    /// Adds a response header to keep with the payload. Secret-bearing
    /// headers are dropped at put time.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds several headers.
    pub fn headers<N: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        self.headers
            .extend(headers.into_iter().map(|(n, v)| (n.into(), v.into())));
        self
    }

    /// The payload's content type.
    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }

    /// When the upstream produced the payload (ms since epoch; default now).
    pub fn fetched_at(mut self, ms: u64) -> Self {
        self.fetched_at = Some(ms);
        self
    }

    /// Pinned entries are never evicted to honour a size cap.
    pub fn pinned(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }
}
