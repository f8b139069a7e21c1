//! Connections to Redis: a small pool of idle connections, and the
//! circuit breaker that skips Redis for a while after an error.
//!
//! The pool is a mutex around a stack of idle connections: a request takes
//! one (or connects), and gives it back only when the request succeeded, so
//! a connection in an unknown state after an error is never reused. That is
//! all the tier needs; a pooling crate would add its own threads and a
//! health-check round trip per checkout.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisResult};

/// Idle connections to one Redis.
pub struct Pool {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl Pool {
    /// A pool for `client`, keeping up to `max_idle` connections whose
    /// requests time out after `timeout`.
    pub fn new(client: Client, max_idle: usize, timeout: Duration) -> Pool {
        Pool {
            client,
            idle: Mutex::new(Vec::new()),
            max_idle,
            timeout,
        }
    }

    /// Runs `f` on a pooled connection. An idle connection that turns out
    /// to be dead (Redis restarted, or closed it) is dropped and `f` runs
    /// once more on a fresh one; a connection is given back only after a
    /// success.
    pub fn run<T>(&self, mut f: impl FnMut(&mut Connection) -> RedisResult<T>) -> RedisResult<T> {
        let idle = self.lock().pop();
        if let Some(mut con) = idle {
            match f(&mut con) {
                Ok(v) => return Ok(self.give_back(con, v)),
                Err(e) if !is_stale(&e) => return Err(e),
                Err(_) => {}
            }
        }
        let mut con = self.connect()?;
        let v = f(&mut con)?;
        Ok(self.give_back(con, v))
    }

    fn give_back<T>(&self, con: Connection, v: T) -> T {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(con);
        }
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }
}

/// True for the error of a connection the server has closed (as opposed to
/// a slow server: a timeout is not retried).
fn is_stale(e: &redis::RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

/// Skips Redis for `interval` after an error; then lets one request
/// through to probe it.
#[derive(Debug)]
pub struct Breaker {
    base: Instant,
    interval_ms: u64,
    /// Milliseconds since `base` until which Redis is skipped; 0: closed.
    open_until: AtomicU64,
}

impl Breaker {
    /// A closed breaker that opens for `interval` at each failure.
    pub fn new(interval: Duration) -> Breaker {
        Breaker {
            base: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            open_until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // +1: 0 means closed.
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// True when a request may go to Redis. Once the interval has passed,
    /// one caller gets through (and re-arms the breaker until it reports).
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        let next = now.saturating_add(self.interval_ms);
        self.open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A request failed: skip Redis for the interval. True when this
    /// opened a closed breaker.
    pub fn fail(&self) -> bool {
        let next = self.now().saturating_add(self.interval_ms);
        self.open_until.swap(next, Ordering::AcqRel) == 0
    }

    /// A request succeeded: close the breaker. True when it was open.
    pub fn succeed(&self) -> bool {
        if self.open_until.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// True while Redis is being skipped.
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::Breaker;
    use std::time::Duration;

    #[test]
    fn breaker_skips_then_lets_one_probe_through() {
        let b = Breaker::new(Duration::from_millis(30));
        assert!(b.allow());
        assert!(b.fail());
        assert!(b.is_open());
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "the interval passed: one probe");
        assert!(!b.allow(), "only one probe at a time");
        assert!(b.succeed());
        assert!(!b.is_open());
        assert!(b.allow());
    }
}
