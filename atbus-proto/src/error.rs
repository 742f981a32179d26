//! Errors of the frame codec.

/// What was wrong with bytes handed to a decoder.
///
/// On a byte-stream transport any error but [`FrameError::Truncated`] closes the
/// connection; on a datagram transport the datagram is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The input ends inside a frame; a stream decoder waits for more bytes.
    #[error("truncated frame: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the frame needs at least (a lower bound while the header is incomplete).
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A varint of the frame header runs over 10 bytes or over 64 bits.
    #[error("varint longer than 10 bytes in the frame header")]
    VarintTooLong,
    /// The frame's protocol version is not one this decoder speaks.
    #[error("unsupported protocol version {0} (this decoder speaks 3)")]
    UnsupportedVersion(u64),
    /// The frame is larger than the configured maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The size the header declares (header, body and checksum).
        size: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The CRC-32C at the end of the frame does not match its bytes.
    #[error("checksum mismatch: frame says {expected:#010x}, bytes give {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum carried by the frame.
        expected: u32,
        /// The checksum computed over the frame's bytes.
        actual: u32,
    },
    /// The frame holds more repeated elements or map entries than the limits allow.
    #[error("too many {what}: more than {max}")]
    TooManyElements {
        /// Which kind of element overflowed (`fragments`, `map entries`).
        what: &'static str,
        /// The configured maximum.
        max: usize,
    },
    /// The protobuf wire structure is broken or uses constructs the schema has none of
    /// (groups); found while counting elements, before prost decodes.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// The protobuf body does not decode.
    #[error("malformed protobuf body: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

impl FrameError {
    /// Whether more input could complete the frame (only [`FrameError::Truncated`]).
    pub fn is_truncated(&self) -> bool {
        matches!(self, FrameError::Truncated { .. })
    }
}
