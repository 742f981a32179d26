//! Round-trip time estimation and the retransmission timeout.
//!
//! Smoothed RTT and variance follow RFC 6298 §2 (weights 1/8 and 1/4). The timeout
//! is the seed's empirical optimum, `factor × smoothed RTT` (factor 1.2), raised to
//! `smoothed RTT + variance_weight × RTT variance` when the path is jittery so that
//! delay noise does not fire spurious retransmissions, clamped to a floor and a
//! ceiling, and multiplied by `backoff_factor` per consecutive timeout (1 by
//! default: no backoff, see [`RtoConfig::backoff_factor`]; RFC 6298 §5.5 doubles).
//!
//! Before the first RTT sample there is no estimate to apply that rule to: the
//! timeout is then [`RtoConfig::initial_timeout`] (100 ms), doubled per consecutive
//! timeout (see its documentation for the choice against RFC 9002's initial PTO).

use std::time::Duration;

/// How the retransmission timeout is derived from the RTT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RtoConfig {
    /// RTT assumed before the first sample (for the smoothed RTT that pacing,
    /// path choice and the congestion controller read until a sample exists).
    pub initial_rtt: Duration,
    /// The retransmission timeout before the first RTT sample (what a lost hello
    /// waits for), doubled per consecutive timeout up to the ceiling whatever
    /// `backoff_factor` says: with no estimate, a timeout is a guess, and backing
    /// off keeps a dead or distant peer cheap.
    ///
    /// RFC 9002 §6.2.2 starts from an initial RTT of 333 ms, which makes its first
    /// probe timeout about 1 s (RFC 6298 §2.1 also 1 s), for the whole Internet.
    /// atbus serves game and backend networks, where round trips are below 100 ms
    /// (within a region) to ~200 ms (across continents), and a lost first datagram
    /// of 1 s costs a whole second of stall that a peer without a handshake (KCP)
    /// never pays. The default is 100 ms: on a path longer than that the hello is
    /// sent once or twice more before its answer arrives (a few dozen bytes each;
    /// the first sample, unambiguous through the echoed timepoints, then takes
    /// over, and a loss the early timeout declared is undone as spurious), and a
    /// dead peer costs hellos at 0, 0.1, 0.3, 0.7, 1.5, 3.1 and 6.3 s within the
    /// default 10 s handshake timeout, 7 datagrams (a fixed 600 ms timeout sent 17).
    pub initial_timeout: Duration,
    /// Multiplier of the smoothed RTT (the seed's 1.2).
    pub factor: f64,
    /// Multiplier of the RTT variance added to the smoothed RTT; the timeout is at
    /// least `srtt + variance_weight × rttvar`.
    pub variance_weight: f64,
    /// The timeout is never shorter than this.
    pub floor: Duration,
    /// Nor longer than this, backoff included.
    pub ceiling: Duration,
    /// Consecutive timeouts multiply the timeout by this factor each; values below
    /// 1 or not numbers count as 1. RFC 6298 §5.5 doubles; atbus keeps the
    /// timeout (1): a timeout sends one probe datagram past the window, so an
    /// unbacked timeout sends at most one datagram per 1.2 RTT, the echoed
    /// timepoints give unambiguous RTT samples from the first acknowledgement of a
    /// slower path, and on a link that loses datagrams in bursts a doubled timeout
    /// only spaces the probes so that each meets the same burst (measured in
    /// docs/comparison.md, scenario (c)).
    pub backoff_factor: f64,
    /// Consecutive timeouts multiply the timeout at most this many times.
    pub max_backoff_exponent: u32,
}

impl Default for RtoConfig {
    fn default() -> Self {
        RtoConfig {
            initial_rtt: Duration::from_millis(200),
            initial_timeout: Duration::from_millis(100),
            factor: 1.2,
            variance_weight: 4.0,
            floor: Duration::from_millis(5),
            ceiling: Duration::from_secs(10),
            backoff_factor: 1.0,
            max_backoff_exponent: 3,
        }
    }
}

/// RTT state of one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RttEstimator {
    config: RtoConfig,
    smoothed: Duration,
    variance: Duration,
    min: Duration,
    latest: Duration,
    samples: u64,
}

impl RttEstimator {
    /// An estimator with no samples yet; it assumes `config.initial_rtt`.
    pub fn new(config: RtoConfig) -> Self {
        RttEstimator {
            config,
            smoothed: config.initial_rtt,
            variance: config.initial_rtt / 2,
            min: Duration::MAX,
            latest: config.initial_rtt,
            samples: 0,
        }
    }

    /// Feeds one RTT measurement.
    pub fn on_sample(&mut self, rtt: Duration) {
        self.latest = rtt;
        self.min = self.min.min(rtt);
        if self.samples == 0 {
            // RFC 6298 §2.2.
            self.smoothed = rtt;
            self.variance = rtt / 2;
        } else {
            // RFC 6298 §2.3: RTTVAR first, with the old SRTT.
            let deviation = self.smoothed.abs_diff(rtt);
            self.variance = (self.variance * 3 + deviation) / 4;
            self.smoothed = (self.smoothed * 7 + rtt) / 8;
        }
        self.samples += 1;
    }

    /// Smoothed RTT (the initial RTT before any sample).
    pub fn smoothed(&self) -> Duration {
        self.smoothed
    }

    /// RTT variance.
    pub fn variance(&self) -> Duration {
        self.variance
    }

    /// Smallest RTT seen, `None` before any sample.
    pub fn min(&self) -> Option<Duration> {
        (self.samples > 0).then_some(self.min)
    }

    /// The latest sample (the initial RTT before any sample).
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// Number of samples taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The retransmission timeout for a range timed out `backoff` times in a row.
    ///
    /// Never panics, whatever the configuration: a factor that is negative, NaN or
    /// huge, or a floor above the ceiling, gives a timeout within [floor, ceiling]
    /// (the ceiling winning when they conflict).
    pub fn retransmit_timeout(&self, backoff: u32) -> Duration {
        let c = &self.config;
        if self.samples == 0 {
            // No estimate yet: the initial timeout, doubled per timeout.
            let base = c.initial_timeout.max(c.floor).min(c.ceiling);
            return base
                .checked_mul(1u32 << backoff.min(16))
                .map_or(c.ceiling, |t| t.min(c.ceiling));
        }
        let scaled = scale(self.smoothed, c.factor, c.ceiling);
        let jittery =
            self.smoothed
                .saturating_add(scale(self.variance, c.variance_weight, c.ceiling));
        let base = scaled.max(jittery).max(c.floor).min(c.ceiling);
        let steps = backoff.min(c.max_backoff_exponent).min(64);
        let factor = if c.backoff_factor.is_nan() {
            1.0
        } else {
            c.backoff_factor.max(1.0)
        };
        if steps == 0 {
            return base;
        }
        // In whole nanoseconds, so that a factor of 2 doubles exactly.
        let nanos = base.as_nanos() as f64 * factor.powi(steps as i32);
        if nanos >= c.ceiling.as_nanos() as f64 {
            return c.ceiling;
        }
        Duration::from_nanos(nanos.round() as u64).min(c.ceiling)
    }
}

/// `duration × factor`, with `cap` for results that do not fit and zero for
/// factors that are negative or not numbers.
fn scale(duration: Duration, factor: f64, cap: Duration) -> Duration {
    if factor.is_nan() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let mut rtt = RttEstimator::new(RtoConfig::default());
        assert_eq!(rtt.min(), None);
        rtt.on_sample(ms(100));
        assert_eq!(rtt.smoothed(), ms(100));
        assert_eq!(rtt.variance(), ms(50));
        assert_eq!(rtt.min(), Some(ms(100)));
    }

    #[test]
    fn stable_path_converges_to_one_point_two_rtt() {
        let mut rtt = RttEstimator::new(RtoConfig::default());
        for _ in 0..100 {
            rtt.on_sample(ms(50));
        }
        assert_eq!(rtt.smoothed(), ms(50));
        assert!(rtt.variance() < Duration::from_micros(100));
        assert_eq!(rtt.retransmit_timeout(0), ms(60));
    }

    #[test]
    fn jittery_path_gets_a_longer_timeout_than_its_worst_common_sample() {
        let mut rtt = RttEstimator::new(RtoConfig::default());
        for i in 0..200 {
            rtt.on_sample(if i % 2 == 0 { ms(40) } else { ms(80) });
        }
        // srtt ~60, rttvar ~20: srtt + 4 rttvar ~140 > 1.2 × 60 = 72 and > 80.
        let rto = rtt.retransmit_timeout(0);
        assert!(rto > ms(80), "{rto:?}");
    }

    #[test]
    fn default_keeps_the_timeout_across_consecutive_timeouts() {
        let mut rtt = RttEstimator::new(RtoConfig::default());
        for _ in 0..50 {
            rtt.on_sample(ms(100));
        }
        assert_eq!(rtt.retransmit_timeout(0), ms(120));
        assert_eq!(rtt.retransmit_timeout(3), ms(120));
    }

    #[test]
    fn backoff_factor_one_and_a_half_and_odd_factors() {
        let mut config = RtoConfig {
            backoff_factor: 1.5,
            ..RtoConfig::default()
        };
        let mut rtt = RttEstimator::new(config);
        for _ in 0..50 {
            rtt.on_sample(ms(100));
        }
        assert_eq!(rtt.retransmit_timeout(2), ms(270));
        for odd in [f64::NAN, -1.0, 0.5] {
            config.backoff_factor = odd;
            let mut rtt = RttEstimator::new(config);
            rtt.on_sample(ms(100));
            assert_eq!(rtt.retransmit_timeout(5), rtt.retransmit_timeout(0));
        }
        config.backoff_factor = f64::INFINITY;
        let mut rtt = RttEstimator::new(config);
        rtt.on_sample(ms(100));
        assert_eq!(rtt.retransmit_timeout(1), config.ceiling);
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let config = RtoConfig {
            backoff_factor: 2.0,
            ceiling: ms(1000),
            max_backoff_exponent: 6,
            ..RtoConfig::default()
        };
        let mut rtt = RttEstimator::new(config);
        for _ in 0..50 {
            rtt.on_sample(ms(100));
        }
        let base = rtt.retransmit_timeout(0);
        assert_eq!(rtt.retransmit_timeout(1), base * 2);
        assert_eq!(rtt.retransmit_timeout(2), base * 4);
        assert_eq!(rtt.retransmit_timeout(30), ms(1000));
    }

    #[test]
    fn odd_configurations_never_panic() {
        let config = RtoConfig {
            factor: f64::NAN,
            variance_weight: -3.0,
            floor: ms(500),
            ceiling: ms(100),
            max_backoff_exponent: 64,
            ..RtoConfig::default()
        };
        let mut rtt = RttEstimator::new(config);
        rtt.on_sample(ms(50));
        assert_eq!(rtt.retransmit_timeout(0), ms(100));
        assert_eq!(rtt.retransmit_timeout(40), ms(100));
        let huge = RtoConfig {
            factor: f64::MAX,
            ..RtoConfig::default()
        };
        let mut rtt = RttEstimator::new(huge);
        rtt.on_sample(ms(50));
        assert_eq!(rtt.retransmit_timeout(0), huge.ceiling);
        let odd_initial = RtoConfig {
            initial_timeout: Duration::MAX,
            ..RtoConfig::default()
        };
        let rtt = RttEstimator::new(odd_initial);
        assert_eq!(rtt.retransmit_timeout(0), odd_initial.ceiling);
        assert_eq!(rtt.retransmit_timeout(u32::MAX), odd_initial.ceiling);
    }

    #[test]
    fn before_the_first_sample_the_initial_timeout_doubles_per_timeout() {
        // The 600 ms a lost hello waited for (200 ms initial RTT + 4 × 100 ms
        // variance) is no longer the rule before a sample exists.
        let mut rtt = RttEstimator::new(RtoConfig::default());
        let timeouts: Vec<_> = (0..9).map(|b| rtt.retransmit_timeout(b)).collect();
        assert_eq!(
            timeouts,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(ms)
        );
        // A dead peer within the 10 s handshake timeout: 7 hellos.
        let mut at = ms(0);
        let mut sent = 0;
        while at < Duration::from_secs(10) {
            sent += 1;
            at += rtt.retransmit_timeout(sent - 1);
        }
        assert_eq!(sent, 7);
        // The first sample takes over, with the configured (unbacked) rule.
        rtt.on_sample(ms(10));
        assert_eq!(rtt.retransmit_timeout(0), ms(30)); // 10 + 4 × 5
        assert_eq!(rtt.retransmit_timeout(3), ms(30));
    }

    #[test]
    fn floor_applies_to_tiny_rtts() {
        let mut rtt = RttEstimator::new(RtoConfig::default());
        for _ in 0..20 {
            rtt.on_sample(Duration::from_micros(30));
        }
        assert_eq!(rtt.retransmit_timeout(0), ms(5));
    }
}
