//! `atbus demo`: two nodes in this process over real loopback sockets. The client
//! reaches the server over two UDP paths, each through a relay that drops and
//! reorders datagrams, so the peer is multi-path and lossy. Mixed-size messages go
//! out on four streams at a steady pace; a live line shows progress, and at the end
//! a table shows each path's counters and the histogram of message latencies
//! (send call to delivery, measured with one clock since both nodes share it).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atbus_node::histogram::LatencyHistogram;
use atbus_node::{Address, Event, NodeConfig, NodeStats, SendOptions};
use bytes::Bytes;

use crate::relay::{self, RelayConfig, RelayStats};
use crate::runtime::{self, RuntimeKind};
use crate::transfer::Failure;

/// Arguments of `atbus demo` (all optional).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Seconds the sending is spread over.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Share of datagrams the first path drops each way, in percent (the second
    /// drops a quarter of it).
    #[arg(long, default_value_t = 2.0)]
    loss: f64,
}

const STREAMS: u64 = 4;
const HEADER: usize = 16;
const LIMIT: Duration = Duration::from_secs(50);

struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
}

/// Deterministic mixed sizes: mostly small, some medium, a few large (fragmented).
fn size_of(index: u64) -> usize {
    let r = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    let pick = r % 100;
    let spread = (r >> 8) as usize;
    match pick {
        0..70 => 32 + spread % 224,
        70..95 => 256 + spread % 768,
        _ => 1024 + spread % 7168,
    }
    .max(HEADER)
}

fn payload(index: u64, sent_nanos: u64) -> Bytes {
    let size = size_of(index);
    let mut data = Vec::with_capacity(size);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(&sent_nanos.to_le_bytes());
    data.extend((HEADER..size).map(|j| (index as usize + j) as u8));
    Bytes::from(data)
}

fn check_payload(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < HEADER {
        return None;
    }
    let index = u64::from_le_bytes(data[..8].try_into().ok()?);
    let sent = u64::from_le_bytes(data[8..16].try_into().ok()?);
    let intact = data.len() == size_of(index)
        && data[HEADER..]
            .iter()
            .enumerate()
            .all(|(k, &b)| b == (index as usize + HEADER + k) as u8);
    intact.then_some((index, sent))
}

pub fn demo(args: &DemoArgs) -> Result<ExitCode, Failure> {
    if args.messages == 0 || args.seconds == 0 {
        return Err(Failure(
            "--messages and --seconds must be at least 1".into(),
            2,
        ));
    }
    runtime::block_on(RuntimeKind::Tokio, run(args))
}

async fn run(args: &DemoArgs) -> Result<ExitCode, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure(e.to_string(), 1);
    let server = runtime::start(
        RuntimeKind::Tokio,
        NodeConfig::new("demo-server").listen("udp://127.0.0.1:0".parse().map_err(|e| fail(&e))?),
    )
    .await
    .map_err(|e| fail(&e))?;
    let Some(Address::Udp(target)) = server.local_addresses().first().cloned() else {
        return Err(Failure("the server has no UDP address".into(), 1));
    };
    let loss = args.loss.clamp(0.0, 50.0) / 100.0;
    let paths = [
        RelayConfig {
            loss,
            delay: Duration::from_millis(2),
            reorder: 0.02,
            reorder_extra: Duration::from_millis(6),
            mtu: 1400,
            seed: 1,
        },
        RelayConfig {
            loss: loss / 4.0,
            delay: Duration::from_millis(8),
            reorder: 0.01,
            reorder_extra: Duration::from_millis(10),
            mtu: 1200,
            seed: 2,
        },
    ];
    let mut relays = Vec::new();
    for config in paths {
        let (address, stats) = relay::start(target, config)
            .await
            .map_err(|e| fail(&format!("cannot start a relay: {e}")))?;
        relays.push((address, config, stats));
    }
    let client = runtime::start(RuntimeKind::Tokio, NodeConfig::new("demo-client"))
        .await
        .map_err(|e| fail(&e))?;
    let addresses: Vec<Address> = relays.iter().map(|(a, _, _)| Address::Udp(*a)).collect();
    eprintln!(
        "atbus demo: {} messages of 32 B - 8 KiB on {STREAMS} streams, client -> server over 2 UDP paths:",
        args.messages
    );
    for (i, (address, config, _)) in relays.iter().enumerate() {
        eprintln!(
            "  path {}: via relay {address}: {:.1}% loss each way, {} ms delay, {:.0}% reordered, MTU {} B",
            i + 1,
            config.loss * 100.0,
            config.delay.as_millis(),
            config.reorder * 100.0,
            config.mtu
        );
    }
    let peer = client.connect(&addresses).await.map_err(|e| fail(&e))?;
    let client = Arc::new(client);
    let start = Instant::now();
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    });

    let sender = {
        let (client, counters, total, seconds) = (
            client.clone(),
            counters.clone(),
            args.messages,
            args.seconds,
        );
        tokio::spawn(async move {
            let per_message = Duration::from_secs(seconds).as_secs_f64() / total as f64;
            for index in 0..total {
                let due = start + Duration::from_secs_f64(per_message * index as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = start.elapsed().as_nanos() as u64;
                let stream = (index % STREAMS) as i64 + 1;
                client
                    .send(peer, stream, payload(index, sent), SendOptions::default())
                    .await?;
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), atbus_node::NodeError>(())
        })
    };

    let progress = {
        let (client, counters, total) = (client.clone(), counters.clone(), args.messages);
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut last_print = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let stats = client.stats().await.unwrap_or_default();
                let line = progress_line(&counters, total, &stats, start.elapsed());
                if tty {
                    eprint!("\r{line}   ");
                } else if last_print.elapsed() >= Duration::from_secs(2) {
                    eprintln!("{line}");
                    last_print = Instant::now();
                }
                if counters.delivered.load(Ordering::Relaxed) >= total {
                    if tty {
                        eprintln!();
                    }
                    return;
                }
            }
        })
    };

    let mut histogram = LatencyHistogram::new();
    let mut next = [0u64; STREAMS as usize];
    for (s, n) in next.iter_mut().enumerate() {
        *n = s as u64;
    }
    let mut errors = 0u64;
    let receiving = async {
        while counters.delivered.load(Ordering::Relaxed) < args.messages {
            let Some(event) = server.recv().await else {
                break;
            };
            if let Event::Message {
                stream, message, ..
            } = event
            {
                let now = start.elapsed();
                match check_payload(&message.payload) {
                    Some((index, sent))
                        if (1..=STREAMS as i64).contains(&stream)
                            && next[(stream - 1) as usize] == index =>
                    {
                        next[(stream - 1) as usize] += STREAMS;
                        histogram.record(now.saturating_sub(Duration::from_nanos(sent)));
                    }
                    _ => errors += 1,
                }
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let in_time = tokio::time::timeout(LIMIT, receiving).await.is_ok();
    let elapsed = start.elapsed();
    let _ = progress.await;
    let send_result = if in_time {
        sender.await.ok()
    } else {
        sender.abort();
        None
    };
    let client_stats = client.stats().await.unwrap_or_default();
    let server_stats = server.stats().await.unwrap_or_default();
    client.close().await;
    server.close().await;

    print_report(
        &client_stats,
        &server_stats,
        &relays,
        &mut histogram,
        args.messages,
        counters.delivered.load(Ordering::Relaxed),
        elapsed,
    );
    let delivered = counters.delivered.load(Ordering::Relaxed);
    if !in_time {
        return Err(Failure(
            format!(
                "timed out after {}s with {delivered} of {} messages delivered",
                LIMIT.as_secs(),
                args.messages
            ),
            1,
        ));
    }
    if let Some(Err(e)) = send_result {
        return Err(Failure(format!("sending failed: {e}"), 1));
    }
    if errors > 0 || delivered != args.messages {
        println!("FAILED: {errors} messages out of order, duplicated or damaged");
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "OK: all {} messages delivered exactly once, in order on every stream.",
        args.messages
    );
    Ok(ExitCode::SUCCESS)
}

fn progress_line(counters: &Counters, total: u64, stats: &NodeStats, elapsed: Duration) -> String {
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let mut line = format!(
        "{:5.1}s  sent {:>6}/{total}  delivered {:>6}",
        elapsed.as_secs_f64(),
        counters.sent.load(Ordering::Relaxed),
        delivered,
    );
    for (i, p) in stats.paths.iter().enumerate() {
        line.push_str(&format!(
            "  | path {}: rtt {:>5.1} ms, lost {:>4}, retx {:>4}",
            i + 1,
            p.info.srtt.as_secs_f64() * 1000.0,
            p.info.stats.lost_packets,
            p.info.stats.retransmits
        ));
    }
    line
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_report(
    client: &NodeStats,
    server: &NodeStats,
    relays: &[(std::net::SocketAddr, RelayConfig, Arc<RelayStats>)],
    histogram: &mut LatencyHistogram,
    total: u64,
    delivered: u64,
    elapsed: Duration,
) {
    println!();
    println!("Paths (client side):");
    println!(
        "  {:<24} {:>5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8} {:>9}",
        "path",
        "mtu",
        "srtt ms",
        "min ms",
        "sent pkt",
        "sent MiB",
        "recv pkt",
        "lost",
        "retx",
        "spur",
        "relay drop",
        "reordered",
    );
    let mut totals = [0u64; 6];
    for (i, p) in client.paths.iter().enumerate() {
        let s = &p.info.stats;
        let relay = relays
            .iter()
            .find(|(a, _, _)| p.remote == Address::Udp(*a).to_string());
        let (dropped, reordered) = relay.map_or((0, 0), |(_, _, r)| {
            (
                r.dropped.load(Ordering::Relaxed),
                r.reordered.load(Ordering::Relaxed),
            )
        });
        println!(
            "  {:<24} {:>5} {:>8.2} {:>8.2} {:>9} {:>9.2} {:>9} {:>7} {:>7} {:>6} {:>8} {:>9}",
            format!("{}: {}", i + 1, p.remote.trim_start_matches("udp://")),
            p.info.mtu,
            p.info.srtt.as_secs_f64() * 1000.0,
            p.info.min_rtt.unwrap_or_default().as_secs_f64() * 1000.0,
            s.sent_packets,
            mib(s.sent_bytes),
            s.received_packets,
            s.lost_packets,
            s.retransmits,
            s.spurious_retransmits,
            dropped,
            reordered,
        );
        for (t, v) in totals.iter_mut().zip([
            s.sent_packets,
            s.sent_bytes,
            s.received_packets,
            s.lost_packets,
            s.retransmits,
            s.spurious_retransmits,
        ]) {
            *t += v;
        }
    }
    println!(
        "  {:<24} {:>5} {:>8} {:>8} {:>9} {:>9.2} {:>9} {:>7} {:>7} {:>6}",
        "total",
        "",
        "",
        "",
        totals[0],
        mib(totals[1]),
        totals[2],
        totals[3],
        totals[4],
        totals[5]
    );
    let too_big: Vec<String> = relays
        .iter()
        .enumerate()
        .map(|(i, (_, config, r))| {
            format!(
                "path {}: {} over its {} B MTU",
                i + 1,
                r.too_big.load(Ordering::Relaxed),
                config.mtu
            )
        })
        .collect();
    println!(
        "  MTU probes the relays dropped for size (not in \"relay drop\"): {}",
        too_big.join(", ")
    );
    let payload: u64 = (0..delivered).map(|i| size_of(i) as u64).sum();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!();
    println!(
        "Delivered {delivered}/{total} messages ({:.2} MiB payload) in {:.2}s: {:.0} msg/s, {:.2} MiB/s; \
         server: {} delivered, {} malformed datagrams",
        mib(payload),
        seconds,
        delivered as f64 / seconds,
        mib(payload) / seconds,
        server.endpoint.delivered_messages,
        server
            .paths
            .iter()
            .map(|p| p.info.stats.malformed)
            .sum::<u64>(),
    );
    println!(
        "Message latency (send call to delivery): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        histogram.quantile(0.5).as_secs_f64() * 1000.0,
        histogram.quantile(0.9).as_secs_f64() * 1000.0,
        histogram.quantile(0.99).as_secs_f64() * 1000.0,
        histogram.max().as_secs_f64() * 1000.0,
    );
    print!("{histogram}");
    print_core_stats(&client.windows);
}

/// The core's windowed statistics of the client endpoint (all paths together): each
/// window's rates, RTT and loss, and the RTT histogram of the last 60 s.
fn print_core_stats(stats: &atbus_core::stats::StatsSnapshot) {
    use atbus_core::stats::{LatencyHistogram as CoreHistogram, Window};
    println!();
    println!("Core windows (client endpoint, complete seconds before now):");
    println!(
        "  {:<6} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9}",
        "window",
        "sent KiB/s",
        "recv KiB/s",
        "sent pkt",
        "recv pkt",
        "sent frag",
        "recv frag",
        "loss %",
        "avg rtt ms"
    );
    let or_dash = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for window in Window::ALL {
        let w = stats.window(window);
        println!(
            "  {:<6} {:>10.1} {:>10.1} {:>9} {:>9} {:>10} {:>10} {:>7} {:>9}",
            window.label(),
            w.bytes_sent_per_sec / 1024.0,
            w.bytes_received_per_sec / 1024.0,
            w.packets_sent,
            w.packets_received,
            w.fragments_sent,
            w.fragments_received,
            or_dash(w.loss_rate.map(|l| l * 100.0)),
            or_dash(w.average_rtt.map(|d| d.as_secs_f64() * 1000.0)),
        );
    }
    let t = &stats.totals;
    println!(
        "  totals: {} packets / {:.2} MiB sent, {} packets / {:.2} MiB received, \
         {} fragments sent, {} received, {} lost",
        t.packets_sent,
        mib(t.bytes_sent),
        t.packets_received,
        mib(t.bytes_received),
        t.fragments_sent,
        t.fragments_received,
        t.lost_packets,
    );
    let histogram = &stats.window(Window::S60).histogram;
    println!(
        "Core RTT histogram (last 60 s, {} samples):",
        histogram.total()
    );
    for (bucket, &count) in histogram.counts().iter().enumerate() {
        let Some((lower, upper)) = CoreHistogram::bucket_bounds(bucket) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        let range = match upper {
            Some(upper) => format!("[{}, {}) ms", lower.as_millis(), upper.as_millis()),
            None => format!(">= {} ms", lower.as_millis()),
        };
        println!("  {range:<18} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check_out_and_damage_is_seen() {
        for index in [0, 1, 77, 12_345] {
            let p = payload(index, 99);
            assert_eq!(check_payload(&p), Some((index, 99)));
            let mut damaged = p.to_vec();
            let last = damaged.len() - 1;
            damaged[last] ^= 1;
            assert_eq!(check_payload(&damaged), None);
        }
    }
}
