//! Node configuration: identity, listen addresses, limits, scheduler, I/O options.

use std::time::Duration;

use atbus_core::connection::pmtud::PmtudConfig;
use atbus_core::{EndpointConfig, Scheduler};
use bytes::Bytes;

use crate::address::Address;

/// Datagram size of UDP paths without path MTU discovery
/// ([`NodeConfig::udp_pmtud`] `None`), IPv4 and IPv6 alike: the IPv6 minimum MTU
/// (1280) less the IPv6 and UDP headers.
pub const UDP_INITIAL_MTU: usize = 1232;

/// Datagram size of Unix datagram paths (the kernel carries far more; this keeps
/// each datagram inside one default socket buffer slot).
pub const UNIX_DATAGRAM_MTU: usize = 64 * 1024 - 64;

/// Everything a node is built from.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The endpoint's identity and limits (node name, session id, windows, timers).
    pub endpoint: EndpointConfig,
    /// Addresses to listen on (any mix of schemes; may be empty for a pure client).
    pub listen: Vec<Address>,
    /// Multi-path scheduler (overrides `endpoint.scheduler`).
    pub scheduler: Scheduler,
    /// MTU of UDP paths when [`udp_pmtud`](Self::udp_pmtud) is off (see
    /// [`UDP_INITIAL_MTU`]).
    pub udp_mtu: usize,
    /// Path MTU discovery on UDP paths (RFC 8899; on by default): each path starts
    /// at the base of its address family (548 bytes on IPv4, 1232 on IPv6:
    /// `base` here is replaced by it) and probes up to `max` (1452). The socket
    /// forbids fragmentation (quinn-udp sets `IP_PMTUDISC_PROBE` / `IPV6_DONTFRAG`
    /// on Linux). `None`: every UDP datagram is at most `udp_mtu`.
    pub udp_pmtud: Option<PmtudConfig>,
    /// Connections accepted from unknown remote addresses on a listening datagram
    /// socket that have not completed their handshake; datagrams from further new
    /// addresses are dropped and counted (resists floods of garbage).
    pub max_pending_accepts: usize,
    /// Messages (other events count 1 each; a run of messages in one
    /// `Event::Messages` counts its length) held for the application; when full,
    /// the node stops reading its sockets until the application catches up.
    pub event_capacity: usize,
    /// Transmits queued towards one stream socket or one datagram socket before
    /// more wait in the driver (stream) or are dropped as loss (datagram).
    pub write_queue: usize,
    /// First delay before re-dialling a dropped stream connection; doubles up to
    /// `reconnect_max`.
    pub reconnect_min: Duration,
    /// Largest delay between two re-dials.
    pub reconnect_max: Duration,
    /// Tokens a peer's hello must present to be accepted (`None`: accept every
    /// peer). The token this node presents is `endpoint.token`.
    pub accept_tokens: Option<Vec<Bytes>>,
    /// Run the node's I/O on a dedicated thread (its own single-threaded runtime)
    /// instead of a task of the caller's runtime.
    pub dedicated_thread: bool,
}

impl NodeConfig {
    /// Defaults for a node with this name; the session id is drawn at random.
    pub fn new(name: impl Into<String>) -> Self {
        NodeConfig {
            endpoint: EndpointConfig {
                // Runs of small messages travel packed and are handed over as one
                // event; `Node::recv` and `recv_many` split them again.
                pack_messages: true,
                batch_events: true,
                ..EndpointConfig::new(name, random_session_id())
            },
            listen: Vec::new(),
            scheduler: Scheduler::default(),
            udp_mtu: UDP_INITIAL_MTU,
            udp_pmtud: Some(PmtudConfig::default()),
            max_pending_accepts: 256,
            event_capacity: 4096,
            write_queue: 256,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            accept_tokens: None,
            dedicated_thread: false,
        }
    }

    /// Adds a listen address.
    pub fn listen(mut self, address: Address) -> Self {
        self.listen.push(address);
        self
    }
}

/// A session id for a new incarnation: the start time (µs since the UNIX epoch)
/// above 12 random bits, so that a restarted node presents a larger one.
pub fn random_session_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Sessions must grow with each incarnation of a node (the core refuses an
    // older one): the start time in microseconds in the high bits, randomness in
    // the low 12 (two incarnations in the same microsecond still differ).
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(micros);
    hasher.write_u32(std::process::id());
    let time = u64::try_from(micros).unwrap_or(u64::MAX >> 12) & (u64::MAX >> 12);
    ((time << 12) | (hasher.finish() & 0xfff)).max(1)
}
