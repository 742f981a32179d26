//! A bottleneck model for controller tests: flows with unlimited data, paced by
//! [`Pacer`] at the controller's rate, share one drop-tail queue in front of a link
//! of fixed rate; every datagram that gets through is acknowledged one propagation
//! RTT after it leaves the link. There is no reordering, so a datagram is lost when
//! a later one is acknowledged (the RACK rule with a zero window), or after a
//! second with no acknowledgement at all (a timeout, persistent congestion).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use super::CongestionController;
use crate::connection::pacing::Pacer;
use crate::connection::rtt::{RtoConfig, RttEstimator};
use crate::time::Timestamp;

/// The path.
pub(crate) struct Bottleneck {
    /// Link rate, bytes per second.
    pub rate: u64,
    /// Queue limit, bytes (the datagram in service included).
    pub queue: u64,
    /// Round-trip propagation delay.
    pub rtt: Duration,
    /// Datagram size.
    pub mtu: usize,
}

/// What one flow achieved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowStats {
    pub sent: u64,
    pub delivered_bytes: u64,
    pub dropped: u64,
    pub timeouts: u64,
    /// Bytes delivered after the warm-up.
    pub measured_bytes: u64,
}

struct Flow {
    cc: Box<dyn CongestionController>,
    pacer: Pacer,
    rtt: RttEstimator,
    /// seq → (sent_at, dropped at the queue)
    in_flight: BTreeMap<u64, (Timestamp, bool)>,
    next_seq: u64,
    start: Timestamp,
    last_progress: Timestamp,
    stats: FlowStats,
}

/// Runs `controllers` (flow `i` starting at `starts[i]`) over `path` until `end`;
/// bytes delivered after `warm_up` are counted separately.
pub(crate) fn run(
    path: &Bottleneck,
    controllers: Vec<Box<dyn CongestionController>>,
    starts: &[Timestamp],
    warm_up: Timestamp,
    end: Timestamp,
) -> Vec<FlowStats> {
    let mut flows: Vec<Flow> = controllers
        .into_iter()
        .zip(starts)
        .map(|(cc, &start)| Flow {
            cc,
            pacer: Pacer::for_mtu(path.mtu),
            rtt: RttEstimator::new(RtoConfig::default()),
            in_flight: BTreeMap::new(),
            next_seq: 0,
            start,
            last_progress: start,
            stats: FlowStats::default(),
        })
        .collect();
    // Acknowledgements in arrival order: (time, flow, seq).
    let mut acks: BinaryHeap<Reverse<(Timestamp, usize, u64)>> = BinaryHeap::new();
    // When the link finishes the last queued datagram, microseconds (fractional
    // precision kept in nanoseconds).
    let mut link_free_ns: u128 = 0;
    let service_ns = (path.mtu as u128 * 1_000_000_000) / u128::from(path.rate);
    let mut now = Timestamp::ZERO;
    while now < end {
        // Acknowledgements due.
        while let Some(&Reverse((at, i, seq))) = acks.peek() {
            if at > now {
                break;
            }
            acks.pop();
            let flow = &mut flows[i];
            let Some((sent_at, _)) = flow.in_flight.remove(&seq) else {
                continue;
            };
            flow.rtt.on_sample(at - sent_at);
            flow.cc.on_rtt_sample(at, &flow.rtt);
            flow.cc.on_acked(at, sent_at, path.mtu);
            flow.stats.delivered_bytes += path.mtu as u64;
            if at >= warm_up {
                flow.stats.measured_bytes += path.mtu as u64;
            }
            flow.last_progress = at;
            let lost: Vec<u64> = flow.in_flight.range(..seq).map(|(&s, _)| s).collect();
            for s in lost {
                let (sent, _) = flow.in_flight.remove(&s).expect("present");
                flow.cc.on_lost(at, sent, path.mtu);
            }
        }
        // Timeouts.
        for flow in &mut flows {
            if !flow.in_flight.is_empty() && now >= flow.last_progress + Duration::from_secs(1) {
                for (_, (sent, _)) in std::mem::take(&mut flow.in_flight) {
                    flow.cc.on_lost(now, sent, path.mtu);
                }
                flow.cc.on_persistent_congestion(now);
                flow.stats.timeouts += 1;
                flow.last_progress = now;
            }
        }
        // Sends.
        let mut next = acks.peek().map_or(end, |Reverse((at, _, _))| *at);
        for (i, flow) in flows.iter_mut().enumerate() {
            if now < flow.start {
                next = next.min(flow.start);
                continue;
            }
            loop {
                let in_flight = flow.in_flight.len() * path.mtu;
                if in_flight >= flow.cc.window() {
                    break;
                }
                let rate = flow.cc.pacing_rate(flow.rtt.smoothed()).unwrap_or(u64::MAX);
                if let Some(at) = flow.pacer.next_send_time(now, path.mtu, rate) {
                    next = next.min(at);
                    break;
                }
                flow.pacer.on_sent(now, path.mtu, rate);
                flow.cc.on_sent(now, path.mtu, in_flight + path.mtu);
                let seq = flow.next_seq;
                flow.next_seq += 1;
                flow.stats.sent += 1;
                // The queue ahead of this datagram, in bytes still to serve.
                let now_ns = u128::from(now.as_micros()) * 1000;
                let backlog_ns = link_free_ns.saturating_sub(now_ns);
                let backlog = backlog_ns * u128::from(path.rate) / 1_000_000_000;
                let dropped = backlog + path.mtu as u128 > u128::from(path.queue);
                if dropped {
                    flow.stats.dropped += 1;
                } else {
                    link_free_ns = link_free_ns.max(now_ns) + service_ns;
                    let ack_at = Timestamp::from_micros((link_free_ns / 1000) as u64) + path.rtt;
                    acks.push(Reverse((ack_at, i, seq)));
                }
                flow.in_flight.insert(seq, (now, dropped));
            }
            if !flow.in_flight.is_empty() {
                next = next.min(flow.last_progress + Duration::from_secs(1));
            }
        }
        now = next.max(now + Duration::from_micros(1)).min(end);
    }
    flows.into_iter().map(|f| f.stats).collect()
}
