//! What one side's application received, classified against the workload.
//!
//! Ordering follows RFC 4737 §3.3 per stream: with `NextExp` one past the highest
//! message index delivered so far, a message at or beyond `NextExp` is in order (the
//! ones it jumps over are missing: lost, skipped or still on their way), and a
//! missing message that arrives later is reordered. So loss alone never counts as
//! reordering, and a held-back message counts once, not every message that overtook
//! it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use crate::transport::Received;
use crate::workload::{ID_PREFIX_LEN, Workload};

/// What a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// First delivery of message `index`, at or beyond the stream's `NextExp`.
    InOrder(u64),
    /// First delivery of message `index`, after a later message of its stream.
    OutOfOrder(u64),
    /// Another delivery of a message already delivered.
    Duplicate,
    /// Matches no message of its stream.
    Corrupted,
}

/// Delivery order of one stream.
#[derive(Debug, Clone)]
struct StreamOrder {
    /// One past the highest message index delivered (RFC 4737 `NextExp`), as a
    /// workload index: the stream's messages are `s`, `s + S`, `s + 2S`, ...
    next_expected: u64,
    /// Messages below `next_expected` not delivered yet.
    missing: BTreeSet<u64>,
}

/// Counts and latencies of what one side's application received.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    workload: Workload,
    /// Messages offered so far: indices `0..offered`.
    offered: u64,
    streams: HashMap<u32, StreamOrder>,
    /// Payloads too short to carry their index, not delivered yet, by content.
    short_undelivered: HashMap<(u32, Bytes), BTreeSet<u64>>,
    /// Contents of the short payloads delivered.
    short_delivered: HashSet<(u32, Bytes)>,
    /// Distinct messages delivered.
    pub(crate) delivered: u64,
    /// Deliveries of a message already delivered.
    pub(crate) duplicates: u64,
    /// First deliveries after a later message of the same stream.
    pub(crate) out_of_order: u64,
    /// Deliveries matching no message.
    pub(crate) corrupted: u64,
    /// Payload bytes of the distinct messages delivered.
    pub(crate) payload_bytes: u64,
    /// Offer-to-delivery time of each distinct message delivered.
    pub(crate) latencies: Vec<Duration>,
    /// When the last distinct message was delivered.
    pub(crate) last_delivery: Option<Duration>,
}

impl Recorder {
    pub(crate) fn new(workload: Workload) -> Self {
        Self {
            workload,
            offered: 0,
            streams: HashMap::new(),
            short_undelivered: HashMap::new(),
            short_delivered: HashSet::new(),
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            corrupted: 0,
            payload_bytes: 0,
            latencies: Vec::new(),
            last_delivery: None,
        }
    }

    /// The workload offered message `index` (the next one) with `payload`.
    pub(crate) fn offer(&mut self, index: u64, payload: &Bytes) {
        debug_assert_eq!(index, self.offered, "messages are offered in order");
        self.offered = index + 1;
        if payload.len() < ID_PREFIX_LEN {
            let key = (self.workload.stream(index), payload.clone());
            self.short_undelivered.entry(key).or_default().insert(index);
        }
    }

    /// The application received `received` at `now`.
    pub(crate) fn record(&mut self, now: Duration, received: &Received) {
        let (index, in_order) = match self.classify(received) {
            Class::InOrder(index) => (index, true),
            Class::OutOfOrder(index) => (index, false),
            Class::Duplicate => {
                self.duplicates += 1;
                return;
            }
            Class::Corrupted => {
                self.corrupted += 1;
                return;
            }
        };
        self.mark_delivered(index, received);
        self.delivered += 1;
        self.out_of_order += u64::from(!in_order);
        self.payload_bytes += received.payload.len() as u64;
        self.latencies
            .push(now.saturating_sub(self.workload.due(index)));
        self.last_delivery = Some(now);
    }

    fn classify(&self, received: &Received) -> Class {
        let stream = received.stream;
        if stream >= self.workload.streams() {
            return Class::Corrupted;
        }
        let order = self.streams.get(&stream);
        let next_expected = order.map_or(u64::from(stream), |o| o.next_expected);
        if received.payload.len() < ID_PREFIX_LEN {
            return self.classify_short(stream, &received.payload, next_expected);
        }
        let mut id = [0; ID_PREFIX_LEN];
        id.copy_from_slice(&received.payload[..ID_PREFIX_LEN]);
        let index = u64::from_le_bytes(id);
        let genuine = index < self.offered
            && self.workload.stream(index) == stream
            && self.workload.payload(index) == received.payload;
        if !genuine {
            Class::Corrupted
        } else if index >= next_expected {
            Class::InOrder(index)
        } else if order.is_some_and(|o| o.missing.contains(&index)) {
            Class::OutOfOrder(index)
        } else {
            Class::Duplicate
        }
    }

    /// A payload without an index can only be matched by content, so equal payloads
    /// are told apart by the most likely reading: the next expected message, then a
    /// duplicate, then a later message, then a missing earlier one (every offered,
    /// undelivered message below `next_expected` is missing).
    fn classify_short(&self, stream: u32, payload: &Bytes, next_expected: u64) -> Class {
        let key = (stream, payload.clone());
        let candidates = self.short_undelivered.get(&key);
        if candidates.is_some_and(|c| c.contains(&next_expected)) {
            return Class::InOrder(next_expected);
        }
        if self.short_delivered.contains(&key) {
            return Class::Duplicate;
        }
        let Some(candidates) = candidates else {
            return Class::Corrupted;
        };
        if let Some(&later) = candidates.range(next_expected..).next() {
            Class::InOrder(later)
        } else if let Some(&earlier) = candidates.first() {
            Class::OutOfOrder(earlier)
        } else {
            Class::Corrupted
        }
    }

    fn mark_delivered(&mut self, index: u64, received: &Received) {
        let step = u64::from(self.workload.streams());
        let stream = received.stream;
        let order = self.streams.entry(stream).or_insert(StreamOrder {
            next_expected: u64::from(stream),
            missing: BTreeSet::new(),
        });
        if index >= order.next_expected {
            let skipped = (order.next_expected..index).step_by(step as usize);
            order.missing.extend(skipped);
            order.next_expected = index + step;
        } else {
            order.missing.remove(&index);
        }
        if received.payload.len() < ID_PREFIX_LEN {
            let key = (stream, received.payload.clone());
            if let Some(candidates) = self.short_undelivered.get_mut(&key) {
                candidates.remove(&index);
                if candidates.is_empty() {
                    self.short_undelivered.remove(&key);
                }
            }
            self.short_delivered.insert(key);
        }
    }
}
