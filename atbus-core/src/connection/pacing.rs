//! Pacing: spreading a window over the round trip instead of sending it as one burst.
//!
//! A [`Pacer`] is a token bucket in bytes. It refills at the rate the caller passes
//! with every call (the congestion controller's
//! [`pacing_rate`](crate::connection::congestion::CongestionController::pacing_rate),
//! which may change at any time) and holds at most `max(burst, rate × 1 ms)` bytes,
//! so a sender idle for a while may send that much at once and no more. A datagram
//! may leave when the bucket holds its size (or is full, for a datagram larger than
//! the bucket); sending it takes its size out, possibly leaving a debt that delays
//! the next one, so the long-run rate is exact whatever the datagram sizes.
//!
//! Arithmetic is integer: tokens are kept in millionths of a byte, so a rate in bytes
//! per second times an interval in microseconds is exact, and every operation
//! saturates, so no rate (0 to `u64::MAX`) or time overflows.
//!
//! **Per-endpoint cap.** An endpoint with a rate cap owns one more `Pacer`, fed the
//! cap as its rate and charged with every datagram of every connection: a datagram
//! leaves when both its connection's pacer and the endpoint's allow it, and the
//! connection's next send time is the later of the two (pacing each connection at
//! `min(rate, cap)` instead would let two connections send twice the cap).

use std::time::Duration;

use crate::time::Timestamp;

/// The bucket holds at least this much sending time at the current rate, so that a
/// fast sender is not woken once per datagram.
pub const BURST_INTERVAL: Duration = Duration::from_millis(1);

/// The default minimum bucket, in datagrams of the connection's MTU.
pub const BURST_PACKETS: usize = 10;

/// Tokens are millionths of a byte: `rate [B/s] × elapsed [µs]` is exact.
const SCALE: i128 = 1_000_000;

/// A token-bucket pacer. See the [module documentation](self).
///
/// ```
/// use atbus_core::connection::pacing::Pacer;
/// use atbus_core::time::Timestamp;
///
/// let mut pacer = Pacer::new(3000);
/// let now = Timestamp::ZERO;
/// let rate = 1_000_000; // bytes per second
/// for _ in 0..3 {
///     assert!(pacer.can_send(now, 1000, rate));
///     pacer.on_sent(now, 1000, rate);
/// }
/// // The burst is spent: the next 1000 bytes may leave 1 ms later.
/// assert_eq!(
///     pacer.next_send_time(now, 1000, rate),
///     Some(Timestamp::from_micros(1000))
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Pacer {
    burst: u64,
    /// Millionths of a byte at `last`; negative after a send larger than the bucket.
    tokens: i128,
    /// When `tokens` was computed; `None` before the first send (the bucket is full).
    last: Option<Timestamp>,
}

impl Pacer {
    /// A pacer whose bucket holds at least `burst_bytes` (more at rates above
    /// `burst_bytes` per [`BURST_INTERVAL`]). It starts full.
    pub fn new(burst_bytes: u64) -> Self {
        Pacer {
            burst: burst_bytes,
            tokens: 0,
            last: None,
        }
    }

    /// A pacer with the default burst for this MTU: [`BURST_PACKETS`] datagrams.
    pub fn for_mtu(mtu: usize) -> Self {
        Pacer::new(burst_for_mtu(mtu))
    }

    /// Changes the minimum bucket size (after an MTU change). Tokens above the new
    /// size are dropped at the next refill.
    pub fn set_burst(&mut self, burst_bytes: u64) {
        self.burst = burst_bytes;
    }

    /// Bytes the bucket holds when full at this rate.
    pub fn capacity(&self, rate: u64) -> u64 {
        let per_interval = u128::from(rate) * BURST_INTERVAL.as_micros() / 1_000_000;
        self.burst
            .max(u64::try_from(per_interval).unwrap_or(u64::MAX))
    }

    /// Tokens at `now`, refilled at `rate` since the last send and capped.
    fn tokens_at(&self, now: Timestamp, rate: u64) -> i128 {
        let capacity = i128::from(self.capacity(rate)) * SCALE;
        let Some(last) = self.last else {
            return capacity;
        };
        let elapsed = i128::try_from(now.saturating_since(last).as_micros()).unwrap_or(i128::MAX);
        let refill = i128::from(rate).saturating_mul(elapsed);
        self.tokens.saturating_add(refill).min(capacity)
    }

    /// Tokens a datagram of `bytes` needs: its size, or a full bucket if larger.
    fn needed(&self, bytes: usize, rate: u64) -> i128 {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        i128::from(bytes.min(self.capacity(rate))) * SCALE
    }

    /// Whether `bytes` may be sent at `now` at `rate` bytes per second.
    pub fn can_send(&self, now: Timestamp, bytes: usize, rate: u64) -> bool {
        self.tokens_at(now, rate) >= self.needed(bytes, rate)
    }

    /// When `bytes` may be sent at `rate`: `None` if now, else the instant
    /// ([`Timestamp::NEVER`] at rate 0 with the bucket short).
    pub fn next_send_time(&self, now: Timestamp, bytes: usize, rate: u64) -> Option<Timestamp> {
        let deficit = self.needed(bytes, rate) - self.tokens_at(now, rate);
        if deficit <= 0 {
            return None;
        }
        if rate == 0 {
            return Some(Timestamp::NEVER);
        }
        let rate = i128::from(rate);
        let wait = (deficit + rate - 1) / rate;
        Some(Timestamp::from_micros(
            now.as_micros()
                .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX)),
        ))
    }

    /// `bytes` were sent at `now`; they leave the bucket (possibly in debt).
    pub fn on_sent(&mut self, now: Timestamp, bytes: usize, rate: u64) {
        let bytes = i128::try_from(bytes).unwrap_or(i128::MAX);
        self.tokens = self
            .tokens_at(now, rate)
            .saturating_sub(bytes.saturating_mul(SCALE));
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
    }
}

/// The default minimum burst for a connection of this MTU: [`BURST_PACKETS`]
/// datagrams.
pub fn burst_for_mtu(mtu: usize) -> u64 {
    u64::try_from(mtu.saturating_mul(BURST_PACKETS)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn us(n: u64) -> Timestamp {
        Timestamp::from_micros(n)
    }

    /// Sends `packet`-byte datagrams as early as the pacer allows until `end`;
    /// returns the bytes sent.
    fn send_until(
        pacer: &mut Pacer,
        start: Timestamp,
        end: Timestamp,
        packet: usize,
        rate: u64,
    ) -> u64 {
        let mut now = start;
        let mut sent = 0u64;
        while now < end {
            match pacer.next_send_time(now, packet, rate) {
                None => {
                    pacer.on_sent(now, packet, rate);
                    sent += packet as u64;
                }
                Some(at) => now = at,
            }
        }
        sent
    }

    #[test]
    fn an_idle_pacer_allows_one_burst_then_spaces_datagrams() {
        let mut pacer = Pacer::new(10_000);
        let rate = 1_000_000;
        for _ in 0..10 {
            assert!(pacer.can_send(us(0), 1000, rate));
            pacer.on_sent(us(0), 1000, rate);
        }
        assert!(!pacer.can_send(us(0), 1000, rate));
        assert_eq!(pacer.next_send_time(us(0), 1000, rate), Some(us(1000)));
        assert!(!pacer.can_send(us(999), 1000, rate));
        assert!(pacer.can_send(us(1000), 1000, rate));
        // A long idle period refills the bucket, but no further than its size.
        pacer.on_sent(us(1000), 1000, rate);
        for _ in 0..10 {
            pacer.on_sent(us(1_000_000), 1000, rate);
        }
        assert!(!pacer.can_send(us(1_000_000), 1000, rate));
    }

    #[test]
    fn long_run_rate_is_the_configured_rate() {
        for &(rate, packet) in &[(625_000u64, 1452usize), (2_500_000, 1200), (12_345, 548)] {
            let mut pacer = Pacer::for_mtu(packet);
            let sent = send_until(&mut pacer, us(0), us(10_000_000), packet, rate);
            let expected = rate * 10 + burst_for_mtu(packet);
            // Exact up to the datagram cut off by the end of the run.
            assert!(
                sent.abs_diff(expected) <= packet as u64,
                "rate {rate}: sent {sent}, expected {expected}"
            );
        }
    }

    #[test]
    fn datagrams_larger_than_the_bucket_go_when_it_is_full_and_leave_a_debt() {
        let mut pacer = Pacer::new(1000);
        let rate = 1_000_000;
        assert!(pacer.can_send(us(0), 5000, rate));
        pacer.on_sent(us(0), 5000, rate);
        // 5000 bytes taken from 1000: 4000 of debt, then 1000 to refill.
        assert_eq!(pacer.next_send_time(us(0), 5000, rate), Some(us(5000)));
    }

    #[test]
    fn high_rates_widen_the_bucket() {
        let pacer = Pacer::new(1000);
        assert_eq!(pacer.capacity(1_000_000), 1000);
        assert_eq!(pacer.capacity(100_000_000), 100_000);
    }

    #[test]
    fn extreme_rates_sizes_and_times_do_not_overflow() {
        let mut pacer = Pacer::new(u64::MAX);
        for &rate in &[0, 1, u64::MAX] {
            for &now in &[Timestamp::ZERO, us(1), Timestamp::NEVER] {
                for &bytes in &[0, 1, usize::MAX] {
                    let _ = pacer.can_send(now, bytes, rate);
                    let _ = pacer.next_send_time(now, bytes, rate);
                    pacer.on_sent(now, bytes, rate);
                }
            }
        }
        let mut pacer = Pacer::new(0);
        pacer.on_sent(us(0), usize::MAX, u64::MAX);
        pacer.on_sent(us(0), usize::MAX, 0);
        assert_eq!(
            pacer.next_send_time(us(5), 10, 0),
            Some(Timestamp::NEVER),
            "rate 0 never refills"
        );
        assert!(pacer.next_send_time(us(5), 10, u64::MAX).is_some());
        assert!(pacer.can_send(Timestamp::NEVER, 10, u64::MAX));
    }

    #[test]
    fn time_going_backwards_neither_refills_nor_panics() {
        let mut pacer = Pacer::new(1000);
        pacer.on_sent(us(10_000), 1000, 1000);
        assert!(!pacer.can_send(us(5_000), 1000, 1000));
        pacer.on_sent(us(5_000), 1000, 1000);
        assert_eq!(
            pacer.next_send_time(us(10_000), 1000, 1000),
            Some(us(2_010_000))
        );
    }

    #[test]
    fn an_endpoint_cap_is_a_second_pacer() {
        // Two connections at 600 kB/s each under a 1 MB/s endpoint cap: the cap
        // holds, and neither exceeds its own rate.
        let (rate, cap) = (600_000, 1_000_000);
        let (mut a, mut b, mut endpoint) = (Pacer::new(2000), Pacer::new(2000), Pacer::new(2000));
        let mut now = us(0);
        let mut sent = [0u64; 2];
        while now < us(1_000_000) {
            let mut progressed = false;
            for (i, pacer) in [&mut a, &mut b].into_iter().enumerate() {
                if pacer.can_send(now, 1000, rate) && endpoint.can_send(now, 1000, cap) {
                    pacer.on_sent(now, 1000, rate);
                    endpoint.on_sent(now, 1000, cap);
                    sent[i] += 1000;
                    progressed = true;
                }
            }
            if !progressed {
                now = match endpoint.next_send_time(now, 1000, cap) {
                    Some(at) => at,
                    None => [
                        a.next_send_time(now, 1000, rate),
                        b.next_send_time(now, 1000, rate),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(now),
                };
            }
        }
        let total = sent[0] + sent[1];
        assert!((1_000_000..=1_003_000).contains(&total), "{total}");
        assert!(sent.iter().all(|&s| s <= 602_000), "{sent:?}");
    }

    proptest! {
        #[test]
        fn a_pacer_never_releases_more_than_its_bucket_plus_the_rate(
            rate in 1u64..100_000_000,
            burst in 0u64..100_000,
            steps in proptest::collection::vec((0u64..5_000, 1usize..9_000), 1..200),
        ) {
            // Whatever the send pattern, the bytes released by time t are at most
            // capacity + rate × t, plus one datagram (the one that may go into debt).
            let mut pacer = Pacer::new(burst);
            let mut now = 0u64;
            let mut sent = 0u128;
            let largest = steps.iter().map(|s| s.1).max().unwrap_or(0) as u128;
            for (advance, bytes) in steps {
                now += advance;
                if pacer.can_send(us(now), bytes, rate) {
                    pacer.on_sent(us(now), bytes, rate);
                    sent += bytes as u128;
                }
                let bound = u128::from(pacer.capacity(rate))
                    + u128::from(rate) * u128::from(now) / 1_000_000
                    + largest;
                prop_assert!(sent <= bound, "{} > {}", sent, bound);
                // next_send_time agrees with can_send.
                let next = pacer.next_send_time(us(now), bytes, rate);
                prop_assert_eq!(next.is_none(), pacer.can_send(us(now), bytes, rate));
                if let Some(at) = next {
                    prop_assert!(pacer.can_send(at, bytes, rate));
                    prop_assert!(!pacer.can_send(Timestamp::from_micros(at.as_micros() - 1), bytes, rate));
                }
            }
        }
    }
}
