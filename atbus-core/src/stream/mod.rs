//! Streams: the per-direction state of one ordered message flow.
//!
//! Each direction of a stream has one offset space (`DESIGN.md`, "Stream offsets").
//! The send side queues messages and tracks acknowledged and lost ranges in a
//! [`SendBuffer`]; the receive side merges fragments by offset in an [`Assembler`].

pub mod assembler;
pub mod send;

pub use assembler::{
    AssembledMessage, Assembler, AssemblerStats, CHUNK_COST, FinishError, Footprint, InsertOutcome,
    ResetError, ResetOutcome,
};
pub use send::{AckOutcome, Expired, Pending, PushError, QueuedMessage, SendBuffer};

use std::collections::BTreeMap;

use atbus_proto::CachedMessageMeta;
use bytes::Bytes;

use crate::event::CloseReason;

/// Metadata of a queued message: its encoded metadata, and whether it is the
/// stream's FINISH_STREAM marker.
#[derive(Debug, Clone)]
pub struct SendMeta {
    /// Encoded once, spliced into the fragment that starts the message.
    pub cached: CachedMessageMeta,
    /// The empty message that finishes the stream (its packet carries
    /// FINISH_STREAM and its fragment the close reason).
    pub fin: bool,
}

/// Metadata of a received message, from the fragment that started it.
///
/// Kept small (16 bytes): the reassembler moves one per message, and almost no
/// data message carries labels, a token or a close reason, so those live behind
/// one optional box ([`RecvExtra`]) allocated only when present.
#[derive(Debug, Clone, Default)]
pub struct RecvMeta {
    /// `packet_type`.
    pub packet_type: i32,
    /// The fragment came in a packet flagged FINISH_STREAM and carries a close
    /// reason: the message is the stream's finish marker.
    pub fin: bool,
    /// Labels, token and close reason, when any of them is present.
    pub extra: Option<Box<RecvExtra>>,
}

/// The rarely present parts of a [`RecvMeta`].
#[derive(Debug, Clone, Default)]
pub struct RecvExtra {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The token option.
    pub token: Bytes,
    /// The close reason (on a FINISH_STREAM marker or a handshake reject).
    pub close_reason: Option<CloseReason>,
}

impl RecvMeta {
    /// Metadata with these parts; boxes the rare ones only when one is present.
    pub fn new(
        packet_type: i32,
        fin: bool,
        labels: BTreeMap<String, String>,
        token: Bytes,
        close_reason: Option<CloseReason>,
    ) -> Self {
        let extra =
            (!labels.is_empty() || !token.is_empty() || close_reason.is_some()).then(|| {
                Box::new(RecvExtra {
                    labels,
                    token,
                    close_reason,
                })
            });
        RecvMeta {
            packet_type,
            fin,
            extra,
        }
    }

    /// The rare parts, taken out (empty ones when there were none).
    pub fn take_extra(&mut self) -> RecvExtra {
        self.extra.take().map(|e| *e).unwrap_or_default()
    }
}

impl Footprint for RecvMeta {
    /// Label and token bytes plus a B-tree entry's worth per label.
    fn footprint(&self) -> usize {
        let Some(extra) = self.extra.as_deref() else {
            return 0;
        };
        let labels: usize = extra
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2 * std::mem::size_of::<String>())
            .sum();
        let reason = extra.close_reason.as_ref().map_or(0, |r| r.message.len());
        labels + extra.token.len() + reason
    }
}

/// Both directions of one stream with a peer.
#[derive(Debug)]
pub(crate) struct Stream {
    pub send: SendBuffer<SendMeta>,
    pub recv: Assembler<RecvMeta>,
    /// A push answered `WouldBlock` with a message of this size: raise `Writable`
    /// once it fits.
    pub blocked: Option<usize>,
    /// The peer's finish marker was delivered.
    pub recv_finished: bool,
    /// Payload bytes this stream counted against the peer's receive limit.
    pub counted: usize,
    /// Skips (RESET_OFFSET) not yet reported, merged into one
    /// [`Event::MessagesSkipped`](crate::Event::MessagesSkipped): reported once the
    /// messages a reset kept below its offset are delivered, and only within the
    /// delivery budget.
    pub skipped: Option<PendingSkip>,
}

/// Skips of a stream waiting to be reported (see [`Stream::skipped`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PendingSkip {
    /// The highest reset offset: reported once no message below it waits.
    pub at: u64,
    /// Messages skipped.
    pub messages: u64,
    /// Offsets skipped.
    pub offsets: u64,
}

impl Stream {
    pub fn new(send_window: u64, receive_window: u64) -> Self {
        Stream {
            send: SendBuffer::new(send_window),
            recv: Assembler::new(receive_window),
            blocked: None,
            recv_finished: false,
            counted: 0,
            skipped: None,
        }
    }

    /// Whether both directions are finished (the peer's finish marker delivered,
    /// ours acknowledged) and nothing is held: the stream can be forgotten. A
    /// direction that was never used is not finished: the other side may still
    /// send on it.
    pub fn is_done(&self) -> bool {
        self.recv_finished
            && self.skipped.is_none()
            && self.recv.buffered_bytes() == 0
            && self.send.is_finished()
            && self.send.is_settled()
    }
}
