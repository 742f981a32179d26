//! `atbus send` and `atbus recv`: a file as messages on stream 1, between processes.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use atbus_node::{Address, Event, Node, NodeConfig, NodeStats, PeerId, Scheduler, SendOptions};
use bytes::Bytes;

use crate::runtime::{self, RuntimeKind};

/// The stream a file travels on.
const FILE_STREAM: i64 = 1;
/// How long each side waits, after the data is through, for the finish handshake
/// to settle (the receiver's answer, its acknowledgement).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How long a peer whose connections all closed may take to come back.
const PEER_LINGER: Duration = Duration::from_secs(20);
/// Messages handed to the node at once.
const SEND_BATCH: usize = 64;

/// Arguments of `atbus recv`.
#[derive(Debug, clap::Args)]
pub struct RecvArgs {
    /// Address to listen on (udp://, tcp://, unix://, unixgram://, shm://); repeat for
    /// several. Each bound address is printed on stderr as `listening URL` (port 0
    /// shows the port chosen).
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    listen: Vec<String>,
    /// Where the received bytes go (stdout by default).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// The async runtime.
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeKind,
    /// Print a JSON summary on stderr.
    #[arg(long)]
    json: bool,
    /// This node's name.
    #[arg(long, default_value = "atbus-recv")]
    name: String,
    /// Run the node's I/O on a dedicated thread.
    #[arg(long)]
    io_thread: bool,
    /// Accept only senders presenting this token (repeat for several).
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,
}

/// Arguments of `atbus send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Address of the receiver; repeat to make a multi-path peer.
    #[arg(long = "connect", value_name = "ADDR", required = true)]
    connect: Vec<String>,
    /// The file to send (stdin by default).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Bytes per message: 1 to the receiver's message size limit (16 MiB).
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Multi-path scheduler: min-rtt, redundant or round-robin.
    #[arg(long, default_value = "min-rtt")]
    scheduler: String,
    /// The async runtime.
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeKind,
    /// Print a JSON summary on stderr.
    #[arg(long)]
    json: bool,
    /// This node's name.
    #[arg(long, default_value = "atbus-send")]
    name: String,
    /// Run the node's I/O on a dedicated thread.
    #[arg(long)]
    io_thread: bool,
    /// Token presented to the receiver.
    #[arg(long)]
    token: Option<String>,
}

/// A failure: its message and the exit code.
pub struct Failure(pub String, pub u8);

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure(message.into(), 2)
    }

    fn runtime(message: impl Into<String>) -> Self {
        Failure(message.into(), 1)
    }
}

pub fn parse_addresses(list: &[String]) -> Result<Vec<Address>, Failure> {
    list.iter()
        .map(|a| {
            a.parse::<Address>()
                .map_err(|e| Failure::usage(e.to_string()))
        })
        .collect()
}

fn summary(
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    stats: Option<&NodeStats>,
) -> serde_json::Value {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let paths: Vec<serde_json::Value> = stats
        .map(|s| {
            s.paths
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "remote": p.remote,
                        "mtu": p.info.mtu,
                        "srtt_ms": p.info.srtt.as_secs_f64() * 1000.0,
                        "sent_packets": p.info.stats.sent_packets,
                        "received_packets": p.info.stats.received_packets,
                        "lost_packets": p.info.stats.lost_packets,
                        "retransmits": p.info.stats.retransmits,
                        "malformed": p.info.stats.malformed,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "messages": messages,
        "payload_bytes": bytes,
        "seconds": seconds,
        "msgs_per_sec": messages as f64 / seconds,
        "mib_per_sec": bytes as f64 / seconds / (1024.0 * 1024.0),
        "dropped_datagrams": stats.map_or(0, |s| s.dropped_datagrams),
        "paths": paths,
    })
}

pub fn recv(args: &RecvArgs) -> Result<ExitCode, Failure> {
    let listen = parse_addresses(&args.listen)?;
    let mut out: Box<dyn Write + Send> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::runtime(format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    runtime::block_on(args.runtime, async {
        let mut config = NodeConfig::new(args.name.clone());
        config.listen = listen;
        config.dedicated_thread = args.io_thread;
        // A sender that vanished is given up on after its connections time out
        // (idle timeout) and this much more.
        config.endpoint.peer_linger = PEER_LINGER;
        if !args.tokens.is_empty() {
            config.accept_tokens = Some(
                args.tokens
                    .iter()
                    .map(|t| Bytes::from(t.clone().into_bytes()))
                    .collect(),
            );
        }
        let node = runtime::start(args.runtime, config)
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
        for address in node.local_addresses() {
            eprintln!("listening {address}");
        }
        let mut sender: Option<PeerId> = None;
        let mut started = None;
        let (mut messages, mut bytes) = (0u64, 0u64);
        loop {
            let Some(event) = node.recv().await else {
                return Err(Failure::runtime("the node stopped unexpectedly"));
            };
            match event {
                Event::Message {
                    peer,
                    stream: FILE_STREAM,
                    message,
                } if sender.is_none_or(|s| s == peer) => {
                    sender = Some(peer);
                    started.get_or_insert_with(Instant::now);
                    messages += 1;
                    bytes += message.payload.len() as u64;
                    out.write_all(&message.payload)
                        .map_err(|e| Failure::runtime(format!("cannot write the output: {e}")))?;
                }
                Event::StreamFinished {
                    peer,
                    stream: FILE_STREAM,
                    ..
                } if sender.is_none_or(|s| s == peer) => {
                    out.flush()
                        .map_err(|e| Failure::runtime(format!("cannot write the output: {e}")))?;
                    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
                    // Answer with our own finish, so the sender knows everything
                    // arrived, and wait (bounded) for it to be acknowledged.
                    let _ = node.finish(peer, FILE_STREAM).await;
                    let _ = runtime::timeout(SETTLE_LIMIT, node.wait_settled(peer)).await;
                    // The sender closes first: only it knows that everything it sent
                    // is acknowledged. If our last acknowledgement was lost, closing
                    // now would leave it retransmitting to no one; staying (bounded)
                    // until it goes lets its retransmission be acknowledged again.
                    wait_for_departure(&node, peer).await;
                    let stats = node.stats().await.ok();
                    node.close().await;
                    if args.json {
                        eprintln!("{}", summary(messages, bytes, elapsed, stats.as_ref()));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Event::PeerLost { peer, .. } if sender == Some(peer) => {
                    let _ = out.flush();
                    node.close().await;
                    return Err(Failure::runtime(format!(
                        "the sender went away before finishing the stream ({messages} messages, \
                         {bytes} bytes received)"
                    )));
                }
                _ => {}
            }
        }
    })
}

/// Waits, at most [`SETTLE_LIMIT`], until a connection with `peer` closes (the
/// sender closing, or its stream connection ending) or the peer is gone; events
/// meanwhile are dropped.
async fn wait_for_departure(node: &Node, peer: PeerId) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match runtime::timeout(left, node.recv()).await {
            None | Some(None) => return,
            Some(Some(
                Event::ConnectionClosed { peer: Some(p), .. }
                | Event::PeerUnreachable { peer: p }
                | Event::PeerLost { peer: p, .. },
            )) if p == peer => return,
            Some(Some(_)) => {}
        }
    }
}

fn read_chunk(input: &mut dyn Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut chunk = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match input.read(&mut chunk[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    chunk.truncate(filled);
    Ok(chunk)
}

pub fn send(args: &SendArgs) -> Result<ExitCode, Failure> {
    let addresses = parse_addresses(&args.connect)?;
    let scheduler: Scheduler = args
        .scheduler
        .parse()
        .map_err(|e: atbus_node::UnknownScheduler| Failure::usage(e.to_string()))?;
    // The receiver (`atbus recv`) keeps the default limit: a larger message
    // could never be delivered.
    let limit = atbus_core::EndpointConfig::new("", 0).max_message_size;
    if args.message_size == 0 || args.message_size > limit {
        return Err(Failure::usage(format!(
            "--message-size must be between 1 and {limit} bytes (the receiver's message size limit)"
        )));
    }
    let mut input: Box<dyn Read + Send> = match &args.input {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|e| Failure::runtime(format!("cannot open {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    runtime::block_on(args.runtime, async {
        let mut config = NodeConfig::new(args.name.clone());
        config.scheduler = scheduler;
        config.dedicated_thread = args.io_thread;
        config.endpoint.peer_linger = PEER_LINGER;
        if let Some(token) = &args.token {
            config.endpoint.token = Bytes::from(token.clone().into_bytes());
        }
        let node = runtime::start(args.runtime, config)
            .await
            .map_err(|e| Failure::runtime(e.to_string()))?;
        let result = send_file(&node, &addresses, &mut input, args).await;
        node.close().await;
        result
    })
}

async fn send_file(
    node: &Node,
    addresses: &[Address],
    input: &mut Box<dyn Read + Send>,
    args: &SendArgs,
) -> Result<ExitCode, Failure> {
    let peer = node
        .connect(addresses)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let started = Instant::now();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut last = false;
    while !last {
        // Up to SEND_BATCH messages (and about 1 MiB at most) per round trip to the
        // node's I/O task.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while !last && batch.len() < SEND_BATCH && batch_bytes < (1 << 20) {
            let chunk = read_chunk(input.as_mut(), args.message_size)
                .map_err(|e| Failure::runtime(format!("cannot read the input: {e}")))?;
            last = chunk.len() < args.message_size;
            if chunk.is_empty() {
                break;
            }
            messages += 1;
            bytes += chunk.len() as u64;
            batch_bytes += chunk.len();
            batch.push(Bytes::from(chunk));
        }
        if !batch.is_empty() {
            node.send_many(peer, FILE_STREAM, batch, SendOptions::default())
                .await
                .map_err(|e| Failure::runtime(format!("send failed: {e}")))?;
        }
    }
    node.finish(peer, FILE_STREAM)
        .await
        .map_err(|e| Failure::runtime(format!("finish failed: {e}")))?;
    node.wait_acknowledged(peer)
        .await
        .map_err(|e| Failure::runtime(format!("the data was not acknowledged: {e}")))?;
    let elapsed = started.elapsed();
    // Every payload byte is acknowledged; the receiver answers the finish with its
    // own, which settles the stream both ways.
    match runtime::timeout(SETTLE_LIMIT, node.wait_settled(peer)).await {
        Some(Ok(())) | Some(Err(atbus_node::NodeError::PeerGone)) => {}
        Some(Err(e)) => return Err(Failure::runtime(format!("finishing failed: {e}"))),
        None => eprintln!(
            "atbus send: every message is acknowledged, but the receiver did not answer the \
             end of the stream within {}s",
            SETTLE_LIMIT.as_secs()
        ),
    }
    if args.json {
        let stats = node.stats().await.ok();
        eprintln!("{}", summary(messages, bytes, elapsed, stats.as_ref()));
    }
    Ok(ExitCode::SUCCESS)
}
