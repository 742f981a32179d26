//! Congestion control: how many bytes a connection may keep in flight, and how fast
//! it may release them.
//!
//! The sender owns bandwidth control (`DESIGN.md`, "Reliability, timing and
//! control"). A connection asks its [`CongestionController`] for a window and a
//! pacing rate, and reports sends, acknowledgements, losses and RTT samples. The
//! controllers:
//!
//! - [`Cubic`] (RFC 9438, with HyStart++ slow start, RFC 9406): the default on
//!   datagram paths;
//! - [`FixedRate`]: a configured rate, for trusted intranets; losses do not slow it;
//! - [`FixedWindow`] (alias [`NoControl`]): a constant window, for reliable
//!   transports, where it only bounds multi-path bookkeeping;
//! - [`NewReno`]: the AIMD controller of the first release, kept for comparison.
//!
//! [`CongestionAlgorithm`] names one of them and builds it. The design and the
//! constants are explained in `docs/congestion.md`.

mod cubic;
mod fixed_rate;
mod hystart;
#[cfg(test)]
mod model;
mod new_reno;

use std::fmt::Debug;
use std::time::Duration;

use crate::connection::rtt::RttEstimator;
use crate::time::Timestamp;

pub use cubic::Cubic;
pub use fixed_rate::FixedRate;
pub use new_reno::NewReno;

/// Window parameters shared by the controllers, in datagrams of the connection's MTU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CongestionConfig {
    /// Initial window.
    pub initial_window_packets: usize,
    /// The window never shrinks below this.
    pub min_window_packets: usize,
    /// The window never grows beyond this many bytes.
    pub max_window_bytes: usize,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        CongestionConfig {
            initial_window_packets: 32,
            min_window_packets: 4,
            max_window_bytes: 16 * 1024 * 1024,
        }
    }
}

impl CongestionConfig {
    /// The smallest window for this MTU, in bytes (at least one datagram).
    pub fn min_window(&self, mtu: usize) -> usize {
        self.min_window_packets.max(1).saturating_mul(mtu.max(1))
    }

    /// `window` within `[min_window(mtu), max_window_bytes]` (the minimum wins when
    /// they conflict).
    pub fn clamp(&self, window: usize, mtu: usize) -> usize {
        let min = self.min_window(mtu);
        window.clamp(min, self.max_window_bytes.max(min))
    }
}

/// Decides how many bytes may be in flight on one connection, and how fast they may
/// leave.
///
/// Every method takes the caller's `now`; no implementation reads a clock. Only
/// [`window`](Self::window), [`on_acked`](Self::on_acked),
/// [`on_lost`](Self::on_lost) and [`on_mtu`](Self::on_mtu) are required; the other
/// inputs have no-op defaults, so a caller that does not report them gets a
/// controller that behaves as if the sender were always window-limited and never
/// saw an RTT sample.
pub trait CongestionController: Debug + Send {
    /// Bytes that may be unacknowledged in flight now.
    fn window(&self) -> usize;
    /// `bytes` sent at `sent_at` were acknowledged at `now`.
    fn on_acked(&mut self, now: Timestamp, sent_at: Timestamp, bytes: usize);
    /// `bytes` sent at `sent_at` were declared lost at `now`. Losses of packets sent
    /// before the current reduction began do not reduce the window again.
    fn on_lost(&mut self, now: Timestamp, sent_at: Timestamp, bytes: usize);
    /// The connection's MTU changed.
    fn on_mtu(&mut self, mtu: usize);
    /// One retransmission turned out spurious (the original had arrived); called
    /// once per such retransmission. When every loss of the recovery episode proved
    /// spurious, the reduction is undone, exactly once.
    fn on_spurious_loss(&mut self) {}
    /// `bytes` were sent at `now`, leaving `bytes_in_flight` bytes in flight (these
    /// included). Controllers use it to tell a window-limited sender from an
    /// application-limited one, and do not grow the window of the latter.
    fn on_sent(&mut self, now: Timestamp, bytes: usize, bytes_in_flight: usize) {
        let _ = (now, bytes, bytes_in_flight);
    }
    /// The connection took an RTT sample; `rtt` holds it (`latest()`) with the
    /// smoothed and minimum RTT. Slow start uses it to exit before the bottleneck
    /// queue overflows.
    fn on_rtt_sample(&mut self, now: Timestamp, rtt: &RttEstimator) {
        let _ = (now, rtt);
    }
    /// Persistent congestion: a retransmission timeout fired with nothing
    /// acknowledged since (RFC 9002 §7.6). The window collapses to its minimum.
    fn on_persistent_congestion(&mut self, now: Timestamp) {
        let _ = now;
    }
    /// The rate, in bytes per second, at which the pacer should release data, given
    /// the smoothed RTT; `None` for no pacing.
    fn pacing_rate(&self, srtt: Duration) -> Option<u64> {
        let _ = srtt;
        None
    }
    /// Whether the controller is in slow start (for statistics and tests).
    fn in_slow_start(&self) -> bool {
        false
    }
}

/// A fixed window: for reliable connections, where it only bounds the unacknowledged
/// bytes kept for multi-path bookkeeping. No pacing.
#[derive(Debug, Clone)]
pub struct FixedWindow(pub usize);

/// The "no congestion control" controller of reliable transports.
pub type NoControl = FixedWindow;

impl CongestionController for FixedWindow {
    fn window(&self) -> usize {
        self.0
    }
    fn on_acked(&mut self, _: Timestamp, _: Timestamp, _: usize) {}
    fn on_lost(&mut self, _: Timestamp, _: Timestamp, _: usize) {}
    fn on_mtu(&mut self, _: usize) {}
}

/// Which controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionAlgorithm {
    /// CUBIC with HyStart++ (the default for datagram paths).
    #[default]
    Cubic,
    /// The AIMD controller of the first release.
    NewReno,
    /// A configured rate, whatever the losses.
    FixedRate {
        /// The rate, in bytes per second.
        bytes_per_second: u64,
    },
    /// No congestion control: a window of `max_window_bytes`, no pacing.
    NoControl,
}

impl CongestionAlgorithm {
    /// A controller of this kind for a connection of this MTU.
    pub fn build(self, config: CongestionConfig, mtu: usize) -> Box<dyn CongestionController> {
        match self {
            CongestionAlgorithm::Cubic => Box::new(Cubic::new(config, mtu)),
            CongestionAlgorithm::NewReno => Box::new(NewReno::new(config, mtu)),
            CongestionAlgorithm::FixedRate { bytes_per_second } => {
                Box::new(FixedRate::new(config, mtu, bytes_per_second))
            }
            CongestionAlgorithm::NoControl => Box::new(FixedWindow(config.max_window_bytes)),
        }
    }
}

/// A [`CongestionAlgorithm`] name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown congestion controller {0:?}: expected cubic, newreno, fixed:RATE (e.g. \
     fixed:5mbit; bit, kbit, mbit or gbit per second) or none"
)]
pub struct UnknownAlgorithm(pub String);

impl std::str::FromStr for CongestionAlgorithm {
    type Err = UnknownAlgorithm;

    /// `cubic`, `newreno`, `fixed:RATE` (RATE a positive number of `bit`, `kbit`,
    /// `mbit` or `gbit` per second) or `none`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownAlgorithm(name.to_string());
        match name {
            "cubic" => Ok(CongestionAlgorithm::Cubic),
            "newreno" => Ok(CongestionAlgorithm::NewReno),
            "none" => Ok(CongestionAlgorithm::NoControl),
            _ => {
                let rate = name.strip_prefix("fixed:").ok_or_else(unknown)?;
                let digits = rate.find(|c: char| !c.is_ascii_digit() && c != '.');
                let (number, unit) = rate.split_at(digits.unwrap_or(rate.len()));
                let scale = match unit {
                    "bit" => 1.0,
                    "kbit" => 1e3,
                    "mbit" => 1e6,
                    "gbit" => 1e9,
                    _ => return Err(unknown()),
                };
                let bits: f64 = number.parse().map_err(|_| unknown())?;
                let bytes_per_second = (bits * scale / 8.0).round();
                if !(bytes_per_second >= 1.0 && bytes_per_second < u64::MAX as f64) {
                    return Err(unknown());
                }
                Ok(CongestionAlgorithm::FixedRate {
                    bytes_per_second: bytes_per_second as u64,
                })
            }
        }
    }
}

/// `window × numerator / denominator` bytes per `srtt`, in bytes per second,
/// saturating; a zero `srtt` counts as one microsecond.
pub fn rate_from_window(window: usize, srtt: Duration, numerator: u64, denominator: u64) -> u64 {
    let micros = srtt.as_micros().max(1);
    let bytes = (window as u128).saturating_mul(u128::from(numerator)) * 1_000_000;
    let rate = bytes / micros / u128::from(denominator.max(1));
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// RFC 9002 §6.1.2: the timer granularity, the least RTT variance term of a PTO.
const GRANULARITY: Duration = Duration::from_millis(1);

/// Whether a second timeout in a row at `now` is persistent congestion: RFC 9002
/// §7.6.1 asks for nothing acknowledged during three PTOs (`srtt + 4 × rttvar`,
/// `last_ack` the latest acknowledgement). Two timeouts in a row come much sooner
/// when the timeout does not back off (the tail of one burst of losses, one
/// datagram after the other): that is one congestion event, already reduced for.
pub(crate) fn is_persistent_congestion(
    now: Timestamp,
    last_ack: Option<Timestamp>,
    srtt: Duration,
    rtt_variance: Duration,
) -> bool {
    let pto = srtt.saturating_add(rtt_variance.saturating_mul(4).max(GRANULARITY));
    last_ack.is_none_or(|last| now.saturating_since(last) >= pto.saturating_mul(3))
}

/// Round trips counted from acknowledgements: a round ends when a packet sent after
/// it began is acknowledged (RFC 9406 §4.2 without packet numbers: send times).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rounds {
    /// Packets sent at or after this instant belong to the next round.
    marker: Option<Timestamp>,
}

impl Rounds {
    /// Whether the acknowledgement at `now` of a packet sent at `sent_at` starts a
    /// new round.
    pub(crate) fn on_acked(&mut self, now: Timestamp, sent_at: Timestamp) -> bool {
        if self.marker.is_none_or(|marker| sent_at >= marker) {
            self.marker = Some(now);
            true
        } else {
            false
        }
    }
}

/// One congestion-recovery episode (RFC 6582 §3.2, RFC 9002 §7.3.2): the losses of
/// packets sent before it began belong to it and reduce the window once; the state
/// before the reduction is kept, and restored once, when every loss of the episode
/// proved spurious (each of its retransmissions was acknowledged by an ACK sent
/// before it could have arrived) — not when only some did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Episode<S> {
    /// Losses of packets sent before this instant belong to the episode.
    start: Option<Timestamp>,
    /// The controller's state before the reduction; `None` once undone.
    saved: Option<S>,
    /// Losses declared in the episode (ranges).
    lost: u64,
    /// Of those, shown spurious so far.
    spurious: u64,
}

impl<S> Default for Episode<S> {
    fn default() -> Self {
        Episode {
            start: None,
            saved: None,
            lost: 0,
            spurious: 0,
        }
    }
}

impl<S: Copy> Episode<S> {
    /// Whether a packet sent at `sent_at` belongs to the episode in progress.
    pub(crate) fn covers(&self, sent_at: Timestamp) -> bool {
        self.start.is_some_and(|start| sent_at < start)
    }

    /// When the episode in progress began.
    pub(crate) fn start(&self) -> Option<Timestamp> {
        self.start
    }

    /// A loss of a packet sent at `sent_at`: `true` if it starts a new episode (the
    /// caller then reduces the window after [`begin`](Self::begin)); `false` if the
    /// episode in progress already answered it.
    pub(crate) fn on_lost(&mut self, sent_at: Timestamp) -> bool {
        if self.covers(sent_at) {
            self.lost = self.lost.saturating_add(1);
            false
        } else {
            true
        }
    }

    /// A new episode begins at `now`, `saved` being the state before its reduction;
    /// `losses` is how many losses started it (0 for a timeout without one).
    pub(crate) fn begin(&mut self, now: Timestamp, saved: S, losses: u64) {
        self.start = Some(now);
        self.saved = Some(saved);
        self.lost = losses;
        self.spurious = 0;
    }

    /// A new episode begins at `now` that no spurious loss can undo: the signal
    /// that started it was not a loss (a standing queue), so there is nothing to
    /// prove spurious.
    pub(crate) fn begin_final(&mut self, now: Timestamp) {
        self.start = Some(now);
        self.saved = None;
        self.lost = 0;
        self.spurious = 0;
    }

    /// One retransmission proved spurious. Returns the saved state when that makes
    /// every loss of the episode spurious; the episode then ends, and cannot be
    /// undone twice.
    pub(crate) fn on_spurious(&mut self) -> Option<S> {
        self.saved?;
        self.spurious = self.spurious.saturating_add(1);
        if self.spurious < self.lost {
            return None;
        }
        self.start = None;
        self.lost = 0;
        self.spurious = 0;
        self.saved.take()
    }
}

/// Tells a window-limited sender from an application-limited one by the largest
/// flight of this round and the last: the window is *validated* (may grow) while
/// that flight is at least half of it (RFC 7661 §4.3, the `pipeACK ≥ ½ cwnd` rule;
/// Linux `tcp_is_cwnd_limited` uses the same in slow start). Half, not all: a
/// sender held back by the pacer, or whose RTT just fell below the smoothed one,
/// is not application-limited, and an application using part of its window keeps
/// a window at most twice its use.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Utilization {
    /// Whether sends are reported at all; if not, the sender counts as limited.
    reported: bool,
    peak_this_round: usize,
    peak_last_round: usize,
}

impl Utilization {
    pub(crate) fn on_sent(&mut self, bytes_in_flight: usize) {
        self.reported = true;
        self.peak_this_round = self.peak_this_round.max(bytes_in_flight);
    }

    pub(crate) fn on_round(&mut self) {
        self.peak_last_round = self.peak_this_round;
        self.peak_this_round = 0;
    }

    /// Whether the sender filled `window` (to within `slack` bytes) at some point
    /// this round or the last; if not, it sent all the application offered.
    pub(crate) fn filled(&self, window: usize, slack: usize) -> bool {
        !self.reported
            || self
                .peak_this_round
                .max(self.peak_last_round)
                .saturating_add(slack)
                >= window
    }

    /// Whether the sender used enough of `window` for it to grow.
    pub(crate) fn window_limited(&self, window: usize) -> bool {
        !self.reported
            || self
                .peak_this_round
                .max(self.peak_last_round)
                .saturating_mul(2)
                >= window
    }
}

#[cfg(test)]
mod tests {
    use super::model::{Bottleneck, FlowSpec, run};
    use super::*;
    use crate::connection::pmtud::{Pmtud, PmtudConfig};

    const MBIT: u64 = 1_000_000 / 8;

    fn secs(n: u64) -> Timestamp {
        Timestamp::from_micros(n * 1_000_000)
    }

    fn link(rtt_ms: u64) -> Bottleneck {
        Bottleneck {
            rate: 20 * MBIT,
            queue: 64 * 1024,
            rtt: Duration::from_millis(rtt_ms),
            mtu: 1452,
            link_mtu: Vec::new(),
        }
    }

    fn flow(algorithm: CongestionAlgorithm, start: Timestamp) -> FlowSpec {
        FlowSpec {
            cc: algorithm.build(CongestionConfig::default(), 1452),
            start,
            pmtud: None,
        }
    }

    #[test]
    fn cubic_fills_a_20_mbit_link_with_a_64_kb_queue_without_overflowing_it() {
        for rtt in [20, 40, 80] {
            let path = link(rtt);
            let flows = vec![flow(CongestionAlgorithm::Cubic, Timestamp::ZERO)];
            let stats = run(&path, flows, Timestamp::ZERO, secs(10))[0];
            let goodput = stats.delivered_bytes as f64 / (path.rate * 10) as f64;
            let loss = stats.dropped as f64 / stats.sent as f64;
            assert!(goodput >= 0.85, "rtt {rtt}: goodput {goodput:.3} {stats:?}");
            assert!(loss < 0.02, "rtt {rtt}: loss {loss:.4} {stats:?}");
            assert_eq!(stats.timeouts, 0, "rtt {rtt}");
        }
    }

    /// 20 ms RTT, a 64 KB queue holding 26 ms: the flow started 1 s later takes
    /// its minimum RTT with the first flow's queue in it. Measured: 37.1 MB vs
    /// 37.9 MB over the 30 s (0.98), the link full (it used to be ignored: the
    /// late flow took about 80 %, before CUBIC's persistent-congestion guard).
    #[test]
    fn two_cubic_flows_share_a_link_within_20_percent() {
        let path = link(20);
        let flows = vec![
            flow(CongestionAlgorithm::Cubic, secs(0)),
            flow(CongestionAlgorithm::Cubic, secs(1)),
        ];
        let stats = run(&path, flows, secs(10), secs(40));
        let (a, b) = (
            stats[0].measured_bytes as f64,
            stats[1].measured_bytes as f64,
        );
        assert!((a - b).abs() / a.max(b) < 0.2, "{stats:?}");
        let total = (a + b) / (path.rate * 30) as f64;
        assert!(total >= 0.85, "{total:.3} {stats:?}");
    }

    #[test]
    fn fixed_rate_holds_5_mbit_on_a_20_mbit_link() {
        let path = link(20);
        let algorithm = CongestionAlgorithm::FixedRate {
            bytes_per_second: 5 * MBIT,
        };
        let stats = run(
            &path,
            vec![flow(algorithm, Timestamp::ZERO)],
            secs(1),
            secs(11),
        )[0];
        let rate = stats.measured_bytes as f64 / 10.0;
        assert!(
            (rate / (5 * MBIT) as f64 - 1.0).abs() < 0.05,
            "{rate} {stats:?}"
        );
        assert_eq!(stats.dropped, 0);
    }

    fn pmtud_flow() -> FlowSpec {
        FlowSpec {
            pmtud: Some(Pmtud::new(PmtudConfig::ipv4(), Timestamp::ZERO)),
            ..flow(CongestionAlgorithm::Cubic, Timestamp::ZERO)
        }
    }

    #[test]
    fn pmtud_discovers_a_1400_byte_link_within_5_seconds_under_load() {
        let mut path = link(20);
        path.link_mtu = vec![(Timestamp::ZERO, 1400)];
        let stats = run(&path, vec![pmtud_flow()], secs(5), secs(10))[0];
        assert!((1380..=1400).contains(&stats.final_mtu), "{stats:?}");
        assert!(stats.mtu_changed_at <= secs(5), "{stats:?}");
        assert_eq!(stats.too_big, 0, "{stats:?}");
    }

    #[test]
    fn a_link_mtu_drop_mid_run_costs_at_most_about_two_timeouts() {
        let mut path = link(20);
        path.link_mtu = vec![(Timestamp::ZERO, 1452), (secs(5), 1300)];
        let stats = run(&path, vec![pmtud_flow()], secs(4), secs(15))[0];
        assert!((1280..=1300).contains(&stats.final_mtu), "{stats:?}");
        // The first timeout (1.2 × an RTT of 20 ms plus queueing), a round trip to
        // confirm the black hole with two probes, and one to deliver at the base:
        // about two timeouts.
        assert!(
            stats.longest_stall < Duration::from_millis(100),
            "{stats:?}"
        );
        let goodput = stats.measured_bytes as f64 / (path.rate * 11) as f64;
        assert!(goodput >= 0.8, "{goodput:.3} {stats:?}");
    }

    #[test]
    fn algorithms_build_their_controllers() {
        let config = CongestionConfig::default();
        let cubic = CongestionAlgorithm::default().build(config, 1000);
        assert_eq!(cubic.window(), 32_000);
        assert!(cubic.pacing_rate(Duration::from_millis(100)).is_some());
        let fixed = CongestionAlgorithm::FixedRate {
            bytes_per_second: 1_000_000,
        }
        .build(config, 1000);
        assert_eq!(
            fixed.pacing_rate(Duration::from_millis(10)),
            Some(1_000_000)
        );
        let none = CongestionAlgorithm::NoControl.build(config, 1000);
        assert_eq!(none.window(), config.max_window_bytes);
        assert_eq!(none.pacing_rate(Duration::from_millis(10)), None);
        let reno = CongestionAlgorithm::NewReno.build(config, 1000);
        assert_eq!(reno.window(), 32_000);
    }

    #[test]
    fn algorithms_parse_from_their_names() {
        assert_eq!("cubic".parse(), Ok(CongestionAlgorithm::Cubic));
        assert_eq!("newreno".parse(), Ok(CongestionAlgorithm::NewReno));
        assert_eq!("none".parse(), Ok(CongestionAlgorithm::NoControl));
        assert_eq!(
            "fixed:5mbit".parse(),
            Ok(CongestionAlgorithm::FixedRate {
                bytes_per_second: 625_000
            })
        );
        assert_eq!(
            "fixed:1.5kbit".parse(),
            Ok(CongestionAlgorithm::FixedRate {
                bytes_per_second: 188
            })
        );
        for bad in [
            "",
            "reno",
            "fixed:",
            "fixed:0mbit",
            "fixed:5",
            "fixed:-1mbit",
            "fixed:1e30gbit",
        ] {
            assert!(bad.parse::<CongestionAlgorithm>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_from_window_saturates_and_survives_zero_rtt() {
        assert_eq!(
            rate_from_window(100_000, Duration::from_millis(100), 5, 4),
            1_250_000
        );
        assert_eq!(rate_from_window(usize::MAX, Duration::ZERO, 2, 1), u64::MAX);
        assert_eq!(rate_from_window(0, Duration::MAX, 2, 1), 0);
        assert_eq!(rate_from_window(1000, Duration::from_secs(1), 1, 0), 1000);
    }

    #[test]
    fn rounds_end_when_a_packet_sent_after_their_start_is_acknowledged() {
        let mut rounds = Rounds::default();
        let at = Timestamp::from_micros;
        assert!(rounds.on_acked(at(100), at(0)));
        assert!(!rounds.on_acked(at(110), at(50)));
        assert!(rounds.on_acked(at(200), at(100)));
    }
}
