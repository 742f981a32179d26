//! Several independent atbus flows over the same simulated paths: each flow is its
//! own client/server endpoint pair (its own connection and congestion controller),
//! and all of them share each path's links — one bottleneck queue — like separate
//! applications behind one access link.
//!
//! [`FlowsTransport`] is one side of all the flows, driven by [`run`](crate::run)
//! like any [`Transport`]. The workload's stream `s` travels on flow `s % n` (so run
//! the scenario with at least `n` streams); flow `i` accepts messages from its start
//! time on (earlier offers answer [`WouldBlock`], and the driver offers them again).
//! A datagram carries one leading byte naming its flow, so each flow's endpoints use
//! an MTU one byte below the path's.
//!
//! The receiving side counts each flow's delivered payload bytes; the report's
//! [`flows`](crate::Report::flows) gives them with each flow's goodput.

use std::collections::VecDeque;
use std::time::Duration;

use atbus_core::EndpointConfig;
use bytes::{BufMut, Bytes, BytesMut};

use crate::atbus::{AtbusTransport, pair_with};
use crate::transport::{FlowStats, PathStats, Received, Transport, TransportStats, WouldBlock};

/// One side of `n` flows. See the [module documentation](self).
pub struct FlowsTransport {
    flows: Vec<AtbusTransport>,
    starts: Vec<Duration>,
    /// Payload bytes delivered per flow, with the first and last delivery.
    delivered: Vec<FlowStats>,
    received: VecDeque<Received>,
    /// The flow whose transmit is polled first next time (round robin).
    turn: usize,
    now: Duration,
}

/// Client and server sides of one flow per entry of `starts` (the instant it starts
/// sending), over paths of these MTUs, every endpoint configured by `configure`.
///
/// # Panics
/// If `starts` is empty, has more than 256 entries, or an MTU minus the flow byte
/// is below atbus's minimum.
pub fn flows(
    mtus: &[usize],
    starts: &[Duration],
    configure: impl Fn(&mut EndpointConfig),
) -> (FlowsTransport, FlowsTransport) {
    assert!(!starts.is_empty() && starts.len() <= 256, "1 to 256 flows");
    let inner: Vec<usize> = mtus.iter().map(|m| m - 1).collect();
    let (mut clients, mut servers) = (Vec::new(), Vec::new());
    for i in 0..starts.len() as u64 {
        let mut client = EndpointConfig::new(format!("client-{i}"), 2 * i + 1);
        let mut server = EndpointConfig::new(format!("server-{i}"), 2 * i + 2);
        configure(&mut client);
        configure(&mut server);
        let (c, s) = pair_with(&inner, client, server);
        clients.push(c);
        servers.push(s);
    }
    let side = |flows: Vec<AtbusTransport>| FlowsTransport {
        delivered: vec![FlowStats::default(); flows.len()],
        flows,
        starts: starts.to_vec(),
        received: VecDeque::new(),
        turn: 0,
        now: Duration::ZERO,
    };
    (side(clients), side(servers))
}

impl FlowsTransport {
    fn collect(&mut self) {
        for (i, flow) in self.flows.iter_mut().enumerate() {
            while let Some(message) = flow.poll_received() {
                let stats = &mut self.delivered[i];
                stats.payload_bytes += message.payload.len() as u64;
                stats.first_delivery.get_or_insert(self.now);
                stats.last_delivery = Some(self.now);
                self.received.push_back(message);
            }
        }
    }
}

impl Transport for FlowsTransport {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.now = self.now.max(now);
        let flow = stream as usize % self.flows.len();
        if now < self.starts[flow] {
            return Err(WouldBlock);
        }
        self.flows[flow].send(now, stream, payload)
    }

    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.now = self.now.max(now);
        let Some((&flow, _)) = datagram.split_first() else {
            return;
        };
        if let Some(f) = self.flows.get_mut(usize::from(flow)) {
            f.handle_datagram(now, path, datagram.slice(1..));
        }
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        for flow in &mut self.flows {
            if flow.next_timeout().is_some_and(|at| at <= now) {
                flow.handle_timeout(now);
            }
        }
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.now = self.now.max(now);
        let n = self.flows.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some((path, datagram)) = self.flows[i].poll_transmit(now) {
                self.turn = (i + 1) % n;
                let mut tagged = BytesMut::with_capacity(datagram.len() + 1);
                tagged.put_u8(i as u8);
                tagged.put_slice(&datagram);
                return Some((path, tagged.freeze()));
            }
        }
        None
    }

    fn poll_received(&mut self) -> Option<Received> {
        if self.received.is_empty() {
            self.collect();
        }
        self.received.pop_front()
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        let now = self.now;
        let starts = self.starts.iter().copied().filter(|&s| s > now);
        let timers: Vec<Duration> = self
            .flows
            .iter_mut()
            .filter_map(|f| f.next_timeout())
            .collect();
        timers.into_iter().chain(starts).min()
    }

    fn stats(&self) -> TransportStats {
        let mut paths: Vec<PathStats> = Vec::new();
        for flow in &self.flows {
            let stats = flow.stats();
            for (p, s) in stats.paths.into_iter().enumerate() {
                if paths.len() <= p {
                    paths.push(PathStats {
                        mtu: s.mtu + 1,
                        ..PathStats::default()
                    });
                }
                let t = &mut paths[p];
                t.srtt = t.srtt.max(s.srtt);
                t.sent_packets += s.sent_packets;
                t.lost_packets += s.lost_packets;
                t.retransmits += s.retransmits;
                t.spurious_retransmits += s.spurious_retransmits;
                t.congestion_window += s.congestion_window;
                t.sent_bytes += s.sent_bytes;
            }
        }
        TransportStats {
            paths,
            skipped: self.flows.iter().map(|f| f.stats().skipped).sum(),
        }
    }

    fn flows(&self) -> Vec<FlowStats> {
        self.delivered.clone()
    }
}
