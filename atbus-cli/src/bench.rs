//! `atbus bench`: message rate, payload throughput and latency between two nodes in
//! this process, over loopback sockets or (`mem`) two endpoints joined directly.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use atbus_core::{ConnectionKind, Endpoint, EndpointConfig, Input, Output};
use atbus_node::histogram::LatencyHistogram;
use atbus_node::{Event, NodeConfig, SendError, SendOptions, UdpPmtudCeiling};
use bytes::Bytes;

use crate::runtime::{self, RuntimeKind};
use crate::transfer::Failure;

/// What carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTransport {
    /// UDP on 127.0.0.1.
    Udp,
    /// TCP on 127.0.0.1.
    Tcp,
    /// A Unix stream socket in a temporary directory.
    Unix,
    /// A Unix datagram socket in a temporary directory.
    Unixgram,
    /// A shared-memory ring (`shm://`), named after this process.
    Shm,
    /// Two endpoints in this process, joined without sockets.
    Mem,
}

/// Arguments of `atbus bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The transport.
    #[arg(long, value_enum)]
    transport: BenchTransport,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to send (default 50000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    messages: Option<u64>,
    /// Send for this long instead (e.g. 5s, 500ms).
    #[arg(long, value_name = "DUR")]
    duration: Option<String>,
    /// The async runtime (ignored by `mem`).
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeKind,
    /// Run the node's I/O on a dedicated thread.
    #[arg(long)]
    io_thread: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Cap PMTUD's ceiling on UDP paths at this many bytes of UDP payload (by
    /// default it follows the route's MTU: 65507 on IPv4 loopback). 1452 gives the
    /// datagram size quinn uses by default.
    #[arg(long, value_name = "BYTES")]
    udp_mtu_cap: Option<usize>,
}

/// Messages sent when neither --messages nor --duration is given.
const DEFAULT_MESSAGES: u64 = 50_000;
/// Payload bytes handed to the node at once (one round trip to its I/O task): small
/// messages go in batches of many, so that the round trip is not paid per message.
const SEND_BATCH_BYTES: usize = 64 * 1024;
/// Bounds of the messages in one batch.
const SEND_BATCH_MIN: usize = 16;
const SEND_BATCH_MAX: usize = 1024;
/// Bytes of a payload that carry its send time.
const STAMP: usize = 8;

/// When to stop sending.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Messages(u64),
    Duration(Duration),
}

impl Budget {
    fn more(&self, sent: u64, start: Instant) -> bool {
        match *self {
            Budget::Messages(n) => sent < n,
            Budget::Duration(d) => start.elapsed() < d,
        }
    }
}

struct Outcome {
    messages: u64,
    payload_bytes: u64,
    seconds: f64,
    latency: LatencyHistogram,
    /// The sending endpoint's windowed statistics at the end of the run.
    stats: atbus_core::stats::StatsSnapshot,
    /// Losses seen by each side (`None` for `mem`, which has no nodes).
    losses: Option<Losses>,
    /// UDP receive-buffer overflows on the whole machine during the run (see
    /// [`udp_rcvbuf_errors`]).
    kernel_rcvbuf_errors: Option<u64>,
    /// The sending node's datagram size at the end of the run (the largest of
    /// its paths; `None` without nodes).
    mtu: Option<usize>,
}

/// Where datagrams went missing: before the sockets (in a node) or as the core
/// judged them (declared lost, retransmitted).
#[derive(Debug, Default)]
struct Losses {
    /// The client (sending) node's counters.
    client: NodeLosses,
    /// The server (receiving) node's counters.
    server: NodeLosses,
}

/// One node's loss counters, its live connections summed.
#[derive(Debug, Default)]
struct NodeLosses {
    /// Datagrams the node dropped before its socket or its core
    /// (`NodeStats::dropped_datagrams`: a full write queue, unknown remotes).
    dropped_datagrams: u64,
    /// Socket errors.
    io_errors: u64,
    /// Datagrams sent and received by the core.
    sent_packets: u64,
    received_packets: u64,
    /// Datagrams with a range the core declared lost.
    lost_packets: u64,
    /// Of those, declared by the retransmission timeout and by the time-ordered
    /// rule (RACK).
    lost_by_timeout: u64,
    lost_by_rack: u64,
    /// Ranges the core resent after declaring them lost.
    retransmits: u64,
    /// Retransmissions later found unnecessary.
    spurious_retransmits: u64,
    /// Datagrams or frames the core dropped as malformed.
    malformed: u64,
    /// Frames dropped over a receive limit.
    dropped_over_limit: u64,
}

impl NodeLosses {
    fn of(stats: &atbus_node::NodeStats) -> Self {
        let mut out = NodeLosses {
            dropped_datagrams: stats.dropped_datagrams,
            io_errors: stats.io_errors,
            ..Default::default()
        };
        for path in &stats.paths {
            let s = &path.info.stats;
            out.sent_packets += s.sent_packets;
            out.received_packets += s.received_packets;
            out.lost_packets += s.lost_packets;
            out.lost_by_timeout += s.lost_by_timeout;
            out.lost_by_rack += s.lost_by_rack;
            out.retransmits += s.retransmits;
            out.spurious_retransmits += s.spurious_retransmits;
            out.malformed += s.malformed;
            out.dropped_over_limit += s.dropped_over_limit;
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dropped_datagrams": self.dropped_datagrams,
            "io_errors": self.io_errors,
            "sent_packets": self.sent_packets,
            "received_packets": self.received_packets,
            "lost_packets": self.lost_packets,
            "lost_by_timeout": self.lost_by_timeout,
            "lost_by_rack": self.lost_by_rack,
            "retransmits": self.retransmits,
            "spurious_retransmits": self.spurious_retransmits,
            "malformed": self.malformed,
            "dropped_over_limit": self.dropped_over_limit,
        })
    }
}

impl Losses {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "client": self.client.to_json(), "server": self.server.to_json() })
    }
}

/// Events taken from the receiving node per wake-up.
const RECV_BATCH: usize = 1024;

/// Over the nodes, the latency is recorded for one message in this many (the
/// first, then every this-many-th).
const LATENCY_SAMPLE: u64 = 16;

/// The machine's UDP receive-buffer overflows so far (`RcvbufErrors` of the `Udp:`
/// lines of `/proc/net/snmp`; Linux only, `None` elsewhere). The kernel counts one
/// per socket buffer dropped: with GRO, one drop can be a run of many datagrams.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    rcvbuf_errors_of(&snmp)
}

/// `RcvbufErrors` read from the text of `/proc/net/snmp`.
fn rcvbuf_errors_of(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Messages per `send_many` for payloads of `size` bytes.
fn batch_len(size: usize) -> usize {
    (SEND_BATCH_BYTES / size.max(1)).clamp(SEND_BATCH_MIN, SEND_BATCH_MAX)
}

/// The nanoseconds since `epoch`, as [`stamped`] writes them.
fn stamp_now(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A payload of `size` bytes that starts with its send time `nanos` (when it fits).
fn stamped(size: usize, nanos: u64) -> Bytes {
    stamped_block(size, 1, nanos)
}

/// `count` messages of `size` bytes back to back, each stamped with `nanos`.
fn stamped_block(size: usize, count: usize, nanos: u64) -> Bytes {
    let mut data = vec![0x5au8; size * count];
    if size >= STAMP {
        for message in data.chunks_exact_mut(size) {
            message[..STAMP].copy_from_slice(&nanos.to_le_bytes());
        }
    }
    Bytes::from(data)
}

/// The latency of a message received at `now` (since the epoch of its stamp).
fn latency_of(payload: &[u8], now: Duration) -> Option<Duration> {
    let stamp: [u8; STAMP] = payload.get(..STAMP)?.try_into().ok()?;
    let sent = Duration::from_nanos(u64::from_le_bytes(stamp));
    Some(now.saturating_sub(sent))
}

pub fn bench(args: &BenchArgs) -> Result<ExitCode, Failure> {
    // Both nodes keep the default message size limit: a larger message could
    // never be sent (and the receiving half would wait for it forever).
    let limit = atbus_core::EndpointConfig::new("", 0).max_message_size;
    if args.size == 0 || args.size > limit {
        return Err(Failure(
            format!("--size must be between 1 and {limit} bytes (the message size limit)"),
            2,
        ));
    }
    let budget = match (&args.messages, &args.duration) {
        (Some(n), _) => Budget::Messages(*n),
        (None, Some(d)) => {
            Budget::Duration(atbus_sim::spec::parse_duration(d).ok_or_else(|| {
                Failure(format!("invalid --duration {d:?}: use e.g. 5s or 500ms"), 2)
            })?)
        }
        (None, None) => Budget::Messages(DEFAULT_MESSAGES),
    };
    let mut outcome = match args.transport {
        BenchTransport::Mem => mem(args.size, budget)?,
        transport => runtime::block_on(args.runtime, sockets(transport, args, budget))?,
    };
    let seconds = outcome.seconds.max(1e-9);
    let mps = outcome.messages as f64 / seconds;
    let mibps = outcome.payload_bytes as f64 / seconds / (1024.0 * 1024.0);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p99, max) = (
        us(outcome.latency.quantile(0.5)),
        us(outcome.latency.quantile(0.99)),
        us(outcome.latency.max()),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "transport": format!("{:?}", args.transport).to_lowercase(),
                "messages": outcome.messages,
                "payload_bytes": outcome.payload_bytes,
                "seconds": seconds,
                "msgs_per_sec": mps,
                "mib_per_sec": mibps,
                "latency_us": { "p50": p50, "p99": p99, "max": max },
                "stats": atbus_sim::StatsReport::from_snapshot(&outcome.stats),
                "losses": outcome.losses.as_ref().map(Losses::to_json),
                "kernel_rcvbuf_errors": outcome.kernel_rcvbuf_errors,
                "mtu": outcome.mtu,
            })
        );
    } else {
        println!(
            "{:?}: {} messages of {} B in {seconds:.3}s: {mps:.0} msg/s, {mibps:.2} MiB/s; \
             latency p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us",
            args.transport, outcome.messages, args.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn sockets(
    transport: BenchTransport,
    args: &BenchArgs,
    budget: Budget,
) -> Result<Outcome, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure(e.to_string(), 1);
    let dir = std::env::temp_dir().join(format!(
        "atbus-bench-{}-{:x}",
        std::process::id(),
        atbus_node::config::random_session_id()
    ));
    let listen = match transport {
        BenchTransport::Udp => "udp://127.0.0.1:0".to_string(),
        BenchTransport::Tcp => "tcp://127.0.0.1:0".to_string(),
        BenchTransport::Unix | BenchTransport::Unixgram => {
            std::fs::create_dir_all(&dir).map_err(|e| fail(&e))?;
            let scheme = if transport == BenchTransport::Unix {
                "unix"
            } else {
                "unixgram"
            };
            format!("{scheme}://{}", dir.join("bench.sock").display())
        }
        BenchTransport::Shm => format!(
            "shm://atbus-bench-{}-{:x}",
            std::process::id(),
            atbus_node::config::random_session_id()
        ),
        BenchTransport::Mem => unreachable!("handled by the caller"),
    };
    let ceiling = match args.udp_mtu_cap {
        Some(cap) => UdpPmtudCeiling::Route { cap },
        None => UdpPmtudCeiling::default(),
    };
    let mut server_config = NodeConfig::new("bench-server");
    server_config.dedicated_thread = args.io_thread;
    server_config.udp_pmtud_ceiling = ceiling;
    server_config.listen = vec![listen.parse().map_err(|e| fail(&e))?];
    let server = runtime::start(args.runtime, server_config)
        .await
        .map_err(|e| fail(&e))?;
    let mut client_config = NodeConfig::new("bench-client");
    client_config.dedicated_thread = args.io_thread;
    client_config.udp_pmtud_ceiling = ceiling;
    let client = runtime::start(args.runtime, client_config)
        .await
        .map_err(|e| fail(&e))?;
    let rcvbuf_errors_before = udp_rcvbuf_errors();
    let result = async {
        let peer = client
            .connect(server.local_addresses())
            .await
            .map_err(|e| fail(&e))?;
        let epoch = Instant::now();
        let size = args.size;
        let sending = async {
            let mut sent = 0u64;
            let batch_len = batch_len(size);
            while budget.more(sent, epoch) {
                // One clock read per batch: its messages leave together.
                let nanos = stamp_now(epoch);
                let mut count = 0;
                while count < batch_len && budget.more(sent + count as u64, epoch) {
                    count += 1;
                }
                // One allocation per batch: the messages are slices of it.
                let block = stamped_block(size, count, nanos);
                let batch: Vec<Bytes> = (0..count)
                    .map(|i| block.slice(i * size..(i + 1) * size))
                    .collect();
                let n = batch.len() as u64;
                client
                    .send_many(peer, 1, batch, SendOptions::default())
                    .await
                    .map_err(|e| fail(&e))?;
                sent += n;
            }
            client.finish(peer, 1).await.map_err(|e| fail(&e))?;
            Ok::<u64, Failure>(sent)
        };
        let receiving = async {
            let mut latency = LatencyHistogram::new();
            let (mut messages, mut bytes) = (0u64, 0u64);
            // Events are taken a batch per wake-up (`recv_batch`: a run of
            // messages is one event). The clock is read once per batch and the
            // latency recorded for one message in `LATENCY_SAMPLE`: measuring
            // every message cost more than the transport at this rate.
            let mut events = Vec::with_capacity(RECV_BATCH);
            let mut record = |payload: &[u8], messages: u64, now: Duration| {
                if messages % LATENCY_SAMPLE == 0 {
                    if let Some(l) = latency_of(payload, now) {
                        latency.record(l);
                    }
                }
            };
            'receive: while server.recv_batch(&mut events, RECV_BATCH).await > 0 {
                let now = epoch.elapsed();
                for event in events.drain(..) {
                    match event {
                        Event::Message { message, .. } => {
                            record(&message.payload, messages, now);
                            messages += 1;
                            bytes += message.payload.len() as u64;
                        }
                        Event::Messages { payloads, .. } => {
                            for payload in &payloads {
                                record(payload, messages, now);
                                messages += 1;
                                bytes += payload.len() as u64;
                            }
                        }
                        Event::StreamFinished { .. } => break 'receive,
                        _ => {}
                    }
                }
            }
            (messages, bytes, latency, epoch.elapsed())
        };
        let (sent, (messages, payload_bytes, latency, elapsed)) =
            futures_lite::future::zip(sending, receiving).await;
        let sent = sent?;
        if messages != sent {
            return Err(Failure(
                format!("{sent} messages sent but {messages} received"),
                1,
            ));
        }
        let client_stats = client.stats().await.map_err(|e| fail(&e))?;
        let server_stats = server.stats().await.map_err(|e| fail(&e))?;
        Ok(Outcome {
            messages,
            payload_bytes,
            seconds: elapsed.as_secs_f64(),
            latency,
            losses: Some(Losses {
                client: NodeLosses::of(&client_stats),
                server: NodeLosses::of(&server_stats),
            }),
            mtu: client_stats.paths.iter().map(|p| p.info.mtu).max(),
            stats: client_stats.windows,
            kernel_rcvbuf_errors: rcvbuf_errors_before
                .zip(udp_rcvbuf_errors())
                .map(|(before, after)| after.saturating_sub(before)),
        })
    }
    .await;
    client.close().await;
    server.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Two endpoints joined by an in-memory byte stream: the cost of the protocol alone.
fn mem(size: usize, budget: Budget) -> Result<Outcome, Failure> {
    let fail = |e: SendError| Failure(e.to_string(), 1);
    let epoch = Instant::now();
    let now = || atbus_core::Timestamp::from_duration(epoch.elapsed() + Duration::from_secs(1));
    let mut client = Endpoint::new(EndpointConfig::new("bench-client", 1));
    let mut server = Endpoint::new(EndpointConfig::new("bench-server", 2));
    let (peer, to_server) = client
        .connect(now(), ConnectionKind::Stream)
        .map_err(fail)?;
    let to_client = server.accept(now(), ConnectionKind::Stream).map_err(fail)?;
    let mut latency = LatencyHistogram::new();
    let (mut sent, mut received, mut bytes) = (0u64, 0u64, 0u64);
    let mut finished = false;
    let mut done = false;
    while !done {
        // Fill the window.
        while !finished {
            if !budget.more(sent, epoch) {
                client
                    .finish_stream(
                        now(),
                        peer,
                        1,
                        atbus_core::CloseReason::new(atbus_core::CloseCode::Shutdown, "done"),
                    )
                    .map_err(fail)?;
                finished = true;
                break;
            }
            match client.send(
                now(),
                peer,
                1,
                stamped(size, stamp_now(epoch)),
                &SendOptions::default(),
            ) {
                Ok(()) => sent += 1,
                Err(SendError::WouldBlock) => break,
                Err(e) => return Err(fail(e)),
            }
        }
        let mut to_server_bytes = Vec::new();
        loop {
            match client.poll_output() {
                Output::Transmit(t) => to_server_bytes.push(t.data),
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        for data in to_server_bytes {
            server.handle_input(
                now(),
                Input::StreamData {
                    connection: to_client,
                    data,
                },
            );
        }
        let mut to_client_bytes = Vec::new();
        loop {
            match server.poll_output() {
                Output::Transmit(t) => to_client_bytes.push(t.data),
                Output::Event(atbus_core::Event::Message { message, .. }) => {
                    received += 1;
                    bytes += message.payload.len() as u64;
                    if let Some(l) = latency_of(&message.payload, epoch.elapsed()) {
                        latency.record(l);
                    }
                }
                Output::Event(atbus_core::Event::StreamFinished { .. }) => done = true,
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        for data in to_client_bytes {
            client.handle_input(
                now(),
                Input::StreamData {
                    connection: to_server,
                    data,
                },
            );
        }
    }
    if received != sent {
        return Err(Failure(
            format!("{sent} messages sent but {received} received"),
            1,
        ));
    }
    Ok(Outcome {
        messages: received,
        payload_bytes: bytes,
        seconds: epoch.elapsed().as_secs_f64(),
        latency,
        stats: client.snapshot(now()),
        losses: None,
        kernel_rcvbuf_errors: None,
        mtu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcvbuf_errors_are_read_from_the_udp_lines() {
        let snmp = "Tcp: RtoAlgorithm RcvbufErrors\nTcp: 1 99\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 25541410 659209 27366237 53519327 27366236 0\n\
                    UdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 7\n";
        assert_eq!(rcvbuf_errors_of(snmp), Some(27_366_236));
        assert_eq!(rcvbuf_errors_of("Udp: InDatagrams\nUdp: 5\n"), None);
        assert_eq!(rcvbuf_errors_of(""), None);
    }
}
