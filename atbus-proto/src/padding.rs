//! Block-alignment padding of sealed packet content.
//!
//! Modern AEAD suites work best on blocks aligned to 256, 384 or 512 bits. The
//! content is padded with zero bytes up to the next multiple of the alignment and
//! `packet_data.padding_size` records how many bytes were added, so the receiver
//! strips them before decoding the `packet_content`.

use bytes::{BufMut, Bytes, BytesMut};

/// The block sizes content can be aligned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockAlignment {
    /// 256 bits.
    Bytes32,
    /// 384 bits.
    Bytes48,
    /// 512 bits.
    Bytes64,
}

impl BlockAlignment {
    /// The block size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            BlockAlignment::Bytes32 => 32,
            BlockAlignment::Bytes48 => 48,
            BlockAlignment::Bytes64 => 64,
        }
    }
}

/// The largest padding any alignment adds: one byte short of the largest block.
const MAX_PADDING: usize = 63;

/// Padding bytes needed to bring `len` to a multiple of `alignment`.
pub fn padding_for(len: usize, alignment: BlockAlignment) -> usize {
    match alignment {
        // Powers of two: a mask instead of a division.
        BlockAlignment::Bytes32 | BlockAlignment::Bytes64 => {
            let mask = alignment.bytes() - 1;
            (alignment.bytes() - (len & mask)) & mask
        }
        BlockAlignment::Bytes48 => (48 - len % 48) % 48,
    }
}

/// Pads `content` with zeros to a multiple of `alignment` and returns the
/// `padding_size` to put in the packet.
pub fn pad_to_alignment(content: &mut BytesMut, alignment: BlockAlignment) -> i32 {
    let padding = padding_for(content.len(), alignment);
    content.put_bytes(0, padding);
    // At most 63: always fits.
    padding as i32
}

/// A `padding_size` that does not fit the content it describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid padding_size {padding_size} for {content_len} bytes of content")]
pub struct PaddingError {
    /// The `padding_size` the packet declared.
    pub padding_size: i32,
    /// The content length.
    pub content_len: usize,
}

/// Removes `padding_size` bytes of padding from the end of `content` (no copy).
///
/// Fails when the size is negative, above the largest alignment's padding (63), or
/// longer than the content.
pub fn strip_padding(content: Bytes, padding_size: i32) -> Result<Bytes, PaddingError> {
    let error = PaddingError {
        padding_size,
        content_len: content.len(),
    };
    let padding = usize::try_from(padding_size).map_err(|_| error.clone())?;
    if padding > MAX_PADDING || padding > content.len() {
        return Err(error);
    }
    Ok(content.slice(..content.len() - padding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_each_alignment_and_strips_back() {
        for alignment in [
            BlockAlignment::Bytes32,
            BlockAlignment::Bytes48,
            BlockAlignment::Bytes64,
        ] {
            for len in 0..200 {
                let mut content = BytesMut::from(&vec![0xabu8; len][..]);
                let padding = pad_to_alignment(&mut content, alignment);
                assert_eq!(content.len() % alignment.bytes(), 0);
                assert!((padding as usize) < alignment.bytes());
                let stripped = strip_padding(content.freeze(), padding).unwrap();
                assert_eq!(stripped, vec![0xabu8; len]);
            }
        }
    }

    #[test]
    fn rejects_padding_that_does_not_fit() {
        let content = Bytes::from_static(&[0; 10]);
        assert!(strip_padding(content.clone(), -1).is_err());
        assert!(strip_padding(content.clone(), 11).is_err());
        assert!(strip_padding(Bytes::from_static(&[0; 100]), 64).is_err());
        assert_eq!(strip_padding(content, 10).unwrap().len(), 0);
    }
}
