//! Runs of small messages on the receive side: packed fragments (several whole
//! messages per fragment, docs/protocol.md "Packed fragments") checked, handed
//! over whole or split into pieces for the reassembler, and runs of plain
//! messages reported as one [`Event::Messages`].

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use atbus_proto::{FRAGMENT_FLAG_PACKED, PackedRecords, pb};
use bytes::{Bytes, BytesMut};

use crate::event::{CloseReason, Event, PeerId, ReceivedMessage};
use crate::stream::RecvMeta;

const HAS_MORE: i32 = pb::AtbusPacketFragmentFlagType::HasMore as i32;

/// Whether a fragment is packed (several whole messages as records).
pub(super) fn is_packed(fragment: &pb::packet_content::FragmentType) -> bool {
    fragment.fragment_flag & FRAGMENT_FLAG_PACKED != 0
}

/// The records of every packed fragment of `content`, in fragment order, if each
/// is well formed: no `HAS_MORE`, no metadata but the type, records whole and at
/// most `max_records`; `None` otherwise. Checked before anything of the packet is
/// applied, so a bad one changes nothing.
pub(super) fn checked_packed(
    content: &pb::PacketContent,
    max_records: usize,
) -> Option<VecDeque<PackedRecords>> {
    content
        .fragment
        .iter()
        .filter(|f| is_packed(f))
        .map(|f| {
            let plain = f.fragment_flag & HAS_MORE == 0
                && f.options.is_none()
                && f.labels.is_empty()
                && f.forward_for.is_none()
                && f.close_reason.is_none();
            plain
                .then(|| PackedRecords::new(f.data.clone(), max_records).ok())
                .flatten()
        })
        .collect()
}

/// One message or piece of a message, as the reassembler takes it.
pub(super) struct Piece {
    pub data: Bytes,
    pub is_final: bool,
    pub meta: RecvMeta,
}

/// The pieces a fragment holds: itself, or each record of a packed fragment (a
/// whole message each, with the fragment's type).
pub(super) enum Pieces {
    One(Option<Piece>),
    Packed(PackedRecords, i32),
}

impl Pieces {
    /// The pieces of `fragment`; `records`: its records, checked by
    /// [`checked_packed`], when it is packed; `fin`: its packet carries
    /// FINISH_STREAM.
    pub(super) fn of(
        fragment: pb::packet_content::FragmentType,
        records: Option<PackedRecords>,
        fin: bool,
    ) -> Self {
        if let Some(records) = records {
            return Pieces::Packed(records, fragment.packet_type);
        }
        let meta = RecvMeta::new(
            fragment.packet_type,
            fin && fragment.close_reason.is_some(),
            fragment.labels,
            // Copied: a slice would pin the whole datagram.
            fragment
                .options
                .map(|o| Bytes::copy_from_slice(&o.token))
                .unwrap_or_default(),
            fragment.close_reason.as_ref().map(CloseReason::from_pb),
        );
        Pieces::One(Some(Piece {
            data: fragment.data,
            is_final: fragment.fragment_flag & HAS_MORE == 0,
            meta,
        }))
    }
}

impl Iterator for Pieces {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        match self {
            Pieces::One(piece) => piece.take(),
            Pieces::Packed(records, packet_type) => records.next().map(|data| Piece {
                data,
                is_final: true,
                meta: RecvMeta::new(*packet_type, false, BTreeMap::new(), Bytes::new(), None),
            }),
        }
    }
}

/// Consecutive plain messages of one stream being delivered, reported as one
/// [`Event::Messages`] when the endpoint batches events (`batch_events`).
pub(super) struct MessageRun {
    enabled: bool,
    packet_type: i32,
    payloads: Vec<Bytes>,
}

impl MessageRun {
    pub fn new(enabled: bool) -> Self {
        MessageRun {
            enabled,
            packet_type: 0,
            payloads: Vec::new(),
        }
    }

    /// Adds `message` to the run, or reports it on its own (after the run) when it
    /// carries labels or a token, or batching is off.
    pub fn push(
        &mut self,
        events: &mut VecDeque<Event>,
        peer: PeerId,
        stream: i64,
        message: ReceivedMessage,
    ) {
        let plain = message.labels.is_empty() && message.token.is_empty();
        if self.enabled && plain {
            if self.packet_type != message.packet_type {
                self.flush(events, peer, stream);
                self.packet_type = message.packet_type;
            }
            self.payloads.push(message.payload);
            return;
        }
        self.flush(events, peer, stream);
        events.push_back(Event::Message {
            peer,
            stream,
            message,
        });
    }

    /// Reports what the run holds: one message as [`Event::Message`], several as
    /// [`Event::Messages`].
    pub fn flush(&mut self, events: &mut VecDeque<Event>, peer: PeerId, stream: i64) {
        match self.payloads.len() {
            0 => {}
            1 => {
                let payload = self.payloads.pop().unwrap_or_default();
                events.push_back(Event::Message {
                    peer,
                    stream,
                    message: ReceivedMessage::plain(self.packet_type, payload),
                });
            }
            _ => events.push_back(Event::Messages {
                peer,
                stream,
                packet_type: self.packet_type,
                payloads: std::mem::take(&mut self.payloads),
            }),
        }
    }
}

/// Messages of packed fragments handed over whole (without the reassembler)
/// during one packet, in order, with the type of each run of them.
#[derive(Default)]
pub(super) struct Handed {
    payloads: Vec<Bytes>,
    /// `(packet_type, messages)` of consecutive runs of `payloads`.
    runs: Vec<(i32, usize)>,
}

impl Handed {
    /// How many messages were handed over.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Payload bytes of the messages handed over (an empty one counts one).
    pub fn payload_bytes(&self) -> usize {
        self.payloads.iter().map(|p| p.len().max(1)).sum()
    }

    /// `messages` more messages of `packet_type` follow in `payloads`.
    fn begin(&mut self, packet_type: i32, messages: usize) {
        self.payloads.reserve(messages);
        match self.runs.last_mut() {
            Some((t, n)) if *t == packet_type => *n += messages,
            _ => self.runs.push((packet_type, messages)),
        }
    }

    /// Reports the messages: each run of two or more as one [`Event::Messages`]
    /// when `batch` (the common case, one run per packet, moves the payloads
    /// as they are), otherwise one [`Event::Message`] each.
    pub fn report(self, events: &mut VecDeque<Event>, peer: PeerId, stream: i64, batch: bool) {
        if let ([(packet_type, _)], true, true) = (&self.runs[..], batch, self.payloads.len() >= 2)
        {
            events.push_back(Event::Messages {
                peer,
                stream,
                packet_type: *packet_type,
                payloads: self.payloads,
            });
            return;
        }
        let mut payloads = self.payloads.into_iter();
        for (packet_type, n) in self.runs {
            let run: Vec<Bytes> = payloads.by_ref().take(n).collect();
            if batch && run.len() >= 2 {
                events.push_back(Event::Messages {
                    peer,
                    stream,
                    packet_type,
                    payloads: run,
                });
                continue;
            }
            events.extend(run.into_iter().map(|payload| Event::Message {
                peer,
                stream,
                message: ReceivedMessage::plain(packet_type, payload),
            }));
        }
    }
}

/// Hands the messages of a packed fragment taken whole (at a drained delivery
/// point) to `handed`, in order: those `small` for their datagram are copied back
/// to back into shared blocks of `block_size` bytes (at least the message) and cut
/// from each block once it is frozen; larger ones are slices of the fragment.
pub(super) fn hand_over(
    mut records: PackedRecords,
    packet_type: i32,
    small: &impl Fn(usize) -> bool,
    block_size: usize,
    block: &mut BytesMut,
    handed: &mut Handed,
) {
    handed.begin(packet_type, records.messages());
    // Where the messages copied into `block` and not cut yet lie in it.
    let mut in_block: Vec<Range<usize>> = Vec::new();
    let cut = |block: &mut BytesMut, in_block: &mut Vec<Range<usize>>, handed: &mut Handed| {
        if in_block.is_empty() {
            return;
        }
        let frozen = block.split().freeze();
        handed
            .payloads
            .extend(in_block.drain(..).map(|r| frozen.slice(r)));
    };
    while let Some(range) = records.next_range() {
        let len = range.len();
        if !small(len) {
            cut(block, &mut in_block, handed);
            handed.payloads.push(records.data().slice(range));
            continue;
        }
        if block.capacity() - block.len() < len {
            cut(block, &mut in_block, handed);
            *block = BytesMut::with_capacity(block_size.max(len));
        }
        let at = block.len();
        block.extend_from_slice(&records.data()[range]);
        in_block.push(at..at + len);
    }
    cut(block, &mut in_block, handed);
}
