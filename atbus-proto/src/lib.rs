//! The atbus wire format, protocol version 3.
//!
//! A **frame** is `varint version | varint length | frame_message | u32 LE CRC-32C`,
//! where `frame_message` is the protobuf message of [`pb::FrameMessage`] and the
//! checksum covers every preceding byte of the frame. A datagram carries one or more
//! frames back to back; a byte stream carries frames back to back.
//!
//! This crate holds:
//! - [`pb`]: the prost types generated from `proto/atbus_protocol.proto` (`bytes`
//!   fields are [`bytes::Bytes`], maps are ordered so that encoding is deterministic);
//! - the frame codec: [`encode_frame`], [`decode_frame`], [`Frames`] (a datagram) and
//!   [`StreamDecoder`] (a byte stream), with typed [`FrameError`]s and [`DecodeLimits`];
//! - size prediction and caching for the hot path: [`CachedHead`],
//!   [`CachedMessageMeta`] and [`DataFrame`], which splice pre-encoded parts into a
//!   frame byte-identical to prost's own encoding;
//! - block-alignment padding of sealed content: [`pad_to_alignment`] and
//!   [`strip_padding`].
//!
//! Nothing here reads a clock, touches a socket or panics on input.
//!
//! ```
//! use atbus_proto::{decode_frame, encode_frame, encoded_frame_len, pb, DecodeLimits};
//! use bytes::{Bytes, BytesMut};
//!
//! let ping = pb::FrameMessage {
//!     head: Some(pb::MessageHead { source: "a".into(), destination: "b".into(), ..Default::default() }),
//!     body: Some(pb::frame_message::Body::Ping(pb::PingData {
//!         timepoint_microseconds: 42,
//!         ..Default::default()
//!     })),
//! };
//! let mut buf = BytesMut::new();
//! encode_frame(&ping, &mut buf);
//! assert_eq!(buf.len(), encoded_frame_len(&ping));
//!
//! let (decoded, used) = decode_frame(&Bytes::from(buf), &DecodeLimits::default()).unwrap();
//! assert_eq!(decoded, ping);
//! assert_eq!(used, encoded_frame_len(&ping));
//! ```
#![forbid(unsafe_code)]

/// Types generated from the protocol schema (`proto/atbus_protocol.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/atbus.protocol.rs"));
}

mod codec;
mod error;
mod limits;
mod packed;
mod padding;
mod splice;
mod stream_decoder;
mod varint;

pub use codec::{
    CHECKSUM_LEN, Frames, PROTOCOL_VERSION, decode_content, decode_frame, encode_frame,
    encoded_frame_len, frame_len_for_body,
};
pub use error::FrameError;
pub use limits::{
    DEFAULT_MAX_FRAGMENTS, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_MAP_ENTRIES, DecodeLimits,
};
pub use packed::{FRAGMENT_FLAG_PACKED, PackedRecords, packed_record_len, put_packed_record};
pub use padding::{BlockAlignment, PaddingError, pad_to_alignment, padding_for, strip_padding};
pub use splice::{CachedHead, CachedMessageMeta, Content, DataFrame, FragmentSpec, encode_content};
pub use stream_decoder::StreamDecoder;
