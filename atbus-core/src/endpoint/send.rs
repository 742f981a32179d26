//! The packetizer: builds each datagram (or stream chunk) of a connection from its
//! pending pongs, ping, acknowledgements and stream data.
//!
//! A datagram holds, in order: pongs, a keepalive ping, data frames, then ACK frames
//! (at most one per stream: merged over everything received since the last
//! datagram). Data frames are cut from the streams' send buffers by this
//! connection's MTU: the control stream first, then the peer's streams round robin,
//! one frame per stream per pass, so small messages of many streams share a
//! datagram and one busy stream cannot starve the others. A frame holds as many
//! contiguous fragments as fit (small messages are coalesced), each a slice of the
//! application's `Bytes`.

use atbus_proto::{
    CachedHead, CachedMessageMeta, Content, DataFrame, FragmentSpec, encode_frame,
    encoded_frame_len, packed_record_len, pb, put_packed_record,
};
use bytes::{Bytes, BytesMut};

use super::{Endpoint, Sample, TimerKey};
use crate::config::{ConnectionKind, Scheduler};
use crate::connection::recovery::SentRange;
use crate::connection::{ConnectionState, MAX_RESENT_COPIES, Role};
use crate::event::{CloseReason, ConnectionId, PeerId, Transmit};
use crate::stream::{Assembler, Footprint, SendBuffer, SendMeta};
use crate::time::Timestamp;

const FLAG_FINISH_STREAM: i32 = pb::AtbusPacketFlagType::FinishStream as i32;
const FLAG_FINISH_CONNECTION: i32 = pb::AtbusPacketFlagType::FinishConnection as i32;
const FLAG_RESET_OFFSET: i32 = pb::AtbusPacketFlagType::ResetOffset as i32;

/// Fragments per data frame, and records per packed fragment, at most (well under
/// the decoder's limit on each).
const MAX_FRAGMENTS_PER_FRAME: usize = 512;

/// A fragment shorter than this is not started at the end of a nearly full
/// datagram when more of its message remains: it goes first in the next one.
const MIN_FRAGMENT: usize = 32;

fn timepoint(now: Timestamp) -> i64 {
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

struct OwnedFragment {
    meta: Option<CachedMessageMeta>,
    data: Bytes,
    has_more: bool,
    packed: bool,
}

impl OwnedFragment {
    fn spec(&self) -> FragmentSpec<'_> {
        FragmentSpec {
            meta: self.meta.as_ref(),
            data: &self.data,
            has_more: self.has_more,
            packed: self.packed,
        }
    }
}

/// Whether a piece may go into a packed fragment: a whole message, sent whole,
/// whose only metadata is its type (docs/protocol.md, "Packed fragments").
fn packable(p: &crate::stream::Pending<'_, SendMeta>) -> bool {
    p.starts_message()
        && p.limit == p.message.end()
        && !p.message.meta.fin
        && p.message.meta.cached.is_type_only()
}

/// Whole messages of one type being packed into one fragment, as records.
struct PackedGroup {
    packet_type: i32,
    meta: CachedMessageMeta,
    records: BytesMut,
    /// The first message, sent as a plain fragment if it stays alone (a packed
    /// fragment of one record costs its length varint and the flag more).
    first: Bytes,
    count: usize,
    /// Bytes the group occupies as a fragment now.
    encoded: usize,
}

impl PackedGroup {
    /// An empty group whose records take at most `room` bytes (what is left of
    /// the frame: allocated once).
    fn new(packet_type: i32, room: usize) -> Self {
        PackedGroup {
            packet_type,
            meta: CachedMessageMeta::of_type(packet_type),
            records: BytesMut::with_capacity(room),
            first: Bytes::new(),
            count: 0,
            encoded: 0,
        }
    }

    /// Bytes a group holding only `message` occupies.
    fn first_len(packet_type: i32, message: &[u8]) -> usize {
        FragmentSpec::packed_encoded_len(
            Some(&CachedMessageMeta::of_type(packet_type)),
            packed_record_len(message.len()),
        )
    }

    /// Bytes the group would occupy with `message` added.
    fn encoded_len_with(&self, message: &[u8]) -> usize {
        FragmentSpec::packed_encoded_len(
            Some(&self.meta),
            self.records.len() + packed_record_len(message.len()),
        )
    }

    /// Adds `message`; the group then occupies `encoded` bytes.
    fn push(&mut self, message: &Bytes, encoded: usize) {
        if self.count == 0 {
            self.first = message.clone();
        }
        put_packed_record(&mut self.records, message);
        self.count += 1;
        self.encoded = encoded;
    }

    /// Appends the group as one fragment; returns the bytes it occupies (never
    /// more than `encoded`).
    fn finish(self, fragments: &mut Vec<OwnedFragment>) -> usize {
        let owned = if self.count == 1 {
            OwnedFragment {
                meta: Some(self.meta),
                data: self.first,
                has_more: false,
                packed: false,
            }
        } else {
            OwnedFragment {
                meta: Some(self.meta),
                data: self.records.freeze(),
                has_more: false,
                packed: true,
            }
        };
        let len = owned.spec().encoded_len();
        fragments.push(owned);
        len
    }
}

/// The next piece to send: the next pending range, or the next piece of a copy.
fn next_piece(
    send: &SendBuffer<SendMeta>,
    cursor: Option<u64>,
    copy: Option<(u64, u64)>,
) -> Option<crate::stream::Pending<'_, SendMeta>> {
    match copy {
        Some((from, to)) => send.piece_at(cursor.unwrap_or(from), to),
        None => send.next_pending(),
    }
}

/// Appends at most one data frame of `stream_id` to `buf` without letting `buf`
/// exceed `limit` bytes; marks what it carries as sent and returns the range and the
/// number of fragments. `None` if nothing to send or no room.
///
/// With `pack` (the peer's handshake offered packed fragments), consecutive whole
/// messages whose only metadata is their type go into packed fragments, one per
/// run of one type (docs/protocol.md, "Packed fragments"); the offsets are those
/// of separate fragments, so a range may be packed differently when resent.
///
/// With `copy`, the frame is a redundant copy of `[copy.0, copy.1)`, data already
/// sent on another connection: it is cut from that range, changes nothing in the
/// send buffer, and `copy.0` advances past what it carries.
#[allow(clippy::too_many_arguments)] // one frame's every input; a struct would only rename them
pub(crate) fn write_data_frame(
    buf: &mut BytesMut,
    limit: usize,
    head: &CachedHead,
    stream_id: i64,
    send: &mut SendBuffer<SendMeta>,
    now: Timestamp,
    packet: u64,
    copy: Option<&mut (u64, u64)>,
    pack: bool,
) -> Option<(SentRange, usize)> {
    let space = limit.checked_sub(buf.len())?;
    let tp = timepoint(now);
    let copy_range = copy.as_deref().copied();
    let (start, retransmit) = match next_piece(send, None, copy_range) {
        Some(p) => (p.offset, p.retransmit),
        None => (u64::MAX, false),
    };
    // A reset that must travel alone (its offset has no data to carry it).
    if let Some(reset) = send
        .reset_to_send()
        .filter(|&o| o != start && copy_range.is_none())
    {
        let frame = DataFrame {
            head,
            stream_id,
            stream_offset: i64::try_from(reset).ok()?,
            flags: FLAG_RESET_OFFSET,
            padding_size: 0,
            timepoint_microseconds: tp,
            content: Content::Encoded(&[]),
        };
        let len = frame.encoded_len();
        if len > space {
            return None;
        }
        frame.encode(buf);
        send.mark_reset_sent();
        let range = SentRange {
            stream: stream_id,
            start: reset,
            end: reset,
            reset: true,
            sent_at: now,
            bytes: len,
            retransmit: false,
            packet,
            datagram: 0,
        };
        return Some((range, 0));
    }
    if start == u64::MAX {
        return None;
    }
    let stream_offset = i64::try_from(start).ok()?;
    let mut flags = if copy_range.is_none() && send.pending_reset() == Some(start) {
        FLAG_RESET_OFFSET
    } else {
        0
    };
    // Overhead grows with the content length; measuring it at the whole space bounds
    // it for any content that fits.
    let probe = DataFrame {
        head,
        stream_id,
        stream_offset,
        flags: flags | FLAG_FINISH_STREAM,
        padding_size: 0,
        timepoint_microseconds: tp,
        content: Content::Encoded(&[]),
    };
    let overhead = probe.encoded_len_with_content(space).saturating_sub(space);
    let content_budget = space.checked_sub(overhead)?;
    let mut fragments: Vec<OwnedFragment> = Vec::new();
    let mut used = 0usize;
    let mut cursor = start;
    let mut any_retransmit = retransmit;
    let mut fin = false;
    // Whole messages being packed into one fragment (`pack` only).
    let mut group: Option<PackedGroup> = None;
    while fragments.len() < MAX_FRAGMENTS_PER_FRAME {
        let Some(p) = next_piece(send, Some(cursor), copy_range) else {
            break;
        };
        if p.offset != cursor {
            break;
        }
        let message = p.message;
        // A message that does not fit whole waits for the next frame when this
        // one carries something already; otherwise (a message larger than a
        // frame) it goes the plain way below, which cuts it.
        let packed_fit = (pack && packable(&p)).then(|| {
            let packet_type = message.meta.cached.packet_type();
            let group_len = group.as_ref().map_or(0, |g| g.encoded);
            let remaining = content_budget.saturating_sub(used + group_len);
            // Records per packed fragment stay under the decoder's limit like
            // fragments per frame do.
            let joins = group
                .as_ref()
                .is_some_and(|g| g.packet_type == packet_type && g.count < MAX_FRAGMENTS_PER_FRAME);
            let grown = match &group {
                Some(g) if joins => g.encoded_len_with(&message.data) - group_len,
                _ => PackedGroup::first_len(packet_type, &message.data),
            };
            let encoded = if joins { group_len + grown } else { grown };
            (grown <= remaining).then_some((packet_type, joins, remaining, encoded))
        });
        if packed_fit == Some(None) && (group.is_some() || !fragments.is_empty()) {
            break;
        }
        if let Some(Some((packet_type, joins, remaining, encoded))) = packed_fit {
            if !joins {
                if let Some(g) = group.take() {
                    used += g.finish(&mut fragments);
                }
            }
            let end = message.end();
            group
                .get_or_insert_with(|| PackedGroup::new(packet_type, remaining))
                .push(&message.data, encoded);
            any_retransmit |= p.retransmit;
            if copy_range.is_none() {
                send.mark_sent(cursor, end);
            }
            cursor = end;
            continue;
        }
        if let Some(g) = group.take() {
            used += g.finish(&mut fragments);
        }
        let data_from = (p.offset - message.start) as usize;
        let data_rest = message.data.len().saturating_sub(data_from);
        // Data bytes this range may carry (a lost range may end inside the data).
        let range_units = (p.limit - p.offset) as usize;
        let data_avail = data_rest.min(range_units);
        let ends_message = p.limit == message.end();
        let remaining = content_budget.saturating_sub(used);
        let meta = p.starts_message().then_some(&message.meta.cached);
        let probe_len = data_avail.min(remaining);
        let probe = FragmentSpec {
            meta,
            data: &message.data[data_from..data_from + probe_len],
            has_more: true,
            packed: false,
        };
        let fragment_overhead = probe.overhead();
        if fragment_overhead >= remaining {
            break;
        }
        let take = data_avail.min(remaining - fragment_overhead);
        if take < data_avail && take < MIN_FRAGMENT && !(fragments.is_empty() && buf.is_empty()) {
            break;
        }
        let includes_end = take == data_avail && ends_message && data_avail == data_rest;
        let end = p.offset + take as u64 + u64::from(includes_end);
        if end == p.offset {
            break;
        }
        let (data, is_final) = p.cut(end);
        if is_final && message.meta.fin {
            fin = true;
        }
        any_retransmit |= p.retransmit;
        let owned = OwnedFragment {
            meta: meta.cloned(),
            data,
            has_more: !is_final,
            packed: false,
        };
        used += owned.spec().encoded_len();
        fragments.push(owned);
        if copy_range.is_none() {
            send.mark_sent(cursor, end);
        }
        cursor = end;
    }
    if let Some(g) = group.take() {
        g.finish(&mut fragments);
    }
    if fragments.is_empty() {
        return None;
    }
    if fin {
        flags |= FLAG_FINISH_STREAM;
    }
    let specs: Vec<FragmentSpec<'_>> = fragments.iter().map(OwnedFragment::spec).collect();
    let frame = DataFrame {
        head,
        stream_id,
        stream_offset,
        flags,
        padding_size: 0,
        timepoint_microseconds: tp,
        content: Content::Fragments(&specs),
    };
    let len = frame.encoded_len();
    debug_assert!(
        len <= space,
        "frame of {len} bytes in {space} bytes of space"
    );
    frame.encode(buf);
    if flags & FLAG_RESET_OFFSET != 0 {
        send.mark_reset_sent();
    }
    if let Some(copy) = copy {
        copy.0 = cursor;
    }
    let range = SentRange {
        stream: stream_id,
        start,
        end: cursor,
        reset: flags & FLAG_RESET_OFFSET != 0,
        sent_at: now,
        bytes: len,
        retransmit: any_retransmit,
        packet,
        datagram: 0,
    };
    Some((range, specs.len()))
}

/// The selective ranges an acknowledgement reports, sorted: those holding the
/// `recent` offsets first (newest first), then the lowest, at most `max` in all.
fn ack_ranges<M: Footprint>(
    asm: &Assembler<M>,
    recent: Option<&Vec<u64>>,
    max: usize,
) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(max);
    // Each range is looked up once (an offset inside one already found is
    // skipped): the walks cover disjoint ranges, so their cost is bounded by the
    // assembler's pieces, whatever the offsets.
    for &offset in recent.into_iter().flatten().rev() {
        if out.len() >= max {
            break;
        }
        if out.iter().any(|&(lo, hi)| lo <= offset && offset < hi) {
            continue;
        }
        if let Some(range) = asm.received_range_at(offset) {
            out.push(range);
        }
    }
    for range in asm.received_ranges(max) {
        if out.len() >= max {
            break;
        }
        if !out.contains(&range) {
            out.push(range);
        }
    }
    out.sort_unstable();
    out
}

/// An ACK frame for one stream.
fn ack_frame(
    stream: i64,
    ack: u64,
    max: u64,
    ranges: &[(u64, u64)],
    echo: i64,
) -> pb::FrameMessage {
    let wire = |o: u64| i64::try_from(o).unwrap_or(i64::MAX);
    pb::FrameMessage {
        head: None,
        body: Some(pb::frame_message::Body::Acknowledge(pb::AcknowledgeData {
            acknowledge: Some(pb::StreamAcknowledge {
                stream_id: stream,
                acknowledge_offset: wire(ack),
                received_max_offset: wire(max),
                received_ranges: ranges
                    .iter()
                    .flat_map(|&(lo, hi)| [wire(lo), wire(hi)])
                    .collect(),
            }),
            timepoint_microseconds: echo,
            forward_for: None,
        })),
    }
}

/// A FINISH_CONNECTION frame carrying `reason`.
pub(crate) fn finish_connection_frame(
    head: &CachedHead,
    reason: &CloseReason,
    now: Timestamp,
) -> Bytes {
    let meta = CachedMessageMeta::new(&pb::packet_content::FragmentType {
        close_reason: Some(reason.to_pb()),
        ..Default::default()
    });
    let fragments = [FragmentSpec {
        meta: Some(&meta),
        data: &[],
        has_more: false,
        packed: false,
    }];
    let frame = DataFrame {
        head,
        stream_id: -1,
        stream_offset: 0,
        flags: FLAG_FINISH_CONNECTION,
        padding_size: 0,
        timepoint_microseconds: timepoint(now),
        content: Content::Fragments(&fragments),
    };
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

/// The PMTUD probe connection `c` has to send at `now`, if any: a datagram
/// holding only a ping padded to the probe's size. Outside the congestion window
/// and never retransmitted: the state machine alone decides what a lost one
/// means. Probe losses (timeouts) are found here too.
fn pmtud_probe(c: &mut crate::connection::Connection, now: Timestamp) -> Option<Bytes> {
    if c.state != ConnectionState::Established {
        return None;
    }
    let timeout = (c.rtt.smoothed() * 3).max(c.rtt.retransmit_timeout(0));
    let pmtud = c.pmtud.as_mut()?;
    pmtud.set_probe_timeout(timeout);
    pmtud.poll_timeout(now);
    let probe = pmtud.next_probe(now)?;
    let tp = timepoint(now);
    let Some(frame) = crate::connection::pmtud::probe_ping(tp, probe.size) else {
        // One of the rare sizes no frame has: count it lost at once.
        pmtud.on_probe_lost(now, probe.size);
        return None;
    };
    let mut buf = BytesMut::with_capacity(probe.size);
    encode_frame(&frame, &mut buf);
    if c.probes.len() >= crate::connection::MAX_PROBES_REMEMBERED {
        c.probes.pop_front();
    }
    c.probes.push_back((tp, probe.size));
    c.stats.sent_pings += 1;
    Some(buf.freeze())
}

/// Bytes of the buffer transmits are encoded into: each transmit is split off its
/// front (`BytesMut::split`), so a run of datagrams costs one allocation per
/// chunk rather than one each. A chunk is freed once the transmits cut from it are
/// dropped (the driver drops each once written), so at most a chunk's worth more
/// than the transmits themselves stays allocated.
pub(crate) const TRANSMIT_CHUNK: usize = 64 * 1024;

/// Room for a transmit of up to `limit` bytes at the front of `buf`, an empty
/// buffer: the chunk's free tail, else the chunk reclaimed (when no transmit cut
/// from it is still alive) or a fresh one.
fn transmit_room(buf: &mut BytesMut, limit: usize) {
    debug_assert!(buf.is_empty());
    if buf.capacity() < limit {
        // `reserve` reuses the allocation when it is no longer shared.
        buf.reserve(TRANSMIT_CHUNK.max(limit));
    }
}

/// The transmit encoded in `buf` (which is left empty). A transmit small next to
/// the largest one the connection could send (an ACK alone, a few small messages on
/// a stream connection) is copied out rather than cut from the chunk: a queued
/// transmit must not pin a whole chunk, and on stream connections, whose limit is a
/// chunk, every transmit cut from the chunk would need a fresh one after it.
fn take_transmit(buf: &mut BytesMut, limit: usize) -> Bytes {
    if buf.len().saturating_mul(8) < limit {
        let data = Bytes::copy_from_slice(buf);
        buf.clear();
        data
    } else {
        buf.split().freeze()
    }
}

/// Copies of ranges a connection may hold for the redundant scheduler.
const MAX_COPIES: usize = 16 * 1024;

impl Endpoint {
    /// The redundant scheduler: what `from` just sent goes on the peer's other
    /// established connections too.
    fn share_copies(
        &mut self,
        from: ConnectionId,
        peer: Option<PeerId>,
        ranges: &[(i64, u64, u64)],
    ) {
        let Some(p) = peer.and_then(|p| self.peers.get(&p)) else {
            return;
        };
        for &o in &p.connections {
            if o == from {
                continue;
            }
            let Some(c) = self.connections.get_mut(&o) else {
                continue;
            };
            if c.state != ConnectionState::Established {
                continue;
            }
            c.copies.extend(ranges.iter().copied());
            while c.copies.len() > MAX_COPIES {
                c.copies.pop_front();
            }
            self.dirty.insert(o);
        }
    }

    /// Accounts for a probe datagram of connection `id` and hands it out.
    fn sent_probe(&mut self, id: ConnectionId, data: Bytes) -> Transmit {
        if let Some(c) = self.connections.get_mut(&id) {
            c.packets_sent += 1;
            c.last_sent = self.now;
            c.stats.sent_packets += 1;
            c.stats.sent_bytes += data.len() as u64;
        }
        let sample = Sample::Sent {
            bytes: data.len() as u64,
            fragments: 0,
        };
        self.record(id, sample);
        self.update_timers(id);
        Transmit {
            connection: id,
            data,
        }
    }

    /// Builds the next transmit of a connection, if it has anything to send.
    pub(super) fn build_transmit(&mut self, id: ConnectionId) -> Option<Transmit> {
        let now = self.now;
        let ack_delay = self.config.ack_delay;
        let early_limit = self.config.early_data_limit;
        // Which schedulers in use for this peer's streams leave data to another
        // connection now.
        let default_scheduler = self.config.scheduler;
        let (defer_min_rtt, defer_round_robin) = {
            let peer = self.connections.get(&id)?.peer;
            let overrides = peer.and_then(|p| self.peers.get(&p)).map(|p| &p.schedulers);
            let used = |s: Scheduler| {
                default_scheduler == s || overrides.is_some_and(|o| o.values().any(|&x| x == s))
            };
            (
                used(Scheduler::MinRtt) && self.defers_data(id, Scheduler::MinRtt),
                used(Scheduler::RoundRobin) && self.defers_data(id, Scheduler::RoundRobin),
            )
        };
        let defers = |s: Scheduler| match s {
            Scheduler::MinRtt => defer_min_rtt,
            Scheduler::RoundRobin => defer_round_robin,
            Scheduler::Redundant => false,
        };
        let c = self.connections.get_mut(&id)?;
        if c.state == ConnectionState::Closed {
            let reason = c.close_frame.take();
            let data = reason.map(|r| finish_connection_frame(&c.head, &r, now));
            self.connections.remove(&id);
            self.cancel_timers(id);
            return data.map(|data| Transmit {
                connection: id,
                data,
            });
        }
        if let Some(data) = pmtud_probe(c, now) {
            return Some(self.sent_probe(id, data));
        }
        let limit = c.mtu;
        let packet = c.packets_sent;
        let fragments_before = c.stats.sent_fragments;
        let mut buf = std::mem::take(&mut self.transmit_buf);
        transmit_room(&mut buf, limit);
        let tp = timepoint(now);
        let mut probes = false;
        while let Some(&(t, received)) = c.pongs.front() {
            let frame = pb::FrameMessage {
                head: None,
                body: Some(pb::frame_message::Body::Pong(pb::PingData {
                    timepoint_microseconds: t,
                    pmtud_received_size: received,
                    ..Default::default()
                })),
            };
            if buf.len() + encoded_frame_len(&frame) > limit {
                break;
            }
            encode_frame(&frame, &mut buf);
            c.pongs.pop_front();
        }
        if c.ping_due {
            let frame = pb::FrameMessage {
                head: None,
                body: Some(pb::frame_message::Body::Ping(pb::PingData {
                    timepoint_microseconds: tp,
                    ..Default::default()
                })),
            };
            encode_frame(&frame, &mut buf);
            c.ping_due = false;
            c.ping_outstanding = Some(now);
            c.stats.sent_pings += 1;
            probes = true;
        }

        // Acknowledgements, merged: one per stream with the latest state.
        let ack_due = ack_delay.is_zero() || c.ack_pending.values().any(|&t| now >= t + ack_delay);
        let mut acks = BytesMut::new();
        let mut acked_streams = Vec::new();
        let mut stale = Vec::new();
        let peer = c.peer;
        let accepting = c.role == Role::Acceptor && c.state == ConnectionState::Handshaking;
        let max_ack_ranges = self.config.max_ack_ranges;
        // On a datagram path, the ranges around what arrived on this path since its
        // last acknowledgement go first (see `Connection::ack_recent`). A reliable
        // path lists the lowest ranges only: its sender reads every gap below the
        // last range listed as a drop.
        let datagram = matches!(c.kind, ConnectionKind::Datagram { .. });
        for &stream in c.ack_pending.keys() {
            if accepting && stream != -1 {
                // Early frames are acknowledged once the hello is accepted.
                continue;
            }
            let recent = c.ack_recent.get(&stream).filter(|_| datagram);
            let state = if stream == -1 {
                Some((
                    c.control_recv.acknowledge_offset(),
                    c.control_recv.received_max_offset(),
                    ack_ranges(&c.control_recv, recent, max_ack_ranges),
                ))
            } else if let Some(&final_offset) = c.tombstone_acks.get(&stream) {
                Some((final_offset, final_offset, Vec::new()))
            } else {
                let p = peer.and_then(|p| self.peers.get(&p));
                match p.and_then(|p| p.streams.get(&stream)) {
                    Some(s) => Some((
                        s.recv.acknowledge_offset(),
                        s.recv.received_max_offset(),
                        ack_ranges(&s.recv, recent, max_ack_ranges),
                    )),
                    // Retired after the data arrived (its finish marker among it):
                    // the tombstone still answers.
                    None => p
                        .and_then(|p| p.tombstones.get(&stream))
                        .map(|&final_offset| (final_offset, final_offset, Vec::new()))
                        .or_else(|| {
                            // Dropped unopened: nothing held.
                            c.refused_acks.contains(&stream).then(|| (0, 0, Vec::new()))
                        }),
                }
            };
            let Some((ack, max, ranges)) = state else {
                stale.push(stream);
                continue;
            };
            let mut frame = ack_frame(stream, ack, max, &ranges, c.echo);
            let mut len = encoded_frame_len(&frame);
            // On a very small MTU, report fewer selective ranges rather than none.
            let mut keep = ranges.len();
            while len > limit && keep > 0 {
                keep -= 1;
                frame = ack_frame(stream, ack, max, &ranges[..keep], c.echo);
                len = encoded_frame_len(&frame);
            }
            if buf.len() + acks.len() + len > limit {
                break;
            }
            encode_frame(&frame, &mut acks);
            acked_streams.push(stream);
        }

        // Data, within the congestion window, or one datagram past it after a
        // retransmission timeout (see `InFlight::probe_due`).
        let data_limit = limit - acks.len();
        let window = if c.in_flight.probe_due() {
            c.cc.window().max(c.in_flight.bytes() + limit)
        } else {
            c.cc.window()
        };
        let mut wrote_data = false;
        let range_now = now;
        let mut record = |c: &mut crate::connection::Connection,
                          (range, fragments): (SentRange, usize)| {
            c.stats.sent_frames += 1;
            c.stats.sent_fragments += fragments as u64;
            if range.retransmit {
                c.stats.retransmits += 1;
            }
            let bytes = range.bytes;
            c.in_flight.on_sent(range);
            let in_flight = c.in_flight.bytes();
            c.cc.on_sent(range_now, bytes, in_flight);
            wrote_data = true;
        };
        while c.in_flight.bytes() < window {
            let at = c.frame_time(now);
            match write_data_frame(
                &mut buf,
                data_limit,
                &c.head,
                -1,
                &mut c.control_send,
                at,
                packet,
                None,
                false,
            ) {
                Some(sent) => record(c, sent),
                None => break,
            }
        }
        // Early data goes only to a peer never heard from: on another connection
        // to a known peer (a new path, a reconnection) the accept must come
        // first, since it tells whether the peer restarted and its streams start
        // afresh.
        let first_contact = peer
            .and_then(|p| self.peers.get(&p))
            .is_some_and(|p| p.identity.is_none());
        // Pacing: data waits for the pacer (acknowledgements and pongs do not), and
        // for the endpoint's rate cap if it has one.
        let pace = c.pacing_rate();
        let cap = self.config.rate_limit.filter(|&rate| rate > 0);
        let paced_out = match pace {
            Some(rate) => c.pacer.next_send_time(now, c.mtu, rate),
            None => None,
        }
        .max(cap.and_then(|cap| self.rate_cap.next_send_time(now, c.mtu, cap)));
        let mut fresh: Vec<(i64, u64, u64)> = Vec::new();
        let mut resent: Vec<(i64, u64, u64)> = Vec::new();
        let mut wrote_round_robin = false;
        let may_send_data = paced_out.is_none()
            && (c.state == ConnectionState::Established
                || (c.role == Role::Initiator
                    && first_contact
                    && c.in_flight.bytes() < early_limit));
        if let Some(at) = paced_out {
            self.timers.set(TimerKey::Pace(id), at);
        }
        if let (true, Some(p)) = (may_send_data, peer.and_then(|p| self.peers.get_mut(&p))) {
            let cursor = p.cursor;
            let mut deferred = false;
            let order: Vec<(i64, Scheduler)> = p
                .streams
                .range(cursor..)
                .chain(p.streams.range(..cursor))
                .filter(|(_, s)| s.send.has_pending())
                .map(|(&sid, _)| (sid, p.scheduler(sid, default_scheduler)))
                .filter(|&(_, scheduler)| {
                    let defer = defers(scheduler);
                    deferred |= defer;
                    !defer
                })
                .collect();
            if deferred {
                self.deferred.insert(id);
            }
            // Copies of what the peer's other connections sent (redundant).
            while c.in_flight.bytes() < window && buf.len() < data_limit {
                let Some((sid, mut range)) = c.copies.pop_front().map(|(s, a, b)| (s, (a, b)))
                else {
                    break;
                };
                let Some(s) = p.streams.get_mut(&sid) else {
                    continue;
                };
                if s.send.piece_at(range.0, range.1).is_none() {
                    // Acknowledged meanwhile (or gone).
                    continue;
                }
                let at = c.frame_time(now);
                match write_data_frame(
                    &mut buf,
                    data_limit,
                    &c.head,
                    sid,
                    &mut s.send,
                    at,
                    packet,
                    Some(&mut range),
                    c.pack,
                ) {
                    Some((sent, fragments)) => {
                        // A copy is not a retransmission declared lost here: an
                        // acknowledgement of the other copy does not make it
                        // spurious.
                        let sent = SentRange {
                            retransmit: false,
                            ..sent
                        };
                        record(c, (sent, fragments));
                        if range.0 < range.1 {
                            c.copies.push_front((sid, range.0, range.1));
                        }
                    }
                    None => {
                        c.copies.push_front((sid, range.0, range.1));
                        break;
                    }
                }
            }
            let mut progress = true;
            while progress && c.in_flight.bytes() < window && buf.len() < data_limit {
                progress = false;
                for &(sid, scheduler) in &order {
                    if c.in_flight.bytes() >= window {
                        break;
                    }
                    let Some(s) = p.streams.get_mut(&sid) else {
                        continue;
                    };
                    let at = c.frame_time(now);
                    if let Some(sent) = write_data_frame(
                        &mut buf,
                        data_limit,
                        &c.head,
                        sid,
                        &mut s.send,
                        at,
                        packet,
                        None,
                        c.pack,
                    ) {
                        if sent.0.end > sent.0.start && scheduler == Scheduler::Redundant {
                            fresh.push((sid, sent.0.start, sent.0.end));
                        }
                        if sent.0.end > sent.0.start && sent.0.retransmit {
                            resent.push((sid, sent.0.start, sent.0.end));
                        }
                        record(c, sent);
                        wrote_round_robin |= scheduler == Scheduler::RoundRobin;
                        progress = true;
                        p.cursor = sid.saturating_add(1);
                    }
                }
            }
            // Only once nothing else waits (all the lost ranges are resent, no new
            // data held back): a copy never delays other data.
            if !c.resent.is_empty() || !resent.is_empty() {
                c.resent.append(&mut resent);
                let waiting = order
                    .iter()
                    .any(|&(sid, _)| p.streams.get(&sid).is_some_and(|s| s.send.has_pending()));
                if c.resent.len() > MAX_RESENT_COPIES {
                    c.resent.clear();
                } else if !waiting {
                    resent = std::mem::take(&mut c.resent);
                }
            }
        }

        // A retransmission leaves twice, the copy in the next datagram, when
        // nothing else waits and the window has room for it (application-limited:
        // a congested window keeps its room for new data): a retransmission lost
        // too costs another round trip, or a timeout when nothing newer follows,
        // and that chain is the latency tail of a lossy path. Not after a timeout
        // while newer frames are in flight (`InFlight::last_timeout_before_newer`):
        // on a short path the timeout (1.2 × RTT) fires before the next message's
        // acknowledgement whenever one acknowledgement is lost, and copying those
        // retransmissions of data that had arrived cost 5 % of the payload at 5 %
        // loss (docs/comparison.md).
        let copy_resent = !resent.is_empty()
            && c.in_flight.last_lost_datagrams() == 1
            && !c.in_flight.last_timeout_before_newer()
            && c.in_flight.bytes() + c.mtu <= c.cc.window();
        if copy_resent {
            c.stats.retransmits += resent.len() as u64;
            c.copies.extend(resent);
        }
        for stream in &stale {
            c.ack_pending.remove(stream);
            c.ack_recent.remove(stream);
            c.refused_acks.remove(stream);
        }
        if wrote_data {
            c.in_flight.probe_sent();
        }
        let send_acks = !acks.is_empty() && (ack_due || wrote_data || probes || !buf.is_empty());
        if send_acks {
            for stream in &acked_streams {
                c.ack_pending.remove(stream);
                c.ack_recent.remove(stream);
                c.tombstone_acks.remove(stream);
                c.refused_acks.remove(stream);
                c.stats.sent_acks += 1;
            }
            buf.extend_from_slice(&acks);
        }
        if buf.is_empty() {
            self.transmit_buf = buf;
            if c.pmtud.is_some() {
                // Polling PMTUD may have moved its deadline without a probe.
                self.update_timers(id);
            }
            return None;
        }
        if wrote_data || probes {
            c.last_sent_timepoint = now.max(c.stamp);
        }
        if !fresh.is_empty() {
            self.share_copies(id, peer, &fresh);
        }
        if copy_resent {
            self.dirty.insert(id);
        }
        let data = take_transmit(&mut buf, limit);
        self.transmit_buf = buf;
        let c = self.connections.get_mut(&id)?;
        if wrote_data {
            if let Some(rate) = pace {
                c.pacer.on_sent(now, data.len(), rate);
            }
            if let Some(cap) = cap {
                self.rate_cap.on_sent(now, data.len(), cap);
            }
            // The next connection's turn (round robin), once this one has sent
            // its weight's worth of round-robin data in its turn.
            let weight = c.weight;
            if let Some(p) = peer
                .filter(|_| wrote_round_robin)
                .and_then(|p| self.peers.get_mut(&p))
            {
                if let Some(i) = p.connections.iter().position(|&x| x == id) {
                    let its_turn = p.turn % p.connections.len() == i;
                    p.turn_sent = if its_turn { p.turn_sent + 1 } else { 1 };
                    if p.turn_sent >= weight {
                        p.turn = i + 1;
                        p.turn_sent = 0;
                    } else {
                        p.turn = i;
                    }
                    // A connection that stood aside for this one's turn takes its
                    // own now.
                    let next = p.connections[p.turn % p.connections.len()];
                    if self.deferred.remove(&next) {
                        self.dirty.insert(next);
                    }
                }
            }
        }
        c.in_flight.set_datagram_len(packet, data.len());
        c.packets_sent += 1;
        c.last_sent = now;
        c.stats.sent_packets += 1;
        c.stats.sent_bytes += data.len() as u64;
        let sample = Sample::Sent {
            bytes: data.len() as u64,
            fragments: c.stats.sent_fragments - fragments_before,
        };
        self.record(id, sample);
        self.update_timers(id);
        Some(Transmit {
            connection: id,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_share_a_chunk_and_get_room_when_it_is_spent() {
        let mut buf = BytesMut::new();
        transmit_room(&mut buf, 1452);
        assert!(buf.capacity() >= TRANSMIT_CHUNK);
        buf.extend_from_slice(&[1u8; 1452]);
        let first = buf.split().freeze();
        transmit_room(&mut buf, 1452);
        buf.extend_from_slice(&[2u8; 100]);
        let second = buf.split().freeze();
        // Cut from one allocation, one after the other, each with its own bytes.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        assert!(first.iter().all(|&b| b == 1) && first.len() == 1452);
        assert!(second.iter().all(|&b| b == 2) && second.len() == 100);
        // Spend the chunk while the transmits are alive: room comes anyway, and
        // they keep their bytes.
        for _ in 0..2 * TRANSMIT_CHUNK / 1452 {
            transmit_room(&mut buf, 1452);
            assert!(buf.capacity() >= 1452);
            buf.extend_from_slice(&[3u8; 1452]);
            drop(buf.split());
        }
        assert!(first.iter().all(|&b| b == 1));
        assert!(second.iter().all(|&b| b == 2));
        // (From review) a small transmit is copied out: it pins no chunk, and the
        // chunk stays whole for the next one.
        let mut buf = BytesMut::new();
        transmit_room(&mut buf, TRANSMIT_CHUNK);
        let chunk = buf.as_ptr();
        buf.extend_from_slice(&[4u8; 60]);
        let ack = take_transmit(&mut buf, TRANSMIT_CHUNK);
        assert_eq!(&ack[..], &[4u8; 60]);
        assert!(buf.is_empty());
        transmit_room(&mut buf, TRANSMIT_CHUNK);
        assert_eq!(buf.as_ptr(), chunk, "the chunk is reused, not replaced");
        buf.extend_from_slice(&[5u8; 1452]);
        let datagram = take_transmit(&mut buf, 1452);
        assert_eq!(
            datagram.as_ptr(),
            chunk,
            "a full-size transmit is cut, not copied"
        );
        drop(buf);
        assert!(ack.iter().all(|&b| b == 4) && datagram.iter().all(|&b| b == 5));
        // A transmit larger than a chunk gets room too.
        let mut buf = BytesMut::new();
        transmit_room(&mut buf, 3 * TRANSMIT_CHUNK);
        assert!(buf.capacity() >= 3 * TRANSMIT_CHUNK);
    }
}
