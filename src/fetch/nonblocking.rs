//! [`Store::get_or_fetch_async`] (feature `async`): the same steps as
//! [`Store::get_or_fetch`], called from a tokio task. Each store step runs
//! on tokio's blocking pool (`spawn_blocking`), so no index or disk work,
//! and no wait for another process's fetch lock, ever holds a runtime
//! worker thread; a task waiting for another task's fetch awaits it.

use std::future::Future;

use super::flight::Role;
use super::{Fetch, FetchError, Fetched, Prepared};
use crate::error::Error;
use crate::options::PutOptions;
use crate::store::Store;

impl Store {
    /// [`Store::get_or_fetch`] for async callers: serves a live entry, or
    /// awaits `fetch` once, stores its answer and returns it, with the
    /// same single-flight, stale-if-error and error rules.
    ///
    /// - `fetch` is only polled when this call is the one that fetches;
    ///   otherwise it is dropped unpolled.
    /// - Single-flight covers tasks and threads alike: a task and a thread
    ///   asking for the same key in one process share one fetch, and a
    ///   waiting task yields to the runtime instead of blocking it.
    /// - Dropping the call (a timeout, an aborted task) while it fetches
    ///   ends its flight: the tasks waiting for it try again, one becoming
    ///   the new fetcher. A store step already handed to the blocking pool
    ///   runs to its end (a put is never cut in half).
    /// - The store steps run through `tokio::task::spawn_blocking`, so this
    ///   must be called inside a tokio runtime (current-thread or
    ///   multi-thread). A panic in a store step is resumed in the caller.
    ///
    /// ```
    /// use blobcache::{FetchStatus, Fetched, PutOptions, Store, StoreOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), StoreOptions::default())?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// runtime.block_on(async {
    ///     let opts = PutOptions::new();
    ///     // Stands in for an HTTP call made with an async client.
    ///     let call_upstream = async { Ok::<_, std::io::Error>(Fetched::new(&b"{\"id\":603}"[..])) };
    ///     let first = store.get_or_fetch_async("tmdb", "movie/603", &opts, call_upstream).await?;
    ///     assert_eq!(first.status, FetchStatus::Fetched);
    ///
    ///     let cached = async { unreachable!("served from the cache") };
    ///     let second = store
    ///         .get_or_fetch_async::<std::io::Error, _>("tmdb", "movie/603", &opts, cached)
    ///         .await?;
    ///     assert_eq!(second.status, FetchStatus::Hit);
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub async fn get_or_fetch_async<E, Fut>(
        &self,
        backend: &str,
        signature: impl AsRef<[u8]>,
        opts: &PutOptions,
        fetch: Fut,
    ) -> Result<Fetch<E>, FetchError<E>>
    where
        Fut: Future<Output = Result<Fetched, E>>,
        E: Send + 'static,
    {
        let (backend, signature) = (backend.to_owned(), signature.as_ref().to_vec());
        let key = crate::key::encode(&backend, &signature)?;
        let mut guard = loop {
            let (b, s) = (backend.clone(), signature.clone());
            if let Some(answer) = self.blocking(move |st| st.serve_live(&b, &s)).await?? {
                return Ok(answer);
            }
            match self.flights().join(&key) {
                Role::Leader(guard) => break guard,
                Role::Waiter(flight) => {
                    if let Some(answer) = flight.landed().await {
                        return Ok(answer.without_error());
                    }
                }
            }
        };
        let (b, s, k) = (backend.clone(), signature.clone(), key.clone());
        let prepared = self.blocking(move |st| st.prepare_fetch::<E>(&b, &s, &k));
        let _lock = match prepared.await?? {
            Prepared::Cached(answer) => {
                guard.land(answer.shared());
                return Ok(answer);
            }
            Prepared::Fetch(lock) => lock,
        };
        let fetched = fetch.await;
        let opts = opts.clone();
        let settled = self.blocking(move |st| st.settle(&backend, &signature, &opts, fetched));
        let answer = settled.await??;
        guard.land(answer.shared());
        Ok(answer)
    }

    /// Runs `work` on tokio's blocking pool with a handle to this store.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(done) => Ok(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Io {
                op: "finish a blocking step (the tokio runtime is shutting down) in",
                path: self.dir().to_path_buf(),
                source: std::io::Error::other(e),
            }),
        }
    }
}
