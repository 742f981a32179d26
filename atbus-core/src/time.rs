//! Time as the core sees it: timestamps the caller provides.
//!
//! The core never reads a clock. Every input carries `now`, a [`Timestamp`] on a
//! monotonic clock whose epoch the caller chooses (an adapter uses the time since it
//! started; the simulator uses virtual time). Timestamps are microseconds, the unit of
//! the wire's `timepoint_microseconds`.

use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point on the caller's monotonic clock, in microseconds since its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(0);
    /// A time later than any other, for "no deadline".
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// The timestamp `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// The timestamp `since_epoch` after the epoch (saturating).
    pub fn from_duration(since_epoch: Duration) -> Self {
        Timestamp(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates at [`Timestamp::NEVER`].
    fn add(self, rhs: Duration) -> Timestamp {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }
}

impl AddAssign<Duration> for Timestamp {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;

    /// Saturates at zero.
    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Timestamp::NEVER + Duration::from_secs(1), Timestamp::NEVER);
        assert_eq!(Timestamp::ZERO - Timestamp::from_micros(5), Duration::ZERO);
        let t = Timestamp::from_micros(1_000) + Duration::from_millis(2);
        assert_eq!(t.as_micros(), 3_000);
        assert_eq!(t - Timestamp::from_micros(1_000), Duration::from_millis(2));
    }
}
