//! Frame encoding and decoding.
//!
//! `varint version (3) | varint length | frame_message (length bytes) | u32 LE CRC-32C`

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::encoded_len_varint;

use crate::pb::{FrameMessage, PacketContent};
use crate::varint::{for_each_len_field, read_varint};
use crate::{DecodeLimits, FrameError};

/// The protocol version this crate encodes and decodes.
pub const PROTOCOL_VERSION: u64 = 3;
/// Length of the CRC-32C trailer of every frame.
pub const CHECKSUM_LEN: usize = 4;
/// Encoded length of the version varint (3 fits in one byte).
pub(crate) const VERSION_LEN: usize = 1;

/// Frames of up to this many bytes are encoded through a stack buffer.
const STACK_FRAME_LEN: usize = 512;

/// Length of a whole frame whose `frame_message` is `body_len` bytes long.
pub fn frame_len_for_body(body_len: usize) -> usize {
    VERSION_LEN + encoded_len_varint(body_len as u64) + body_len + CHECKSUM_LEN
}

/// Length `encode_frame` will write for `msg`, known before encoding.
pub fn encoded_frame_len(msg: &FrameMessage) -> usize {
    frame_len_for_body(msg.encoded_len())
}

/// Appends one complete frame holding `msg` to `buf`.
///
/// Exactly [`encoded_frame_len`] bytes are written. The buffer must have room for
/// them (`BytesMut` and `Vec<u8>` grow as needed). The checksum needs the frame's
/// bytes, so the frame is assembled in a scratch buffer (on the stack up to 512
/// bytes) and copied once; data frames on the hot path use [`crate::DataFrame`],
/// which writes straight into `buf`.
pub fn encode_frame(msg: &FrameMessage, buf: &mut impl BufMut) {
    let body_len = msg.encoded_len();
    let frame_len = frame_len_for_body(body_len);
    if frame_len <= STACK_FRAME_LEN {
        let mut stack = [0u8; STACK_FRAME_LEN];
        fill_frame(msg, body_len, &mut stack[..frame_len]);
        buf.put_slice(&stack[..frame_len]);
    } else {
        let mut heap = vec![0u8; frame_len];
        fill_frame(msg, body_len, &mut heap);
        buf.put_slice(&heap);
    }
}

/// Writes the frame of `msg` into `out`, which is exactly the frame's length.
fn fill_frame(msg: &FrameMessage, body_len: usize, out: &mut [u8]) {
    let crc_at = out.len() - CHECKSUM_LEN;
    let mut cursor = &mut out[..crc_at];
    prost::encoding::encode_varint(PROTOCOL_VERSION, &mut cursor);
    prost::encoding::encode_varint(body_len as u64, &mut cursor);
    msg.encode_raw(&mut cursor);
    let crc = crc32c::crc32c(&out[..crc_at]);
    out[crc_at..].copy_from_slice(&crc.to_le_bytes());
}

/// Where a frame's parts lie, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Bytes of the two header varints.
    pub(crate) header_len: usize,
    /// Bytes of the `frame_message`.
    pub(crate) body_len: usize,
}

impl Header {
    /// The whole frame's length.
    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.body_len + CHECKSUM_LEN
    }

    /// Reads and checks a frame header at the start of `buf`.
    ///
    /// A header that is complete is checked against the limits even when the rest of
    /// the frame has not arrived, so an oversized frame is refused before it is
    /// buffered.
    pub(crate) fn parse(buf: &[u8], limits: &DecodeLimits) -> Result<Header, FrameError> {
        let truncated = |needed| FrameError::Truncated {
            needed,
            available: buf.len(),
        };
        let Some((version, version_len)) = read_varint(buf)? else {
            return Err(truncated(buf.len() + 1));
        };
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let Some((length, length_len)) = read_varint(&buf[version_len..])? else {
            return Err(truncated(buf.len() + 1));
        };
        let header_len = version_len + length_len;
        // A hostile length near u64::MAX must not overflow the sum.
        let size = length.saturating_add((header_len + CHECKSUM_LEN) as u64);
        if size > limits.max_frame_size as u64 {
            return Err(FrameError::FrameTooLarge {
                size,
                max: limits.max_frame_size,
            });
        }
        let header = Header {
            header_len,
            body_len: length as usize,
        };
        if buf.len() < header.frame_len() {
            return Err(truncated(header.frame_len()));
        }
        Ok(header)
    }
}

/// Checks the checksum of the complete frame `frame` and decodes its body.
pub(crate) fn decode_checked(
    frame: Bytes,
    header: Header,
    limits: &DecodeLimits,
) -> Result<FrameMessage, FrameError> {
    let crc_at = header.header_len + header.body_len;
    let trailer: [u8; CHECKSUM_LEN] =
        frame[crc_at..crc_at + CHECKSUM_LEN]
            .try_into()
            .map_err(|_| FrameError::Truncated {
                needed: crc_at + CHECKSUM_LEN,
                available: frame.len(),
            })?;
    let expected = u32::from_le_bytes(trailer);
    let actual = crc32c::crc32c(&frame[..crc_at]);
    if expected != actual {
        return Err(FrameError::ChecksumMismatch { expected, actual });
    }
    let body = frame.slice(header.header_len..crc_at);
    count_frame_elements(&body, limits)?;
    // Decoding from `Bytes` makes every `bytes` field a slice of `frame`: no copy.
    Ok(FrameMessage::decode(body)?)
}

/// Decodes the frame at the start of `buf`.
///
/// Returns the message and the number of bytes the frame occupied; payload `bytes`
/// fields of the message are slices of `buf`. An incomplete frame gives
/// [`FrameError::Truncated`].
pub fn decode_frame(
    buf: &Bytes,
    limits: &DecodeLimits,
) -> Result<(FrameMessage, usize), FrameError> {
    let header = Header::parse(buf, limits)?;
    let len = header.frame_len();
    let msg = decode_checked(buf.slice(..len), header, limits)?;
    Ok((msg, len))
}

/// The frames of one datagram, decoded in order.
///
/// After the first error the iterator ends: a datagram with a bad frame is dropped
/// from that frame on, since nothing after it can be trusted to start a frame.
///
/// ```
/// use atbus_proto::{encode_frame, pb, DecodeLimits, Frames};
/// use bytes::BytesMut;
///
/// let mut datagram = BytesMut::new();
/// for t in [1, 2] {
///     let ping = pb::FrameMessage {
///         head: None,
///         body: Some(pb::frame_message::Body::Ping(pb::PingData {
///             timepoint_microseconds: t,
///             ..Default::default()
///         })),
///     };
///     encode_frame(&ping, &mut datagram);
/// }
/// let frames: Vec<_> = Frames::new(datagram.freeze(), DecodeLimits::default()).collect();
/// assert_eq!(frames.len(), 2);
/// assert!(frames.iter().all(|f| f.is_ok()));
/// ```
#[derive(Debug, Clone)]
pub struct Frames {
    rest: Bytes,
    limits: DecodeLimits,
}

impl Frames {
    /// Iterates the frames of `datagram`.
    pub fn new(datagram: Bytes, limits: DecodeLimits) -> Self {
        Frames {
            rest: datagram,
            limits,
        }
    }
}

impl Iterator for Frames {
    type Item = Result<FrameMessage, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match decode_frame(&self.rest, &self.limits) {
            Ok((msg, used)) => {
                let _ = self.rest.split_to(used);
                Some(Ok(msg))
            }
            Err(err) => {
                self.rest.clear();
                Some(Err(err))
            }
        }
    }
}

/// Decodes a `packet_data.content` (already decrypted and stripped of padding) into
/// its fragments; fragment payloads are slices of `content`.
pub fn decode_content(content: Bytes, limits: &DecodeLimits) -> Result<PacketContent, FrameError> {
    let mut fragments = 0usize;
    let mut entries = 0usize;
    for_each_len_field(&content, |field, fragment| {
        if field != 1 {
            return Ok(());
        }
        fragments += 1;
        if fragments > limits.max_fragments {
            return Err(FrameError::TooManyElements {
                what: "fragments",
                max: limits.max_fragments,
            });
        }
        // fragment_type: labels = 5 (map), forward_for = 6 (attributes = 7, map).
        for_each_len_field(fragment, |field, value| match field {
            5 => count_entry(&mut entries, limits),
            6 => count_attributes(value, &mut entries, limits),
            _ => Ok(()),
        })
    })?;
    Ok(PacketContent::decode(content)?)
}

/// Counts the map entries a frame body would decode into.
fn count_frame_elements(body: &[u8], limits: &DecodeLimits) -> Result<(), FrameError> {
    let mut entries = 0usize;
    // frame_message: acknowledge = 8 -> acknowledge_data: forward_for = 11.
    for_each_len_field(body, |field, ack| {
        if field != 8 {
            return Ok(());
        }
        for_each_len_field(ack, |field, forward| match field {
            11 => count_attributes(forward, &mut entries, limits),
            _ => Ok(()),
        })
    })
}

/// Counts the `attributes` (field 7) entries of an encoded `forward_data`.
fn count_attributes(
    forward: &[u8],
    entries: &mut usize,
    limits: &DecodeLimits,
) -> Result<(), FrameError> {
    for_each_len_field(forward, |field, _| match field {
        7 => count_entry(entries, limits),
        _ => Ok(()),
    })
}

fn count_entry(entries: &mut usize, limits: &DecodeLimits) -> Result<(), FrameError> {
    *entries += 1;
    if *entries > limits.max_map_entries {
        return Err(FrameError::TooManyElements {
            what: "map entries",
            max: limits.max_map_entries,
        });
    }
    Ok(())
}
