//! Get-or-fetch: one call that serves the cache, fetches on a miss with
//! single-flight, stores the answer, and falls back to a stale entry when
//! the upstream fails (stale-if-error).

mod flight;
mod lock;
#[cfg(feature = "async")]
mod nonblocking;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use flight::Flights;
use flight::{Landing, Role};
use lock::KeyLock;

use crate::error::{Error, FetchError};
use crate::options::PutOptions;
use crate::record::redact_headers;
use crate::store::{Hit, Store};

/// What the fetch closure of [`Store::get_or_fetch`] got from the upstream:
/// the body, the response headers, and how long to keep it.
///
/// ```
/// use blobcache::Fetched;
/// use std::time::Duration;
///
/// let f = Fetched::new(br#"{"id":1}"#.to_vec())
///     .header("Content-Type", "application/json")
///     .header("Cache-Control", "public, max-age=600")
///     .honor_cache_control();
/// assert_eq!(f.get_ttl(), Some(Duration::from_secs(600)));
/// assert!(!f.is_no_store());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    ttl: Option<Duration>,
    no_store: bool,
}

impl Fetched {
    /// A response with this body, no headers, and the TTL of the put
    /// options given to `get_or_fetch`.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Fetched {
            body: body.into(),
            ..Fetched::default()
        }
    }

    /// Adds a response header. Credential headers (`Authorization`,
    /// `Set-Cookie`, ...) are dropped before anything is stored.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds several response headers.
    pub fn headers<N: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        self.headers
            .extend(headers.into_iter().map(|(n, v)| (n.into(), v.into())));
        self
    }

    /// Keeps the response for `ttl`, overriding the put options' TTL and
    /// category.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Returns the response to the caller without caching it (true), as
    /// `Cache-Control: no-store` asks.
    pub fn no_store(mut self, no_store: bool) -> Self {
        self.no_store = no_store;
        self
    }

    /// Applies a `Cache-Control` value (see [`CacheControl`]): `no-store`
    /// turns caching off, `no-cache` stores the response already expired
    /// (served only as stale-if-error), and `s-maxage` or `max-age` set the
    /// TTL. Without any of these the TTL is left as it was.
    pub fn cache_control(mut self, value: &str) -> Self {
        let cc = CacheControl::parse(value);
        self.no_store |= cc.no_store;
        if let Some(ttl) = cc.ttl() {
            self.ttl = Some(ttl);
        }
        self
    }

    /// Applies the `Cache-Control` headers among this response's headers
    /// (all of them, as one list), as [`Fetched::cache_control`] does.
    pub fn honor_cache_control(self) -> Self {
        let value = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(",");
        self.cache_control(&value)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The headers, as given. Named `get_` because [`Fetched::headers`] is
    /// the builder method (the convention of `std::process::Command`; see
    /// ARCHITECTURE.md, "API naming").
    pub fn get_headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The TTL set on this response, if any. Named `get_` because
    /// [`Fetched::ttl`] is the builder method.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// True when the response must not be cached.
    pub fn is_no_store(&self) -> bool {
        self.no_store
    }
}

/// The caching directives of a `Cache-Control` header that blobcache acts
/// on. Unknown directives and malformed values are ignored; names are
/// case-insensitive; a repeated `max-age` or `s-maxage` keeps the smallest.
///
/// blobcache treats itself as a shared cache (one cache directory serves
/// several processes and is carried between CI runs), so `s-maxage` wins
/// over `max-age`. `private`, `must-revalidate` and the rest are ignored:
/// the cache holds one application's own API responses.
///
/// ```
/// use blobcache::CacheControl;
/// use std::time::Duration;
///
/// let cc = CacheControl::parse("public, max-age=3600, s-maxage=600");
/// assert_eq!(cc.ttl(), Some(Duration::from_secs(600)));
///
/// assert!(CacheControl::parse("no-store").no_store);
/// // no-cache: may be stored, but must not be served fresh.
/// assert_eq!(CacheControl::parse("no-cache").ttl(), Some(Duration::ZERO));
/// assert_eq!(CacheControl::parse("public").ttl(), None);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age=N`: fresh for N seconds.
    pub max_age: Option<Duration>,
    /// `s-maxage=N`: fresh for N seconds in shared caches.
    pub s_maxage: Option<Duration>,
    /// `no-store`: do not cache at all.
    pub no_store: bool,
    /// `no-cache`: do not serve without revalidating.
    pub no_cache: bool,
}

impl CacheControl {
    /// Parses a header value such as `"public, max-age=600"`.
    pub fn parse(value: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = arg
                .and_then(|a| a.parse::<u64>().ok())
                .map(Duration::from_secs);
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "no-store" => cc.no_store = true,
                "no-cache" => cc.no_cache = true,
                "max-age" => cc.max_age = min_some(cc.max_age, seconds),
                "s-maxage" => cc.s_maxage = min_some(cc.s_maxage, seconds),
                _ => {}
            }
        }
        cc
    }

    /// How long the response may be served fresh: zero with `no-cache`,
    /// else `s-maxage`, else `max-age`, else `None` (no opinion: the
    /// caller's TTL applies).
    pub fn ttl(&self) -> Option<Duration> {
        if self.no_cache {
            return Some(Duration::ZERO);
        }
        self.s_maxage.or(self.max_age)
    }
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => a.or(b),
    }
}

/// Where the answer of [`Store::get_or_fetch`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchStatus {
    /// A live cache entry; the closure did not run.
    Hit,
    /// A fresh answer from the upstream: this call's closure, or the one
    /// fetch another thread made for the same key at the same time.
    Fetched,
    /// The fetch failed and an expired entry within the stale-if-error
    /// grace was served instead.
    Stale,
}

/// The answer of [`Store::get_or_fetch`].
#[derive(Debug)]
pub struct Fetch<E> {
    /// The body.
    pub data: Vec<u8>,
    /// The response headers, credentials removed.
    pub headers: Vec<(String, String)>,
    /// Where the answer came from.
    pub status: FetchStatus,
    /// When the upstream produced the body (ms since epoch).
    pub fetched_at: u64,
    /// When the cached entry expires (ms since epoch); `None` when the
    /// answer was not stored (`no-store`).
    pub expires_at: Option<u64>,
    /// With [`FetchStatus::Stale`]: the error this call's closure returned
    /// (`None` when another thread's fetch failed and this call shared its
    /// fallback).
    pub error: Option<E>,
}

impl<E> Fetch<E> {
    /// True when an expired entry was served because the fetch failed.
    pub fn is_stale(&self) -> bool {
        self.status == FetchStatus::Stale
    }

    fn from_hit(hit: Hit, error: Option<E>) -> Fetch<E> {
        let status = match hit.stale {
            true => FetchStatus::Stale,
            false => FetchStatus::Hit,
        };
        Fetch {
            data: hit.data,
            headers: hit.meta.headers,
            status,
            fetched_at: hit.meta.fetched_at,
            expires_at: Some(hit.meta.expires_at),
            error,
        }
    }

    /// The same answer without the error, to hand to waiting threads.
    fn shared(&self) -> Landing {
        Some(Arc::new(self.without_error()))
    }

    /// A copy of the answer without the error (of any error type).
    fn without_error<F>(&self) -> Fetch<F> {
        Fetch {
            data: self.data.clone(),
            headers: self.headers.clone(),
            status: self.status,
            fetched_at: self.fetched_at,
            expires_at: self.expires_at,
            error: None,
        }
    }
}

/// What the leader does after [`Store::prepare_fetch`].
enum Prepared<E> {
    /// The entry is there now: serve it, do not fetch.
    Cached(Fetch<E>),
    /// Fetch, holding the key's cross-process lock when one could be had.
    Fetch(Option<KeyLock>),
}

impl Store {
    /// Serves `(backend, signature)` from the cache, or fetches it once.
    ///
    /// - A live entry is returned ([`FetchStatus::Hit`]); `fetch` does not run.
    /// - Otherwise `fetch` runs, its answer is stored with `opts` (the
    ///   [`Fetched`] TTL, if any, wins over the options' TTL and category;
    ///   `no-store` answers are returned but not stored), and returned
    ///   ([`FetchStatus::Fetched`]).
    /// - Single-flight: concurrent callers in this process asking for the
    ///   same key wait for the one fetch in progress and share its answer
    ///   instead of all calling the upstream. If that fetch fails (or its
    ///   closure panics), each waiter tries again, one becoming the new
    ///   fetcher. Waiters wait as long as the fetch takes: give the HTTP
    ///   client a timeout. Do not call `get_or_fetch` for the same key from
    ///   inside `fetch` (it would wait for itself).
    /// - Across processes: before calling `fetch`, the caller takes an
    ///   exclusive lock on `locks/fetch/<blake3 of the key>.lock` and looks
    ///   the key up again, so another process missing the same key at the
    ///   same time waits for this fetch and then serves its answer as a
    ///   hit. The kernel releases the lock when its holder dies, so a
    ///   killed fetcher blocks nobody. On a read-only cache there is no
    ///   lock and each process fetches on its own.
    /// - Stale-if-error: when `fetch` fails and an expired entry exists that
    ///   expired at most [`crate::StoreOptions::stale_if_error`] ago, it is
    ///   returned flagged [`FetchStatus::Stale`] with the error in
    ///   [`Fetch::error`]. With nothing to serve, the closure's error comes
    ///   back unchanged as [`FetchError::Upstream`].
    ///
    /// Cache failures (an invalid key, I/O errors, a response refused by
    /// [`crate::StoreOptions::deny_secrets`]) are [`FetchError::Store`].
    ///
    /// ```
    /// use blobcache::{Category, FetchStatus, Fetched, PutOptions, Store, StoreOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let opts = PutOptions::new().category(Category::Metadata);
    ///
    /// // Stands in for an HTTP call: returns the body and the headers.
    /// let call_upstream = || -> Result<Fetched, std::io::Error> {
    ///     Ok(Fetched::new(br#"{"id":603}"#.to_vec())
    ///         .header("Cache-Control", "max-age=3600")
    ///         .honor_cache_control())
    /// };
    ///
    /// let first = store.get_or_fetch("tmdb", "movie/603", &opts, call_upstream)?;
    /// assert_eq!(first.status, FetchStatus::Fetched);
    ///
    /// let second = store.get_or_fetch("tmdb", "movie/603", &opts, || -> Result<Fetched, std::io::Error> {
    ///     unreachable!("served from the cache")
    /// })?;
    /// assert_eq!(second.status, FetchStatus::Hit);
    /// assert_eq!(second.data, br#"{"id":603}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_or_fetch<E, F>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        opts: &PutOptions,
        fetch: F,
    ) -> Result<Fetch<E>, FetchError<E>>
    where
        F: FnOnce() -> Result<Fetched, E>,
    {
        let signature = signature.as_ref();
        let key = crate::key::encode(backend, signature)?;
        let mut guard = loop {
            if let Some(answer) = self.serve_live(backend, signature)? {
                return Ok(answer);
            }
            match self.flights().join(&key) {
                Role::Leader(guard) => break guard,
                Role::Waiter(flight) => {
                    if let Some(answer) = flight.wait() {
                        return Ok(answer.without_error());
                    }
                }
            }
        };
        let _lock = match self.prepare_fetch(backend, signature, &key)? {
            Prepared::Cached(answer) => {
                guard.land(answer.shared());
                return Ok(answer);
            }
            Prepared::Fetch(lock) => lock,
        };
        let answer = self.settle(backend, signature, opts, fetch())?;
        guard.land(answer.shared());
        Ok(answer)
    }

    /// Step 1 of get-or-fetch (sync and async): a live entry, if any.
    fn serve_live<E>(&self, backend: &str, signature: &[u8]) -> Result<Option<Fetch<E>>, Error> {
        Ok(self
            .get(backend, signature)?
            .map(|hit| Fetch::from_hit(hit, None)))
    }

    /// Step 2, for this process's leader of the key: takes the key's
    /// cross-process lock (blocking while another process fetches it), then
    /// looks again, since a flight here or a fetch in another process may
    /// have stored the entry since our miss.
    fn prepare_fetch<E>(
        &self,
        backend: &str,
        signature: &[u8],
        key: &[u8],
    ) -> Result<Prepared<E>, Error> {
        let lock = KeyLock::acquire(self, key);
        if self.contains(backend, signature)?
            && let Some(hit) = self.get(backend, signature)?
        {
            return Ok(Prepared::Cached(Fetch::from_hit(hit, None)));
        }
        Ok(Prepared::Fetch(lock))
    }

    /// Step 3: what the upstream's result becomes. An answer is stored
    /// (unless `no-store`) and returned; an error falls back to an expired
    /// entry within the stale-if-error grace, or comes back unchanged.
    fn settle<E>(
        &self,
        backend: &str,
        signature: &[u8],
        opts: &PutOptions,
        fetched: Result<Fetched, E>,
    ) -> Result<Fetch<E>, FetchError<E>> {
        match fetched {
            Ok(fetched) => Ok(self.store_fetched(backend, signature, opts, fetched)?),
            Err(e) => match self.stale_within_grace(backend, signature) {
                Some(hit) => Ok(Fetch::from_hit(hit, Some(e))),
                None => Err(FetchError::Upstream(e)),
            },
        }
    }

    /// How many callers of this store are waiting for the fetch of
    /// `(backend, signature)` in progress (0 when none is). For tests
    /// that must know a waiter has joined; not a stable API.
    #[cfg(feature = "test_hooks")]
    #[doc(hidden)]
    pub fn fetch_waiters(&self, backend: &str, signature: impl AsRef<[u8]>) -> usize {
        crate::key::encode(backend, signature.as_ref())
            .map_or(0, |key| self.flights().waiters(&key))
    }

    /// Stores what the closure fetched (unless `no-store`) and builds the
    /// answer.
    fn store_fetched<E>(
        &self,
        backend: &str,
        signature: &[u8],
        opts: &PutOptions,
        fetched: Fetched,
    ) -> Result<Fetch<E>, Error> {
        let mut put_opts = opts.clone().headers(fetched.headers);
        if let Some(ttl) = fetched.ttl {
            put_opts = put_opts.ttl(ttl);
        }
        let fetched_at = put_opts
            .fetched_at
            .unwrap_or_else(|| self.options().clock.now_ms());
        let put_opts = put_opts.fetched_at(fetched_at);
        let expires_at = match fetched.no_store {
            true => None,
            false => Some(
                self.put(backend, signature, &fetched.body, &put_opts)?
                    .expires_at,
            ),
        };
        Ok(Fetch {
            data: fetched.body,
            headers: redact_headers(&put_opts.headers, &self.options().drop_headers),
            status: FetchStatus::Fetched,
            fetched_at,
            expires_at,
            error: None,
        })
    }

    /// The expired entry to serve when a fetch failed, if it expired within
    /// the stale-if-error grace. Cache errors here are logged, not
    /// returned: the caller gets the upstream error instead.
    fn stale_within_grace(&self, backend: &str, signature: &[u8]) -> Option<Hit> {
        let grace = self.options().stale_if_error;
        let now = self.options().clock.now_ms();
        let within = |expires_at| now <= crate::clock::add_ms(expires_at, grace);
        let found = self
            .meta(backend, signature)
            .and_then(|m| match m {
                Some(m) if within(m.expires_at) => self.get_stale(backend, signature),
                _ => Ok(None),
            })
            .unwrap_or_else(|e| {
                log::warn!("stale-if-error lookup of {backend} failed: {e}");
                None
            });
        found.filter(|hit| within(hit.meta.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let cc = CacheControl::parse(" Max-Age=60 , no-cache,S-MAXAGE=\"30\", x=1, max-age=10");
        assert_eq!(cc.max_age, Some(Duration::from_secs(10)));
        assert_eq!(cc.s_maxage, Some(Duration::from_secs(30)));
        assert!(cc.no_cache && !cc.no_store);
        assert_eq!(cc.ttl(), Some(Duration::ZERO));
        assert_eq!(CacheControl::parse("max-age=-1, max-age=abc").ttl(), None);
        assert_eq!(CacheControl::parse("").ttl(), None);
    }

    #[test]
    fn honor_cache_control_joins_repeated_headers() {
        let f = Fetched::new(b"x".to_vec())
            .header("cache-control", "public")
            .header("Cache-Control", "max-age=5")
            .header("CACHE-CONTROL", "no-store")
            .honor_cache_control();
        assert_eq!(f.get_ttl(), Some(Duration::from_secs(5)));
        assert!(f.is_no_store());
    }
}
