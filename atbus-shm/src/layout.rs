//! The channel's layout: ring geometry, header fields and the record header word.
//!
//! A mapping is a 4 KiB header followed by the ring's data area of
//! `ring_size` bytes. Positions are monotonically increasing `u64` byte counts; a
//! position's place in the data area is `position % ring_size`. A record is an
//! 8-byte header word followed by the payload, padded to 8 bytes, and never
//! crosses the end of the data area (a padding record fills the rest instead).
//!
//! The record header word packs three fields:
//!
//! ```text
//! bits  0..3   kind      free, claimed, committed, padding, skipped, poison
//! bits  3..30  length    payload bytes (padding: bytes after the header word)
//! bits 30..64  timestamp claimed records only: CLOCK_MONOTONIC milliseconds,
//!                         modulo 2^34 (about 198 days)
//! ```
//!
//! A *free* word (kind 0) carries instead, in bits 3..64, the lap in which its
//! place will next be used (`position / ring_size`). The reader clears every word
//! it consumes to "free for the next lap", and a writer stamps its header with a
//! compare-and-swap from "free for this lap": so a writer that stalled for a whole
//! lap cannot stamp a place the ring has since reused. A fresh (all-zero) file is
//! free for lap 0.

use std::time::Duration;

use crate::error::OpenError;

/// The first bytes of every channel: `b"ATBUSSHM"` as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ATBUSSHM");
/// The layout version this crate reads and writes.
pub const VERSION: u64 = 2;
/// Bytes before the data area.
pub const HEADER_BYTES: usize = 4096;
/// Records start at multiples of this many bytes.
pub const RECORD_ALIGN: u64 = 8;
/// Bytes of the record header word.
pub(crate) const RECORD_HEADER: u64 = 8;

/// The default ring size: 8 MiB.
pub const DEFAULT_RING_SIZE: u64 = 8 << 20;
/// The default largest message: 64 KiB.
pub const DEFAULT_MAX_MESSAGE: u32 = 64 << 10;
/// The smallest ring a channel may have.
pub const MIN_RING_SIZE: u64 = 4 << 10;
/// The largest ring a channel may have.
pub const MAX_RING_SIZE: u64 = 1 << 30;
/// The largest `max_message` any layout may have: a record header carries 27 bits
/// of length, and a batch record of up to one message's record size (header and
/// padding included) must fit in them. About 128 MiB.
pub const MAX_MESSAGE_LIMIT: u32 = ((1 << 27) - 1 - 2 * RECORD_HEADER - RECORD_ALIGN) as u32;
/// The default time after which the reader skips a record a writer claimed but
/// did not commit.
pub const DEFAULT_SKIP_TIMEOUT: Duration = Duration::from_secs(1);

/// The geometry of a channel, fixed when it is created and checked on every attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the data area: a power of two in
    /// [`MIN_RING_SIZE`]`..=`[`MAX_RING_SIZE`].
    pub ring_size: u64,
    /// The largest payload a writer may send, at most `ring_size / 2` and at most
    /// [`MAX_MESSAGE_LIMIT`] (what a record header can describe).
    pub max_message: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            ring_size: DEFAULT_RING_SIZE,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl Layout {
    /// Checks the bounds documented on the fields.
    pub fn validate(&self) -> Result<(), OpenError> {
        if !self.ring_size.is_power_of_two()
            || !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&self.ring_size)
        {
            return Err(OpenError::InvalidLayout {
                reason: "ring_size must be a power of two between 4 KiB and 1 GiB",
            });
        }
        if self.max_message == 0 || u64::from(self.max_message) > self.ring_size / 2 {
            return Err(OpenError::InvalidLayout {
                reason: "max_message must be between 1 and ring_size / 2",
            });
        }
        if self.max_message > MAX_MESSAGE_LIMIT {
            return Err(OpenError::InvalidLayout {
                reason: "max_message must be at most MAX_MESSAGE_LIMIT (about 128 MiB)",
            });
        }
        Ok(())
    }

    /// Total bytes of the mapping (header plus data area).
    pub fn mapping_len(&self) -> u64 {
        HEADER_BYTES as u64 + self.ring_size
    }
}

/// Bytes a record of `len` payload bytes occupies in the ring.
#[inline]
pub(crate) fn record_size(len: u64) -> u64 {
    (RECORD_HEADER + len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Header word indexes (in `u64` words from the start of the mapping). Fields that
/// different processes write sit on their own 128-byte lines.
pub(crate) mod field {
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const VERSION: usize = 1;
    pub(crate) const HEADER_BYTES: usize = 2;
    pub(crate) const RING_SIZE: usize = 3;
    pub(crate) const MAX_MESSAGE: usize = 4;
    pub(crate) const RECORD_ALIGN: usize = 5;
    /// Writers' claim position.
    pub(crate) const TAIL: usize = 16;
    /// The reader's consumed position.
    pub(crate) const HEAD: usize = 32;
    /// Non-zero while the reader sleeps on the futex.
    pub(crate) const READER_SLEEPING: usize = 48;
    /// The futex word (low 32 bits of this `u64` word; little-endian targets).
    pub(crate) const WAKE_SEQ: usize = 49;
    /// Counters, written by the reader only.
    pub(crate) const TORN_GAPS: usize = 64;
    pub(crate) const TORN_BYTES: usize = 65;
    pub(crate) const EXPIRED_CLAIMS: usize = 66;
}

/// What a record header word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// Nothing written in this place since it was cleared for lap `lap`.
    Free { lap: u64 },
    /// A writer owns the record and is writing the payload.
    Claimed { len: u64, stamp: u64 },
    /// The payload is complete.
    Committed { len: u64 },
    /// Filler up to the end of the data area.
    Padding { len: u64 },
    /// The reader gave up waiting for the claimant; the record is being cleared.
    Skipped { len: u64 },
    /// A word of a torn gap the reader is recovering (see `ring.rs`).
    Poison,
    /// A committed batch record: `len` bytes of items, each an item word (see
    /// [`item_word`]) followed by its payload padded to 8 bytes.
    Batch { len: u64 },
}

const KIND_MASK: u64 = 0b111;
const KIND_CLAIMED: u64 = 1;
const KIND_COMMITTED: u64 = 2;
const KIND_PADDING: u64 = 3;
const KIND_SKIPPED: u64 = 4;
const KIND_POISON: u64 = 5;
const KIND_BATCH: u64 = 6;
const LEN_SHIFT: u32 = 3;
const LEN_BITS: u32 = 27;
const STAMP_SHIFT: u32 = 30;
/// Timestamps are milliseconds modulo `2^34`.
pub(crate) const STAMP_MASK: u64 = (1 << 34) - 1;
/// The largest length a header word can carry.
pub(crate) const MAX_LEN: u64 = (1 << LEN_BITS) - 1;

/// The word every word of a torn gap is set to.
pub(crate) const POISON: u64 = KIND_POISON;

impl Record {
    /// Encodes the header word.
    pub(crate) fn word(self) -> u64 {
        let (kind, len, stamp) = match self {
            Record::Free { lap } => return free_word(lap),
            Record::Poison => return POISON,
            Record::Claimed { len, stamp } => (KIND_CLAIMED, len, stamp),
            Record::Committed { len } => (KIND_COMMITTED, len, 0),
            Record::Padding { len } => (KIND_PADDING, len, 0),
            Record::Skipped { len } => (KIND_SKIPPED, len, 0),
            Record::Batch { len } => (KIND_BATCH, len, 0),
        };
        debug_assert!(
            len <= MAX_LEN,
            "a validated layout keeps lengths in the header"
        );
        kind | ((len & MAX_LEN) << LEN_SHIFT) | ((stamp & STAMP_MASK) << STAMP_SHIFT)
    }

    /// Decodes a header word; `None` for a word no writer of this layout writes.
    pub(crate) fn decode(word: u64) -> Option<Record> {
        let len = (word >> LEN_SHIFT) & MAX_LEN;
        let stamp = word >> STAMP_SHIFT;
        match word & KIND_MASK {
            0 => Some(Record::Free { lap: word >> 3 }),
            KIND_CLAIMED => Some(Record::Claimed { len, stamp }),
            KIND_COMMITTED if stamp == 0 => Some(Record::Committed { len }),
            KIND_PADDING if stamp == 0 => Some(Record::Padding { len }),
            KIND_SKIPPED if stamp == 0 => Some(Record::Skipped { len }),
            KIND_POISON if word == POISON => Some(Record::Poison),
            KIND_BATCH if stamp == 0 => Some(Record::Batch { len }),
            _ => None,
        }
    }
}

/// The free word of lap `lap`.
/// The consumed mark of an item word: set by the reader when it consumes the
/// item, so a restarted reader resumes inside a partly consumed batch record.
pub(crate) const ITEM_CONSUMED: u64 = 1 << 63;

/// The word heading one item of a batch record: its payload length (the rest of
/// the word zero until the reader sets [`ITEM_CONSUMED`]).
#[inline]
pub(crate) fn item_word(len: u64) -> u64 {
    len
}

#[inline]
pub(crate) fn free_word(lap: u64) -> u64 {
    lap << 3
}

/// Milliseconds between `stamp` and `now` (both modulo 2^34); a stamp that looks
/// slightly in the future counts as age 0.
#[inline]
pub(crate) fn age_ms(now: u64, stamp: u64) -> u64 {
    let age = now.wrapping_sub(stamp) & STAMP_MASK;
    if age > STAMP_MASK / 2 { 0 } else { age }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_words_round_trip() {
        for r in [
            Record::Free { lap: 0 },
            Record::Free { lap: 1 << 60 },
            Record::Poison,
            Record::Claimed {
                len: MAX_LEN,
                stamp: STAMP_MASK,
            },
            Record::Claimed { len: 0, stamp: 0 },
            Record::Committed { len: 64 },
            Record::Padding { len: 0 },
            Record::Skipped { len: 12345 },
            Record::Batch { len: 65544 },
        ] {
            assert_eq!(Record::decode(r.word()), Some(r));
        }
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        assert_eq!(Record::decode(0), Some(Record::Free { lap: 0 }));
        assert_eq!(Record::decode(6), Some(Record::Batch { len: 0 }));
        assert_eq!(Record::decode(6 | (1 << 40)), None);
        assert_eq!(Record::decode(7), None);
        assert_eq!(Record::decode(POISON | (1 << 3)), None);
        assert_eq!(Record::decode(KIND_COMMITTED | (1 << 40)), None);
    }

    #[test]
    fn record_sizes_are_aligned() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(64), 72);
    }

    #[test]
    fn ages_wrap_and_ignore_small_skew() {
        assert_eq!(age_ms(1000, 400), 600);
        assert_eq!(age_ms(5, STAMP_MASK - 4), 10);
        assert_eq!(age_ms(400, 1000), 0);
    }

    #[test]
    fn layouts_are_validated() {
        assert!(Layout::default().validate().is_ok());
        let bad_size = Layout {
            ring_size: 5000,
            ..Layout::default()
        };
        assert!(bad_size.validate().is_err());
        let too_big = Layout {
            ring_size: 8192,
            max_message: 4097,
        };
        assert!(too_big.validate().is_err());
        // A message whose record length a header cannot carry is refused even when
        // the ring is large enough for it...
        let beyond_header = Layout {
            ring_size: MAX_RING_SIZE,
            max_message: MAX_MESSAGE_LIMIT + 1,
        };
        assert!(beyond_header.validate().is_err());
        // ...and the largest allowed one's batch record still fits a header.
        let largest = Layout {
            ring_size: MAX_RING_SIZE,
            max_message: MAX_MESSAGE_LIMIT,
        };
        assert!(largest.validate().is_ok());
        assert!(record_size(record_size(u64::from(MAX_MESSAGE_LIMIT))) <= MAX_LEN);
    }
}
