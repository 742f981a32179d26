//! `atbus send` and `atbus recv` as separate processes, as a user runs them.
//!
//! `atbus recv` prints `listening URL` on stderr for each bound address (with the
//! port the system chose for port 0); the tests read those lines to find the port.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

fn atbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atbus"))
}

/// A file of `len` bytes that is not a repeating pattern.
fn make_input(dir: &Path, len: usize) -> PathBuf {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join("input.bin");
    std::fs::write(&path, data).unwrap();
    path
}

/// Starts `atbus recv` and returns it with the addresses it listens on.
fn start_recv(listen: &[&str], out: &Path, runtime: &str) -> (Child, Vec<String>) {
    let mut cmd = atbus();
    cmd.arg("recv");
    for l in listen {
        cmd.args(["--listen", l]);
    }
    let mut child = cmd
        .args(["--runtime", runtime, "--json", "--out"])
        .arg(out)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addresses = Vec::new();
    while addresses.len() < listen.len() {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "recv ended early");
        if let Some(address) = line.trim().strip_prefix("listening ") {
            addresses.push(address.to_string());
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).unwrap_or(0) > 0 {}
    });
    (child, addresses)
}

fn wait(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{what} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(connect: &[String], input: &Path, runtime: &str, extra: &[&str]) -> Child {
    let mut cmd = atbus();
    cmd.arg("send");
    for c in connect {
        cmd.args(["--connect", c]);
    }
    cmd.args(["--runtime", runtime, "--in"])
        .arg(input)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// recv on `listen`, send to what it reports (through `route` when given), and
/// compare the files.
fn round_trip(
    listen: &[&str],
    runtime: &str,
    len: usize,
    route: impl FnOnce(Vec<String>) -> Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let listen: Vec<String> = listen
        .iter()
        .map(|l| l.replace("DIR", &dir.path().display().to_string()))
        .collect();
    let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
    let input = make_input(dir.path(), len);
    let out = dir.path().join("out.bin");
    let (mut receiver, addresses) = start_recv(&listen, &out, runtime);
    let mut sender = send(
        &route(addresses),
        &input,
        runtime,
        &["--message-size", "1000"],
    );
    let sent = wait(&mut sender, "send");
    let received = wait(&mut receiver, "recv");
    assert!(sent.success(), "send: {sent}");
    assert!(received.success(), "recv: {received}");
    let (a, b) = (std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(a.len(), b.len(), "lengths differ");
    assert!(a == b, "contents differ");
}

#[test]
fn a_file_arrives_byte_identical_over_udp_with_tokio_and_smol() {
    round_trip(&["udp://127.0.0.1:0"], "tokio", 1_000_003, |a| a);
    round_trip(&["udp://127.0.0.1:0"], "smol", 300_001, |a| a);
}

#[test]
fn bench_runs_on_smol_and_with_dedicated_io_threads() {
    for extra in [&["--runtime", "smol"][..], &["--io-thread"][..]] {
        let out = atbus()
            .args([
                "bench",
                "--transport",
                "udp",
                "--messages",
                "1000",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{extra:?}: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["messages"], 1000);
    }
}

#[test]
fn a_file_arrives_byte_identical_over_tcp_with_tokio_and_smol() {
    round_trip(&["tcp://127.0.0.1:0"], "tokio", 1_000_003, |a| a);
    round_trip(&["tcp://127.0.0.1:0"], "smol", 300_001, |a| a);
}

#[test]
fn a_file_arrives_byte_identical_over_unix_stream_and_datagram_sockets() {
    round_trip(&["unix://DIR/recv.sock"], "tokio", 500_000, |a| a);
    round_trip(&["unix://DIR/recv.sock"], "smol", 200_000, |a| a);
    round_trip(&["unixgram://DIR/recv.sock"], "tokio", 200_000, |a| a);
}

#[test]
fn a_file_arrives_byte_identical_over_a_multi_path_udp_and_tcp_peer() {
    round_trip(
        &["udp://127.0.0.1:0", "tcp://127.0.0.1:0"],
        "tokio",
        800_000,
        |a| a,
    );
}

/// What a relay does to a datagram it forwards (`true`: towards the receiver):
/// `None` drops it, `Some` sends these bytes instead.
type Filter = Arc<dyn Fn(bool, &[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// A UDP relay that drops 5 % of datagrams each way and holds some back so the
/// next one overtakes them (or, with [`Relay::filtered`], passes every datagram
/// through a filter).
struct Relay {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        Relay::with(target, 50, 30, Arc::new(|_, d: &[u8]| Some(d.to_vec())))
    }

    /// A relay that neither drops nor reorders, and applies `filter`.
    fn filtered(target: SocketAddr, filter: Filter) -> Relay {
        Relay::with(target, 0, 0, filter)
    }

    /// Drops `drop_per_mille` of the datagrams, holds back `hold_per_mille`, and
    /// passes the rest through `filter`.
    fn with(target: SocketAddr, drop_per_mille: u64, hold_per_mille: u64, filter: Filter) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let address = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        for forward in [true, false] {
            let (front, back, stop, dropped, client, filter) = (
                front.clone(),
                back.clone(),
                stop.clone(),
                dropped.clone(),
                client.clone(),
                filter.clone(),
            );
            std::thread::spawn(move || {
                let mut x: u64 = if forward { 7 } else { 11 };
                let mut held: Option<Vec<u8>> = None;
                let mut buf = vec![0u8; 65536];
                let (from, to) = if forward {
                    (&front, &back)
                } else {
                    (&back, &front)
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, source)) = from.recv_from(&mut buf) else {
                        // Idle: release what was held back.
                        if let (Some(data), Some(dest)) =
                            (held.take(), dest(forward, target, &client))
                        {
                            let _ = to.send_to(&data, dest);
                        }
                        continue;
                    };
                    if forward {
                        *client.lock().unwrap() = Some(source);
                    }
                    let Some(dest) = dest(forward, target, &client) else {
                        continue;
                    };
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let roll = x % 1000;
                    if roll < drop_per_mille {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Some(data) = filter(forward, &buf[..n]) else {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if roll < drop_per_mille + hold_per_mille && held.is_none() {
                        held = Some(data);
                        continue;
                    }
                    let _ = to.send_to(&data, dest);
                    if let Some(data) = held.take() {
                        let _ = to.send_to(&data, dest);
                    }
                }
            });
        }
        Relay {
            address,
            stop,
            dropped,
        }
    }
}

fn dest(
    forward: bool,
    target: SocketAddr,
    client: &std::sync::Mutex<Option<SocketAddr>>,
) -> Option<SocketAddr> {
    if forward {
        Some(target)
    } else {
        *client.lock().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn udp_target(address: &str) -> SocketAddr {
    address.strip_prefix("udp://").unwrap().parse().unwrap()
}

#[test]
fn a_file_arrives_byte_identical_through_a_relay_that_drops_5_percent_and_reorders() {
    let mut relay = None;
    round_trip(&["udp://127.0.0.1:0"], "tokio", 400_000, |addresses| {
        let r = Relay::start(udp_target(&addresses[0]));
        let via = format!("udp://{}", r.address);
        relay = Some(r);
        vec![via]
    });
    let dropped = relay.unwrap().dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "the relay dropped nothing");
}

/// Regression: `atbus recv` used to close as soon as its own end of the stream
/// was acknowledged. When the acknowledgement of the sender's last data had been
/// lost, the sender's retransmission then found no one to acknowledge it, and
/// `atbus send` waited forever (1 run in 20 through the 5 % relay above). Here the
/// relay deterministically strips every acknowledgement of the file's tail from
/// the receiver until 200 ms after the receiver's end of stream went by: the
/// sender only completes if the receiver is still there to acknowledge a
/// retransmission.
#[test]
fn the_receiver_stays_until_the_sender_knows_its_last_data_arrived() {
    use atbus_proto::{DecodeLimits, Frames, encode_frame, pb};
    const LEN: usize = 400_000;
    const STREAM: i64 = 1;
    let fin_flag = pb::AtbusPacketFlagType::FinishStream as i32;
    let fin_seen: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stripped = Arc::new(AtomicU64::new(0));
    let filter: Filter = {
        let (fin_seen, stripped) = (fin_seen.clone(), stripped.clone());
        Arc::new(move |forward, data: &[u8]| {
            if forward {
                return Some(data.to_vec());
            }
            let frames: Result<Vec<pb::FrameMessage>, _> =
                Frames::new(bytes::Bytes::copy_from_slice(data), DecodeLimits::default()).collect();
            let Ok(frames) = frames else {
                return Some(data.to_vec());
            };
            let mut fin_seen = fin_seen.lock().unwrap();
            if frames.iter().any(|f| {
                matches!(&f.body, Some(pb::frame_message::Body::Packet(p))
                    if p.stream_id == STREAM && p.flags & fin_flag != 0)
            }) {
                fin_seen.get_or_insert_with(Instant::now);
            }
            if fin_seen.is_some_and(|t| t.elapsed() > Duration::from_millis(200)) {
                return Some(data.to_vec());
            }
            let tail_ack = |f: &pb::FrameMessage| {
                matches!(&f.body, Some(pb::frame_message::Body::Acknowledge(a))
                if a.acknowledge.as_ref().is_some_and(|a| {
                    a.stream_id == STREAM && a.acknowledge_offset >= LEN as i64
                }))
            };
            let kept: Vec<_> = frames.iter().filter(|f| !tail_ack(f)).collect();
            if kept.len() == frames.len() {
                return Some(data.to_vec());
            }
            stripped.fetch_add(1, Ordering::Relaxed);
            if kept.is_empty() {
                return None;
            }
            let mut out = bytes::BytesMut::new();
            for f in kept {
                encode_frame(f, &mut out);
            }
            Some(out.to_vec())
        })
    };
    let mut relay = None;
    round_trip(&["udp://127.0.0.1:0"], "tokio", LEN, |addresses| {
        let r = Relay::filtered(udp_target(&addresses[0]), filter);
        let via = format!("udp://{}", r.address);
        relay = Some(r);
        vec![via]
    });
    drop(relay);
    assert!(fin_seen.lock().unwrap().is_some(), "no end of stream seen");
    assert!(
        stripped.load(Ordering::Relaxed) > 0,
        "no acknowledgement of the tail was stripped"
    );
}

#[test]
fn garbage_datagrams_during_a_transfer_do_not_disturb_it() {
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooder = None;
    round_trip(&["udp://127.0.0.1:0"], "tokio", 1_000_000, |addresses| {
        let target = udp_target(&addresses[0]);
        let stop = stop.clone();
        flooder = Some(std::thread::spawn(move || {
            let sockets: Vec<UdpSocket> = (0..4)
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let junk: Vec<u8> = (0..(i * 37) % 1400 + 1).map(|k| (k * i) as u8).collect();
                let mut framed = junk.clone();
                framed[0] = 3; // a frame version, then nonsense
                let _ = sockets[i % 4].send_to(if i % 2 == 0 { &junk } else { &framed }, target);
                i += 1;
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            i
        }));
        addresses
    });
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.unwrap().join().unwrap();
    assert!(sent > 0);
}

#[test]
fn errors_say_what_went_wrong_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_input(dir.path(), 10);
    let out = send(&["tcp://127.0.0.1:1".into()], &input, "tokio", &[])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());

    let refused = atbus()
        .args(["send", "--connect", "tcp://127.0.0.1:1", "--in"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot connect to tcp://127.0.0.1:1"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", taken.local_addr().unwrap());
    let in_use = atbus()
        .args(["recv", "--listen", &address])
        .output()
        .unwrap();
    assert_eq!(in_use.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&in_use.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("in use"),
        "{stderr}"
    );

    let bad = atbus()
        .args(["send", "--connect", "127.0.0.1:7000"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an address URL"));

    // No listener on this ring: the dial fails and says which address.
    let missing = format!("shm://atbus-test-cli-missing-{}", std::process::id());
    let shm = atbus()
        .args(["send", "--connect", &missing, "--in"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(shm.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&shm.stderr).contains(&missing[6..]));
}

#[test]
fn bench_reports_rate_throughput_and_latency_as_json() {
    for transport in ["mem", "udp", "tcp", "unix", "shm"] {
        let out = atbus()
            .args([
                "bench",
                "--transport",
                transport,
                "--messages",
                "2000",
                "--size",
                "512",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{transport}: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["messages"], 2000, "{transport}");
        assert_eq!(report["payload_bytes"], 2000 * 512, "{transport}");
        for field in ["seconds", "msgs_per_sec", "mib_per_sec"] {
            assert!(report[field].as_f64().unwrap() > 0.0, "{transport} {field}");
        }
        for field in ["p50", "p99", "max"] {
            assert!(
                report["latency_us"][field].as_f64().is_some(),
                "{transport} {field}"
            );
        }
    }
}

#[test]
fn a_sender_with_the_wrong_token_is_told_it_was_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let input = make_input(dir.path(), 1000);
    let out = dir.path().join("out.bin");
    let mut cmd = atbus();
    let mut receiver = cmd
        .args([
            "recv",
            "--listen",
            "udp://127.0.0.1:0",
            "--token",
            "secret",
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(receiver.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line.trim().strip_prefix("listening ").unwrap().to_string();
    let rejected = atbus()
        .args(["send", "--connect", &address, "--token", "guess", "--in"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1));
    let message = String::from_utf8_lossy(&rejected.stderr);
    assert!(message.contains("rejected"), "{message}");
    let accepted = atbus()
        .args(["send", "--connect", &address, "--token", "secret", "--in"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(accepted.status.success(), "{accepted:?}");
    assert!(wait(&mut receiver, "recv").success());
    assert_eq!(std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
}

/// A shm ring name unique to this test process and call.
fn shm_name(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("atbus-test-cli-{tag}-{}-{n}", std::process::id())
}

/// Ring files under /dev/shm whose name starts with `prefix`.
fn shm_files(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn a_file_arrives_byte_identical_over_shm_with_tokio_and_smol() {
    let name = shm_name("file");
    let url = format!("shm://{name}");
    round_trip(&[&url], "tokio", 1_000_003, |a| a);
    round_trip(&[&url], "smol", 300_001, |a| a);
    assert_eq!(shm_files(&name), Vec::<String>::new());
}

/// The receiver notices a sender killed with SIGKILL (its process is gone), keeps
/// a clean prefix of the data, and exits with an error once the peer is given up
/// (no connection left and the peer linger elapsed); every ring is removed.
#[test]
fn a_sender_killed_mid_transfer_over_shm_leaves_a_clean_prefix() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let name = shm_name("kill");
    let url = format!("shm://{name}");
    let out = dir.path().join("out.bin");
    let (mut receiver, addresses) = start_recv(&[&url], &out, "tokio");
    let mut sender = atbus()
        .args(["send", "--connect", &addresses[0], "--message-size", "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Half the data goes in; the sender stays alive waiting for the rest.
    let input = {
        let path = make_input(dir.path(), 400_000);
        std::fs::read(path).unwrap()
    };
    let mut stdin = sender.stdin.take().unwrap();
    stdin.write_all(&input[..200_000]).unwrap();
    stdin.flush().unwrap();
    let start = Instant::now();
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 100_000 {
        assert!(start.elapsed() < LIMIT, "nothing arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    sender.kill().unwrap(); // SIGKILL
    sender.wait().unwrap();
    drop(stdin);
    let status = wait(&mut receiver, "recv");
    assert!(!status.success(), "recv must report the lost sender");
    let received = std::fs::read(&out).unwrap();
    assert!(received.len() >= 100_000 && received.len() <= 200_000);
    assert!(
        input[..received.len()] == received[..],
        "not a prefix of the input"
    );
    assert_eq!(shm_files(&name), Vec::<String>::new());
}
