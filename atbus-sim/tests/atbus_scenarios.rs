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
fn lossy_path_delivers_everything_in_order() {
    let report = run_atbus(&scenario("delay=25ms,loss=10%", 200, (0, 5000), 3, 7));
    assert_perfect(&report);
}
