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
    // come with a queue or in bursts of 4 and 5 % keeps 84 % here (48.6 % when 3
    // losses and 2 % made a burst; see docs/benchmarks.md).
    assert!(goodput >= 0.75, "goodput {goodput:.3}\n{report}");
    assert!(report.paths[0].cwnd_bytes >= 20 * 1200, "{report}");
}

/// Delay jitter is not a queue: the standing-queue signal uses the least RTT of
/// each half round trip, so a jittery path still fills (a per-sample signal cut
/// the window at every high sample: 10 MB took 75 s on the first path here).
#[test]
fn jitter_does_not_pass_for_a_standing_queue() {
    // Jitter comparable to the standing-queue threshold (5 ms on a 20 ms RTT)
    // still costs a fifth of the throughput: the signal is then off only by its
    // RTT-variance guard (docs/congestion.md).
    for (spec, least) in [
        ("delay=25ms,jitter=20ms,bw=20mbit,queue=256kb", 0.85),
        ("delay=10ms,jitter=2ms,bw=20mbit,queue=64kb", 0.85),
        ("delay=10ms,jitter=5ms,bw=20mbit,queue=64kb", 0.70),
    ] {
        let report = bulk(spec, 5_000, |_| {});
        assert_eq!(report.delivered, 5_000, "{spec}\n{report}");
        let g = goodput(&report, 20e6);
        assert!(g >= least, "{spec}: goodput {g:.3}\n{report}");
    }
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

/// `n` flows over one path `spec`, flow `i` starting `i × stagger` after the first,
/// each sending `per_flow` messages of 1000 B (stream s on flow s % n). Returns the
/// report and the smallest over the largest per-flow goodput, each flow's goodput
/// being over its own first-to-last delivery.
fn flows_run(spec: &str, n: u32, stagger: Duration, per_flow: u64) -> (Report, f64) {
    let path: LinkConfig = spec.parse().expect("valid SPEC");
    let scenario = Scenario {
        paths: vec![path.clone()],
        messages: per_flow * u64::from(n),
        size: SizeRange {
            min: 1000,
            max: 1000,
        },
        interval: Duration::ZERO,
        streams: n,
        echo: false,
        seed: 1,
        time_limit: Duration::from_secs(600),
    };
    let starts: Vec<Duration> = (0..n).map(|i| stagger * i).collect();
    let (c, s) = atbus_sim::flows::flows(&[path.mtu], &starts, |_| {});
    let report = run(&scenario, c, s);
    assert_eq!(report.delivered, scenario.messages, "{report}");
    assert_eq!(report.flows.len(), n as usize);
    let rates: Vec<f64> = report.flows.iter().map(|f| f.goodput_bps).collect();
    let ratio =
        rates.iter().copied().fold(f64::MAX, f64::min) / rates.iter().copied().fold(0.0, f64::max);
    (report, ratio)
}

/// Two flows over one bottleneck, the second starting 2 s after the first; both
/// send 15 MB (15,000 messages of 1000 B, on streams 0 and 1: flow = stream % 2).
fn two_flows() -> Report {
    flows_run(
        "delay=20ms,bw=20mbit,queue=64kb",
        2,
        Duration::from_secs(2),
        15_000,
    )
    .0
}

#[test]
fn two_flows_share_one_bottleneck_and_fill_it() {
    let report = two_flows();
    assert!(
        report.flows.iter().all(|f| f.payload_bytes == 15_000_000),
        "{report}"
    );
    let total = goodput(&report, 20e6);
    assert!(total >= 0.85, "goodput {total:.3}\n{report}");
    assert!(drop_rate(&report) < 0.02, "{report}");
}

/// Issue 5's fairness target on its link: two flows split 20 Mbit/s within 20 %
/// (the smaller goodput at least 0.8 of the larger), whether they start together
/// or the second joins 0.5 to 5 s later, and three flows started up to 1 s apart
/// too; the total keeps the link full.
#[test]
fn two_flows_split_the_bottleneck_within_20_percent() {
    let link = "delay=20ms,bw=20mbit,queue=64kb";
    for (n, stagger_ms) in [
        (2, 0),
        (2, 500),
        (2, 1000),
        (2, 2000),
        (2, 5000),
        (3, 0),
        (3, 500),
        (3, 1000),
    ] {
        let (report, ratio) = flows_run(link, n, Duration::from_millis(stagger_ms), 15_000);
        let context = format!("{n} flows, stagger {stagger_ms} ms: ratio {ratio:.3}");
        assert!(ratio >= 0.8, "{context}\n{report}");
        assert!(goodput(&report, 20e6) >= 0.85, "{context}\n{report}");
        assert!(drop_rate(&report) < 0.02, "{context}\n{report}");
    }
}

/// The same on other links: 10 Mbit/s, 100 ms RTT behind a quarter of the BDP
/// (32 KB), 50 Mbit/s, 20 ms RTT behind one BDP (128 KB), and 20 Mbit/s behind queues longer than the RTT (but at
/// most 64 KB). Other staggers on these links are not met (docs/benchmarks.md).
#[test]
fn two_flows_split_other_bottlenecks_within_20_percent() {
    for (link, mbit, stagger_ms) in [
        ("delay=50ms,bw=10mbit,queue=32kb", 10.0, 0),
        ("delay=50ms,bw=10mbit,queue=32kb", 10.0, 500),
        ("delay=10ms,bw=50mbit,queue=128kb", 50.0, 0),
        ("delay=10ms,bw=50mbit,queue=128kb", 50.0, 2000),
        // Not met: 50 Mbit/s 0.5 s apart gives 0.762.
        // Queues holding more delay than the whole RTT: a late flow's minimum RTT
        // includes the first one's queue, and it must not take over the link.
        ("delay=5ms,bw=20mbit,queue=64kb", 20.0, 1000),
        ("delay=10ms,bw=20mbit,queue=64kb", 20.0, 2000),
        // Not met: ("delay=20ms,bw=20mbit,queue=256kb", 20.0, 2000) gives 0.755,
        // its queue's delay swings too much for the RTT-variance guard.
    ] {
        let (report, ratio) = flows_run(link, 2, Duration::from_millis(stagger_ms), 15_000);
        let total = goodput(&report, mbit * 1e6);
        let context =
            format!("{link}, stagger {stagger_ms} ms: ratio {ratio:.3}, goodput {total:.3}");
        eprintln!("{context}");
        assert!(ratio >= 0.8, "{context}\n{report}");
        assert!(total >= 0.85, "{context}\n{report}");
    }
}
