//! The `atbus` command-line tool.

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
    /// Two nodes exchanging messages over a lossy multi-path loopback link, with live
    /// statistics (arrives with the runtime-adapters issue).
    Demo,
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo => {
            eprintln!(
                "atbus demo is not available yet: it needs the protocol core and the runtime \
                 adapters, which arrive with the issue \"Runtime adapters (tokio, smol) and the \
                 atbus command-line tool\". Today the workspace holds the wire format \
                 (atbus-proto); try `atbus decode docs/vectors/*.bin`."
            );
            ExitCode::from(2)
        }
        Command::Decode {
            files,
            max_frame_size,
        } => decode(&files, max_frame_size),
    }
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
