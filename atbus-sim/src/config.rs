//! What one direction of a simulated path does to datagrams: [`LinkConfig`], its
//! defaults and its validation.

use std::time::Duration;

use thiserror::Error;

/// Default one-way propagation delay.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(25);
/// Default largest datagram a link carries, in bytes.
pub const DEFAULT_MTU: usize = 1200;
/// Default size of the bottleneck queue, in bytes (64 KiB).
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024;

/// The behaviour of one direction of a simulated path.
///
/// A path is two [`Link`](crate::Link)s, one per direction, usually built from the
/// same config with different seeds. [`Default`] is a fault-free 25 ms link with a
/// 1200-byte MTU and no bandwidth limit; the path SPEC syntax
/// (`delay=30ms,loss=2%,...`) parses into this type with [`str::parse`] and
/// [`Display`](std::fmt::Display) writes it back.
///
/// Each datagram goes through these checks in order: [`mtu`](Self::mtu),
/// [`outages`](Self::outages) at send time, the bottleneck queue, loss; the survivors
/// may then be corrupted, duplicated and held back, and are finally lost if an outage
/// begins before they arrive.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay, added after the datagram leaves the bottleneck.
    pub delay: Duration,
    /// Each datagram's delay is `delay + uniform[0, jitter]`. Jitter alone never
    /// reorders: a datagram never arrives before the one sent before it (its arrival
    /// is pushed back to the previous arrival when needed).
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a datagram is lost (long-run rate with `burst`).
    pub loss: f64,
    /// Mean length of a loss burst, in datagrams (at least 1). `None` means
    /// independent loss; `Some(n)` means a Gilbert–Elliott chain with long-run loss
    /// rate `loss` and mean burst length `n`.
    pub burst: Option<f64>,
    /// Probability in `[0, 1]` that a datagram is delivered twice. The copy arrives
    /// at the same instant as the original, right after it.
    pub dup: f64,
    /// Probability in `[0, 1]` that a datagram is held back so that the datagrams
    /// sent after it can overtake it (see [`Link`](crate::Link) for the exact delay).
    pub reorder: f64,
    /// Probability in `[0, 1]` that one random bit of a datagram is flipped.
    pub corrupt: f64,
    /// Largest datagram the link carries, in bytes; larger ones are dropped.
    pub mtu: usize,
    /// Rate of the bottleneck in bits per second; `None` means infinitely fast.
    pub bandwidth_bps: Option<u64>,
    /// Bytes the bottleneck queue holds (including the datagram being serialized);
    /// a datagram that does not fit is tail-dropped. Unused without a bandwidth.
    pub queue_bytes: usize,
    /// Windows `[start, end)` of virtual time during which the link is down.
    pub outages: Vec<(Duration, Duration)>,
    /// Changes of [`mtu`](Self::mtu) during the run: from each instant on, the
    /// link carries datagrams of at most that many bytes (a route change). In any
    /// order; the latest instant reached wins.
    pub mtu_changes: Vec<(Duration, usize)>,
    /// Whether the endpoint should run path-MTU discovery on this path: it starts
    /// at the base (548, or the link's `mtu` if smaller) and discovers the link's
    /// MTU up to 1452. The link itself ignores it.
    pub pmtud: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: DEFAULT_DELAY,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            dup: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            mtu: DEFAULT_MTU,
            bandwidth_bps: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            outages: Vec::new(),
            mtu_changes: Vec::new(),
            pmtud: false,
        }
    }
}

/// Why a [`LinkConfig`] cannot describe a link.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// A probability is NaN or outside `[0, 1]`.
    #[error("{field} probability {value} is outside [0, 1]")]
    ProbabilityOutOfRange {
        /// The field: `loss`, `dup`, `reorder` or `corrupt`.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A mean burst length is NaN, infinite or below 1.
    #[error("burst length {0} must be a finite number of datagrams of at least 1")]
    BurstTooShort(f64),
    /// The loss rate cannot be reached with that burst length: the chain would need
    /// `P(Good→Bad) = p / (n·(1−p))` above 1, i.e. `p > n / (n + 1)`.
    #[error(
        "loss {loss} cannot be reached with mean burst length {burst} (needs loss <= burst/(burst+1))"
    )]
    LossTooHighForBurst {
        /// The long-run loss rate.
        loss: f64,
        /// The mean burst length.
        burst: f64,
    },
    /// The MTU is zero.
    #[error("mtu must be at least 1 byte")]
    ZeroMtu,
    /// The bandwidth is zero bits per second.
    #[error("bandwidth must be at least 1 bit/s")]
    ZeroBandwidth,
    /// An outage window ends at or before its start.
    #[error("outage {start:?}-{end:?} does not end after it starts")]
    EmptyOutage {
        /// Start of the window.
        start: Duration,
        /// End of the window.
        end: Duration,
    },
}

impl LinkConfig {
    /// Checks that every field is in range; [`Link::new`](crate::Link::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("loss", self.loss),
            ("dup", self.dup),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::ProbabilityOutOfRange { field, value });
            }
        }
        if let Some(burst) = self.burst {
            if !burst.is_finite() || burst < 1.0 {
                return Err(ConfigError::BurstTooShort(burst));
            }
            if self.loss >= 1.0 || self.loss > burst / (burst + 1.0) {
                return Err(ConfigError::LossTooHighForBurst {
                    loss: self.loss,
                    burst,
                });
            }
        }
        if self.mtu == 0 || self.mtu_changes.iter().any(|&(_, mtu)| mtu == 0) {
            return Err(ConfigError::ZeroMtu);
        }
        if self.bandwidth_bps == Some(0) {
            return Err(ConfigError::ZeroBandwidth);
        }
        if let Some(&(start, end)) = self.outages.iter().find(|(start, end)| end <= start) {
            return Err(ConfigError::EmptyOutage { start, end });
        }
        Ok(())
    }

    /// The largest datagram the link carries at `now`: [`mtu`](Self::mtu), or the
    /// latest of [`mtu_changes`](Self::mtu_changes) at or before `now`.
    pub fn mtu_at(&self, now: Duration) -> usize {
        self.mtu_changes
            .iter()
            .filter(|&&(at, _)| at <= now)
            .max_by_key(|&&(at, _)| at)
            .map_or(self.mtu, |&(_, mtu)| mtu)
    }

    /// Whether the link is down at some instant of `[from, to]`.
    pub(crate) fn down_during(&self, from: Duration, to: Duration) -> bool {
        self.outages
            .iter()
            .any(|&(start, end)| start <= to && from < end)
    }
}
