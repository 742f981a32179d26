//! Input handling: datagrams and stream bytes, frames, packets, acknowledgements,
//! the handshake and control messages.

use std::collections::BTreeMap;
use std::time::Duration;

use atbus_proto::{Frames, decode_content, pb};
use bytes::{Bytes, BytesMut};
use prost::Message as _;

use super::runs::{Handed, MessageRun, Piece, Pieces, checked_packed, hand_over, is_packed};
use super::{Endpoint, Sample, TimerKey};
use crate::config::ConnectionKind;
use crate::connection::recovery::{
    InFlight, MAX_REORDER_FACTOR, REORDER_RESET_RECOVERIES, SentRange,
};
use crate::connection::{CONTROL_WINDOW, ConnectionState, Role};
use crate::event::{
    CloseCode, CloseReason, Command, CommandId, ConnectionId, Event, PeerId, ReceivedMessage,
};
use crate::handshake::{self, AuthDecision, HandshakeKind, Hello};
use crate::stream::{
    AssembledMessage, CHUNK_COST, Footprint, InsertOutcome, PendingSkip, RecvMeta, Stream,
};
use crate::time::Timestamp;

const FLAG_FINISH_STREAM: i32 = pb::AtbusPacketFlagType::FinishStream as i32;
const FLAG_FINISH_CONNECTION: i32 = pb::AtbusPacketFlagType::FinishConnection as i32;
const FLAG_RESET_OFFSET: i32 = pb::AtbusPacketFlagType::ResetOffset as i32;

/// A fragment held by a slice of a datagram pins the whole datagram; fragments that
/// use less than this share of it are copied out, so that retained memory stays
/// within twice what the receive limits count.
const PIN_RATIO: usize = 2;

/// Copies out a packet's content that is small next to the `pinned` bytes of
/// buffer it shares (see [`PIN_RATIO`]), so that retaining the content retains
/// only what the limits count.
fn unpin(frame: &mut pb::FrameMessage, pinned: usize) {
    if let Some(pb::frame_message::Body::Packet(p)) = frame.body.as_mut() {
        if p.content.len().saturating_mul(PIN_RATIO) < pinned {
            p.content = Bytes::copy_from_slice(&p.content);
        }
    }
}

/// The over-limit headroom is this many maximum messages: one message's payload
/// plus its bookkeeping, which is at most twice its payload when its fragments
/// hold at least 32 bytes (what senders cut; a peer cutting finer cannot
/// complete a maximum message while the peer is at its limit).
const HEADROOM_FACTOR: usize = 3;

/// Bytes of a block that small whole messages of one packet are copied into
/// together (see `on_packet`): what one message the application keeps can pin.
const SHARED_BLOCK: usize = 4 * 1024;

/// Bytes (payload and bookkeeping, labels and tokens included) a connection's
/// control stream may hold before its messages complete: four control windows.
pub(super) const CONTROL_BUFFER_LIMIT: usize = 4 * CONTROL_WINDOW as usize;

/// Unopened streams one connection remembers to acknowledge as empty.
const MAX_REFUSED_ACKS: usize = 1024;

/// What one buffered early frame costs at least, decoded.
const EARLY_FRAME_COST: usize = 256;

impl Endpoint {
    pub(super) fn on_datagram(&mut self, id: ConnectionId, data: Bytes) {
        let limits = self.config.decode_limits;
        let Some(c) = self.connections.get_mut(&id) else {
            self.stats.unknown_connection_inputs += 1;
            return;
        };
        if c.state == ConnectionState::Closed || !c.is_lossy() {
            self.stats.unknown_connection_inputs += 1;
            return;
        }
        c.stats.received_packets += 1;
        c.stats.received_bytes += data.len() as u64;
        c.last_received = self.now;
        c.rx_fragments = 0;
        let datagram_len = data.len();
        for frame in Frames::new(data, limits) {
            match frame {
                Ok(frame) => self.on_frame(id, frame, datagram_len),
                Err(_) => {
                    if let Some(c) = self.connections.get_mut(&id) {
                        c.stats.malformed += 1;
                    }
                    break;
                }
            }
            if !self.is_open(id) {
                break;
            }
        }
        self.record_received(id, datagram_len);
        self.after_input(id);
    }

    fn record_received(&mut self, id: ConnectionId, bytes: usize) {
        let fragments = self
            .connections
            .get_mut(&id)
            .map_or(0, |c| std::mem::take(&mut c.rx_fragments));
        self.record(
            id,
            Sample::Received {
                bytes: bytes as u64,
                fragments,
            },
        );
    }

    pub(super) fn on_stream_data(&mut self, id: ConnectionId, data: Bytes) {
        let Some(c) = self.connections.get_mut(&id) else {
            self.stats.unknown_connection_inputs += 1;
            return;
        };
        if c.state == ConnectionState::Closed {
            self.stats.unknown_connection_inputs += 1;
            return;
        }
        let Some(decoder) = c.decoder.as_mut() else {
            self.stats.unknown_connection_inputs += 1;
            return;
        };
        c.stats.received_packets += 1;
        c.stats.received_bytes += data.len() as u64;
        c.last_received = self.now;
        c.rx_fragments = 0;
        let read_len = data.len();
        decoder.extend(&data);
        while let Some(c) = self.connections.get_mut(&id) {
            let Some(decoder) = c.decoder.as_mut() else {
                break;
            };
            match decoder.next_frame() {
                Ok(Some(mut frame)) => {
                    let len = frame.encoded_len();
                    unpin(&mut frame, decoder.last_frame_pinned());
                    self.on_frame(id, frame, len);
                }
                Ok(None) => break,
                Err(err) => {
                    c.stats.malformed += 1;
                    self.close(
                        id,
                        CloseReason::new(CloseCode::PeerReset, format!("malformed frame: {err}")),
                        false,
                        true,
                    );
                    break;
                }
            }
            if !self.is_open(id) {
                break;
            }
        }
        self.record_received(id, read_len);
        self.after_input(id);
    }

    fn is_open(&self, id: ConnectionId) -> bool {
        self.connections
            .get(&id)
            .is_some_and(|c| c.state != ConnectionState::Closed)
    }

    fn after_input(&mut self, id: ConnectionId) {
        if let Some(c) = self.connections.get(&id) {
            if !c.ack_pending.is_empty() || !c.pongs.is_empty() {
                self.dirty.insert(id);
            }
        }
        // Recomputed once before the timers are next read, not per datagram.
        self.stale_timers.insert(id);
    }

    /// Whether a frame must wait for the handshake: an acceptor takes nothing but
    /// the control stream (and pings) before it accepts the hello.
    fn is_early(&self, id: ConnectionId, frame: &pb::FrameMessage) -> bool {
        let Some(c) = self.connections.get(&id) else {
            return false;
        };
        if c.role != Role::Acceptor || c.state != ConnectionState::Handshaking {
            return false;
        }
        match &frame.body {
            Some(pb::frame_message::Body::Packet(p)) => p.stream_id != -1,
            Some(pb::frame_message::Body::Acknowledge(a)) => {
                a.acknowledge.as_ref().is_some_and(|a| a.stream_id != -1)
            }
            _ => false,
        }
    }

    fn on_frame(&mut self, id: ConnectionId, frame: pb::FrameMessage, wire_len: usize) {
        if self.is_early(id, &frame) {
            if matches!(frame.body, Some(pb::frame_message::Body::Acknowledge(_))) {
                // This side has sent no data yet: nothing to acknowledge.
                return;
            }
            // Charged at least what the decoded frame occupies.
            let size = frame.encoded_len().max(EARLY_FRAME_COST);
            let limit = self.config.early_data_limit;
            let total = self.config.early_data_total;
            if let Some(c) = self.connections.get_mut(&id) {
                if c.early_bytes + size <= limit && self.early_total + size <= total {
                    c.early_bytes += size;
                    self.early_total += size;
                    // Held for a while: it must not pin the rest of the datagram.
                    let mut frame = frame;
                    unpin(&mut frame, usize::MAX);
                    c.early.push(frame);
                    return;
                }
                c.stats.dropped_early += 1;
            }
            // Acknowledged as missing once the hello is accepted (the
            // acknowledgement waits with the rest of the early frames), so that a
            // reliable connection's sender resends it.
            if let Some(pb::frame_message::Body::Packet(p)) = &frame.body {
                if let Some(c) = self.connections.get_mut(&id) {
                    c.echo = c.echo.max(p.timepoint_microseconds);
                }
                if p.stream_id >= 0 {
                    self.ack_refused(id, p.stream_id);
                }
            }
            return;
        }
        match frame.body {
            Some(pb::frame_message::Body::Packet(packet)) => self.on_packet(id, packet, wire_len),
            Some(pb::frame_message::Body::Acknowledge(ack)) => self.on_ack(id, ack),
            Some(pb::frame_message::Body::Ping(ping)) => {
                if let Some(c) = self.connections.get_mut(&id) {
                    if c.pongs.len() >= 4 {
                        c.pongs.pop_front();
                    }
                    // A padded ping is a PMTUD probe: say what size arrived.
                    let received = if ping.pmtud_padding.is_empty() {
                        0
                    } else {
                        i32::try_from(wire_len).unwrap_or(i32::MAX)
                    };
                    c.pongs.push_back((ping.timepoint_microseconds, received));
                }
            }
            Some(pb::frame_message::Body::Pong(pong)) if pong.pmtud_received_size > 0 => {
                self.on_probe_answer(id, pong.timepoint_microseconds, pong.pmtud_received_size);
            }
            Some(pb::frame_message::Body::Pong(pong)) => {
                let now = self.now;
                if let Some(c) = self.connections.get_mut(&id) {
                    if c.ping_outstanding
                        .is_some_and(|t| t.as_micros() as i64 == pong.timepoint_microseconds)
                    {
                        let sent = c.ping_outstanding.take().unwrap_or(now);
                        let rtt = now.saturating_since(sent);
                        c.rtt.on_sample(rtt);
                        c.cc.on_rtt_sample(now, &c.rtt);
                        // The path answers again (after an outage, say).
                        c.rto_backoff = 0;
                        self.record(id, Sample::Rtt(rtt));
                    }
                }
            }
            None => {}
        }
    }

    fn on_packet(&mut self, id: ConnectionId, packet: pb::PacketData, wire_len: usize) {
        let limits = self.config.decode_limits;
        let Ok(offset) = u64::try_from(packet.stream_offset) else {
            self.count_malformed(id);
            return;
        };
        let stream_id = packet.stream_id;
        let Ok(content) = decode_content(packet.content, &limits) else {
            self.count_malformed(id);
            return;
        };
        let Some(mut packed) = checked_packed(&content, limits.max_fragments) else {
            self.count_malformed(id);
            return;
        };
        if let Some(c) = self.connections.get_mut(&id) {
            c.rx_fragments += content.fragment.len() as u64;
        }
        if packet.flags & FLAG_FINISH_CONNECTION != 0 {
            let reason = content
                .fragment
                .iter()
                .find_map(|f| f.close_reason.as_ref())
                .map(CloseReason::from_pb)
                .unwrap_or_else(|| CloseReason::new(CloseCode::Unknown, ""));
            self.close(id, reason, true, false);
            return;
        }
        if stream_id < -1 {
            self.count_malformed(id);
            return;
        }
        if stream_id == -1 && offset == 0 && packet.flags & FLAG_RESET_OFFSET != 0 {
            self.check_reconnect(id, &content);
        }
        let peer = self.connections.get(&id).and_then(|c| c.peer);
        if stream_id >= 0 && peer.is_none() {
            // Data before any peer is bound: only an initiator can get here, from a
            // peer that breaks the handshake order.
            self.count_malformed(id);
            return;
        }
        let fin = packet.flags & FLAG_FINISH_STREAM != 0;
        let timepoint = packet.timepoint_microseconds;
        if let Some(c) = self.connections.get_mut(&id) {
            // Echoed in acknowledgements: the newest frame processed, whatever
            // became of it.
            c.echo = c.echo.max(timepoint);
        }
        if stream_id >= 0 {
            let Some(peer) = peer else { return };
            if !self.ensure_recv_stream(id, peer, stream_id) {
                return;
            }
        }
        // Apply the reset, then insert every fragment.
        let mut skipped = 0;
        let mut skipped_offsets = 0;
        // Control messages (hello, accept, commands) are small; their bound also caps
        // what an unauthenticated connection can make the endpoint hold.
        let max_message = if stream_id == -1 {
            CONTROL_WINDOW
        } else {
            self.config.max_message_size as u64
        };
        let peer_limit = self.config.peer_receive_limit;
        let max_ack_ranges = self.config.max_ack_ranges.max(1);
        let mut dropped = 0u64;
        // Pieces (plain fragments, or records of packed ones) offered to the
        // reassembler: a frame is "dropped whole" when each of them was dropped.
        let mut pieces = 0u64;
        // One past the last offset this frame carried.
        let mut cursor = offset;
        // Messages of packed fragments handed over without the reassembler; not
        // while the application holds delivery back (they wait in the window like
        // any other), and only as many as the budget has room for: the rest go
        // through the reassembler and wait for it like any other.
        let mut handed = Handed::default();
        let mut room = self.delivery.room();
        let resets = packet.flags & FLAG_RESET_OFFSET != 0;
        {
            let (asm, mut budget) = match self.recv_parts(id, peer, stream_id) {
                Some(parts) => parts,
                None => return,
            };
            if packet.flags & FLAG_RESET_OFFSET != 0 {
                let before = asm.acknowledge_offset();
                let held = asm.footprint();
                if let Ok(outcome) = asm.reset_to(offset) {
                    skipped += outcome.skipped_messages;
                    skipped_offsets += offset.saturating_sub(before);
                }
                // What the reset discarded no longer counts against the peer.
                if let Some(budget) = budget.as_mut() {
                    budget.release(held.saturating_sub(asm.footprint()), peer_limit);
                }
            }
            // Small fragments are copied out (a slice would pin the whole
            // datagram). Those that are whole messages delivered at once share
            // blocks of up to `SHARED_BLOCK` bytes: one allocation per block instead
            // of one per message. Only messages handed to the application pin a
            // block, and a message it keeps pins at most that much; what the
            // reassembler holds is copied on its own, so its memory stays what it
            // counts.
            let small = |len: usize| len * PIN_RATIO < wire_len;
            let copied: usize = content
                .fragment
                .iter()
                .map(|f| f.data.len())
                .filter(|&len| small(len))
                .sum::<usize>()
                + content
                    .fragment
                    .iter()
                    .filter(|f| is_packed(f) && !small(f.data.len()))
                    .map(|f| f.data.len())
                    .sum::<usize>();
            let mut block = BytesMut::new();
            // The end of the run of whole messages from the delivery point: a
            // fragment starting there that is final is a whole message.
            let mut run_end =
                (asm.acknowledge_offset() == asm.read_offset()).then(|| asm.read_offset());
            'fragments: for fragment in content.fragment {
                // A packed fragment at a drained delivery point is handed over
                // whole: its messages skip the reassembler (nothing to reorder,
                // nothing to hold) and count against no budget.
                let records = if is_packed(&fragment) {
                    packed.pop_front()
                } else {
                    None
                };
                if stream_id >= 0 {
                    if let Some(records) = records.clone() {
                        let bytes = records.data().len();
                        // Not in a frame that reset the stream: the skip it
                        // reports (from `deliver`) comes before what follows the gap.
                        // While the budget is not spent: a packed fragment (at most
                        // `max_fragments` records, one frame's bytes) may pass what is
                        // left of it, like one large message may.
                        let fits = !resets && room.is_none_or(|(b, m)| b > 0 && m > 0);
                        if fits
                            && records.largest() as u64 <= max_message
                            && asm.take_in_order(cursor, records.span())
                        {
                            if let Some((b, m)) = room.as_mut() {
                                *b = b.saturating_sub(bytes);
                                *m = m.saturating_sub(records.messages());
                            }
                            cursor += records.span();
                            run_end = Some(cursor);
                            hand_over(
                                records,
                                fragment.packet_type,
                                &small,
                                copied.min(SHARED_BLOCK),
                                &mut block,
                                &mut handed,
                            );
                            continue;
                        }
                    }
                }
                for Piece {
                    data,
                    is_final,
                    meta,
                } in Pieces::of(fragment, records, fin)
                {
                    pieces += 1;
                    let Some(end) = cursor
                        .checked_add(data.len() as u64)
                        .and_then(|e| e.checked_add(u64::from(is_final)))
                    else {
                        break 'fragments;
                    };
                    let start = cursor;
                    cursor = end;
                    // A message may not grow past the size limit.
                    if end.saturating_sub(asm.read_offset())
                        > max_message.saturating_add(1).max(asm.window())
                    {
                        dropped += 1;
                        continue;
                    }
                    let before = asm.footprint();
                    // What storing it may cost at most.
                    let cost = data.len() + CHUNK_COST + meta.footprint();
                    let in_order = start <= asm.acknowledge_offset();
                    // The control stream has no peer budget (it runs before the
                    // handshake binds one): its own bound covers labels and tokens too,
                    // not just the offsets its window counts. Out-of-order pieces get
                    // one bound; a piece at the in-order edge may use a second one, so
                    // the retransmissions that fill the holes under a full stream are
                    // still taken and the stream drains (a hostile peer's in-order
                    // pieces of an unfinished message stop at twice the bound).
                    let bound = if in_order {
                        2 * CONTROL_BUFFER_LIMIT
                    } else {
                        CONTROL_BUFFER_LIMIT
                    };
                    if budget.is_none() && before + cost > bound {
                        dropped += 1;
                        continue;
                    }
                    if let Some(budget) = budget.as_mut() {
                        if !budget.admit(stream_id, cost, in_order, peer_limit, max_message) {
                            dropped += 1;
                            continue;
                        }
                    }
                    let at_run =
                        is_final && run_end == Some(start) && start == asm.acknowledge_offset();
                    // Within the window: a whole message past it would be cut, and the
                    // reassembler must not keep a slice of the shared block.
                    let whole_in_order = at_run
                        && !data.is_empty()
                        && end.saturating_sub(asm.read_offset()) <= asm.window();
                    let data = if !small(data.len()) {
                        data
                    } else if whole_in_order {
                        if block.capacity() < data.len() {
                            block =
                                BytesMut::with_capacity(copied.min(SHARED_BLOCK).max(data.len()));
                        }
                        block.extend_from_slice(&data);
                        block.split().freeze()
                    } else {
                        Bytes::copy_from_slice(&data)
                    };
                    let outcome = asm.insert(start, data, is_final, Some(meta));
                    if at_run && asm.acknowledge_offset() == end {
                        run_end = Some(end);
                    }
                    if matches!(outcome, InsertOutcome::BeyondWindow) {
                        dropped += 1;
                    }
                    let after = asm.footprint();
                    if let Some(budget) = budget.as_mut() {
                        let grown = after.saturating_sub(before);
                        *budget.peer_buffered += grown;
                        *budget.stream_counted += grown;
                    }
                }
            }
        }
        let handed_any = handed.len() > 0;
        if let (1.., Some(peer)) = (handed.len(), peer) {
            self.stats.delivered_messages += handed.len() as u64;
            self.delivery
                .charge_many(handed.len(), handed.payload_bytes());
            handed.report(&mut self.events, peer, stream_id, self.config.batch_events);
        }
        // A frame dropped whole while the application holds delivery back is not
        // acknowledged until it reads (see `delivery.rs`).
        let withheld = (stream_id >= 0 || self.delivery.holds_control(id))
            && dropped > 0
            && dropped == pieces
            && !handed_any
            && self.delivery.withhold_ack(id, stream_id);
        if let Some(c) = self.connections.get_mut(&id) {
            c.stats.dropped_over_limit += dropped;
            let since = self.now;
            if !withheld {
                c.ack_pending.entry(stream_id).or_insert(since);
            }
            if cursor > offset {
                let recent = c.ack_recent.entry(stream_id).or_default();
                if recent.len() >= max_ack_ranges {
                    recent.remove(0);
                }
                recent.push(offset);
            }
            c.echo = c.echo.max(timepoint);
        }
        if skipped > 0 || skipped_offsets > 0 {
            if let Some(peer) = peer {
                self.stats.skipped_messages += skipped;
                self.note_skip(peer, stream_id, offset, skipped, skipped_offsets);
            }
        }
        self.deliver(id, peer, stream_id);
    }

    /// A hello starting a control stream afresh on an accepted connection that
    /// already accepted another hello (different session or nonce): the peer
    /// reconnected from the same transport address.
    fn check_reconnect(&mut self, id: ConnectionId, content: &pb::PacketContent) {
        let Some(accepted) = self.connections.get(&id).and_then(|c| c.hello_identity) else {
            return;
        };
        let Some(first) = content.fragment.first() else {
            return;
        };
        if first.packet_type != pb::AtbusPacketType::Handshake as i32 {
            return;
        }
        let Some(data) = handshake::decode_handshake(&first.data) else {
            return;
        };
        if self.is_retired(&data.node_name, data.session_id) {
            // A late hello of a session that has ended.
            self.count_malformed(id);
            return;
        }
        // Within one session, nonces grow with every connection attempt, so a late
        // duplicate of an older hello cannot replace a newer connection.
        let newer = if data.session_id == accepted.0 {
            data.connection_nonce > accepted.1
        } else {
            true
        };
        if data.kind == HandshakeKind::Hello as i32 && newer {
            self.renew_accepted(id);
        }
    }

    /// Acknowledges a stream whose frames were dropped without opening it, as
    /// holding nothing: a reliable connection's sender resends only what an
    /// acknowledgement shows missing.
    fn ack_refused(&mut self, id: ConnectionId, stream: i64) {
        let now = self.now;
        if let Some(c) = self.connections.get_mut(&id) {
            if c.refused_acks.len() < MAX_REFUSED_ACKS || c.refused_acks.contains(&stream) {
                c.refused_acks.insert(stream);
                c.ack_pending.entry(stream).or_insert(now);
            }
        }
    }

    fn count_malformed(&mut self, id: ConnectionId) {
        if let Some(c) = self.connections.get_mut(&id) {
            c.stats.malformed += 1;
        }
    }

    /// Makes sure `stream` exists for receiving; false if it must not be opened.
    fn ensure_recv_stream(&mut self, id: ConnectionId, peer: PeerId, stream: i64) -> bool {
        let max_streams = self.config.max_streams_per_peer;
        let (send_window, receive_window) = (
            self.config.stream_send_window,
            self.config.stream_receive_window,
        );
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.streams.contains_key(&stream) {
            return true;
        }
        if let Some(&final_offset) = p.tombstones.get(&stream) {
            // A late retransmission of a finished stream: acknowledge it again.
            if let Some(c) = self.connections.get_mut(&id) {
                c.ack_pending.entry(stream).or_insert(self.now);
                c.tombstone_acks.insert(stream, final_offset);
            }
            return false;
        }
        if p.streams.len() >= max_streams {
            self.stats.refused_streams += 1;
            self.ack_refused(id, stream);
            return false;
        }
        p.streams
            .insert(stream, Stream::new(send_window, receive_window));
        true
    }

    /// The assembler for `stream` on connection `id`, with the peer's receive
    /// budget (none for the control stream, bounded by its window).
    fn recv_parts(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        stream: i64,
    ) -> Option<(
        &mut crate::stream::Assembler<RecvMeta>,
        Option<RecvBudget<'_>>,
    )> {
        if stream == -1 {
            let c = self.connections.get_mut(&id)?;
            return Some((&mut c.control_recv, None));
        }
        let p = self.peers.get_mut(&peer?)?;
        let s = p.streams.get_mut(&stream)?;
        Some((
            &mut s.recv,
            Some(RecvBudget {
                peer_buffered: &mut p.recv_buffered,
                headroom: &mut p.headroom,
                stream_counted: &mut s.counted,
            }),
        ))
    }

    /// Pops every complete message of a stream and turns it into events.
    /// A reset at `at` skipped messages of a stream: reported by `deliver`, after
    /// the messages the reset kept, within the budget (merged with earlier skips
    /// not reported yet, so a peer's resets queue at most one event per stream).
    /// The control stream has no messages held for the application: its skips are
    /// reported at once, while the budget is not spent, and otherwise only counted.
    fn note_skip(&mut self, peer: PeerId, stream: i64, at: u64, messages: u64, offsets: u64) {
        let s = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.streams.get_mut(&stream));
        match s {
            Some(s) if stream >= 0 => {
                let k = s.skipped.get_or_insert_with(PendingSkip::default);
                k.at = k.at.max(at);
                k.messages += messages;
                k.offsets += offsets;
            }
            _ if self.delivery.spent() => {}
            _ => {
                self.delivery.charge(0);
                self.events.push_back(Event::MessagesSkipped {
                    peer,
                    stream,
                    messages,
                    offsets,
                });
            }
        }
    }

    pub(super) fn deliver(&mut self, id: ConnectionId, peer: Option<PeerId>, stream: i64) {
        if stream == -1 {
            loop {
                let Some(message) = self
                    .connections
                    .get_mut(&id)
                    .and_then(|c| c.control_recv.pop_message())
                else {
                    break;
                };
                let command = message
                    .meta
                    .as_ref()
                    .is_some_and(|m| m.packet_type == pb::AtbusPacketType::Command as i32);
                if command && self.delivery.spent() {
                    // A command is an event for the application: it waits in the
                    // control stream's bounded window like messages in theirs.
                    if let Some(c) = self.connections.get_mut(&id) {
                        c.control_recv.unpop(message);
                    }
                    self.delivery.hold_control(id);
                    break;
                }
                self.on_control_message(id, message);
                if !self.is_open(id) {
                    break;
                }
            }
            return;
        }
        let Some(peer) = peer else { return };
        let max_message = self.config.max_message_size;
        let peer_limit = self.config.peer_receive_limit;
        let mut done = false;
        // Plain messages (no labels, no token) of one type, reported together.
        let mut run = MessageRun::new(self.config.batch_events);
        while let Some(p) = self.peers.get_mut(&peer) {
            let Some(s) = p.streams.get_mut(&stream) else {
                break;
            };
            if self.delivery.spent() {
                // The application's queue is full: the rest waits in the window.
                self.delivery.hold(peer, stream, id);
                break;
            }
            if let Some(k) = s.skipped {
                if s.recv.next_kept_offset().is_none_or(|o| o >= k.at) {
                    // What came before the skips was delivered: report them.
                    s.skipped = None;
                    self.delivery.charge(0);
                    // After the messages before the gap batched so far.
                    run.flush(&mut self.events, peer, stream);
                    self.events.push_back(Event::MessagesSkipped {
                        peer,
                        stream,
                        messages: k.messages,
                        offsets: k.offsets,
                    });
                    continue;
                }
            }
            let held = s.recv.footprint();
            let Some(message) = s.recv.pop_message() else {
                done = s.is_done();
                break;
            };
            let len = message.payload.len();
            let release = held.saturating_sub(s.recv.footprint()).min(s.counted);
            s.counted -= release;
            // Field by field: `s` borrows the peer's streams.
            p.recv_buffered -= release.min(p.recv_buffered);
            if p.recv_buffered <= peer_limit {
                p.headroom = None;
            }
            if len > max_message {
                // Assembled out of order within a window larger than the limit: a
                // peer breaking the limit; the message is dropped and counted.
                self.stats.oversized_messages += 1;
                continue;
            }
            let mut meta = message.meta.unwrap_or_default();
            let extra = meta.take_extra();
            if meta.fin {
                let end = message.offset + 1 + len as u64;
                if s.recv_finished || s.recv.finish_at(end).is_err() {
                    // A second finish marker, or one that is not at the end: a
                    // broken peer; ignored.
                    if let Some(c) = self.connections.get_mut(&id) {
                        c.stats.malformed += 1;
                    }
                    continue;
                }
                s.recv_finished = true;
                run.flush(&mut self.events, peer, stream);
                self.events.push_back(Event::StreamFinished {
                    peer,
                    stream,
                    reason: extra
                        .close_reason
                        .unwrap_or_else(|| CloseReason::new(CloseCode::Unknown, "")),
                });
            } else {
                self.stats.delivered_messages += 1;
                self.delivery.charge(len);
                let message = ReceivedMessage {
                    packet_type: meta.packet_type,
                    labels: extra.labels,
                    token: extra.token,
                    payload: message.payload,
                };
                run.push(&mut self.events, peer, stream, message);
            }
        }
        run.flush(&mut self.events, peer, stream);
        if done {
            self.retire_stream(peer, stream);
        }
    }

    /// Forgets a stream finished both ways, keeping a tombstone.
    pub(super) fn retire_stream(&mut self, peer: PeerId, stream: i64) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(s) = p.streams.remove(&stream) else {
            return;
        };
        p.release(s.counted, self.config.peer_receive_limit);
        if p.headroom == Some(stream) {
            p.headroom = None;
        }
        p.bury(stream, s.recv.acknowledge_offset());
        self.timers.cancel(TimerKey::Expire(peer, stream));
    }

    fn on_control_message(&mut self, id: ConnectionId, message: AssembledMessage<RecvMeta>) {
        let meta = message.meta.unwrap_or_default();
        if meta.packet_type == pb::AtbusPacketType::Handshake as i32 {
            self.on_handshake(id, meta, message.payload);
        } else if meta.packet_type == pb::AtbusPacketType::Command as i32 {
            let peer = self.connections.get(&id).and_then(|c| c.peer);
            let established = self
                .connections
                .get(&id)
                .is_some_and(|c| c.state == ConnectionState::Established);
            if let (Some(peer), true) = (peer, established) {
                if let Some(command) = handshake::decode_command(message.payload) {
                    if let Some(cid) = CommandId::from_wire(command.command_id) {
                        self.delivery.charge(command.payload.len());
                        self.events.push_back(Event::Command {
                            peer,
                            command: Command {
                                id: cid,
                                payload: command.payload,
                            },
                        });
                        return;
                    }
                }
            }
            self.count_malformed(id);
        } else {
            self.count_malformed(id);
        }
    }

    fn on_handshake(&mut self, id: ConnectionId, mut meta: RecvMeta, payload: Bytes) {
        let extra = meta.take_extra();
        let Some(data) = handshake::decode_handshake(&payload) else {
            self.count_malformed(id);
            return;
        };
        let Some(c) = self.connections.get(&id) else {
            return;
        };
        let (role, state) = (c.role, c.state);
        let kind = HandshakeKind::try_from(data.kind).unwrap_or(HandshakeKind::Unknown);
        if role == Role::Acceptor && kind == HandshakeKind::Hello {
            if let Some(c) = self.connections.get_mut(&id) {
                if c.hello_identity.is_none() {
                    c.hello_identity = Some((data.session_id, data.connection_nonce));
                    c.hello_association = (data.association_session, data.association_id);
                }
            }
        }
        let hello = Hello {
            node_name: data.node_name,
            session_id: data.session_id,
            protocol_version: data.protocol_version,
            token: extra.token,
            labels: extra.labels,
            options: data.options,
        };
        match (role, state, kind) {
            (Role::Acceptor, ConnectionState::Handshaking, HandshakeKind::Hello) => {
                if self.is_retired(&hello.node_name, hello.session_id) {
                    let reason = CloseReason::new(
                        CloseCode::PeerReset,
                        "this session of the node has ended (the node restarted)",
                    );
                    self.close(id, reason, false, true);
                    return;
                }
                if hello.protocol_version != atbus_proto::PROTOCOL_VERSION as i32 {
                    let reason = CloseReason::new(
                        CloseCode::Unauthorized,
                        format!(
                            "protocol version {} not supported (this node speaks {})",
                            hello.protocol_version,
                            atbus_proto::PROTOCOL_VERSION
                        ),
                    );
                    self.close(id, reason, false, true);
                    return;
                }
                match self.authenticator.authenticate(id, &hello) {
                    AuthDecision::Accept => self.complete_accept(id, hello),
                    AuthDecision::Reject(message) => self.close(
                        id,
                        CloseReason::new(CloseCode::Unauthorized, message),
                        false,
                        true,
                    ),
                    AuthDecision::Defer => {
                        if let Some(c) = self.connections.get_mut(&id) {
                            c.deferred_hello = Some(hello.clone());
                        }
                        self.events.push_back(Event::HelloReceived {
                            connection: id,
                            hello,
                        });
                    }
                }
            }
            (Role::Initiator, ConnectionState::Handshaking, HandshakeKind::Accept) => {
                let pack = self.config.pack_messages && handshake::offers_packed(&hello.options);
                if let Some(c) = self.connections.get_mut(&id) {
                    c.pack = pack;
                }
                self.complete_connect(id, hello);
            }
            _ => self.count_malformed(id),
        }
    }

    /// The acceptor takes the hello: binds (or creates, or restarts) the peer, answers
    /// ACCEPT and replays the early data.
    pub(super) fn complete_accept(&mut self, id: ConnectionId, hello: Hello) {
        if self.has_newer_session(&hello.node_name, hello.session_id) {
            // A hello of an older incarnation than one already connected (a
            // connection accepted late): stale.
            self.retire_session(hello.node_name.clone(), hello.session_id);
            let reason = CloseReason::new(
                CloseCode::PeerReset,
                "this session of the node has ended (a newer one is connected)",
            );
            self.close(id, reason, false, true);
            return;
        }
        let restarted = self.drop_restarted(&hello.node_name, hello.session_id);
        let (numbered_by, number) = self
            .connections
            .get(&id)
            .map_or((0, 0), |c| c.hello_association);
        // The hello names an association numbered by its sender (session 0), by
        // this endpoint (this endpoint's session), or none (number 0).
        let refuse = |this: &mut Self, why: &str| {
            let reason = CloseReason::new(CloseCode::PeerReset, why);
            this.close(id, reason, false, true);
        };
        let too_many = "too many peers: this node holds its maximum";
        let peer = if number == 0 {
            if !self.make_room_for_peer() {
                return refuse(self, too_many);
            }
            self.allocate_peer(None)
        } else if numbered_by == 0 {
            let key = (hello.node_name.clone(), hello.session_id, number);
            match self.associations.get(&key).copied() {
                // Another path of an association the node opened: it joins.
                Some(peer) => peer,
                None if !self.make_room_for_peer() => return refuse(self, too_many),
                None => self.allocate_peer(Some(key)),
            }
        } else {
            let key = (
                self.config.node_name.clone(),
                self.config.session_id,
                number,
            );
            let existing = self.associations.get(&key).copied().filter(|p| {
                self.peers
                    .get(p)
                    .and_then(|p| p.identity.as_ref())
                    .is_some_and(|(n, s)| *n == hello.node_name && *s == hello.session_id)
            });
            match existing {
                Some(peer) if numbered_by == self.config.session_id => peer,
                _ => {
                    // Not one this endpoint opened and established with this node
                    // (unknown, forgotten, still in its handshake, or another's).
                    refuse(
                        self,
                        "the association named in the hello is not established here with this node",
                    );
                    return;
                }
            }
        };
        self.set_identity(peer, &hello);
        self.bind(id, peer);
        let pack = self.config.pack_messages && handshake::offers_packed(&hello.options);
        if let Some(c) = self.connections.get_mut(&id) {
            c.pack = pack;
        }
        let payload = handshake::encode_handshake(
            HandshakeKind::Accept,
            &self.config.node_name,
            self.config.session_id,
            0,
            (0, 0),
            &handshake::handshake_options(pack),
        );
        let meta = self.hello_meta.clone();
        self.queue_control(id, payload, meta);
        let early = match self.connections.get_mut(&id) {
            Some(c) => {
                c.state = ConnectionState::Established;
                c.start_pmtud(self.now);
                self.early_total -= c.early_bytes;
                c.early_bytes = 0;
                std::mem::take(&mut c.early)
            }
            None => Vec::new(),
        };
        self.announce(id, peer, hello, restarted);
        for frame in early {
            let len = frame.encoded_len();
            self.on_frame(id, frame, len);
            if !self.is_open(id) {
                break;
            }
        }
        self.mark_peer_dirty(peer);
    }

    /// The handshake of `id` completed: stop its timer, tell the application.
    fn announce(&mut self, id: ConnectionId, peer: PeerId, hello: Hello, restarted: bool) {
        self.timers.cancel(TimerKey::Handshake(id));
        self.events.push_back(Event::PeerConnected {
            peer,
            connection: id,
            node_name: hello.node_name,
            session_id: hello.session_id,
            labels: hello.labels,
            restarted,
        });
    }

    /// The initiator got ACCEPT: the peer's identity is known.
    fn complete_connect(&mut self, id: ConnectionId, hello: Hello) {
        let Some(mut peer) = self.connections.get(&id).and_then(|c| c.peer) else {
            return;
        };
        if self.is_retired(&hello.node_name, hello.session_id)
            || self.has_newer_session(&hello.node_name, hello.session_id)
        {
            let reason = CloseReason::new(
                CloseCode::PeerReset,
                "the node answered with a session older than one already connected",
            );
            self.close(id, reason, false, true);
            return;
        }
        let known = self.peers.get(&peer).and_then(|p| p.identity.clone());
        let association = self.peers.get(&peer).map(|p| p.association.clone());
        let restarted = known.is_some_and(|(_, session)| session != hello.session_id);
        if restarted {
            // The peer restarted while we held its streams: they start afresh with
            // a new peer state, in the same association (the peer accepted this
            // connection under it). Nothing of the old streams may travel on.
            if let Some(p) = self.peers.get_mut(&peer) {
                p.connections.retain(|&c| c != id);
                self.maybe_lingering = true;
            }
            if let Some(c) = self.connections.get_mut(&id) {
                let control: Vec<_> = c
                    .in_flight
                    .drain()
                    .into_iter()
                    .filter(|r| r.stream == -1)
                    .collect();
                for range in control {
                    c.in_flight.on_sent(range);
                }
            }
        }
        // Every other state of this node from an older session is stale too.
        self.drop_restarted(&hello.node_name, hello.session_id);
        if restarted {
            peer = self.allocate_peer(association);
            self.bind(id, peer);
        }
        self.set_identity(peer, &hello);
        if let Some(c) = self.connections.get_mut(&id) {
            c.state = ConnectionState::Established;
            c.start_pmtud(self.now);
        }
        self.announce(id, peer, hello, restarted);
        self.mark_peer_dirty(peer);
    }

    fn on_ack(&mut self, id: ConnectionId, ack: pb::AcknowledgeData) {
        let Some(sa) = ack.acknowledge else {
            return;
        };
        let now = self.now;
        let stream = sa.stream_id;
        let (Ok(acknowledged), Ok(received_max)) = (
            u64::try_from(sa.acknowledge_offset),
            u64::try_from(sa.received_max_offset),
        ) else {
            self.count_malformed(id);
            return;
        };
        // Selective ranges: sorted, disjoint, above the cumulative point; anything
        // else ends the list.
        let max_ranges = self.config.max_ack_ranges;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut floor = acknowledged;
        for pair in sa.received_ranges.chunks_exact(2).take(max_ranges) {
            let (Ok(lo), Ok(hi)) = (u64::try_from(pair[0]), u64::try_from(pair[1])) else {
                break;
            };
            if lo < floor || hi <= lo {
                break;
            }
            ranges.push((lo, hi));
            floor = hi;
        }
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        let peer = c.peer;
        // The echo is the send time of the newest frame the peer got; it can't be in
        // the future.
        let echo = u64::try_from(ack.timepoint_microseconds)
            .ok()
            .map(Timestamp::from_micros)
            .filter(|&t| t > Timestamp::ZERO && t <= c.last_sent_timepoint);
        let mut rtt_sample = None;
        if let Some(echo) = echo {
            if echo > c.sampled_echo {
                c.sampled_echo = echo;
                let rtt = now.saturating_since(echo);
                c.rtt.on_sample(rtt);
                c.cc.on_rtt_sample(now, &c.rtt);
                rtt_sample = Some(rtt);
            }
            if echo > c.newest_delivered {
                c.newest_delivered = echo;
                c.rack_rtt = now.saturating_since(echo);
            }
        }
        // Settle the stream's send buffer.
        let progress;
        {
            let send = if stream == -1 {
                Some(&mut c.control_send)
            } else {
                peer.and_then(|p| self.peers.get_mut(&p))
                    .and_then(|p| p.streams.get_mut(&stream))
                    .map(|s| &mut s.send)
            };
            let Some(send) = send else {
                return;
            };
            let Some(outcome) = send.on_acknowledged(acknowledged) else {
                c.stats.malformed += 1;
                return;
            };
            let mut newly = outcome.newly_acknowledged;
            for &(lo, hi) in &ranges {
                newly += send.on_range_acknowledged(lo, hi);
            }
            progress = newly > 0;
            let reset = send.pending_reset();
            let settled = c
                .in_flight
                .on_stream_ack(stream, acknowledged, &ranges, echo, |o| reset != Some(o));
            c.stats.spurious_retransmits += settled.spurious;
            if !matches!(c.kind, ConnectionKind::Datagram { .. }) {
                // A reliable connection loses nothing: what the acknowledgement
                // leaves out of the frames it had processed, the peer dropped. Only
                // below the horizon of what it reports: a list of selective ranges
                // cut short (the highest offset received lies past its last range)
                // says nothing of what lies above it.
                let listed_end = ranges
                    .last()
                    .map_or(acknowledged, |r| r.1.max(acknowledged));
                let horizon = if received_max > listed_end {
                    listed_end
                } else {
                    u64::MAX
                };
                if let Some(echo) = echo {
                    for range in c.in_flight.take_unacknowledged(stream, echo, horizon) {
                        c.stats.resent_after_drop += 1;
                        send.on_frame_lost(range.start, range.end, range.reset);
                    }
                }
            }
            if settled.spurious > 0 {
                for _ in 0..settled.spurious {
                    c.cc.on_spurious_loss();
                }
                // RFC 8985 §6.2: one step per acknowledgement that shows spurious
                // retransmissions, back to 1 after some recoveries (detect_losses).
                c.reorder_factor = (c.reorder_factor + 1).min(MAX_REORDER_FACTOR);
                c.recoveries_since_reorder = 0;
            }
            for range in &settled.ranges {
                c.cc.on_acked(now, range.sent_at, range.bytes);
            }
            if let Some(pmtud) = c.pmtud.as_mut() {
                for (sent_at, size) in per_datagram(&settled.ranges) {
                    pmtud.on_packet_acked(sent_at, size);
                }
            }
            if progress || !settled.ranges.is_empty() {
                c.rto_backoff = 0;
            }
            // The stream's ranges carried by the peer's other connections are settled
            // too (multi-path): none of them is resent or kept in a window.
            if stream >= 0 && progress {
                let others: Vec<ConnectionId> = peer
                    .and_then(|p| self.peers.get(&p))
                    .map(|p| p.connections.iter().copied().filter(|&o| o != id).collect())
                    .unwrap_or_default();
                for other in others {
                    if let Some(o) = self.connections.get_mut(&other) {
                        let settled =
                            o.in_flight
                                .on_stream_ack(stream, acknowledged, &ranges, None, |r| {
                                    reset != Some(r)
                                });
                        for range in &settled.ranges {
                            o.cc.on_acked(now, range.sent_at, range.bytes);
                        }
                    }
                }
            }
        }
        if let Some(rtt) = rtt_sample {
            self.record(id, Sample::Rtt(rtt));
        }
        self.detect_losses(id);
        if let Some(peer) = peer {
            self.check_writable(peer, stream);
            // The acknowledged head may have uncovered a message with a deadline.
            if let Some(deadline) = self
                .peers
                .get(&peer)
                .and_then(|p| p.streams.get(&stream))
                .and_then(|s| s.send.next_deadline())
            {
                self.timers.set(TimerKey::Expire(peer, stream), deadline);
            }
            if let Some(done) = self
                .peers
                .get(&peer)
                .and_then(|p| p.streams.get(&stream))
                .map(Stream::is_done)
            {
                if done {
                    self.retire_stream(peer, stream);
                }
            }
        }
        self.dirty.insert(id);
    }

    pub(super) fn check_writable(&mut self, peer: PeerId, stream: i64) {
        if stream < 0 {
            return;
        }
        if let Some(s) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.streams.get_mut(&stream))
        {
            if let Some(len) = s.blocked {
                if s.send.has_room(len) {
                    s.blocked = None;
                    self.events.push_back(Event::Writable { peer, stream });
                }
            }
        }
    }

    pub(super) fn on_loss_timer(&mut self, id: ConnectionId) {
        let rto_fired = self.connections.get(&id).is_some_and(|c| {
            c.in_flight
                .loss_deadline(c.rto(), Timestamp::ZERO, Duration::ZERO, Duration::ZERO)
                .is_some_and(|at| at <= self.now)
        });
        self.detect_losses(id);
        if rto_fired {
            let now = self.now;
            if let Some(c) = self.connections.get_mut(&id) {
                if c.rto_backoff == 1 {
                    // The second timeout in a row with nothing acknowledged: the
                    // path is congested persistently; once per episode.
                    c.cc.on_persistent_congestion(now);
                }
                c.rto_backoff = c.rto_backoff.saturating_add(1).min(16);
                let probe = self.now + c.rto();
                self.timers.set(TimerKey::Keepalive(id), probe);
            }
            // Its peer's other paths take over what it held back (min-RTT).
            if let Some(peer) = self.connections.get(&id).and_then(|c| c.peer) {
                self.mark_peer_dirty(peer);
            }
        }
        self.update_timers(id);
    }

    /// Declares lost what the rules say is lost and gives it back to the streams.
    pub(super) fn detect_losses(&mut self, id: ConnectionId) {
        let now = self.now;
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if !c.is_lossy() {
            return;
        }
        // Before the first RTT sample only timeouts of the initial guess declare
        // losses (rtt.rs): they resend, but tell nothing of congestion and leave
        // the window alone (in RFC 9002 a probe timeout declares nothing lost).
        // Which rule declared each datagram: the timeout's deadlines as they were
        // before this detection.
        let timed_out_at = c.in_flight.timed_out_at();
        let lost = c.in_flight.detect_lost(
            now,
            c.rto(),
            c.newest_delivered,
            c.rack_rtt,
            c.reorder_window(),
        );
        if lost.is_empty() {
            return;
        }
        let rto = c.rto();
        let mut last_packet = None;
        let mut packets = 0;
        for range in &lost {
            if last_packet != Some(range.packet) {
                packets += 1;
                last_packet = Some(range.packet);
                if now >= InFlight::timeout_deadline(timed_out_at, range.sent_at, rto) {
                    c.stats.lost_by_timeout += 1;
                } else {
                    c.stats.lost_by_rack += 1;
                }
            }
            if c.rtt.samples() > 0 {
                c.cc.on_lost(now, range.sent_at, range.bytes);
            }
        }
        c.stats.lost_packets += packets;
        if c.in_flight.began_recovery() {
            c.recoveries_since_reorder = c.recoveries_since_reorder.saturating_add(1);
        }
        if c.recoveries_since_reorder >= REORDER_RESET_RECOVERIES {
            c.reorder_factor = 1;
            c.recoveries_since_reorder = 0;
        }
        let mut lost = lost;
        if let Some(pmtud) = c.pmtud.as_mut() {
            for (sent_at, size) in per_datagram(&lost) {
                pmtud.on_packet_lost(now, sent_at, size);
            }
            // A black hole lowers the MTU: what flew in larger datagrams goes back
            // too, to be resent cut to the new size.
            lost.extend(c.apply_mtu());
        }
        let peer = c.peer;
        self.record(id, Sample::Lost { packets });
        self.give_back(id, peer, lost);
        self.dirty.insert(id);
    }

    /// Returns ranges taken out of flight to their streams' send buffers, to be
    /// resent.
    pub(super) fn give_back(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        ranges: Vec<SentRange>,
    ) {
        for range in ranges {
            let send = if range.stream == -1 {
                self.connections.get_mut(&id).map(|c| &mut c.control_send)
            } else {
                peer.and_then(|p| self.peers.get_mut(&p))
                    .and_then(|p| p.streams.get_mut(&range.stream))
                    .map(|s| &mut s.send)
            };
            if let Some(send) = send {
                send.on_frame_lost(range.start, range.end, range.reset);
            }
        }
    }

    /// A pong answering a PMTUD probe (`received`: the size the peer got).
    fn on_probe_answer(&mut self, id: ConnectionId, timepoint: i64, received: i32) {
        let now = self.now;
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        let received = usize::try_from(received).unwrap_or(0);
        // The largest probe of that timepoint the answer covers (two probes of a
        // black-hole check leave at the same instant); the peer's figure is
        // never trusted beyond what was sent.
        let Some(index) = c
            .probes
            .iter()
            .enumerate()
            .filter(|(_, (t, size))| *t == timepoint && *size <= received)
            .max_by_key(|(_, (_, size))| *size)
            .map(|(i, _)| i)
        else {
            return;
        };
        let Some((_, size)) = c.probes.remove(index) else {
            return;
        };
        let Some(pmtud) = c.pmtud.as_mut() else {
            return;
        };
        pmtud.on_probe_acked(now, size);
        let cut = c.apply_mtu();
        let peer = c.peer;
        self.give_back(id, peer, cut);
        self.dirty.insert(id);
    }
}

/// A peer's receive accounting, borrowed for one stream.
struct RecvBudget<'a> {
    peer_buffered: &'a mut usize,
    headroom: &'a mut Option<i64>,
    stream_counted: &'a mut usize,
}

impl RecvBudget<'_> {
    /// Whether `cost` more bytes of `stream` may be held. Beyond `limit`, only data
    /// that extends the stream's in-order prefix (completing the message being
    /// assembled) is taken, up to one more maximum message, and only for one stream
    /// at a time (which then holds the headroom until the peer is back within its
    /// limit).
    fn admit(
        &mut self,
        stream: i64,
        cost: usize,
        in_order: bool,
        limit: usize,
        max_message: u64,
    ) -> bool {
        let total = self.peer_buffered.saturating_add(cost);
        if total <= limit {
            return true;
        }
        let holder_ok = self.headroom.is_none_or(|s| s == stream);
        let headroom = usize::try_from(max_message)
            .unwrap_or(usize::MAX)
            .saturating_mul(HEADROOM_FACTOR);
        if in_order && holder_ok && total <= limit.saturating_add(headroom) {
            *self.headroom = Some(stream);
            return true;
        }
        false
    }

    /// `released` bytes left the buffers (a reset discarded them).
    fn release(&mut self, released: usize, limit: usize) {
        let released = released.min(*self.stream_counted);
        *self.stream_counted -= released;
        *self.peer_buffered -= released.min(*self.peer_buffered);
        if *self.peer_buffered <= limit {
            *self.headroom = None;
        }
    }
}

/// The datagrams that carried `ranges`: send time and length (the whole
/// datagram's, or the bytes of its frames among `ranges` if not known), by packet
/// number.
fn per_datagram(ranges: &[SentRange]) -> Vec<(Timestamp, usize)> {
    let mut datagrams: BTreeMap<u64, (Timestamp, usize)> = BTreeMap::new();
    for r in ranges {
        let entry = datagrams.entry(r.packet).or_insert((r.sent_at, 0));
        entry.1 = if r.datagram > 0 {
            r.datagram
        } else {
            entry.1 + r.bytes
        };
    }
    datagrams.into_values().collect()
}
