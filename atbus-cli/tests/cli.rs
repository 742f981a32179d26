//! The `atbus` binary, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn atbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atbus"))
}

fn vector(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/vectors")
        .join(name)
}

#[test]
fn decode_prints_every_frame_and_fragment_of_a_vector() {
    let out = atbus()
        .arg("decode")
        .arg(vector("data_three_fragments.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("frame 0:"), "{stdout}");
    assert!(stdout.contains(r#"data: b"hello ""#), "{stdout}");
    assert!(stdout.contains("packet_type: 100"), "{stdout}");
    assert!(!stdout.contains("frame 1:"), "{stdout}");
}

#[test]
fn decode_reports_a_corrupted_frame_and_fails() {
    let mut bytes = std::fs::read(vector("ack.bin")).unwrap();
    bytes[10] ^= 1;
    let path = std::env::temp_dir().join(format!("atbus-cli-corrupt-{}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let out = atbus().arg("decode").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("checksum mismatch"));
}

#[test]
fn a_short_demo_delivers_everything_and_prints_the_tables() {
    let out = atbus()
        .args(["demo", "--messages", "1500", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Paths (client side):"), "{stdout}");
    assert!(stdout.contains("0-15 ms"), "{stdout}");
    // Each path's MTU stays within what its relay carries (1400 and 1200 B).
    let mtus: Vec<usize> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Paths (client side):"))
        .skip(2)
        .take_while(|l| !l.trim_start().starts_with("total"))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    assert_eq!(mtus.len(), 2, "{stdout}");
    assert!(mtus.iter().all(|&m| m <= 1400), "{mtus:?}");
    assert!(stdout.contains("dropped for size"), "{stdout}");
    assert!(
        stdout.contains("OK: all 1500 messages delivered"),
        "{stdout}"
    );
}

fn sim_json(args: &[&str]) -> serde_json::Value {
    let out = atbus()
        .arg("sim")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn sim_default_path_reports_exact_latency_and_every_field() {
    let report = sim_json(&[]);
    assert_eq!(report["sent"], 100);
    assert_eq!(report["delivered"], 100);
    for field in ["duplicates", "out_of_order", "corrupted", "skipped"] {
        assert_eq!(report[field], 0, "{field}");
    }
    for field in ["avg", "p50", "p90", "p99", "p999", "max"] {
        assert_eq!(report["latency_ms"][field], 25.0, "{field}");
    }
    assert_eq!(report["payload_bytes"], 100_000);
    assert!(report["wire_bytes"].as_u64().unwrap() > 100_000);
    assert_eq!(report["sim_duration_ms"], 1015.0);
    let path = &report["paths"][0];
    assert_eq!(path["mtu"], 1200);
    assert_eq!(path["retransmits"], 0);
    assert!(path["srtt_ms"].as_f64().unwrap() >= 50.0);
    assert!(path["sent_packets"].as_u64().unwrap() >= 100);
}

#[test]
fn sim_lossy_path_with_echo_and_streams_delivers_everything() {
    let report = sim_json(&[
        "--path",
        "delay=10ms,jitter=2ms,loss=10%,burst=2,dup=1%,reorder=1%,corrupt=1%,mtu=800",
        "--messages",
        "300",
        "--size",
        "0-3000",
        "--interval",
        "1ms",
        "--streams",
        "3",
        "--echo",
        "--seed",
        "42",
    ]);
    assert_eq!(report["sent"], 300);
    assert_eq!(report["delivered"], 300);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert_eq!(report["corrupted"], 0);
    assert!(report["paths"][0]["retransmits"].as_u64().unwrap() > 0);
}

#[test]
fn sim_rejects_bad_arguments_with_a_clear_error() {
    for args in [
        &["--path", "delay=abc"][..],
        &["--size", "10-5"],
        &["--interval", "5 parsecs"],
        &["--path", "mtu=50"],
        &["--scheduler", "fastest"],
        &[
            "--flows",
            "2",
            "--streams",
            "2",
            "--flow-stagger",
            "18446744073709551615s",
        ],
    ] {
        let out = atbus().arg("sim").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("atbus sim:"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_rejects_a_message_size_over_the_limit_instead_of_hanging() {
    for size in ["0", "17000000"] {
        let out = atbus()
            .args([
                "bench",
                "--transport",
                "udp",
                "--size",
                size,
                "--messages",
                "1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--size {size}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--size must be between 1 and"), "{stderr}");
    }
}

#[test]
fn send_rejects_a_message_size_the_receiver_cannot_take() {
    for size in ["0", "16777217", "18446744073709551615"] {
        let out = atbus()
            .args([
                "send",
                "--connect",
                "udp://127.0.0.1:9",
                "--message-size",
                size,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--message-size {size}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--message-size must be between 1 and 16777216"),
            "{stderr}"
        );
    }
}

#[test]
fn sim_schedulers_spread_two_paths_differently_and_report_per_path_stats() {
    let paths = [
        "--path",
        "delay=10ms,loss=1%",
        "--path",
        "delay=30ms,loss=1%,mtu=548",
        "--messages",
        "500",
        "--interval",
        "5ms",
    ];
    let sent = |report: &serde_json::Value, path: usize| {
        report["paths"][path]["sent_packets"].as_u64().unwrap()
    };
    let min_rtt = sim_json(&[&paths[..], &["--scheduler", "min-rtt"]].concat());
    let redundant = sim_json(&[&paths[..], &["--scheduler", "redundant"]].concat());
    let round_robin = sim_json(&[&paths[..], &["--scheduler", "round-robin"]].concat());
    for report in [&min_rtt, &redundant, &round_robin] {
        assert_eq!(report["delivered"], 500);
        assert_eq!(report["duplicates"], 0);
        for path in 0..2 {
            let p = &report["paths"][path];
            for field in [
                "mtu",
                "srtt_ms",
                "cwnd_bytes",
                "sent_bytes",
                "lost_packets",
                "retransmits",
            ] {
                assert!(!p[field].is_null(), "{field}");
            }
        }
        assert!(report["stats"]["windows"]["1s"].is_object());
        assert_eq!(
            report["stats"]["histogram"]["counts"]
                .as_array()
                .unwrap()
                .len(),
            20
        );
    }
    // min-RTT keeps a light flow on the fast path; redundant sends it on both.
    assert!(sent(&min_rtt, 0) > 5 * sent(&min_rtt, 1), "{min_rtt}");
    assert!(sent(&redundant, 1) * 2 > sent(&redundant, 0), "{redundant}");
    assert!(
        sent(&round_robin, 1) * 3 > sent(&round_robin, 0),
        "{round_robin}"
    );
}

#[test]
fn sim_readable_summary() {
    let out = atbus()
        .arg("sim")
        .arg("--messages")
        .arg("10")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("10 sent, 10 delivered"), "{stdout}");
    assert!(stdout.contains("p99"), "{stdout}");
}
