//! Varints of the frame header, and a wire-level walk used to count elements
//! before prost decodes them.

use crate::FrameError;

/// The longest varint: 10 bytes carry 64 bits.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Reads a varint from the start of `buf`.
///
/// `Ok(None)` means the input ends inside the varint.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            // The tenth byte may only hold bit 63.
            return Err(FrameError::VarintTooLong);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(FrameError::VarintTooLong);
    }
    Ok(None)
}

/// Calls `f(field_number, payload)` for each length-delimited field at the top level
/// of the encoded message `buf`; varint and fixed-size fields are skipped.
///
/// The walk must see everything prost will decode, or a hostile frame could hide
/// elements from the counts: anything it cannot follow is refused. Groups (wire types
/// 3 and 4) are refused although prost would skip them: the schema has none, and
/// skipping them here would let elements after a group go uncounted.
pub(crate) fn for_each_len_field(
    mut buf: &[u8],
    mut f: impl FnMut(u64, &[u8]) -> Result<(), FrameError>,
) -> Result<(), FrameError> {
    let malformed = |what| Err(FrameError::Malformed(what));
    while !buf.is_empty() {
        let Some((key, n)) = read_varint(buf)? else {
            return malformed("truncated field key");
        };
        buf = &buf[n..];
        let skip = match key & 7 {
            0 => match read_varint(buf)? {
                Some((_, n)) => n,
                None => return malformed("truncated varint field"),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some((len, n)) = read_varint(buf)? else {
                    return malformed("truncated field length");
                };
                let end = usize::try_from(len).ok().and_then(|l| l.checked_add(n));
                let Some(payload) = end.and_then(|end| buf.get(n..end)) else {
                    return malformed("field length past the end of its message");
                };
                f(key >> 3, payload)?;
                n + payload.len()
            }
            3 | 4 => return malformed("protobuf groups are not part of the schema"),
            _ => return malformed("invalid wire type"),
        };
        let Some(rest) = buf.get(skip..) else {
            return malformed("truncated fixed-size field");
        };
        buf = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_to_ten_byte_varints() {
        for value in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            prost::encoding::encode_varint(value, &mut buf);
            assert_eq!(read_varint(&buf).unwrap(), Some((value, buf.len())));
            assert_eq!(read_varint(&buf[..buf.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn rejects_an_eleven_byte_varint_and_a_tenth_byte_over_one() {
        assert_eq!(read_varint(&[0x80; 11]), Err(FrameError::VarintTooLong));
        assert_eq!(read_varint(&[0x80; 10]), Err(FrameError::VarintTooLong));
        let mut over = [0xffu8; 10];
        over[9] = 0x02;
        assert_eq!(read_varint(&over), Err(FrameError::VarintTooLong));
    }
}
