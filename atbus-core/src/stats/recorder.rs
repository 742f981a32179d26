//! The recorder: a ring of one-second slots plus totals.

use std::time::Duration;

use super::histogram::saturating_micros;
use super::{
    HISTOGRAM_BUCKETS, LatencyHistogram, StatsSnapshot, Totals, Window, WindowStats, per_second,
};
use crate::time::Timestamp;

const MICROS_PER_SEC: u64 = 1_000_000;

/// Slots in the ring: the current second and the 60 complete seconds the longest
/// window reads, so the slot being written is never one a window reads.
const RING: u64 = Window::S60.seconds() + 1;

/// The stamp of a slot that never held a second (no real second reaches it: the
/// largest timestamp is second `u64::MAX / 1_000_000`).
const NO_SECOND: u64 = u64::MAX;

/// What one second saw. Counts within one second of one recorder fit in `u32`
/// (saturating otherwise), which keeps the ring small; bytes and the RTT sum do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The second this slot holds; a slot whose stamp is not the second being read
    /// is from an earlier lap of the ring and reads as empty.
    second: u64,
    bytes_sent: u64,
    bytes_received: u64,
    rtt_sum_micros: u64,
    packets_sent: u32,
    packets_received: u32,
    fragments_sent: u32,
    fragments_received: u32,
    lost_packets: u32,
    rtt_samples: u32,
    latency: [u32; HISTOGRAM_BUCKETS],
}

impl Slot {
    const fn empty(second: u64) -> Self {
        Slot {
            second,
            bytes_sent: 0,
            bytes_received: 0,
            rtt_sum_micros: 0,
            packets_sent: 0,
            packets_received: 0,
            fragments_sent: 0,
            fragments_received: 0,
            lost_packets: 0,
            rtt_samples: 0,
            latency: [0; HISTOGRAM_BUCKETS],
        }
    }

    /// Adds `other`'s counts to these.
    fn merge(&mut self, other: &Slot) {
        self.bytes_sent = self.bytes_sent.saturating_add(other.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(other.bytes_received);
        self.rtt_sum_micros = self.rtt_sum_micros.saturating_add(other.rtt_sum_micros);
        self.packets_sent = self.packets_sent.saturating_add(other.packets_sent);
        self.packets_received = self.packets_received.saturating_add(other.packets_received);
        self.fragments_sent = self.fragments_sent.saturating_add(other.fragments_sent);
        self.fragments_received = self
            .fragments_received
            .saturating_add(other.fragments_received);
        self.lost_packets = self.lost_packets.saturating_add(other.lost_packets);
        self.rtt_samples = self.rtt_samples.saturating_add(other.rtt_samples);
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// Sums of slots over a window, in `u64`.
#[derive(Default)]
struct Sums {
    bytes_sent: u64,
    bytes_received: u64,
    rtt_sum_micros: u64,
    packets_sent: u64,
    packets_received: u64,
    fragments_sent: u64,
    fragments_received: u64,
    lost_packets: u64,
    rtt_samples: u64,
    latency: [u64; HISTOGRAM_BUCKETS],
}

impl Sums {
    fn add(&mut self, slot: &Slot) {
        self.bytes_sent = self.bytes_sent.saturating_add(slot.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(slot.bytes_received);
        self.rtt_sum_micros = self.rtt_sum_micros.saturating_add(slot.rtt_sum_micros);
        self.packets_sent += u64::from(slot.packets_sent);
        self.packets_received += u64::from(slot.packets_received);
        self.fragments_sent += u64::from(slot.fragments_sent);
        self.fragments_received += u64::from(slot.fragments_received);
        self.lost_packets += u64::from(slot.lost_packets);
        self.rtt_samples += u64::from(slot.rtt_samples);
        for (sum, &count) in self.latency.iter_mut().zip(&slot.latency) {
            *sum += u64::from(count);
        }
    }
}

/// Traffic statistics of one connection or one endpoint over sliding windows; see
/// the [module documentation](super) for the semantics.
///
/// Memory is fixed at creation; recording allocates nothing and costs a few adds.
/// `Debug` shows the creation, the newest second and the totals, not the ring.
#[derive(Clone, PartialEq, Eq)]
pub struct StatsRecorder {
    slots: Box<[Slot; RING as usize]>,
    /// The newest second recorded (at least the creation's), and where its slot
    /// starts and sits: the hot path compares against these and does not divide.
    head_second: u64,
    head_start_micros: u64,
    head_index: usize,
    created: Timestamp,
    totals: Totals,
    /// Every latency sample since creation (what exporters of cumulative
    /// histograms need; the windows only hold the last 60 s).
    latency_total: LatencyHistogram,
}

impl std::fmt::Debug for StatsRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsRecorder")
            .field("created", &self.created)
            .field("newest_second", &self.head_second)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

/// Saturating conversion of a count into a slot's `u32`.
#[inline]
fn narrow(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

impl StatsRecorder {
    /// A recorder created at `now`: no window covers time before it.
    pub fn new(now: Timestamp) -> Self {
        let second = now.as_micros() / MICROS_PER_SEC;
        let mut slots = Box::new([Slot::empty(NO_SECOND); RING as usize]);
        let head_index = (second % RING) as usize;
        slots[head_index] = Slot::empty(second);
        StatsRecorder {
            slots,
            head_second: second,
            head_start_micros: second * MICROS_PER_SEC,
            head_index,
            created: now,
            totals: Totals::default(),
            latency_total: LatencyHistogram::new(),
        }
    }

    /// When the recorder was created (the earliest creation, after a
    /// [`merge`](Self::merge)).
    pub fn created(&self) -> Timestamp {
        self.created
    }

    /// Counts one packet of `bytes` bytes carrying `fragments` fragments, sent at
    /// `now`.
    #[inline]
    pub fn record_sent(&mut self, now: Timestamp, bytes: u64, fragments: u64) {
        let slot = self.slot_at(now);
        slot.packets_sent = slot.packets_sent.saturating_add(1);
        slot.bytes_sent = slot.bytes_sent.saturating_add(bytes);
        slot.fragments_sent = slot.fragments_sent.saturating_add(narrow(fragments));
        let totals = &mut self.totals;
        totals.packets_sent = totals.packets_sent.saturating_add(1);
        totals.bytes_sent = totals.bytes_sent.saturating_add(bytes);
        totals.fragments_sent = totals.fragments_sent.saturating_add(fragments);
    }

    /// Counts one packet of `bytes` bytes carrying `fragments` fragments, received at
    /// `now`.
    #[inline]
    pub fn record_received(&mut self, now: Timestamp, bytes: u64, fragments: u64) {
        let slot = self.slot_at(now);
        slot.packets_received = slot.packets_received.saturating_add(1);
        slot.bytes_received = slot.bytes_received.saturating_add(bytes);
        slot.fragments_received = slot.fragments_received.saturating_add(narrow(fragments));
        let totals = &mut self.totals;
        totals.packets_received = totals.packets_received.saturating_add(1);
        totals.bytes_received = totals.bytes_received.saturating_add(bytes);
        totals.fragments_received = totals.fragments_received.saturating_add(fragments);
    }

    /// Counts `packets` packets declared lost at `now`.
    #[inline]
    pub fn record_lost(&mut self, now: Timestamp, packets: u64) {
        let slot = self.slot_at(now);
        slot.lost_packets = slot.lost_packets.saturating_add(narrow(packets));
        self.totals.lost_packets = self.totals.lost_packets.saturating_add(packets);
    }

    /// Counts an RTT sample taken at `now` (into the windows' average RTT; not into
    /// the histogram, which counts [`record_latency`](Self::record_latency)).
    #[inline]
    pub fn record_rtt(&mut self, now: Timestamp, rtt: Duration) {
        let slot = self.slot_at(now);
        slot.rtt_samples = slot.rtt_samples.saturating_add(1);
        slot.rtt_sum_micros = slot.rtt_sum_micros.saturating_add(saturating_micros(rtt));
        self.totals.rtt_samples = self.totals.rtt_samples.saturating_add(1);
    }

    /// Counts a latency sample taken at `now` into the histogram: whatever the caller
    /// measures (an RTT sample, a message's delivery latency).
    #[inline]
    pub fn record_latency(&mut self, now: Timestamp, latency: Duration) {
        let bucket = LatencyHistogram::bucket_of(latency);
        let slot = self.slot_at(now);
        slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
        self.latency_total.record_bucket(bucket);
        self.totals.latency_samples = self.totals.latency_samples.saturating_add(1);
    }

    /// Counts since creation.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// What `window` saw, read at `now`: the window's complete seconds before the
    /// second of `now`.
    pub fn window(&self, now: Timestamp, window: Window) -> WindowStats {
        // A read at a `now` before the newest second recorded reads as of that second.
        let end = (now.as_micros() / MICROS_PER_SEC).max(self.head_second);
        let start = end.saturating_sub(window.seconds());
        let mut sums = Sums::default();
        for second in start..end {
            let slot = &self.slots[(second % RING) as usize];
            if slot.second == second {
                sums.add(slot);
            }
        }
        let covered_from = (start * MICROS_PER_SEC).max(self.created.as_micros());
        let covered = Duration::from_micros((end * MICROS_PER_SEC).saturating_sub(covered_from));
        let loss_rate = (sums.packets_sent > 0)
            .then(|| (sums.lost_packets as f64 / sums.packets_sent as f64).min(1.0));
        let average_rtt = (sums.rtt_samples > 0)
            .then(|| Duration::from_micros(sums.rtt_sum_micros / sums.rtt_samples));
        WindowStats {
            window,
            covered,
            bytes_sent: sums.bytes_sent,
            bytes_received: sums.bytes_received,
            bytes_sent_per_sec: per_second(sums.bytes_sent, covered),
            bytes_received_per_sec: per_second(sums.bytes_received, covered),
            packets_sent: sums.packets_sent,
            packets_received: sums.packets_received,
            fragments_sent: sums.fragments_sent,
            fragments_received: sums.fragments_received,
            lost_packets: sums.lost_packets,
            loss_rate,
            rtt_samples: sums.rtt_samples,
            average_rtt,
            histogram: LatencyHistogram::from_counts(sums.latency),
        }
    }

    /// Every window and the totals, read at `now`.
    pub fn snapshot(&self, now: Timestamp) -> StatsSnapshot {
        StatsSnapshot {
            at: now,
            totals: self.totals,
            histogram_total: self.latency_total,
            windows: Window::ALL.map(|window| self.window(now, window)),
        }
    }

    /// Adds `other`'s seconds and totals to this recorder's, as if this recorder had
    /// also been fed `other`'s calls: windows then sum both. The creation time becomes
    /// the earlier of the two and the newest second the later, so recording into a
    /// merged recorder at a time before `other`'s newest second counts in that second
    /// (as time going backwards does).
    pub fn merge(&mut self, other: &StatsRecorder) {
        for theirs in other.slots.iter().filter(|slot| slot.second != NO_SECOND) {
            let mine = &mut self.slots[(theirs.second % RING) as usize];
            if mine.second == theirs.second {
                mine.merge(theirs);
            } else if mine.second == NO_SECOND || mine.second < theirs.second {
                // Ours is a lap older than theirs, beyond every window from now on.
                *mine = *theirs;
            }
            // Otherwise theirs is the older: beyond every window of ours.
        }
        self.totals.merge(&other.totals);
        self.latency_total.merge(&other.latency_total);
        self.created = self.created.min(other.created);
        if other.head_second > self.head_second {
            self.move_head(other.head_second);
        }
    }

    /// The slot counting events at `now`.
    #[inline]
    fn slot_at(&mut self, now: Timestamp) -> &mut Slot {
        // One subtraction and compare while `now` stays in the head's second; time
        // before the head's start wraps to a large value and takes the slow path.
        if now.as_micros().wrapping_sub(self.head_start_micros) >= MICROS_PER_SEC {
            self.advance(now);
        }
        &mut self.slots[self.head_index]
    }

    /// Moves the head to the second of `now` unless that is not later (time going
    /// backwards: events count in the head's second).
    #[cold]
    fn advance(&mut self, now: Timestamp) {
        let second = now.as_micros() / MICROS_PER_SEC;
        if second > self.head_second {
            self.move_head(second);
        }
    }

    fn move_head(&mut self, second: u64) {
        self.head_second = second;
        self.head_start_micros = second * MICROS_PER_SEC;
        self.head_index = (second % RING) as usize;
        let slot = &mut self.slots[self.head_index];
        if slot.second != second {
            *slot = Slot::empty(second);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_small_and_the_ring_fixed() {
        assert_eq!(std::mem::size_of::<Slot>(), 136);
        assert_eq!(std::mem::size_of::<[Slot; RING as usize]>(), 136 * 61);
    }
}
