//! Deterministic behaviour of a link: delay, jitter, MTU, outages, bandwidth and
//! queue, seeding, and config validation.

mod common;

use std::time::Duration;

use atbus_sim::{ConfigError, DropReason, Fate, Link, LinkConfig};
use bytes::Bytes;
use common::{drain, evenly_spaced, index_of, numbered, run};

const MS: Duration = Duration::from_millis(1);

fn new_link(spec: &str, seed: u64) -> Link {
    Link::new(spec.parse().expect("valid spec"), seed).expect("valid config")
}

#[test]
fn fault_free_link_delivers_every_datagram_after_exactly_the_delay_in_order() {
    let mut link = new_link("delay=30ms", 1);
    let sends: Vec<_> = evenly_spaced(1000, Duration::from_micros(700), 100).collect();
    let delivered = run(&mut link, sends.clone());
    assert_eq!(delivered.len(), sends.len());
    for ((sent_at, sent), (arrived_at, got)) in sends.iter().zip(&delivered) {
        assert_eq!(*arrived_at, *sent_at + 30 * MS);
        assert_eq!(got, sent);
    }
    let stats = link.stats();
    assert_eq!(stats.sent_datagrams, 1000);
    assert_eq!(stats.delivered_datagrams, 1000);
    assert_eq!(stats.delivered_bytes, stats.sent_bytes);
    assert_eq!(stats.dropped_total(), 0);
}

#[test]
fn fate_announces_the_instant_of_delivery() {
    let mut link = new_link("delay=10ms,jitter=3ms,bw=1mbit", 5);
    let fate = link.send(2 * MS, numbered(0, 500));
    let Fate::InFlight { arrival } = fate else {
        panic!("fault-free link dropped a datagram: {fate:?}")
    };
    assert_eq!(link.next_delivery(), Some(arrival));
    assert_eq!(link.poll_delivery(arrival - Duration::from_nanos(1)), None);
    assert_eq!(link.poll_delivery(arrival), Some(numbered(0, 500)));
    assert_eq!(link.next_delivery(), None);
    assert_eq!(link.in_flight(), 0);
}

#[test]
fn datagrams_arriving_together_come_out_in_send_order() {
    let mut link = new_link("delay=5ms", 3);
    for i in 0..5 {
        link.send(MS, numbered(i, 10));
    }
    let mut out = Vec::new();
    drain(&mut link, 6 * MS, &mut out);
    let order: Vec<u32> = out.iter().map(|(_, d)| index_of(d)).collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
}

#[test]
fn jitter_alone_never_reorders_and_stays_within_delay_plus_jitter() {
    let mut link = new_link("delay=25ms,jitter=10ms", 11);
    let sends: Vec<_> = evenly_spaced(20_000, MS, 64).collect();
    let delivered = run(&mut link, sends.clone());
    assert_eq!(delivered.len(), sends.len());
    let mut previous = Duration::ZERO;
    let mut pushed_back = 0;
    for ((sent_at, sent), (arrived_at, got)) in sends.iter().zip(&delivered) {
        assert_eq!(got, sent, "jitter reordered");
        // Pushing back to the previous arrival cannot exceed the bound either, since
        // that one left earlier with the same bound.
        assert!(*arrived_at >= *sent_at + 25 * MS && *arrived_at <= *sent_at + 35 * MS);
        pushed_back += usize::from(*arrived_at == previous);
        previous = *arrived_at;
    }
    assert!(
        pushed_back > 1000,
        "1 ms spacing under 10 ms jitter must hit the rule"
    );
    let delays: Vec<Duration> = sends
        .iter()
        .zip(&delivered)
        .map(|((s, _), (a, _))| *a - *s)
        .collect();
    assert!(delays.iter().any(|d| *d < 26 * MS));
    assert!(delays.iter().any(|d| *d > 34 * MS));
}

#[test]
fn jitter_push_back_holds_a_datagram_behind_its_predecessor() {
    // Back-to-back sends: each draws its own jitter but must wait for the previous.
    let mut link = new_link("delay=25ms,jitter=10ms", 12);
    let sends: Vec<_> = (0..1000)
        .map(|i| (Duration::ZERO, numbered(i, 64)))
        .collect();
    let delivered = run(&mut link, sends);
    let order: Vec<u32> = delivered.iter().map(|(_, d)| index_of(d)).collect();
    assert_eq!(order, (0..1000).collect::<Vec<_>>());
    assert!(delivered.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(
        delivered
            .iter()
            .all(|(at, _)| *at >= 25 * MS && *at <= 35 * MS)
    );
}

#[test]
fn the_mtu_changes_at_the_instants_of_mtu_at() {
    let mut link = new_link("mtu=1400,mtu_at=10ms:1200", 1);
    assert!(matches!(
        link.send(MS, numbered(0, 1400)),
        Fate::InFlight { .. }
    ));
    assert_eq!(
        link.send(10 * MS, numbered(1, 1201)),
        Fate::Dropped(DropReason::Mtu)
    );
    assert!(matches!(
        link.send(10 * MS, numbered(2, 1200)),
        Fate::InFlight { .. }
    ));
}

#[test]
fn datagram_larger_than_the_mtu_is_dropped_and_counted() {
    let mut link = new_link("mtu=1200", 1);
    assert!(matches!(
        link.send(MS, numbered(0, 1200)),
        Fate::InFlight { .. }
    ));
    assert_eq!(
        link.send(MS, numbered(1, 1201)),
        Fate::Dropped(DropReason::Mtu)
    );
    assert_eq!(link.stats().dropped(DropReason::Mtu), 1);
    assert_eq!(link.stats().sent_datagrams, 2);
    assert_eq!(link.in_flight(), 1);
}

#[test]
fn datagram_sent_during_an_outage_is_dropped() {
    let mut link = new_link("delay=25ms,down=1s-2s", 1);
    let at = |ms| Duration::from_millis(ms);
    assert_eq!(
        link.send(at(1000), numbered(0, 10)),
        Fate::Dropped(DropReason::Outage)
    );
    assert_eq!(
        link.send(at(1999), numbered(1, 10)),
        Fate::Dropped(DropReason::Outage)
    );
    assert_eq!(
        link.send(at(2000), numbered(2, 10)),
        Fate::InFlight { arrival: at(2025) }
    );
    assert_eq!(link.stats().dropped_outage, 2);
}

#[test]
fn datagram_in_flight_when_an_outage_starts_is_lost() {
    let mut link = new_link("delay=25ms,down=1s-2s,down=3s-3.01s", 1);
    let at = |ms| Duration::from_millis(ms);
    // Arrives before the outage: delivered.
    assert_eq!(
        link.send(at(974), numbered(0, 10)),
        Fate::InFlight { arrival: at(999) }
    );
    // Would arrive inside the outage.
    assert_eq!(
        link.send(at(980), numbered(1, 10)),
        Fate::Dropped(DropReason::Outage)
    );
    // The 10 ms outage at 3 s falls entirely within this one's flight.
    assert_eq!(
        link.send(at(2990), numbered(2, 10)),
        Fate::Dropped(DropReason::Outage)
    );
    let delivered = run(&mut link, []);
    assert_eq!(delivered.len(), 1);
    assert_eq!(index_of(&delivered[0].1), 0);
}

#[test]
fn bottleneck_spaces_a_burst_by_its_serialization_time() {
    // 1000 bytes at 1 Mbit/s take 8 ms.
    let mut link = new_link("delay=20ms,bw=1mbit,queue=1mb", 1);
    let fates: Vec<Fate> = (0..10).map(|i| link.send(MS, numbered(i, 1000))).collect();
    for (k, fate) in fates.iter().enumerate() {
        let departure = MS + 8 * MS * (k as u32 + 1);
        assert_eq!(
            *fate,
            Fate::InFlight {
                arrival: departure + 20 * MS
            }
        );
    }
    // An idle bottleneck serializes from the send instant.
    let later = Duration::from_secs(1);
    assert_eq!(
        link.send(later, numbered(10, 125)),
        Fate::InFlight {
            arrival: later + MS + 20 * MS
        }
    );
}

#[test]
fn full_queue_tail_drops_until_a_datagram_departs() {
    let mut link = new_link("delay=20ms,bw=1mbit,queue=4000", 1);
    for i in 0..4 {
        assert!(matches!(
            link.send(Duration::ZERO, numbered(i, 1000)),
            Fate::InFlight { .. }
        ));
    }
    let overflow = Fate::Dropped(DropReason::QueueOverflow);
    assert_eq!(link.send(Duration::ZERO, numbered(4, 1000)), overflow);
    // Just before the first departure (8 ms) the queue is still full ...
    assert_eq!(
        link.send(8 * MS - Duration::from_nanos(1), numbered(5, 1000)),
        overflow
    );
    // ... and at it there is room for exactly one more, departing after the other three.
    assert_eq!(
        link.send(8 * MS, numbered(6, 1000)),
        Fate::InFlight {
            arrival: 40 * MS + 20 * MS
        }
    );
    assert_eq!(link.send(8 * MS, numbered(7, 1),), overflow);
    assert_eq!(link.stats().dropped_queue_overflow, 3);
}

#[test]
fn long_run_throughput_equals_the_bottleneck_rate_exactly() {
    // 1000 bytes at 3 Mbit/s take 8/3 ms: not a whole number of nanoseconds, yet 3000
    // of them take exactly 8 s.
    let mut link = new_link("delay=10ms,bw=3mbit,queue=10mb", 1);
    let mut last = Fate::Dropped(DropReason::Loss);
    for i in 0..3000 {
        last = link.send(Duration::ZERO, numbered(i, 1000));
    }
    assert_eq!(
        last,
        Fate::InFlight {
            arrival: Duration::from_secs(8) + 10 * MS
        }
    );

    // Offered at twice the rate for 10 s, the link carries the rate and drops the rest.
    let mut link = new_link("delay=10ms,bw=3mbit,queue=64kb", 2);
    let sends = evenly_spaced(7500, Duration::from_nanos(1_333_333), 1000);
    let delivered = run(&mut link, sends);
    let window = Duration::from_secs(10);
    let bits: usize = delivered
        .iter()
        .filter(|(at, _)| *at <= window)
        .map(|(_, d)| d.len() * 8)
        .sum();
    let rate = bits as f64 / window.as_secs_f64();
    common::assert_near("throughput bit/s", rate, 3e6, 3e6 * 0.002);
    assert!(link.stats().dropped_queue_overflow > 3000);
}

fn faulty_trace(seed: u64) -> Vec<(Duration, Bytes)> {
    let spec = "delay=20ms,jitter=4ms,loss=3%,burst=2,dup=2%,reorder=3%,corrupt=2%,bw=5mbit,queue=8kb,down=1s-1.2s";
    let mut link = new_link(spec, seed);
    run(
        &mut link,
        evenly_spaced(3000, Duration::from_micros(900), 700),
    )
}

#[test]
fn same_seed_gives_the_same_trace_and_another_seed_a_different_one() {
    let first = faulty_trace(42);
    assert_eq!(first, faulty_trace(42));
    assert_ne!(first, faulty_trace(43));
}

#[test]
fn invalid_configs_are_rejected_at_construction() {
    let base = LinkConfig::default;
    let cases = [
        (
            LinkConfig {
                loss: 1.5,
                ..base()
            },
            "loss",
        ),
        (
            LinkConfig {
                dup: f64::NAN,
                ..base()
            },
            "dup",
        ),
        (
            LinkConfig {
                reorder: -0.1,
                ..base()
            },
            "reorder",
        ),
        (
            LinkConfig {
                corrupt: 2.0,
                ..base()
            },
            "corrupt",
        ),
        (LinkConfig { mtu: 0, ..base() }, "mtu"),
        (
            LinkConfig {
                bandwidth_bps: Some(0),
                ..base()
            },
            "bandwidth",
        ),
        (
            LinkConfig {
                burst: Some(0.5),
                ..base()
            },
            "burst",
        ),
        (
            LinkConfig {
                burst: Some(f64::INFINITY),
                ..base()
            },
            "burst",
        ),
        (
            LinkConfig {
                loss: 1.0,
                burst: Some(3.0),
                ..base()
            },
            "loss",
        ),
        (
            LinkConfig {
                loss: 0.7,
                burst: Some(2.0),
                ..base()
            },
            "loss",
        ),
        (
            LinkConfig {
                outages: vec![(MS, MS)],
                ..base()
            },
            "outage",
        ),
    ];
    for (config, word) in cases {
        let err = Link::new(config.clone(), 1).expect_err(&format!("{config:?} is invalid"));
        assert!(err.to_string().contains(word), "{err} should name {word}");
    }
    assert!(matches!(
        LinkConfig { mtu: 0, ..base() }.validate(),
        Err(ConfigError::ZeroMtu)
    ));
    assert!(
        LinkConfig {
            loss: 2.0 / 3.0,
            burst: Some(2.0),
            ..base()
        }
        .validate()
        .is_ok()
    );
}
