//! The background writer: a bounded queue of writes and one thread that
//! sends them, so a put never waits for Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::tier::{Job, Shared};

/// The queue and its thread; dropping it sends what it can within the
/// drain budget and stops the thread.
#[derive(Debug)]
pub struct Writer {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    state: Arc<State>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct State {
    /// Jobs queued or being sent.
    pending: AtomicU64,
    /// Set when the writer is dropped past its drain budget: what is still
    /// queued is discarded.
    closing: AtomicBool,
}

impl Writer {
    /// Starts the thread with a queue of `capacity` jobs.
    pub fn spawn(shared: Arc<Shared>, capacity: usize) -> Writer {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let state = Arc::new(State::default());
        let (s, st) = (shared.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("blobcache-remote".into())
            .spawn(move || run(rx, &s, &st))
            .map_err(|e| log::warn!("remote writer thread not started ({e}); writes stay local"))
            .ok();
        Writer {
            tx: thread.as_ref().map(|_| tx),
            thread,
            state,
            shared,
        }
    }

    /// Queues a write; a full queue drops it (counted).
    pub fn enqueue(&self, job: Job) {
        let Some(tx) = &self.tx else {
            self.shared.counts().dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.state.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(job) {
            self.state.pending.fetch_sub(1, Ordering::AcqRel);
            self.shared.counts().dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes queued or being sent.
    pub fn pending(&self) -> u64 {
        self.state.pending.load(Ordering::Acquire)
    }

    /// Waits until the queue is empty, at most `budget`.
    pub fn drain(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        while self.pending() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.drain(self.shared.drain_budget());
        self.state.closing.store(true, Ordering::Release);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Job>, shared: &Shared, state: &State) {
    while let Ok(job) = rx.recv() {
        if state.closing.load(Ordering::Acquire) {
            shared.counts().dropped.fetch_add(1, Ordering::Relaxed);
        } else if let Err(e) = shared.write(job) {
            log::debug!("remote write failed: {e}");
        }
        state.pending.fetch_sub(1, Ordering::AcqRel);
    }
}
