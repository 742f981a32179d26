//! Deadlines of many objects, with a cost per operation that does not grow with the
//! number of objects that are merely waiting.
//!
//! A binary heap ordered by deadline holds every armed timer; re-arming or cancelling
//! a timer leaves its old heap entry in place and marks it stale (lazy deletion), so
//! both are `O(log n)` and expiring the due timers touches only those. With 10,000 idle
//! connections, each with a keepalive timer far in the future, handling a timeout
//! pops only what is due.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::time::Timestamp;

/// A set of named deadlines.
///
/// ```
/// use atbus_core::time::Timestamp;
/// use atbus_core::timer::TimerQueue;
///
/// let mut timers = TimerQueue::new();
/// timers.set("keepalive", Timestamp::from_micros(500));
/// timers.set("retransmit", Timestamp::from_micros(100));
/// timers.set("retransmit", Timestamp::from_micros(300)); // re-armed
/// assert_eq!(timers.next_deadline(), Some(Timestamp::from_micros(300)));
/// assert_eq!(timers.pop_expired(Timestamp::from_micros(400)), Some("retransmit"));
/// assert_eq!(timers.pop_expired(Timestamp::from_micros(400)), None);
/// ```
#[derive(Debug, Clone)]
pub struct TimerQueue<K: Ord + Copy> {
    heap: BinaryHeap<Reverse<(Timestamp, u64, K)>>,
    /// The live deadline of each armed key and the sequence number of its heap entry.
    armed: BTreeMap<K, (Timestamp, u64)>,
    next_seq: u64,
}

impl<K: Ord + Copy> Default for TimerQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Copy> TimerQueue<K> {
    /// An empty queue.
    pub fn new() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            armed: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Arms `key` to fire at `at`, replacing its previous deadline.
    pub fn set(&mut self, key: K, at: Timestamp) {
        if self
            .armed
            .get(&key)
            .is_some_and(|&(current, _)| current == at)
        {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.armed.insert(key, (at, seq));
        self.heap.push(Reverse((at, seq, key)));
        self.compact_if_stale();
    }

    /// Disarms `key`.
    pub fn cancel(&mut self, key: K) {
        self.armed.remove(&key);
        self.compact_if_stale();
    }

    /// The deadline of `key`, if armed.
    pub fn deadline(&self, key: K) -> Option<Timestamp> {
        self.armed.get(&key).map(|&(at, _)| at)
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&mut self) -> Option<Timestamp> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Disarms and returns a key whose deadline is at or before `now`, earliest first
    /// (ties in the order they were armed).
    pub fn pop_expired(&mut self, now: Timestamp) -> Option<K> {
        self.drop_stale_top();
        let Reverse((at, _, key)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.armed.remove(&key);
        Some(key)
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    fn is_live(&self, at: Timestamp, seq: u64, key: &K) -> bool {
        self.armed.get(key) == Some(&(at, seq))
    }

    fn drop_stale_top(&mut self) {
        while let Some(&Reverse((at, seq, key))) = self.heap.peek() {
            if self.is_live(at, seq, &key) {
                break;
            }
            self.heap.pop();
        }
    }

    /// Rebuilds the heap when stale entries outnumber live ones, so memory stays
    /// proportional to the armed timers however often they are re-armed.
    fn compact_if_stale(&mut self) {
        if self.heap.len() > 64 && self.heap.len() > 2 * self.armed.len() {
            let armed = &self.armed;
            self.heap
                .retain(|Reverse((at, seq, key))| armed.get(key) == Some(&(*at, *seq)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(micros: u64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn expires_in_deadline_order_and_skips_cancelled_and_rearmed() {
        let mut q = TimerQueue::new();
        q.set(1, t(30));
        q.set(2, t(10));
        q.set(3, t(20));
        q.cancel(3);
        q.set(1, t(5));
        assert_eq!(q.next_deadline(), Some(t(5)));
        assert_eq!(q.pop_expired(t(100)), Some(1));
        assert_eq!(q.pop_expired(t(100)), Some(2));
        assert_eq!(q.pop_expired(t(100)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn nothing_fires_before_its_deadline() {
        let mut q = TimerQueue::new();
        q.set('a', t(10));
        assert_eq!(q.pop_expired(t(9)), None);
        assert_eq!(q.pop_expired(t(10)), Some('a'));
    }

    #[test]
    fn rearming_many_times_keeps_memory_proportional_to_armed_timers() {
        let mut q = TimerQueue::new();
        for round in 0..10_000u64 {
            q.set(round % 8, t(round));
        }
        assert_eq!(q.len(), 8);
        assert!(q.heap.len() <= 2 * 8 + 64, "heap grew to {}", q.heap.len());
    }

    #[test]
    fn handling_a_timeout_touches_only_due_timers_among_many_idle_ones() {
        let mut q = TimerQueue::new();
        for conn in 0..10_000u32 {
            q.set(conn, t(1_000_000 + u64::from(conn)));
        }
        q.set(u32::MAX, t(50));
        let before = q.heap.len();
        assert_eq!(q.pop_expired(t(100)), Some(u32::MAX));
        assert_eq!(q.pop_expired(t(100)), None);
        // One entry popped, nothing else walked or rebuilt.
        assert_eq!(q.heap.len(), before - 1);
    }
}
