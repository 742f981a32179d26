//! Multi-path schedulers beyond the endpoint-wide choice: per-stream overrides,
//! weighted round robin, and copies that skip what the peer already acknowledged.

mod common;

use std::time::Duration;

use atbus_core::{ConnectionId, PeerId, Scheduler, SendError, SendOptions, Timestamp};
use atbus_proto::pb;
use bytes::Bytes;
use common::{DATAGRAM, DELAY, Fate, Net, Side, config, payload};
use prost::Message;

fn send(net: &mut Net, peer: PeerId, stream: i64, data: Bytes) {
    let now = net.now;
    net.a
        .send(now, peer, stream, data, &SendOptions::default())
        .expect("send");
}

/// A pair with two datagram paths; the second is `extra` slower each way.
/// Returns the pair, A's peer id and A's two connections.
fn two_paths(a_scheduler: Scheduler, extra: Duration) -> (Net, PeerId, ConnectionId, ConnectionId) {
    let mut a_config = config("client", 1);
    a_config.scheduler = a_scheduler;
    let (mut net, first) = Net::pair(a_config, config("server", 2), DATAGRAM);
    let (a2, b2) = net.add_path(first.a_peer, DATAGRAM);
    if !extra.is_zero() {
        net.fate = Box::new(move |d| {
            if (d.from == Side::A && d.connection == a2)
                || (d.from == Side::B && d.connection == b2)
            {
                Fate::Delay(extra)
            } else {
                Fate::Deliver
            }
        });
    }
    assert!(net.run_until(|n| n.connected_peer(Side::B, b2).is_some()));
    net.run_for(Duration::from_secs(12)); // keepalives: RTT samples on both
    (net, first.a_peer, first.a_conn, a2)
}

/// Data datagrams A sent on `connection` carrying `stream`.
fn count(net: &Net, connection: ConnectionId, stream: i64) -> usize {
    net.sent_by(Side::A)
        .filter(|s| {
            s.transmit.connection == connection && common::carries_stream(&s.transmit.data, stream)
        })
        .count()
}

#[test]
fn a_stream_can_go_redundant_while_the_others_stay_on_min_rtt() {
    let (mut net, peer, fast, slow) = two_paths(Scheduler::MinRtt, Duration::from_millis(40));
    net.a
        .set_stream_scheduler(peer, 1, Some(Scheduler::Redundant))
        .unwrap();
    let mut total = 0;
    for round in 0..40u64 {
        for i in 0..10u64 {
            send(&mut net, peer, 1, payload(600, round * 100 + i));
            send(&mut net, peer, 2, payload(600, round * 100 + 50 + i));
            total += 1;
        }
        net.run_for(Duration::from_millis(300));
    }
    assert_eq!(net.payloads(Side::B, 1).len(), total);
    assert_eq!(net.payloads(Side::B, 2).len(), total);
    let (fast1, slow1) = (count(&net, fast, 1), count(&net, slow, 1));
    let (fast2, slow2) = (count(&net, fast, 2), count(&net, slow, 2));
    // Stream 1 is copied onto both paths.
    assert!(
        slow1 * 10 >= fast1 * 8,
        "redundant stream: fast {fast1} slow {slow1}"
    );
    // Stream 2 keeps to the faster path.
    assert!(
        slow2 * 20 <= fast2,
        "min-rtt stream: fast {fast2} slow {slow2}"
    );

    // Back to the endpoint's scheduler: no more copies.
    net.a.set_stream_scheduler(peer, 1, None).unwrap();
    let before = count(&net, slow, 1);
    for i in 0..10u64 {
        send(&mut net, peer, 1, payload(600, 9000 + i));
    }
    net.run_for(Duration::from_millis(300));
    assert_eq!(net.payloads(Side::B, 1).len(), total + 10);
    assert!(count(&net, slow, 1) - before <= 1);
}

#[test]
fn stream_scheduler_overrides_reject_bad_calls() {
    let (mut net, peer, _, _) = two_paths(Scheduler::MinRtt, Duration::ZERO);
    assert_eq!(
        net.a
            .set_stream_scheduler(peer, -1, Some(Scheduler::Redundant)),
        Err(SendError::ReservedStream)
    );
    assert_eq!(
        net.a
            .set_stream_scheduler(PeerId(peer.0 + 100), 1, Some(Scheduler::Redundant)),
        Err(SendError::UnknownPeer)
    );
    assert_eq!(
        net.a.set_connection_weight(ConnectionId(u64::MAX), 2),
        Err(SendError::UnknownConnection)
    );
}

#[test]
fn weighted_round_robin_splits_datagrams_by_weight() {
    for (w1, w2) in [(3u32, 1u32), (1, 2), (1, 1)] {
        let (mut net, peer, c1, c2) = two_paths(Scheduler::RoundRobin, Duration::ZERO);
        net.a.set_connection_weight(c1, w1).unwrap();
        net.a.set_connection_weight(c2, w2).unwrap();
        let mut total = 0;
        for round in 0..30u64 {
            // 12 datagrams' worth per round: well within both windows.
            for i in 0..12u64 {
                send(&mut net, peer, 1, payload(1000, round * 100 + i));
                total += 1;
            }
            net.run_for(Duration::from_millis(200));
        }
        assert_eq!(net.payloads(Side::B, 1).len(), total);
        let (n1, n2) = (count(&net, c1, 1) as f64, count(&net, c2, 1) as f64);
        let want = f64::from(w1) / f64::from(w2);
        let got = n1 / n2;
        assert!(
            (got / want - 1.0).abs() < 0.15,
            "weights {w1}:{w2}: datagrams {n1}:{n2}"
        );
    }
}

/// The offsets a `packet_data` covers.
fn span(packet: &pb::PacketData) -> (u64, u64) {
    let start = packet.stream_offset as u64;
    let content = pb::PacketContent::decode(packet.content.clone()).unwrap_or_default();
    let units: u64 = content
        .fragment
        .iter()
        .map(|f| f.data.len() as u64 + u64::from(f.fragment_flag & 1 == 0))
        .sum();
    (start, start + units)
}

/// Under the redundant scheduler with a lossy fast path and a slow one, no path
/// sends data of stream 1 that A already knew was acknowledged, cumulatively or
/// selectively: a copy queued for the slow path skips what the fast path's
/// selective acknowledgements settled meanwhile.
#[test]
fn no_path_sends_what_the_peer_already_acknowledged() {
    let extra = Duration::from_millis(60);
    let (mut net, peer, fast, slow) = two_paths(Scheduler::Redundant, extra);
    let (b_fast, b_slow) = (net.links[0].b, net.links[1].b);
    assert_eq!((net.links[0].a, net.links[1].a), (fast, slow));
    // Drop one in eight data datagrams on the fast path: holes that selective
    // acknowledgements report around.
    let mut n = 0u64;
    net.fate = Box::new(move |d| {
        let on_slow = (d.from == Side::A && d.connection == slow)
            || (d.from == Side::B && d.connection == b_slow);
        if on_slow {
            return Fate::Delay(extra);
        }
        if d.from == Side::A && common::carries_stream(d.data, 1) {
            n += 1;
            if n % 8 == 3 {
                return Fate::Drop;
            }
        }
        Fate::Deliver
    });
    let start = net.now;
    for i in 0..300u64 {
        send(&mut net, peer, 1, payload(1100, i));
    }
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.payloads(Side::B, 1).len(), 300);

    // What A knew acknowledged, by arrival time of each of B's ACKs.
    let mut known: Vec<(Timestamp, u64, u64)> = Vec::new();
    for s in net.sent_by(Side::B).filter(|s| s.at >= start) {
        let delay = if s.transmit.connection == b_fast {
            DELAY
        } else {
            DELAY + extra
        };
        for f in common::frames(&s.transmit.data) {
            let Some(pb::frame_message::Body::Acknowledge(ack)) = f.body else {
                continue;
            };
            let Some(a) = ack.acknowledge.filter(|a| a.stream_id == 1) else {
                continue;
            };
            let arrival = s.at + delay;
            known.push((arrival, 0, a.acknowledge_offset as u64));
            for pair in a.received_ranges.chunks_exact(2) {
                known.push((arrival, pair[0] as u64, pair[1] as u64));
            }
        }
    }
    let mut checked = 0;
    for s in net.sent_by(Side::A).filter(|s| s.at >= start) {
        for p in common::packets(&s.transmit.data) {
            if p.stream_id != 1 {
                continue;
            }
            let (lo, hi) = span(&p);
            checked += 1;
            for &(arrival, a, b) in &known {
                assert!(
                    arrival >= s.at || hi <= a || lo >= b,
                    "connection {:?} sent [{lo}, {hi}) at {:?}, acknowledged [{a}, {b}) at {arrival:?}",
                    s.transmit.connection,
                    s.at
                );
            }
        }
    }
    assert!(checked > 300);
}

/// A rate cap of zero means no cap (it must not let one datagram out and then
/// block the data for ever), and weighted round robin keeps its shares when a
/// redundant stream runs next to the round-robin one.
#[test]
fn a_zero_rate_cap_is_no_cap_and_mixed_schedulers_keep_the_weights() {
    let mut a_config = config("client", 1);
    a_config.scheduler = Scheduler::RoundRobin;
    a_config.rate_limit = Some(0);
    let (mut net, first) = Net::pair(a_config, config("server", 2), DATAGRAM);
    let (a2, b2) = net.add_path(first.a_peer, DATAGRAM);
    assert!(net.run_until(|n| n.connected_peer(Side::B, b2).is_some()));
    let (peer, c1) = (first.a_peer, first.a_conn);
    net.a.set_connection_weight(c1, 3).unwrap();
    net.a
        .set_stream_scheduler(peer, 2, Some(Scheduler::Redundant))
        .unwrap();
    for round in 0..30u64 {
        for i in 0..12u64 {
            send(&mut net, peer, 1, payload(1000, round * 100 + i));
        }
        send(&mut net, peer, 2, payload(300, round));
        net.run_for(Duration::from_millis(200));
    }
    assert_eq!(net.payloads(Side::B, 1).len(), 360);
    assert_eq!(net.payloads(Side::B, 2).len(), 30);
    let (n1, n2) = (count(&net, c1, 1) as f64, count(&net, a2, 1) as f64);
    assert!((n1 / n2 / 3.0 - 1.0).abs() < 0.2, "datagrams {n1}:{n2}");
}
