//! The NewReno-style AIMD controller of the first release.

use std::time::Duration;

use super::{CongestionConfig, CongestionController, Episode, is_persistent_congestion};
use crate::connection::rtt::RttEstimator;
use crate::time::Timestamp;

/// Slow start then additive increase, multiplicative decrease (RFC 5681 / 9002
/// style, with CUBIC's gentler 0.7 decrease): one window reduction per round of
/// losses, undone when the loss proves spurious.
#[derive(Debug, Clone)]
pub struct NewReno {
    config: CongestionConfig,
    mtu: usize,
    window: usize,
    threshold: usize,
    /// The recovery episode, with the window and threshold before its reduction.
    episode: Episode<(usize, usize)>,
    /// Bytes acknowledged in congestion avoidance since the window last grew.
    acked_in_avoidance: usize,
    /// The latest acknowledgement, and the smoothed RTT and its variance: what
    /// tells persistent congestion from two quick timeouts of one burst.
    last_ack: Option<Timestamp>,
    srtt: Duration,
    rtt_variance: Duration,
}

impl NewReno {
    /// A controller for a connection of this MTU.
    pub fn new(config: CongestionConfig, mtu: usize) -> Self {
        let mut controller = NewReno {
            config,
            mtu,
            window: 0,
            threshold: usize::MAX,
            episode: Episode::default(),
            acked_in_avoidance: 0,
            last_ack: None,
            srtt: Duration::from_millis(100),
            rtt_variance: Duration::ZERO,
        };
        controller.window = controller.clamp(config.initial_window_packets.saturating_mul(mtu));
        controller
    }

    fn min_window(&self) -> usize {
        self.config
            .min_window_packets
            .max(1)
            .saturating_mul(self.mtu)
    }

    fn clamp(&self, window: usize) -> usize {
        window.clamp(
            self.min_window(),
            self.config.max_window_bytes.max(self.min_window()),
        )
    }
}

impl CongestionController for NewReno {
    fn window(&self) -> usize {
        self.window
    }

    fn on_acked(&mut self, now: Timestamp, sent_at: Timestamp, bytes: usize) {
        self.last_ack = Some(now);
        if self.episode.covers(sent_at) {
            return;
        }
        if self.window < self.threshold {
            self.window = self.clamp(self.window.saturating_add(bytes));
        } else {
            self.acked_in_avoidance += bytes;
            if self.acked_in_avoidance >= self.window {
                self.acked_in_avoidance -= self.window;
                self.window = self.clamp(self.window.saturating_add(self.mtu));
            }
        }
    }

    fn on_lost(&mut self, now: Timestamp, sent_at: Timestamp, _bytes: usize) {
        if !self.episode.on_lost(sent_at) {
            return;
        }
        self.episode.begin(now, (self.window, self.threshold), 1);
        self.window = self.clamp(self.window * 7 / 10);
        self.threshold = self.window;
        self.acked_in_avoidance = 0;
    }

    fn on_spurious_loss(&mut self) {
        if let Some((window, threshold)) = self.episode.on_spurious() {
            self.window = window;
            self.threshold = threshold;
        }
    }

    fn on_mtu(&mut self, mtu: usize) {
        self.mtu = mtu.max(1);
        self.window = self.clamp(self.window);
    }

    fn on_rtt_sample(&mut self, _now: Timestamp, rtt: &RttEstimator) {
        self.srtt = rtt.smoothed();
        self.rtt_variance = rtt.variance();
    }

    fn on_persistent_congestion(&mut self, now: Timestamp) {
        // The same rule as CUBIC's: not for timeouts soon after an acknowledgement.
        if !is_persistent_congestion(now, self.last_ack, self.srtt, self.rtt_variance) {
            return;
        }
        if self.episode.start() != Some(now) {
            self.episode.begin(now, (self.window, self.threshold), 0);
        }
        self.threshold = self.threshold.min(self.clamp(self.window * 7 / 10));
        self.acked_in_avoidance = 0;
        self.window = self.min_window();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::rtt::RtoConfig;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_micros(ms * 1000)
    }

    #[test]
    fn slow_start_doubles_then_loss_halves_once_per_round() {
        let config = CongestionConfig::default();
        let mut cc = NewReno::new(config, 1000);
        assert_eq!(cc.window(), 32_000);
        cc.on_acked(at(10), at(0), 32_000);
        assert_eq!(cc.window(), 64_000);
        cc.on_lost(at(20), at(5), 1000);
        assert_eq!(cc.window(), 44_800);
        // A second loss from the same round does not reduce again.
        cc.on_lost(at(21), at(6), 1000);
        assert_eq!(cc.window(), 44_800);
        // Congestion avoidance: one MTU per window acknowledged.
        cc.on_acked(at(40), at(25), 44_800);
        assert_eq!(cc.window(), 45_800);
        // A loss of a packet sent after the reduction starts a new one.
        cc.on_lost(at(50), at(30), 1000);
        assert_eq!(cc.window(), 32_060);
        // It was spurious: undone.
        cc.on_spurious_loss();
        assert_eq!(cc.window(), 45_800);
    }

    #[test]
    fn timeouts_soon_after_an_acknowledgement_are_not_persistent_congestion() {
        let mut cc = NewReno::new(CongestionConfig::default(), 1000);
        let mut rtt = RttEstimator::new(RtoConfig::default());
        rtt.on_sample(Duration::from_millis(50));
        cc.on_rtt_sample(at(100), &rtt);
        cc.on_acked(at(100), at(50), 1000);
        cc.on_lost(at(130), at(60), 1000);
        let reduced = cc.window();
        assert_eq!(reduced, 23_100);
        // Two timeouts in a row 30 ms after an acknowledgement: one burst.
        cc.on_persistent_congestion(at(130));
        assert_eq!(cc.window(), reduced);
        // Nothing acknowledged for more than three PTOs (3 × (50 + 4 × 25) ms).
        cc.on_persistent_congestion(at(600));
        assert_eq!(cc.window(), 4000);
        // Before any acknowledgement, two timeouts are persistent congestion.
        let mut fresh = NewReno::new(CongestionConfig::default(), 1000);
        fresh.on_persistent_congestion(at(10));
        assert_eq!(fresh.window(), 4000);
    }

    #[test]
    fn window_stays_within_bounds() {
        let config = CongestionConfig {
            initial_window_packets: 2,
            min_window_packets: 2,
            max_window_bytes: 10_000,
        };
        let mut cc = NewReno::new(config, 1000);
        for i in 0..10 {
            cc.on_lost(at(100 + i * 100), at(99 + i * 100), 1000);
        }
        assert_eq!(cc.window(), 2000);
        cc.on_acked(at(5000), at(4000), usize::MAX);
        assert!(cc.window() <= 10_000);
    }
}
