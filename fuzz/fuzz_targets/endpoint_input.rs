//! One `atbus_core::Endpoint` driven by a fuzz-chosen sequence of operations: the
//! fuzzer plays the remote nodes (it sends hellos, data, ACKs, pings and raw bytes
//! on an accepted datagram connection, an accepted stream connection and optionally
//! an initiator connection) and the local application (send, finish_stream,
//! send_command, close_connection, forget_peer), and lets time pass.
//!
//! After every operation the outputs are drained until `Output::Timeout`, and the
//! target checks what the core promises whatever a peer sends:
//! - the drain ends (at most `MAX_OUTPUTS` outputs), and handling a timeout at the
//!   instant it names does not leave a deadline at or before that instant for ever;
//! - every transmit is for a known connection, fits its connection (datagram MTU,
//!   `STREAM_TRANSMIT_SIZE`) and decodes as well-formed frames;
//! - received data held for a peer (`PeerInfo::receive_buffered`) stays within
//!   `peer_receive_limit + max_message_size`; what the application queued and is not
//!   yet acknowledged never exceeds what it queued; early data (the rest of
//!   `buffered_bytes()`) stays within `early_data_total`;
//! - no delivered message exceeds `max_message_size`;
//! - with the determinism bit set, a second run of the same input gives the same
//!   outputs.
//!
//! Input format (read front to back; bytes past the end read as 0). The format is
//! hand-written rather than `#[derive(Arbitrary)]` so that seeds can be written as
//! documented bytes.
//!
//! ```text
//! setup: u8   bit0 also connect() (initiator datagram connection)
//!             bit1 ack_delay 5 ms (else 0)   bit2 check determinism (run twice)
//!             bit3 TokenAuthenticator (token "t0k3n") instead of AcceptAll
//! then operations until the input ends; each is an opcode byte (taken mod 11):
//! 0 handshake  conn u8, kind u8, identity u8, nonce u8
//!              kind: bits0-1 0|1 HELLO, 2 ACCEPT, 3 REJECT; 0x10 wrong protocol
//!              version; 0x20 labels + token "t0k3n"; 0x40 no RESET_OFFSET;
//!              0x80 at offset 0 instead of the next control offset
//!              identity: bits0-1 node name, bits2-3 session id - 1
//! 1 frames     conn u8, count u8 (1 + count % 4), count x frame, mangle u8, split u8
//!              mangle bit7: flip the bits of byte (mangle & 0x7f) % len
//!              split: stream connections get the bytes in two reads, cut at
//!              split * len / 256
//! 2 raw        conn u8, len u16 (% 2048), len bytes of the input
//! 3 advance    amount u8, scale u8: now += amount x [1 us, 100 us, 10 ms, 1 s][scale % 4],
//!              then handle_timeout(now)
//! 4 deadline   now = next deadline (if any), then handle_timeout(now)
//! 5 send       peer u8, stream u8, len u16, type u8, deadline u8
//!              stream: low 4 bits; bit7 means -1 (reserved)
//!              len % 36_000 (above max_message_size sometimes)
//!              type: 0 DATA, 1 user type 100, 2 reserved type 5, 3 labels + token
//!              deadline: 0 none, else now + deadline ms
//! 6 finish     peer u8, stream u8, code u8
//! 7 command    peer u8, id u8 (1, 2, 100 + id, or reserved 0), len u16 (% 34_000)
//! 8 close      conn u8, code u8
//! 9 forget     peer u8
//! 10 burst     conn u8, count u8: `count % 32 + 1` in-order data packets of 1000
//!              bytes on stream 0 (fills receive limits fast)
//! conn: u8 % (connections + 1), the last one unknown;  peer: u8 % (peers + 1), the
//! last one unknown.
//!
//! frame: kind u8 (% 4: 0 packet, 1 ack, 2 ping, 3 pong; bit2: with a head), then
//!   packet: stream i8, offset (mode u8 % 4: 0 next, 1 next + u16 gap, 2 next - u16,
//!           3 raw i64), flags u8 (& 0x0f), timepoint u8 (0 now, 1 zero, else
//!           now - n ms), fragments u8 (% 4), each fragment:
//!           kind u8 (bit0 HAS_MORE; bits1-2: 0 data, 1 type 100, 2 COMMAND,
//!           3 HANDSHAKE; bit3 labels; bit4 token; bit5 close reason), len u16 (% 40_000),
//!           fill u8
//!   ack:    stream i8, acknowledge (mode u8 % 4: 0 all sent, 1 sent x u8 / 255,
//!           2 u32, 3 raw i64), received_max gap u16, ranges u8 (% 4) x (gap u16,
//!           len u16), timepoint u8 (0 newest sent, 1 zero, 2 now, 3 raw i64)
//!   ping:   timepoint u8 (0 now, else raw i64)
//!   pong:   timepoint u8 (0 the endpoint's last ping, else raw i64)
//! ```
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use atbus_core::config::STREAM_TRANSMIT_SIZE;
use atbus_core::{
    CloseCode, CloseReason, CommandId, ConnectionId, ConnectionKind, Endpoint, EndpointConfig,
    Event, Output, PeerId, SendOptions, Timestamp, TokenAuthenticator, Transmit,
};
use atbus_proto::pb::{self, frame_message::Body, packet_content::FragmentType};
use atbus_proto::{DecodeLimits, Frames, StreamDecoder, decode_content, encode_frame};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const MTU: usize = 1200;
const PEER_RECEIVE_LIMIT: usize = 64 * 1024;
const MAX_MESSAGE_SIZE: usize = 32 * 1024;
const STREAM_WINDOW: u64 = 64 * 1024;
const EARLY_DATA_LIMIT: usize = 8 * 1024;
const EARLY_DATA_TOTAL: usize = 16 * 1024;
/// An endless output stream is a bug; a real drain is far below this.
const MAX_OUTPUTS: usize = 100_000;
/// Rounds of `handle_timeout(at)` at a deadline that stays due before calling it a
/// busy loop.
const MAX_DUE_ROUNDS: usize = 16;
const TOKEN: &[u8] = b"t0k3n";
const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "fuzz-node"];
const OPS: u8 = 11;

fuzz_target!(|input: &[u8]| {
    let setup = input.first().copied().unwrap_or(0);
    let first = run(input);
    if setup & 4 != 0 {
        let second = run(input);
        assert!(
            first == second,
            "the same inputs gave different outputs (first difference at output {})",
            first
                .iter()
                .zip(&second)
                .take_while(|(a, b)| a == b)
                .count()
        );
    }
});

/// Reads the input front to back; past the end every read is 0.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn i64(&mut self) -> i64 {
        (u64::from(self.u32()) | u64::from(self.u32()) << 32) as i64
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }
}

/// What the run produced, compared between two runs of the same input.
#[derive(Debug, PartialEq)]
enum Record {
    Transmit(Transmit),
    Event(Event),
    Timeout(Timestamp),
}

struct Harness {
    endpoint: Endpoint,
    now: Timestamp,
    /// Every connection the endpoint gave out, in creation order, with its kind.
    connections: Vec<(ConnectionId, ConnectionKind)>,
    /// Every peer the endpoint named, in the order it named them.
    peers: Vec<PeerId>,
    /// Payload bytes the application queued per peer (an upper bound of what the
    /// endpoint may hold for sending to it).
    queued: BTreeMap<PeerId, usize>,
    /// The fuzzer's own send state as the remote side: next offset per
    /// (connection, stream).
    next_offset: BTreeMap<(ConnectionId, i64), u64>,
    /// What the endpoint sent: highest offset end per (connection, stream).
    sent_end: BTreeMap<(ConnectionId, i64), u64>,
    /// Newest data / ping timepoint the endpoint sent per connection.
    newest_timepoint: BTreeMap<ConnectionId, i64>,
    last_ping: BTreeMap<ConnectionId, i64>,
    /// Decoders of the endpoint's output on stream connections.
    decoders: BTreeMap<ConnectionId, StreamDecoder>,
    records: Vec<Record>,
}

fn config() -> EndpointConfig {
    let mut config = EndpointConfig::new("fuzz-node", 7);
    config.peer_receive_limit = PEER_RECEIVE_LIMIT;
    config.max_message_size = MAX_MESSAGE_SIZE;
    config.stream_send_window = STREAM_WINDOW;
    config.stream_receive_window = STREAM_WINDOW;
    config.early_data_limit = EARLY_DATA_LIMIT;
    config.early_data_total = EARLY_DATA_TOTAL;
    config.max_streams_per_peer = 8;
    // Path MTU discovery on: pongs carrying `pmtud_received_size` reach it.
    config.pmtud = Some(atbus_core::connection::pmtud::PmtudConfig::default());
    config
}

fn run(input: &[u8]) -> Vec<Record> {
    let mut r = Reader { data: input };
    let setup = r.u8();
    let mut config = config();
    if setup & 2 != 0 {
        config.ack_delay = Duration::from_millis(5);
    }
    let mut endpoint = Endpoint::new(config);
    if setup & 8 != 0 {
        endpoint.set_authenticator(Box::new(TokenAuthenticator::new([Bytes::from_static(
            TOKEN,
        )])));
    }
    let now = Timestamp::from_micros(1_000_000);
    let mut h = Harness {
        endpoint,
        now,
        connections: Vec::new(),
        peers: Vec::new(),
        queued: BTreeMap::new(),
        next_offset: BTreeMap::new(),
        sent_end: BTreeMap::new(),
        newest_timepoint: BTreeMap::new(),
        last_ping: BTreeMap::new(),
        decoders: BTreeMap::new(),
        records: Vec::new(),
    };
    let datagram = ConnectionKind::Datagram { mtu: MTU };
    let id = h.endpoint.accept(now, datagram).expect("MTU is valid");
    h.connections.push((id, datagram));
    let id = h
        .endpoint
        .accept(now, ConnectionKind::Stream)
        .expect("stream kind");
    h.connections.push((id, ConnectionKind::Stream));
    h.decoders
        .insert(id, StreamDecoder::new(DecodeLimits::default()));
    if setup & 1 != 0 {
        let (peer, id) = h.endpoint.connect(now, datagram).expect("MTU is valid");
        h.connections.push((id, datagram));
        h.peers.push(peer);
    }
    h.drain();

    while !r.is_empty() {
        match r.u8() % OPS {
            0 => h.op_handshake(&mut r),
            1 => h.op_frames(&mut r),
            2 => {
                let conn = h.pick_connection(r.u8());
                let len = usize::from(r.u16() % 2048);
                let data = Bytes::copy_from_slice(r.bytes(len));
                h.deliver(conn, vec![data]);
            }
            3 => {
                let amount = u64::from(r.u8());
                let unit = [1, 100, 10_000, 1_000_000][usize::from(r.u8() % 4)];
                h.now += Duration::from_micros(amount * unit);
                h.timeout();
            }
            4 => {
                let at = h.endpoint.next_timeout();
                if at != Timestamp::NEVER {
                    h.now = h.now.max(at);
                }
                h.timeout();
            }
            5 => h.op_send(&mut r),
            6 => {
                let peer = h.pick_peer(r.u8());
                let stream = stream_choice(r.u8());
                let reason = close_reason(r.u8());
                let _ = h.endpoint.finish_stream(h.now, peer, stream, reason);
            }
            7 => {
                let peer = h.pick_peer(r.u8());
                let id = match r.u8() {
                    0 => CommandId::User(0),
                    1 => CommandId::Stop,
                    2 => CommandId::Reload,
                    n => CommandId::User(100 + i32::from(n)),
                };
                let len = usize::from(r.u16() % 34_000);
                let _ = h
                    .endpoint
                    .send_command(h.now, peer, id, Bytes::from(vec![0xc0; len]));
            }
            8 => {
                let conn = h.pick_connection(r.u8());
                let reason = close_reason(r.u8());
                let _ = h.endpoint.close_connection(h.now, conn, reason);
            }
            9 => {
                let peer = h.pick_peer(r.u8());
                let _ = h.endpoint.forget_peer(h.now, peer);
            }
            _ => h.op_burst(&mut r),
        }
        h.drain();
    }
    h.records
}

fn stream_choice(b: u8) -> i64 {
    if b & 0x80 != 0 {
        -1
    } else {
        i64::from(b & 0x0f)
    }
}

fn close_reason(b: u8) -> CloseReason {
    let code = match b % 5 {
        0 => CloseCode::Unknown,
        1 => CloseCode::Shutdown,
        2 => CloseCode::PeerReset,
        3 => CloseCode::Unauthorized,
        _ => CloseCode::RouterNotFound,
    };
    CloseReason::new(code, if b & 0x80 != 0 { "fuzz" } else { "" })
}

/// The wire form of a close reason (the core's conversion is crate-private).
fn close_reason_pb(b: u8) -> pb::CloseReasonData {
    let code = match b % 5 {
        0 => pb::AtbusCloseReason::Unknown,
        1 => pb::AtbusCloseReason::Shutdown,
        2 => pb::AtbusCloseReason::PeerReset,
        3 => pb::AtbusCloseReason::Unauthorized,
        _ => pb::AtbusCloseReason::RouterNotFound,
    };
    pb::CloseReasonData {
        code: code as i32,
        message: if b & 0x80 != 0 {
            "fuzz".into()
        } else {
            String::new()
        },
    }
}

fn labels() -> BTreeMap<String, String> {
    [("zone".to_string(), "b".to_string())]
        .into_iter()
        .collect()
}

/// Offset units a fragment occupies (`DESIGN.md`, "Stream offsets").
fn span(fragment: &FragmentType) -> u64 {
    fragment.data.len() as u64 + u64::from(fragment.fragment_flag & 1 == 0)
}

fn packet_frame(
    stream_id: i64,
    offset: i64,
    flags: i32,
    timepoint: i64,
    content: &pb::PacketContent,
) -> pb::FrameMessage {
    pb::FrameMessage {
        head: None,
        body: Some(Body::Packet(pb::PacketData {
            stream_id,
            stream_offset: offset,
            content: content.encode_to_vec().into(),
            flags,
            padding_size: 0,
            timepoint_microseconds: timepoint,
        })),
    }
}

fn handshake_fragment(kind: u8, identity: u8, nonce: u8) -> FragmentType {
    let handshake_kind = match kind & 3 {
        0 | 1 => pb::handshake_data::KindType::Hello,
        2 => pb::handshake_data::KindType::Accept,
        _ => pb::handshake_data::KindType::Reject,
    };
    let data = pb::HandshakeData {
        kind: handshake_kind as i32,
        node_name: NAMES[usize::from(identity & 3)].to_string(),
        session_id: 1 + u64::from(identity >> 2 & 3),
        protocol_version: if kind & 0x10 != 0 { 2 } else { 3 },
        options: BTreeMap::new(),
        connection_nonce: u64::from(nonce),
        // Joins an association of either side, or opens one.
        association_session: u64::from(nonce >> 2 & 3),
        association_id: u64::from(nonce & 3),
    };
    let mut fragment = FragmentType {
        packet_type: pb::AtbusPacketType::Handshake as i32,
        data: data.encode_to_vec().into(),
        ..Default::default()
    };
    if kind & 0x20 != 0 {
        fragment.labels = labels();
        fragment.options = Some(pb::PacketOptions {
            token: Bytes::from_static(TOKEN),
        });
    }
    if handshake_kind == pb::handshake_data::KindType::Reject {
        fragment.close_reason = Some(pb::CloseReasonData {
            code: pb::AtbusCloseReason::Unauthorized as i32,
            message: "fuzz".into(),
        });
    }
    fragment
}

impl Harness {
    fn pick_connection(&self, b: u8) -> ConnectionId {
        let i = usize::from(b) % (self.connections.len() + 1);
        self.connections
            .get(i)
            .map_or(ConnectionId(u64::MAX), |&(id, _)| id)
    }

    fn pick_peer(&self, b: u8) -> PeerId {
        let i = usize::from(b) % (self.peers.len() + 1);
        self.peers.get(i).copied().unwrap_or(PeerId(u64::MAX))
    }

    fn kind_of(&self, id: ConnectionId) -> Option<ConnectionKind> {
        self.connections
            .iter()
            .find(|&&(c, _)| c == id)
            .map(|&(_, k)| k)
    }

    fn next(&self, conn: ConnectionId, stream: i64) -> u64 {
        self.next_offset.get(&(conn, stream)).copied().unwrap_or(0)
    }

    /// Advances the fuzzer's own send offset past a packet it sent.
    fn sent_packet(
        &mut self,
        conn: ConnectionId,
        stream: i64,
        offset: i64,
        content: &pb::PacketContent,
    ) {
        let Ok(start) = u64::try_from(offset) else {
            return;
        };
        let end = content
            .fragment
            .iter()
            .fold(start, |at, f| at.saturating_add(span(f)));
        let next = self.next_offset.entry((conn, stream)).or_insert(0);
        *next = (*next).max(end);
    }

    /// Hands bytes to the endpoint: one datagram per chunk, or stream reads.
    fn deliver(&mut self, conn: ConnectionId, chunks: Vec<Bytes>) {
        for data in chunks {
            match self.kind_of(conn) {
                Some(ConnectionKind::Stream) => self.endpoint.handle_input(
                    self.now,
                    atbus_core::Input::StreamData {
                        connection: conn,
                        data,
                    },
                ),
                _ => self.endpoint.handle_input(
                    self.now,
                    atbus_core::Input::Datagram {
                        connection: conn,
                        data,
                    },
                ),
            }
        }
    }

    fn encode(frames: &[pb::FrameMessage]) -> Bytes {
        let mut buf = BytesMut::new();
        for frame in frames {
            encode_frame(frame, &mut buf);
        }
        buf.freeze()
    }

    fn op_handshake(&mut self, r: &mut Reader<'_>) {
        let conn = self.pick_connection(r.u8());
        let kind = r.u8();
        let identity = r.u8();
        let nonce = r.u8();
        let fragment = handshake_fragment(kind, identity, nonce);
        let offset = if kind & 0x80 != 0 {
            0
        } else {
            self.next(conn, -1)
        };
        let flags = if kind & 0x40 != 0 {
            0
        } else {
            pb::AtbusPacketFlagType::ResetOffset as i32
        };
        let content = pb::PacketContent {
            fragment: vec![fragment],
        };
        let offset = offset as i64;
        let tp = self.now.as_micros() as i64;
        let frame = packet_frame(-1, offset, flags, tp, &content);
        self.sent_packet(conn, -1, offset, &content);
        let data = Self::encode(&[frame]);
        self.deliver(conn, vec![data]);
    }

    fn op_frames(&mut self, r: &mut Reader<'_>) {
        let conn = self.pick_connection(r.u8());
        let count = 1 + r.u8() % 4;
        let mut frames = Vec::new();
        for _ in 0..count {
            let kind = r.u8();
            let mut frame = match kind % 4 {
                0 => self.packet(r, conn),
                1 => self.ack(r, conn),
                2 => {
                    let tp = match r.u8() {
                        0 => self.now.as_micros() as i64,
                        _ => r.i64(),
                    };
                    pb::FrameMessage {
                        head: None,
                        body: Some(Body::Ping(pb::PingData {
                            timepoint_microseconds: tp,
                            ..Default::default()
                        })),
                    }
                }
                _ => {
                    let tp = match r.u8() {
                        0 => self.last_ping.get(&conn).copied().unwrap_or(0),
                        _ => r.i64(),
                    };
                    pb::FrameMessage {
                        head: None,
                        body: Some(Body::Pong(pb::PingData {
                            timepoint_microseconds: tp,
                            ..Default::default()
                        })),
                    }
                }
            };
            if kind & 4 != 0 {
                frame.head = Some(pb::MessageHead {
                    source: "alpha".into(),
                    destination: "fuzz-node".into(),
                    ..Default::default()
                });
            }
            frames.push(frame);
        }
        let mangle = r.u8();
        let split = r.u8();
        let mut data = Self::encode(&frames).to_vec();
        if mangle & 0x80 != 0 && !data.is_empty() {
            let at = usize::from(mangle & 0x7f) % data.len();
            data[at] ^= 0xff;
        }
        let data = Bytes::from(data);
        let chunks = if self.kind_of(conn) == Some(ConnectionKind::Stream) {
            let cut = usize::from(split) * data.len() / 256;
            vec![data.slice(..cut), data.slice(cut..)]
        } else {
            vec![data]
        };
        self.deliver(conn, chunks);
    }

    fn packet(&mut self, r: &mut Reader<'_>, conn: ConnectionId) -> pb::FrameMessage {
        let stream = i64::from(r.u8() as i8);
        let next = self.next(conn, stream);
        let offset = match r.u8() % 4 {
            0 => next as i64,
            1 => next.saturating_add(u64::from(r.u16())) as i64,
            2 => next.saturating_sub(u64::from(r.u16())) as i64,
            _ => r.i64(),
        };
        let flags = i32::from(r.u8() & 0x0f);
        let tp = match r.u8() {
            0 => self.now.as_micros() as i64,
            1 => 0,
            n => self.now.as_micros() as i64 - i64::from(n) * 1000,
        };
        let mut fragments = Vec::new();
        for _ in 0..r.u8() % 4 {
            let kind = r.u8();
            let len = usize::from(r.u16() % 40_000);
            let fill = r.u8();
            let mut fragment = FragmentType {
                fragment_flag: i32::from(kind & 1),
                ..Default::default()
            };
            match kind >> 1 & 3 {
                0 => fragment.data = Bytes::from(vec![fill; len]),
                1 => {
                    fragment.packet_type = 100;
                    fragment.data = Bytes::from(vec![fill; len]);
                }
                2 => {
                    fragment.packet_type = pb::AtbusPacketType::Command as i32;
                    fragment.data = pb::CommandData {
                        command_id: i32::from(fill),
                        payload: Bytes::from(vec![fill; len % 64]),
                    }
                    .encode_to_vec()
                    .into();
                }
                _ => {
                    let handshake = handshake_fragment(fill, fill >> 2, (len % 256) as u8);
                    fragment.packet_type = handshake.packet_type;
                    fragment.data = handshake.data;
                }
            }
            if kind & 8 != 0 {
                fragment.labels = labels();
            }
            if kind & 16 != 0 {
                fragment.options = Some(pb::PacketOptions {
                    token: Bytes::from_static(TOKEN),
                });
            }
            if kind & 32 != 0 {
                fragment.close_reason = Some(close_reason_pb(fill));
            }
            fragments.push(fragment);
        }
        let content = pb::PacketContent {
            fragment: fragments,
        };
        self.sent_packet(conn, stream, offset, &content);
        packet_frame(stream, offset, flags, tp, &content)
    }

    fn ack(&mut self, r: &mut Reader<'_>, conn: ConnectionId) -> pb::FrameMessage {
        let stream = i64::from(r.u8() as i8);
        let sent = self.sent_end.get(&(conn, stream)).copied().unwrap_or(0);
        let acknowledged = match r.u8() % 4 {
            0 => sent as i64,
            1 => (sent * u64::from(r.u8()) / 255) as i64,
            2 => i64::from(r.u32()),
            _ => r.i64(),
        };
        let received_max = acknowledged.saturating_add(i64::from(r.u16()));
        let mut ranges = Vec::new();
        let mut at = acknowledged;
        for _ in 0..r.u8() % 4 {
            let lo = at.saturating_add(i64::from(r.u16()));
            let hi = lo.saturating_add(i64::from(r.u16()));
            ranges.extend([lo, hi]);
            at = hi;
        }
        let tp = match r.u8() % 4 {
            0 => self.newest_timepoint.get(&conn).copied().unwrap_or(0),
            1 => 0,
            2 => self.now.as_micros() as i64,
            _ => r.i64(),
        };
        pb::FrameMessage {
            head: None,
            body: Some(Body::Acknowledge(pb::AcknowledgeData {
                acknowledge: Some(pb::StreamAcknowledge {
                    stream_id: stream,
                    acknowledge_offset: acknowledged,
                    received_max_offset: received_max,
                    received_ranges: ranges,
                }),
                timepoint_microseconds: tp,
                forward_for: None,
            })),
        }
    }

    fn op_burst(&mut self, r: &mut Reader<'_>) {
        let conn = self.pick_connection(r.u8());
        let count = usize::from(r.u8() % 32) + 1;
        let mut chunks = Vec::new();
        for i in 0..count {
            let offset = self.next(conn, 0) as i64;
            let content = pb::PacketContent {
                fragment: vec![FragmentType {
                    data: Bytes::from(vec![i as u8; 1000]),
                    // Messages of 3 fragments each.
                    fragment_flag: i32::from(i % 3 != 2),
                    ..Default::default()
                }],
            };
            let frame = packet_frame(0, offset, 0, self.now.as_micros() as i64, &content);
            self.sent_packet(conn, 0, offset, &content);
            chunks.push(Self::encode(&[frame]));
        }
        self.deliver(conn, chunks);
    }

    fn op_send(&mut self, r: &mut Reader<'_>) {
        let peer = self.pick_peer(r.u8());
        let stream = stream_choice(r.u8());
        let len = usize::from(r.u16()) % 36_000;
        let kind = r.u8();
        let deadline = r.u8();
        let mut options = SendOptions::default();
        match kind % 4 {
            0 => {}
            1 => options.packet_type = 100,
            2 => options.packet_type = 5,
            _ => {
                options.labels = labels();
                options.token = Bytes::from_static(TOKEN);
            }
        }
        if deadline != 0 {
            options.deadline = Some(self.now + Duration::from_millis(u64::from(deadline)));
        }
        let payload = Bytes::from(vec![kind; len]);
        if self
            .endpoint
            .send(self.now, peer, stream, payload, &options)
            .is_ok()
        {
            *self.queued.entry(peer).or_insert(0) += len;
        }
    }

    fn timeout(&mut self) {
        self.endpoint.handle_timeout(self.now);
    }

    /// Drains the outputs until the next deadline, checking each; a deadline that is
    /// already due is handled at once, a bounded number of times.
    fn drain(&mut self) {
        for _ in 0..MAX_DUE_ROUNDS {
            let at = self.drain_once();
            if at > self.now {
                return;
            }
            self.timeout();
        }
        panic!(
            "busy timer: after {MAX_DUE_ROUNDS} rounds of handle_timeout({:?}) the next deadline is still due",
            self.now
        );
    }

    fn drain_once(&mut self) -> Timestamp {
        for _ in 0..MAX_OUTPUTS {
            match self.endpoint.poll_output() {
                Output::Transmit(transmit) => {
                    self.check_transmit(&transmit);
                    self.records.push(Record::Transmit(transmit));
                }
                Output::Event(event) => {
                    self.check_event(&event);
                    self.records.push(Record::Event(event));
                }
                Output::Timeout(at) => {
                    self.records.push(Record::Timeout(at));
                    self.check_limits();
                    return at;
                }
            }
        }
        panic!("poll_output gave {MAX_OUTPUTS} outputs without a timeout");
    }

    fn check_event(&mut self, event: &Event) {
        match event {
            Event::PeerConnected { peer, .. } if !self.peers.contains(peer) => {
                self.peers.push(*peer);
            }
            Event::Message {
                stream, message, ..
            } => {
                assert!(
                    *stream >= 0,
                    "message delivered on internal stream {stream}"
                );
                assert!(
                    message.payload.len() <= MAX_MESSAGE_SIZE,
                    "delivered a message of {} bytes, limit {MAX_MESSAGE_SIZE}",
                    message.payload.len()
                );
            }
            _ => {}
        }
    }

    fn check_transmit(&mut self, transmit: &Transmit) {
        let conn = transmit.connection;
        let kind = self
            .kind_of(conn)
            .unwrap_or_else(|| panic!("transmit for unknown {conn}"));
        assert!(!transmit.data.is_empty(), "empty transmit on {conn}");
        let frames: Vec<pb::FrameMessage> = match kind {
            ConnectionKind::Datagram { mtu } => {
                assert!(
                    transmit.data.len() <= mtu,
                    "datagram of {} bytes on {conn} with MTU {mtu}",
                    transmit.data.len()
                );
                Frames::new(transmit.data.clone(), DecodeLimits::default())
                    .map(|f| {
                        f.unwrap_or_else(|e| {
                            panic!("endpoint sent a malformed frame on {conn}: {e}")
                        })
                    })
                    .collect()
            }
            ConnectionKind::Stream => {
                assert!(
                    transmit.data.len() <= STREAM_TRANSMIT_SIZE,
                    "stream transmit of {} bytes on {conn}",
                    transmit.data.len()
                );
                let decoder = self
                    .decoders
                    .get_mut(&conn)
                    .expect("stream connections have a decoder");
                decoder.extend(&transmit.data);
                let mut frames = Vec::new();
                while let Some(frame) = decoder
                    .next_frame()
                    .unwrap_or_else(|e| panic!("endpoint sent a malformed frame on {conn}: {e}"))
                {
                    frames.push(frame);
                }
                frames
            }
        };
        for frame in frames {
            match frame.body {
                Some(Body::Packet(packet)) => {
                    let content = decode_content(packet.content, &DecodeLimits::default())
                        .unwrap_or_else(|e| {
                            panic!("endpoint sent malformed content on {conn}: {e}")
                        });
                    let start = u64::try_from(packet.stream_offset)
                        .unwrap_or_else(|_| panic!("endpoint sent a negative offset on {conn}"));
                    let end = content.fragment.iter().fold(start, |at, f| at + span(f));
                    let sent = self.sent_end.entry((conn, packet.stream_id)).or_insert(0);
                    *sent = (*sent).max(end);
                    let newest = self.newest_timepoint.entry(conn).or_insert(0);
                    *newest = (*newest).max(packet.timepoint_microseconds);
                }
                Some(Body::Ping(ping)) => {
                    self.last_ping.insert(conn, ping.timepoint_microseconds);
                    let newest = self.newest_timepoint.entry(conn).or_insert(0);
                    *newest = (*newest).max(ping.timepoint_microseconds);
                }
                _ => {}
            }
        }
    }

    fn check_limits(&self) {
        let mut held = 0usize;
        for &peer in &self.peers {
            let Some(info) = self.endpoint.peer_info(peer) else {
                continue;
            };
            assert!(
                info.receive_buffered <= PEER_RECEIVE_LIMIT + MAX_MESSAGE_SIZE,
                "{peer} holds {} received bytes, limit {} + {}",
                info.receive_buffered,
                PEER_RECEIVE_LIMIT,
                MAX_MESSAGE_SIZE
            );
            let queued = self.queued.get(&peer).copied().unwrap_or(0);
            assert!(
                info.send_buffered <= queued,
                "{peer} holds {} bytes to send, the application queued {queued}",
                info.send_buffered
            );
            held += info.receive_buffered + info.send_buffered;
        }
        let total = self.endpoint.buffered_bytes();
        let early = total
            .checked_sub(held)
            .unwrap_or_else(|| panic!("buffered_bytes() = {total} is less than the peers' {held}"));
        assert!(
            early <= EARLY_DATA_TOTAL,
            "{early} bytes beyond the peers' buffers (early data limit {EARLY_DATA_TOTAL}); buffered_bytes() = {total}"
        );
    }
}
