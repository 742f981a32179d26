//! The trait through which the simulator drives a sans-IO transport.
//!
//! The simulator owns virtual time, the links and the application workload; a
//! transport only turns calls into datagrams. atbus implements it (module
//! [`crate::atbus`]); the peers (the `kcp` crate, `quinn-proto`) can implement it too
//! and run over the very same links.
//!
//! The driver's rules:
//! - every call carries `now`, the virtual time since the simulation start; it never
//!   goes backwards;
//! - all datagrams arriving at one instant on one side are handed in one after
//!   another with [`Transport::handle_datagram`], and only then are the outputs
//!   drained ([`Transport::poll_transmit`], [`Transport::poll_received`]), so a
//!   transport can merge its acknowledgements per batch;
//! - after any call, the driver drains the outputs and then asks
//!   [`Transport::next_timeout`]; it calls [`Transport::handle_timeout`] when that
//!   instant comes.

use std::time::Duration;

use bytes::Bytes;

/// A message the transport could not queue now (its send window is full). The driver
/// keeps it and offers it again after the next call that may have freed room (a
/// datagram or a timeout handled by that side), offering nothing newer on that stream
/// meanwhile; the message's latency still counts from the first offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the transport's send window is full")]
pub struct WouldBlock;

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The stream it arrived on (the workload's stream number).
    pub stream: u32,
    /// The payload.
    pub payload: Bytes,
}

/// What a transport knows about one of its paths, as the sender sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathStats {
    /// The path's current MTU (largest datagram it sends).
    pub mtu: usize,
    /// Smoothed round-trip time.
    pub srtt: Duration,
    /// Datagrams sent.
    pub sent_packets: u64,
    /// Datagrams (or ranges of them) the transport declared lost.
    pub lost_packets: u64,
    /// Retransmissions sent.
    pub retransmits: u64,
    /// Retransmissions later found unnecessary (the original had arrived).
    pub spurious_retransmits: u64,
    /// Congestion window at the end, in bytes (0 if the transport has none).
    pub congestion_window: usize,
    /// Bytes sent.
    pub sent_bytes: u64,
}

/// What the receiving side of one flow got (see [`crate::flows`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Payload bytes delivered.
    pub payload_bytes: u64,
    /// When the first and the last message were delivered.
    pub first_delivery: Option<Duration>,
    /// See `first_delivery`.
    pub last_delivery: Option<Duration>,
}

/// What a transport reports at the end of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportStats {
    /// One entry per path, in path order.
    pub paths: Vec<PathStats>,
    /// Messages the receiving side was told were skipped (expired at the sender and
    /// jumped over with RESET_OFFSET).
    pub skipped: u64,
}

/// One side of a sans-IO transport under simulation.
///
/// Paths are numbered `0..n` in the order of [`Scenario::paths`](crate::Scenario::paths)
/// (the CLI's `--path` flags); a side sends a datagram on path `p` by returning it
/// from [`Transport::poll_transmit`], and the simulator delivers it to the other
/// side's path `p`.
pub trait Transport {
    /// The application sends `payload` on `stream`.
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock>;

    /// A datagram arrived on `path`.
    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes);

    /// The instant returned by [`Transport::next_timeout`] has come.
    fn handle_timeout(&mut self, now: Duration);

    /// The next datagram to send, and its path.
    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)>;

    /// The next message delivered to the application, in delivery order.
    fn poll_received(&mut self) -> Option<Received>;

    /// When [`Transport::handle_timeout`] must be called next, if ever.
    fn next_timeout(&mut self) -> Option<Duration>;

    /// Counters for the report.
    fn stats(&self) -> TransportStats;

    /// Per-flow deliveries, for a side made of several flows ([`crate::flows`]);
    /// empty otherwise.
    fn flows(&self) -> Vec<FlowStats> {
        Vec::new()
    }
    /// Windowed statistics read at `now`, if the transport keeps any.
    fn snapshot(&self, now: Duration) -> Option<atbus_core::stats::StatsSnapshot> {
        let _ = now;
        None
    }
}
