//! `netsim-compare`: one simulator scenario run with atbus, KCP (turbo) or quinn, with
//! the single-path flags of `atbus sim` and the same report (text or `--json`).
//!
//! ```text
//! netsim-compare --transport kcp --path delay=30ms,loss=5% --messages 1000 --size 8 \
//!     --interval 20ms --echo --json
//! netsim-compare --plot docs/comparison-a.svg --path ... --echo   # all three, CDF
//! ```
//!
//! The scenario flags are those of `atbus sim`, parsed by the same
//! [`atbus_sim::ScenarioFlags`]: same names, defaults and parsing, the same
//! `Scenario` and the same exit status (0 when everything arrived once, intact and
//! in order).

use std::path::PathBuf;
use std::process::ExitCode;

use atbus_benches::compare::{self, Outcome, Peer, Settings};
use atbus_benches::kcp::KcpConfig;
use atbus_benches::plot::{self, Series};
use atbus_sim::{LatencySummary, Scenario};
use clap::Parser;

/// Runs one simulator scenario with atbus, KCP (turbo mode) or quinn-proto.
#[derive(Debug, Parser)]
#[command(name = "netsim-compare", version, about)]
struct Args {
    /// The transport: atbus, kcp or quinn.
    #[arg(long, default_value = "atbus")]
    transport: Peer,
    // The scenario (KCP and quinn are single-path: give one --path).
    #[command(flatten)]
    scenario: atbus_sim::ScenarioFlags,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Send and receive window of each KCP conversation, in segments.
    #[arg(long, default_value_t = KcpConfig::TURBO.send_window, value_name = "SEGMENTS")]
    kcp_window: u16,
    /// Run all three transports and print a Markdown table of their latencies and
    /// wire bytes, pooled over --seeds seeds (ignores --transport and --json).
    #[arg(long)]
    table: bool,
    /// Run all three transports and plot their latency distributions, pooled over
    /// --seeds seeds, to this SVG file (ignores --transport).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// With --table or --plot: run seeds --seed, --seed + 1, … (this many).
    #[arg(long, default_value_t = 1, value_name = "N")]
    seeds: u64,
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

fn run(args: &Args) -> Result<ExitCode, String> {
    let scenario = args.scenario.scenario()?;
    let settings = Settings {
        kcp: KcpConfig {
            send_window: args.kcp_window,
            recv_window: args.kcp_window,
            ..KcpConfig::TURBO
        },
    };
    if args.table || args.plot.is_some() {
        let runs = run_all(&scenario, &settings, args.seeds)?;
        if args.table {
            print_table(&runs, args.seeds);
        }
        if let Some(file) = &args.plot {
            plot_all(&runs, &scenario, file, args)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = compare::run(args.transport, &scenario, &settings).map_err(|e| e.to_string())?;
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

/// Each transport's outcomes, one per seed.
type Runs = Vec<(Peer, Vec<Outcome>)>;

fn run_all(scenario: &Scenario, settings: &Settings, seeds: u64) -> Result<Runs, String> {
    Peer::ALL
        .into_iter()
        .map(|peer| {
            let outcomes = (0..seeds.max(1))
                .map(|i| {
                    let scenario = Scenario {
                        seed: scenario.seed.wrapping_add(i),
                        ..scenario.clone()
                    };
                    compare::run(peer, &scenario, settings)
                        .map_err(|e| format!("{}: {e}", peer.name()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((peer, outcomes))
        })
        .collect()
}

/// The latencies of all seeds together, ascending.
fn pooled(outcomes: &[Outcome]) -> Vec<std::time::Duration> {
    let mut all: Vec<_> = outcomes
        .iter()
        .flat_map(|o| o.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    all
}

/// One transport's figures over all seeds.
struct Row {
    peer: Peer,
    delivered: u64,
    sent: u64,
    /// Pooled latencies; `None` when some deliveries could not be timed (payloads
    /// under 8 bytes carry no index).
    latency: Option<LatencySummary>,
    wire_per_payload: f64,
    retransmits: u64,
    stalls: u64,
    timed_out: u64,
    oversized: u64,
}

impl Row {
    fn new(peer: Peer, outcomes: &[Outcome]) -> Self {
        let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
        let delivered = sum(|o| o.report.delivered);
        let timed = sum(|o| o.latencies.len() as u64);
        Self {
            peer,
            delivered,
            sent: sum(|o| o.report.sent),
            latency: (timed == delivered)
                .then(|| LatencySummary::from_latencies(&pooled(outcomes))),
            wire_per_payload: sum(|o| o.report.wire_bytes) as f64
                / sum(|o| o.report.payload_bytes).max(1) as f64,
            retransmits: sum(|o| o.report.paths.iter().map(|p| p.retransmits).sum()),
            stalls: sum(|o| o.report.stalls),
            timed_out: sum(|o| u64::from(o.report.timed_out)),
            oversized: sum(|o| o.oversized),
        }
    }
}

fn print_table(runs: &Runs, seeds: u64) {
    let rows: Vec<Row> = runs
        .iter()
        .map(|(peer, outcomes)| Row::new(*peer, outcomes))
        .collect();
    println!(
        "| transport | delivered | p50 ms | p99 ms | max ms | wire B / payload B | retransmits | stalls / timed out |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let latency = match &row.latency {
            Some(l) => format!("{:.1} | {:.1} | {:.1}", l.p50, l.p99, l.max),
            None => "n/a | n/a | n/a".to_owned(),
        };
        let note = if row.oversized > 0 {
            format!(" ({} too large, dropped)", row.oversized)
        } else {
            String::new()
        };
        println!(
            "| {} | {}/{}{note} | {latency} | {:.3} | {} | {} / {} |",
            row.peer.name(),
            row.delivered,
            row.sent,
            row.wire_per_payload,
            row.retransmits,
            row.stalls,
            row.timed_out
        );
    }
    println!();
    println!("{}", verdict(&rows));
    if seeds > 1 {
        println!();
        println!("{}", per_seed_wins(runs, seeds));
        println!();
        print_per_seed(runs);
    }
}

/// Each seed's p99 / max, one row per seed.
fn print_per_seed(runs: &Runs) {
    let names: Vec<String> = runs
        .iter()
        .map(|(peer, _)| format!("{} p99 / max ms", peer.name()))
        .collect();
    println!("| seed | {} |", names.join(" | "));
    println!("|---:|{}", "---:|".repeat(runs.len()));
    let seeds = runs.first().map_or(0, |(_, outcomes)| outcomes.len());
    for i in 0..seeds {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, outcomes)| {
                let report = &outcomes[i].report;
                let l = &report.latency_ms;
                let lost = report.sent - report.delivered;
                let lost = if lost > 0 {
                    format!(" ({lost} undelivered)")
                } else {
                    String::new()
                };
                format!("{:.1} / {:.1}{lost}", l.p99, l.max)
            })
            .collect();
        let seed = runs.first().map_or(0, |(_, outcomes)| outcomes[i].seed);
        println!("| {seed} | {} |", cells.join(" | "));
    }
}

/// Whether atbus meets the goals on the pooled figures: p99 and max below both
/// peers, fewer wire bytes than KCP; names the peer that beats it where it does not.
fn verdict(rows: &[Row]) -> String {
    let find = |peer: Peer| rows.iter().find(|r| r.peer == peer);
    let (Some(atbus), Some(kcp)) = (find(Peer::Atbus), find(Peer::Kcp)) else {
        return String::new();
    };
    let complete = |r: &Row| r.delivered == r.sent;
    let mut parts = Vec::new();
    for (what, pick) in [
        (
            "p99",
            (|l: &LatencySummary| l.p99) as fn(&LatencySummary) -> f64,
        ),
        ("max", |l: &LatencySummary| l.max),
    ] {
        let Some(ours) = atbus.latency.as_ref().map(pick) else {
            parts.push(format!("{what}: not timed"));
            continue;
        };
        let beaten_by: Vec<String> = rows
            .iter()
            .filter(|r| r.peer != Peer::Atbus)
            .filter_map(|r| {
                let theirs = r.latency.as_ref().map(pick)?;
                // A peer that lost messages has no comparable tail.
                (complete(r) && theirs <= ours).then(|| format!("{} {theirs:.1} ms", r.peer.name()))
            })
            .collect();
        parts.push(if beaten_by.is_empty() && complete(atbus) {
            format!("{what} below both: yes")
        } else if beaten_by.is_empty() {
            format!("{what}: atbus did not deliver everything")
        } else {
            format!("{what} below both: NO ({})", beaten_by.join(", "))
        });
    }
    parts.push(if atbus.wire_per_payload < kcp.wire_per_payload {
        "wire bytes below KCP: yes".to_owned()
    } else {
        format!(
            "wire bytes below KCP: NO ({:.3} vs {:.3})",
            atbus.wire_per_payload, kcp.wire_per_payload
        )
    });
    format!("Goals (pooled): {}.", parts.join("; "))
}

fn per_seed_wins(runs: &Runs, seeds: u64) -> String {
    let per_seed = |peer: Peer| {
        runs.iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, o)| o.as_slice())
            .unwrap_or_default()
    };
    let atbus = per_seed(Peer::Atbus);
    let (kcp, quinn) = (per_seed(Peer::Kcp), per_seed(Peer::Quinn));
    let wins = |f: fn(&LatencySummary) -> f64| {
        (0..atbus.len())
            .filter(|&i| {
                let a = f(&atbus[i].report.latency_ms);
                a < f(&kcp[i].report.latency_ms) && a < f(&quinn[i].report.latency_ms)
            })
            .count()
    };
    format!(
        "Per seed ({seeds} seeds): atbus p99 below both peers in {} of them, max below both in {}.",
        wins(|l| l.p99),
        wins(|l| l.max)
    )
}

fn plot_all(
    runs: &Runs,
    scenario: &Scenario,
    file: &std::path::Path,
    args: &Args,
) -> Result<(), String> {
    let pools: Vec<(Peer, Vec<std::time::Duration>)> = runs
        .iter()
        .map(|(peer, outcomes)| (*peer, pooled(outcomes)))
        .collect();
    let series: Vec<Series<'_>> = pools
        .iter()
        .map(|(peer, latencies)| {
            let l = LatencySummary::from_latencies(latencies);
            Series {
                name: format!(
                    "{} (p50 {:.0}, p99 {:.0}, max {:.0} ms)",
                    peer.name(),
                    l.p50,
                    l.p99,
                    l.max
                ),
                latencies,
            }
        })
        .collect();
    let seeds = if args.seeds > 1 {
        format!("seeds {}-{}", scenario.seed, scenario.seed + args.seeds - 1)
    } else {
        format!("seed {}", scenario.seed)
    };
    let title = format!(
        "{} x {} B every {}{}, {}, {}",
        scenario.messages,
        scenario.size,
        args.scenario.interval,
        if scenario.echo { " echoed" } else { "" },
        args.scenario
            .paths
            .first()
            .map_or("delay=25ms", String::as_str),
        seeds
    );
    plot::latency_ccdf(file, &title, &series)?;
    eprintln!("wrote {}", file.display());
    Ok(())
}
