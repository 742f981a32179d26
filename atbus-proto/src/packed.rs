//! Packed fragments: several whole messages in one fragment.
//!
//! A fragment with the `PACKED` flag carries in its `data` a run of complete
//! messages, each a *record*: a varint byte length, then that many bytes. The
//! fragment's `packet_type` applies to every record; it carries no other metadata
//! and never `HAS_MORE`. A message of `n` bytes still occupies `n + 1` stream
//! offsets, so a packed fragment covers exactly the offsets the same messages
//! would as separate fragments, and a sender may pack or unpack a range when it
//! resends it. One fragment header, one decoded `fragment_type` and one walk here
//! replace one of each per message.
//!
//! [`PackedRecords::new`] checks the whole run before anything is taken from it: a
//! record length running past the end of the data, or more records than allowed,
//! is refused with [`FrameError::Malformed`] or [`FrameError::TooManyElements`].

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::FrameError;
use crate::pb::AtbusPacketFragmentFlagType;
use crate::varint::read_varint;

/// The `PACKED` bit of `fragment_type.fragment_flag`.
pub const FRAGMENT_FLAG_PACKED: i32 = AtbusPacketFragmentFlagType::Packed as i32;

/// Bytes a record of a `len`-byte message occupies in a packed fragment.
#[inline]
pub fn packed_record_len(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// Appends the record of `message` (its length, then its bytes) to `buf`.
#[inline]
pub fn put_packed_record(buf: &mut impl BufMut, message: &[u8]) {
    encode_varint(message.len() as u64, buf);
    buf.put_slice(message);
}

/// The records of a packed fragment's `data`, checked; iterating yields each
/// message as a slice of the data (no copy).
#[derive(Debug, Clone)]
pub struct PackedRecords {
    data: Bytes,
    at: usize,
    count: usize,
    payload: u64,
    largest: usize,
}

impl PackedRecords {
    /// Checks every record of `data`: each length must fit in what remains, and
    /// there may be at most `max_records` records.
    pub fn new(data: Bytes, max_records: usize) -> Result<Self, FrameError> {
        let mut rest: &[u8] = &data;
        let mut count = 0usize;
        let mut payload = 0u64;
        let mut largest = 0usize;
        while !rest.is_empty() {
            let Some((len, n)) = read_varint(rest)? else {
                return Err(FrameError::Malformed("truncated packed record length"));
            };
            let end = usize::try_from(len).ok().and_then(|l| l.checked_add(n));
            let Some(end) = end.filter(|&end| end <= rest.len()) else {
                return Err(FrameError::Malformed(
                    "packed record length past the end of its fragment",
                ));
            };
            count += 1;
            if count > max_records {
                return Err(FrameError::TooManyElements {
                    what: "packed records",
                    max: max_records,
                });
            }
            payload += len;
            largest = largest.max(end - n);
            rest = &rest[end..];
        }
        Ok(PackedRecords {
            data,
            at: 0,
            count,
            payload,
            largest,
        })
    }

    /// How many records (messages) the fragment holds.
    #[inline]
    pub fn messages(&self) -> usize {
        self.count
    }

    /// Bytes of the largest record's message (0 if none).
    #[inline]
    pub fn largest(&self) -> usize {
        self.largest
    }

    /// Stream offsets the records cover: their bytes plus one end-of-message unit
    /// each.
    #[inline]
    pub fn span(&self) -> u64 {
        self.payload + self.count as u64
    }
}

impl PackedRecords {
    /// The bytes the records lie in.
    #[inline]
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Where the next record's message lies in [`PackedRecords::data`], without
    /// touching a reference count (a caller that copies the message needs no
    /// slice); `None` at the end.
    #[inline]
    pub fn next_range(&mut self) -> Option<std::ops::Range<usize>> {
        let rest = self.data.get(self.at..).filter(|r| !r.is_empty())?;
        // Checked in `new`: every record is whole.
        let (len, n) = read_varint(rest).ok().flatten()?;
        let start = self.at + n;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)?;
        self.at = end;
        Some(start..end)
    }
}

impl Iterator for PackedRecords {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let range = self.next_range()?;
        Some(self.data.slice(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(messages: &[&[u8]]) -> Bytes {
        let mut buf = Vec::new();
        for m in messages {
            put_packed_record(&mut buf, m);
        }
        Bytes::from(buf)
    }

    #[test]
    fn records_round_trip_as_slices_of_the_data() {
        let big = vec![7u8; 300];
        let data = pack(&[b"a", b"", &big, b"xyz"]);
        let records = PackedRecords::new(data.clone(), 16).unwrap();
        assert_eq!(records.messages(), 4);
        assert_eq!(
            records.span(),
            1 + 300 + 3 + 4,
            "bytes plus one unit per record"
        );
        assert_eq!(records.largest(), 300);
        let out: Vec<Bytes> = records.collect();
        assert_eq!(out, vec![&b"a"[..], b"", &big[..], b"xyz"]);
        let base = data.as_ptr() as usize;
        let third = out[2].as_ptr() as usize;
        assert!(third > base && third < base + data.len(), "not a slice");
        assert_eq!(packed_record_len(300), 302);
    }

    #[test]
    fn ranges_point_at_the_messages() {
        let data = pack(&[b"ab", b"", b"cdef"]);
        let mut records = PackedRecords::new(data.clone(), 16).unwrap();
        let mut got = Vec::new();
        while let Some(range) = records.next_range() {
            got.push(data.slice(range));
        }
        assert_eq!(got, vec![&b"ab"[..], b"", b"cdef"]);
        assert_eq!(records.data(), &data);
    }

    #[test]
    fn empty_data_holds_no_record() {
        let records = PackedRecords::new(Bytes::new(), 16).unwrap();
        assert_eq!((records.messages(), records.span()), (0, 0));
    }

    #[test]
    fn malformed_records_are_refused() {
        // A length past the end.
        let err = PackedRecords::new(Bytes::from_static(&[5, 1, 2]), 16).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        // A length varint cut short.
        let err = PackedRecords::new(Bytes::from_static(&[1, 9, 0x80]), 16).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        // A length varint longer than 10 bytes.
        let err = PackedRecords::new(Bytes::from(vec![0xffu8; 12]), 16).unwrap_err();
        assert!(matches!(err, FrameError::VarintTooLong), "{err}");
        // A huge length.
        let mut huge = Vec::new();
        encode_varint(u64::MAX, &mut huge);
        let err = PackedRecords::new(Bytes::from(huge), 16).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn too_many_records_are_refused() {
        let data = pack(&[b"", b"", b""]);
        assert!(PackedRecords::new(data.clone(), 3).is_ok());
        let err = PackedRecords::new(data, 2).unwrap_err();
        assert!(
            matches!(err, FrameError::TooManyElements { max: 2, .. }),
            "{err}"
        );
    }
}
