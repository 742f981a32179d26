//! An in-memory network that drives two [`Endpoint`]s in virtual time, following the
//! core's contract: after every input (a delivered datagram or stream bytes, a
//! timeout, an application call) the endpoint's outputs are drained until it names
//! its next deadline.
//!
//! Side `A` is usually the initiator (client), side `B` the acceptor (server). Each
//! [`Link`] pairs a connection of `A` with one of `B`; a transmit on a connection with
//! no link is recorded and dropped. Datagrams take a fixed delay and may be dropped,
//! duplicated or delayed further (reordered) by [`Net::fate`]; stream bytes are always
//! delivered in order, but re-cut at seeded random byte boundaries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atbus_core::{
    ConnectionId, ConnectionKind, Endpoint, EndpointConfig, Event, Input, Output, PeerId,
    ReceivedMessage, Timestamp, Transmit,
};
use atbus_proto::{CachedHead, Content, DataFrame, DecodeLimits, FragmentSpec, Frames, pb};
use bytes::{BufMut, Bytes, BytesMut};

/// The virtual clock starts here (never at zero: a zero timepoint means "none").
pub const START: Timestamp = Timestamp::from_micros(1_000_000);

/// One-way delay of every link unless a test changes it.
pub const DELAY: Duration = Duration::from_millis(10);

/// How far [`Net::run_until`] looks before giving up.
pub const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Inputs handled by one [`Net::run_until`] call before it declares a livelock.
const MAX_STEPS: u64 = 5_000_000;

/// A datagram MTU that is typical for IPv6 UDP.
pub const MTU: usize = 1200;

/// The datagram kind most tests use.
pub const DATAGRAM: ConnectionKind = ConnectionKind::Datagram { mtu: MTU };

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Delivered twice.
    Duplicate,
    /// Delivered after the link delay plus this.
    Delay(Duration),
}

/// A datagram about to enter the network, as [`Net::fate`] sees it.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub from: Side,
    /// Index of the transmit among every transmit of `from` (0 = the first).
    pub index: u64,
    pub at: Timestamp,
    pub connection: ConnectionId,
    pub data: &'a Bytes,
}

/// A recorded transmit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub from: Side,
    pub at: Timestamp,
    pub transmit: Transmit,
}

/// A connection of `A` paired with one of `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub a: ConnectionId,
    pub b: ConnectionId,
    pub kind: ConnectionKind,
}

#[derive(Debug)]
struct Flight {
    to: Side,
    connection: ConnectionId,
    data: Bytes,
    stream: bool,
}

/// A splitmix64 generator: deterministic, seedable, good enough for tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The in-memory network.
pub struct Net {
    pub now: Timestamp,
    pub a: Endpoint,
    pub b: Endpoint,
    pub links: Vec<Link>,
    pub delay: Duration,
    pub fate: Box<dyn FnMut(&Datagram<'_>) -> Fate>,
    /// Every event of each side, with the instant it was drained.
    pub events: [Vec<(Timestamp, Event)>; 2],
    /// Every transmit of both sides, in order.
    pub sent: Vec<Sent>,
    /// The last instant each side was handed network input.
    pub last_delivery: [Option<Timestamp>; 2],
    /// Datagrams the fate function dropped, per sending side.
    pub dropped: [u64; 2],
    timeouts: [Timestamp; 2],
    flights: BTreeMap<(Timestamp, u64), Flight>,
    seq: u64,
    transmit_count: [u64; 2],
    rng: Rng,
}

/// A configuration with defaults, named and numbered.
pub fn config(name: &str, session_id: u64) -> EndpointConfig {
    EndpointConfig::new(name, session_id)
}

/// Identifiers of an established pair.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// B as seen by A.
    pub a_peer: PeerId,
    /// A as seen by B.
    pub b_peer: PeerId,
    pub a_conn: ConnectionId,
    pub b_conn: ConnectionId,
}

impl Net {
    /// Two endpoints, no connection yet.
    pub fn new(a: EndpointConfig, b: EndpointConfig) -> Self {
        Net::with_endpoints(Endpoint::new(a), Endpoint::new(b))
    }

    pub fn with_endpoints(a: Endpoint, b: Endpoint) -> Self {
        Net {
            now: START,
            a,
            b,
            links: Vec::new(),
            delay: DELAY,
            fate: Box::new(|_| Fate::Deliver),
            events: [Vec::new(), Vec::new()],
            sent: Vec::new(),
            last_delivery: [None, None],
            dropped: [0, 0],
            timeouts: [Timestamp::NEVER, Timestamp::NEVER],
            flights: BTreeMap::new(),
            seq: 0,
            transmit_count: [0, 0],
            rng: Rng::new(0x5EED),
        }
    }

    /// Seeds the generator that re-cuts stream bytes.
    pub fn seed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    pub fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// `A` connects, `B` accepts; nothing is drained yet.
    pub fn connect(&mut self, kind: ConnectionKind) -> (PeerId, ConnectionId, ConnectionId) {
        let (peer, a) = self.a.connect(self.now, kind).expect("connect");
        let b = self.b.accept(self.now, kind).expect("accept");
        self.links.push(Link { a, b, kind });
        (peer, a, b)
    }

    /// `A` opens another connection to `peer` (multi-path), `B` accepts it;
    /// returns both ends. Nothing is drained yet.
    pub fn add_path(&mut self, peer: PeerId, kind: ConnectionKind) -> (ConnectionId, ConnectionId) {
        let a = self
            .a
            .add_connection(self.now, peer, kind)
            .expect("add_connection");
        let b = self.b.accept(self.now, kind).expect("accept");
        self.links.push(Link { a, b, kind });
        (a, b)
    }

    /// Runs until both sides report `PeerConnected` for the newest link.
    pub fn establish(&mut self, kind: ConnectionKind) -> Pair {
        let (a_peer, a_conn, b_conn) = self.connect(kind);
        let done = self.run_until(|n| {
            n.connected_peer(Side::A, a_conn).is_some()
                && n.connected_peer(Side::B, b_conn).is_some()
        });
        assert!(done, "handshake did not complete");
        let b_peer = self.connected_peer(Side::B, b_conn).expect("B connected");
        assert_eq!(self.connected_peer(Side::A, a_conn), Some(a_peer));
        Pair {
            a_peer,
            b_peer,
            a_conn,
            b_conn,
        }
    }

    /// A pair of endpoints with one established connection.
    pub fn pair(a: EndpointConfig, b: EndpointConfig, kind: ConnectionKind) -> (Net, Pair) {
        let mut net = Net::new(a, b);
        let pair = net.establish(kind);
        (net, pair)
    }

    /// The peer `side` reported connected on `connection`.
    pub fn connected_peer(&self, side: Side, connection: ConnectionId) -> Option<PeerId> {
        self.events(side).find_map(|e| match e {
            Event::PeerConnected {
                peer,
                connection: c,
                ..
            } if *c == connection => Some(*peer),
            _ => None,
        })
    }

    pub fn events(&self, side: Side) -> impl Iterator<Item = &Event> + '_ {
        self.events[side.index()].iter().map(|(_, e)| e)
    }

    pub fn count_events(&self, side: Side, pred: impl Fn(&Event) -> bool) -> usize {
        self.events(side).filter(|e| pred(e)).count()
    }

    /// Messages `side` received on `stream`, from any peer, in delivery order
    /// (runs reported as one [`Event::Messages`] count message by message).
    pub fn messages(&self, side: Side, stream: i64) -> Vec<ReceivedMessage> {
        self.events(side)
            .flat_map(|e| e.clone().into_messages())
            .filter_map(|e| match e {
                Event::Message {
                    stream: s, message, ..
                } if s == stream => Some(message),
                _ => None,
            })
            .collect()
    }

    /// Messages `side` received from `peer` on `stream`.
    pub fn messages_from(&self, side: Side, peer: PeerId, stream: i64) -> Vec<ReceivedMessage> {
        self.events(side)
            .flat_map(|e| e.clone().into_messages())
            .filter_map(|e| match e {
                Event::Message {
                    peer: p,
                    stream: s,
                    message,
                } if s == stream && p == peer => Some(message),
                _ => None,
            })
            .collect()
    }

    pub fn payloads(&self, side: Side, stream: i64) -> Vec<Bytes> {
        self.messages(side, stream)
            .into_iter()
            .map(|m| m.payload)
            .collect()
    }

    /// Transmits of `side`.
    pub fn sent_by(&self, side: Side) -> impl Iterator<Item = &Sent> + '_ {
        self.sent.iter().filter(move |s| s.from == side)
    }

    /// Drains `side` until it names its next deadline.
    pub fn drain(&mut self, side: Side) {
        let mut stream_out: BTreeMap<usize, BytesMut> = BTreeMap::new();
        let mut polls = 0u64;
        loop {
            polls += 1;
            assert!(polls < 10_000_000, "{side:?}: poll_output never ends");
            let output = self.endpoint(side).poll_output();
            match output {
                Output::Transmit(t) => self.on_transmit(side, t, &mut stream_out),
                Output::Event(e) => self.events[side.index()].push((self.now, e)),
                Output::Timeout(at) => {
                    self.timeouts[side.index()] = at;
                    break;
                }
            }
        }
        for (link, bytes) in stream_out {
            self.send_stream_bytes(side, link, bytes.freeze());
        }
    }

    pub fn drain_all(&mut self) {
        self.drain(Side::A);
        self.drain(Side::B);
    }

    fn link_of(&self, side: Side, connection: ConnectionId) -> Option<usize> {
        self.links.iter().position(|l| match side {
            Side::A => l.a == connection,
            Side::B => l.b == connection,
        })
    }

    fn on_transmit(&mut self, side: Side, t: Transmit, stream_out: &mut BTreeMap<usize, BytesMut>) {
        let index = self.transmit_count[side.index()];
        self.transmit_count[side.index()] += 1;
        self.sent.push(Sent {
            from: side,
            at: self.now,
            transmit: t.clone(),
        });
        let Some(link_index) = self.link_of(side, t.connection) else {
            return;
        };
        let link = self.links[link_index];
        let to_connection = match side {
            Side::A => link.b,
            Side::B => link.a,
        };
        match link.kind {
            ConnectionKind::Datagram { mtu } => {
                assert!(
                    t.data.len() <= mtu,
                    "{side:?} sent a datagram of {} bytes on {} (MTU {mtu})",
                    t.data.len(),
                    t.connection
                );
                let fate = (self.fate)(&Datagram {
                    from: side,
                    index,
                    at: self.now,
                    connection: t.connection,
                    data: &t.data,
                });
                let at = self.now + self.delay;
                match fate {
                    Fate::Deliver => self.schedule(at, side.other(), to_connection, t.data, false),
                    Fate::Drop => self.dropped[side.index()] += 1,
                    Fate::Duplicate => {
                        self.schedule(at, side.other(), to_connection, t.data.clone(), false);
                        self.schedule(at, side.other(), to_connection, t.data, false);
                    }
                    Fate::Delay(extra) => {
                        self.schedule(at + extra, side.other(), to_connection, t.data, false)
                    }
                }
            }
            ConnectionKind::Stream => {
                assert!(
                    t.data.len() <= atbus_core::config::STREAM_TRANSMIT_SIZE,
                    "{side:?} sent a stream chunk of {} bytes",
                    t.data.len()
                );
                stream_out.entry(link_index).or_default().put_slice(&t.data);
            }
        }
    }

    /// Stream bytes of one drain, re-cut at random boundaries, delivered in order.
    fn send_stream_bytes(&mut self, side: Side, link_index: usize, mut bytes: Bytes) {
        let link = self.links[link_index];
        let to_connection = match side {
            Side::A => link.b,
            Side::B => link.a,
        };
        let at = self.now + self.delay;
        while !bytes.is_empty() {
            let cut = match self.rng.below(4) {
                0 => 1 + self.rng.below(8),
                1 => 1 + self.rng.below(64),
                2 => 1 + self.rng.below(1500),
                _ => 1 + self.rng.below(70_000),
            } as usize;
            let chunk = bytes.split_to(cut.min(bytes.len()));
            self.schedule(at, side.other(), to_connection, chunk, true);
        }
    }

    fn schedule(
        &mut self,
        at: Timestamp,
        to: Side,
        connection: ConnectionId,
        data: Bytes,
        stream: bool,
    ) {
        self.seq += 1;
        self.flights.insert(
            (at, self.seq),
            Flight {
                to,
                connection,
                data,
                stream,
            },
        );
    }

    /// Replaces the endpoint of `side` (a crash and restart): its links, its events
    /// and everything travelling to or from it are forgotten.
    pub fn replace(&mut self, side: Side, endpoint: Endpoint) {
        *self.endpoint(side) = endpoint;
        self.links.clear();
        self.flights.clear();
        self.events[side.index()].clear();
        self.timeouts[side.index()] = Timestamp::NEVER;
    }

    /// Datagrams and stream chunks still travelling.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Forgets everything travelling (a network partition that loses the queue).
    pub fn clear_in_flight(&mut self) {
        self.flights.clear();
    }

    /// The next instant something happens.
    pub fn next_instant(&self) -> Timestamp {
        let flight = self
            .flights
            .keys()
            .next()
            .map_or(Timestamp::NEVER, |&(at, _)| at);
        flight.min(self.timeouts[0]).min(self.timeouts[1])
    }

    /// Handles one input (the earliest delivery, else a due timeout) and drains.
    /// False if nothing will ever happen.
    pub fn step(&mut self) -> bool {
        let next = self.next_instant();
        if next == Timestamp::NEVER {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        if let Some(entry) = self.flights.first_entry() {
            if entry.key().0 <= now {
                let flight = entry.remove();
                let input = if flight.stream {
                    Input::StreamData {
                        connection: flight.connection,
                        data: flight.data,
                    }
                } else {
                    Input::Datagram {
                        connection: flight.connection,
                        data: flight.data,
                    }
                };
                self.endpoint(flight.to).handle_input(now, input);
                self.last_delivery[flight.to.index()] = Some(now);
                self.drain(flight.to);
                return true;
            }
        }
        for side in [Side::A, Side::B] {
            if self.timeouts[side.index()] <= now {
                self.endpoint(side).handle_timeout(now);
                self.drain(side);
                return true;
            }
        }
        unreachable!("next instant {next:?} had nothing due");
    }

    /// Runs until `pred` holds (checked after every input); false if it never does
    /// within [`RUN_LIMIT`] of virtual time.
    pub fn run_until(&mut self, pred: impl FnMut(&Net) -> bool) -> bool {
        self.run_until_within(RUN_LIMIT, pred)
    }

    pub fn run_until_within(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&Net) -> bool,
    ) -> bool {
        let deadline = self.now + limit;
        self.drain_all();
        let mut steps = 0u64;
        let mut last_now = self.now;
        let mut same_instant = 0u64;
        loop {
            if pred(self) {
                return true;
            }
            if self.next_instant() > deadline {
                return false;
            }
            if !self.step() {
                return false;
            }
            steps += 1;
            assert!(steps < MAX_STEPS, "no progress after {steps} inputs");
            if self.now == last_now {
                same_instant += 1;
                assert!(
                    same_instant < 1_000_000,
                    "livelock: {same_instant} inputs at {:?}",
                    self.now
                );
            } else {
                same_instant = 0;
                last_now = self.now;
            }
        }
    }

    /// Runs every input due up to `until`, then sets the clock there.
    pub fn run_to(&mut self, until: Timestamp) {
        self.drain_all();
        let mut steps = 0u64;
        while self.next_instant() <= until {
            assert!(self.step(), "step failed");
            steps += 1;
            assert!(steps < MAX_STEPS, "no progress after {steps} inputs");
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_to(until);
    }

    /// Runs until nothing is travelling and both sides only wait for far timers
    /// (keepalive and beyond): a quiet network.
    pub fn settle(&mut self) {
        let quiet = self.run_until(|n| n.flights.is_empty() && n.all_settled());
        assert!(quiet, "the network never became quiet");
    }

    fn all_settled(&self) -> bool {
        [&self.a, &self.b].iter().all(|ep| {
            ep.connections()
                .all(|c| ep.connection_info(c).is_none_or(|i| i.bytes_in_flight == 0))
        })
    }
}

/// Hands `data` to `B` as a datagram on the pair's connection and drains `B`.
pub fn feed(net: &mut Net, pair: &Pair, data: Bytes) {
    let now = net.now;
    net.b.handle_input(
        now,
        Input::Datagram {
            connection: pair.b_conn,
            data,
        },
    );
    net.drain(Side::B);
}

/// Cuts `stream` off (replacing `net.fate`): while the returned switch is on,
/// every datagram from `A` that carries data (or a reset) of `stream` is dropped.
pub fn cut_off_stream(net: &mut Net, stream: i64) -> Arc<Mutex<bool>> {
    let cut = Arc::new(Mutex::new(true));
    let on = cut.clone();
    net.fate = Box::new(move |d| {
        if *on.lock().unwrap() && d.from == Side::A && carries_stream(d.data, stream) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    cut
}

/// Decodes every frame of a datagram (empty if malformed).
pub fn frames(data: &Bytes) -> Vec<pb::FrameMessage> {
    Frames::new(data.clone(), DecodeLimits::default())
        .filter_map(Result::ok)
        .collect()
}

/// The `packet_data` frames of a datagram.
pub fn packets(data: &Bytes) -> Vec<pb::PacketData> {
    frames(data)
        .into_iter()
        .filter_map(|f| match f.body {
            Some(pb::frame_message::Body::Packet(p)) => Some(p),
            _ => None,
        })
        .collect()
}

/// Whether a datagram carries data (or a reset) of `stream`.
pub fn carries_stream(data: &Bytes, stream: i64) -> bool {
    packets(data).iter().any(|p| p.stream_id == stream)
}

/// Whether a datagram carries any application stream data.
pub fn carries_data(data: &Bytes) -> bool {
    packets(data).iter().any(|p| p.stream_id >= 0)
}

/// Whether a datagram carries a ping.
pub fn carries_ping(data: &Bytes) -> bool {
    frames(data)
        .iter()
        .any(|f| matches!(f.body, Some(pb::frame_message::Body::Ping(_))))
}

/// One data frame of `stream` at `offset` with `flags` carrying `specs`, without
/// a head or padding and timed at [`START`], encoded as a datagram.
pub fn data_frame(stream: i64, offset: u64, flags: i32, specs: &[FragmentSpec<'_>]) -> Bytes {
    let head = CachedHead::absent();
    let mut buf = BytesMut::new();
    DataFrame {
        head: &head,
        stream_id: stream,
        stream_offset: offset as i64,
        flags,
        padding_size: 0,
        timepoint_microseconds: START.as_micros() as i64,
        content: Content::Fragments(specs),
    }
    .encode(&mut buf);
    buf.freeze()
}

/// A payload of `len` bytes whose content depends on `seed` (so that messages differ).
pub fn payload(len: usize, seed: u64) -> Bytes {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}
