//! Size prediction and caching for data frames.
//!
//! A connection's `message_head` and a message's metadata (packet type, options,
//! labels, relay data, close reason) are encoded once and cached with their length.
//! [`DataFrame`] then computes a frame's exact length from cached lengths with no
//! recursive size walk, and writes it by splicing the cached bytes around the
//! payload slices, computing the checksum as it goes, straight into the caller's
//! buffer. The result is byte-identical to prost's encoding of the equivalent
//! [`FrameMessage`](crate::pb::FrameMessage) (checked by property tests).

use bytes::{BufMut, Bytes};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::codec::{PROTOCOL_VERSION, frame_len_for_body};
use crate::pb::packet_content::FragmentType;
use crate::pb::{AtbusPacketFragmentFlagType, MessageHead};

// Keys (field number << 3 | wire type) of the fields the splicer writes.
const FRAME_HEAD: u8 = 1 << 3 | 2;
const FRAME_PACKET: u8 = 7 << 3 | 2;
const PACKET_STREAM_ID: u8 = 1 << 3;
const PACKET_STREAM_OFFSET: u8 = 2 << 3;
const PACKET_CONTENT: u8 = 3 << 3 | 2;
const PACKET_FLAGS: u8 = 4 << 3;
const PACKET_PADDING_SIZE: u8 = 5 << 3;
const PACKET_TIMEPOINT: u8 = 6 << 3;
const CONTENT_FRAGMENT: u8 = 1 << 3 | 2;
const FRAGMENT_PACKET_TYPE: u8 = 1 << 3;
const FRAGMENT_DATA: u8 = 2 << 3 | 2;
const FRAGMENT_FLAG: u8 = 3 << 3;

/// Length of a length-delimited field with a one-byte key and `len` bytes of value.
#[inline]
fn len_field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Length of a varint field with a one-byte key, or 0 for the default value 0.
#[inline]
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// A connection's `message_head`, encoded once as a complete `frame_message.head`
/// field and spliced into every frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedHead {
    field: Bytes,
}

impl CachedHead {
    /// Encodes `head` once.
    pub fn new(head: &MessageHead) -> Self {
        let body_len = head.encoded_len();
        let mut field = Vec::with_capacity(len_field_len(body_len));
        field.push(FRAME_HEAD);
        encode_varint(body_len as u64, &mut field);
        head.encode_raw(&mut field);
        CachedHead {
            field: field.into(),
        }
    }

    /// A head that is absent from the frame (`frame_message.head` unset); the same as
    /// [`CachedHead::default`].
    pub fn absent() -> Self {
        Self::default()
    }

    /// Bytes the head occupies in a frame (0 when absent).
    pub fn encoded_len(&self) -> usize {
        self.field.len()
    }
}

/// The metadata of one message, encoded once and spliced into the fragment that
/// starts the message: `packet_type`, and the `options`, `labels`, `forward_for`
/// and `close_reason` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachedMessageMeta {
    packet_type: i32,
    /// Fragment fields 4 to 7, in field order.
    tail: Bytes,
}

impl CachedMessageMeta {
    /// Caches the metadata of `template`; its `data` and `fragment_flag` are ignored.
    pub fn new(template: &FragmentType) -> Self {
        let meta_only = FragmentType {
            packet_type: 0,
            data: Bytes::new(),
            fragment_flag: 0,
            options: template.options.clone(),
            labels: template.labels.clone(),
            forward_for: template.forward_for.clone(),
            close_reason: template.close_reason.clone(),
        };
        CachedMessageMeta {
            packet_type: template.packet_type,
            tail: meta_only.encode_to_vec().into(),
        }
    }

    /// Metadata of a message with the given type and nothing else.
    #[inline]
    pub fn of_type(packet_type: i32) -> Self {
        CachedMessageMeta {
            packet_type,
            tail: Bytes::new(),
        }
    }

    /// The message's `packet_type`.
    #[inline]
    pub fn packet_type(&self) -> i32 {
        self.packet_type
    }

    /// Whether the metadata is the type alone (no options, labels, relay data or
    /// close reason): what a packed fragment may carry.
    #[inline]
    pub fn is_type_only(&self) -> bool {
        self.tail.is_empty()
    }

    /// Bytes the metadata adds to the fragment that starts the message.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        varint_field_len(self.packet_type as u64) + self.tail.len()
    }
}

/// One fragment to splice into a packet content.
#[derive(Debug, Clone, Copy)]
pub struct FragmentSpec<'a> {
    /// The message's metadata when this fragment starts the message.
    pub meta: Option<&'a CachedMessageMeta>,
    /// The fragment's payload.
    pub data: &'a [u8],
    /// Whether more fragments of the message follow (`HAS_MORE`).
    pub has_more: bool,
    /// Whether `data` holds whole messages as packed records (`PACKED`, see
    /// [`PackedRecords`](crate::PackedRecords)); never with `has_more`.
    pub packed: bool,
}

impl FragmentSpec<'_> {
    /// Length of the encoded `fragment_type` message alone.
    fn body_len(&self) -> usize {
        fragment_body_len(self.meta, self.data.len(), self.flag())
    }

    fn flag(&self) -> i32 {
        let mut flag = 0;
        if self.has_more {
            flag |= AtbusPacketFragmentFlagType::HasMore as i32;
        }
        if self.packed {
            flag |= AtbusPacketFragmentFlagType::Packed as i32;
        }
        flag
    }

    /// Bytes a packed fragment (`PACKED`, no `HAS_MORE`) with this metadata and
    /// `data_len` bytes of records occupies in a packet content, key and length
    /// included: what a packetizer checks before adding a record.
    #[inline]
    pub fn packed_encoded_len(meta: Option<&CachedMessageMeta>, data_len: usize) -> usize {
        len_field_len(fragment_body_len(
            meta,
            data_len,
            AtbusPacketFragmentFlagType::Packed as i32,
        ))
    }

    /// Bytes this fragment occupies in a packet content, key and length included.
    pub fn encoded_len(&self) -> usize {
        len_field_len(self.body_len())
    }

    /// Bytes this fragment adds beyond its payload. It depends on the payload length
    /// (the length varint grows at 128 and 16,384 bytes; an empty payload omits the
    /// data field), so a packetizer must check the length it picks, not reuse the
    /// overhead of another length.
    pub fn overhead(&self) -> usize {
        self.encoded_len() - self.data.len()
    }
}

/// Length of an encoded `fragment_type` message alone.
#[inline]
fn fragment_body_len(meta: Option<&CachedMessageMeta>, data_len: usize, flag: i32) -> usize {
    let meta = meta.map_or(0, CachedMessageMeta::encoded_len);
    let data = if data_len == 0 {
        0
    } else {
        len_field_len(data_len)
    };
    meta + data + varint_field_len(flag as u64)
}

/// The `content` of a data packet.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// Plain fragments, spliced straight into the frame.
    Fragments(&'a [FragmentSpec<'a>]),
    /// Content already encoded (and possibly sealed and padded).
    Encoded(&'a [u8]),
}

impl Content<'_> {
    /// Length of the content bytes.
    pub fn len(&self) -> usize {
        match self {
            Content::Fragments(fragments) => fragments.iter().map(FragmentSpec::encoded_len).sum(),
            Content::Encoded(bytes) => bytes.len(),
        }
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A data frame (`frame_message` with a `packet` body) assembled from cached parts.
///
/// ```
/// use atbus_proto::{CachedHead, CachedMessageMeta, Content, DataFrame, FragmentSpec, pb};
/// use bytes::BytesMut;
///
/// let head = CachedHead::new(&pb::MessageHead { source: "a".into(), ..Default::default() });
/// let meta = CachedMessageMeta::of_type(pb::AtbusPacketType::Data as i32);
/// let payload = vec![7u8; 3000];
/// // The first 1000 bytes of a message, in one fragment.
/// let fragments = [FragmentSpec { meta: Some(&meta), data: &payload[..1000], has_more: true, packed: false }];
/// let frame = DataFrame {
///     head: &head,
///     stream_id: 1,
///     stream_offset: 0,
///     flags: 0,
///     padding_size: 0,
///     timepoint_microseconds: 5,
///     content: Content::Fragments(&fragments),
/// };
/// let mut buf = BytesMut::new();
/// frame.encode(&mut buf);
/// assert_eq!(buf.len(), frame.encoded_len());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DataFrame<'a> {
    /// The connection's cached head.
    pub head: &'a CachedHead,
    /// `packet_data.stream_id`.
    pub stream_id: i64,
    /// `packet_data.stream_offset`.
    pub stream_offset: i64,
    /// `packet_data.flags`.
    pub flags: i32,
    /// `packet_data.padding_size`.
    pub padding_size: i32,
    /// `packet_data.timepoint_microseconds`.
    pub timepoint_microseconds: i64,
    /// `packet_data.content`.
    pub content: Content<'a>,
}

impl DataFrame<'_> {
    fn packet_len(&self, content_len: usize) -> usize {
        varint_field_len(zigzag(self.stream_id))
            + varint_field_len(self.stream_offset as u64)
            + if content_len == 0 {
                0
            } else {
                len_field_len(content_len)
            }
            + varint_field_len(self.flags as u64)
            + varint_field_len(self.padding_size as u64)
            + varint_field_len(self.timepoint_microseconds as u64)
    }

    fn body_len(&self, packet_len: usize) -> usize {
        self.head.encoded_len() + len_field_len(packet_len)
    }

    /// Length of the whole frame, known without encoding anything.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len_with_content(self.content.len())
    }

    /// Length the whole frame would have if its content were `content_len` bytes
    /// (`self.content` is ignored): what a packetizer needs to fit a frame in an MTU.
    pub fn encoded_len_with_content(&self, content_len: usize) -> usize {
        frame_len_for_body(self.body_len(self.packet_len(content_len)))
    }

    /// Appends the frame to `buf`, checksum included; writes exactly
    /// [`DataFrame::encoded_len`] bytes, payload copied once, straight into `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        let content_len = self.content.len();
        let packet_len = self.packet_len(content_len);
        let mut w = CrcWriter::new(buf);
        w.varint(PROTOCOL_VERSION);
        w.varint(self.body_len(packet_len) as u64);
        w.bytes(&self.head.field);
        w.key(FRAME_PACKET);
        w.varint(packet_len as u64);
        w.varint_field(PACKET_STREAM_ID, zigzag(self.stream_id));
        w.varint_field(PACKET_STREAM_OFFSET, self.stream_offset as u64);
        if content_len != 0 {
            w.key(PACKET_CONTENT);
            w.varint(content_len as u64);
            match self.content {
                Content::Fragments(fragments) => fragments.iter().for_each(|f| w.fragment(f)),
                Content::Encoded(bytes) => w.bytes(bytes),
            }
        }
        w.varint_field(PACKET_FLAGS, self.flags as u64);
        w.varint_field(PACKET_PADDING_SIZE, self.padding_size as u64);
        w.varint_field(PACKET_TIMEPOINT, self.timepoint_microseconds as u64);
        w.finish();
    }
}

/// Encodes the plain content of `fragments` into `buf` (to be sealed, padded and
/// then framed with [`Content::Encoded`]).
pub fn encode_content(fragments: &[FragmentSpec<'_>], buf: &mut impl BufMut) {
    for fragment in fragments {
        let body_len = fragment.body_len();
        buf.put_u8(CONTENT_FRAGMENT);
        encode_varint(body_len as u64, buf);
        write_fragment_body(fragment, |part| buf.put_slice(part));
    }
}

/// Calls `put` with the parts of the fragment's body in order.
fn write_fragment_body(fragment: &FragmentSpec<'_>, mut put: impl FnMut(&[u8])) {
    let mut scratch = [0u8; 24];
    let mut small = |key: u8, value: u64, put: &mut dyn FnMut(&[u8])| {
        scratch[0] = key;
        let mut cursor = &mut scratch[1..];
        encode_varint(value, &mut cursor);
        let written = 23 - cursor.len();
        put(&scratch[..1 + written]);
    };
    if let Some(meta) = fragment.meta {
        if meta.packet_type != 0 {
            small(FRAGMENT_PACKET_TYPE, meta.packet_type as u64, &mut put);
        }
    }
    if !fragment.data.is_empty() {
        small(FRAGMENT_DATA, fragment.data.len() as u64, &mut put);
        put(fragment.data);
    }
    if fragment.has_more || fragment.packed {
        small(FRAGMENT_FLAG, fragment.flag() as u64, &mut put);
    }
    if let Some(meta) = fragment.meta {
        put(&meta.tail);
    }
}

/// Room for small fields gathered before they reach the checksum and the buffer.
const STAGE_LEN: usize = 64;
/// Slices up to this length are staged rather than written on their own.
const STAGE_SLICE_LEN: usize = 32;

/// Writes into a `BufMut` while computing the CRC-32C of what it wrote. Small fields
/// are gathered in a stack buffer so that the checksum and the buffer see few, large
/// slices.
struct CrcWriter<'b, B: BufMut> {
    out: &'b mut B,
    crc: u32,
    stage: [u8; STAGE_LEN],
    staged: usize,
}

impl<'b, B: BufMut> CrcWriter<'b, B> {
    fn new(out: &'b mut B) -> Self {
        CrcWriter {
            out,
            crc: 0,
            stage: [0; STAGE_LEN],
            staged: 0,
        }
    }

    fn flush(&mut self) {
        if self.staged > 0 {
            let staged = &self.stage[..self.staged];
            self.crc = crc32c::crc32c_append(self.crc, staged);
            self.out.put_slice(staged);
            self.staged = 0;
        }
    }

    fn key(&mut self, key: u8) {
        self.bytes(&[key]);
    }

    fn varint(&mut self, value: u64) {
        if self.staged + crate::varint::MAX_VARINT_LEN > STAGE_LEN {
            self.flush();
        }
        let mut cursor = &mut self.stage[self.staged..];
        let room = cursor.len();
        encode_varint(value, &mut cursor);
        self.staged += room - cursor.len();
    }

    fn varint_field(&mut self, key: u8, value: u64) {
        if value != 0 {
            self.key(key);
            self.varint(value);
        }
    }

    fn bytes(&mut self, data: &[u8]) {
        if data.len() <= STAGE_SLICE_LEN {
            if self.staged + data.len() > STAGE_LEN {
                self.flush();
            }
            self.stage[self.staged..self.staged + data.len()].copy_from_slice(data);
            self.staged += data.len();
        } else {
            self.flush();
            self.crc = crc32c::crc32c_append(self.crc, data);
            self.out.put_slice(data);
        }
    }

    fn fragment(&mut self, fragment: &FragmentSpec<'_>) {
        self.key(CONTENT_FRAGMENT);
        self.varint(fragment.body_len() as u64);
        write_fragment_body(fragment, |part| self.bytes(part));
    }

    fn finish(mut self) {
        self.flush();
        self.out.put_u32_le(self.crc);
    }
}
