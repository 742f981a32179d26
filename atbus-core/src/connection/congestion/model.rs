//! A bottleneck model for controller tests: flows with unlimited data, paced by
//! [`Pacer`] at the controller's rate, share one drop-tail queue in front of a link
//! of fixed rate; every datagram that gets through is acknowledged one propagation
//! RTT after it leaves the link. There is no reordering, so a datagram is lost when
//! a later one is acknowledged (the RACK rule with a zero window) or when the
//! retransmission timeout of `RttEstimator` passes (with backoff; a timeout with
//! nothing acknowledged since the previous one is persistent congestion).
//!
//! A flow may run [`Pmtud`]: it starts at the base, probes (probes bypass the queue
//! and the window, and get through iff they fit the link), reports its datagrams'
//! fates, and the link's MTU may change during the run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use super::CongestionController;
use crate::connection::pacing::{Pacer, burst_for_mtu};
use crate::connection::pmtud::Pmtud;
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
    /// Datagram size of flows without PMTUD.
    pub mtu: usize,
    /// The link's MTU from each instant on (sorted); larger datagrams are dropped.
    pub link_mtu: Vec<(Timestamp, usize)>,
}

impl Bottleneck {
    fn link_mtu(&self, now: Timestamp) -> usize {
        self.link_mtu
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map_or(usize::MAX, |&(_, mtu)| mtu)
    }
}

/// One flow to run.
pub(crate) struct FlowSpec {
    pub cc: Box<dyn CongestionController>,
    pub start: Timestamp,
    pub pmtud: Option<Pmtud>,
}

/// What one flow achieved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowStats {
    pub sent: u64,
    pub delivered_bytes: u64,
    /// Dropped by the queue.
    pub dropped: u64,
    /// Dropped for exceeding the link MTU.
    pub too_big: u64,
    pub timeouts: u64,
    /// Bytes delivered after the warm-up.
    pub measured_bytes: u64,
    /// Longest time without a delivery after the warm-up.
    pub longest_stall: Duration,
    /// The datagram size at the end.
    pub final_mtu: usize,
    /// When the datagram size last changed.
    pub mtu_changed_at: Timestamp,
}

struct Flow {
    cc: Box<dyn CongestionController>,
    pacer: Pacer,
    rtt: RttEstimator,
    pmtud: Option<Pmtud>,
    mtu: usize,
    /// seq → (sent_at, size)
    in_flight: BTreeMap<u64, (Timestamp, usize)>,
    next_seq: u64,
    start: Timestamp,
    rto_backoff: u32,
    last_delivery: Timestamp,
    /// Probes sent: (answer time if it gets through, size), in send order.
    probes: Vec<(Option<Timestamp>, usize)>,
    stats: FlowStats,
}

impl Flow {
    fn rto(&self) -> Duration {
        self.rtt.retransmit_timeout(self.rto_backoff)
    }

    fn apply_mtu(&mut self, now: Timestamp) {
        if let Some(mtu) = self.pmtud.as_ref().map(Pmtud::current_mtu) {
            if mtu != self.mtu {
                if mtu < self.mtu {
                    // Datagrams larger than the new MTU were lost to it, not to
                    // congestion: their data is resent at once, cut to the new MTU
                    // (unlimited data: resending is sending more).
                    self.in_flight.retain(|_, &mut (_, size)| size <= mtu);
                }
                self.mtu = mtu;
                self.cc.on_mtu(mtu);
                self.pacer.set_burst(burst_for_mtu(mtu));
                self.stats.mtu_changed_at = now;
            }
        }
    }

    fn lose(&mut self, now: Timestamp, sent: Timestamp, size: usize) {
        self.cc.on_lost(now, sent, size);
        if let Some(pmtud) = self.pmtud.as_mut() {
            pmtud.on_packet_lost(now, sent, size);
        }
        self.apply_mtu(now);
    }
}

/// Runs `flows` over `path` until `end`; deliveries after `warm_up` are measured.
pub(crate) fn run(
    path: &Bottleneck,
    flows: Vec<FlowSpec>,
    warm_up: Timestamp,
    end: Timestamp,
) -> Vec<FlowStats> {
    let mut flows: Vec<Flow> = flows
        .into_iter()
        .map(|spec| {
            let mtu = spec.pmtud.as_ref().map_or(path.mtu, Pmtud::current_mtu);
            let mut cc = spec.cc;
            cc.on_mtu(mtu);
            Flow {
                cc,
                pacer: Pacer::for_mtu(mtu),
                rtt: RttEstimator::new(RtoConfig::default()),
                pmtud: spec.pmtud,
                mtu,
                in_flight: BTreeMap::new(),
                next_seq: 0,
                start: spec.start,
                rto_backoff: 0,
                last_delivery: warm_up.max(spec.start),
                probes: Vec::new(),
                stats: FlowStats::default(),
            }
        })
        .collect();
    // Acknowledgements in arrival order: (time, flow, seq).
    let mut acks: BinaryHeap<Reverse<(Timestamp, usize, u64)>> = BinaryHeap::new();
    // When the link finishes the last queued datagram, nanoseconds.
    let mut link_free_ns: u128 = 0;
    let mut now = Timestamp::ZERO;
    while now < end {
        // Acknowledgements due.
        while let Some(&Reverse((at, i, seq))) = acks.peek() {
            if at > now {
                break;
            }
            acks.pop();
            let flow = &mut flows[i];
            let Some((sent_at, size)) = flow.in_flight.remove(&seq) else {
                continue;
            };
            flow.rtt.on_sample(at - sent_at);
            flow.cc.on_rtt_sample(at, &flow.rtt);
            flow.cc.on_acked(at, sent_at, size);
            if let Some(pmtud) = flow.pmtud.as_mut() {
                pmtud.on_packet_acked(sent_at, size);
            }
            flow.rto_backoff = 0;
            flow.stats.delivered_bytes += size as u64;
            if at >= warm_up {
                flow.stats.measured_bytes += size as u64;
                flow.stats.longest_stall = flow.stats.longest_stall.max(at - flow.last_delivery);
                flow.last_delivery = at;
            }
            let lost: Vec<u64> = flow.in_flight.range(..seq).map(|(&s, _)| s).collect();
            for s in lost {
                let (sent, size) = flow.in_flight.remove(&s).expect("present");
                flow.lose(at, sent, size);
            }
        }
        let mut next = acks.peek().map_or(end, |Reverse((at, _, _))| *at);
        for (i, flow) in flows.iter_mut().enumerate() {
            if now < flow.start {
                next = next.min(flow.start);
                continue;
            }
            // Retransmission timeout.
            let rto = flow.rto();
            let expired: Vec<u64> = flow
                .in_flight
                .iter()
                .take_while(|(_, (sent, _))| *sent + rto <= now)
                .map(|(&s, _)| s)
                .collect();
            if !expired.is_empty() {
                for s in expired {
                    let (sent, size) = flow.in_flight.remove(&s).expect("present");
                    flow.lose(now, sent, size);
                }
                if flow.rto_backoff > 0 {
                    flow.cc.on_persistent_congestion(now);
                }
                flow.rto_backoff += 1;
                flow.stats.timeouts += 1;
            }
            if let Some((sent, _)) = flow.in_flight.values().next() {
                next = next.min(*sent + flow.rto());
            }
            // PMTUD probes: answered one RTT later iff they fit the link.
            if let Some(pmtud) = flow.pmtud.as_mut() {
                for &(answer, size) in &flow.probes {
                    if answer.is_some_and(|at| at <= now) {
                        pmtud.on_probe_acked(now, size);
                    }
                }
                flow.probes
                    .retain(|(answer, _)| answer.is_some_and(|at| at > now));
                pmtud.set_probe_timeout(
                    (flow.rtt.smoothed() * 3).max(flow.rtt.retransmit_timeout(0)),
                );
                pmtud.poll_timeout(now);
                while let Some(probe) = pmtud.next_probe(now) {
                    let fits = probe.size <= path.link_mtu(now);
                    flow.probes
                        .push((fits.then_some(now + path.rtt), probe.size));
                }
                if let Some(answer) = flow.probes.iter().filter_map(|p| p.0).min() {
                    next = next.min(answer);
                }
                if let Some(at) = pmtud.next_timeout() {
                    next = next.min(at.max(now + Duration::from_micros(1)));
                }
                flow.apply_mtu(now);
            }
            // Data.
            loop {
                let in_flight: usize = flow.in_flight.values().map(|&(_, size)| size).sum();
                if in_flight >= flow.cc.window() {
                    break;
                }
                let size = flow.mtu;
                let rate = flow.cc.pacing_rate(flow.rtt.smoothed()).unwrap_or(u64::MAX);
                if let Some(at) = flow.pacer.next_send_time(now, size, rate) {
                    next = next.min(at);
                    break;
                }
                flow.pacer.on_sent(now, size, rate);
                flow.cc.on_sent(now, size, in_flight + size);
                let seq = flow.next_seq;
                flow.next_seq += 1;
                flow.stats.sent += 1;
                let now_ns = u128::from(now.as_micros()) * 1000;
                let backlog_ns = link_free_ns.saturating_sub(now_ns);
                let backlog = backlog_ns * u128::from(path.rate) / 1_000_000_000;
                if size > path.link_mtu(now) {
                    flow.stats.too_big += 1;
                } else if backlog + size as u128 > u128::from(path.queue) {
                    flow.stats.dropped += 1;
                } else {
                    let service_ns = size as u128 * 1_000_000_000 / u128::from(path.rate);
                    link_free_ns = link_free_ns.max(now_ns) + service_ns;
                    let ack_at = Timestamp::from_micros((link_free_ns / 1000) as u64) + path.rtt;
                    acks.push(Reverse((ack_at, i, seq)));
                }
                flow.in_flight.insert(seq, (now, size));
                if flow.in_flight.len() == 1 {
                    next = next.min(now + flow.rto());
                }
            }
        }
        now = next.max(now + Duration::from_micros(1)).min(end);
    }
    flows
        .into_iter()
        .map(|mut f| {
            f.stats.final_mtu = f.mtu;
            f.stats
        })
        .collect()
}
