//! Byte budgets between a node's parts: what the socket tasks may queue for the
//! driver ([`InputBudget`]), and what the driver may queue for the application
//! ([`EventGauge`]). Item counts alone would let a peer make the node hold up to
//! `max_message_size` (or 64 KiB datagrams) times the count.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use event_listener::Listener as _;

use atbus_core::Event;

/// Payload bytes the socket tasks have handed to the driver and it has not taken
/// yet. Stream and shm readers queue more only while the total is below half the
/// limit; datagram readers while it is below the limit: the other half is the
/// datagrams' headroom, so that bulk stream or shm input keeping the driver busy
/// does not have every datagram batch (acknowledgements, pongs, handshakes of the
/// UDP paths) dropped. The total passes the limit by at most one input per task
/// (64 KiB for a stream read, one batch of datagrams or shm records).
#[derive(Debug)]
pub(crate) struct InputBudget {
    queued: AtomicUsize,
    limit: usize,
    room: event_listener::Event,
    /// Datagram batches' datagrams dropped because the driver was behind.
    dropped_datagrams: AtomicU64,
}

impl InputBudget {
    pub(crate) fn new(limit: usize) -> Self {
        InputBudget {
            queued: AtomicUsize::new(0),
            limit: limit.max(1),
            room: event_listener::Event::new(),
            dropped_datagrams: AtomicU64::new(0),
        }
    }

    /// Room for a stream or shm reader: below half the limit.
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < self.limit.div_ceil(2)
    }

    /// Waits until there is room (a stream reader, before it reads: what it does
    /// not read stays in the socket and the peer backs up).
    pub(crate) async fn room(&self) {
        while !self.has_room() {
            let listener = self.room.listen();
            if self.has_room() {
                return;
            }
            listener.await;
        }
    }

    /// [`room`](Self::room) for a thread (the shm readers): false if `stop` closed
    /// meanwhile.
    pub(crate) fn room_blocking(&self, stop: &async_channel::Receiver<()>) -> bool {
        while !self.has_room() {
            if stop.is_closed() {
                return false;
            }
            let listener = self.room.listen();
            if self.has_room() {
                return true;
            }
            // Bounded, to notice `stop`.
            let _ = listener.wait_timeout(Duration::from_millis(50));
        }
        true
    }

    /// Counts `bytes` handed to the driver.
    pub(crate) fn add(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// A datagram reader's batch: counted if the total is below the limit (stream
    /// readers stop at half of it); otherwise dropped
    /// (loss, as if the socket's buffer had overflowed) and counted as such.
    pub(crate) fn admit_datagrams(&self, bytes: usize, datagrams: usize) -> bool {
        if self.queued.load(Ordering::Acquire) < self.limit {
            self.add(bytes);
            true
        } else {
            self.dropped_datagrams
                .fetch_add(datagrams as u64, Ordering::Relaxed);
            false
        }
    }

    /// The driver took an input of `bytes`.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    Some(q.saturating_sub(bytes))
                });
            self.room.notify(usize::MAX);
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub(crate) fn dropped_datagrams(&self) -> u64 {
        self.dropped_datagrams.load(Ordering::Relaxed)
    }
}

/// The application's queue of events as both ends see it: the messages (other
/// events count 1; see [`event_weight`](crate::node::event_weight)) and payload
/// bytes it holds, and whether the driver holds delivery back because it is full.
#[derive(Debug, Default)]
pub(crate) struct EventGauge {
    bytes: AtomicUsize,
    messages: AtomicUsize,
    paused: AtomicBool,
}

impl EventGauge {
    /// Payload bytes of the message or command an event carries.
    pub(crate) fn payload_bytes(event: &Event) -> usize {
        match event {
            Event::Message { message, .. } => message.payload.len(),
            Event::Messages { payloads, .. } => payloads.iter().map(|p| p.len()).sum(),
            Event::Command { command, .. } => command.payload.len(),
            _ => 0,
        }
    }

    /// Counts an event about to be queued (before it is, so that the reader never
    /// takes away more than was added); returns `(bytes, messages)` counted, for
    /// [`EventGauge::release`] if it is not queued after all.
    pub(crate) fn queued(&self, event: &Event) -> (usize, usize) {
        let counted = (Self::payload_bytes(event), crate::node::event_weight(event));
        self.bytes.fetch_add(counted.0, Ordering::AcqRel);
        self.messages.fetch_add(counted.1, Ordering::AcqRel);
        counted
    }

    /// Uncounts an event the application took.
    pub(crate) fn taken(&self, event: &Event) {
        self.release(Self::payload_bytes(event), crate::node::event_weight(event));
    }

    /// Uncounts `bytes` and `messages`: the application took them (or they were
    /// not queued).
    pub(crate) fn release(&self, bytes: usize, messages: usize) {
        for (counter, n) in [(&self.bytes, bytes), (&self.messages, messages)] {
            if n > 0 {
                let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some(b.saturating_sub(n))
                });
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Messages held (other events count 1).
    pub(crate) fn messages(&self) -> usize {
        self.messages.load(Ordering::Acquire)
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_input_budget_drops_datagrams_and_makes_readers_wait_until_released() {
        let budget = InputBudget::new(1000);
        assert!(budget.admit_datagrams(600, 2));
        assert!(budget.admit_datagrams(600, 3), "below the limit: one more");
        assert_eq!(budget.queued(), 1200);
        assert!(!budget.admit_datagrams(10, 4));
        assert_eq!((budget.queued(), budget.dropped_datagrams()), (1200, 4));
        let mut waiting = std::pin::pin!(budget.room());
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(waiting.as_mut()))
                .is_none()
        );
        budget.release(600);
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(waiting.as_mut()))
                .is_none(),
            "readers wait for half the limit"
        );
        budget.release(200);
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(waiting.as_mut()))
                .is_some()
        );
        assert_eq!(budget.queued(), 400);
    }

    #[test]
    fn stream_readers_leave_datagrams_headroom() {
        let budget = InputBudget::new(1000);
        // Stream readers fill the budget as far as they may.
        budget.add(499);
        let mut waiting = std::pin::pin!(budget.room());
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(waiting.as_mut()))
                .is_some()
        );
        budget.add(64 * 1024 / 200);
        let mut waiting = std::pin::pin!(budget.room());
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(waiting.as_mut()))
                .is_none(),
            "a stream reader waits at half the limit"
        );
        let (tx, rx) = async_channel::bounded::<()>(1);
        drop(tx);
        assert!(!budget.room_blocking(&rx), "so does an shm reader");
        assert!(
            budget.admit_datagrams(300, 3),
            "datagrams still have the other half"
        );
        assert_eq!(budget.dropped_datagrams(), 0);
    }
}
