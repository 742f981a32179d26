//! Endpoint configuration: identity, limits and timing.

use std::collections::BTreeMap;
use std::time::Duration;

use atbus_proto::DecodeLimits;
use bytes::Bytes;

use crate::connection::congestion::{CongestionAlgorithm, CongestionConfig};
use crate::connection::pmtud::PmtudConfig;
use crate::connection::rtt::RtoConfig;

/// The smallest MTU a datagram connection accepts: room for the frame headers and a
/// useful fragment.
pub const MIN_MTU: usize = 128;

/// Largest chunk of bytes handed out at once for a stream (byte-stream) connection.
pub const STREAM_TRANSMIT_SIZE: usize = 64 * 1024;

/// How an [`Endpoint`](crate::Endpoint) behaves. Every limit is a hard bound on what a
/// peer can make the endpoint hold.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// This node's name, sent in the hello (k8s name rules).
    pub node_name: String,
    /// Identifies this endpoint incarnation and **must grow** with each one: a peer
    /// that sees a larger value knows the node restarted and starts every stream
    /// with it afresh, and refuses a smaller one as a late connection of an ended
    /// incarnation. Adapters use the start time (microseconds since the UNIX
    /// epoch) with random low bits; the core itself never reads a clock or draws
    /// randomness.
    pub session_id: u64,
    /// Labels sent in the hello.
    pub labels: BTreeMap<String, String>,
    /// Token sent in the hello (checked by the peer's authenticator).
    pub token: Bytes,
    /// Largest message payload accepted from the application or a peer.
    pub max_message_size: usize,
    /// Unacknowledged offset units a stream may queue before `send` answers
    /// `WouldBlock` (one message larger than this is accepted when the stream is idle).
    pub stream_send_window: u64,
    /// Offset units past the delivery point a stream buffers out of order.
    pub stream_receive_window: u64,
    /// Payload bytes one peer's streams may hold undelivered; out-of-order data beyond
    /// it is dropped (the sender resends it). In-order data may use
    /// `max_message_size` more so that a message being assembled always completes.
    pub peer_receive_limit: usize,
    /// Streams one peer may open towards this endpoint.
    pub max_streams_per_peer: usize,
    /// Bytes of early data (sent by a peer between its hello and our accept) buffered
    /// per connection.
    pub early_data_limit: usize,
    /// Bytes of early data buffered over all connections still in their handshake.
    pub early_data_total: usize,
    /// Retransmission timeout: factor (1.2 × smoothed RTT), floor, ceiling, backoff.
    pub rto: RtoConfig,
    /// Congestion window of datagram connections.
    pub congestion: CongestionConfig,
    /// Bytes a stream (reliable) connection keeps unacknowledged in flight.
    pub reliable_window: usize,
    /// How a peer's data is spread over its connections.
    pub scheduler: Scheduler,
    /// The congestion controller of datagram connections (stream connections
    /// use a fixed window, `reliable_window`).
    pub congestion_algorithm: CongestionAlgorithm,
    /// An optional cap on the data this endpoint sends, in bytes per second over all
    /// its connections: a token bucket charged with every datagram carrying data and
    /// consulted with each connection's own pacer (`docs/congestion.md`). `None` (or
    /// `Some(0)`): no cap.
    pub rate_limit: Option<u64>,
    /// How long an acknowledgement may wait for data to ride along with.
    pub ack_delay: Duration,
    /// Received ranges reported in one acknowledgement (selective ACK).
    pub max_ack_ranges: usize,
    /// A connection that has sent nothing for this long sends a ping.
    pub keepalive_interval: Duration,
    /// A connection that has received nothing for this long is closed (`PEER_RESET`).
    pub idle_timeout: Duration,
    /// A connection whose handshake has not completed in this time is closed.
    pub handshake_timeout: Duration,
    /// How long a peer with no connection keeps its streams and queued messages,
    /// waiting for a reconnection, before it is dropped.
    pub peer_linger: Duration,
    /// Most peers the endpoint holds when it accepts a new one (peers it dials are
    /// not refused). At the limit, the oldest peer without a connection (one
    /// lingering) is dropped to make room; if every peer is connected, the hello
    /// is refused (`PEER_RESET`, "too many peers"). With `peer_receive_limit` it
    /// bounds what peers can make the endpoint hold.
    pub max_peers: usize,
    /// Limits applied to every frame decoded.
    pub decode_limits: DecodeLimits,
    /// Whether traffic is counted in the windowed statistics (`atbus_core::stats`,
    /// [`Endpoint::snapshot`](crate::Endpoint::snapshot)). On by default; off, the
    /// endpoint skips every recording call and its snapshots read empty (kept to
    /// measure what recording costs).
    pub record_stats: bool,
    /// Path MTU discovery (RFC 8899) on every datagram connection, with these
    /// parameters; `None` (the default): off, datagrams stay at the connection's
    /// `mtu`. When on, the `mtu` a datagram connection is opened with is its
    /// *base* (what the adapter knows every path carries: 548 on IPv4, 1232 on
    /// IPv6; `PmtudConfig::base` is replaced by it) and the MTU grows up to
    /// `PmtudConfig::max` (1452 by default).
    /// [`Endpoint::set_pmtud`](crate::Endpoint::set_pmtud) changes it per
    /// connection.
    pub pmtud: Option<PmtudConfig>,
    /// Whether the endpoint offers packed fragments in its handshakes and, on a
    /// connection whose peer offered them too, sends runs of small whole messages
    /// (type only, no labels, token or deadline) as one packed fragment each
    /// (docs/protocol.md, "Packed fragments"). Packed fragments are accepted
    /// whatever this says. Off by default (the simulator's figures are taken
    /// without it); `atbus-node` turns it on.
    pub pack_messages: bool,
    /// Whether in-order messages handed over together are reported as one
    /// [`Event::Messages`](crate::Event::Messages) (a run of messages of one
    /// stream with no labels or token) instead of one [`Event::Message`](crate::Event::Message)
    /// each. Off by default; `atbus-node` turns it on and splits the runs again for
    /// callers that take one message at a time.
    pub batch_events: bool,
}

impl EndpointConfig {
    /// Defaults for a node with this name and incarnation.
    pub fn new(node_name: impl Into<String>, session_id: u64) -> Self {
        EndpointConfig {
            node_name: node_name.into(),
            session_id,
            labels: BTreeMap::new(),
            token: Bytes::new(),
            max_message_size: 16 * 1024 * 1024,
            stream_send_window: 4 * 1024 * 1024,
            stream_receive_window: 4 * 1024 * 1024,
            peer_receive_limit: 64 * 1024 * 1024,
            max_streams_per_peer: 1024,
            early_data_limit: 64 * 1024,
            early_data_total: 1024 * 1024,
            rto: RtoConfig::default(),
            congestion: CongestionConfig::default(),
            reliable_window: 4 * 1024 * 1024,
            scheduler: Scheduler::MinRtt,
            congestion_algorithm: CongestionAlgorithm::Cubic,
            rate_limit: None,
            ack_delay: Duration::ZERO,
            max_ack_ranges: 32,
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            peer_linger: Duration::from_secs(300),
            max_peers: 65_536,
            decode_limits: DecodeLimits::default(),
            record_stats: true,
            pmtud: None,
            pack_messages: false,
            batch_events: false,
        }
    }
}

/// How the data of a peer's streams is spread over the peer's connections
/// (multi-path). Set for the endpoint by [`EndpointConfig::scheduler`] and per
/// stream by [`Endpoint::set_stream_scheduler`](crate::Endpoint::set_stream_scheduler). Whatever the scheduler, a range acknowledged through any path is
/// settled on all of them, and a range lost on one may be resent on any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Fill the connection with the lowest smoothed RTT that has congestion window
    /// left, then the next: the others carry data only when the faster ones are
    /// full. A connection whose retransmission timer fired without progress since
    /// (an outage) is passed over until it answers again.
    #[default]
    MinRtt,
    /// No preference: every connection with window left takes its turn. A
    /// connection carries as many datagrams per turn as its weight
    /// ([`Endpoint::set_connection_weight`](crate::Endpoint::set_connection_weight),
    /// 1 by default): weighted round robin.
    RoundRobin,
    /// Every range goes on every connection: each sends what it pulls and a copy
    /// of what the others pulled. The first copy to arrive is delivered (the rest
    /// are duplicates the receiver drops), the first acknowledgement settles the
    /// range everywhere. Latency of the fastest path at the cost of the bandwidth
    /// of all.
    Redundant,
}

/// A scheduler name that is not one of `min-rtt`, `redundant`, `round-robin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler {0:?}: expected min-rtt, redundant or round-robin")]
pub struct UnknownScheduler(pub String);

impl std::str::FromStr for Scheduler {
    type Err = UnknownScheduler;

    /// `min-rtt`, `redundant` or `round-robin`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "min-rtt" => Ok(Scheduler::MinRtt),
            "redundant" => Ok(Scheduler::Redundant),
            "round-robin" => Ok(Scheduler::RoundRobin),
            _ => Err(UnknownScheduler(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scheduler::MinRtt => "min-rtt",
            Scheduler::Redundant => "redundant",
            Scheduler::RoundRobin => "round-robin",
        })
    }
}

/// What kind of transport a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Datagrams that may be lost, duplicated, reordered or corrupted (UDP, Unix
    /// datagram): the core fragments by `mtu` and retransmits.
    Datagram {
        /// Largest datagram the path carries (at least [`MIN_MTU`]).
        mtu: usize,
    },
    /// An ordered, reliable byte stream (TCP, Unix stream, shm): fed through the
    /// streaming decoder; never retransmits.
    Stream,
}
