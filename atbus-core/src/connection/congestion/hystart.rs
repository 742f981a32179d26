//! HyStart++ (RFC 9406): leave slow start when the RTT starts to rise, before the
//! bottleneck queue overflows.
//!
//! Per round the minimum RTT is kept; once a round has [`N_RTT_SAMPLE`] samples and
//! the minimum of its latest [`N_RTT_SAMPLE`] samples exceeds the last round's
//! minimum by a threshold (an eighth of it, clamped to [4 ms, 16 ms]), slow start
//! ends and Conservative Slow Start (CSS) begins: the
//! window grows at a quarter of the slow-start rate for [`CSS_ROUNDS`] rounds, then
//! congestion avoidance takes over. If the RTT falls back below the baseline during
//! CSS, the increase was noise and slow start resumes. atbus always paces, so the
//! RFC's per-ACK burst limit `L` is infinite and not modelled.
//!
//! One departure from RFC 9406: the RFC compares the minimum of *all* the round's
//! samples so far, which stays at the round's first (queue-free) samples. A sender
//! paced at twice its window per RTT builds the queue *within* a round, and with a
//! bottleneck queue smaller than the bandwidth-delay product it overflows in the
//! round where the window first exceeds it, before the next round's minimum could
//! show the increase. The minimum of the latest samples sees the queue as it
//! builds, and still ignores single delayed samples (jitter) since all
//! [`N_RTT_SAMPLE`] must be high.

use std::time::Duration;

/// RFC 9406 §4.3 `MIN_RTT_THRESH`.
pub(crate) const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
/// RFC 9406 §4.3 `MAX_RTT_THRESH`.
pub(crate) const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
/// RFC 9406 §4.3 `MIN_RTT_DIVISOR`.
pub(crate) const MIN_RTT_DIVISOR: u32 = 8;
/// RFC 9406 §4.3 `N_RTT_SAMPLE`: samples a round needs before it is judged.
pub(crate) const N_RTT_SAMPLE: u32 = 8;
/// RFC 9406 §4.3 `CSS_ROUNDS`.
pub(crate) const CSS_ROUNDS: u32 = 5;

/// What HyStart++ says about the slow start in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Standard slow start.
    SlowStart,
    /// Conservative slow start: grow by a quarter.
    Conservative,
    /// CSS lasted [`CSS_ROUNDS`] rounds: enter congestion avoidance.
    Done,
}

/// HyStart++ state of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HyStart {
    last_round_min: Option<Duration>,
    current_round_min: Option<Duration>,
    /// The round's latest samples (a ring of [`N_RTT_SAMPLE`]).
    recent: [Duration; N_RTT_SAMPLE as usize],
    samples: u32,
    css_baseline: Option<Duration>,
    css_rounds: u32,
    done: bool,
}

impl HyStart {
    pub(crate) fn new() -> Self {
        HyStart {
            last_round_min: None,
            current_round_min: None,
            recent: [Duration::ZERO; N_RTT_SAMPLE as usize],
            samples: 0,
            css_baseline: None,
            css_rounds: 0,
            done: false,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        if self.done {
            Phase::Done
        } else if self.css_baseline.is_some() {
            Phase::Conservative
        } else {
            Phase::SlowStart
        }
    }

    /// RFC 9406 §4.2: a new round begins.
    pub(crate) fn on_round(&mut self) {
        self.last_round_min = self.current_round_min;
        self.current_round_min = None;
        self.samples = 0;
        if self.css_baseline.is_some() {
            self.css_rounds += 1;
            if self.css_rounds >= CSS_ROUNDS {
                self.done = true;
            }
        }
    }

    /// RFC 9406 §4.2: one RTT sample during slow start or CSS.
    pub(crate) fn on_rtt_sample(&mut self, rtt: Duration) {
        if self.done {
            return;
        }
        self.current_round_min = Some(self.current_round_min.map_or(rtt, |m| m.min(rtt)));
        self.recent[(self.samples % N_RTT_SAMPLE) as usize] = rtt;
        self.samples = self.samples.saturating_add(1);
        if self.samples < N_RTT_SAMPLE {
            return;
        }
        let (Some(current), Some(last)) = (self.current_round_min, self.last_round_min) else {
            return;
        };
        let latest = self.recent.iter().copied().min().unwrap_or(current);
        match self.css_baseline {
            None => {
                let threshold = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                if latest >= last.saturating_add(threshold) {
                    self.css_baseline = Some(latest);
                    self.css_rounds = 0;
                }
            }
            Some(baseline) => {
                if latest < baseline {
                    // The RTT increase was spurious: back to slow start.
                    self.css_baseline = None;
                    self.css_rounds = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn round(h: &mut HyStart, rtt: Duration) {
        h.on_round();
        for _ in 0..N_RTT_SAMPLE {
            h.on_rtt_sample(rtt);
        }
    }

    #[test]
    fn a_delay_increase_starts_css_and_css_ends_after_its_rounds() {
        let mut h = HyStart::new();
        round(&mut h, ms(20));
        round(&mut h, ms(21));
        assert_eq!(h.phase(), Phase::SlowStart);
        // 21 ms + max(21/8, 4 ms) = 25 ms.
        round(&mut h, ms(26));
        assert_eq!(h.phase(), Phase::Conservative);
        for _ in 0..CSS_ROUNDS - 1 {
            round(&mut h, ms(27));
            assert_eq!(h.phase(), Phase::Conservative);
        }
        h.on_round();
        assert_eq!(h.phase(), Phase::Done);
    }

    #[test]
    fn a_falling_rtt_during_css_resumes_slow_start() {
        let mut h = HyStart::new();
        round(&mut h, ms(100));
        round(&mut h, ms(120));
        assert_eq!(h.phase(), Phase::Conservative);
        round(&mut h, ms(110));
        assert_eq!(h.phase(), Phase::SlowStart);
    }

    #[test]
    fn a_queue_building_within_a_round_is_seen_before_the_round_ends() {
        let mut h = HyStart::new();
        round(&mut h, ms(40));
        h.on_round();
        // The round starts at the base RTT, then the queue grows by 1 ms a sample.
        for i in 0..8 {
            h.on_rtt_sample(ms(40 + i));
        }
        assert_eq!(h.phase(), Phase::SlowStart);
        for i in 8..14 {
            h.on_rtt_sample(ms(40 + i));
        }
        // The latest eight are all at least 40 + 5 ms.
        assert_eq!(h.phase(), Phase::Conservative);
    }

    #[test]
    fn one_late_sample_among_low_ones_is_jitter() {
        let mut h = HyStart::new();
        round(&mut h, ms(40));
        h.on_round();
        for i in 0..40 {
            h.on_rtt_sample(if i % 4 == 0 { ms(40) } else { ms(60) });
        }
        assert_eq!(h.phase(), Phase::SlowStart);
    }

    #[test]
    fn too_few_samples_do_not_judge_a_round() {
        let mut h = HyStart::new();
        round(&mut h, ms(20));
        h.on_round();
        for _ in 0..N_RTT_SAMPLE - 1 {
            h.on_rtt_sample(ms(200));
        }
        assert_eq!(h.phase(), Phase::SlowStart);
    }
}
