//! atbus over the simulator: every message delivered exactly once, in order,
//! uncorrupted, whatever the link does.

use std::time::Duration;

use atbus_sim::atbus::pair;
use atbus_sim::{LinkConfig, Report, Scenario, SizeRange, run};

fn scenario(path: &str, messages: u64, size: (usize, usize), streams: u32, seed: u64) -> Scenario {
    Scenario {
        paths: vec![path.parse::<LinkConfig>().expect("valid spec")],
        messages,
        size: SizeRange {
            min: size.0,
            max: size.1,
        },
        interval: Duration::from_millis(5),
        streams,
        echo: false,
        seed,
        time_limit: Duration::from_secs(600),
    }
}

fn run_atbus(s: &Scenario) -> Report {
    let mtus: Vec<usize> = s.paths.iter().map(|p| p.mtu).collect();
    let (client, server) = pair(&mtus);
    run(s, client, server)
}

fn assert_perfect(report: &Report) {
    assert!(!report.timed_out, "timed out: {report}");
    assert_eq!(report.delivered, report.sent, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.out_of_order, 0, "{report}");
    assert_eq!(report.corrupted, 0, "{report}");
}

#[test]
fn fault_free_path_latency_is_exactly_the_one_way_delay() {
    let report = run_atbus(&scenario("delay=25ms", 100, (1000, 1000), 1, 1));
    assert_perfect(&report);
    assert_eq!(report.latency_ms.p50, 25.0, "{report}");
    assert_eq!(report.latency_ms.max, 25.0, "{report}");
}

#[test]
fn echo_latency_is_exactly_the_round_trip() {
    let mut s = scenario("delay=25ms", 50, (1, 3000), 2, 3);
    s.echo = true;
    let report = run_atbus(&s);
    assert_perfect(&report);
    assert_eq!(report.latency_ms.p50, 50.0, "{report}");
    assert_eq!(report.latency_ms.max, 50.0, "{report}");
}

#[test]
fn outage_longer_than_the_idle_timeout_recovers_by_reconnecting() {
    // 40 s down: both sides' connections time out (30 s idle), the client
    // reconnects, and the streams continue where they were.
    let mut s = scenario("delay=25ms,down=200ms-40200ms", 100, (100, 2000), 2, 11);
    s.interval = Duration::from_millis(10);
    let mtus: Vec<usize> = s.paths.iter().map(|p| p.mtu).collect();
    let (client, server) = pair(&mtus);
    let report = run(&s, client, server);
    assert_perfect(&report);
    assert!(report.latency_ms.max > 40_000.0, "{report}");
}

#[test]
fn burst_loss_and_every_fault_at_once() {
    for seed in 1..=4 {
        let spec = "delay=30ms,jitter=5ms,loss=15%,burst=4,dup=2%,reorder=3%,corrupt=1%,mtu=900";
        let report = run_atbus(&scenario(spec, 150, (0, 6000), 3, seed));
        assert_perfect(&report);
        assert!(report.paths[0].retransmits > 0, "{report}");
    }
}

#[test]
fn same_seed_same_report() {
    let s = scenario(
        "delay=20ms,jitter=5ms,loss=10%,reorder=2%",
        80,
        (0, 3000),
        2,
        99,
    );
    assert_eq!(run_atbus(&s).to_json(), run_atbus(&s).to_json());
}

#[test]
fn lossy_path_delivers_everything_in_order() {
    let report = run_atbus(&scenario("delay=25ms,loss=10%", 200, (0, 5000), 3, 7));
    assert_perfect(&report);
}

/// Packed fragments (and runs delivered as one event) over lossy, reordering,
/// bursty paths: every message once, in order, intact. Small messages sent all at
/// once, so datagrams hold packed runs whose losses are resent re-packed.
#[test]
fn packed_fragments_lost_and_resent_deliver_everything_in_order() {
    let packing = |name: &str, session| {
        let mut c = atbus_core::EndpointConfig::new(name, session);
        c.pack_messages = true;
        c.batch_events = true;
        c
    };
    for (path, seed) in [
        ("delay=20ms,loss=10%,reorder=5%", 3),
        ("delay=20ms,loss=3%,burst=4,dup=1%", 4),
    ] {
        let mut s = scenario(path, 3000, (0, 120), 3, seed);
        s.interval = Duration::ZERO;
        let mtus: Vec<usize> = s.paths.iter().map(|p| p.mtu).collect();
        let (client, server) =
            atbus_sim::atbus::pair_with(&mtus, packing("client", 1), packing("server", 2));
        let report = run(&s, client, server);
        assert_perfect(&report);
        let path = &report.paths[0];
        assert!(path.retransmits > 0, "{path:?}: nothing resent");
        // Packed: far fewer fragments than messages, retransmissions included.
        let fragments = report.stats.as_ref().unwrap().totals.fragments_sent;
        assert!(
            fragments * 4 < report.sent,
            "{fragments} fragments for {}",
            report.sent
        );
    }
}

mod random {
    use super::*;
    use atbus_sim::atbus::AtbusTransport;
    use atbus_sim::{Received, Transport, TransportStats, WouldBlock};
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Wraps a side and checks after every call that what it holds of received data
    /// stays within its configured limits.
    struct Checked(AtbusTransport);

    impl Checked {
        fn check(&self) {
            let endpoint = self.0.endpoint();
            let config = endpoint.config();
            let bound = config.peer_receive_limit + 3 * config.max_message_size;
            for connection in endpoint.connections() {
                let Some(peer) = endpoint.connection_info(connection).and_then(|c| c.peer) else {
                    continue;
                };
                let info = endpoint.peer_info(peer).expect("bound peer exists");
                assert!(
                    info.receive_buffered <= bound,
                    "{} bytes buffered, limit {bound}",
                    info.receive_buffered
                );
            }
        }
    }

    impl Transport for Checked {
        fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
            self.0.send(now, stream, payload)
        }
        fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
            self.0.handle_datagram(now, path, datagram);
            self.check();
        }
        fn handle_timeout(&mut self, now: Duration) {
            self.0.handle_timeout(now);
            self.check();
        }
        fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
            self.0.poll_transmit(now)
        }
        fn poll_received(&mut self) -> Option<Received> {
            self.0.poll_received()
        }
        fn next_timeout(&mut self) -> Option<Duration> {
            self.0.next_timeout()
        }
        fn stats(&self) -> TransportStats {
            self.0.stats()
        }
    }

    fn path_spec() -> impl Strategy<Value = String> {
        (
            1u64..100,
            0u64..20,
            0u32..=30,
            prop_oneof![Just(0u32), 2u32..6],
            0u32..=10,
            0u32..=10,
            0u32..=5,
            prop_oneof![Just(1200usize), 200usize..1500],
            proptest::option::of((0u64..5000, 100u64..3000)),
        )
            .prop_map(
                |(delay, jitter, loss, burst, dup, reorder, corrupt, mtu, outage)| {
                    let mut spec = format!(
                        "delay={delay}ms,jitter={jitter}ms,loss={loss}%,dup={dup}%,reorder={reorder}%,corrupt={corrupt}%,mtu={mtu}"
                    );
                    if burst > 0 && loss > 0 {
                        spec.push_str(&format!(",burst={burst}"));
                    }
                    if let Some((start, length)) = outage {
                        spec.push_str(&format!(",down={start}ms-{}ms", start + length));
                    }
                    spec
                },
            )
    }

    fn workload() -> impl Strategy<Value = (u64, (usize, usize))> {
        prop_oneof![
            (1u64..200, Just((0usize, 64usize))),
            (1u64..100, Just((0usize, 4000usize))),
            (1u64..8, Just((0usize, 256 * 1024usize))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// Whatever the link does, every message arrives exactly once, in order,
        /// uncorrupted, and receive buffers stay within their limits.
        #[test]
        fn every_message_exactly_once_in_order(
            spec in path_spec(),
            (messages, size) in workload(),
            streams in 1u32..5,
            interval in 0u64..20,
            echo in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut s = scenario(&spec, messages, size, streams, seed);
            s.interval = Duration::from_millis(interval);
            s.echo = echo;
            s.time_limit = Duration::from_secs(3600);
            let mtus: Vec<usize> = s.paths.iter().map(|p| p.mtu).collect();
            let (client, server) = pair(&mtus);
            let report = run(&s, Checked(client), Checked(server));
            prop_assert!(!report.timed_out, "{spec}: {report}");
            prop_assert_eq!(report.delivered, report.sent, "{}: {}", spec, report);
            prop_assert_eq!(report.duplicates, 0);
            prop_assert_eq!(report.out_of_order, 0);
            prop_assert_eq!(report.corrupted, 0);
        }

        /// Two to four paths of mixed MTUs, each with its own faults and outages
        /// (a path may fail for a while), under every scheduler: every message
        /// arrives exactly once, in order, uncorrupted.
        #[test]
        fn multi_path_every_message_exactly_once_in_order(
            specs in proptest::collection::vec(
                (path_spec(), prop_oneof![Just(548usize), Just(1232), Just(1400), Just(65000)]),
                2..=4,
            ),
            (messages, size) in workload(),
            streams in 1u32..5,
            interval in 0u64..20,
            scheduler in prop_oneof![
                Just(atbus_core::Scheduler::MinRtt),
                Just(atbus_core::Scheduler::RoundRobin),
                Just(atbus_core::Scheduler::Redundant),
            ],
            seed in any::<u64>(),
        ) {
            let specs: Vec<String> = specs
                .into_iter()
                .map(|(spec, mtu)| {
                    // The path's own MTU draw replaces the single-path one.
                    let base: Vec<&str> =
                        spec.split(',').filter(|kv| !kv.starts_with("mtu=")).collect();
                    format!("{},mtu={mtu}", base.join(","))
                })
                .collect();
            let mut s = scenario(&specs[0], messages, size, streams, seed);
            s.paths = specs.iter().map(|spec| spec.parse().expect("valid spec")).collect();
            s.interval = Duration::from_millis(interval);
            s.time_limit = Duration::from_secs(3600);
            let mtus: Vec<usize> = s.paths.iter().map(|p| p.mtu).collect();
            let (client, server) = atbus_sim::atbus::pair_scheduled(&mtus, scheduler);
            let report = run(&s, Checked(client), Checked(server));
            prop_assert!(!report.timed_out, "{specs:?} {scheduler:?}: {report}");
            prop_assert_eq!(report.delivered, report.sent, "{:?} {:?}: {}", specs, scheduler, report);
            prop_assert_eq!(report.duplicates, 0);
            prop_assert_eq!(report.out_of_order, 0);
            prop_assert_eq!(report.corrupted, 0);
        }
    }
}

#[test]
fn the_report_carries_the_client_endpoints_windowed_statistics() {
    let scenario = Scenario {
        paths: vec!["delay=20ms,loss=5%".parse().unwrap()],
        messages: 2000,
        interval: Duration::from_millis(5),
        ..Scenario::default()
    };
    let report = run_scenario(&scenario);
    assert_eq!(report.delivered, 2000);
    let stats = report.stats.expect("atbus keeps statistics");
    assert_eq!(
        stats.windows.keys().cloned().collect::<Vec<_>>(),
        ["15s", "1s", "5s", "60s"]
    );
    let w60 = &stats.windows["60s"];
    assert!(w60.packets_sent > 1000, "{w60:?}");
    let loss = w60.loss_rate.unwrap();
    assert!((0.01..0.15).contains(&loss), "{loss}");
    assert!(w60.avg_rtt_ms.unwrap() >= 40.0);
    assert_eq!(
        stats.histogram.edges_ms.len() + 1,
        stats.histogram.counts.len()
    );
    // RTT samples of a 40 ms round trip fall in the 30–45 and 45–60 buckets.
    let total: u64 = stats.histogram.counts.iter().sum();
    assert!(total > 0);
    assert_eq!(stats.histogram.counts[0] + stats.histogram.counts[1], 0);
    let json = report_json(&scenario);
    assert!(json.contains(r#""windows":{"15s""#), "{json}");
    assert!(json.contains(r#""edges_ms":[15,30,45"#), "{json}");
}

fn report_json(scenario: &Scenario) -> String {
    run_scenario(scenario).to_json()
}

fn run_scenario(scenario: &Scenario) -> Report {
    let mtus: Vec<usize> = scenario.paths.iter().map(|p| p.mtu).collect();
    let (client, server) = pair(&mtus);
    run(scenario, client, server)
}

fn two_paths(fast: &str, slow: &str, scheduler: atbus_core::Scheduler) -> Report {
    let scenario = Scenario {
        paths: vec![fast.parse().unwrap(), slow.parse().unwrap()],
        messages: 3000,
        size: SizeRange {
            min: 200,
            max: 1200,
        },
        interval: Duration::from_millis(2),
        streams: 3,
        seed: 11,
        ..Scenario::default()
    };
    let mtus: Vec<usize> = scenario.paths.iter().map(|p| p.mtu).collect();
    let (c, s) = atbus_sim::atbus::pair_scheduled(&mtus, scheduler);
    run(&scenario, c, s)
}

#[test]
fn min_rtt_keeps_a_light_flow_on_the_faster_path() {
    let report = two_paths(
        "delay=10ms,loss=1%",
        "delay=60ms,mtu=548",
        atbus_core::Scheduler::MinRtt,
    );
    assert_eq!(report.delivered, 3000, "{report}");
    assert_eq!(
        (report.duplicates, report.out_of_order, report.corrupted),
        (0, 0, 0)
    );
    let (fast, slow) = (&report.paths[0], &report.paths[1]);
    assert!(
        fast.sent_packets > 10 * slow.sent_packets,
        "fast {} vs slow {}",
        fast.sent_packets,
        slow.sent_packets
    );
    // Round robin spreads the same flow over both.
    let rr = two_paths(
        "delay=10ms,loss=1%",
        "delay=60ms,mtu=548",
        atbus_core::Scheduler::RoundRobin,
    );
    assert_eq!(rr.delivered, 3000, "{rr}");
    assert!(
        rr.paths[1].sent_packets * 5 > rr.paths[0].sent_packets,
        "{rr}"
    );
    assert!(
        report.latency_ms.p99 < rr.latency_ms.p99,
        "{report} vs {rr}"
    );
}

#[test]
fn min_rtt_fails_over_during_an_outage_of_the_faster_path_and_comes_back() {
    let report = two_paths(
        "delay=10ms,down=1s-3s",
        "delay=40ms",
        atbus_core::Scheduler::MinRtt,
    );
    assert_eq!(report.delivered, 3000, "{report}");
    assert_eq!(
        (report.duplicates, report.out_of_order, report.corrupted),
        (0, 0, 0)
    );
    // The slow path carried the outage's traffic: about a third of the run.
    let (fast, slow) = (&report.paths[0], &report.paths[1]);
    assert!(slow.sent_packets > 200, "{report}");
    assert!(fast.sent_packets > slow.sent_packets, "{report}");
    // Nobody waited for the outage to end: a message waits at most a few RTOs.
    assert!(report.latency_ms.max < 1000.0, "{report}");
}

#[test]
fn redundant_over_two_lossy_paths_keeps_p99_near_the_faster_one_way_delay() {
    for seed in [1u64, 2, 3] {
        let scenario = Scenario {
            paths: vec![
                "delay=20ms,loss=2%".parse().unwrap(),
                "delay=21ms,loss=2%,mtu=548".parse().unwrap(),
            ],
            messages: 3000,
            size: SizeRange { min: 50, max: 800 },
            interval: Duration::from_millis(5),
            streams: 2,
            seed,
            ..Scenario::default()
        };
        let mtus: Vec<usize> = scenario.paths.iter().map(|p| p.mtu).collect();
        let (c, s) = atbus_sim::atbus::pair_scheduled(&mtus, atbus_core::Scheduler::Redundant);
        let report = run(&scenario, c, s);
        assert_eq!(report.delivered, 3000, "{report}");
        assert_eq!(
            (report.duplicates, report.out_of_order, report.corrupted),
            (0, 0, 0),
            "{report}"
        );
        // Within 1.1 × the faster path's one-way delay: a message lost on one path
        // arrives by the other, without waiting for a retransmission.
        assert!(report.latency_ms.p99 <= 22.0, "seed {seed}: {report}");
        // Both paths carried (about) everything.
        let (a, b) = (&report.paths[0], &report.paths[1]);
        assert!(
            a.sent_packets * 3 > b.sent_packets && b.sent_packets * 3 > a.sent_packets,
            "{report}"
        );
    }
}
