//! What a simulation run does: the [`Scenario`] (paths, messages, pacing, seed, time
//! limit) and the [`Workload`] it generates, message by message.
//!
//! Everything random in a run is derived from [`Scenario::seed`] here, in one place
//! ([`derived_rng`]): the payloads and the seeds of the links.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::config::{ConfigError, LinkConfig};

/// Default number of messages the workload sends.
pub const DEFAULT_MESSAGES: u64 = 100;
/// Default message size, in bytes.
pub const DEFAULT_MESSAGE_SIZE: usize = 1000;
/// Default time between two messages offered by the workload.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(10);
/// Default limit of virtual time of a run (10 minutes).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(600);
/// Payloads at least this long start with the message's index (little-endian `u64`).
pub const ID_PREFIX_LEN: usize = 8;

/// The sizes of the workload's messages: each is drawn uniformly in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    /// Smallest message, in bytes.
    pub min: usize,
    /// Largest message, in bytes (inclusive).
    pub max: usize,
}

impl SizeRange {
    /// Every message has exactly `size` bytes.
    pub const fn fixed(size: usize) -> Self {
        Self {
            min: size,
            max: size,
        }
    }
}

impl fmt::Display for SizeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// One simulation run, as data: the network, the application's messages, the seed.
///
/// Build it with struct update syntax over [`Default`]:
///
/// ```
/// use std::time::Duration;
/// use atbus_sim::{Scenario, SizeRange};
///
/// let scenario = Scenario {
///     paths: vec!["delay=30ms,loss=2%".parse().unwrap()],
///     messages: 1000,
///     size: SizeRange { min: 100, max: 1400 },
///     streams: 4,
///     ..Scenario::default()
/// };
/// assert!(scenario.validate().is_ok());
/// assert_eq!(scenario.interval, Duration::from_millis(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The paths between the two sides, in path order (at least one). Each path is
    /// two links, one per direction, built from the same config with their own seeds.
    pub paths: Vec<LinkConfig>,
    /// How many messages the client sends.
    pub messages: u64,
    /// Message sizes, drawn uniformly.
    pub size: SizeRange,
    /// Message `i` is offered at `i × interval`; zero offers them all at time zero.
    pub interval: Duration,
    /// Message `i` goes to stream `i % streams` (at least 1).
    pub streams: u32,
    /// Whether the server sends every message it receives back on the same stream;
    /// latency is then the round trip to the client.
    pub echo: bool,
    /// Seeds every random draw of the run: payloads and links.
    pub seed: u64,
    /// Virtual time at which the run stops even with messages outstanding.
    pub time_limit: Duration,
}

impl Default for Scenario {
    /// One default path ([`LinkConfig::default`]), [`DEFAULT_MESSAGES`] messages of
    /// [`DEFAULT_MESSAGE_SIZE`] bytes every [`DEFAULT_INTERVAL`] on one stream, no
    /// echo, seed 1, [`DEFAULT_TIME_LIMIT`].
    fn default() -> Self {
        Self {
            paths: vec![LinkConfig::default()],
            messages: DEFAULT_MESSAGES,
            size: SizeRange::fixed(DEFAULT_MESSAGE_SIZE),
            interval: DEFAULT_INTERVAL,
            streams: 1,
            echo: false,
            seed: 1,
            time_limit: DEFAULT_TIME_LIMIT,
        }
    }
}

/// Why a [`Scenario`] cannot be run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScenarioError {
    /// The scenario has no path.
    #[error("a scenario needs at least one path")]
    NoPath,
    /// A path's config is invalid.
    #[error("path {path}: {source}")]
    InvalidPath {
        /// The path's index.
        path: usize,
        /// What is wrong with it.
        source: ConfigError,
    },
    /// The size range is empty (`min > max`).
    #[error("message size range {min}..={max} is empty")]
    EmptySizeRange {
        /// The smallest size given.
        min: usize,
        /// The largest size given.
        max: usize,
    },
    /// The scenario has zero streams.
    #[error("a scenario needs at least one stream")]
    NoStream,
}

impl Scenario {
    /// Checks that the scenario can be run: at least one path, every path config
    /// [valid](LinkConfig::validate), a non-empty size range, at least one stream.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.paths.is_empty() {
            return Err(ScenarioError::NoPath);
        }
        for (path, config) in self.paths.iter().enumerate() {
            config
                .validate()
                .map_err(|source| ScenarioError::InvalidPath { path, source })?;
        }
        if self.size.min > self.size.max {
            return Err(ScenarioError::EmptySizeRange {
                min: self.size.min,
                max: self.size.max,
            });
        }
        if self.streams == 0 {
            return Err(ScenarioError::NoStream);
        }
        Ok(())
    }
}

/// The messages of a [`Scenario`], each computed on demand from the seed and its
/// index, so a run never stores the workload and a checker can regenerate any
/// message.
///
/// Message `i` is offered at [`due`](Self::due)`(i)` on [`stream`](Self::stream)`(i)`;
/// its [`payload`](Self::payload) has a size drawn from the scenario's
/// [`SizeRange`] and, when it is at least [`ID_PREFIX_LEN`] bytes long, starts with
/// `i` as a little-endian `u64`; the other bytes are pseudo-random.
///
/// ```
/// use atbus_sim::{Scenario, Workload};
///
/// let workload = Workload::new(&Scenario::default());
/// let payload = workload.payload(7);
/// assert_eq!(payload.len(), 1000);
/// assert_eq!(payload[..8], 7u64.to_le_bytes());
/// assert_eq!(workload.payload(7), payload); // the same every time
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    seed: u64,
    messages: u64,
    size: SizeRange,
    interval: Duration,
    streams: u32,
}

impl Workload {
    /// The workload of `scenario`.
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            seed: scenario.seed,
            messages: scenario.messages,
            size: scenario.size,
            interval: scenario.interval,
            streams: scenario.streams.max(1),
        }
    }

    /// Number of messages.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Number of streams.
    pub fn streams(&self) -> u32 {
        self.streams
    }

    /// The instant message `index` is offered: `index × interval` (saturating).
    pub fn due(&self, index: u64) -> Duration {
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(index));
        match u64::try_from(nanos / NANOS_PER_SEC) {
            // The remainder is below 10^9 and fits a `u32`.
            Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
            Err(_) => Duration::MAX,
        }
    }

    /// The stream of message `index`: `index % streams`.
    pub fn stream(&self, index: u64) -> u32 {
        // The remainder is below `streams`, a `u32`.
        (index % u64::from(self.streams)) as u32
    }

    /// The size of message `index`, in bytes.
    pub fn size(&self, index: u64) -> usize {
        self.draw_size(&mut self.generator(index))
    }

    /// The payload of message `index`.
    pub fn payload(&self, index: u64) -> Bytes {
        let mut rng = self.generator(index);
        let size = self.draw_size(&mut rng);
        let mut payload = BytesMut::with_capacity(size);
        let random_from = if size >= ID_PREFIX_LEN {
            payload.put_u64_le(index);
            ID_PREFIX_LEN
        } else {
            0
        };
        payload.resize(size, 0);
        rng.fill_bytes(&mut payload[random_from..]);
        payload.freeze()
    }

    fn generator(&self, index: u64) -> ChaCha8Rng {
        derived_rng(self.seed, SeedPurpose::Payload, index)
    }

    fn draw_size(&self, rng: &mut ChaCha8Rng) -> usize {
        if self.size.min >= self.size.max {
            return self.size.min;
        }
        rng.random_range(self.size.min..=self.size.max)
    }
}

/// What a generator derived from the scenario's seed is for; each purpose and index
/// gets its own independent generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeedPurpose {
    /// The payload (and size) of one message; index = message index.
    Payload = 1,
    /// The seed of one link; index = `2 × path + direction`.
    Link = 2,
}

/// The generator for `purpose` and `index` under `seed`.
///
/// The three values are laid side by side in the ChaCha8 key, so distinct triples
/// give independent streams without any mixing function to get wrong.
pub(crate) fn derived_rng(seed: u64, purpose: SeedPurpose, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(size: SizeRange, interval: Duration, streams: u32) -> Workload {
        Workload::new(&Scenario {
            size,
            interval,
            streams,
            ..Scenario::default()
        })
    }

    #[test]
    fn payload_size_is_drawn_in_the_range_and_repeatable() {
        let w = workload(SizeRange { min: 0, max: 20 }, DEFAULT_INTERVAL, 1);
        let sizes: Vec<usize> = (0..500).map(|i| w.size(i)).collect();
        assert!(sizes.iter().all(|&s| s <= 20));
        assert!(sizes.contains(&0) && sizes.contains(&20));
        for i in 0..500 {
            assert_eq!(w.payload(i).len(), sizes[i as usize]);
        }
    }

    #[test]
    fn payloads_of_eight_bytes_or_more_start_with_their_index() {
        let w = workload(SizeRange { min: 7, max: 9 }, DEFAULT_INTERVAL, 1);
        for i in 0..100 {
            let payload = w.payload(i);
            if payload.len() >= ID_PREFIX_LEN {
                assert_eq!(payload[..8], i.to_le_bytes());
            }
        }
    }

    #[test]
    fn seeds_give_different_payloads() {
        let a = Workload::new(&Scenario::default());
        let b = Workload::new(&Scenario {
            seed: 2,
            ..Scenario::default()
        });
        assert_eq!(a.payload(3)[..8], b.payload(3)[..8]);
        assert_ne!(a.payload(3), b.payload(3));
        assert_ne!(a.payload(3)[8..], a.payload(4)[8..]);
    }

    #[test]
    fn due_times_and_streams_follow_the_index() {
        let w = workload(SizeRange::fixed(1), Duration::from_micros(1500), 3);
        assert_eq!(w.due(0), Duration::ZERO);
        assert_eq!(w.due(1001), Duration::from_micros(1_501_500));
        let forever = workload(SizeRange::fixed(1), Duration::MAX, 1);
        assert_eq!(forever.due(1), Duration::MAX);
        assert_eq!(forever.due(2), Duration::MAX);
        assert_eq!(
            (0..5).map(|i| w.stream(i)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1]
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut s = Scenario::default();
        assert_eq!(s.validate(), Ok(()));
        s.streams = 0;
        assert_eq!(s.validate(), Err(ScenarioError::NoStream));
        s.size = SizeRange { min: 2, max: 1 };
        assert_eq!(
            s.validate(),
            Err(ScenarioError::EmptySizeRange { min: 2, max: 1 })
        );
        s.paths[0].mtu = 0;
        assert_eq!(
            s.validate(),
            Err(ScenarioError::InvalidPath {
                path: 0,
                source: ConfigError::ZeroMtu
            })
        );
        s.paths.clear();
        assert_eq!(s.validate(), Err(ScenarioError::NoPath));
    }
}
