//! In-flight ranges of one connection and loss detection.
//!
//! A connection remembers, per frame it sent, which stream range the frame carried
//! ([`SentRange`]); the data itself stays in the stream's send buffer. A range is
//! settled by the stream's acknowledgement (cumulative offset or a selective range)
//! and declared lost by one of two rules:
//!
//! - **time-ordered (RACK, RFC 8985)**: the peer's ACK echoes the newest timepoint it
//!   received, i.e. the send time of the newest frame that arrived. A range sent more
//!   than a reordering window before that frame, and still unacknowledged, is lost:
//!   this is the fast retransmit from the SACK hint, and it recovers a burst of holes
//!   at once because the selective ranges say exactly which parts arrived. The
//!   window is 1 ms until reordering is seen ([`InFlight::reordering_seen`]);
//! - **retransmission timeout**: a range unacknowledged `rto` after it was sent is
//!   lost (`rto` = 1.2 × smoothed RTT with floor, ceiling and backoff). A timeout
//!   declares only the oldest datagram lost, to be resent as a probe (RFC 9002
//!   §6.2); until an acknowledgement settles something, the next timeout comes
//!   no sooner than [`PROBE_SPACING`]` × rto` after it (and never before the
//!   range's own `rto`). Meanwhile an acknowledgement settles the rest of the
//!   flight or declares its holes lost by the time-ordered rule. Declaring the
//!   whole timed-out flight lost at once would, when the receiver only stalls (a
//!   descheduled task: every datagram is still coming), empty the flight and
//!   resend a window of data that arrives anyway; while everything is lost, the
//!   probes still leave at a steady period.
//!
//! Ranges are kept in send order, so both rules only look at the oldest ranges, and
//! the next deadline is the oldest range's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::time::Timestamp;

/// Largest multiplier of the reordering window. Each acknowledgement showing
/// spurious retransmissions raises it by one (RFC 8985 §6.2 steps it by one per
/// round with D-SACK); doubling, as before, reached the whole smoothed RTT after
/// three such acknowledgements, and a window that wide lets a burst of real losses
/// hold the window full until the retransmission timeout.
pub const MAX_REORDER_FACTOR: u32 = 4;

/// Recovery episodes after which the multiplier returns to 1 (RFC 8985 §6.2: 16
/// recoveries; see [`InFlight::began_recovery`]), so that one episode of reordering
/// does not widen the window for good.
pub const REORDER_RESET_RECOVERIES: u32 = 16;

/// After a timeout, the next one comes no sooner than this fraction of the
/// timeout, until an acknowledgement settles something: at most eight probes per
/// timeout while nothing gets through, instead of the whole timed-out flight at
/// once. (A quarter lengthened the tail of `atbus-benches`'
/// `atbus_tail_is_below_kcp_and_quinn_on_bursty_loss` past KCP's: pooled p99 168
/// against 149 ms; an eighth keeps it below.)
pub const PROBE_SPACING: f64 = 0.125;

/// Ranges declared lost by the time-ordered rule remembered at most, to tell a
/// spurious retransmission caused by reordering from one caused by a timeout.
const MAX_RACK_LOST: usize = 1024;

/// One stream range carried by one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRange {
    /// The stream.
    pub stream: i64,
    /// First offset carried.
    pub start: u64,
    /// One past the last offset carried (`start` for a reset-only frame).
    pub end: u64,
    /// The frame carried RESET_OFFSET at `start`.
    pub reset: bool,
    /// When it was sent (also the frame's timepoint).
    pub sent_at: Timestamp,
    /// Frame bytes, for the congestion window.
    pub bytes: usize,
    /// The range had been sent before and declared lost.
    pub retransmit: bool,
    /// Number of the datagram (or transmit) that carried it.
    pub packet: u64,
    /// Length of that whole datagram (it may carry other streams' frames too);
    /// 0 until the datagram is complete.
    pub datagram: usize,
}

/// What an acknowledgement settled on this connection.
#[derive(Debug, Default, Clone)]
pub struct Settled {
    /// Ranges removed from flight.
    pub ranges: Vec<SentRange>,
    /// Retransmissions acknowledged by an ACK generated before the retransmission
    /// could have arrived (its echoed timepoint is older): the original got through.
    pub spurious: u64,
}

/// The ranges in flight on one connection.
#[derive(Debug, Default)]
pub struct InFlight {
    /// By sequence number (send order).
    ranges: BTreeMap<u64, SentRange>,
    /// `(stream, start, seq)` for finding a stream's ranges.
    by_stream: BTreeSet<(i64, u64, u64)>,
    /// `(stream, seq)` of the reset-only ranges (no data, RESET_OFFSET).
    reset_only: BTreeSet<(i64, u64)>,
    next_seq: u64,
    bytes: usize,
    /// The retransmission timeout declared a range lost and no probe has left since.
    probe_due: bool,
    /// When the retransmission timeout last fired, until an acknowledgement settles
    /// something: the ranges still in flight time out `rto` after the later of
    /// their send time and this.
    timed_out_at: Option<Timestamp>,
    /// The newest echoed timepoint of the acknowledgements seen, and the one before
    /// it: a frame sent before the echo of an earlier acknowledgement, and settled
    /// only now, arrived after a frame sent later (reordering).
    echo_newest: Timestamp,
    echo_before: Timestamp,
    /// Recovery episodes since reordering was last seen, `None` if it never was
    /// or [`REORDER_RESET_RECOVERIES`] episodes ago.
    since_reordering: Option<u32>,
    /// When the recovery episode in progress began: a loss of a range sent before
    /// it belongs to it (RFC 8985 §6.2 counts recoveries, not detections: one
    /// burst found over several acknowledgements is one recovery).
    episode_start: Option<Timestamp>,
    /// The latest detection that found a loss began a new recovery episode.
    new_episode: bool,
    /// `(stream, start, end)` of ranges the time-ordered rule declared lost, with
    /// when each was declared (an insertion number): if a retransmission of one
    /// proves spurious, the original arrived after a newer frame. At most
    /// [`MAX_RACK_LOST`], the oldest declared forgotten first.
    rack_lost: BTreeMap<(i64, u64, u64), u64>,
    /// The same ranges by insertion number, oldest first.
    rack_lost_order: BTreeMap<u64, (i64, u64, u64)>,
    rack_lost_next: u64,
    /// Datagrams the latest loss detection that found any declared lost.
    last_lost_datagrams: usize,
    /// Whether that detection was a timeout while newer frames were in flight.
    last_timeout_before_newer: bool,
}

impl InFlight {
    /// Records a range just sent.
    pub fn on_sent(&mut self, range: SentRange) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += range.bytes;
        self.by_stream.insert((range.stream, range.start, seq));
        if range.start == range.end {
            self.reset_only.insert((range.stream, seq));
        }
        self.ranges.insert(seq, range);
    }

    /// Records the length of datagram `packet`, just completed, on its ranges
    /// (the newest in flight).
    pub fn set_datagram_len(&mut self, packet: u64, len: usize) {
        for range in self.ranges.values_mut().rev() {
            if range.packet != packet {
                break;
            }
            range.datagram = len;
        }
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Ranges in flight.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn remove(&mut self, seq: u64) -> Option<SentRange> {
        let range = self.ranges.remove(&seq)?;
        self.by_stream.remove(&(range.stream, range.start, seq));
        self.reset_only.remove(&(range.stream, seq));
        self.bytes -= range.bytes;
        Some(range)
    }

    /// Settles the ranges of `stream` that the acknowledgement covers: everything
    /// below `acknowledged`, and every range inside one of `received` (sorted,
    /// disjoint `[start, end)` pairs). A reset-only range is settled when
    /// `reset_settled(offset)` says the peer has it. `echo` is the ACK's echoed
    /// timepoint, for spurious-retransmission detection.
    pub fn on_stream_ack(
        &mut self,
        stream: i64,
        acknowledged: u64,
        received: &[(u64, u64)],
        echo: Option<Timestamp>,
        reset_settled: impl Fn(u64) -> bool,
    ) -> Settled {
        let mut settled = Settled::default();
        // Acknowledgements of several streams built at once echo the same
        // timepoint: the reference is the echo of an earlier acknowledgement.
        if let Some(echo) = echo {
            if echo > self.echo_newest {
                self.echo_before = self.echo_newest;
                self.echo_newest = echo;
            }
        }
        let reference = match echo {
            Some(echo) if echo < self.echo_newest => self.echo_newest,
            _ => self.echo_before,
        };
        // Ranges start in order; at or past the highest received end nothing more
        // can be covered, except a reset-only range.
        let horizon = received
            .last()
            .map_or(acknowledged, |r| r.1.max(acknowledged));
        let mut candidates: Vec<u64> = self
            .by_stream
            .range((stream, 0, 0)..(stream, horizon, 0))
            .map(|&(_, _, seq)| seq)
            .collect();
        candidates.extend(
            self.reset_only
                .range((stream, 0)..=(stream, u64::MAX))
                .map(|&(_, seq)| seq),
        );
        for seq in candidates {
            let Some(range) = self.ranges.get(&seq) else {
                continue;
            };
            let covered = if range.start == range.end {
                range.reset && reset_settled(range.start)
            } else {
                range.end <= acknowledged
                    || received
                        .iter()
                        .any(|&(lo, hi)| lo <= range.start && range.end <= hi)
            };
            if !covered {
                continue;
            }
            let Some(range) = self.remove(seq) else {
                continue;
            };
            if !range.retransmit && range.sent_at < reference {
                // Sent before a frame an earlier acknowledgement reported, and
                // not reported then: it arrived later than a newer frame. (A lost
                // acknowledgement can also cause this; it only makes the
                // reordering window the cautious one for a while.)
                self.since_reordering = Some(0);
            }
            if range.retransmit && echo.is_some_and(|echo| echo < range.sent_at) {
                settled.spurious += 1;
                let overlapping = self
                    .rack_lost
                    .range((stream, 0, 0)..(stream, range.end.max(range.start + 1), 0))
                    .any(|(&(_, _, end), _)| end > range.start);
                if overlapping {
                    self.since_reordering = Some(0);
                }
            }
            settled.ranges.push(range);
        }
        if !settled.ranges.is_empty() {
            self.timed_out_at = None;
        }
        let done: Vec<_> = self
            .rack_lost
            .range((stream, 0, 0)..(stream, acknowledged, 0))
            .filter(|&(&(_, _, end), _)| end <= acknowledged)
            .map(|(&key, _)| key)
            .collect();
        for key in done {
            self.forget_rack_lost(key);
        }
        settled
    }

    /// Removes and returns the ranges lost at `now`: sent `rto` ago or longer, or
    /// sent more than `reorder_window` before `newest_delivered` (the echoed send time
    /// of the newest frame the peer received) and still unacknowledged `rack_rtt +
    /// reorder_window` after being sent.
    pub fn detect_lost(
        &mut self,
        now: Timestamp,
        rto: Duration,
        newest_delivered: Timestamp,
        rack_rtt: Duration,
        reorder_window: Duration,
    ) -> Vec<SentRange> {
        let mut lost = Vec::new();
        // The datagram a timeout declared lost in this call: its other ranges go too.
        let mut probe_packet = None;
        let mut probe_sent_at = None;
        while let Some((&seq, range)) = self.ranges.first_key_value() {
            let timed_out = now >= Self::timeout_deadline(self.timed_out_at, range.sent_at, rto);
            let rack = range.sent_at + reorder_window < newest_delivered
                && now >= range.sent_at + rack_rtt + reorder_window;
            let same_datagram = probe_packet == Some(range.packet);
            if !(timed_out || rack || same_datagram) {
                break;
            }
            let timed_out = timed_out || same_datagram;
            if timed_out && !same_datagram {
                probe_packet = Some(range.packet);
                probe_sent_at = Some(range.sent_at);
                self.timed_out_at = Some(now);
            }
            self.probe_due |= timed_out;
            let range = self.remove(seq).expect("present");
            if !timed_out && range.end > range.start {
                self.remember_rack_lost((range.stream, range.start, range.end));
            }
            lost.push(range);
        }
        self.new_episode = false;
        if !lost.is_empty() {
            // Frames sent after the timed-out one (by more than the window) are
            // still in flight: their acknowledgement will show whether it was
            // lost, by the time-ordered rule.
            self.last_timeout_before_newer = probe_sent_at.is_some_and(|sent| {
                self.ranges
                    .values()
                    .next_back()
                    .is_some_and(|newest| newest.sent_at > sent + reorder_window)
            });
            self.last_lost_datagrams = 1 + lost
                .windows(2)
                .filter(|w| w[0].packet != w[1].packet)
                .count();
            let episode_start = self.episode_start;
            if lost
                .iter()
                .any(|r| episode_start.is_none_or(|start| r.sent_at >= start))
            {
                self.episode_start = Some(now);
                self.new_episode = true;
                self.since_reordering = self
                    .since_reordering
                    .map(|n| n + 1)
                    .filter(|&n| n < REORDER_RESET_RECOVERIES);
            }
        }
        lost
    }

    /// Whether the latest detection that found a loss was a timeout while frames
    /// sent after the timed-out one were still in flight. Such a timeout is as
    /// often a lost acknowledgement as a lost datagram (on a short path the
    /// timeout, 1.2 × RTT, comes before the next frame's acknowledgement), and
    /// the newer frames' acknowledgement will tell. Not a timeout at the tail of
    /// the flight (nothing newer to tell), nor the time-ordered rule (a newer
    /// frame arrived: the loss is certain).
    pub fn last_timeout_before_newer(&self) -> bool {
        self.last_timeout_before_newer
    }

    /// Whether the latest detection that found a loss began a new recovery
    /// episode: one of its ranges was sent after the episode in progress began.
    /// Losses of one burst found over several acknowledgements are one episode.
    pub fn began_recovery(&self) -> bool {
        self.new_episode
    }

    /// Remembers a range the time-ordered rule declared lost, forgetting the one
    /// declared longest ago past [`MAX_RACK_LOST`].
    fn remember_rack_lost(&mut self, key: (i64, u64, u64)) {
        let number = self.rack_lost_next;
        self.rack_lost_next += 1;
        if let Some(old) = self.rack_lost.insert(key, number) {
            self.rack_lost_order.remove(&old);
        }
        self.rack_lost_order.insert(number, key);
        if self.rack_lost.len() > MAX_RACK_LOST {
            if let Some((_, oldest)) = self.rack_lost_order.pop_first() {
                self.rack_lost.remove(&oldest);
            }
        }
    }

    fn forget_rack_lost(&mut self, key: (i64, u64, u64)) {
        if let Some(number) = self.rack_lost.remove(&key) {
            self.rack_lost_order.remove(&number);
        }
    }

    /// Datagrams declared lost together by the latest detection that found a
    /// loss: 1 for an isolated loss, more for a burst.
    pub fn last_lost_datagrams(&self) -> usize {
        self.last_lost_datagrams
    }

    /// Whether an acknowledgement showed a frame arriving after a newer one, within
    /// the last [`REORDER_RESET_RECOVERIES`] recovery episodes (RFC 8985's
    /// `RACK.reord`). Until it does, the path is taken to keep send order and the
    /// time-ordered rule needs no reordering window.
    pub fn reordering_seen(&self) -> bool {
        self.since_reordering.is_some()
    }

    /// When the retransmission timeout last fired, if nothing was acknowledged
    /// since.
    pub fn timed_out_at(&self) -> Option<Timestamp> {
        self.timed_out_at
    }

    /// When a range sent at `sent_at` times out: `rto` after that, and no sooner
    /// than [`PROBE_SPACING`]` × rto` after the last timeout (`timed_out_at`, see
    /// [`InFlight::timed_out_at`]).
    pub fn timeout_deadline(
        timed_out_at: Option<Timestamp>,
        sent_at: Timestamp,
        rto: Duration,
    ) -> Timestamp {
        let own = sent_at + rto;
        match timed_out_at {
            Some(at) => own.max(at + rto.mul_f64(PROBE_SPACING)),
            None => own,
        }
    }

    /// Whether the retransmission timeout declared something lost since the last
    /// [`InFlight::probe_sent`]. The next transmit may then exceed the congestion
    /// window by one datagram (RFC 6298 §5.4 retransmits the earliest segment on a
    /// timeout, RFC 9002 §6.2.4 sends probes whatever the window): otherwise a window
    /// full of lost datagrams, shrunk by the loss, holds the retransmission back
    /// until enough further timeouts, each longer, have emptied it.
    pub fn probe_due(&self) -> bool {
        self.probe_due
    }

    /// A transmit carried data after a timeout: the probe is sent.
    pub fn probe_sent(&mut self) {
        self.probe_due = false;
    }

    /// When [`InFlight::detect_lost`] must run next, if anything is in flight.
    pub fn loss_deadline(
        &self,
        rto: Duration,
        newest_delivered: Timestamp,
        rack_rtt: Duration,
        reorder_window: Duration,
    ) -> Option<Timestamp> {
        let range = self.ranges.values().next()?;
        let by_rto = Self::timeout_deadline(self.timed_out_at, range.sent_at, rto);
        if range.sent_at + reorder_window < newest_delivered {
            Some(by_rto.min(range.sent_at + rack_rtt + reorder_window))
        } else {
            Some(by_rto)
        }
    }

    /// Removes and returns the ranges of `stream` sent at or before `through` that
    /// are still in flight. On a reliable, ordered connection whose frames carry
    /// distinct, increasing timepoints, an acknowledgement of `stream` echoing
    /// `through` was built after every earlier frame was processed: what it does not
    /// cover, the peer dropped (over a limit, or before its handshake completed).
    ///
    /// Ranges ending above `horizon` (where the acknowledgement's information ends)
    /// are left in flight.
    pub fn take_unacknowledged(
        &mut self,
        stream: i64,
        through: Timestamp,
        horizon: u64,
    ) -> Vec<SentRange> {
        let mut seqs: Vec<u64> = self
            .by_stream
            .range((stream, 0, 0)..=(stream, u64::MAX, u64::MAX))
            .map(|&(_, _, seq)| seq)
            .collect();
        seqs.extend(
            self.reset_only
                .range((stream, 0)..=(stream, u64::MAX))
                .map(|&(_, seq)| seq),
        );
        seqs.sort_unstable();
        seqs.dedup();
        seqs.retain(|seq| {
            self.ranges
                .get(seq)
                .is_some_and(|r| r.sent_at <= through && r.end <= horizon)
        });
        seqs.into_iter()
            .filter_map(|seq| self.remove(seq))
            .collect()
    }

    /// Removes and returns everything in flight (the connection closed).
    pub fn drain(&mut self) -> Vec<SentRange> {
        self.by_stream.clear();
        self.reset_only.clear();
        self.bytes = 0;
        std::mem::take(&mut self.ranges).into_values().collect()
    }

    /// Removes every range of `stream` (the stream was dropped).
    pub fn forget_stream(&mut self, stream: i64) {
        let seqs: Vec<u64> = self
            .by_stream
            .range((stream, 0, 0)..=(stream, u64::MAX, u64::MAX))
            .map(|&(_, _, seq)| seq)
            .collect();
        for seq in seqs {
            self.remove(seq);
        }
        self.rack_lost.retain(|&(s, _, _), _| s != stream);
        self.rack_lost_order.retain(|_, &mut (s, _, _)| s != stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_micros(ms * 1000)
    }

    fn range(stream: i64, start: u64, end: u64, sent_ms: u64) -> SentRange {
        SentRange {
            stream,
            start,
            end,
            reset: false,
            sent_at: at(sent_ms),
            bytes: 100,
            retransmit: false,
            packet: sent_ms,
            datagram: 0,
        }
    }

    #[test]
    fn cumulative_and_selective_acks_settle_exactly_the_covered_ranges() {
        let mut f = InFlight::default();
        for i in 0..5 {
            f.on_sent(range(1, i * 10, i * 10 + 10, i));
        }
        f.on_sent(range(2, 0, 10, 5));
        let settled = f.on_stream_ack(1, 20, &[(30, 40)], None, |_| false);
        let starts: Vec<u64> = settled.ranges.iter().map(|r| r.start).collect();
        assert_eq!(starts, [0, 10, 30]);
        assert_eq!(f.len(), 3);
        assert_eq!(f.bytes(), 300);
    }

    #[test]
    fn rack_declares_holes_lost_only_past_the_reordering_window() {
        let mut f = InFlight::default();
        f.on_sent(range(1, 0, 10, 0));
        f.on_sent(range(1, 10, 20, 1));
        f.on_sent(range(1, 20, 30, 10));
        // The frame sent at 10 ms arrived and was acknowledged; the ones at 0 and 1
        // did not.
        f.on_stream_ack(1, 0, &[(20, 30)], Some(at(10)), |_| false);
        let rto = Duration::from_millis(500);
        let window = Duration::from_millis(5);
        let rtt = Duration::from_millis(50);
        // At 60 ms (10 + rtt), range 0 (sent 10 ms before the delivered one) is lost
        // once 0 + 50 + 5 <= now; range at 1 ms too.
        let lost = f.detect_lost(at(54), rto, at(10), rtt, window);
        assert!(lost.is_empty());
        assert_eq!(f.loss_deadline(rto, at(10), rtt, window), Some(at(55)));
        let lost = f.detect_lost(at(56), rto, at(10), rtt, window);
        assert_eq!(lost.iter().map(|r| r.start).collect::<Vec<_>>(), [0, 10]);
        assert!(f.is_empty());
    }

    #[test]
    fn reordering_is_seen_from_late_frames_and_rack_spurious_retransmissions_only() {
        let rto = Duration::from_millis(100);
        let rtt = Duration::from_millis(50);
        let window = Duration::from_millis(1);
        // A frame settled after a newer one was reported arrived late.
        let mut f = InFlight::default();
        f.on_sent(range(1, 0, 10, 0));
        f.on_sent(range(1, 10, 20, 10));
        f.on_sent(range(1, 20, 30, 20));
        f.on_stream_ack(1, 0, &[(10, 20)], Some(at(10)), |_| false);
        assert!(!f.reordering_seen());
        f.on_stream_ack(1, 30, &[], Some(at(20)), |_| false);
        assert!(f.reordering_seen());
        // A retransmission the timeout made, proved spurious: a delay spike.
        let mut f = InFlight::default();
        f.on_sent(range(1, 0, 10, 0));
        assert_eq!(f.detect_lost(at(100), rto, at(0), rtt, window).len(), 1);
        f.on_sent(SentRange {
            retransmit: true,
            ..range(1, 0, 10, 100)
        });
        assert_eq!(
            f.on_stream_ack(1, 10, &[], Some(at(0)), |_| false).spurious,
            1
        );
        assert!(!f.reordering_seen());
        // One the time-ordered rule made: the original came after a newer frame.
        f.on_sent(range(1, 10, 20, 200));
        f.on_sent(range(1, 20, 30, 210));
        f.on_stream_ack(1, 10, &[(20, 30)], Some(at(210)), |_| false);
        assert_eq!(f.detect_lost(at(260), rto, at(210), rtt, window).len(), 1);
        f.on_sent(SentRange {
            retransmit: true,
            ..range(1, 10, 20, 260)
        });
        assert!(!f.reordering_seen());
        assert_eq!(
            f.on_stream_ack(1, 30, &[], Some(at(210)), |_| false)
                .spurious,
            1
        );
        assert!(f.reordering_seen());
        // Forgotten after enough recovery episodes (each range sent after the
        // previous detection, so each loss starts one).
        for i in 0..REORDER_RESET_RECOVERIES as u64 {
            f.on_sent(range(1, 30 + i, 31 + i, 300 + 100 * i));
            assert_eq!(
                f.detect_lost(at(400 + 100 * i), rto, at(0), rtt, window)
                    .len(),
                1
            );
            assert!(f.began_recovery());
        }
        assert!(!f.reordering_seen());
    }

    #[test]
    fn a_burst_found_over_many_acknowledgements_is_one_recovery() {
        let rto = Duration::from_secs(10);
        let rtt = Duration::from_millis(50);
        let window = Duration::from_millis(1);
        let mut f = InFlight::default();
        // Reordering seen: a frame settled after a newer one was reported.
        f.on_sent(range(1, 0, 10, 0));
        f.on_sent(range(1, 10, 20, 10));
        f.on_sent(range(1, 20, 30, 20));
        f.on_stream_ack(1, 0, &[(10, 20)], Some(at(10)), |_| false);
        f.on_stream_ack(1, 30, &[], Some(at(20)), |_| false);
        assert!(f.reordering_seen());
        // A burst of 2 × REORDER_RESET_RECOVERIES datagrams, each hole found by
        // its own acknowledgement: one recovery, which does not forget it.
        let n = 2 * REORDER_RESET_RECOVERIES as u64;
        for i in 0..n {
            f.on_sent(range(1, 30 + 10 * i, 40 + 10 * i, 100 + i));
        }
        for i in 0..n {
            let lost = f.detect_lost(at(200 + i), rto, at(102 + i), rtt, window);
            assert_eq!(lost.len(), 1);
            assert_eq!(f.began_recovery(), i == 0);
        }
        assert!(f.reordering_seen());
    }

    #[test]
    fn the_range_declared_lost_longest_ago_is_forgotten_first() {
        let rto = Duration::from_secs(10);
        let rtt = Duration::from_millis(10);
        let window = Duration::from_millis(1);
        let mut f = InFlight::default();
        // Declared lost first, with the largest key (stream 5)...
        f.on_sent(range(5, 0, 10, 0));
        // ...then MAX_RACK_LOST ranges of stream 1, all in one detection.
        for i in 0..MAX_RACK_LOST as u64 {
            f.on_sent(range(1, 10 * i, 10 * i + 10, 1 + i));
        }
        let lost = f.detect_lost(at(3000), rto, at(2000), rtt, window);
        assert_eq!(lost.len(), MAX_RACK_LOST + 1);
        assert!(!f.reordering_seen());
        // Stream 1's first range, declared after stream 5's, is still remembered:
        // its spurious retransmission shows reordering.
        f.on_sent(SentRange {
            retransmit: true,
            ..range(1, 0, 10, 3000)
        });
        let settled = f.on_stream_ack(1, 10, &[], Some(at(2500)), |_| false);
        assert_eq!(settled.spurious, 1);
        assert!(f.reordering_seen());
    }

    #[test]
    fn rto_declares_the_oldest_lost_and_keeps_send_order() {
        let mut f = InFlight::default();
        f.on_sent(range(1, 0, 10, 0));
        f.on_sent(range(1, 10, 20, 100));
        let rto = Duration::from_millis(200);
        assert_eq!(
            f.loss_deadline(rto, Timestamp::ZERO, Duration::ZERO, Duration::ZERO),
            Some(at(200))
        );
        let lost = f.detect_lost(
            at(200),
            rto,
            Timestamp::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert_eq!(lost.len(), 1);
        assert_eq!(
            f.loss_deadline(rto, Timestamp::ZERO, Duration::ZERO, Duration::ZERO),
            Some(at(300))
        );
    }

    #[test]
    fn a_timeout_declares_one_datagram_and_an_acknowledgement_rearms_the_rest() {
        let rto = Duration::from_millis(40);
        let none = Duration::ZERO;
        let mut f = InFlight::default();
        // Datagram 0 carries two ranges, datagrams 1 to 4 one each.
        f.on_sent(range(1, 0, 5, 0));
        f.on_sent(SentRange {
            packet: 0,
            ..range(2, 0, 5, 0)
        });
        for i in 1..5 {
            f.on_sent(range(1, 5 * i, 5 * i + 5, i));
        }
        // All five are past their timeout at 50 ms: only datagram 0 (both its
        // ranges) is declared lost, to be resent as the probe.
        let lost = f.detect_lost(at(50), rto, Timestamp::ZERO, none, none);
        assert_eq!(
            lost.iter()
                .map(|r| (r.stream, r.packet))
                .collect::<Vec<_>>(),
            [(1, 0), (2, 0)]
        );
        assert!(f.probe_due());
        assert_eq!(f.timed_out_at(), Some(at(50)));
        assert_eq!(f.len(), 4);
        // The next one is past its own timeout (1 + 40 ms) but waits an eighth of
        // the timeout after the last: 55 ms.
        assert_eq!(
            f.loss_deadline(rto, Timestamp::ZERO, none, none),
            Some(at(55))
        );
        assert!(
            f.detect_lost(at(54), rto, Timestamp::ZERO, none, none)
                .is_empty()
        );
        // Nothing acknowledged by then: the next timeout takes the next datagram.
        let lost = f.detect_lost(at(55), rto, Timestamp::ZERO, none, none);
        assert_eq!(lost.iter().map(|r| r.packet).collect::<Vec<_>>(), [1]);
        // An acknowledgement settling anything counts the timeouts from the send
        // times again.
        f.on_stream_ack(1, 15, &[], Some(at(2)), |_| false);
        assert_eq!(f.timed_out_at(), None);
        assert_eq!(
            f.loss_deadline(rto, Timestamp::ZERO, none, none),
            Some(at(43))
        );
        // And the time-ordered rule still declares holes at once.
        let lost = f.detect_lost(at(42), rto, at(4), none, none);
        assert_eq!(lost.iter().map(|r| r.packet).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn only_a_timeout_makes_a_probe_due_until_one_is_sent() {
        let mut f = InFlight::default();
        f.on_sent(range(1, 0, 10, 0));
        f.on_sent(range(1, 10, 20, 1));
        f.on_sent(range(1, 20, 30, 10));
        let rto = Duration::from_millis(200);
        let rtt = Duration::from_millis(50);
        let window = Duration::from_millis(5);
        // Declared lost by the time-ordered rule: no probe.
        let lost = f.detect_lost(at(60), rto, at(10), rtt, window);
        assert_eq!(lost.len(), 2);
        assert_eq!(f.last_lost_datagrams(), 2);
        assert!(!f.probe_due());
        // The last one by the timeout: a probe may leave past the window.
        let lost = f.detect_lost(at(210), rto, at(10), rtt, window);
        assert_eq!(lost.len(), 1);
        assert_eq!(f.last_lost_datagrams(), 1);
        assert!(f.probe_due());
        f.probe_sent();
        assert!(!f.probe_due());
    }

    #[test]
    fn a_retransmission_acknowledged_by_an_older_echo_is_spurious() {
        let mut f = InFlight::default();
        let mut r = range(1, 0, 10, 100);
        r.retransmit = true;
        f.on_sent(r);
        let settled = f.on_stream_ack(1, 10, &[], Some(at(50)), |_| false);
        assert_eq!(settled.spurious, 1);
        let mut r = range(1, 10, 20, 200);
        r.retransmit = true;
        f.on_sent(r);
        let settled = f.on_stream_ack(1, 20, &[], Some(at(200)), |_| false);
        assert_eq!(settled.spurious, 0);
    }

    #[test]
    fn reset_only_ranges_settle_by_the_reset_predicate() {
        let mut f = InFlight::default();
        let mut r = range(1, 30, 30, 0);
        r.reset = true;
        f.on_sent(r);
        assert!(
            f.on_stream_ack(1, 0, &[], None, |_| false)
                .ranges
                .is_empty()
        );
        assert_eq!(
            f.on_stream_ack(1, 0, &[], None, |o| o == 30).ranges.len(),
            1
        );
    }
}
