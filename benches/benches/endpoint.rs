//! The endpoint as a whole, with no network: payload throughput of a lossless
//! in-memory pair, the small-message (ACK-heavy) rate, and the cost of a timeout
//! with 10 vs 10,000 idle connections.
//!
//! `cargo bench -p atbus-benches --bench endpoint -- --warm-up-time 1 --measurement-time 5`
//!
//! The pair hands every transmit straight to the other side at the same virtual
//! instant (no delay, no loss) and handles timeouts as they come; virtual time moves
//! only when both sides are idle and waiting for a deadline. The receiver is drained
//! either after the sender's whole burst (one merged ACK) or after every datagram
//! (one ACK each); see `Delivery`. Results are in `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::Duration;

use atbus_core::{
    ConnectionId, ConnectionKind, Endpoint, EndpointConfig, Event, Input, Output, PeerId,
    SendError, SendOptions, Timestamp,
};
use atbus_proto::pb::{self, frame_message::Body, packet_content::FragmentType};
use atbus_proto::{DecodeLimits, Frames, decode_content, encode_frame};
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;

const DATAGRAM: ConnectionKind = ConnectionKind::Datagram { mtu: 1200 };
/// The stream that carries the benchmark's messages.
const STREAM: i64 = 1;

fn input(kind: ConnectionKind, connection: ConnectionId, data: Bytes) -> Input {
    match kind {
        ConnectionKind::Datagram { .. } => Input::Datagram { connection, data },
        ConnectionKind::Stream => Input::StreamData { connection, data },
    }
}

/// Drains `from` and hands every transmit to `to` on `to_connection`. Returns whether
/// anything was transmitted, the messages `from` delivered, and its next deadline.
fn drain_into(
    from: &mut Endpoint,
    to: &mut Endpoint,
    to_connection: ConnectionId,
    kind: ConnectionKind,
    now: Timestamp,
) -> (bool, usize, Timestamp) {
    let mut moved = false;
    let mut delivered = 0;
    loop {
        match from.poll_output() {
            Output::Transmit(t) => {
                moved = true;
                to.handle_input(now, input(kind, to_connection, t.data));
            }
            Output::Event(Event::Message { .. }) => delivered += 1,
            Output::Event(_) => {}
            Output::Timeout(at) => return (moved, delivered, at),
        }
    }
}

/// When the receiver reacts to what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The client's whole burst is handed over, then the server is drained: one
    /// merged ACK per burst (the best case of batched receives).
    Burst,
    /// The server is drained after every transmit of the client: one ACK per
    /// datagram (the worst case, every datagram arriving on its own).
    AckEach,
}

/// A client and a server joined by a perfect in-memory link.
struct Pair {
    client: Endpoint,
    server: Endpoint,
    kind: ConnectionKind,
    delivery: Delivery,
    /// The client's connection and the server's end of it.
    to_server: ConnectionId,
    to_client: ConnectionId,
    /// The server as the client knows it.
    peer: PeerId,
    now: Timestamp,
}

impl Pair {
    fn connected(kind: ConnectionKind, delivery: Delivery) -> Self {
        Self::connected_recording(kind, delivery, true)
    }

    /// [`connected`](Self::connected), with both endpoints' `record_stats` set to
    /// `record_stats`.
    fn connected_recording(kind: ConnectionKind, delivery: Delivery, record_stats: bool) -> Self {
        let now = Timestamp::from_micros(1_000);
        let config = |name: &str, session| EndpointConfig {
            record_stats,
            ..EndpointConfig::new(name, session)
        };
        let mut client = Endpoint::new(config("client", 1));
        let mut server = Endpoint::new(config("server", 2));
        let (peer, to_server) = client.connect(now, kind).expect("valid connection kind");
        let to_client = server.accept(now, kind).expect("valid connection kind");
        let mut pair = Pair {
            client,
            server,
            kind,
            delivery,
            to_server,
            to_client,
            peer,
            now,
        };
        // The handshake, and one message to bring the stream into existence.
        pair.transfer(1, &Bytes::from_static(b"warm"));
        pair
    }

    /// The client's outputs to the server, then the server's to the client. Returns
    /// whether anything moved and the messages delivered to the server.
    fn exchange(&mut self) -> (bool, usize) {
        let (client_moved, mut delivered) = match self.delivery {
            Delivery::Burst => {
                let (moved, _, _) = drain_into(
                    &mut self.client,
                    &mut self.server,
                    self.to_client,
                    self.kind,
                    self.now,
                );
                (moved, 0)
            }
            Delivery::AckEach => self.exchange_ack_each(),
        };
        let (server_moved, got, _) = drain_into(
            &mut self.server,
            &mut self.client,
            self.to_server,
            self.kind,
            self.now,
        );
        delivered += got;
        (client_moved || server_moved, delivered)
    }

    /// Drains the client and, after each of its transmits, the server (whose ACKs
    /// go straight back to the client).
    fn exchange_ack_each(&mut self) -> (bool, usize) {
        let (mut moved, mut delivered) = (false, 0);
        loop {
            match self.client.poll_output() {
                Output::Transmit(t) => {
                    moved = true;
                    let data = input(self.kind, self.to_client, t.data);
                    self.server.handle_input(self.now, data);
                    let (_, got, _) = drain_into(
                        &mut self.server,
                        &mut self.client,
                        self.to_server,
                        self.kind,
                        self.now,
                    );
                    delivered += got;
                }
                Output::Event(_) => {}
                Output::Timeout(_) => return (moved, delivered),
            }
        }
    }

    /// One round: an exchange, then the timeouts that are due. Returns the messages
    /// delivered to the server.
    fn step(&mut self) -> usize {
        let (moved, delivered) = self.exchange();
        let client_at = self.client.next_timeout();
        let server_at = self.server.next_timeout();
        if !moved {
            // Both idle: let virtual time run to the next deadline.
            let at = client_at.min(server_at);
            assert!(
                at != Timestamp::NEVER,
                "the pair stalled with nothing scheduled"
            );
            self.now = self.now.max(at);
        }
        if client_at <= self.now {
            self.client.handle_timeout(self.now);
        }
        if server_at <= self.now {
            self.server.handle_timeout(self.now);
        }
        delivered
    }

    /// Sends `count` copies of `payload` on one stream and runs the pair until the
    /// server has delivered them all.
    fn transfer(&mut self, count: usize, payload: &Bytes) {
        let options = SendOptions::default();
        let (mut queued, mut delivered) = (0, 0);
        while delivered < count {
            while queued < count {
                match self
                    .client
                    .send(self.now, self.peer, STREAM, payload.clone(), &options)
                {
                    Ok(()) => queued += 1,
                    Err(SendError::WouldBlock) => break,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
            delivered += self.step();
        }
        // Let the last acknowledgements land (at the same instant) so the next round
        // starts settled.
        while self.exchange().0 {}
    }
}

fn throughput(c: &mut Criterion) {
    const TOTAL: usize = 2 * 1024 * 1024;
    let mut group = c.benchmark_group("pair_throughput");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    let variants = [
        ("datagram_1200_burst", DATAGRAM, Delivery::Burst),
        ("datagram_1200_ack_each", DATAGRAM, Delivery::AckEach),
        ("stream_burst", ConnectionKind::Stream, Delivery::Burst),
    ];
    for (name, kind, delivery) in variants {
        for size in [1024, 64 * 1024] {
            let payload = Bytes::from(vec![0x5a; size]);
            let count = TOTAL / size;
            let mut pair = Pair::connected(kind, delivery);
            let id = BenchmarkId::new(name, format!("{}KiB", size / 1024));
            group.bench_function(id, |b| b.iter(|| pair.transfer(count, black_box(&payload))));
        }
    }
    group.finish();
}

fn small_messages(c: &mut Criterion) {
    const COUNT: usize = 10_000;
    let payload = Bytes::from(vec![0x33; 64]);
    let mut group = c.benchmark_group("small_messages");
    group.throughput(Throughput::Elements(COUNT as u64));
    for (name, delivery) in [
        ("datagram_1200_burst", Delivery::Burst),
        ("datagram_1200_ack_each", Delivery::AckEach),
    ] {
        let mut pair = Pair::connected(DATAGRAM, delivery);
        group.bench_function(BenchmarkId::new(name, "10000x64B"), |b| {
            b.iter(|| pair.transfer(COUNT, black_box(&payload)))
        });
    }
    group.finish();
}

/// What the windowed statistics cost: the same transfers with recording on (the
/// default) and off (`EndpointConfig::record_stats`). Small messages in their own
/// datagrams (`ack_each`) record the most per payload byte.
fn stats_recording(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats_recording");
    let variants = [
        ("small_ack_each", Delivery::AckEach, 64, 10_000),
        ("1KiB_burst", Delivery::Burst, 1024, 2048),
    ];
    for (name, delivery, size, count) in variants {
        let payload = Bytes::from(vec![0x33; size]);
        group.throughput(Throughput::Elements(count as u64));
        for (label, record) in [("on", true), ("off", false)] {
            let mut pair = Pair::connected_recording(DATAGRAM, delivery, record);
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| pair.transfer(count, black_box(&payload)))
            });
        }
    }
    group.finish();
}

/// A hello from a remote node, as the first datagram of its connection.
fn hello_datagram(node_name: String, session_id: u64) -> Bytes {
    let hello = pb::HandshakeData {
        kind: pb::handshake_data::KindType::Hello as i32,
        node_name,
        session_id,
        protocol_version: atbus_proto::PROTOCOL_VERSION as i32,
        options: Default::default(),
        connection_nonce: 1,
        ..Default::default()
    };
    let content = pb::PacketContent {
        fragment: vec![FragmentType {
            packet_type: pb::AtbusPacketType::Handshake as i32,
            data: hello.encode_to_vec().into(),
            ..Default::default()
        }],
    };
    frame(Body::Packet(pb::PacketData {
        stream_id: -1,
        stream_offset: 0,
        content: content.encode_to_vec().into(),
        flags: pb::AtbusPacketFlagType::ResetOffset as i32,
        padding_size: 0,
        timepoint_microseconds: 1,
    }))
}

fn frame(body: Body) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(
        &pb::FrameMessage {
            head: None,
            body: Some(body),
        },
        &mut buf,
    );
    buf.freeze()
}

/// An ACK of everything the endpoint sent on the control stream in `datagram`.
fn control_ack(datagram: &Bytes) -> Option<Bytes> {
    let limits = DecodeLimits::default();
    let mut end = None;
    for frame in Frames::new(datagram.clone(), limits) {
        let Ok(pb::FrameMessage {
            body: Some(Body::Packet(packet)),
            ..
        }) = frame
        else {
            continue;
        };
        if packet.stream_id != -1 {
            continue;
        }
        let content = decode_content(packet.content, &limits).ok()?;
        let span: i64 = content
            .fragment
            .iter()
            .map(|f| f.data.len() as i64 + i64::from(f.fragment_flag & 1 == 0))
            .sum();
        end = end.max(Some(packet.stream_offset + span));
    }
    let end = end?;
    Some(frame(Body::Acknowledge(pb::AcknowledgeData {
        acknowledge: Some(pb::StreamAcknowledge {
            stream_id: -1,
            acknowledge_offset: end,
            received_max_offset: end,
            received_ranges: Vec::new(),
        }),
        timepoint_microseconds: 0,
        forward_for: None,
    })))
}

/// Drains `endpoint`; returns its transmits and next deadline.
fn drain(endpoint: &mut Endpoint) -> (Vec<Bytes>, Timestamp) {
    let mut transmits = Vec::new();
    loop {
        match endpoint.poll_output() {
            Output::Transmit(t) => transmits.push(t.data),
            Output::Event(_) => {}
            Output::Timeout(at) => return (transmits, at),
        }
    }
}

/// An endpoint with `count` established, idle accepted connections (one peer each,
/// handshakes acknowledged), opened 1 µs apart so that their keepalive deadlines are
/// distinct: at each deadline exactly one connection's timer is due.
fn idle_endpoint(count: usize) -> Endpoint {
    let mut config = EndpointConfig::new("server", 1);
    // Idle connections must stay open however long the benchmark runs.
    config.idle_timeout = Duration::from_secs(1 << 30);
    let mut endpoint = Endpoint::new(config);
    for i in 0..count {
        let now = Timestamp::from_micros(1_000 + i as u64);
        let connection = endpoint.accept(now, DATAGRAM).expect("valid MTU");
        let hello = hello_datagram(format!("node-{i}"), i as u64 + 1);
        endpoint.handle_input(
            now,
            Input::Datagram {
                connection,
                data: hello,
            },
        );
        let (transmits, _) = drain(&mut endpoint);
        for data in transmits.iter().filter_map(control_ack) {
            endpoint.handle_input(now, Input::Datagram { connection, data });
        }
        let (after_ack, _) = drain(&mut endpoint);
        assert!(
            after_ack.is_empty(),
            "nothing to send once the accept is acknowledged"
        );
    }
    endpoint
}

/// Advances to the next deadline and handles it. Returns the transmits it caused.
fn next_timeout(endpoint: &mut Endpoint) -> usize {
    let at = endpoint.next_timeout();
    endpoint.handle_timeout(at);
    let (transmits, _) = drain(endpoint);
    transmits.len()
}

fn timer_scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("timeout_one_due");
    for count in [10, 10_000] {
        let mut endpoint = idle_endpoint(count);
        // Each deadline is one connection's keepalive: one ping goes out.
        for _ in 0..3 * count {
            assert_eq!(
                next_timeout(&mut endpoint),
                1,
                "one keepalive ping per deadline"
            );
        }
        group.bench_with_input(
            BenchmarkId::new("idle_connections", count),
            &count,
            |b, _| b.iter(|| next_timeout(black_box(&mut endpoint))),
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    throughput,
    small_messages,
    stats_recording,
    timer_scaling
);
criterion_main!(benches);
