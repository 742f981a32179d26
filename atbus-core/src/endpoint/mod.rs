//! The endpoint: every peer, connection, stream and timer of the local node, driven
//! by inputs that carry `now` and drained through [`Endpoint::poll_output`].
//!
//! The rule: after any input (a datagram, stream bytes, a timeout, or an application
//! call), call [`Endpoint::poll_output`] until it returns [`Output::Timeout`]; send
//! each [`Output::Transmit`], handle each [`Output::Event`], and call
//! [`Endpoint::handle_timeout`] at the instant the timeout names (or earlier, with
//! new input).
//!
//! ```
//! use std::time::Duration;
//! use atbus_core::{ConnectionKind, Endpoint, EndpointConfig, Event, Input, Output, SendOptions, Timestamp};
//! use bytes::Bytes;
//!
//! let kind = ConnectionKind::Datagram { mtu: 1200 };
//! let mut now = Timestamp::from_micros(1_000);
//! let mut client = Endpoint::new(EndpointConfig::new("client", 1));
//! let mut server = Endpoint::new(EndpointConfig::new("server", 2));
//! let (peer, to_server) = client.connect(now, kind)?;
//! let to_client = server.accept(now, kind)?;
//! client.send(now, peer, 7, Bytes::from_static(b"hello"), &SendOptions::default())?;
//!
//! // A perfect network with 10 ms of delay: drain both sides, deliver to the other.
//! let mut received = None;
//! while received.is_none() {
//!     let mut in_flight = Vec::new();
//!     loop {
//!         match client.poll_output() {
//!             Output::Transmit(t) => in_flight.push((true, t.data)),
//!             Output::Event(_) => {}
//!             Output::Timeout(_) => break,
//!         }
//!     }
//!     loop {
//!         match server.poll_output() {
//!             Output::Transmit(t) => in_flight.push((false, t.data)),
//!             Output::Event(Event::Message { message, .. }) => received = Some(message.payload),
//!             Output::Event(_) => {}
//!             Output::Timeout(_) => break,
//!         }
//!     }
//!     now += Duration::from_millis(10);
//!     for (from_client, data) in in_flight {
//!         if from_client {
//!             server.handle_input(now, Input::Datagram { connection: to_client, data });
//!         } else {
//!             client.handle_input(now, Input::Datagram { connection: to_server, data });
//!         }
//!     }
//! }
//! assert_eq!(received.as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), atbus_core::SendError>(())
//! ```

mod delivery;
pub use delivery::DeliveryBudget;
mod recv;
mod runs;
mod send;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use atbus_proto::{CachedMessageMeta, pb};
use bytes::Bytes;

use crate::config::{ConnectionKind, EndpointConfig, MIN_MTU, Scheduler};
use crate::connection::pacing::Pacer;
use crate::connection::pmtud::PmtudConfig;
use crate::connection::{Connection, ConnectionInfo, ConnectionState, Role};
use crate::event::{CloseCode, CloseReason, CommandId, ConnectionId, Event, Output, PeerId};
use crate::handshake::{self, AcceptAll, Authenticator, HandshakeKind, Hello};
use crate::peer::{Association, Peer};
use crate::stats::{StatsRecorder, StatsSnapshot};
use crate::stream::{SendMeta, Stream};
use crate::time::Timestamp;
use crate::timer::TimerQueue;

/// A network input.
#[derive(Debug, Clone)]
pub enum Input {
    /// A datagram received on a datagram connection.
    Datagram {
        /// The connection it arrived on.
        connection: ConnectionId,
        /// The whole datagram.
        data: Bytes,
    },
    /// Bytes read from a stream connection (any split).
    StreamData {
        /// The connection they were read from.
        connection: ConnectionId,
        /// The bytes.
        data: Bytes,
    },
    /// The deadline returned as [`Output::Timeout`] has come.
    Timeout,
}

/// One thing the windowed statistics count.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sample {
    Sent { bytes: u64, fragments: u64 },
    Received { bytes: u64, fragments: u64 },
    Lost { packets: u64 },
    Rtt(Duration),
}

/// Ended sessions remembered, to refuse their late hellos.
const MAX_RETIRED_SESSIONS: usize = 4096;

/// Options of one message.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// `packet_type`: 0 (DATA) or a user type >= 100.
    pub packet_type: i32,
    /// Labels, sent on the first fragment.
    pub labels: BTreeMap<String, String>,
    /// A token option, sent on the first fragment.
    pub token: Bytes,
    /// Drop the message (and tell the peer to skip it) if it is not acknowledged by
    /// then.
    pub deadline: Option<Timestamp>,
}

/// Why an application call failed. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The stream's send window is full; a [`Event::Writable`] follows when it has
    /// room.
    #[error("the stream's send window is full")]
    WouldBlock,
    /// No such peer (never existed, or lost).
    #[error("unknown peer")]
    UnknownPeer,
    /// No such connection.
    #[error("unknown connection")]
    UnknownConnection,
    /// The peer has no established connection (for commands).
    #[error("the peer has no established connection")]
    NotConnected,
    /// Negative stream ids are internal.
    #[error("stream ids below 0 are reserved")]
    ReservedStream,
    /// `packet_type` must be 0 or at least 100.
    #[error("packet type {0} is reserved (use 0 or >= 100)")]
    ReservedType(i32),
    /// Command ids are 1, 2 or at least 100.
    #[error("command id {0} is reserved")]
    ReservedCommand(i32),
    /// The payload is larger than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The stream was finished.
    #[error("the stream is finished")]
    StreamFinished,
    /// The peer already has the maximum number of streams.
    #[error("too many streams with this peer")]
    TooManyStreams,
    /// A datagram connection needs an MTU of at least [`MIN_MTU`].
    #[error("MTU {0} is below the minimum of {MIN_MTU}")]
    MtuTooSmall(usize),
    /// The message's metadata (labels, token) does not fit in one datagram of the
    /// peer's smallest-MTU connection; the metadata must travel in the first
    /// fragment.
    #[error("metadata of {size} bytes does not fit a datagram of {mtu} bytes")]
    MetadataTooLarge {
        /// Encoded metadata size.
        size: usize,
        /// The smallest MTU among the peer's datagram connections.
        mtu: usize,
    },
    /// The connection's handshake is not waiting for a decision.
    #[error("no hello is waiting on this connection")]
    NoPendingHello,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Inputs for connections the endpoint does not know.
    pub unknown_connection_inputs: u64,
    /// Messages delivered to the application.
    pub delivered_messages: u64,
    /// Messages the peers skipped (RESET_OFFSET).
    pub skipped_messages: u64,
    /// Messages dropped at their deadline.
    pub expired_messages: u64,
    /// Data received for streams beyond the per-peer stream limit.
    pub refused_streams: u64,
    /// Messages from peers larger than `max_message_size`, dropped.
    pub oversized_messages: u64,
}

/// A snapshot of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Node name and session id, once known.
    pub identity: Option<(String, u64)>,
    /// Connections bound to the peer.
    pub connections: Vec<ConnectionId>,
    /// Streams open with it.
    pub streams: usize,
    /// Payload bytes received and not yet delivered.
    pub receive_buffered: usize,
    /// Payload bytes queued towards it and not yet acknowledged.
    pub send_buffered: usize,
}

/// Bytes a data frame needs around a fragment's metadata and payload, at most:
/// frame header and checksum, stream id, offset, flags, timepoint, fragment key.
const FRAME_OVERHEAD_BOUND: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Loss(ConnectionId),
    Ack(ConnectionId),
    Keepalive(ConnectionId),
    Idle(ConnectionId),
    Handshake(ConnectionId),
    Expire(PeerId, i64),
    Linger(PeerId),
    /// The pacer lets the connection send again.
    Pace(ConnectionId),
    /// Path MTU discovery: a probe is due or timed out.
    Pmtud(ConnectionId),
}

/// The local node's protocol state; see the [module documentation](self).
pub struct Endpoint {
    config: EndpointConfig,
    authenticator: Box<dyn Authenticator>,
    now: Timestamp,
    connections: BTreeMap<ConnectionId, Connection>,
    peers: BTreeMap<PeerId, Peer>,
    /// False once a search for a peer without a connection found none, until a
    /// peer is added or loses a connection: at `max_peers` with every peer
    /// connected, refusing a hello costs no scan of every peer.
    maybe_lingering: bool,
    /// Peers by node name (several: simultaneous connections form separate
    /// associations).
    peers_by_name: BTreeMap<String, BTreeSet<PeerId>>,
    /// Peers by association (numbering node and session, number).
    associations: BTreeMap<Association, PeerId>,
    /// Sessions of nodes that restarted (node name, old session), newest last: a
    /// late hello of such a session is stale and must not take over anything.
    retired_sessions: BTreeSet<(String, u64)>,
    retired_order: VecDeque<(String, u64)>,
    /// Windowed statistics over every connection, from the first input on.
    recorder: Option<StatsRecorder>,
    next_connection: u64,
    next_peer: u64,
    timers: TimerQueue<TimerKey>,
    events: VecDeque<Event>,
    /// Connections that may have something to send.
    dirty: BTreeSet<ConnectionId>,
    /// Connections whose loss, PMTUD and ack timers are to be recomputed before
    /// the timers are next read ([`Endpoint::flush_timers`]): a drain of many
    /// received datagrams recomputes them once, not per datagram.
    stale_timers: BTreeSet<ConnectionId>,
    /// Connections that held back their data for a faster path of their peer
    /// (min-RTT); they get another turn once the dirty ones are done.
    deferred: BTreeSet<ConnectionId>,
    /// Set for that second turn: nothing defers then.
    no_defer: bool,
    early_total: usize,
    hello_meta: CachedMessageMeta,
    stats: EndpointStats,
    /// The per-endpoint rate cap's bucket (`config.rate_limit`), shared by every
    /// connection.
    rate_cap: Pacer,
    /// Where transmits are encoded (see `send::TRANSMIT_CHUNK`): each is split off
    /// it, so that datagrams share an allocation instead of one each.
    transmit_buf: bytes::BytesMut,
    /// What the application lets the endpoint hand out (see
    /// [`Endpoint::set_delivery_budget`]).
    delivery: delivery::Delivery,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_name", &self.config.node_name)
            .field("session_id", &self.config.session_id)
            .field("connections", &self.connections.len())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no connection, accepting every hello.
    pub fn new(config: EndpointConfig) -> Self {
        let hello_meta = CachedMessageMeta::new(&pb::packet_content::FragmentType {
            packet_type: pb::AtbusPacketType::Handshake as i32,
            labels: config.labels.clone(),
            options: (!config.token.is_empty()).then(|| pb::PacketOptions {
                token: config.token.clone(),
            }),
            ..Default::default()
        });
        Endpoint {
            config,
            authenticator: Box::new(AcceptAll),
            now: Timestamp::ZERO,
            connections: BTreeMap::new(),
            peers: BTreeMap::new(),
            maybe_lingering: true,
            peers_by_name: BTreeMap::new(),
            associations: BTreeMap::new(),
            retired_sessions: BTreeSet::new(),
            retired_order: VecDeque::new(),
            recorder: None,
            next_connection: 0,
            next_peer: 0,
            timers: TimerQueue::new(),
            events: VecDeque::new(),
            dirty: BTreeSet::new(),
            stale_timers: BTreeSet::new(),
            deferred: BTreeSet::new(),
            no_defer: false,
            early_total: 0,
            hello_meta,
            stats: EndpointStats::default(),
            // No minimum burst: the cap holds to within one datagram.
            rate_cap: Pacer::new(0),
            transmit_buf: bytes::BytesMut::new(),
            delivery: delivery::Delivery::default(),
        }
    }

    /// Replaces the authenticator that judges incoming hellos.
    pub fn set_authenticator(&mut self, authenticator: Box<dyn Authenticator>) {
        self.authenticator = authenticator;
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// A connection's state and counters.
    pub fn connection_info(&self, connection: ConnectionId) -> Option<ConnectionInfo> {
        self.connections.get(&connection).map(Connection::info)
    }

    /// Connections known, in id order.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.connections.keys().copied()
    }

    /// A peer's state.
    pub fn peer_info(&self, peer: PeerId) -> Option<PeerInfo> {
        let p = self.peers.get(&peer)?;
        Some(PeerInfo {
            identity: p.identity.clone(),
            connections: p.connections.clone(),
            streams: p.streams.len(),
            receive_buffered: p.recv_buffered,
            send_buffered: p.streams.values().map(|s| s.send.buffered_bytes()).sum(),
        })
    }

    /// Payload bytes the endpoint holds for all peers: received and undelivered, and
    /// queued and unacknowledged, plus early data and control-stream buffers (at
    /// most four [`CONTROL_WINDOW`](crate::connection::CONTROL_WINDOW)s per
    /// connection, labels and tokens included).
    pub fn buffered_bytes(&self) -> usize {
        let peers: usize = self
            .peers
            .values()
            .map(|p| {
                p.recv_buffered
                    + p.streams
                        .values()
                        .map(|s| s.send.buffered_bytes())
                        .sum::<usize>()
            })
            .sum();
        let control: usize = self
            .connections
            .values()
            .map(|c| c.control_recv.footprint())
            .sum();
        peers + self.early_total + control
    }

    fn advance(&mut self, now: Timestamp) {
        // Time never goes backwards, whatever the caller passes.
        self.now = self.now.max(now);
        // New input: the schedulers' deferrals start over.
        self.no_defer = false;
        if self.recorder.is_none() {
            self.recorder = Some(StatsRecorder::new(self.now));
        }
    }

    /// Records traffic and RTT samples of connection `id` in its windowed
    /// statistics and the endpoint's.
    pub(super) fn record(&mut self, id: ConnectionId, sample: Sample) {
        if !self.config.record_stats {
            return;
        }
        let now = self.now;
        let recorder = self.recorder.get_or_insert_with(|| StatsRecorder::new(now));
        let connection = self.connections.get_mut(&id).map(|c| &mut c.recorder);
        for r in std::iter::once(recorder).chain(connection) {
            match sample {
                Sample::Sent { bytes, fragments } => r.record_sent(now, bytes, fragments),
                Sample::Received { bytes, fragments } => r.record_received(now, bytes, fragments),
                Sample::Lost { packets } => r.record_lost(now, packets),
                Sample::Rtt(rtt) => {
                    r.record_rtt(now, rtt);
                    r.record_latency(now, rtt);
                }
            }
        }
    }

    /// Windowed statistics of the whole endpoint (every connection it has had),
    /// read at `now`: the last 1, 5, 15 and 60 seconds, and totals. The latency
    /// histogram holds RTT samples.
    pub fn snapshot(&self, now: Timestamp) -> StatsSnapshot {
        match &self.recorder {
            Some(r) => r.snapshot(now),
            None => StatsRecorder::new(now).snapshot(now),
        }
    }

    /// Windowed statistics of one connection, read at `now` (see
    /// [`snapshot`](Self::snapshot)).
    pub fn connection_snapshot(
        &self,
        connection: ConnectionId,
        now: Timestamp,
    ) -> Option<StatsSnapshot> {
        self.connections
            .get(&connection)
            .map(|c| c.recorder.snapshot(now))
    }

    fn allocate_connection(
        &mut self,
        kind: ConnectionKind,
        role: Role,
    ) -> Result<ConnectionId, SendError> {
        if let ConnectionKind::Datagram { mtu } = kind {
            if mtu < MIN_MTU {
                return Err(SendError::MtuTooSmall(mtu));
            }
        }
        let id = ConnectionId(self.next_connection);
        self.next_connection += 1;
        let connection = Connection::new(kind, role, &self.config, self.now);
        self.connections.insert(id, connection);
        self.timers.set(
            TimerKey::Handshake(id),
            self.now + self.config.handshake_timeout,
        );
        self.timers
            .set(TimerKey::Idle(id), self.now + self.config.idle_timeout);
        self.timers.set(
            TimerKey::Keepalive(id),
            self.now + self.config.keepalive_interval,
        );
        Ok(id)
    }

    /// A new peer state for `association`; `None`: an association this endpoint
    /// opens, numbered by it.
    fn allocate_peer(&mut self, association: Option<Association>) -> PeerId {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let association = association.unwrap_or_else(|| {
            (
                self.config.node_name.clone(),
                self.config.session_id,
                id.0 + 1,
            )
        });
        self.associations.insert(association.clone(), id);
        self.maybe_lingering = true;
        self.peers.insert(
            id,
            Peer {
                association,
                ..Peer::default()
            },
        );
        id
    }

    /// Whether a new peer may be accepted under
    /// [`max_peers`](EndpointConfig::max_peers): at the limit, the oldest peer
    /// without a connection is dropped to make room; false if there is none.
    fn make_room_for_peer(&mut self) -> bool {
        if self.peers.len() < self.config.max_peers.max(1) {
            return true;
        }
        if !self.maybe_lingering {
            return false;
        }
        let lingering = self
            .peers
            .iter()
            .find(|(_, p)| p.connections.is_empty())
            .map(|(&id, _)| id);
        self.maybe_lingering = lingering.is_some();
        match lingering {
            Some(peer) => {
                let reason = CloseReason::new(
                    CloseCode::Shutdown,
                    "dropped to make room for a new peer (max_peers)",
                );
                self.drop_peer(peer, reason);
                true
            }
            None => false,
        }
    }

    /// Records the identity a handshake told for `peer`.
    fn set_identity(&mut self, peer: PeerId, hello: &Hello) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.identity = Some((hello.node_name.clone(), hello.session_id));
            p.labels = hello.labels.clone();
        }
        self.peers_by_name
            .entry(hello.node_name.clone())
            .or_default()
            .insert(peer);
    }

    /// Whether `node` is known by a session newer (larger) than `session`.
    /// Sessions grow with each incarnation of a node (see
    /// [`EndpointConfig::session_id`]).
    pub(super) fn has_newer_session(&self, node: &str, session: u64) -> bool {
        self.peers_by_name.get(node).into_iter().flatten().any(|p| {
            self.peers
                .get(p)
                .and_then(|p| p.identity.as_ref())
                .is_some_and(|(_, s)| *s > session)
        })
    }

    /// Drops every peer state of `node` from a session older than `session`: the
    /// node restarted. Returns whether there was any.
    fn drop_restarted(&mut self, node: &str, session: u64) -> bool {
        let stale: Vec<PeerId> = self
            .peers_by_name
            .get(node)
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| {
                self.peers
                    .get(p)
                    .and_then(|p| p.identity.as_ref())
                    .is_some_and(|(_, s)| *s < session)
            })
            .collect();
        for &peer in &stale {
            if let Some((name, old)) = self.peers.get(&peer).and_then(|p| p.identity.clone()) {
                self.retire_session(name, old);
            }
            self.drop_peer(
                peer,
                CloseReason::new(CloseCode::PeerReset, "peer restarted"),
            );
        }
        !stale.is_empty()
    }

    /// Remembers that `node`'s `session` ended (at most [`MAX_RETIRED_SESSIONS`]).
    pub(super) fn retire_session(&mut self, node: String, session: u64) {
        let key = (node, session);
        if self.retired_sessions.insert(key.clone()) {
            self.retired_order.push_back(key);
        }
        while self.retired_order.len() > MAX_RETIRED_SESSIONS {
            if let Some(old) = self.retired_order.pop_front() {
                self.retired_sessions.remove(&old);
            }
        }
    }

    /// Whether `node`'s `session` is known to have ended.
    pub(super) fn is_retired(&self, node: &str, session: u64) -> bool {
        self.retired_sessions.contains(&(node.to_owned(), session))
    }

    /// Opens a connection to a new peer: sends the hello. Messages may be sent to
    /// the returned peer at once; they travel right after the hello and the acceptor
    /// delivers them once it accepts.
    pub fn connect(
        &mut self,
        now: Timestamp,
        kind: ConnectionKind,
    ) -> Result<(PeerId, ConnectionId), SendError> {
        self.advance(now);
        let connection = self.allocate_connection(kind, Role::Initiator)?;
        let peer = self.allocate_peer(None);
        self.bind(connection, peer);
        self.queue_hello(connection);
        Ok((peer, connection))
    }

    /// Opens one more connection to a known peer (another path, or a reconnection
    /// after its connections closed): sends a hello on it.
    pub fn add_connection(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        kind: ConnectionKind,
    ) -> Result<ConnectionId, SendError> {
        self.advance(now);
        if !self.peers.contains_key(&peer) {
            return Err(SendError::UnknownPeer);
        }
        let connection = self.allocate_connection(kind, Role::Initiator)?;
        self.bind(connection, peer);
        self.queue_hello(connection);
        Ok(connection)
    }

    /// Turns path MTU discovery on (`Some`) or off (`None`) for a datagram
    /// connection, overriding [`EndpointConfig::pmtud`]. On: the connection's MTU
    /// becomes `config.base` (what the adapter knows every path carries: 548 for
    /// UDP over IPv4, 1232 over IPv6) and the search up to `config.max` starts once
    /// the handshake has completed (at once if it has). Off: the MTU stays where
    /// discovery left it. Returns false (and changes nothing) for an unknown or
    /// stream connection, or a base below [`MIN_MTU`].
    pub fn set_pmtud(
        &mut self,
        now: Timestamp,
        connection: ConnectionId,
        config: Option<PmtudConfig>,
    ) -> bool {
        self.advance(now);
        let now = self.now;
        let Some(c) = self.connections.get_mut(&connection) else {
            return false;
        };
        if !c.is_lossy() || config.is_some_and(|p| p.base < MIN_MTU) {
            return false;
        }
        c.pmtud_config = config;
        c.pmtud = None;
        c.probes.clear();
        if let Some(p) = config {
            c.set_mtu(p.base);
        }
        if c.state == ConnectionState::Established {
            c.start_pmtud(now);
            self.dirty.insert(connection);
        }
        self.update_timers(connection);
        true
    }

    /// Registers a connection the peer opened (a new UDP 4-tuple, an accepted TCP
    /// socket); the endpoint waits for its hello.
    pub fn accept(
        &mut self,
        now: Timestamp,
        kind: ConnectionKind,
    ) -> Result<ConnectionId, SendError> {
        self.advance(now);
        self.allocate_connection(kind, Role::Acceptor)
    }

    fn bind(&mut self, connection: ConnectionId, peer: PeerId) {
        if let Some(c) = self.connections.get_mut(&connection) {
            c.peer = Some(peer);
        }
        self.timers.cancel(TimerKey::Linger(peer));
        if let Some(p) = self.peers.get_mut(&peer) {
            if !p.connections.contains(&connection) {
                p.connections.push(connection);
            }
        }
    }

    fn queue_hello(&mut self, connection: ConnectionId) {
        // Numbered here: (0, number); numbered by the peer: (its session, number).
        let association = self
            .connections
            .get(&connection)
            .and_then(|c| c.peer)
            .and_then(|p| self.peers.get(&p))
            .map_or((0, 0), |p| {
                let (node, session, number) = &p.association;
                if *node == self.config.node_name && *session == self.config.session_id {
                    (0, *number)
                } else {
                    (*session, *number)
                }
            });
        let payload = handshake::encode_handshake(
            HandshakeKind::Hello,
            &self.config.node_name,
            self.config.session_id,
            connection.0 + 1,
            association,
            &handshake::handshake_options(self.config.pack_messages),
        );
        self.queue_control(connection, payload, self.hello_meta.clone());
    }

    fn queue_control(&mut self, connection: ConnectionId, payload: Bytes, meta: CachedMessageMeta) {
        if let Some(c) = self.connections.get_mut(&connection) {
            // Callers check the room first (commands answer WouldBlock); a hello or
            // an accept always fits an empty control stream.
            let _ = c.control_send.push(
                payload,
                SendMeta {
                    cached: meta,
                    fin: false,
                },
                None,
            );
            self.dirty.insert(connection);
        }
    }

    /// Accepts a hello the authenticator deferred.
    pub fn accept_hello(
        &mut self,
        now: Timestamp,
        connection: ConnectionId,
    ) -> Result<(), SendError> {
        self.advance(now);
        let hello = self
            .connections
            .get_mut(&connection)
            .ok_or(SendError::UnknownConnection)?
            .deferred_hello
            .take()
            .ok_or(SendError::NoPendingHello)?;
        self.complete_accept(connection, hello);
        Ok(())
    }

    /// Refuses a hello the authenticator deferred: the peer is told `UNAUTHORIZED`
    /// with `message`, and the connection closes.
    pub fn reject_hello(
        &mut self,
        now: Timestamp,
        connection: ConnectionId,
        message: &str,
    ) -> Result<(), SendError> {
        self.advance(now);
        self.connections
            .get_mut(&connection)
            .ok_or(SendError::UnknownConnection)?
            .deferred_hello
            .take()
            .ok_or(SendError::NoPendingHello)?;
        self.close(
            connection,
            CloseReason::new(CloseCode::Unauthorized, message),
            false,
            true,
        );
        Ok(())
    }

    /// Queues a message on `stream` to `peer`.
    pub fn send(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        stream: i64,
        payload: Bytes,
        options: &SendOptions,
    ) -> Result<(), SendError> {
        self.send_from(now, peer, stream, &mut Some(payload), options)
    }

    /// Queues the messages of `payloads` on `stream` to `peer`, in order, all with
    /// the same `options`, taking each one it queues off the front of `payloads`.
    ///
    /// The same as [`send`](Self::send) for each in turn, but the options are
    /// checked and encoded, the stream looked up and the peer's connections
    /// marked once per call rather than once per message. It stops at the first
    /// error; on [`SendError::WouldBlock`] the messages not queued stay in
    /// `payloads` (the first of them is the one that did not fit), and
    /// `Writable` is raised once it fits, as for `send`. An empty `payloads` is
    /// `Ok` and changes nothing.
    pub fn send_many(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        stream: i64,
        payloads: &mut VecDeque<Bytes>,
        options: &SendOptions,
    ) -> Result<(), SendError> {
        // Nothing to send changes nothing: no stream is opened for it.
        if payloads.is_empty() {
            return Ok(());
        }
        self.send_from(now, peer, stream, payloads, options)
    }

    fn send_from(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        stream: i64,
        payloads: &mut impl PayloadQueue,
        options: &SendOptions,
    ) -> Result<(), SendError> {
        self.advance(now);
        if stream < 0 {
            return Err(SendError::ReservedStream);
        }
        if options.packet_type != 0 && options.packet_type < 100 {
            return Err(SendError::ReservedType(options.packet_type));
        }
        let meta = if options.labels.is_empty() && options.token.is_empty() {
            CachedMessageMeta::of_type(options.packet_type)
        } else {
            CachedMessageMeta::new(&pb::packet_content::FragmentType {
                packet_type: options.packet_type,
                labels: options.labels.clone(),
                options: (!options.token.is_empty()).then(|| pb::PacketOptions {
                    token: options.token.clone(),
                }),
                ..Default::default()
            })
        };
        let max_message = self.config.max_message_size;
        if let Some(first) = payloads.front().filter(|p| p.len() > max_message) {
            return Err(SendError::MessageTooLarge {
                size: first.len(),
                limit: max_message,
            });
        }
        self.check_metadata(peer, meta.encoded_len())?;
        let s = self.stream_for_send(peer, stream)?;
        let mut result = Ok(());
        let mut queued = false;
        while let Some(payload) = payloads.front() {
            let len = payload.len();
            if len > max_message {
                result = Err(SendError::MessageTooLarge {
                    size: len,
                    limit: max_message,
                });
                break;
            }
            // Checked before the payload leaves the queue, so that it is moved
            // into the send buffer rather than cloned (and the queue's copy
            // dropped): no reference count touched per message.
            if s.send.is_finished() {
                result = Err(SendError::StreamFinished);
                break;
            }
            if !s.send.has_room(len) {
                s.blocked = Some(len);
                result = Err(SendError::WouldBlock);
                break;
            }
            let Some(payload) = payloads.pop_front() else {
                break;
            };
            let meta = SendMeta {
                cached: meta.clone(),
                fin: false,
            };
            // Cannot fail: finished and room were checked above.
            queued |= s.send.push(payload, meta, options.deadline).is_ok();
        }
        if queued {
            if let Some(deadline) = s.send.next_deadline() {
                self.timers.set(TimerKey::Expire(peer, stream), deadline);
            }
            self.mark_peer_dirty(peer);
        }
        result
    }

    /// Refuses metadata that cannot fit in one datagram of the peer's connections.
    fn check_metadata(&self, peer: PeerId, size: usize) -> Result<(), SendError> {
        let Some(p) = self.peers.get(&peer) else {
            return Err(SendError::UnknownPeer);
        };
        let mtu = p
            .connections
            .iter()
            .filter_map(|c| self.connections.get(c))
            .filter(|c| c.is_lossy())
            .map(|c| c.mtu)
            .min();
        match mtu {
            Some(mtu) if size + FRAME_OVERHEAD_BOUND > mtu => {
                Err(SendError::MetadataTooLarge { size, mtu })
            }
            _ => Ok(()),
        }
    }

    /// Whether a message of `len` bytes would be accepted on `stream` now.
    pub fn can_send(&self, peer: PeerId, stream: i64, len: usize) -> bool {
        self.peers.get(&peer).is_some_and(|p| {
            p.streams
                .get(&stream)
                .is_none_or(|s| s.send.has_room(len) && !s.send.is_finished())
        })
    }

    /// Spreads the data of `stream` to `peer` over the peer's connections with
    /// `scheduler` instead of the endpoint's ([`EndpointConfig::scheduler`]);
    /// `None` returns the stream to the endpoint's scheduler. The choice holds
    /// for the stream's life, from its next datagram on: a latency-critical
    /// stream can go redundant while bulk streams stay on min-RTT.
    ///
    /// # Errors
    /// [`SendError::UnknownPeer`], [`SendError::ReservedStream`] for a negative
    /// id, [`SendError::StreamFinished`] for a stream already finished and
    /// forgotten, [`SendError::TooManyStreams`] beyond
    /// [`EndpointConfig::max_streams_per_peer`] overrides.
    pub fn set_stream_scheduler(
        &mut self,
        peer: PeerId,
        stream: i64,
        scheduler: Option<Scheduler>,
    ) -> Result<(), SendError> {
        if stream < 0 {
            return Err(SendError::ReservedStream);
        }
        let max_streams = self.config.max_streams_per_peer;
        let p = self.peers.get_mut(&peer).ok_or(SendError::UnknownPeer)?;
        match scheduler {
            None => {
                p.schedulers.remove(&stream);
            }
            Some(scheduler) => {
                if p.tombstones.contains_key(&stream) {
                    return Err(SendError::StreamFinished);
                }
                if !p.schedulers.contains_key(&stream) && p.schedulers.len() >= max_streams {
                    return Err(SendError::TooManyStreams);
                }
                p.schedulers.insert(stream, scheduler);
            }
        }
        self.mark_peer_dirty(peer);
        Ok(())
    }

    /// Sets how many datagrams `connection` carries per turn under the
    /// round-robin scheduler (weighted round robin; 0 counts as 1, the default).
    /// A connection of weight 3 next to one of weight 1 carries about three
    /// quarters of the datagrams while both have window.
    ///
    /// # Errors
    /// [`SendError::UnknownConnection`].
    pub fn set_connection_weight(
        &mut self,
        connection: ConnectionId,
        weight: u32,
    ) -> Result<(), SendError> {
        let c = self
            .connections
            .get_mut(&connection)
            .ok_or(SendError::UnknownConnection)?;
        c.weight = weight.max(1);
        Ok(())
    }

    fn stream_for_send(&mut self, peer: PeerId, stream: i64) -> Result<&mut Stream, SendError> {
        let max_streams = self.config.max_streams_per_peer;
        let (send_window, receive_window) = (
            self.config.stream_send_window,
            self.config.stream_receive_window,
        );
        let p = self.peers.get_mut(&peer).ok_or(SendError::UnknownPeer)?;
        if !p.streams.contains_key(&stream) {
            if p.tombstones.contains_key(&stream) {
                return Err(SendError::StreamFinished);
            }
            if p.streams.len() >= max_streams {
                return Err(SendError::TooManyStreams);
            }
        }
        Ok(p.streams
            .entry(stream)
            .or_insert_with(|| Stream::new(send_window, receive_window)))
    }

    /// Finishes the sending direction of `stream`: after every queued message, the
    /// peer receives [`Event::StreamFinished`] with `reason`.
    pub fn finish_stream(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        stream: i64,
        reason: CloseReason,
    ) -> Result<(), SendError> {
        self.advance(now);
        if stream < 0 {
            return Err(SendError::ReservedStream);
        }
        let meta = CachedMessageMeta::new(&pb::packet_content::FragmentType {
            close_reason: Some(reason.to_pb()),
            ..Default::default()
        });
        let s = self.stream_for_send(peer, stream)?;
        s.send
            .push_final(
                Bytes::new(),
                SendMeta {
                    cached: meta,
                    fin: true,
                },
            )
            .map_err(|_| SendError::StreamFinished)?;
        self.mark_peer_dirty(peer);
        Ok(())
    }

    /// Sends a command to `peer` on the control stream of its first established
    /// connection.
    pub fn send_command(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        id: CommandId,
        payload: Bytes,
    ) -> Result<(), SendError> {
        self.advance(now);
        let wire = id.to_wire();
        if CommandId::from_wire(wire) != Some(id) {
            return Err(SendError::ReservedCommand(wire));
        }
        let limit = crate::connection::CONTROL_WINDOW as usize - FRAME_OVERHEAD_BOUND;
        if payload.len() > limit {
            return Err(SendError::MessageTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let p = self.peers.get(&peer).ok_or(SendError::UnknownPeer)?;
        let connection = p
            .connections
            .iter()
            .copied()
            .find(|c| {
                self.connections
                    .get(c)
                    .is_some_and(|c| c.state == ConnectionState::Established)
            })
            .ok_or(SendError::NotConnected)?;
        let payload = handshake::encode_command(wire, &payload);
        if self
            .connections
            .get(&connection)
            .is_some_and(|c| !c.control_send.has_room(payload.len()))
        {
            return Err(SendError::WouldBlock);
        }
        self.queue_control(
            connection,
            payload,
            CachedMessageMeta::of_type(pb::AtbusPacketType::Command as i32),
        );
        Ok(())
    }

    /// Closes a connection: the peer is told with FINISH_CONNECTION (best effort)
    /// and [`Event::ConnectionClosed`] follows.
    pub fn close_connection(
        &mut self,
        now: Timestamp,
        connection: ConnectionId,
        reason: CloseReason,
    ) -> Result<(), SendError> {
        self.advance(now);
        if !self.connections.contains_key(&connection) {
            return Err(SendError::UnknownConnection);
        }
        self.close(connection, reason, false, true);
        Ok(())
    }

    /// Drops every state of a peer: its connections close with `SHUTDOWN`, its
    /// queued messages are dropped (reported in [`Event::PeerLost`]).
    pub fn forget_peer(&mut self, now: Timestamp, peer: PeerId) -> Result<(), SendError> {
        self.advance(now);
        if !self.peers.contains_key(&peer) {
            return Err(SendError::UnknownPeer);
        }
        self.drop_peer(
            peer,
            CloseReason::new(CloseCode::Shutdown, "peer forgotten"),
        );
        Ok(())
    }

    /// Handles one network input or a timeout.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        self.advance(now);
        match input {
            Input::Datagram { connection, data } => self.on_datagram(connection, data),
            Input::StreamData { connection, data } => self.on_stream_data(connection, data),
            Input::Timeout => self.on_timeout(),
        }
    }

    /// Shorthand for [`Endpoint::handle_input`] with [`Input::Timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.handle_input(now, Input::Timeout);
    }

    /// The next output: events first, then transmits, then the next deadline. Call
    /// it until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        self.flush_timers();
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        loop {
            while let Some(&connection) = self.dirty.first() {
                if let Some(transmit) = self.build_transmit(connection) {
                    return Output::Transmit(transmit);
                }
                self.dirty.remove(&connection);
            }
            if self.deferred.is_empty() || self.no_defer {
                break;
            }
            // The preferred paths have sent what they could: the others may carry
            // what is left.
            self.no_defer = true;
            self.dirty.append(&mut self.deferred);
        }
        self.no_defer = false;
        self.deferred.clear();
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        Output::Timeout(self.timers.next_deadline().unwrap_or(Timestamp::NEVER))
    }

    /// The next deadline, without draining anything.
    pub fn next_timeout(&mut self) -> Timestamp {
        self.flush_timers();
        self.timers.next_deadline().unwrap_or(Timestamp::NEVER)
    }

    /// Whether connection `id` should leave the data of streams spread by
    /// `scheduler` to another connection of the same peer: under min-RTT, to a
    /// faster one that has window left and is not suspected dead; under round
    /// robin, to the one whose turn it is, if it can send.
    pub(super) fn defers_data(&self, id: ConnectionId, scheduler: Scheduler) -> bool {
        let now = self.now;
        // In the second turn, only a preferred path held by its pacer (not by its
        // window) still takes precedence: its pace timer will let it send soon.
        let held = |other: &Connection| {
            !self.no_defer
                || other
                    .pacing_rate()
                    .is_some_and(|rate| !other.pacer.can_send(now, other.mtu, rate))
        };
        let Some(c) = self.connections.get(&id) else {
            return false;
        };
        let Some(p) = c.peer.and_then(|p| self.peers.get(&p)) else {
            return false;
        };
        if scheduler == Scheduler::Redundant {
            return false;
        }
        if scheduler == Scheduler::RoundRobin {
            // The connection whose turn it is goes first, if it can.
            let Some(&turn) = p.connections.get(p.turn % p.connections.len().max(1)) else {
                return false;
            };
            return turn != id
                && self.connections.get(&turn).is_some_and(|other| {
                    other.state == ConnectionState::Established
                        && other.rto_backoff == 0
                        && other.in_flight.bytes() < other.cc.window()
                        && held(other)
                });
        }
        // A connection whose timer fired without progress since comes last.
        let mine = (c.rto_backoff > 0, c.rtt.smoothed(), id);
        p.connections.iter().any(|&o| {
            o != id
                && self.connections.get(&o).is_some_and(|other| {
                    other.state == ConnectionState::Established
                        && other.rto_backoff == 0
                        && other.in_flight.bytes() < other.cc.window()
                        && (false, other.rtt.smoothed(), o) < mine
                        && held(other)
                })
        })
    }

    fn mark_peer_dirty(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get(&peer) {
            for &c in &p.connections {
                self.dirty.insert(c);
            }
        }
    }

    fn on_timeout(&mut self) {
        self.flush_timers();
        let now = self.now;
        while let Some(key) = self.timers.pop_expired(now) {
            match key {
                TimerKey::Loss(c) => self.on_loss_timer(c),
                TimerKey::Ack(c) => {
                    self.dirty.insert(c);
                }
                TimerKey::Keepalive(c) => self.on_keepalive_timer(c),
                TimerKey::Idle(c) => self.on_idle_timer(c),
                TimerKey::Handshake(c) => {
                    if self
                        .connections
                        .get(&c)
                        .is_some_and(|c| c.state == ConnectionState::Handshaking)
                    {
                        self.close(
                            c,
                            CloseReason::new(CloseCode::PeerReset, "handshake timed out"),
                            false,
                            true,
                        );
                    }
                }
                TimerKey::Expire(peer, stream) => self.on_expire_timer(peer, stream),
                TimerKey::Pace(c) | TimerKey::Pmtud(c) => {
                    self.dirty.insert(c);
                }
                TimerKey::Linger(peer) => {
                    if self
                        .peers
                        .get(&peer)
                        .is_some_and(|p| p.connections.is_empty())
                    {
                        self.drop_peer(
                            peer,
                            CloseReason::new(
                                CloseCode::PeerReset,
                                "no connection within the linger time",
                            ),
                        );
                    }
                }
            }
        }
    }

    fn on_keepalive_timer(&mut self, id: ConnectionId) {
        let now = self.now;
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        // A path whose retransmission timer fired without progress since is probed
        // every timeout (backed off), so that it rejoins soon after an outage.
        let interval = if c.rto_backoff > 0 {
            c.rto().min(self.config.keepalive_interval)
        } else {
            self.config.keepalive_interval
        };
        let due = c.last_sent + interval;
        if now >= due {
            if c.state == ConnectionState::Established {
                c.ping_due = true;
                self.dirty.insert(id);
            }
            self.timers.set(TimerKey::Keepalive(id), now + interval);
        } else {
            self.timers.set(TimerKey::Keepalive(id), due);
        }
    }

    fn on_idle_timer(&mut self, id: ConnectionId) {
        let timeout = self.config.idle_timeout;
        let Some(c) = self.connections.get(&id) else {
            return;
        };
        let due = c.last_received + timeout;
        if self.now >= due {
            self.close(
                id,
                CloseReason::new(CloseCode::PeerReset, "idle timeout"),
                false,
                true,
            );
        } else {
            self.timers.set(TimerKey::Idle(id), due);
        }
    }

    fn on_expire_timer(&mut self, peer: PeerId, stream: i64) {
        let now = self.now;
        let Some(s) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.streams.get_mut(&stream))
        else {
            return;
        };
        if let Some(expired) = s.send.expire(now) {
            self.stats.expired_messages += expired.messages as u64;
            self.events.push_back(Event::MessagesExpired {
                peer,
                stream,
                messages: expired.messages as u64,
            });
            self.check_writable(peer, stream);
            self.mark_peer_dirty(peer);
        }
        if let Some(deadline) = self
            .peers
            .get(&peer)
            .and_then(|p| p.streams.get(&stream))
            .and_then(|s| s.send.next_deadline())
        {
            self.timers.set(TimerKey::Expire(peer, stream), deadline);
        }
    }

    /// Recomputes the timers of the connections marked stale by received input;
    /// every reader of the timer queue calls it first, so the queue it reads is the
    /// one per-datagram recomputation would have left.
    fn flush_timers(&mut self) {
        while let Some(id) = self.stale_timers.pop_first() {
            self.update_timers(id);
        }
    }

    /// Recomputes a connection's loss and ack timers.
    fn update_timers(&mut self, id: ConnectionId) {
        let Some(c) = self.connections.get(&id) else {
            return;
        };
        if c.is_lossy() {
            match c.in_flight.loss_deadline(
                c.rto(),
                c.newest_delivered,
                c.rack_rtt,
                c.reorder_window(),
            ) {
                Some(at) => self.timers.set(TimerKey::Loss(id), at),
                None => self.timers.cancel(TimerKey::Loss(id)),
            }
        }
        match c.pmtud.as_ref().and_then(|p| p.next_timeout()) {
            Some(at) if c.state == ConnectionState::Established => {
                self.timers.set(TimerKey::Pmtud(id), at)
            }
            _ => self.timers.cancel(TimerKey::Pmtud(id)),
        }
        if self.config.ack_delay > Duration::ZERO {
            match c.ack_pending.values().min() {
                Some(&since) => self
                    .timers
                    .set(TimerKey::Ack(id), since + self.config.ack_delay),
                None => self.timers.cancel(TimerKey::Ack(id)),
            }
        }
    }

    fn cancel_timers(&mut self, id: ConnectionId) {
        for key in [
            TimerKey::Loss(id),
            TimerKey::Ack(id),
            TimerKey::Keepalive(id),
            TimerKey::Idle(id),
            TimerKey::Handshake(id),
            TimerKey::Pace(id),
            TimerKey::Pmtud(id),
        ] {
            self.timers.cancel(key);
        }
    }

    /// Closes a connection locally. `notify`: send FINISH_CONNECTION to the peer.
    fn close(&mut self, id: ConnectionId, reason: CloseReason, by_peer: bool, notify: bool) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.state == ConnectionState::Closed {
            return;
        }
        c.state = ConnectionState::Closed;
        let peer = c.peer;
        let lost = c.in_flight.drain();
        c.ack_pending.clear();
        c.ack_recent.clear();
        c.pongs.clear();
        c.ping_due = false;
        self.early_total -= c.early_bytes;
        c.early_bytes = 0;
        c.early.clear();
        c.deferred_hello = None;
        if notify {
            c.close_frame = Some(reason.clone());
            self.dirty.insert(id);
        }
        self.cancel_timers(id);
        let unreachable = self.detach(id, peer, lost);
        if !notify {
            self.connections.remove(&id);
            self.dirty.remove(&id);
        }
        self.events.push_back(Event::ConnectionClosed {
            connection: id,
            peer,
            reason,
            by_peer,
        });
        if let Some(peer) = peer {
            if unreachable {
                self.peer_unreachable(peer);
            }
            self.mark_peer_dirty(peer);
        }
    }

    /// Unbinds a connection from its peer; what it had in flight goes back to the
    /// streams, to travel on another connection (now or after a reconnection).
    /// Returns whether the peer has no connection left.
    fn detach(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        lost: Vec<crate::connection::recovery::SentRange>,
    ) -> bool {
        let Some(p) = peer.and_then(|peer| self.peers.get_mut(&peer)) else {
            return false;
        };
        for range in lost {
            if let Some(s) = p.streams.get_mut(&range.stream) {
                s.send.on_frame_lost(range.start, range.end, range.reset);
            }
        }
        p.connections.retain(|&c| c != id);
        self.maybe_lingering = true;
        p.connections.is_empty()
    }

    /// The peer's last connection closed: it waits for a new one, at most
    /// `peer_linger`.
    fn peer_unreachable(&mut self, peer: PeerId) {
        self.events.push_back(Event::PeerUnreachable { peer });
        self.timers
            .set(TimerKey::Linger(peer), self.now + self.config.peer_linger);
    }

    /// The peer opened a new connection on the transport address of an accepted one
    /// (a client reconnecting from the same socket): the old connection's state is
    /// replaced, in place, by a fresh acceptor connection under the same id.
    pub(super) fn renew_accepted(&mut self, id: ConnectionId) {
        let now = self.now;
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if !c.is_lossy() {
            // A stream connection carries one connection per byte stream; a second
            // hello on it is a protocol error handled like any bad control message.
            return;
        }
        let (kind, peer) = (c.kind, c.peer);
        let lost = c.in_flight.drain();
        self.early_total -= c.early_bytes;
        *c = Connection::new(kind, Role::Acceptor, &self.config, now);
        // No event: the same transport address carries the peer's new connection,
        // which normally rebinds it at once; the linger bound still applies.
        if self.detach(id, peer, lost) {
            if let Some(peer) = peer {
                self.timers
                    .set(TimerKey::Linger(peer), now + self.config.peer_linger);
            }
        }
        self.cancel_timers(id);
        self.timers
            .set(TimerKey::Handshake(id), now + self.config.handshake_timeout);
        self.timers
            .set(TimerKey::Idle(id), now + self.config.idle_timeout);
        self.timers.set(
            TimerKey::Keepalive(id),
            now + self.config.keepalive_interval,
        );
        if let Some(peer) = peer {
            self.mark_peer_dirty(peer);
        }
    }

    /// Drops a peer entirely (restart, forget): closes its connections, reports what
    /// was lost.
    fn drop_peer(&mut self, peer: PeerId, reason: CloseReason) {
        self.release_held(peer);
        // Out of the map first: closing its connections must not hand their ranges
        // back to its streams or report it unreachable.
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        for &c in &p.connections {
            self.close(c, reason.clone(), false, true);
        }
        if let Some((name, _)) = &p.identity {
            if let Some(set) = self.peers_by_name.get_mut(name) {
                set.remove(&peer);
                if set.is_empty() {
                    self.peers_by_name.remove(name);
                }
            }
        }
        if self.associations.get(&p.association) == Some(&peer) {
            self.associations.remove(&p.association);
        }
        for (&stream, _) in p.streams.iter() {
            self.timers.cancel(TimerKey::Expire(peer, stream));
        }
        self.timers.cancel(TimerKey::Linger(peer));
        let unacknowledged_messages = p
            .streams
            .values()
            .map(|s| s.send.queued_messages() as u64)
            .sum();
        self.events.push_back(Event::PeerLost {
            peer,
            unacknowledged_messages,
        });
    }
}

/// Where [`Endpoint::send`] and [`Endpoint::send_many`] take their payloads from:
/// one message, or a queue of them.
trait PayloadQueue {
    fn front(&self) -> Option<&Bytes>;
    fn pop_front(&mut self) -> Option<Bytes>;
}

impl PayloadQueue for Option<Bytes> {
    fn front(&self) -> Option<&Bytes> {
        self.as_ref()
    }
    fn pop_front(&mut self) -> Option<Bytes> {
        self.take()
    }
}

impl PayloadQueue for VecDeque<Bytes> {
    fn front(&self) -> Option<&Bytes> {
        VecDeque::front(self)
    }
    fn pop_front(&mut self) -> Option<Bytes> {
        VecDeque::pop_front(self)
    }
}
