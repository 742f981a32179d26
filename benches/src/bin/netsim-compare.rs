//! `netsim-compare`: one simulator scenario run with atbus, KCP (turbo) or quinn, with
//! the single-path flags of `atbus sim` and the same report (text or `--json`).
//!
//! ```text
//! netsim-compare --transport kcp --path delay=30ms,loss=5% --messages 1000 --size 8 \
//!     --interval 20ms --echo --json
//! netsim-compare --plot docs/comparison-a.svg --path ... --echo   # all three, CDF
//! ```
//!
//! The flag handling replicates `atbus sim` (atbus-cli keeps it private in its
//! binary): same names, defaults and parsing, the same `Scenario` and the same
//! exit status (0 when everything arrived once, intact and in order).

use std::path::PathBuf;
use std::process::ExitCode;

use atbus_benches::compare::{self, Peer};
use atbus_benches::plot::{self, Series};
use clap::Parser;

/// Runs one simulator scenario with atbus, KCP (turbo mode) or quinn-proto.
#[derive(Debug, Parser)]
#[command(name = "netsim-compare", version, about)]
struct Args {
    /// The transport: atbus, kcp or quinn.
    #[arg(long, default_value = "atbus")]
    transport: Peer,
    /// The path: comma-separated key=value (delay=30ms, jitter=5ms, loss=2%, burst=N,
    /// dup=0.1%, reorder=1%, corrupt=0.1%, mtu=1200, bw=20mbit, queue=64kb,
    /// down=2s-5s). Default: delay=25ms. KCP and quinn are single-path: give one.
    #[arg(long = "path", value_name = "SPEC")]
    paths: Vec<String>,
    /// Messages the client sends.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Message size in bytes: N, or MIN-MAX drawn uniformly.
    #[arg(long, default_value = "1000", value_name = "N|MIN-MAX")]
    size: String,
    /// Time between two sends (us, ms, s); 0 sends everything at once.
    #[arg(long, default_value = "10ms", value_name = "DUR")]
    interval: String,
    /// Streams the messages are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    streams: u32,
    /// The receiver echoes each message; latency is the round trip.
    #[arg(long)]
    echo: bool,
    /// Seed of every random draw (payloads, links).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual time after which the run stops.
    #[arg(long, default_value = "600s", value_name = "DUR")]
    time_limit: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Run all three transports and write the cumulative distributions of their
    /// latencies to this SVG file (ignores --transport).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("netsim-compare: {message}");
            ExitCode::from(2)
        }
    }
}

fn parse_size(value: &str) -> Result<atbus_sim::SizeRange, String> {
    let number = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("invalid size {v:?}: expected N or MIN-MAX in bytes"))
    };
    let range = match value.split_once('-') {
        Some((min, max)) => atbus_sim::SizeRange {
            min: number(min)?,
            max: number(max)?,
        },
        None => atbus_sim::SizeRange::fixed(number(value)?),
    };
    if range.min > range.max {
        return Err(format!("invalid size {value:?}: MIN is above MAX"));
    }
    Ok(range)
}

fn parse_duration(what: &str, value: &str) -> Result<std::time::Duration, String> {
    if value.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    atbus_sim::spec::parse_duration(value)
        .ok_or_else(|| format!("invalid {what} {value:?}: expected a number with us, ms or s"))
}

fn scenario(args: &Args) -> Result<atbus_sim::Scenario, String> {
    let paths = if args.paths.is_empty() {
        vec![atbus_sim::LinkConfig::default()]
    } else {
        args.paths
            .iter()
            .map(|spec| {
                spec.parse::<atbus_sim::LinkConfig>()
                    .map_err(|err| format!("--path {spec:?}: {err}"))
            })
            .collect::<Result<_, _>>()?
    };
    let scenario = atbus_sim::Scenario {
        paths,
        messages: args.messages,
        size: parse_size(&args.size)?,
        interval: parse_duration("interval", &args.interval)?,
        streams: args.streams,
        echo: args.echo,
        seed: args.seed,
        time_limit: parse_duration("time limit", &args.time_limit)?,
    };
    scenario.validate().map_err(|err| err.to_string())?;
    Ok(scenario)
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let scenario = scenario(args)?;
    if let Some(file) = &args.plot {
        return plot_all(&scenario, file, args);
    }
    let outcome = compare::run(args.transport, &scenario).map_err(|e| e.to_string())?;
    let report = &outcome.report;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if outcome.oversized > 0 {
        eprintln!(
            "netsim-compare: {} message(s) were too large for {} and dropped",
            outcome.oversized,
            args.transport.name()
        );
    }
    let perfect = report.delivered == report.sent
        && report.duplicates == 0
        && report.out_of_order == 0
        && report.corrupted == 0;
    Ok(if perfect {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn plot_all(
    scenario: &atbus_sim::Scenario,
    file: &std::path::Path,
    args: &Args,
) -> Result<ExitCode, String> {
    let mut outcomes = Vec::new();
    for peer in Peer::ALL {
        let outcome = compare::run(peer, scenario).map_err(|e| format!("{}: {e}", peer.name()))?;
        let l = &outcome.report.latency_ms;
        println!(
            "{:<6} delivered {}/{}, p50 {:.3} ms, p99 {:.3}, max {:.3}, wire/payload {:.3}",
            peer.name(),
            outcome.report.delivered,
            outcome.report.sent,
            l.p50,
            l.p99,
            l.max,
            outcome.report.wire_bytes as f64 / outcome.report.payload_bytes.max(1) as f64
        );
        outcomes.push((peer, outcome));
    }
    let series: Vec<Series<'_>> = outcomes
        .iter()
        .map(|(peer, outcome)| Series {
            name: format!(
                "{} (p99 {:.1} ms, max {:.1} ms)",
                peer.name(),
                outcome.report.latency_ms.p99,
                outcome.report.latency_ms.max
            ),
            latencies: &outcome.latencies,
        })
        .collect();
    let title = format!(
        "Latency CDF: {} × {} B every {}{}, path {}, seed {}",
        scenario.messages,
        scenario.size,
        args.interval,
        if scenario.echo { ", echoed" } else { "" },
        args.paths.first().map_or("delay=25ms", String::as_str),
        scenario.seed
    );
    plot::latency_cdf(file, &title, &series)?;
    println!("wrote {}", file.display());
    Ok(ExitCode::SUCCESS)
}
