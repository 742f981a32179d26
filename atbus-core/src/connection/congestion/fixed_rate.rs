//! A controller that sends at a configured rate, for trusted intranets where the
//! operator knows the bandwidth and losses are not congestion signals.

use std::time::Duration;

use super::{CongestionConfig, CongestionController};
use crate::connection::rtt::RttEstimator;
use crate::time::Timestamp;

/// The window covers this many smoothed RTTs at the configured rate, so that RTT
/// noise and delayed acknowledgements never make the window, not the pacer, the
/// limit.
const WINDOW_RTTS: u32 = 2;

/// Sends at `bytes_per_second`: the pacing rate is exactly the configured rate and
/// the window is `2 × rate × srtt` (at least `min_window_packets` datagrams, at most
/// `max_window_bytes`), so the pacer sets the pace. Losses, spurious or not, change
/// nothing. Before the first RTT sample the window is the configured initial one.
///
/// ```
/// use std::time::Duration;
/// use atbus_core::connection::congestion::{CongestionConfig, CongestionController, FixedRate};
///
/// let cc = FixedRate::new(CongestionConfig::default(), 1200, 625_000); // 5 Mbit/s
/// assert_eq!(cc.pacing_rate(Duration::from_millis(40)), Some(625_000));
/// ```
#[derive(Debug, Clone)]
pub struct FixedRate {
    config: CongestionConfig,
    mtu: usize,
    bytes_per_second: u64,
    srtt: Option<Duration>,
}

impl FixedRate {
    /// A controller sending `bytes_per_second` on a connection of this MTU.
    pub fn new(config: CongestionConfig, mtu: usize, bytes_per_second: u64) -> Self {
        FixedRate {
            config,
            mtu: mtu.max(1),
            bytes_per_second,
            srtt: None,
        }
    }

    /// The configured rate, bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }
}

impl CongestionController for FixedRate {
    fn window(&self) -> usize {
        let window = match self.srtt {
            None => self.config.initial_window_packets.saturating_mul(self.mtu),
            Some(srtt) => {
                let bytes = u128::from(self.bytes_per_second)
                    .saturating_mul(srtt.saturating_mul(WINDOW_RTTS).as_micros())
                    / 1_000_000;
                usize::try_from(bytes).unwrap_or(usize::MAX)
            }
        };
        self.config.clamp(window, self.mtu)
    }

    fn on_acked(&mut self, _: Timestamp, _: Timestamp, _: usize) {}

    fn on_lost(&mut self, _: Timestamp, _: Timestamp, _: usize) {}

    fn on_mtu(&mut self, mtu: usize) {
        self.mtu = mtu.max(1);
    }

    fn on_rtt_sample(&mut self, _now: Timestamp, rtt: &RttEstimator) {
        self.srtt = Some(rtt.smoothed());
    }

    fn pacing_rate(&self, _srtt: Duration) -> Option<u64> {
        Some(self.bytes_per_second)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::connection::pacing::Pacer;
    use crate::connection::rtt::RtoConfig;

    #[test]
    fn the_window_covers_two_round_trips_at_the_rate_and_losses_change_nothing() {
        let mut cc = FixedRate::new(CongestionConfig::default(), 1000, 1_000_000);
        assert_eq!(cc.window(), 32_000);
        let mut rtt = RttEstimator::new(RtoConfig::default());
        rtt.on_sample(Duration::from_millis(50));
        cc.on_rtt_sample(Timestamp::ZERO, &rtt);
        assert_eq!(cc.window(), 100_000);
        cc.on_lost(Timestamp::from_micros(1), Timestamp::ZERO, 1000);
        cc.on_persistent_congestion(Timestamp::from_micros(2));
        assert_eq!(cc.window(), 100_000);
        // Tiny RTTs still leave the minimum window; huge ones the maximum.
        rtt = RttEstimator::new(RtoConfig::default());
        rtt.on_sample(Duration::from_micros(1));
        cc.on_rtt_sample(Timestamp::ZERO, &rtt);
        assert_eq!(cc.window(), 4_000);
        let mut huge = FixedRate::new(CongestionConfig::default(), 1000, u64::MAX);
        rtt.on_sample(Duration::from_secs(1 << 40));
        huge.on_rtt_sample(Timestamp::ZERO, &rtt);
        assert_eq!(huge.window(), CongestionConfig::default().max_window_bytes);
    }

    #[test]
    fn five_megabits_are_held_within_one_percent_over_ten_seconds() {
        // A sender with unlimited data, 1452-byte datagrams, paced and windowed by
        // the controller, on a path with a 40 ms RTT that acknowledges everything.
        let rate = 5_000_000 / 8;
        let mtu = 1452;
        let rtt = Duration::from_millis(40);
        let mut cc = FixedRate::new(CongestionConfig::default(), mtu, rate);
        let mut estimator = RttEstimator::new(RtoConfig::default());
        estimator.on_sample(rtt);
        cc.on_rtt_sample(Timestamp::ZERO, &estimator);
        let mut pacer = Pacer::for_mtu(mtu);
        let mut in_flight: VecDeque<Timestamp> = VecDeque::new();
        let mut now = Timestamp::ZERO;
        let end = Timestamp::from_micros(10_000_000);
        let mut sent = 0u64;
        while now < end {
            while in_flight.front().is_some_and(|&t| t + rtt <= now) {
                in_flight.pop_front();
            }
            let pacing = cc.pacing_rate(rtt).unwrap();
            let window_open = (in_flight.len() + 1) * mtu <= cc.window();
            match pacer.next_send_time(now, mtu, pacing) {
                None if window_open => {
                    pacer.on_sent(now, mtu, pacing);
                    in_flight.push_back(now);
                    sent += mtu as u64;
                }
                None => now = *in_flight.front().unwrap() + rtt,
                Some(at) => now = at,
            }
        }
        let expected = rate * 10;
        let error = sent.abs_diff(expected) as f64 / expected as f64;
        assert!(error < 0.01, "sent {sent}, expected {expected}");
    }
}
