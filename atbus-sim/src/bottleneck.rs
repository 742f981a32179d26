//! The FIFO bottleneck in front of a link's propagation delay: a rate in bits per
//! second and a queue bounded in bytes.

use std::collections::VecDeque;
use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A serializing queue. Times are kept in units of `1 / rate` nanoseconds, so that
/// departures are exact: after any number of datagrams the bottleneck has been busy
/// for exactly `bits / rate` seconds (each reported departure is rounded up to the
/// next whole nanosecond, without the rounding accumulating).
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    rate_bps: u128,
    capacity: usize,
    /// When the last accepted datagram finishes serializing, in nanoseconds × rate.
    busy_until: u128,
    /// Departure times and lengths of the datagrams not yet departed, oldest first.
    waiting: VecDeque<(Duration, usize)>,
    waiting_bytes: usize,
}

impl Bottleneck {
    /// A bottleneck of `rate_bps` (not zero) holding at most `capacity` bytes.
    pub(crate) fn new(rate_bps: u64, capacity: usize) -> Self {
        Self {
            rate_bps: u128::from(rate_bps.max(1)),
            capacity,
            busy_until: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
        }
    }

    /// Enqueues a datagram of `len` bytes offered at `now` and returns its departure
    /// time, or `None` if the queue has no room for it (tail drop).
    pub(crate) fn enqueue(&mut self, now: Duration, len: usize) -> Option<Duration> {
        while let Some(&(departure, bytes)) = self.waiting.front() {
            if departure > now {
                break;
            }
            self.waiting.pop_front();
            self.waiting_bytes -= bytes;
        }
        if self.waiting_bytes.saturating_add(len) > self.capacity {
            return None;
        }
        let start = self
            .busy_until
            .max(now.as_nanos().saturating_mul(self.rate_bps));
        let bits = (len as u128) * 8;
        self.busy_until = start.saturating_add(bits * NANOS_PER_SEC);
        let departure_ns = self.busy_until.div_ceil(self.rate_bps);
        let departure = Duration::new(
            u64::try_from(departure_ns / NANOS_PER_SEC).unwrap_or(u64::MAX),
            (departure_ns % NANOS_PER_SEC) as u32,
        );
        if departure > now {
            self.waiting.push_back((departure, len));
            self.waiting_bytes += len;
        }
        Some(departure)
    }
}
