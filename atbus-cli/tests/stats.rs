//! The windowed statistics in `atbus bench --json` and `atbus demo`: the same shape as
//! in `atbus sim --json`, with figures from the run.

use std::process::Command;

use serde_json::Value;

fn atbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atbus"))
}

fn json_of(args: &[&str]) -> Value {
    let out = atbus().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// The object's keys, recursively (arrays by their first element): its shape.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        // Numbers and nulls (an absent RTT) are both leaves.
        _ => Value::Null,
    }
}

#[test]
fn bench_json_has_the_sims_stats_shape_and_the_runs_figures() {
    let sim = json_of(&["sim", "--messages", "50", "--json"]);
    for transport in ["mem", "udp"] {
        // A run over a second long, so that the 1 s window holds a complete second.
        let report = json_of(&[
            "bench",
            "--transport",
            transport,
            "--duration",
            "1200ms",
            "--size",
            "512",
            "--json",
        ]);
        let stats = &report["stats"];
        assert_eq!(shape(stats), shape(&sim["stats"]), "{transport}: {stats}");
        let windows: Vec<&String> = stats["windows"].as_object().unwrap().keys().collect();
        assert_eq!(windows, ["15s", "1s", "5s", "60s"], "{transport}");
        let edges: Vec<u64> = stats["histogram"]["edges_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_u64().unwrap())
            .collect();
        assert_eq!(edges, atbus_core::stats::HISTOGRAM_EDGES_MS, "{transport}");
        let counts = stats["histogram"]["counts"].as_array().unwrap();
        assert_eq!(counts.len(), edges.len() + 1, "{transport}");
        // The sender counted what it sent; the histogram holds its RTT samples.
        let messages = report["messages"].as_u64().unwrap();
        assert!(messages > 0, "{transport}");
        let totals = &stats["totals"];
        assert!(totals["packets_sent"].as_u64().unwrap() > 0, "{transport}");
        assert!(
            totals["bytes_sent"].as_u64().unwrap() >= messages * 512,
            "{transport}: {totals}"
        );
        let samples: u64 = counts.iter().map(|c| c.as_u64().unwrap()).sum();
        assert!(samples > 0, "{transport}: {stats}");
        // The run covered a complete second: the 1 s window saw traffic.
        let w1 = &stats["windows"]["1s"];
        assert!(
            w1["packets_sent"].as_u64().unwrap() > 0,
            "{transport}: {w1}"
        );
        assert!(
            w1["bytes_sent_per_sec"].as_f64().unwrap() > 0.0,
            "{transport}"
        );
    }
}

#[test]
fn demo_shows_the_core_windows_and_histogram() {
    let out = atbus()
        .args(["demo", "--messages", "1500", "--seconds", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Core windows"), "{stdout}");
    // A row per window; the 1 s one saw traffic (the demo ran past a second).
    let row = |label: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} row in {stdout}"))
            .to_owned()
    };
    for label in ["1s", "5s", "15s", "60s"] {
        row(label);
    }
    let sent_packets: u64 = row("60s")
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent_packets > 0, "{stdout}");
    assert!(stdout.contains("Core RTT histogram"), "{stdout}");
    // At least one non-empty bucket is listed after the histogram's title.
    let after = stdout.split("Core RTT histogram").nth(1).unwrap();
    assert!(
        after
            .lines()
            .skip(1)
            .any(|l| l.trim_start().starts_with('[')),
        "{stdout}"
    );
}
