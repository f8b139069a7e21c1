//! Single-flight within one process: the fetches in progress, one per key.
//! A caller either leads (fetches) or waits for the leader's answer; sync
//! callers wait on a condition variable, async callers (feature `async`) on
//! a `tokio::sync::Notify`, and both kinds share one map, so a thread and a
//! task asking for the same key also share one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::Fetch;

/// What a finished flight hands its waiters: the answer, or `None` when the
/// leader failed (or panicked, or its task was dropped) and each waiter
/// should try again itself.
pub(super) type Landing = Option<Arc<Fetch<()>>>;

/// The fetches in progress in this process, one per key (single-flight).
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Vec<u8>, Arc<Flight>>>,
}

/// One fetch in progress.
#[derive(Debug, Default)]
pub(super) struct Flight {
    /// `None` until the leader lands.
    landing: Mutex<Option<Landing>>,
    landed: Condvar,
    #[cfg(feature = "async")]
    landed_async: tokio::sync::Notify,
}

/// A caller's part in a flight.
pub(super) enum Role<'a> {
    /// This caller fetches; the guard lands the flight when dropped.
    Leader(LeaderGuard<'a>),
    /// Another caller is fetching; wait for it.
    Waiter(Arc<Flight>),
}

/// Lands the flight exactly once: with the answer via [`LeaderGuard::land`],
/// or with `None` when dropped without it (an error path, a panic in the
/// fetch closure, or an async leader's future dropped), so waiters never
/// hang on a dead leader.
pub(super) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: Vec<u8>,
    flight: Arc<Flight>,
    landed: bool,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These locks are never held across caller code, so a poisoned one
    // still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Flights {
    /// Joins the flight for `key`, or starts it (this caller leads).
    pub(super) fn join(&self, key: &[u8]) -> Role<'_> {
        let mut map = relock(&self.map);
        if let Some(flight) = map.get(key) {
            return Role::Waiter(flight.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.to_vec(), flight.clone());
        Role::Leader(LeaderGuard {
            flights: self,
            key: key.to_vec(),
            flight,
            landed: false,
        })
    }

    /// How many callers are waiting for the fetch of `key` in progress (0
    /// when none is). For tests that must know a waiter has joined.
    #[cfg_attr(not(feature = "test_hooks"), allow(dead_code))]
    pub(crate) fn waiters(&self, key: &[u8]) -> usize {
        // One reference is the map's, one the leader's; the rest wait.
        relock(&self.map)
            .get(key)
            .map_or(0, |f| Arc::strong_count(f).saturating_sub(2))
    }
}

impl Flight {
    #[cfg(feature = "async")]
    fn landing(&self) -> Option<Landing> {
        relock(&self.landing).clone()
    }

    /// Blocks the thread until the leader lands.
    pub(super) fn wait(&self) -> Landing {
        let landing = relock(&self.landing);
        let landing = self
            .landed
            .wait_while(landing, |l| l.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        landing.clone().flatten()
    }

    /// Waits, without blocking the thread, until the leader lands.
    #[cfg(feature = "async")]
    pub(super) async fn landed(&self) -> Landing {
        loop {
            // Registered before the check, so a landing between the check
            // and the await still wakes this waiter.
            let mut notified = std::pin::pin!(self.landed_async.notified());
            notified.as_mut().enable();
            if let Some(landing) = self.landing() {
                return landing;
            }
            notified.await;
        }
    }
}

impl LeaderGuard<'_> {
    /// Hands `landing` to every waiter and ends the flight.
    pub(super) fn land(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        relock(&self.flights.map).remove(&self.key);
        *relock(&self.flight.landing) = Some(landing);
        self.flight.landed.notify_all();
        #[cfg(feature = "async")]
        self.flight.landed_async.notify_waiters();
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.land(None);
    }
}
