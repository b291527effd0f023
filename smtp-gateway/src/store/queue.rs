//! The write queue between the sessions and tasks that write and the one [`Writer`]
//! (`mod.rs`): at most `store.queue` writes, whatever the store does. A write to a full queue
//! drops the oldest one (the caller counts it); writes handed to the engine stay at its front
//! until they are written, so a store that is down keeps them, in order, still within the bound.
//!
//! [`Writer`]: super::Writer

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

use super::Write;

/// A bounded queue of writes, shared by every [`Store`](super::Store) clone and the writer.
pub(super) struct Queue {
    /// The writes and the writer's progress.
    state: Mutex<State>,
    /// Wakes the writer when a write arrives or the queue closes.
    wake: Notify,
    /// `store.queue`.
    capacity: usize,
}

/// What the lock of a [`Queue`] guards.
struct State {
    /// The writes, oldest first.
    items: VecDeque<Write>,
    /// How many at the front the writer is writing now (dropping one lowers it).
    in_flight: usize,
    /// No write will come any more (every store handle is gone).
    closed: bool,
    /// The writer has stopped: a new write is refused.
    stopped: bool,
}

/// What became of a write handed to [`Queue::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued; the oldest write was dropped to make room when `dropped_oldest`. `len` writes
    /// wait now.
    Queued { dropped_oldest: bool, len: usize },
    /// The writer has stopped: not queued.
    Refused,
}

impl Queue {
    /// An empty queue of at most `capacity` writes (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                in_flight: 0,
                closed: false,
                stopped: false,
            }),
            wake: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// The state (a panic while it was held leaves nothing half done: every change is one
    /// step).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `write` at the back; a full queue drops its oldest first (one the writer is writing
    /// at that moment may still land). Never waits.
    pub(super) fn push(&self, write: Write) -> Pushed {
        let pushed = {
            let mut s = self.lock();
            if s.stopped {
                return Pushed::Refused;
            }
            let dropped_oldest = s.items.len() >= self.capacity;
            if dropped_oldest {
                s.items.pop_front();
                s.in_flight = s.in_flight.saturating_sub(1);
            }
            s.items.push_back(write);
            Pushed::Queued {
                dropped_oldest,
                len: s.items.len(),
            }
        };
        self.wake.notify_one();
        pushed
    }

    /// No write will come any more: wakes the writer.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Whether [`close`](Self::close) was called.
    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The writer has stopped: later writes are refused.
    pub(super) fn stop(&self) {
        self.lock().stopped = true;
    }

    /// Writes waiting (those being written included).
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no write waits.
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a write arrives or the queue closes (one that came since the last wait
    /// counts).
    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Up to `max` writes from the front, to write now; they stay queued until
    /// [`written`](Self::written).
    pub(super) fn begin(&self, max: usize) -> Vec<Write> {
        let mut s = self.lock();
        let batch: Vec<Write> = s.items.iter().take(max).cloned().collect();
        s.in_flight = batch.len();
        batch
    }

    /// The batch of [`begin`](Self::begin) was written: it leaves the queue (what a full queue
    /// dropped meanwhile is gone already). Writes waiting now.
    pub(super) fn written(&self) -> usize {
        let mut s = self.lock();
        let n = s.in_flight.min(s.items.len());
        s.items.drain(..n);
        s.in_flight = 0;
        s.items.len()
    }

    /// The batch of [`begin`](Self::begin) was refused: it stays at the front.
    pub(super) fn failed(&self) {
        self.lock().in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u32) -> Write {
        Write::Delete {
            key: format!("k{n}"),
        }
    }

    fn keys(q: &Queue) -> Vec<String> {
        q.lock().items.iter().map(|w| w.key().to_string()).collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_holds_at_most_its_capacity() {
        let q = Queue::new(3);
        let dropped: Vec<bool> = (0..5)
            .map(|n| match q.push(put(n)) {
                Pushed::Queued {
                    dropped_oldest,
                    len,
                } => {
                    assert!(len <= 3);
                    dropped_oldest
                }
                Pushed::Refused => panic!("refused"),
            })
            .collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        assert_eq!(keys(&q), ["k2", "k3", "k4"]);
    }

    #[test]
    fn a_batch_stays_until_written_and_a_drop_during_it_is_not_removed_twice() {
        let q = Queue::new(3);
        for n in 0..3 {
            q.push(put(n));
        }
        assert_eq!(q.begin(2).len(), 2);
        // Refused: it stays at the front, in order.
        q.failed();
        assert_eq!(keys(&q), ["k0", "k1", "k2"]);
        assert_eq!(q.begin(2).len(), 2);
        // While k0 and k1 are written, a write to the full queue drops k0.
        q.push(put(3));
        assert_eq!(q.written(), 2, "only k1 left the queue with the batch");
        assert_eq!(keys(&q), ["k2", "k3"]);
        q.stop();
        assert_eq!(q.push(put(4)), Pushed::Refused);
    }
}
