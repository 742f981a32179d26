//! Issue 5, bandwidth control: deterministic runs in virtual time of one bulk
//! transfer over a bandwidth-limited path, asserting the goodput and the
//! queue-overflow loss, the fixed-rate controller and the per-endpoint rate cap.
//! These are not timed tests: every figure is exact virtual time.

use std::time::Duration;

use atbus_core::{CongestionAlgorithm, EndpointConfig};
use atbus_sim::atbus::pair_with;
use atbus_sim::{LinkConfig, Report, Scenario, SizeRange, run};

/// Sends `messages` messages of 1000 bytes as fast as the transport takes them
/// over one path `spec`, both endpoints configured by `configure`.
fn bulk(spec: &str, messages: u64, configure: impl Fn(&mut EndpointConfig)) -> Report {
    let path: LinkConfig = spec.parse().expect("valid SPEC");
    let scenario = Scenario {
        paths: vec![path.clone()],
        messages,
        size: SizeRange {
            min: 1000,
            max: 1000,
        },
        interval: Duration::ZERO,
        streams: 1,
        echo: false,
        seed: 1,
        time_limit: Duration::from_secs(600),
    };
    let mut client = EndpointConfig::new("client", 1);
    let mut server = EndpointConfig::new("server", 2);
    configure(&mut client);
    configure(&mut server);
    let (c, s) = pair_with(&[path.mtu], client, server);
    let report = run(&scenario, c, s);
    assert_eq!(report.delivered, messages, "{report}");
    report
}

/// Payload goodput as a fraction of `link_bits_per_second`.
fn goodput(report: &Report, link_bits_per_second: f64) -> f64 {
    report.payload_bytes as f64 * 8.0 / (report.sim_duration_ms / 1000.0) / link_bits_per_second
}

/// Datagrams the client→server link dropped over those the client sent.
fn drop_rate(report: &Report) -> f64 {
    report.paths[0].link.dropped as f64 / report.paths[0].sent_packets as f64
}

#[test]
fn cubic_fills_bandwidth_limited_links_without_overflowing_their_queue() {
    for (spec, mbit) in [
        ("delay=20ms,bw=20mbit,queue=64kb", 20.0),
        ("delay=50ms,bw=10mbit,queue=32kb", 10.0),
        ("delay=10ms,bw=50mbit,queue=128kb", 50.0),
    ] {
        let report = bulk(spec, 20_000, |_| {});
        let (goodput, drops) = (goodput(&report, mbit * 1e6), drop_rate(&report));
        assert!(goodput >= 0.85, "{spec}: goodput {goodput:.3}\n{report}");
        assert!(drops < 0.02, "{spec}: queue drops {drops:.4}\n{report}");
    }
}

#[test]
fn one_percent_random_loss_does_not_collapse_the_window() {
    let report = bulk("delay=20ms,bw=20mbit,queue=64kb,loss=1%", 10_000, |_| {});
    let goodput = goodput(&report, 20e6);
    // Loss-based CUBIC halves its rate at every loss; reacting only to losses that
    // come with a queue or in bursts keeps 40 % and more (see docs/benchmarks.md).
    assert!(goodput >= 0.40, "goodput {goodput:.3}\n{report}");
    assert!(report.paths[0].cwnd_bytes >= 20 * 1200, "{report}");
}

/// The client's send rate in bytes per second over the run.
fn send_rate(report: &Report) -> f64 {
    report.paths[0].sent_bytes as f64 / (report.sim_duration_ms / 1000.0)
}

#[test]
fn a_fixed_rate_of_5_mbit_holds_within_5_percent_on_a_fast_link() {
    // 8000 messages at 5 Mbit/s: about 13 s of virtual time, well over 10 s.
    let report = bulk("delay=10ms,bw=100mbit,queue=256kb", 8_000, |c| {
        c.congestion_algorithm = "fixed:5mbit".parse().expect("valid");
    });
    assert!(report.sim_duration_ms >= 10_000.0, "{report}");
    let rate = send_rate(&report) / 625_000.0;
    assert!(
        (0.95..=1.05).contains(&rate),
        "rate {rate:.4} of 5 Mbit/s\n{report}"
    );
}

#[test]
fn the_endpoint_rate_cap_holds_cubic_below_it() {
    // A 2 Mbit/s cap on a 20 Mbit/s link: CUBIC alone would take the link.
    let report = bulk("delay=20ms,bw=20mbit,queue=64kb", 3_000, |c| {
        c.rate_limit = Some(250_000);
    });
    let rate = send_rate(&report) / 250_000.0;
    assert!(
        (0.9..=1.02).contains(&rate),
        "rate {rate:.4} of the cap\n{report}"
    );
    assert_eq!(report.paths[0].link.dropped, 0, "{report}");
    // The same run without the cap is much faster.
    let free = bulk("delay=20ms,bw=20mbit,queue=64kb", 3_000, |_| {});
    assert!(send_rate(&free) > 4.0 * 250_000.0, "{free}");
    assert_eq!(
        CongestionAlgorithm::default(),
        CongestionAlgorithm::Cubic,
        "the cap applies on top of the default controller"
    );
}

/// Two flows over one bottleneck, the second starting 2 s after the first; both
/// send 15 MB (15,000 messages of 1000 B, on streams 0 and 1: flow = stream % 2).
fn two_flows() -> Report {
    let path: LinkConfig = "delay=20ms,bw=20mbit,queue=64kb".parse().expect("valid");
    let scenario = Scenario {
        paths: vec![path.clone()],
        messages: 30_000,
        size: SizeRange {
            min: 1000,
            max: 1000,
        },
        interval: Duration::ZERO,
        streams: 2,
        echo: false,
        seed: 1,
        time_limit: Duration::from_secs(600),
    };
    let starts = [Duration::ZERO, Duration::from_secs(2)];
    let (c, s) = atbus_sim::flows::flows(&[path.mtu], &starts, |_| {});
    let report = run(&scenario, c, s);
    assert_eq!(report.delivered, 30_000, "{report}");
    report
}

#[test]
fn two_flows_share_one_bottleneck_and_fill_it() {
    let report = two_flows();
    assert_eq!(report.flows.len(), 2);
    assert!(
        report.flows.iter().all(|f| f.payload_bytes == 15_000_000),
        "{report}"
    );
    let total = goodput(&report, 20e6);
    assert!(total >= 0.85, "goodput {total:.3}\n{report}");
    assert!(drop_rate(&report) < 0.02, "{report}");
}

/// Issue 5's fairness target, NOT met yet: over its own span the first flow gets
/// 14.2 Mbit/s and the second 10.8 (ratio 0.76; 0.61 while both run). Run with
/// `--ignored` to check progress; see docs/benchmarks.md.
#[test]
#[ignore = "open: two CUBIC flows do not yet converge to within 20 % (docs/benchmarks.md)"]
fn two_flows_split_the_bottleneck_within_20_percent() {
    let report = two_flows();
    let [a, b] = [&report.flows[0], &report.flows[1]];
    let ratio = a.goodput_bps.min(b.goodput_bps) / a.goodput_bps.max(b.goodput_bps);
    assert!(ratio >= 0.8, "ratio {ratio:.3}\n{report}");
}
