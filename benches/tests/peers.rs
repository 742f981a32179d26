//! The peer drivers deliver what the workload sends, exactly once and in order, on
//! lossy paths; runs repeat; `netsim-compare --json` prints the same fields for all
//! three transports.

use std::process::Command;
use std::time::Duration;

use atbus_benches::compare::{self, Peer, Settings};
use atbus_benches::kcp::{KcpConfig, KcpTransport};
use atbus_sim::{Report, Scenario, SizeRange};

fn lossy(echo: bool) -> Scenario {
    Scenario {
        paths: vec![
            "delay=20ms,jitter=10ms,loss=5%,reorder=2%,dup=1%"
                .parse()
                .unwrap(),
        ],
        messages: 300,
        // From one byte to three KCP segments / QUIC packets.
        size: SizeRange { min: 8, max: 3000 },
        interval: Duration::from_millis(5),
        streams: 3,
        echo,
        seed: 7,
        time_limit: Duration::from_secs(120),
    }
}

fn assert_perfect(report: &Report) {
    assert_eq!(report.delivered, report.sent, "{report}");
    assert_eq!(report.sent, 300, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert_eq!(report.out_of_order, 0, "{report}");
    assert_eq!(report.corrupted, 0, "{report}");
    assert_eq!(report.stalls, 0, "{report}");
    assert!(!report.timed_out, "{report}");
}

fn run(peer: Peer, scenario: &Scenario) -> compare::Outcome {
    compare::run(peer, scenario, &Settings::default()).unwrap()
}

#[test]
fn kcp_delivers_everything_once_and_in_order_on_a_lossy_path() {
    for echo in [false, true] {
        let outcome = run(Peer::Kcp, &lossy(echo));
        assert_perfect(&outcome.report);
        assert!(outcome.report.paths[0].retransmits > 0);
        assert_eq!(outcome.latencies.len(), 300);
    }
}

#[test]
fn quinn_delivers_everything_once_and_in_order_on_a_lossy_path() {
    for echo in [false, true] {
        let outcome = run(Peer::Quinn, &lossy(echo));
        assert_perfect(&outcome.report);
        assert!(outcome.report.paths[0].lost_packets > 0);
        assert_eq!(outcome.latencies.len(), 300);
    }
}

#[test]
fn timed_latencies_agree_with_the_report() {
    for peer in Peer::ALL {
        let outcome = run(peer, &lossy(true));
        let summary = atbus_sim::LatencySummary::from_latencies(&outcome.latencies);
        assert_eq!(summary, outcome.report.latency_ms, "{}", peer.name());
    }
}

#[test]
fn kcp_runs_repeat_exactly() {
    let a = run(Peer::Kcp, &lossy(true)).report;
    let b = run(Peer::Kcp, &lossy(true)).report;
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn quinn_runs_repeat_in_everything_the_report_counts() {
    // rustls draws its key shares from the system, but their sizes are fixed, so
    // the datagrams and the whole run repeat.
    let a = run(Peer::Quinn, &lossy(true)).report;
    let b = run(Peer::Quinn, &lossy(true)).report;
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn kcp_drops_and_counts_messages_above_127_segments() {
    let scenario = Scenario {
        messages: 4,
        size: SizeRange::fixed(KcpTransport::new(1200, KcpConfig::TURBO).max_message_size() + 1),
        ..Scenario::default()
    };
    let outcome = run(Peer::Kcp, &scenario);
    assert_eq!(outcome.oversized, 4);
    assert_eq!(outcome.report.delivered, 0);
    let fits = Scenario {
        size: SizeRange::fixed(KcpTransport::new(1200, KcpConfig::TURBO).max_message_size()),
        ..scenario
    };
    let outcome = run(Peer::Kcp, &fits);
    assert_eq!((outcome.oversized, outcome.report.delivered), (0, 4));
}

#[test]
fn quinn_refuses_paths_below_the_quic_minimum() {
    let scenario = Scenario {
        paths: vec!["mtu=1000".parse().unwrap()],
        ..Scenario::default()
    };
    assert!(compare::run(Peer::Quinn, &scenario, &Settings::default()).is_err());
}

/// The keys of a JSON object, and of the objects in it, as `a.b` paths.
fn keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = format!("{prefix}{key}");
                out.push(path.clone());
                keys(value, &format!("{path}."), out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                keys(item, &format!("{prefix}[]."), out);
            }
        }
        _ => {}
    }
}

#[test]
fn netsim_compare_json_has_the_same_fields_for_all_three() {
    let mut shapes = Vec::new();
    for peer in Peer::ALL {
        let output = Command::new(env!("CARGO_BIN_EXE_netsim-compare"))
            .args(["--transport", peer.name(), "--path", "delay=10ms,loss=2%"])
            .args([
                "--messages",
                "50",
                "--size",
                "100",
                "--interval",
                "2ms",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}: {output:?}", peer.name());
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["delivered"], 50, "{}", peer.name());
        let mut fields = Vec::new();
        keys(&json, "", &mut fields);
        // `stats` is atbus's own windowed statistics: an object for atbus, null for
        // the peers; its inner keys are left out of the comparison.
        fields.retain(|f| !f.starts_with("stats."));
        fields.sort();
        fields.dedup();
        shapes.push((peer, fields));
    }
    for (peer, fields) in &shapes[1..] {
        assert_eq!(fields, &shapes[0].1, "{} vs atbus", peer.name());
    }
}

#[test]
fn netsim_compare_refuses_an_unknown_transport() {
    let output = Command::new(env!("CARGO_BIN_EXE_netsim-compare"))
        .args(["--transport", "tcp"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn netsim_compare_atbus_prints_what_atbus_sim_computes() {
    let output = Command::new(env!("CARGO_BIN_EXE_netsim-compare"))
        .args(["--transport", "atbus", "--path", "delay=10ms,loss=2%"])
        .args(["--messages", "80", "--size", "10-2000", "--interval", "3ms"])
        .args(["--streams", "2", "--echo", "--seed", "5", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let scenario = Scenario {
        paths: vec!["delay=10ms,loss=2%".parse().unwrap()],
        messages: 80,
        size: SizeRange { min: 10, max: 2000 },
        interval: Duration::from_millis(3),
        streams: 2,
        echo: true,
        seed: 5,
        ..Scenario::default()
    };
    let (client, server) = atbus_sim::atbus::pair(&[1200]);
    let expected = atbus_sim::run(&scenario, client, server).to_json();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim_end(),
        expected
    );
}

/// p99 and max of the pooled latencies (nearest rank, as `--table`).
fn pooled_tail(
    peer: Peer,
    scenario: &Scenario,
    seeds: std::ops::RangeInclusive<u64>,
) -> (Duration, Duration) {
    let mut all = Vec::new();
    for seed in seeds {
        let outcome = run(
            peer,
            &Scenario {
                seed,
                ..scenario.clone()
            },
        );
        assert_eq!(
            outcome.report.delivered, outcome.report.sent,
            "{}",
            outcome.report
        );
        all.extend(outcome.latencies);
    }
    all.sort_unstable();
    let rank = (all.len() * 99).div_ceil(100).max(1) - 1;
    (all[rank], all[all.len() - 1])
}

/// `scenario` with seeds `seeds`: atbus's pooled p99 (and max, with `max_too`) is
/// below KCP turbo's and quinn's.
fn assert_atbus_tail_below_the_peers(
    scenario: &Scenario,
    seeds: std::ops::RangeInclusive<u64>,
    max_too: bool,
) {
    let atbus = pooled_tail(Peer::Atbus, scenario, seeds.clone());
    for peer in [Peer::Kcp, Peer::Quinn] {
        let other = pooled_tail(peer, scenario, seeds.clone());
        assert!(
            atbus.0 < other.0,
            "p99 {atbus:?} vs {peer:?} {other:?} on {:?}",
            scenario.paths
        );
        assert!(
            !max_too || atbus.1 < other.1,
            "max {atbus:?} vs {peer:?} {other:?} on {:?}",
            scenario.paths
        );
    }
}

/// One path `path`, `messages` messages of 100–1000 B every 10 ms on one stream,
/// not echoed, seed 1.
fn varied_sizes(path: &str, messages: u64) -> Scenario {
    Scenario {
        paths: vec![path.parse().unwrap()],
        messages,
        size: SizeRange {
            min: 100,
            max: 1000,
        },
        interval: Duration::from_millis(10),
        streams: 1,
        echo: false,
        seed: 1,
        time_limit: Duration::from_secs(600),
    }
}

/// Scenario (c) of docs/comparison.md scaled down (1500 messages, 4 seeds): on a
/// link losing datagrams in bursts, atbus's tail stays below KCP turbo's and
/// quinn's. With the timeout doubled per consecutive timeout (RFC 6298) and no
/// probe past the congestion window after a timeout, atbus's pooled p99 / max here
/// were 606.9 / 945.3 ms against KCP's 148.9 / 437.7 ms.
#[test]
fn atbus_tail_is_below_kcp_and_quinn_on_bursty_loss() {
    let scenario = varied_sizes("delay=25ms,jitter=20ms,loss=2%,burst=3", 1500);
    assert_atbus_tail_below_the_peers(&scenario, 1..=4, true);
}

/// Scenarios (a) and (b) of docs/comparison.md scaled down (1500 messages, seeds
/// 1–4): atbus's pooled p99 is below KCP turbo's and quinn's on KCP's own test (10 %
/// round-trip loss, 8 B echoed every 20 ms) and on the typical network (0.2 % loss,
/// 50–90 ms RTT). With a reordering window of a quarter of the minimum RTT or the
/// RTT variance on a path that never reorders, widened by retransmissions the
/// timeout made spuriously, atbus's p99 here were 354.8 ms in (a) (quinn 344.7)
/// and 74.3 ms in (b) (KCP 68.6). In (a) the maximum is asserted too: a message
/// whose retransmission was lost as well waited for another round trip each time
/// (seed 1, message 115: 536.0 ms, KCP 531.7); a retransmission now leaves twice after an
/// isolated loss (389.6 ms here in release). In (b) it is not: quinn's is
/// lower at this scale (124.1 against 132.9 ms), see docs/comparison.md.
#[test]
fn atbus_p99_is_below_kcp_and_quinn_on_kcps_test_and_the_typical_network() {
    let a = Scenario {
        paths: vec!["delay=30ms,jitter=32.5ms,loss=5%".parse().unwrap()],
        messages: 1500,
        size: SizeRange { min: 8, max: 8 },
        interval: Duration::from_millis(20),
        streams: 1,
        echo: true,
        seed: 1,
        time_limit: Duration::from_secs(600),
    };
    let b = varied_sizes("delay=25ms,jitter=20ms,loss=0.2%", 1500);
    for (scenario, max_too) in [(a, true), (b, false)] {
        assert_atbus_tail_below_the_peers(&scenario, 1..=4, max_too);
    }
}

/// A cell of `benches/netsim-sweep.sh` (5 ms one way, 10 % loss, 100–1000 B every
/// 10 ms, seeds 1–5, 1000 messages): atbus's pooled p99 and max are below KCP
/// turbo's and quinn's. One seed loses its first hello; while the timeout before
/// the first RTT sample was 600 ms (200 ms initial RTT + 4 × 100 ms), every message
/// of those 600 ms waited for the retry: p99 / max 115 / 605 ms against KCP's
/// 65 / 165 (KCP has no handshake). The retry now leaves after 100 ms: 29 / 105.
#[test]
fn a_lost_hello_does_not_make_the_tail_on_a_short_lossy_path() {
    let scenario = varied_sizes("delay=5ms,loss=10%", 1000);
    assert_atbus_tail_below_the_peers(&scenario, 1..=5, true);
}
