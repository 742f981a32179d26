//! Loss recovery at the endpoint: a retransmission timeout gets a datagram out even
//! when the congestion window is full of lost datagrams, and consecutive timeouts
//! keep their period (no backoff by default).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atbus_core::{EndpointConfig, SendOptions};
use common::{DATAGRAM, Fate, Net, Side, config, payload};

/// The longest time without a datagram of A carrying data once everything it sends is lost, and the timeout then.
/// A 100 ms one-way path carries a 2000-byte message every 5 ms for 1 s (the
/// congestion window grows, then limits), then A's datagrams are all dropped while
/// the messages keep coming for 3 s.
fn longest_silence(a: EndpointConfig) -> (Duration, Duration) {
    let mut net = Net::new(a, config("server", 2));
    net.delay = Duration::from_millis(100);
    let pair = net.establish(DATAGRAM);
    let dropping = Arc::new(AtomicBool::new(false));
    let flag = dropping.clone();
    net.fate = Box::new(move |d| {
        if d.from == Side::A && flag.load(Ordering::Relaxed) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let mut start = net.now;
    let mut rto = Duration::ZERO;
    for i in 0..800u64 {
        if i == 200 {
            dropping.store(true, Ordering::Relaxed);
            start = net.now;
            rto = net.a.connection_info(pair.a_conn).unwrap().rto;
        }
        let now = net.now;
        net.a
            .send(
                now,
                pair.a_peer,
                1,
                payload(2000, i),
                &SendOptions::default(),
            )
            .unwrap();
        net.run_for(Duration::from_millis(5));
    }
    let times: Vec<_> = net
        .sent_by(Side::A)
        .filter(|s| s.at >= start && common::carries_stream(&s.transmit.data, 1))
        .map(|s| s.at)
        .collect();
    let longest = times
        .windows(2)
        .map(|w| w[1].saturating_since(w[0]))
        .max()
        .unwrap();
    (longest, rto)
}

#[test]
fn timeouts_probe_past_a_full_window_at_a_steady_period() {
    let (longest, rto) = longest_silence(config("client", 1));
    // The lost datagrams were sent over a round trip, so their timeouts expire one
    // after another and each sends a probe: measured 40 ms at most. Without the
    // probe, a timeout whose loss left the flight above the shrunk window sent
    // nothing (235 ms silences, 1.9 s with the timeout doubled).
    assert!(longest < rto / 2, "{longest:?} without data, rto {rto:?}");
}

#[test]
fn a_configured_backoff_still_spaces_the_probes() {
    let mut a = config("client", 1);
    a.rto.backoff_factor = 2.0;
    let (longest, rto) = longest_silence(a);
    // 0.97 s measured: 1 + 2 timeouts.
    assert!(longest >= rto * 3, "{longest:?} without data, rto {rto:?}");
}
