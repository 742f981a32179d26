//! Node configuration: identity, listen addresses, limits, scheduler, I/O options.

use std::time::Duration;

use atbus_core::config::MIN_MTU;
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

/// Default cap of [`UdpPmtudCeiling::Route`]: the largest UDP payload of an IPv4
/// datagram, i.e. no cap below what one datagram can carry.
pub const DEFAULT_ROUTE_MTU_CAP: usize = crate::udp::MAX_UDP_PAYLOAD_V4;

/// The largest size PMTUD probes on a UDP path (its `max`). Whatever it is,
/// PMTUD confirms it with a probe before data uses it, and a size that does not
/// get through fails as any other (RFC 8899 §5.1.2): a wrong ceiling costs probes,
/// never data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPmtudCeiling {
    /// [`PmtudConfig::max`] of [`NodeConfig::udp_pmtud`] on every path (1452 by
    /// default, a 1500-byte Ethernet MTU less IPv6 and UDP headers).
    Fixed,
    /// The MTU of the route to the peer as the OS reports it (Linux: `IP_MTU` /
    /// `IPV6_MTU` of a socket connected to the peer) less the IP and UDP headers,
    /// at most `cap` and at most what one UDP datagram carries; `PmtudConfig::max`
    /// where the OS reports nothing. Loopback reports 65535 on IPv4 and 65536 on
    /// IPv6 (ceilings of 65507 and 65488), a jumbo-frame link 9000 (8972 on IPv4,
    /// 8952 on IPv6), an Ethernet link 1500 (1472 and 1452).
    Route {
        /// Upper bound of the ceiling, bytes of UDP payload.
        cap: usize,
    },
}

impl Default for UdpPmtudCeiling {
    fn default() -> Self {
        UdpPmtudCeiling::Route {
            cap: DEFAULT_ROUTE_MTU_CAP,
        }
    }
}

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
    /// `base` here is replaced by it) and probes up to a ceiling chosen by
    /// [`udp_pmtud_ceiling`](Self::udp_pmtud_ceiling): by default the route's MTU
    /// as the OS reports it, or `max` (1452) where it reports none. The socket
    /// forbids fragmentation (quinn-udp sets `IP_PMTUDISC_PROBE` / `IPV6_DONTFRAG`
    /// on Linux). `None`: every UDP datagram is at most `udp_mtu`.
    pub udp_pmtud: Option<PmtudConfig>,
    /// Where the largest size PMTUD probes on a UDP path comes from (see
    /// [`UdpPmtudCeiling`]; by default the route's MTU, capped at
    /// [`DEFAULT_ROUTE_MTU_CAP`]).
    pub udp_pmtud_ceiling: UdpPmtudCeiling,
    /// Accepted connections (on every listener: datagram remotes and stream
    /// connections) that have not completed their handshake. A new one past the
    /// limit evicts the oldest (counted in `NodeStats::evicted_accepts`), so that
    /// connections that send nothing cannot lock new peers out. A datagram from a
    /// new remote opens a connection only if it carries a hello; others are
    /// dropped and counted (resists floods of garbage).
    pub max_pending_accepts: usize,
    /// Messages held for the application (other events count 1 each; a run of
    /// messages in one `Event::Messages` counts its length). When it holds this
    /// many, or [`event_bytes`](Self::event_bytes), the node holds delivery back:
    /// received messages wait in their streams' receive windows and the peers are
    /// flow-controlled by them, while the node goes on reading its sockets
    /// (acknowledgements, handshakes, commands). Events other than messages are
    /// not held back and may pass it. Default 65,536: room for several packed
    /// frames of small messages while the application works on a batch (see
    /// docs/adapters.md, "Flow control and memory bounds").
    pub event_capacity: usize,
    /// Payload bytes of the messages held for the application (default 64 MiB):
    /// delivery is held back at this bound like at
    /// [`event_capacity`](Self::event_capacity); it may be passed by one message.
    pub event_bytes: usize,
    /// Payload bytes the socket tasks may have read and not yet handed to the
    /// core (default 16 MiB). Past it, stream and shm readers wait (the peer backs
    /// up) and datagrams are dropped (counted in `NodeStats::dropped_datagrams`).
    /// Each reader may pass it by one input (a 64 KiB read, a batch of datagrams
    /// or of shm records).
    pub input_bytes: usize,
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
            udp_pmtud_ceiling: UdpPmtudCeiling::default(),
            max_pending_accepts: 256,
            event_capacity: 65536,
            event_bytes: 64 * 1024 * 1024,
            input_bytes: 16 * 1024 * 1024,
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

    /// Checks the values a node cannot run with, which [`Node::start`](crate::Node::start)
    /// refuses instead of starting a node that would stall: an `event_capacity`,
    /// `write_queue` or `max_pending_accepts` of 0 (the node would pause for good,
    /// drop every datagram, or accept nobody), a `reconnect_min` of 0 or above
    /// `reconnect_max` (re-dials would spin), a `udp_mtu` below the core's
    /// [`MIN_MTU`] or above what a UDP datagram carries.
    pub fn validate(&self) -> Result<(), crate::NodeError> {
        let invalid = |what: String| Err(crate::NodeError::InvalidConfig(what));
        let zero = [
            ("event_capacity", self.event_capacity),
            ("event_bytes", self.event_bytes),
            ("input_bytes", self.input_bytes),
            ("write_queue", self.write_queue),
            ("max_pending_accepts", self.max_pending_accepts),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, value)| *value == 0) {
            return invalid(format!("{name} must be at least 1"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return invalid(format!(
                "reconnect_min ({:?}) must be above zero and at most reconnect_max ({:?})",
                self.reconnect_min, self.reconnect_max
            ));
        }
        if !(MIN_MTU..=crate::udp::MAX_UDP_PAYLOAD_V4).contains(&self.udp_mtu) {
            return invalid(format!(
                "udp_mtu ({}) must be within {MIN_MTU}..={}",
                self.udp_mtu,
                crate::udp::MAX_UDP_PAYLOAD_V4
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_a_node_cannot_run_with_are_refused() {
        assert!(NodeConfig::new("n").validate().is_ok());
        let cases: [fn(&mut NodeConfig); 7] = [
            |c| c.event_capacity = 0,
            |c| c.write_queue = 0,
            |c| c.max_pending_accepts = 0,
            |c| c.reconnect_min = Duration::ZERO,
            |c| c.reconnect_min = c.reconnect_max * 2,
            |c| c.udp_mtu = MIN_MTU - 1,
            |c| c.udp_mtu = crate::udp::MAX_UDP_PAYLOAD_V4 + 1,
        ];
        for (i, break_it) in cases.iter().enumerate() {
            let mut config = NodeConfig::new("n");
            break_it(&mut config);
            let err = config.validate().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid configuration"),
                "{i}: {err}"
            );
        }
    }
}
