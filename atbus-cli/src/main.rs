//! The `atbus` command-line tool.

mod bench;
mod demo;
mod relay;
mod runtime;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use atbus_proto::{DecodeLimits, Frames, decode_content, pb};
use clap::{Parser, Subcommand};

/// atbus: a reliable, multi-stream, multi-path message transport.
#[derive(Debug, Parser)]
#[command(name = "atbus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two nodes in this process exchanging messages over real loopback sockets: a
    /// multi-path peer (two UDP paths through lossy, reordering relays), a live
    /// progress line, then per-path statistics and the latency histogram.
    Demo(demo::DemoArgs),
    /// Receive a file: accept a peer and write the messages of stream 1, in order,
    /// to FILE (stdout by default); exit 0 when the sender finishes the stream.
    Recv(transfer::RecvArgs),
    /// Send a file as messages on stream 1; exit 0 once everything is acknowledged.
    Send(transfer::SendArgs),
    /// Message rate, payload throughput and latency between two nodes on loopback.
    Bench(bench::BenchArgs),
    /// Run two atbus endpoints over simulated links in virtual time and report
    /// delivery and latency (exact, deterministic for a seed).
    Sim(SimArgs),
    /// Decode files holding atbus frames (a datagram or a captured byte stream) and
    /// print each frame.
    Decode {
        /// Files to decode.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Largest frame accepted, in bytes.
        #[arg(long, default_value_t = atbus_proto::DEFAULT_MAX_FRAME_SIZE)]
        max_frame_size: usize,
    },
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    #[command(flatten)]
    scenario: atbus_sim::ScenarioFlags,
    /// Multi-path scheduler of both endpoints: min-rtt, redundant or round-robin.
    #[arg(long, default_value = "min-rtt", value_name = "S")]
    scheduler: String,
    /// Weights of the paths under round-robin, in --path order (e.g. 3,1: the
    /// first path carries three datagrams per turn, the second one).
    #[arg(long, value_delimiter = ',', value_name = "W,W...")]
    weights: Vec<u32>,
    /// Congestion controller of both endpoints: cubic, newreno, fixed:RATE (e.g.
    /// fixed:5mbit) or none.
    #[arg(long = "cc", default_value = "cubic", value_name = "CC")]
    congestion: String,
    /// Independent flows (endpoint pairs) sharing the paths; stream s goes on flow
    /// s % N (give at least N --streams). Per-flow goodput is reported.
    #[arg(long, default_value_t = 1, value_name = "N")]
    flows: usize,
    /// Flow i starts sending at i × this (us, ms, s).
    #[arg(long, default_value = "0", value_name = "DUR")]
    flow_stagger: String,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => report("demo", demo::demo(&args)),
        Command::Recv(args) => report("recv", transfer::recv(&args)),
        Command::Send(args) => report("send", transfer::send(&args)),
        Command::Bench(args) => report("bench", bench::bench(&args)),
        Command::Sim(args) => match sim(&args) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("atbus sim: {message}");
                ExitCode::from(2)
            }
        },
        Command::Decode {
            files,
            max_frame_size,
        } => decode(&files, max_frame_size),
    }
}

/// Prints a command's failure and turns it into the exit code.
fn report(command: &str, result: Result<ExitCode, transfer::Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(transfer::Failure(message, code)) => {
            eprintln!("atbus {command}: {message}");
            ExitCode::from(code)
        }
    }
}

fn sim(args: &SimArgs) -> Result<ExitCode, String> {
    let scenario = args.scenario.scenario()?;
    let min_mtu = atbus_core::config::MIN_MTU;
    if let Some(path) = scenario.paths.iter().find(|p| p.mtu < min_mtu) {
        return Err(format!(
            "mtu={} is below the smallest atbus accepts ({min_mtu})",
            path.mtu
        ));
    }
    let scheduler: atbus_core::Scheduler = args
        .scheduler
        .parse()
        .map_err(|e: atbus_core::UnknownScheduler| e.to_string())?;
    let mtus: Vec<usize> = scenario.paths.iter().map(|p| p.mtu).collect();
    let congestion: atbus_core::CongestionAlgorithm = args
        .congestion
        .parse()
        .map_err(|e: atbus_core::connection::congestion::UnknownAlgorithm| e.to_string())?;
    let config = |name: &str, id| {
        let mut config = atbus_core::EndpointConfig::new(name, id);
        config.scheduler = scheduler;
        config.congestion_algorithm = congestion;
        config
    };
    let report = if args.flows > 1 {
        if args.flows > 256 || scenario.streams < args.flows as u32 {
            return Err(format!(
                "--flows {} needs at most 256 flows and at least as many --streams",
                args.flows
            ));
        }
        let stagger = atbus_sim::flags::parse_duration("flow stagger", &args.flow_stagger)?;
        let starts = (0..args.flows as u32)
            .map(|i| stagger.checked_mul(i))
            .collect::<Option<Vec<_>>>()
            .filter(|starts| starts.iter().all(|&s| s < scenario.time_limit))
            .ok_or_else(|| {
                format!(
                    "--flow-stagger {}: the last flow would start after the time limit",
                    args.flow_stagger
                )
            })?;
        let (client, server) = atbus_sim::flows::flows(&mtus, &starts, |c| {
            c.scheduler = scheduler;
            c.congestion_algorithm = congestion;
        });
        atbus_sim::run(&scenario, client, server)
    } else {
        let (mut client, mut server) =
            atbus_sim::atbus::pair_with(&mtus, config("client", 1), config("server", 2));
        atbus_sim::atbus::enable_pmtud(&scenario.paths, &mut client, &mut server);
        client.set_path_weights(&args.weights);
        server.set_path_weights(&args.weights);
        atbus_sim::run(&scenario, client, server)
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
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

fn decode(files: &[PathBuf], max_frame_size: usize) -> ExitCode {
    let limits = DecodeLimits::with_max_frame_size(max_frame_size);
    let mut ok = true;
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err(err) => {
                eprintln!("{}: cannot read: {err}", path.display());
                ok = false;
                continue;
            }
        };
        println!("{} ({} bytes)", path.display(), bytes.len());
        for (index, frame) in Frames::new(bytes, limits).enumerate() {
            match frame {
                Ok(frame) => {
                    println!("  frame {index}: {frame:?}");
                    if let Some(pb::frame_message::Body::Packet(packet)) = &frame.body {
                        print_content(packet, &limits);
                    }
                }
                Err(err) => {
                    println!("  frame {index}: error: {err}");
                    ok = false;
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_content(packet: &pb::PacketData, limits: &DecodeLimits) {
    let content = match atbus_proto::strip_padding(packet.content.clone(), packet.padding_size) {
        Ok(content) => content,
        Err(err) => {
            println!("    content: {err}");
            return;
        }
    };
    match decode_content(content, limits) {
        Ok(content) => {
            for (i, fragment) in content.fragment.iter().enumerate() {
                println!("    fragment {i}: {fragment:?}");
            }
        }
        Err(err) => println!("    content does not decode as packet_content ({err}); sealed?"),
    }
}
