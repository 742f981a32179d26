//! Decoding frames from a byte stream (TCP, Unix stream, shm).

use bytes::BytesMut;

use crate::codec::{Header, decode_checked};
use crate::pb::FrameMessage;
use crate::{DecodeLimits, FrameError};

/// Reassembles frames from a byte stream split at arbitrary boundaries.
///
/// Feed bytes with [`StreamDecoder::extend`] (or read straight into
/// [`StreamDecoder::buffer_mut`]), then call [`StreamDecoder::next_frame`] until it
/// returns `Ok(None)` ("need more bytes"). A frame whose header declares more than
/// the maximum frame size is refused as soon as its header is complete, so the
/// decoder never buffers more than one maximum-size frame plus what the caller
/// pushed in one call. Any error is final: the stream is out of sync and the
/// connection must be closed; later calls return the same error.
///
/// ```
/// use atbus_proto::{encode_frame, pb, DecodeLimits, StreamDecoder};
/// use bytes::BytesMut;
///
/// let ping = pb::FrameMessage {
///     head: None,
///     body: Some(pb::frame_message::Body::Ping(pb::PingData::default())),
/// };
/// let mut wire = BytesMut::new();
/// encode_frame(&ping, &mut wire);
///
/// let mut decoder = StreamDecoder::new(DecodeLimits::default());
/// let (first, second) = wire.split_at(3);
/// decoder.extend(first);
/// assert_eq!(decoder.next_frame().unwrap(), None);
/// decoder.extend(second);
/// assert_eq!(decoder.next_frame().unwrap(), Some(ping));
/// ```
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    limits: DecodeLimits,
    failed: Option<FrameError>,
    last_pinned: usize,
}

impl StreamDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: DecodeLimits) -> Self {
        StreamDecoder {
            buf: BytesMut::new(),
            limits,
            failed: None,
            last_pinned: 0,
        }
    }

    /// Appends bytes read from the stream; after an error they are discarded.
    pub fn extend(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The buffer to read into directly (for example with `read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of buffer the last frame returned by [`next_frame`](Self::next_frame)
    /// keeps alive at least: its slices share the buffer's allocation, which held
    /// this much from the frame's start when it was split off. A caller that
    /// retains a small part of a frame should copy it out when this is much
    /// larger, or the part pins the whole allocation.
    pub fn last_frame_pinned(&self) -> usize {
        self.last_pinned
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// The frame's payload `bytes` fields are slices of the decoder's buffer.
    pub fn next_frame(&mut self) -> Result<Option<FrameMessage>, FrameError> {
        if let Some(err) = &self.failed {
            // Bytes read into `buffer_mut` after the error are dropped too.
            self.buf.clear();
            return Err(err.clone());
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let header = match Header::parse(&self.buf, &self.limits) {
            Ok(header) => header,
            Err(err) if err.is_truncated() => return Ok(None),
            Err(err) => return Err(self.fail(err)),
        };
        self.last_pinned = self.buf.capacity();
        let frame = self.buf.split_to(header.frame_len()).freeze();
        match decode_checked(frame, header, &self.limits) {
            Ok(msg) => Ok(Some(msg)),
            Err(err) => Err(self.fail(err)),
        }
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        self.buf.clear();
        err
    }
}
