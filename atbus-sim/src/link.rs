//! One direction of a simulated path: [`Link`] takes datagrams at virtual instants
//! and hands them back at their arrival instants, after applying a [`LinkConfig`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bottleneck::Bottleneck;
use crate::config::{ConfigError, LinkConfig};
use crate::loss::LossModel;

/// The least extra delay of a held-back datagram over what the datagrams sent right
/// after it need, so that they really overtake it.
const REORDER_MARGIN: Duration = Duration::from_micros(1);

/// Why a link dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The datagram is larger than the link's MTU.
    Mtu,
    /// The link was down when the datagram was sent, or went down before it arrived.
    Outage,
    /// The bottleneck queue had no room for the datagram (tail drop).
    QueueOverflow,
    /// The loss process (independent or Gilbert–Elliott) took the datagram.
    Loss,
}

/// What a [`Link`] did with a datagram given to [`Link::send`].
///
/// This is the simulator's omniscient view, for the driver and the tests; a
/// transport under test must not be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The datagram will arrive at `arrival` (its duplicate, if any, at the same
    /// instant, right after it).
    InFlight {
        /// Virtual time at which [`Link::poll_delivery`] can return it.
        arrival: Duration,
    },
    /// The datagram will never arrive.
    Dropped(DropReason),
}

/// Counters of what a [`Link`] did. Datagrams dropped for any reason are counted once,
/// under the first reason that applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to [`Link::send`].
    pub sent_datagrams: u64,
    /// Bytes offered to [`Link::send`].
    pub sent_bytes: u64,
    /// Datagrams returned by [`Link::poll_delivery`], duplicates included.
    pub delivered_datagrams: u64,
    /// Bytes returned by [`Link::poll_delivery`], duplicates included.
    pub delivered_bytes: u64,
    /// Datagrams dropped for being larger than the MTU.
    pub dropped_mtu: u64,
    /// Datagrams dropped because the link was down between their send and arrival.
    pub dropped_outage: u64,
    /// Datagrams tail-dropped by a full bottleneck queue.
    pub dropped_queue_overflow: u64,
    /// Datagrams taken by the loss process.
    pub dropped_loss: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Datagrams held back so that later ones could overtake them.
    pub reordered: u64,
    /// Datagrams delivered with one bit flipped.
    pub corrupted: u64,
}

impl LinkStats {
    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Mtu => self.dropped_mtu,
            DropReason::Outage => self.dropped_outage,
            DropReason::QueueOverflow => self.dropped_queue_overflow,
            DropReason::Loss => self.dropped_loss,
        }
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_mtu + self.dropped_outage + self.dropped_queue_overflow + self.dropped_loss
    }

    fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Mtu => self.dropped_mtu += 1,
            DropReason::Outage => self.dropped_outage += 1,
            DropReason::QueueOverflow => self.dropped_queue_overflow += 1,
            DropReason::Loss => self.dropped_loss += 1,
        }
    }
}

/// A datagram on its way, ordered by arrival then by the order it was scheduled in.
#[derive(Debug, Clone)]
struct Pending {
    arrival: Duration,
    seq: u64,
    datagram: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.arrival, self.seq) == (other.arrival, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrival, self.seq).cmp(&(other.arrival, other.seq))
    }
}

/// One direction of a simulated path, in virtual time.
///
/// Deterministic: the same config, seed and sequence of calls give the same results.
/// No clock is read; every instant is a [`Duration`] since the simulation start,
/// given by the caller.
///
/// A datagram's arrival is its departure from the bottleneck (its send time when
/// there is no bandwidth limit) plus `delay` plus `uniform[0, jitter]`, pushed back
/// to the previous in-order arrival so that jitter never reorders. Policies:
/// - **reorder**: a held-back datagram ignores that push-back (and does not push back
///   later ones); it arrives at `max(departure + delay + jitter, previous in-order
///   arrival) + 1 µs + uniform[0, delay]`, so any datagram leaving the bottleneck at
///   the same instant or within the extra delay overtakes it;
/// - **dup**: the copy arrives at the same instant as the original, right after it,
///   with the same bytes (corruption happens before duplication);
/// - **outages**: a datagram is dropped if the link is down at any instant between
///   its send and its arrival — sent during an outage, or in flight when one starts.
///
/// ```
/// use std::time::Duration;
/// use atbus_sim::{Fate, Link, LinkConfig};
/// use bytes::Bytes;
///
/// let config: LinkConfig = "delay=30ms,loss=0%".parse().unwrap();
/// let mut link = Link::new(config, 7).unwrap();
/// let sent = Duration::from_millis(5);
/// let fate = link.send(sent, Bytes::from_static(b"hello"));
/// assert_eq!(fate, Fate::InFlight { arrival: Duration::from_millis(35) });
/// assert_eq!(link.next_delivery(), Some(Duration::from_millis(35)));
/// assert_eq!(link.poll_delivery(Duration::from_millis(34)), None);
/// assert_eq!(link.poll_delivery(Duration::from_millis(35)).as_deref(), Some(&b"hello"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct Link {
    config: LinkConfig,
    rng: ChaCha8Rng,
    loss: LossModel,
    bottleneck: Option<Bottleneck>,
    /// Arrival of the last in-order (not held-back) datagram.
    last_in_order: Duration,
    next_seq: u64,
    in_flight: BinaryHeap<Reverse<Pending>>,
    stats: LinkStats,
}

impl Link {
    /// Builds a link after [validating](LinkConfig::validate) `config`; `seed` seeds
    /// the link's own ChaCha8 generator.
    pub fn new(config: LinkConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            loss: LossModel::new(config.loss, config.burst),
            bottleneck: config
                .bandwidth_bps
                .map(|rate| Bottleneck::new(rate, config.queue_bytes)),
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            last_in_order: Duration::ZERO,
            next_seq: 0,
            in_flight: BinaryHeap::new(),
            stats: LinkStats::default(),
        })
    }

    /// The configuration this link was built from.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// What the link has done so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Number of datagrams scheduled to arrive and not yet polled (duplicates count).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Offers `datagram` to the link at virtual time `now` and says what becomes of it.
    /// The caller's bytes are never modified; a corrupted datagram is a copy.
    pub fn send(&mut self, now: Duration, datagram: Bytes) -> Fate {
        self.stats.sent_datagrams += 1;
        self.stats.sent_bytes += datagram.len() as u64;
        match self.schedule(now, datagram) {
            Ok(arrival) => Fate::InFlight { arrival },
            Err(reason) => {
                self.stats.count_drop(reason);
                Fate::Dropped(reason)
            }
        }
    }

    /// The earliest instant at which a datagram arrives, if any is in flight.
    pub fn next_delivery(&self) -> Option<Duration> {
        self.in_flight
            .peek()
            .map(|Reverse(pending)| pending.arrival)
    }

    /// The next datagram that has arrived by `now`: earliest arrival first, ties in
    /// the order they were scheduled.
    pub fn poll_delivery(&mut self, now: Duration) -> Option<Bytes> {
        if self.next_delivery()? > now {
            return None;
        }
        let Reverse(pending) = self.in_flight.pop()?;
        self.stats.delivered_datagrams += 1;
        self.stats.delivered_bytes += pending.datagram.len() as u64;
        Some(pending.datagram)
    }

    fn schedule(&mut self, now: Duration, datagram: Bytes) -> Result<Duration, DropReason> {
        if datagram.len() > self.config.mtu_at(now) {
            return Err(DropReason::Mtu);
        }
        if self.config.down_during(now, now) {
            return Err(DropReason::Outage);
        }
        let departure = match &mut self.bottleneck {
            Some(bottleneck) => bottleneck
                .enqueue(now, datagram.len())
                .ok_or(DropReason::QueueOverflow)?,
            None => now,
        };
        if self.loss.next_is_lost(&mut self.rng) {
            return Err(DropReason::Loss);
        }

        let corrupt_bit = if self.chance(self.config.corrupt) && !datagram.is_empty() {
            Some(self.rng.random_range(0..datagram.len() * 8))
        } else {
            None
        };
        let duplicated = self.chance(self.config.dup);
        let held_back = self.chance(self.config.reorder);

        let base = departure.saturating_add(self.config.delay);
        let in_order = base
            .saturating_add(self.uniform(self.config.jitter))
            .max(self.last_in_order);
        let arrival = if held_back {
            base.saturating_add(self.config.jitter)
                .max(self.last_in_order)
                .saturating_add(REORDER_MARGIN)
                .saturating_add(self.uniform(self.config.delay))
        } else {
            in_order
        };
        if self.config.down_during(now, arrival) {
            return Err(DropReason::Outage);
        }

        if !held_back {
            self.last_in_order = arrival;
        }
        let datagram = match corrupt_bit {
            Some(bit) => {
                self.stats.corrupted += 1;
                let mut copy = BytesMut::from(&datagram[..]);
                copy[bit / 8] ^= 1 << (bit % 8);
                copy.freeze()
            }
            None => datagram,
        };
        self.stats.reordered += u64::from(held_back);
        if duplicated {
            self.stats.duplicated += 1;
            self.push(arrival, datagram.clone());
        }
        self.push(arrival, datagram);
        Ok(arrival)
    }

    fn push(&mut self, arrival: Duration, datagram: Bytes) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push(Reverse(Pending {
            arrival,
            seq,
            datagram,
        }));
    }

    /// True with probability `p`; draws nothing when `p` is zero.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// Uniform in `[0, max]` at nanosecond resolution; draws nothing when `max` is zero.
    fn uniform(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=max))
    }
}
