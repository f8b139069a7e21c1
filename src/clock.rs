//! Time as the store sees it.
//!
//! All timestamps in blobcache are milliseconds since the Unix epoch (`u64`).
//! The clock is injectable so expiry can be tested without sleeping.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since 1970-01-01 UTC. A clock set before the epoch reads 0.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        system_time_ms(SystemTime::now())
    }
}

/// Converts a `SystemTime` to milliseconds since the epoch, saturating: times
/// before the epoch are 0 and times past `u64::MAX` ms are `u64::MAX`.
pub fn system_time_ms(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// Adds a duration to a timestamp, saturating at `u64::MAX`: an expiry
/// of `u64::MAX` is only reached by a clock that saturated too.
pub fn add_ms(at: u64, d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    at.saturating_add(ms)
}

/// A clock that only moves when told to; for tests and simulations.
///
/// ```
/// use blobcache::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `ms` milliseconds since the epoch.
    pub fn new(ms: u64) -> Self {
        ManualClock {
            ms: AtomicU64::new(ms),
        }
    }

    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let now = self.ms.load(Ordering::SeqCst);
        self.ms.store(add_ms(now, d), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}
