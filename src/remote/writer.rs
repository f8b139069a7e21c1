//! The background writer: a bounded queue of writes and one thread that
//! sends them to Redis in batches (everything queued, one pipeline per few
//! MiB), so a put does not wait for Redis.
//!
//! Backpressure instead of silent loss: a put that finds the queue full
//! waits for room, at most [`super::RemoteOptions::queue_wait`] (counted
//! in `waited`); only a put still finding it full then is not sent
//! (counted in `dropped`). The thread takes the whole queue at each turn,
//! so room comes back as soon as one batch has been taken, and a Redis
//! that keeps up never makes a put wait.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::tier::{Job, Shared};

/// The queue and its thread; dropping it sends what it can within the
/// drain budget and stops the thread.
#[derive(Debug)]
pub struct Writer {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// The jobs, and the two signals around them.
#[derive(Debug)]
struct Queue {
    state: Mutex<State>,
    /// Jobs arrived, or the writer is closing.
    arrived: Condvar,
    /// Jobs were taken or sent: room in the queue, maybe all sent.
    taken: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Jobs the thread took and is sending.
    sending: usize,
    /// Set when the writer is dropped past its drain budget: what is still
    /// queued is discarded (counted as dropped).
    closing: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Writer {
    /// Starts the thread with a queue of `capacity` jobs.
    pub fn spawn(shared: Arc<Shared>, capacity: usize) -> Writer {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            taken: Condvar::new(),
            capacity,
        });
        let (s, q) = (shared.clone(), queue.clone());
        let thread = std::thread::Builder::new()
            .name("blobcache-remote".into())
            .spawn(move || run(&q, &s))
            .map_err(|e| log::warn!("remote writer thread not started ({e}); writes stay local"))
            .ok();
        Writer {
            queue,
            thread,
            shared,
        }
    }

    /// Queues a write. A full queue makes the put wait for room, at most
    /// the queue wait; a write that still finds no room is dropped
    /// (counted), as is every write when the thread could not start.
    pub fn enqueue(&self, job: Job) {
        let counts = self.shared.counts();
        if self.thread.is_none() {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let q = &self.queue;
        let mut st = q.lock();
        let wait = self.shared.opts.queue_wait;
        if st.jobs.len() >= q.capacity {
            if !wait.is_zero() {
                counts.waited.fetch_add(1, Ordering::Relaxed);
            }
            st = q
                .taken
                .wait_timeout_while(st, wait, |st| st.jobs.len() >= q.capacity && !st.closing)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if st.jobs.len() >= q.capacity || st.closing {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // The thread waits only when it has nothing to do: a put wakes it
        // only then (a wake-up is a system call, and most puts need none).
        let wake = st.jobs.is_empty() && st.sending == 0;
        st.jobs.push_back(job);
        drop(st);
        if wake {
            q.arrived.notify_one();
        }
    }

    /// Writes queued or being sent.
    pub fn pending(&self) -> u64 {
        let st = self.queue.lock();
        (st.jobs.len() + st.sending) as u64
    }

    /// Waits until every queued write is sent, at most `budget`.
    pub fn drain(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        let q = &self.queue;
        let mut st = q.lock();
        while !st.jobs.is_empty() || st.sending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.thread.is_none() {
                return;
            }
            st = q
                .taken
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.drain(self.shared.drain_budget());
        self.queue.lock().closing = true;
        self.queue.arrived.notify_all();
        self.queue.taken.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: takes everything queued, sends it, tells waiting puts.
fn run(q: &Queue, shared: &Shared) {
    loop {
        let batch: Vec<Job> = {
            let mut st = q.lock();
            while st.jobs.is_empty() && !st.closing {
                st = q.arrived.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.closing {
                let left = st.jobs.len() as u64;
                shared.counts().dropped.fetch_add(left, Ordering::Relaxed);
                st.jobs.clear();
                return;
            }
            st.sending = st.jobs.len();
            st.jobs.drain(..).collect()
        };
        q.taken.notify_all();
        if let Err(e) = shared.write_batch(batch) {
            log::debug!("remote write failed: {e}");
        }
        q.lock().sending = 0;
        q.taken.notify_all();
    }
}
