//! The adapters' loopback scenarios, written once against [`Runtime`]: each is an
//! `async fn(R)` that binds nodes on real loopback sockets, drives them and panics
//! on any failure. [`loopback_tests!`](crate::loopback_tests) turns every one into
//! a `#[test]` of the adapter crate that invokes it, so tokio and smol run the
//! same list. Every wait is bounded by [`LIMIT`].

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;

use super::{payload, receive_numbered, receive_numbered_batched, send_numbered};

mod flow;
use crate::runtime::Runtime;
use crate::{
    Address, CloseCode, CommandId, Event, Node, NodeConfig, NodeError, NodeStats, PeerId,
    SendOptions,
};
pub use flow::{
    a_node_whose_application_does_not_read_holds_bounded_memory,
    a_send_given_up_while_waiting_for_the_window_is_not_sent_later,
    an_echo_server_awaiting_each_reply_in_its_receive_loop_does_not_wedge,
    connect_and_waits_complete_while_the_application_reads_no_events,
};

/// How long any scenario waits for a transfer or an event before failing.
pub const LIMIT: Duration = Duration::from_secs(30);

/// `fut`'s output, or a panic if it takes longer than [`LIMIT`].
async fn within<R: Runtime, T>(rt: &R, fut: impl Future<Output = T>) -> T {
    let deadline = rt.sleep_until(Instant::now() + LIMIT);
    future::or(async { Some(fut.await) }, async {
        deadline.await;
        None
    })
    .await
    .expect("finished in time")
}

/// Waits `duration` on the runtime's timer.
async fn sleep<R: Runtime>(rt: &R, duration: Duration) {
    rt.sleep_until(Instant::now() + duration).await
}

fn bind<R: Runtime + Clone>(rt: &R, config: NodeConfig) -> Result<Node, crate::NodeError> {
    Node::start(config, rt.clone())
}

fn server<R: Runtime + Clone>(rt: &R, listen: &[&str]) -> Node {
    let mut config = NodeConfig::new("server");
    for a in listen {
        config = config.listen(a.parse().unwrap());
    }
    bind(rt, config).expect("bind")
}

fn addresses(node: &Node) -> Vec<Address> {
    node.local_addresses().to_vec()
}

/// The UDP address `node` listens on first (its first listener is a UDP one).
fn udp_address(node: &Node) -> SocketAddr {
    let Address::Udp(address) = addresses(node)[0] else {
        unreachable!()
    };
    address
}

/// `count` plain UDP sockets on loopback, to send raw datagrams from.
fn udp_sockets(count: usize) -> Vec<UdpSocket> {
    (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect()
}

/// Sends `count` messages of `size` bytes from a new client to `server` over
/// `addresses`, finishes the stream, and checks every message arrives once, in
/// order. Returns the client (dropping it closes its connections).
async fn transfer<R: Runtime + Clone>(
    rt: &R,
    server: &Node,
    addresses: &[Address],
    count: u32,
    size: usize,
) -> Node {
    let client = bind(rt, NodeConfig::new("client")).expect("bind");
    let peer = client.connect(addresses).await.expect("connect");
    let sending = send_numbered(&client, peer, count, size);
    let receiving = receive_numbered(server, count, size);
    within(rt, future::zip(sending, receiving)).await;
    client
}

/// Sends messages `0..count` of `size` bytes on stream 1, calling `midway` after
/// message `count / 2`, and receives them at `server` once and in order.
async fn transfer_around<R: Runtime + Clone, M: Future<Output = ()>>(
    rt: &R,
    client: &Node,
    peer: PeerId,
    server: &Node,
    (count, size): (u32, usize),
    midway: impl FnOnce() -> M,
) {
    let sending = async {
        let mut midway = Some(midway);
        for i in 0..count {
            client
                .send(peer, 1, payload(i, size), SendOptions::default())
                .await
                .unwrap();
            if i == count / 2 {
                if let Some(midway) = midway.take() {
                    midway().await;
                }
            }
        }
        client.finish(peer, 1).await.unwrap();
    };
    let receiving = receive_numbered(server, count, size);
    within(rt, future::zip(sending, receiving)).await;
}

/// A ring name unique to this test process and call.
fn shm_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("atbus-test-{tag}-{}-{n}", std::process::id())
}

/// Files under /dev/shm whose name starts with `prefix`.
fn shm_files(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A byte stream a [`CuttableProxy`] can pipe and cut.
trait Pipe: Read + Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn cut(&self);
}

impl Pipe for TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn cut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Pipe for UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn cut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// A stream proxy on threads whose connections can be cut, like a network
/// failure.
struct CuttableProxy<S> {
    live: Arc<Mutex<Vec<S>>>,
}

impl<S: Pipe> CuttableProxy<S> {
    /// Accepts with `accept` (on a thread of its own) and pipes each client to
    /// a new connection made by `connect`.
    fn start(
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
        connect: impl Fn() -> std::io::Result<S> + Send + 'static,
    ) -> CuttableProxy<S> {
        let live = Arc::new(Mutex::new(Vec::new()));
        let registry = live.clone();
        std::thread::spawn(move || {
            loop {
                let Ok(client) = accept() else { return };
                let Ok(server) = connect() else { continue };
                let (Ok(c2), Ok(s2)) = (client.duplicate(), server.duplicate()) else {
                    continue;
                };
                let (Ok(c3), Ok(s3)) = (client.duplicate(), server.duplicate()) else {
                    continue;
                };
                registry.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in [(c2, s2), (s3, c3)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        to.cut();
                    });
                }
            }
        });
        CuttableProxy { live }
    }

    /// Cuts every connection through the proxy.
    fn cut(&self) {
        for stream in self.live.lock().unwrap().drain(..) {
            stream.cut();
        }
    }
}

/// A UDP relay on threads that can black-hole everything for a while: its
/// address, and the switch.
fn pausable_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let address = front.local_addr().unwrap();
    let blocked = Arc::new(AtomicBool::new(false));
    let client = Arc::new(Mutex::new(None));
    for forward in [true, false] {
        let (front, back, blocked, client) =
            (front.clone(), back.clone(), blocked.clone(), client.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let (from, to) = if forward {
                (&front, &back)
            } else {
                (&back, &front)
            };
            while let Ok((n, source)) = from.recv_from(&mut buf) {
                if forward {
                    *client.lock().unwrap() = Some(source);
                }
                if blocked.load(Ordering::Relaxed) {
                    continue;
                }
                let dest = if forward {
                    Some(target)
                } else {
                    *client.lock().unwrap()
                };
                if let Some(dest) = dest {
                    let _ = to.send_to(&buf[..n], dest);
                }
            }
        });
    }
    (address, blocked)
}

/// 2000 messages of 3000 B over UDP arrive once and in order.
pub async fn udp_transfer_arrives_in_order<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["udp://127.0.0.1:0"]);
    let client = transfer(&rt, &server, &addresses(&server), 2000, 3000).await;
    client.close().await;
    server.close().await;
}

/// Waits (bounded by [`LIMIT`]) until the first path of `client` has an MTU of
/// at least `at_least`, and returns it.
async fn mtu_reaching<R: Runtime>(rt: &R, client: &Node, at_least: usize) -> usize {
    within(rt, async {
        loop {
            let mtu = client.stats().await.unwrap().paths[0].info.mtu;
            if mtu >= at_least {
                break mtu;
            }
            future::yield_now().await;
        }
    })
    .await
}

/// A client connected to a new UDP server on 127.0.0.1, both with `ceiling`.
async fn udp_pair<R: Runtime + Clone>(
    rt: &R,
    ceiling: crate::UdpPmtudCeiling,
) -> (Node, Node, PeerId) {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.udp_pmtud_ceiling = ceiling;
    let server = bind(rt, config).expect("bind");
    let mut config = NodeConfig::new("client");
    config.udp_pmtud_ceiling = ceiling;
    let client = bind(rt, config).expect("bind");
    let peer = client.connect(&addresses(&server)).await.expect("connect");
    (server, client, peer)
}

/// PMTUD is on by default: the path starts at 548 bytes and probes upward to the
/// route's MTU, which loopback reports as the MTU of `lo` (65536 on Linux): the
/// path finds 65507 bytes (the largest IPv4 UDP payload), and data then flows
/// in datagrams of that size.
pub async fn a_udp_path_discovers_the_loopback_mtu<R: Runtime + Clone>(rt: R) {
    use atbus_core::connection::pmtud::DEFAULT_MAX;
    // What `ip link` says of loopback (read here apart from the node's socket
    // option), less the IPv4 and UDP headers, within one datagram's limit.
    let expected = match std::fs::read_to_string("/sys/class/net/lo/mtu") {
        Ok(lo) => (lo.trim().parse::<usize>().unwrap() - 28).min(65_507),
        Err(_) => DEFAULT_MAX, // no route MTU to read: the configured maximum
    };
    let (server, client, peer) = udp_pair(&rt, crate::UdpPmtudCeiling::default()).await;
    let mtu = mtu_reaching(&rt, &client, expected).await;
    assert_eq!(mtu, expected);
    // The listening side looks its peer's route up as well (its socket is not
    // connected): its path to the client finds the same size.
    assert_eq!(mtu_reaching(&rt, &server, expected).await, expected);
    let stats = client.stats().await.unwrap();
    let pmtud = stats.paths[0].info.pmtud.expect("PMTUD runs on UDP");
    assert_eq!(pmtud.black_holes, 0, "{pmtud:?}");
    // Data now leaves in datagrams of the MTU found: 40 messages of 60,000 B
    // reach the server in datagrams averaging well above Ethernet's 1452.
    let received = |s: &NodeStats| {
        let c = &s.paths[0].info.stats;
        (c.received_bytes, c.received_packets)
    };
    let (bytes_before, packets_before) = received(&server.stats().await.unwrap());
    let sending = send_numbered(&client, peer, 40, 60_000);
    let receiving = receive_numbered(&server, 40, 60_000);
    within(&rt, future::zip(sending, receiving)).await;
    let (bytes_after, packets_after) = received(&server.stats().await.unwrap());
    let packets = packets_after - packets_before;
    let average = usize::try_from((bytes_after - bytes_before) / packets.max(1)).unwrap();
    assert!(bytes_after - bytes_before >= 40 * 60_000);
    if expected > DEFAULT_MAX {
        assert!(average > 8 * DEFAULT_MAX, "{average} B per datagram");
    }
    assert!(average <= mtu, "{average} B per datagram");
    client.close().await;
    server.close().await;
}

/// With the ceiling fixed ([`crate::UdpPmtudCeiling::Fixed`]) loopback's path
/// stops at the configured maximum, 1452, whatever the route carries.
pub async fn a_udp_path_with_a_fixed_ceiling_stops_at_the_configured_maximum<R: Runtime + Clone>(
    rt: R,
) {
    use atbus_core::connection::pmtud::DEFAULT_MAX;
    let (server, client, peer) = udp_pair(&rt, crate::UdpPmtudCeiling::Fixed).await;
    let sending = send_numbered(&client, peer, 200, 3000);
    let receiving = receive_numbered(&server, 200, 3000);
    within(&rt, future::zip(sending, receiving)).await;
    assert_eq!(mtu_reaching(&rt, &client, DEFAULT_MAX).await, DEFAULT_MAX);
    let stats = client.stats().await.unwrap();
    let pmtud = stats.paths[0].info.pmtud.expect("PMTUD runs on UDP");
    assert!(pmtud.black_holes <= pmtud.probes_lost, "{pmtud:?}");
    client.close().await;
    server.close().await;
}

/// A transfer over IPv6 loopback (skipped where there is none).
pub async fn udp_over_ipv6_transfer_arrives_in_order<R: Runtime + Clone>(rt: R) {
    let Ok(server) = bind(
        &rt,
        NodeConfig::new("server").listen("udp://[::1]:0".parse().unwrap()),
    ) else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    transfer(&rt, &server, &addresses(&server), 500, 2000).await;
}

/// Small messages over TCP and a Unix stream, received with `recv_many`: every
/// message once and in order, no batch empty or above its bound.
pub async fn small_messages_received_in_batches_arrive_once_in_order<R: Runtime + Clone>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix://{}", dir.path().join("s.sock").display());
    let server = server(&rt, &["tcp://127.0.0.1:0", &unix]);
    for address in addresses(&server) {
        let client = bind(&rt, NodeConfig::new("client")).expect("bind");
        let peer = client.connect(&[address]).await.expect("connect");
        let sending = send_numbered(&client, peer, 5000, 64);
        let receiving = receive_numbered_batched(&server, 5000, 64, 64);
        within(&rt, future::zip(sending, receiving)).await;
        client.close().await;
    }
}

/// 2000 messages of 3000 B over TCP arrive once and in order.
pub async fn tcp_transfer_arrives_in_order<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    transfer(&rt, &server, &addresses(&server), 2000, 3000).await;
}

/// Transfers over a Unix stream socket and a Unix datagram socket.
pub async fn unix_stream_and_datagram_transfers_arrive_in_order<R: Runtime + Clone>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let stream = format!("unix://{}", dir.path().join("s.sock").display());
    let dgram = format!("unixgram://{}", dir.path().join("d.sock").display());
    let server = server(&rt, &[&stream, &dgram]);
    transfer(&rt, &server, &[stream.parse().unwrap()], 1000, 5000).await;
    transfer(&rt, &server, &[dgram.parse().unwrap()], 1000, 5000).await;
}

/// A peer reached over UDP and TCP at once, with the round-robin scheduler:
/// each path carries data: at least 1 % of it (60 KB) each, where the hello,
/// pings and MTU probes are about 10 KB (all that went on the TCP path with the
/// min-RTT scheduler in a run here). Round robin gives the TCP path most of it:
/// the UDP path's congestion window stays smaller.
pub async fn multi_path_udp_and_tcp_peer_uses_both_paths<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]);
    let mut config = NodeConfig::new("client");
    config.scheduler = atbus_core::Scheduler::RoundRobin;
    let client = bind(&rt, config).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    let (count, size) = (3000, 2000);
    let sending = send_numbered(&client, peer, count, size);
    within(
        &rt,
        future::zip(sending, receive_numbered(&server, count, size)),
    )
    .await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.paths.len(), 2, "{stats:?}");
    let share = count as u64 * size as u64 / 100;
    for path in &stats.paths {
        assert!(
            path.info.stats.sent_bytes >= share,
            "{} carried {} bytes: {:?}",
            path.remote,
            path.info.stats.sent_bytes,
            stats.paths
        );
    }
}

/// Binding a taken address, dialling a closed port or a missing ring: clear
/// errors.
pub async fn connecting_to_nothing_or_binding_twice_fails_clearly<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let taken = addresses(&server)[0].clone();
    let err = bind(&rt, NodeConfig::new("x").listen(taken)).unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let err = client
        .connect(&["tcp://127.0.0.1:1".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot connect to tcp://127.0.0.1:1"),
        "{err}"
    );
    let nothing: Address = format!("shm://{}", shm_name("nothing")).parse().unwrap();
    let err = client.connect(&[nothing]).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A connect whose first address is refused while a later one (a Unix datagram
/// listener) was dialled leaves no client socket file behind.
pub async fn a_failed_connect_leaves_no_unix_datagram_socket_file<R: Runtime + Clone>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unixgram://{}", dir.path().join("server.sock").display());
    let server = server(&rt, &[&listen]);
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let to = [
        format!("tcp://{refused}").parse().unwrap(),
        listen.parse().unwrap(),
    ];
    let err = within(&rt, client.connect(&to)).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to tcp://"),
        "{err}"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["server.sock"], "files left: {files:?}");
    client.close().await;
    server.close().await;
}

/// Malformed datagrams during a transfer are counted and dropped.
pub async fn garbage_datagrams_are_dropped_and_the_node_keeps_serving<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["udp://127.0.0.1:0"]);
    let target = udp_address(&server);
    let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
    let flood = async {
        for i in 0..2000u32 {
            let mut junk = vec![0xffu8; (i as usize * 7) % 1400 + 1];
            junk[0] = 3; // version 3, then a huge varint length
            let _ = garbage.send_to(&junk, target);
            if i % 50 == 0 {
                future::yield_now().await;
            }
        }
    };
    let to = addresses(&server);
    let (client, ()) = future::zip(transfer(&rt, &server, &to, 1000, 1000), flood).await;
    drop(client);
    let stats = server.stats().await.unwrap();
    let malformed: u64 = stats.paths.iter().map(|p| p.info.stats.malformed).sum();
    assert!(malformed > 0 || stats.dropped_datagrams > 0, "{stats:?}");
}

/// A huge declared length and a truncated frame close only their own TCP
/// connections.
pub async fn truncated_and_oversized_frames_on_tcp_close_only_that_connection<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let Address::Tcp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let mut hostile = TcpStream::connect(target).unwrap();
    hostile
        .write_all(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3])
        .unwrap();
    let mut truncated = TcpStream::connect(target).unwrap();
    truncated.write_all(&[3, 40, 1, 2]).unwrap();
    // Half-closed: the server reads the cut-off frame, then end of stream.
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    let closed = [hostile, truncated].map(closed_by_server);
    transfer(&rt, &server, &addresses(&server), 500, 1000).await;
    for (name, closed) in ["oversized", "truncated"].into_iter().zip(closed) {
        let outcome = within(&rt, closed.recv()).await.expect("reader thread");
        assert!(outcome.is_ok(), "{name} frame: {outcome:?}");
    }
}

/// A FINISH_CONNECTION on a TCP connection that never sent a hello closes it
/// without telling the application, which never heard of the connection (and a
/// flood of them cannot fill its event queue).
pub async fn a_finish_before_any_hello_closes_silently<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let Address::Tcp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let finish = crate::driver::control_frame(
        "spoofed",
        atbus_proto::pb::AtbusPacketFlagType::FinishConnection as i32,
    );
    let mut finisher = TcpStream::connect(target).unwrap();
    finisher.write_all(&finish).unwrap();
    let closed = within(&rt, closed_by_server(finisher).recv()).await;
    assert!(closed.expect("reader thread").is_ok());
    // The close was drained before the socket went; the stats answer comes after.
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.open_sockets, 0, "{stats:?}");
    while let Some(event) = server.try_recv() {
        assert!(
            !matches!(event, Event::ConnectionClosed { .. }),
            "{event:?}"
        );
    }
    server.close().await;
}

/// Watches `stream` on a thread of its own until the server closes it: `Ok` on end
/// of stream or reset (whatever the server wrote before, e.g. a close frame, is
/// read and ignored), `Err` if it stays open past [`LIMIT`] or keeps writing.
fn closed_by_server(mut stream: TcpStream) -> async_channel::Receiver<Result<(), String>> {
    let (tx, rx) = async_channel::bounded(1);
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        let outcome = loop {
            match stream.read(&mut buf) {
                Ok(0) => break Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
                Ok(n) if read + n <= 64 * 1024 => read += n,
                Ok(_) => break Err("the server wrote more than 64 KiB".to_string()),
                Err(e) => break Err(format!("still open after {read} bytes: {e}")),
            }
        };
        let _ = tx.try_send(outcome);
    });
    rx
}

/// Closing the only TCP connection mid-transfer: it is redialled and nothing is
/// lost.
pub async fn a_dropped_tcp_connection_is_redialled_and_the_transfer_completes<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    transfer_around(&rt, &client, peer, &server, (3000, 1500), || async {
        let stats = client.stats().await.unwrap();
        client
            .close_connection(stats.paths[0].connection)
            .await
            .unwrap();
    })
    .await;
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

/// The dedicated I/O thread option serves like the shared runtime.
pub async fn a_node_on_a_dedicated_thread_serves_like_any_other<R: Runtime + Clone>(rt: R) {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.dedicated_thread = true;
    let server = bind(&rt, config).unwrap();
    transfer(&rt, &server, &addresses(&server), 1000, 1000).await;
}

/// A TCP connection cut by the network mid-transfer: redialled, nothing lost.
pub async fn a_cut_tcp_connection_is_redialled_and_data_in_flight_survives<R: Runtime + Clone>(
    rt: R,
) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let Address::Tcp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let front = listener.local_addr().unwrap();
    let proxy = CuttableProxy::start(
        move || listener.accept().map(|(s, _)| s),
        move || TcpStream::connect(target),
    );
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client.connect(&[Address::Tcp(front)]).await.unwrap();
    transfer_around(&rt, &client, peer, &server, (4000, 1500), || async {
        proxy.cut()
    })
    .await;
    within(&rt, client.wait_acknowledged(peer)).await.unwrap();
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

/// A Unix stream connection cut mid-transfer: redialled, nothing lost.
pub async fn a_cut_unix_stream_connection_is_redialled_and_data_in_flight_survives<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("server.sock");
    let front = dir.path().join("proxy.sock");
    let server = server(&rt, &[&format!("unix://{}", target.display())]);
    let listener = UnixListener::bind(&front).unwrap();
    let proxy = CuttableProxy::start(
        move || listener.accept().map(|(s, _)| s),
        move || UnixStream::connect(&target),
    );
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client
        .connect(&[format!("unix://{}", front.display()).parse().unwrap()])
        .await
        .unwrap();
    transfer_around(&rt, &client, peer, &server, (3000, 2000), || async {
        proxy.cut()
    })
    .await;
    within(&rt, client.wait_acknowledged(peer)).await.unwrap();
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

/// Garbage from 32 ports cannot hold the pending-accept slots against a real
/// client.
pub async fn a_garbage_flood_from_many_ports_cannot_hold_the_accept_slots<R: Runtime + Clone>(
    rt: R,
) {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.max_pending_accepts = 4;
    let server = bind(&rt, config).unwrap();
    let to = addresses(&server);
    let target = udp_address(&server);
    let flooders = udp_sockets(32);
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let junk = vec![(i % 7) as u8 + 1; i % 900 + 1];
                let _ = flooders[i % 32].send_to(&junk, target);
                i += 1;
                if i % 32 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // Kept alive until the stats are read: dropping it closes its connection.
    let client = transfer(&rt, &server, &to, 1000, 1000).await;
    stop.store(true, Ordering::Relaxed);
    flooding.join().unwrap();
    let stats = server.stats().await.unwrap();
    assert!(stats.dropped_datagrams > 0, "{stats:?}");
    // The real client's connection is the one established; garbage from the end
    // of the flood may still hold (at most) the pending-accept slots or be
    // flushing its close.
    use atbus_core::ConnectionState;
    let count = |state| stats.paths.iter().filter(|p| p.info.state == state).count();
    assert_eq!(count(ConnectionState::Established), 1, "{:?}", stats.paths);
    assert!(
        count(ConnectionState::Handshaking) <= 4,
        "{:?}",
        stats.paths
    );
    client.close().await;
}

/// A reader that pauses now and then, with an event queue of 8: the node holds
/// delivery back for it (counted in `delivery_pauses`) and loses nothing.
pub async fn a_slow_reader_pauses_the_node_without_losing_messages<R: Runtime + Clone>(rt: R) {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.event_capacity = 8;
    let server = bind(&rt, config).unwrap();
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    let count = 3000u32;
    let sending = async {
        for i in 0..count {
            client
                .send(peer, 1, payload(i, 700), SendOptions::default())
                .await
                .unwrap();
        }
        client.finish(peer, 1).await.unwrap();
    };
    let receiving = async {
        let mut next = 0;
        loop {
            match server.recv().await.unwrap() {
                Event::Message { message, .. } => {
                    assert_eq!(message.payload, payload(next, 700), "message {next}");
                    next += 1;
                    if next % 200 == 0 {
                        sleep(&rt, Duration::from_millis(20)).await;
                    }
                }
                Event::StreamFinished { .. } => break,
                _ => {}
            }
        }
        assert_eq!(next, count);
    };
    within(&rt, future::zip(sending, receiving)).await;
    let stats = server.stats().await.unwrap();
    assert!(
        stats.delivery_pauses > 0,
        "the queue of 8 events never filled: nothing was held back"
    );
}

/// `send_many` batches queue past a full 64 KiB stream window, in order.
pub async fn send_many_queues_batches_in_order_past_a_full_window<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let mut config = NodeConfig::new("client");
    config.endpoint.stream_send_window = 64 * 1024;
    let client = bind(&rt, config).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    let (batches, per_batch) = (50u32, 100u32);
    let sending = async {
        for b in 0..batches {
            let batch = (0..per_batch)
                .map(|i| payload(b * per_batch + i, 900))
                .collect();
            client
                .send_many(peer, 1, batch, SendOptions::default())
                .await
                .unwrap();
        }
        client.finish(peer, 1).await.unwrap();
    };
    let receiving = receive_numbered(&server, batches * per_batch, 900);
    within(&rt, future::zip(sending, receiving)).await;
}

/// Batches of 64 B messages cut from one buffer each (`Bytes::slice`, no
/// allocation per message), some with labels and a token, over TCP and a Unix
/// stream with small windows both ways: every message arrives once, in order,
/// with its own metadata, through `recv_many`.
pub async fn sliced_small_message_batches_arrive_once_in_order_with_metadata<R: Runtime + Clone>(
    rt: R,
) {
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix://{}", dir.path().join("s.sock").display());
    let mut server_config = NodeConfig::new("server");
    server_config.listen = vec!["tcp://127.0.0.1:0".parse().unwrap(), unix.parse().unwrap()];
    server_config.endpoint.stream_receive_window = 16 * 1024;
    let server = bind(&rt, server_config).unwrap();
    let (batches, per_batch, size) = (20u32, 500u32, 64usize);
    for address in addresses(&server) {
        let mut config = NodeConfig::new("client");
        config.endpoint.stream_send_window = 16 * 1024;
        let client = bind(&rt, config).unwrap();
        let peer = client.connect(&[address]).await.unwrap();
        let sending = send_sliced_batches(&client, peer, batches, per_batch, size, true);
        let receiving = async {
            let (mut next, mut events) = (0u32, Vec::new());
            'receive: loop {
                server.recv_many(&mut events, 256).await;
                for event in events.drain(..) {
                    match event {
                        Event::Message {
                            stream: 1, message, ..
                        } => {
                            assert_eq!(message.payload, payload(next, size), "message {next}");
                            let b = next / per_batch;
                            if b % 2 == 1 {
                                assert_eq!(message.labels.get("batch"), Some(&b.to_string()));
                                assert_eq!(&message.token[..], b"odd");
                            } else {
                                assert!(message.labels.is_empty() && message.token.is_empty());
                            }
                            next += 1;
                        }
                        Event::StreamFinished { stream: 1, .. } => break 'receive,
                        _ => {}
                    }
                }
            }
            assert_eq!(next, batches * per_batch);
        };
        within(&rt, future::zip(sending, receiving)).await;
        client.close().await;
    }
}

/// Sends `batches` batches of `per_batch` numbered messages of `size` bytes on
/// stream 1, each batch sliced from one buffer; with `labelled`, every odd batch
/// carries labels and a token. Finishes the stream.
async fn send_sliced_batches(
    client: &Node,
    peer: PeerId,
    batches: u32,
    per_batch: u32,
    size: usize,
    labelled: bool,
) {
    for b in 0..batches {
        let mut block = Vec::with_capacity(per_batch as usize * size);
        for i in 0..per_batch {
            block.extend_from_slice(&payload(b * per_batch + i, size));
        }
        let block = Bytes::from(block);
        let batch = (0..per_batch as usize)
            .map(|i| block.slice(i * size..(i + 1) * size))
            .collect();
        let mut options = SendOptions::default();
        if labelled && b % 2 == 1 {
            options.labels.insert("batch".into(), b.to_string());
            options.token = Bytes::from_static(b"odd");
        }
        client.send_many(peer, 1, batch, options).await.unwrap();
    }
    client.finish(peer, 1).await.unwrap();
}

/// Small messages travel packed and arrive as runs (`Event::Messages`) through
/// `recv_batch`, once each and in order, over TCP and Unix, with a small event
/// capacity (the node pauses on messages held, not on events); `recv` and
/// `recv_many` calls mixed in between hand the same messages over one per event.
pub async fn packed_runs_arrive_once_in_order_through_recv_batch_and_recv<R: Runtime + Clone>(
    rt: R,
) {
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix://{}", dir.path().join("s.sock").display());
    let mut server_config = NodeConfig::new("server");
    server_config.listen = vec!["tcp://127.0.0.1:0".parse().unwrap(), unix.parse().unwrap()];
    server_config.event_capacity = 64;
    let server = bind(&rt, server_config).unwrap();
    let (batches, per_batch, size) = (40u32, 1000u32, 64usize);
    for address in addresses(&server) {
        let client = bind(&rt, NodeConfig::new("client")).unwrap();
        let peer = client.connect(&[address]).await.unwrap();
        let sending = send_sliced_batches(&client, peer, batches, per_batch, size, false);
        let receiving = async {
            let mut events = Vec::new();
            // (messages checked, runs seen, stream finished)
            let check = |event: Event, got: &mut (u32, u32, bool)| match event {
                Event::Message {
                    stream: 1, message, ..
                } => {
                    assert_eq!(message.payload, payload(got.0, size), "message {}", got.0);
                    got.0 += 1;
                }
                Event::Messages {
                    stream: 1,
                    packet_type: 0,
                    payloads,
                    ..
                } => {
                    assert!(payloads.len() >= 2);
                    for p in payloads {
                        assert_eq!(p, payload(got.0, size), "message {}", got.0);
                        got.0 += 1;
                    }
                    got.1 += 1;
                }
                Event::StreamFinished { stream: 1, .. } => {
                    assert_eq!(got.0, batches * per_batch, "finished early");
                    got.2 = true;
                }
                _ => {}
            };
            let mut got = (0u32, 0u32, false);
            let mut round = 0u32;
            while !got.2 {
                round += 1;
                match round % 8 {
                    // One message per event, from a run split by the node.
                    0 => {
                        let event = server.recv().await.unwrap();
                        assert!(!matches!(event, Event::Messages { .. }));
                        check(event, &mut got);
                    }
                    1 => {
                        server.recv_many(&mut events, 5).await;
                        for event in events.drain(..) {
                            assert!(!matches!(event, Event::Messages { .. }));
                            check(event, &mut got);
                        }
                    }
                    _ => {
                        server.recv_batch(&mut events, 16).await;
                        for event in events.drain(..) {
                            check(event, &mut got);
                        }
                    }
                }
            }
            assert_eq!(got.0, batches * per_batch);
            assert!(got.1 > 0, "no run arrived as one event");
        };
        within(&rt, future::zip(sending, receiving)).await;
        client.close().await;
    }
}

/// A wrong token is rejected with a clear error; the right one is accepted.
pub async fn a_peer_without_the_right_token_is_rejected_clearly<R: Runtime + Clone>(rt: R) {
    let mut config = NodeConfig::new("server").listen("tcp://127.0.0.1:0".parse().unwrap());
    config.accept_tokens = Some(vec![Bytes::from_static(b"secret")]);
    let server = bind(&rt, config).unwrap();
    let mut wrong = NodeConfig::new("intruder");
    wrong.endpoint.token = Bytes::from_static(b"guess");
    let intruder = bind(&rt, wrong).unwrap();
    let err = intruder.connect(&addresses(&server)).await.unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
    let mut right = NodeConfig::new("client");
    right.endpoint.token = Bytes::from_static(b"secret");
    let client = bind(&rt, right).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    // The server's application hears of the client, not of the refused
    // intruder (it never heard of it connecting; a flood of refused hellos would
    // otherwise be one event each).
    client
        .send(peer, 1, Bytes::from_static(b"hi"), SendOptions::default())
        .await
        .unwrap();
    loop {
        match within(&rt, server.recv()).await.expect("an event") {
            Event::ConnectionClosed { peer: None, .. } => {
                panic!("the refused intruder's close reached the application")
            }
            Event::Message { .. } | Event::Messages { .. } => break,
            _ => {}
        }
    }
}

/// A 900 ms outage closes the UDP path (idle timeout 400 ms); it is renewed and
/// the transfer completes.
pub async fn a_udp_path_closed_by_an_outage_is_renewed_and_the_transfer_completes<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let short = |mut config: NodeConfig| {
        config.endpoint.idle_timeout = Duration::from_millis(400);
        config.endpoint.keepalive_interval = Duration::from_millis(100);
        config
    };
    let server = bind(
        &rt,
        short(NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap())),
    )
    .unwrap();
    let target = udp_address(&server);
    let (relay, blocked) = pausable_relay(target);
    let client = bind(&rt, short(NodeConfig::new("client"))).unwrap();
    let peer = client.connect(&[Address::Udp(relay)]).await.unwrap();
    transfer_around(&rt, &client, peer, &server, (2000, 1000), || async {
        blocked.store(true, Ordering::Relaxed);
        sleep(&rt, Duration::from_millis(900)).await;
        blocked.store(false, Ordering::Relaxed);
    })
    .await;
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

/// Socket files go at close; a live one is "in use", a stale one is replaced.
pub async fn unix_socket_files_are_removed_at_close_and_stale_ones_replaced<R: Runtime + Clone>(
    rt: R,
) {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("s.sock");
    let dgram = dir.path().join("d.sock");
    let listen = [
        format!("unix://{}", stream.display()),
        format!("unixgram://{}", dgram.display()),
    ];
    let node = server(&rt, &[&listen[0], &listen[1]]);
    let err = bind(
        &rt,
        NodeConfig::new("again").listen(listen[0].parse().unwrap()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    node.close().await;
    assert!(!stream.exists() && !dgram.exists());
    // Files left behind by a process that is gone are replaced.
    drop(UnixListener::bind(&stream).unwrap());
    drop(std::os::unix::net::UnixDatagram::bind(&dgram).unwrap());
    let node = server(&rt, &[&listen[0], &listen[1]]);
    transfer(&rt, &node, &[listen[0].parse().unwrap()], 100, 100).await;
}

/// A user command reaches the peer on the control stream.
pub async fn commands_travel_on_the_control_stream<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["udp://127.0.0.1:0"]);
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    client
        .send_command(
            peer,
            CommandId::User(150),
            Bytes::from_static(b"reload please"),
        )
        .await
        .unwrap();
    let command = within(&rt, async {
        loop {
            if let Some(Event::Command { command, .. }) = server.recv().await {
                return command;
            }
        }
    })
    .await;
    assert_eq!(command.id, CommandId::User(150));
    assert_eq!(&command.payload[..], b"reload please");
}

/// Waits until `node` sees the peer close a connection cleanly (`SHUTDOWN`, by
/// the peer); other events are dropped.
async fn goodbye_seen<R: Runtime>(rt: &R, node: &Node) {
    within(rt, async {
        loop {
            match node.recv().await.expect("event") {
                Event::ConnectionClosed {
                    by_peer: true,
                    reason,
                    ..
                } if reason.code == CloseCode::Shutdown => return,
                _ => {}
            }
        }
    })
    .await
}

/// The `(reason, unacknowledged bytes)` of a [`NodeError::PeerDeparted`]; a
/// panic for any other answer.
fn departed(result: Result<(), NodeError>) -> (CloseCode, usize) {
    match result {
        Err(NodeError::PeerDeparted {
            reason,
            unacknowledged_bytes,
        }) => (reason.code, unacknowledged_bytes),
        other => panic!("expected PeerDeparted, got {other:?}"),
    }
}

/// Re-dial attempts a node has made over streams: dials that connected plus
/// dials that failed (a refused dial counts as a socket error).
fn stream_redials(stats: &NodeStats) -> u64 {
    stats.reconnects + stats.io_errors
}

/// Renewals of datagram paths (a datagram to a closed port may also count
/// socket errors: not attempts).
fn datagram_renewals(stats: &NodeStats) -> u64 {
    stats.reconnects
}

/// `node`'s stats once `done` holds for them (looked at every 10 ms; a panic
/// after [`LIMIT`]).
async fn stats_until<R: Runtime>(
    rt: &R,
    node: &Node,
    done: impl Fn(&NodeStats) -> bool,
) -> NodeStats {
    within(rt, async {
        loop {
            let stats = node.stats().await.unwrap();
            if done(&stats) {
                return stats;
            }
            sleep(rt, Duration::from_millis(10)).await;
        }
    })
    .await
}

/// `count` of `node`'s current stats.
async fn counted(node: &Node, count: fn(&NodeStats) -> u64) -> u64 {
    count(&node.stats().await.unwrap())
}

/// A peer whose node shut down is not re-dialled on its own: waits on it fail
/// with `PeerDeparted` and report what is unacknowledged; each send to it again
/// re-dials it once (then the waits fail again), nothing more. Over TCP.
pub async fn a_peer_that_shuts_down_is_not_redialled_and_waits_on_it_fail<R: Runtime + Clone>(
    rt: R,
) {
    departed_peer(&rt, "tcp://127.0.0.1:0", stream_redials).await;
}

/// [`a_peer_that_shuts_down_is_not_redialled_and_waits_on_it_fail`] over UDP: the
/// path is not renewed after the goodbye; a send renews it once, and the
/// renewal's handshake (300 ms limit here) times out.
pub async fn a_udp_peer_that_shuts_down_is_not_renewed_and_waits_on_it_fail<R: Runtime + Clone>(
    rt: R,
) {
    departed_peer(&rt, "udp://127.0.0.1:0", datagram_renewals).await;
}

/// The departed-peer scenario on `listen`; `attempts` counts re-dials.
async fn departed_peer<R: Runtime + Clone>(rt: &R, listen: &str, attempts: fn(&NodeStats) -> u64) {
    let server = server(rt, &[listen]);
    let mut config = NodeConfig::new("client");
    config.endpoint.handshake_timeout = Duration::from_millis(300);
    let client = bind(rt, config).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    server.close().await;
    goodbye_seen(rt, &client).await;
    assert_eq!(
        counted(&client, attempts).await,
        0,
        "re-dialled after a goodbye"
    );
    // Queued to the departed peer: sending re-dials it once, on demand.
    let batch = (0..3).map(|i| payload(i, 1000)).collect();
    let send = client.send_many(peer, 1, batch, SendOptions::default());
    within(rt, send).await.unwrap();
    let waited = within(rt, client.wait_acknowledged(peer)).await;
    assert_eq!(departed(waited), (CloseCode::Shutdown, 3000));
    assert_eq!(counted(&client, attempts).await, 1);
    // Waiting again dials nothing and fails the same way.
    let settled = within(rt, client.wait_settled(peer)).await;
    assert_eq!(departed(settled), (CloseCode::Shutdown, 3000));
    assert_eq!(counted(&client, attempts).await, 1);
    // A new send is one more attempt (after the path's backoff).
    let send = client.send(peer, 1, payload(3, 1000), SendOptions::default());
    within(rt, send).await.unwrap();
    let waited = within(rt, client.wait_acknowledged(peer)).await;
    assert_eq!(departed(waited), (CloseCode::Shutdown, 4000));
    assert_eq!(counted(&client, attempts).await, 2);
    client.close().await;
}

/// The peer's application closes the connection cleanly: it is not re-dialled
/// on its own, but the next send re-dials the peer (still running) and the
/// transfer completes, nothing lost. On the other side, a wait on the client
/// once its node closed fails promptly instead of running into the linger time.
pub async fn a_connection_the_peer_closed_is_redialled_when_the_application_sends_again<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let server = server(&rt, &["tcp://127.0.0.1:0"]);
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    let first = within(&rt, async {
        loop {
            if let Some(Event::PeerConnected {
                peer, connection, ..
            }) = server.recv().await
            {
                return (peer, connection);
            }
        }
    })
    .await;
    server.close_connection(first.1).await.unwrap();
    goodbye_seen(&rt, &client).await;
    assert_eq!(
        counted(&client, stream_redials).await,
        0,
        "re-dialled after a goodbye"
    );
    transfer_around(&rt, &client, peer, &server, (200, 1000), || async {}).await;
    within(&rt, client.wait_acknowledged(peer)).await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.reconnects, stats.io_errors), (1, 0));
    // The client goes: the server's wait on it (stream 1 is finished one way
    // only) fails.
    client.close().await;
    goodbye_seen(&rt, &server).await;
    let settled = within(&rt, server.wait_settled(first.0)).await;
    assert_eq!(departed(settled).0, CloseCode::Shutdown);
    server.close().await;
}

/// Small and oversized messages over shm; a live ring is in use; the rings are
/// removed at close.
pub async fn shm_transfers_arrive_in_order_and_the_rings_are_removed_at_close<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let name = shm_name("transfer");
    let url = format!("shm://{name}");
    let server = server(&rt, &[&url]);
    let err = bind(&rt, NodeConfig::new("again").listen(url.parse().unwrap())).unwrap_err();
    assert!(err.to_string().contains("already has a reader"), "{err}");
    // Small messages, then messages larger than the ring's 64 KiB record limit
    // (split into records, reassembled by the stream decoder).
    let small = transfer(&rt, &server, &[url.parse().unwrap()], 5000, 64).await;
    let large = transfer(&rt, &server, &[url.parse().unwrap()], 50, 100_000).await;
    small.close().await;
    large.close().await;
    server.close().await;
    assert_eq!(shm_files(&name), Vec::<String>::new());
}

/// Dialling a ring nobody listens on names it in the error and leaves no file.
pub async fn connecting_to_a_missing_shm_listener_fails_clearly<R: Runtime + Clone>(rt: R) {
    let name = shm_name("missing");
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let err = client
        .connect(&[format!("shm://{name}").parse().unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    assert_eq!(shm_files(&name), Vec::<String>::new());
}

/// A server restarted on the same UDP port (a new session, so a new peer): the
/// client's renewed path carries the transfer to the new peer and is renewed
/// again when it drops.
pub async fn a_udp_server_restarted_on_the_same_port_is_served_on_the_same_path<
    R: Runtime + Clone,
>(
    rt: R,
) {
    restarted_server(&rt, "udp://127.0.0.1:0").await;
}

/// [`a_udp_server_restarted_on_the_same_port_is_served_on_the_same_path`] over
/// TCP: the re-dialled path is kept for the new peer and re-dialled when cut.
pub async fn a_tcp_server_restarted_on_the_same_port_is_served_on_the_same_path<
    R: Runtime + Clone,
>(
    rt: R,
) {
    restarted_server(&rt, "tcp://127.0.0.1:0").await;
}

/// The restarted-server scenario on `listen`.
async fn restarted_server<R: Runtime + Clone>(rt: &R, listen: &str) {
    let first = server(rt, &[listen]);
    let to = addresses(&first);
    let client = bind(rt, NodeConfig::new("client")).unwrap();
    let old = client.connect(&to).await.unwrap();
    first.close().await;
    goodbye_seen(rt, &client).await;
    let second = bind(rt, NodeConfig::new("server").listen(to[0].clone())).unwrap();
    // Sending to the departed peer re-dials its path (on the same socket over
    // UDP), even if the send itself fails (a command needs a connection); the
    // handshake finds a new session of the node: a new peer.
    let nudge = client.send_command(old, CommandId::User(150), Bytes::from_static(b"hi"));
    let _ = within(rt, nudge).await;
    let new = within(rt, async {
        loop {
            if let Some(Event::PeerConnected {
                peer,
                restarted: true,
                ..
            }) = client.recv().await
            {
                return peer;
            }
        }
    })
    .await;
    assert_ne!(new, old);
    let before = client.stats().await.unwrap().reconnects;
    // The path carries a transfer to the new peer, and is re-dialled when its
    // connection drops midway.
    transfer_around(rt, &client, new, &second, (1000, 1000), || async {
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.paths.len(), 1, "{:?}", stats.paths);
        client
            .close_connection(stats.paths[0].connection)
            .await
            .unwrap();
    })
    .await;
    within(rt, client.wait_acknowledged(new)).await.unwrap();
    let stats = client.stats().await.unwrap();
    assert!(stats.reconnects > before, "{stats:?}");
    assert_eq!(stats.open_sockets, 1, "one path, one socket: {stats:?}");
    client.close().await;
    second.close().await;
}

/// A UDP port (and a Unix datagram socket) that never answers: the handshake
/// times out with a clear error, and the failed connects release the sockets,
/// reader tasks and socket files they made.
pub async fn connecting_to_a_silent_udp_port_times_out_clearly<R: Runtime + Clone>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let silent_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_unix = dir.path().join("silent.sock");
    let _silent_unix = std::os::unix::net::UnixDatagram::bind(&silent_unix).unwrap();
    let mut config = NodeConfig::new("client");
    config.endpoint.handshake_timeout = Duration::from_millis(200);
    let client = bind(&rt, config).unwrap();
    let targets = [
        Address::Udp(silent_udp.local_addr().unwrap()),
        Address::UnixDatagram(silent_unix.clone()),
    ];
    for _ in 0..3 {
        for target in &targets {
            let err = within(&rt, client.connect(std::slice::from_ref(target)))
                .await
                .unwrap_err();
            assert!(err.to_string().starts_with("timed out"), "{err}");
        }
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.open_sockets, 0, "{stats:?}");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("silent.sock")]);
    client.close().await;
}

/// The mesh case of a restart: the server closes, a new one binds the same
/// address and dials the client first. The client's dialled path to the old
/// server is taken over by the new peer and re-dialled (before, the path was
/// forgotten with the old peer): the client ends with two connections to it.
pub async fn a_restarted_node_that_dials_first_takes_over_the_path_to_it<R: Runtime + Clone>(
    rt: R,
) {
    let first = server(&rt, &["tcp://127.0.0.1:0"]);
    let to = addresses(&first);
    let client = bind(
        &rt,
        NodeConfig::new("client").listen("tcp://127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    client.connect(&to).await.unwrap();
    first.close().await;
    goodbye_seen(&rt, &client).await;
    let second = bind(&rt, NodeConfig::new("server").listen(to[0].clone())).unwrap();
    within(&rt, second.connect(&addresses(&client)))
        .await
        .unwrap();
    let stats = stats_until(&rt, &client, |stats| {
        let established =
            |p: &&crate::PathStats| p.info.state == atbus_core::ConnectionState::Established;
        stats.paths.iter().filter(established).count() == 2
    })
    .await;
    assert_eq!(stats.reconnects, 1, "{stats:?}");
    client.close().await;
    second.close().await;
}

/// A multi-path connect whose TCP path fails during the handshake while the UDP
/// path may still succeed: the connect succeeds over UDP, and the TCP path is
/// re-dialled like any dropped path (both end up established).
pub async fn a_path_that_fails_during_a_multi_path_connect_is_redialled<R: Runtime + Clone>(rt: R) {
    let server = server(&rt, &["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]);
    let to = addresses(&server);
    let (Address::Udp(udp), Address::Tcp(tcp)) = (&to[0], &to[1]) else {
        unreachable!()
    };
    let tcp = *tcp;
    // The UDP path answers only once the TCP one has failed.
    let (relay, blocked) = pausable_relay(*udp);
    blocked.store(true, Ordering::Relaxed);
    // The proxy closes the first TCP connection at once, and forwards the next.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let front = listener.local_addr().unwrap();
    let refuse = AtomicBool::new(true);
    let _proxy = CuttableProxy::start(
        move || listener.accept().map(|(s, _)| s),
        move || {
            if refuse.swap(false, Ordering::Relaxed) {
                Err(std::io::Error::other("refused once"))
            } else {
                TcpStream::connect(tcp)
            }
        },
    );
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let paths = [Address::Udp(relay), Address::Tcp(front)];
    let connecting = client.connect(&paths);
    let tcp_failed = async {
        loop {
            if let Some(Event::ConnectionClosed { .. }) = client.recv().await {
                blocked.store(false, Ordering::Relaxed);
                return;
            }
        }
    };
    let (peer, ()) = within(&rt, future::zip(connecting, tcp_failed)).await;
    peer.unwrap();
    stats_until(&rt, &client, |stats| {
        let established =
            |p: &&crate::PathStats| p.info.state == atbus_core::ConnectionState::Established;
        stats.paths.iter().filter(established).count() == 2
    })
    .await;
    client.close().await;
}

/// Cheap input cannot lock new peers out of a server that accepts at most 4
/// pending connections: a valid ping from each of 8 UDP sources opens no
/// connection (a new remote's first datagram must carry a hello), and 8 TCP
/// connections that send nothing are evicted, oldest first, by a real client,
/// long before their handshake timeout.
pub async fn cheap_input_cannot_hold_the_pending_accept_slots<R: Runtime + Clone>(rt: R) {
    let mut config = NodeConfig::new("server")
        .listen("udp://127.0.0.1:0".parse().unwrap())
        .listen("tcp://127.0.0.1:0".parse().unwrap());
    config.max_pending_accepts = 4;
    config.endpoint.handshake_timeout = LIMIT * 2;
    let server = bind(&rt, config).unwrap();
    let to = addresses(&server);
    let (Address::Udp(udp), Address::Tcp(tcp)) = (&to[0], &to[1]) else {
        unreachable!()
    };
    let mut ping = bytes::BytesMut::new();
    atbus_proto::encode_frame(
        &atbus_proto::pb::FrameMessage {
            head: None,
            body: Some(atbus_proto::pb::frame_message::Body::Ping(
                atbus_proto::pb::PingData {
                    timepoint_microseconds: 1,
                    ..Default::default()
                },
            )),
        },
        &mut ping,
    );
    let pingers = udp_sockets(8);
    for pinger in &pingers {
        pinger.send_to(&ping, udp).unwrap();
    }
    let handshaking = |stats: &NodeStats| {
        stats
            .paths
            .iter()
            .filter(|p| p.info.state == atbus_core::ConnectionState::Handshaking)
            .count()
    };
    let stats = stats_until(&rt, &server, |s| s.dropped_datagrams >= 8).await;
    assert_eq!(handshaking(&stats), 0, "{:?}", stats.paths);
    let silent: Vec<_> = (0..8).map(|_| TcpStream::connect(tcp).unwrap()).collect();
    let stats = stats_until(&rt, &server, |s| s.evicted_accepts >= 4).await;
    assert_eq!(handshaking(&stats), 4, "{:?}", stats.paths);
    let client = transfer(&rt, &server, &[to[1].clone()], 100, 1000).await;
    let stats = server.stats().await.unwrap();
    assert!(stats.evicted_accepts >= 5, "{stats:?}");
    // The evicted connections' sockets are closed: the UDP socket, the
    // client's connection and the pending ones are left.
    assert_eq!(stats.open_sockets, 2 + handshaking(&stats), "{stats:?}");
    drop(silent);
    client.close().await;
    server.close().await;
}

/// A UDP hello from a remote that never completes its handshake (here: without
/// the token the server asks for) costs no route MTU look-up (system calls per
/// new, possibly spoofed, remote): the PMTUD ceiling is looked up once a
/// handshake completes.
pub async fn a_udp_hello_that_never_completes_costs_no_route_lookup<R: Runtime + Clone>(rt: R) {
    // A client's hello, caught by a plain socket.
    let catcher = UdpSocket::bind("127.0.0.1:0").unwrap();
    catcher.set_nonblocking(true).unwrap();
    let caught = Address::Udp(catcher.local_addr().unwrap());
    let client = bind(&rt, NodeConfig::new("client")).unwrap();
    let hello = within(
        &rt,
        future::or(
            async {
                let _ = client.connect(&[caught]).await;
                unreachable!("nothing answers")
            },
            async {
                let mut buf = vec![0u8; 65_536];
                loop {
                    match catcher.recv(&mut buf) {
                        Ok(n) => break buf[..n].to_vec(),
                        Err(_) => sleep(&rt, Duration::from_millis(5)).await,
                    }
                }
            },
        ),
    )
    .await;
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.accept_tokens = Some(vec![Bytes::from_static(b"secret")]);
    let server = bind(&rt, config).unwrap();
    let to = addresses(&server);
    let target = udp_address(&server);
    let replayers = udp_sockets(3);
    for r in &replayers {
        r.send_to(&hello, target).unwrap();
    }
    let stats = stats_until(&rt, &server, |s| s.windows.totals.packets_received >= 3).await;
    assert_eq!(stats.route_lookups, 0, "{stats:?}");
    // A real peer's path gets its ceiling once connected.
    let mut config = NodeConfig::new("other");
    config.endpoint.token = Bytes::from_static(b"secret");
    let other = bind(&rt, config).unwrap();
    within(&rt, other.connect(&to)).await.unwrap();
    let stats = stats_until(&rt, &server, |s| s.route_lookups >= 1).await;
    assert_eq!(stats.route_lookups, 1, "{stats:?}");
    other.close().await;
    client.close().await;
    server.close().await;
}

/// A Unix datagram peer that stops reading (its socket queue fills up) does not
/// hold up the server's other peers on the same listening socket: what the
/// silent receiver cannot take waits (up to a bound, past it dropped), the rest goes on.
pub async fn a_unix_datagram_peer_that_stops_reading_does_not_block_the_others<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("unixgram://{}", dir.path().join("server.sock").display());
    let server = server(&rt, &[&listen]);
    let (own, target) = (
        dir.path().join("silent.sock"),
        dir.path().join("server.sock"),
    );
    let (handshaken, silent_socket) = async_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = handshaken.send_blocking(silent_unix_peer(&own, &target));
    });
    let _silent_socket = within(&rt, silent_socket.recv()).await.unwrap();
    let silent = within(&rt, async {
        loop {
            if let Some(Event::PeerConnected { peer, .. }) = server.recv().await {
                return peer;
            }
        }
    })
    .await;
    // The server sends the silent peer small messages one by one (a datagram
    // each): more than the peer's socket queue holds (10 by default).
    for i in 0..40 {
        let message = payload(i, 1000);
        let sent = server.send(silent, 1, message, SendOptions::default());
        within(&rt, sent).await.unwrap();
    }
    // The silent peer's datagrams wait (a bounded number of them, see
    // `driver::tests`); the client's transfer goes on past them.
    let client = transfer(&rt, &server, &[listen.parse().unwrap()], 500, 1000).await;
    client.close().await;
    server.close().await;
}

/// A Unix datagram socket at `own` that completes a handshake with the node
/// listening at `server` (with an endpoint of its own, on the calling thread),
/// then is handed back to be never read again.
fn silent_unix_peer(
    own: &std::path::Path,
    server: &std::path::Path,
) -> std::os::unix::net::UnixDatagram {
    use atbus_core::{ConnectionKind, Endpoint, EndpointConfig, Input, Output, Timestamp};
    // Not connected: the kernel limits the queue of a socket (10 datagrams by
    // default) only towards senders that are not its connected peer.
    let socket = std::os::unix::net::UnixDatagram::bind(own).unwrap();
    socket.set_read_timeout(Some(LIMIT)).unwrap();
    let start = Instant::now();
    let now = || Timestamp::from_duration(start.elapsed() + Duration::from_secs(1));
    let mut endpoint = Endpoint::new(EndpointConfig::new("silent", 1));
    let kind = ConnectionKind::Datagram {
        mtu: crate::config::UNIX_DATAGRAM_MTU,
    };
    let (_, connection) = endpoint.connect(now(), kind).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        loop {
            match endpoint.poll_output() {
                Output::Transmit(t) => {
                    socket.send_to(&t.data, server).unwrap();
                }
                Output::Event(Event::PeerConnected { .. }) => return socket,
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        let n = socket.recv(&mut buf).expect("the server answers");
        let data = Bytes::copy_from_slice(&buf[..n]);
        endpoint.handle_input(now(), Input::Datagram { connection, data });
    }
}

/// A dialled shm connection run by its own threads, without a driver: `queue`
/// feeds its writer, dropping `queue` and `stop` lets go of it (as the node's
/// close does), and `written` closes once its writers are done. `peer` reads
/// what it writes; `files` are its rings' files. (Fields drop in the reverse
/// order of their setup.)
struct ThreadedShm<R: Runtime> {
    written: async_channel::Receiver<()>,
    queue: async_channel::Sender<Bytes>,
    stop: async_channel::Sender<()>,
    _net: async_channel::Receiver<crate::tasks::NetInput<R>>,
    peer: atbus_shm::Reader,
    files: Vec<std::path::PathBuf>,
    _listener: atbus_shm::Reader,
}

impl<R: Runtime> ThreadedShm<R> {
    /// Listens on shm `name`, dials it and spawns the dialled connection's threads.
    fn dial(name: &str) -> Self {
        let listener = crate::shm::bind(name).unwrap();
        let link = crate::shm::dial(name).unwrap();
        let files = link.ring_paths();
        let peer =
            atbus_shm::Reader::open(link.outgoing_ring(), crate::shm::reader_config()).unwrap();
        let (net, net_rx) = async_channel::unbounded::<crate::tasks::NetInput<R>>();
        let (stop, stopped) = async_channel::bounded(1);
        let (queue, queued) = async_channel::bounded(16);
        let (writing, written) = async_channel::bounded::<()>(1);
        let budget = Arc::new(crate::budget::InputBudget::new(usize::MAX));
        crate::shm::spawn_connection(link, 0, net, budget, stopped, queued, Some(writing)).unwrap();
        ThreadedShm {
            written,
            queue,
            stop,
            _net: net_rx,
            peer,
            files,
            _listener: listener,
        }
    }
}

/// A shm connection's writer thread holds the node's close until it has
/// written the connection's last transmits and its end record: a process that
/// exits right after `close` must not cut them off (its peer would see a lost
/// connection, not a goodbye). Driven at the level of the connection's threads.
pub async fn a_shm_writer_holds_the_close_until_its_end_record_is_written<R: Runtime + Clone>(
    rt: R,
) {
    let name = shm_name("end");
    let mut shm = ThreadedShm::<R>::dial(&name);
    for i in 0..8 {
        shm.queue.send(payload(i, 100)).await.unwrap();
    }
    // The driver lets go of the connection (as at the node's close) and waits
    // for its writers.
    drop((shm.queue, shm.stop));
    assert!(within(&rt, shm.written.recv()).await.is_err());
    let mut records = Vec::new();
    while let Ok(Some(record)) = shm.peer.recv_timeout(Duration::ZERO) {
        records.push(record.to_vec());
    }
    assert_eq!(records.len(), 10, "hello, 8 transmits, end: {records:?}");
    assert!(records[9].is_empty(), "the end record is last: {records:?}");
    let _ = atbus_shm::remove_force(&name);
}

/// A shm writer whose ring is full when the connection closes here keeps
/// waiting for room (its own grace), not only until the connection's reader
/// thread sees the stop: a peer that reads a little later still gets the tail
/// and the end record.
pub async fn a_shm_writer_waits_on_a_full_ring_after_its_reader_stopped<R: Runtime + Clone>(rt: R) {
    let name = shm_name("full");
    let mut shm = ThreadedShm::<R>::dial(&name);
    // More than the ring holds: the writer waits on a full ring.
    let size = 16 * 1024;
    let count = (shm.peer.layout().ring_size as usize / size + 4) as u32;
    for i in 0..count {
        within(&rt, shm.queue.send(payload(i, size))).await.unwrap();
    }
    drop((shm.queue, shm.stop));
    // The reader thread has seen the stop once it removed the rings.
    within(&rt, async {
        while shm.files.iter().any(|f| f.exists()) {
            sleep(&rt, Duration::from_millis(1)).await;
        }
    })
    .await;
    let mut records = Vec::new();
    let start = Instant::now();
    while records.last().is_none_or(|r: &Vec<u8>| !r.is_empty()) && start.elapsed() < LIMIT {
        if let Ok(Some(record)) = shm.peer.recv_timeout(Duration::from_millis(10)) {
            records.push(record.to_vec());
        }
    }
    assert!(within(&rt, shm.written.recv()).await.is_err());
    // Hello, the transmits, the end record.
    assert_eq!(records.len(), count as usize + 2);
    assert!(
        records[records.len() - 1].is_empty(),
        "the end record is last"
    );
    let _ = atbus_shm::remove_force(&name);
}

/// One `#[test]` per scenario of this module, each calling `$run(scenario)`, where `$run` is the adapter's
/// `fn run<F: Future<Output = ()>>(scenario: impl FnOnce(MyRuntime) -> F)`
/// that blocks on the scenario inside its runtime.
#[macro_export]
macro_rules! loopback_tests {
    ($run:ident) => {
        $crate::loopback_tests!(@each $run;
            udp_transfer_arrives_in_order,
            a_udp_path_discovers_the_loopback_mtu,
            a_udp_path_with_a_fixed_ceiling_stops_at_the_configured_maximum,
            udp_over_ipv6_transfer_arrives_in_order,
            tcp_transfer_arrives_in_order,
            small_messages_received_in_batches_arrive_once_in_order,
            unix_stream_and_datagram_transfers_arrive_in_order,
            multi_path_udp_and_tcp_peer_uses_both_paths,
            connecting_to_nothing_or_binding_twice_fails_clearly,
            a_failed_connect_leaves_no_unix_datagram_socket_file,
            garbage_datagrams_are_dropped_and_the_node_keeps_serving,
            truncated_and_oversized_frames_on_tcp_close_only_that_connection,
            a_finish_before_any_hello_closes_silently,
            a_dropped_tcp_connection_is_redialled_and_the_transfer_completes,
            a_peer_that_shuts_down_is_not_redialled_and_waits_on_it_fail,
            a_udp_peer_that_shuts_down_is_not_renewed_and_waits_on_it_fail,
            a_connection_the_peer_closed_is_redialled_when_the_application_sends_again,
            a_node_on_a_dedicated_thread_serves_like_any_other,
            a_cut_tcp_connection_is_redialled_and_data_in_flight_survives,
            a_cut_unix_stream_connection_is_redialled_and_data_in_flight_survives,
            a_garbage_flood_from_many_ports_cannot_hold_the_accept_slots,
            a_slow_reader_pauses_the_node_without_losing_messages,
            an_echo_server_awaiting_each_reply_in_its_receive_loop_does_not_wedge,
            connect_and_waits_complete_while_the_application_reads_no_events,
            a_node_whose_application_does_not_read_holds_bounded_memory,
            a_send_given_up_while_waiting_for_the_window_is_not_sent_later,
            send_many_queues_batches_in_order_past_a_full_window,
            sliced_small_message_batches_arrive_once_in_order_with_metadata,
            packed_runs_arrive_once_in_order_through_recv_batch_and_recv,
            connecting_to_a_silent_udp_port_times_out_clearly,
            a_peer_without_the_right_token_is_rejected_clearly,
            a_udp_path_closed_by_an_outage_is_renewed_and_the_transfer_completes,
            unix_socket_files_are_removed_at_close_and_stale_ones_replaced,
            commands_travel_on_the_control_stream,
            shm_transfers_arrive_in_order_and_the_rings_are_removed_at_close,
            connecting_to_a_missing_shm_listener_fails_clearly,
            a_udp_server_restarted_on_the_same_port_is_served_on_the_same_path,
            a_tcp_server_restarted_on_the_same_port_is_served_on_the_same_path,
            a_restarted_node_that_dials_first_takes_over_the_path_to_it,
            a_path_that_fails_during_a_multi_path_connect_is_redialled,
            cheap_input_cannot_hold_the_pending_accept_slots,
            a_unix_datagram_peer_that_stops_reading_does_not_block_the_others,
            a_shm_writer_holds_the_close_until_its_end_record_is_written,
            a_shm_writer_waits_on_a_full_ring_after_its_reader_stopped,
            a_udp_hello_that_never_completes_costs_no_route_lookup,
        );
    };
    (@each $run:ident; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $run($crate::testing::scenarios::$name)
            }
        )*
    };
}
