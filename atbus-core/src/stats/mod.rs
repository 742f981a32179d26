//! Traffic statistics over sliding windows, computed from the caller's `now` alone.
//!
//! A [`StatsRecorder`] counts what one connection (or one endpoint) sent, received,
//! lost and measured, and answers for the last 1, 5, 15 and 60 seconds
//! ([`Window`]) and since it was created ([`Totals`]) (`DESIGN.md`,
//! "Observability"). Like the rest of the core it reads no clock: every call takes the
//! caller's [`Timestamp`].
//!
//! # Windows
//!
//! Time is cut into one-second slots aligned on the caller's epoch: the slot of `now`
//! is second `now.as_micros() / 1_000_000`. The recorder keeps a ring of 61 slots
//! (the current second and the 60 before it), each stamped with its second, so a slot
//! left from an earlier lap of the ring reads as empty and an idle recorder needs no
//! timer to age out.
//!
//! The window "last N seconds" at `now` is the **N complete seconds before the
//! current one**: seconds `[s − N, s)` where `s` is the second of `now`. The current,
//! partial second is left out, so a window never mixes a full second with a sliver of
//! one (a 1 s window read 10 ms into a second would otherwise extrapolate from 10 ms).
//! The cost is freshness: an event shows in the windows from the next second
//! boundary on, and a window is at most one second stale. [`Totals`] count every event
//! at once.
//!
//! Rates divide by the time the window **covers**: from the later of the window's
//! start and the recorder's creation to the window's end (the start of the current
//! second). A window that covers no time (the recorder was created in the current
//! second) reports rates of zero, never a division by zero; a recorder created at
//! 3.5 s and read at 4.2 s reports, for every window, the traffic of `[3.5 s, 4 s)`
//! divided by 0.5 s. [`WindowStats::covered`] says how much time a window covers.
//!
//! Within a window:
//! - the loss rate is `lost / sent` packets, capped at 1 (a loss is counted when it
//!   is declared, possibly in a later second than the send), and `None` when no packet
//!   was sent;
//! - the average RTT is the mean of the [`record_rtt`](StatsRecorder::record_rtt)
//!   samples, `None` without samples;
//! - the histogram counts the [`record_latency`](StatsRecorder::record_latency)
//!   samples, whatever the caller measures with them (RTT samples, message delivery
//!   latencies): the recorder does not feed it from `record_rtt`.
//!
//! Time going backwards is a caller bug, and it does not panic or corrupt a window: an
//! event stamped before the newest second already recorded is counted in that newest
//! second, and a read at such a `now` reads as of the newest second.
//!
//! # Cost
//!
//! A recorder is a fixed ring, allocated once at creation (61 slots of 136 bytes,
//! about 8 KiB); recording allocates nothing. Recording is a compare against the
//! current slot's second and a few saturating adds; a new second costs one slot reset,
//! and a latency sample adds a table lookup for its bucket (every edge is a multiple
//! of 5 ms: one division by a constant, one load from a 400-byte table).
//! Reading a window sums at most 60 slots.
//!
//! # Endpoint-wide figures
//!
//! The endpoint keeps a recorder of its own and feeds it the same calls as the
//! connection's recorder: two recorders cost one more set of adds per event and keep
//! the endpoint's figures after a connection is gone. To combine recorders after the
//! fact (per peer, or a closed connection's history), [`StatsRecorder::merge`] adds
//! one recorder's slots and totals into another's.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use atbus_core::Timestamp;
//! use atbus_core::stats::{StatsRecorder, Window};
//!
//! let start = Timestamp::from_micros(10_000_000); // 10 s on the caller's clock
//! let mut stats = StatsRecorder::new(start);
//! stats.record_sent(start, 1_200, 1);
//! stats.record_sent(start + Duration::from_millis(300), 1_200, 2);
//! stats.record_received(start + Duration::from_millis(400), 600, 1);
//! stats.record_rtt(start + Duration::from_millis(400), Duration::from_millis(20));
//! stats.record_latency(start + Duration::from_millis(400), Duration::from_millis(20));
//!
//! // The second [10 s, 11 s) is complete from 11 s on.
//! let now = start + Duration::from_millis(1_500);
//! let last_second = stats.window(now, Window::S1);
//! assert_eq!(last_second.packets_sent, 2);
//! assert_eq!(last_second.fragments_sent, 3);
//! assert_eq!(last_second.bytes_sent_per_sec, 2_400.0);
//! assert_eq!(last_second.average_rtt, Some(Duration::from_millis(20)));
//! assert_eq!(last_second.histogram.counts()[1], 1); // the [15 ms, 30 ms) bucket
//! assert_eq!(last_second.loss_rate, Some(0.0));
//!
//! // Totals count at once; the 60 s window has covered one second so far.
//! let snapshot = stats.snapshot(now);
//! assert_eq!(snapshot.totals.bytes_received, 600);
//! assert_eq!(snapshot.window(Window::S60).covered, Duration::from_secs(1));
//! ```

mod histogram;
mod recorder;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::time::Timestamp;

pub use histogram::{HISTOGRAM_BUCKETS, HISTOGRAM_EDGES_MS, LatencyHistogram};
pub use recorder::StatsRecorder;

/// A sliding window: the last 1, 5, 15 or 60 complete seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// The last second.
    S1,
    /// The last 5 seconds.
    S5,
    /// The last 15 seconds.
    S15,
    /// The last 60 seconds.
    S60,
}

impl Window {
    /// Every window, shortest first (the order of [`StatsSnapshot::windows`]).
    pub const ALL: [Window; 4] = [Window::S1, Window::S5, Window::S15, Window::S60];

    /// Length in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Window::S1 => 1,
            Window::S5 => 5,
            Window::S15 => 15,
            Window::S60 => 60,
        }
    }

    /// Length.
    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.seconds())
    }

    /// A short label for displays and metric attributes: `"1s"`, `"5s"`, `"15s"`,
    /// `"60s"`.
    pub const fn label(self) -> &'static str {
        match self {
            Window::S1 => "1s",
            Window::S5 => "5s",
            Window::S15 => "15s",
            Window::S60 => "60s",
        }
    }

    /// Position in [`Window::ALL`].
    const fn index(self) -> usize {
        self as usize
    }
}

/// Counts since a recorder was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Totals {
    /// Packets sent (one per `record_sent`).
    pub packets_sent: u64,
    /// Packets received (one per `record_received`).
    pub packets_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Fragments sent.
    pub fragments_sent: u64,
    /// Fragments received.
    pub fragments_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// RTT samples taken.
    pub rtt_samples: u64,
    /// Latency samples counted in the histograms.
    pub latency_samples: u64,
}

impl Totals {
    /// Adds `other`'s counts to these (saturating).
    pub fn merge(&mut self, other: &Totals) {
        let Totals {
            packets_sent,
            packets_received,
            bytes_sent,
            bytes_received,
            fragments_sent,
            fragments_received,
            lost_packets,
            rtt_samples,
            latency_samples,
        } = *other;
        self.packets_sent = self.packets_sent.saturating_add(packets_sent);
        self.packets_received = self.packets_received.saturating_add(packets_received);
        self.bytes_sent = self.bytes_sent.saturating_add(bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(bytes_received);
        self.fragments_sent = self.fragments_sent.saturating_add(fragments_sent);
        self.fragments_received = self.fragments_received.saturating_add(fragments_received);
        self.lost_packets = self.lost_packets.saturating_add(lost_packets);
        self.rtt_samples = self.rtt_samples.saturating_add(rtt_samples);
        self.latency_samples = self.latency_samples.saturating_add(latency_samples);
    }
}

/// What one [`Window`] saw; see the [module documentation](self) for the exact
/// semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    /// The window.
    pub window: Window,
    /// The time the window covers: its length, less any part before the recorder
    /// was created. Rates divide by it.
    pub covered: Duration,
    /// Bytes sent in the window.
    pub bytes_sent: u64,
    /// Bytes received in the window.
    pub bytes_received: u64,
    /// `bytes_sent / covered`, 0 when the window covers no time.
    pub bytes_sent_per_sec: f64,
    /// `bytes_received / covered`, 0 when the window covers no time.
    pub bytes_received_per_sec: f64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Fragments sent.
    pub fragments_sent: u64,
    /// Fragments received.
    pub fragments_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// `lost_packets / packets_sent`, at most 1; `None` when no packet was sent.
    pub loss_rate: Option<f64>,
    /// RTT samples taken.
    pub rtt_samples: u64,
    /// Mean of the RTT samples (to the microsecond); `None` without samples.
    pub average_rtt: Option<Duration>,
    /// The latency samples.
    pub histogram: LatencyHistogram,
}

impl WindowStats {
    /// `count / covered`: a per-second rate of any count of this window (packets,
    /// fragments, ...), 0 when the window covers no time.
    pub fn per_second(&self, count: u64) -> f64 {
        per_second(count, self.covered)
    }
}

/// `count / covered` in units per second, 0 for no time covered.
fn per_second(count: u64, covered: Duration) -> f64 {
    if covered.is_zero() {
        0.0
    } else {
        count as f64 / covered.as_secs_f64()
    }
}

/// Every window and the totals, read at one `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// When the snapshot was read.
    pub at: Timestamp,
    /// Counts since the recorder was created.
    pub totals: Totals,
    /// Every latency sample since the recorder was created, by bucket: cumulative,
    /// unlike the windows' histograms (exporters that report cumulative histograms,
    /// such as OpenTelemetry's, use it).
    pub histogram_total: LatencyHistogram,
    /// The windows in the order of [`Window::ALL`].
    pub windows: [WindowStats; 4],
}

impl Default for StatsSnapshot {
    /// Nothing recorded, read at [`Timestamp::ZERO`].
    fn default() -> Self {
        StatsRecorder::new(Timestamp::ZERO).snapshot(Timestamp::ZERO)
    }
}

impl StatsSnapshot {
    /// The figures of `window`.
    pub fn window(&self, window: Window) -> &WindowStats {
        &self.windows[window.index()]
    }
}
