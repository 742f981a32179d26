//! Two tokio nodes over real loopback sockets.

use std::time::Duration;

use atbus_node::testing::{payload, receive_numbered, receive_numbered_batched, send_numbered};
use atbus_tokio::{Address, Event, Node, NodeConfig, PeerId, SendOptions};
use bytes::Bytes;

const LIMIT: Duration = Duration::from_secs(30);

async fn server(listen: &[&str]) -> Node {
    let mut config = NodeConfig::new("server");
    for a in listen {
        config = config.listen(a.parse().unwrap());
    }
    Node::bind(config).await.expect("bind")
}

/// Sends `count` messages of `size` bytes from a new client to `server` over
/// `addresses`, finishes the stream, and checks every message arrives once, in order.
async fn transfer(server: &Node, addresses: &[Address], count: u32, size: usize) -> Node {
    let client = Node::bind(NodeConfig::new("client")).await.expect("bind");
    let peer = client.connect(addresses).await.expect("connect");
    let sending = send_numbered(&client, peer, count, size);
    let receiving = receive_numbered(server, count, size);
    tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
        .await
        .expect("transfer finished in time");
    client
}

fn addresses(node: &Node) -> Vec<Address> {
    node.local_addresses().to_vec()
}

#[tokio::test]
async fn udp_transfer_arrives_in_order() {
    let server = server(&["udp://127.0.0.1:0"]).await;
    let client = transfer(&server, &addresses(&server), 2000, 3000).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_udp_path_discovers_an_mtu_above_the_ipv4_base() {
    // PMTUD is on by default: the path starts at 548 bytes and probes upward;
    // loopback carries the configured maximum, 1452.
    let server = server(&["udp://127.0.0.1:0"]).await;
    let client = transfer(&server, &addresses(&server), 200, 3000).await;
    let mtu = tokio::time::timeout(LIMIT, async {
        loop {
            let stats = client.stats().await.unwrap();
            let mtu = stats.paths[0].info.mtu;
            if mtu > atbus_core::connection::pmtud::IPV4_BASE {
                break mtu;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the MTU grew in time");
    assert_eq!(mtu, atbus_core::connection::pmtud::DEFAULT_MAX);
    let stats = client.stats().await.unwrap();
    let pmtud = stats.paths[0].info.pmtud.expect("PMTUD runs on UDP");
    assert_eq!(pmtud.black_holes, 0, "{pmtud:?}");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn udp_over_ipv6_transfer_arrives_in_order() {
    let Ok(server) =
        Node::bind(NodeConfig::new("server").listen("udp://[::1]:0".parse().unwrap())).await
    else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    transfer(&server, &addresses(&server), 500, 2000).await;
}

/// Small messages over TCP and a Unix stream, received with `recv_many`: every
/// message once and in order, no batch empty or above its bound.
#[tokio::test]
async fn small_messages_received_in_batches_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let unix = format!("unix://{}", dir.path().join("s.sock").display());
    let server = server(&["tcp://127.0.0.1:0", &unix]).await;
    for address in addresses(&server) {
        let client = Node::bind(NodeConfig::new("client")).await.expect("bind");
        let peer = client.connect(&[address]).await.expect("connect");
        let sending = send_numbered(&client, peer, 5000, 64);
        let receiving = receive_numbered_batched(&server, 5000, 64, 64);
        tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
            .await
            .expect("transfer finished in time");
        client.close().await;
    }
}

#[tokio::test]
async fn tcp_transfer_arrives_in_order() {
    let server = server(&["tcp://127.0.0.1:0"]).await;
    transfer(&server, &addresses(&server), 2000, 3000).await;
}

#[tokio::test]
async fn unix_stream_and_datagram_transfers_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let stream = format!("unix://{}", dir.path().join("s.sock").display());
    let dgram = format!("unixgram://{}", dir.path().join("d.sock").display());
    let server = server(&[&stream, &dgram]).await;
    transfer(&server, &[stream.parse().unwrap()], 1000, 5000).await;
    transfer(&server, &[dgram.parse().unwrap()], 1000, 5000).await;
}

#[tokio::test]
async fn multi_path_udp_and_tcp_peer_uses_both_paths() {
    let server = server(&["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]).await;
    let client = transfer(&server, &addresses(&server), 3000, 2000).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.paths.len(), 2, "{stats:?}");
    assert!(stats.paths.iter().all(|p| p.info.stats.sent_packets > 0));
}

#[tokio::test]
async fn connecting_to_nothing_or_binding_twice_fails_clearly() {
    let server = server(&["tcp://127.0.0.1:0"]).await;
    let taken = addresses(&server)[0].clone();
    let err = Node::bind(NodeConfig::new("x").listen(taken))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let err = client
        .connect(&["tcp://127.0.0.1:1".parse().unwrap()])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot connect to tcp://127.0.0.1:1"),
        "{err}"
    );
    let err = client
        .connect(&[format!("shm://{}", shm_name("nothing"))
            .parse::<Address>()
            .unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn garbage_datagrams_are_dropped_and_the_node_keeps_serving() {
    let server = server(&["udp://127.0.0.1:0"]).await;
    let Address::Udp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let garbage = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let flood = async {
        for i in 0..2000u32 {
            let mut junk = vec![0xffu8; (i as usize * 7) % 1400 + 1];
            junk[0] = 3; // version 3, then a huge varint length
            let _ = garbage.send_to(&junk, target).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let to = addresses(&server);
    let (client, ()) = tokio::join!(transfer(&server, &to, 1000, 1000), flood);
    drop(client);
    let stats = server.stats().await.unwrap();
    let malformed: u64 = stats.paths.iter().map(|p| p.info.stats.malformed).sum();
    assert!(malformed > 0 || stats.dropped_datagrams > 0, "{stats:?}");
}

#[tokio::test]
async fn truncated_and_oversized_frames_on_tcp_close_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let server = server(&["tcp://127.0.0.1:0"]).await;
    let Address::Tcp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    // A huge declared length, then a truncated frame and a hang-up.
    let mut hostile = tokio::net::TcpStream::connect(target).await.unwrap();
    hostile
        .write_all(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3])
        .await
        .unwrap();
    let mut truncated = tokio::net::TcpStream::connect(target).await.unwrap();
    truncated.write_all(&[3, 40, 1, 2]).await.unwrap();
    drop(truncated);
    transfer(&server, &addresses(&server), 500, 1000).await;
    drop(hostile);
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_redialled_and_the_transfer_completes() {
    let server = server(&["tcp://127.0.0.1:0"]).await;
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let peer: PeerId = client.connect(&addresses(&server)).await.unwrap();
    let count = 3000u32;
    let run = async {
        let sending = async {
            for i in 0..count {
                client
                    .send(peer, 1, payload(i, 1500), SendOptions::default())
                    .await
                    .unwrap();
                if i == count / 2 {
                    let stats = client.stats().await.unwrap();
                    client
                        .close_connection(stats.paths[0].connection)
                        .await
                        .unwrap();
                }
            }
            client.finish(peer, 1).await.unwrap();
        };
        let receiving = receive_numbered(&server, count, 1500);
        tokio::join!(sending, receiving);
    };
    tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

#[tokio::test]
async fn a_node_on_a_dedicated_thread_serves_like_any_other() {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.dedicated_thread = true;
    let server = Node::bind(config).await.unwrap();
    transfer(&server, &addresses(&server), 1000, 1000).await;
}

/// A TCP proxy whose connections can be cut, like a network failure.
struct CuttableProxy {
    address: std::net::SocketAddr,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn start(target: std::net::SocketAddr) -> CuttableProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = live.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                registry.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in pipes {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { address, live }
    }

    /// Cuts every connection through the proxy.
    fn cut(&self) {
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[tokio::test]
async fn a_cut_tcp_connection_is_redialled_and_data_in_flight_survives() {
    let server = server(&["tcp://127.0.0.1:0"]).await;
    let Address::Tcp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let proxy = CuttableProxy::start(target);
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let peer = client
        .connect(&[Address::Tcp(proxy.address)])
        .await
        .unwrap();
    let count = 4000u32;
    let run = async {
        let sending = async {
            for i in 0..count {
                client
                    .send(peer, 1, payload(i, 1500), SendOptions::default())
                    .await
                    .unwrap();
                if i == count / 2 {
                    proxy.cut();
                }
            }
            client.finish(peer, 1).await.unwrap();
        };
        let receiving = receive_numbered(&server, count, 1500);
        tokio::join!(sending, receiving);
    };
    tokio::time::timeout(LIMIT, run).await.expect("in time");
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

#[tokio::test]
async fn a_garbage_flood_from_many_ports_cannot_hold_the_accept_slots() {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.max_pending_accepts = 4;
    let server = Node::bind(config).await.unwrap();
    let to = addresses(&server);
    let Address::Udp(target) = to[0] else {
        unreachable!()
    };
    let mut flooders = Vec::new();
    for _ in 0..32 {
        flooders.push(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
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
    let client = transfer(&server, &to, 1000, 1000).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

#[tokio::test]
async fn a_slow_reader_pauses_the_node_without_losing_messages() {
    let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
    config.event_capacity = 8;
    let server = Node::bind(config).await.unwrap();
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
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
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Event::StreamFinished { .. } => break,
                _ => {}
            }
        }
        assert_eq!(next, count);
    };
    tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
        .await
        .expect("in time");
}

#[tokio::test]
async fn a_cut_unix_stream_connection_is_redialled_and_data_in_flight_survives() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("server.sock");
    let front = dir.path().join("proxy.sock");
    let server = server(&[&format!("unix://{}", target.display())]).await;
    // A Unix stream proxy whose connections can be cut.
    let listener = UnixListener::bind(&front).unwrap();
    let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::<UnixStream>::new()));
    {
        let live = live.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = UnixStream::connect(&target) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                live.lock().unwrap().extend([client, upstream]);
                for (mut from, mut to) in pipes {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let peer = client
        .connect(&[format!("unix://{}", front.display()).parse().unwrap()])
        .await
        .unwrap();
    let count = 3000u32;
    let sending = async {
        for i in 0..count {
            client
                .send(peer, 1, payload(i, 2000), SendOptions::default())
                .await
                .unwrap();
            if i == count / 2 {
                for stream in live.lock().unwrap().drain(..) {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        client.finish(peer, 1).await.unwrap();
    };
    let receiving = receive_numbered(&server, count, 2000);
    tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
        .await
        .expect("in time");
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

#[tokio::test]
async fn send_many_queues_batches_in_order_past_a_full_window() {
    let server = server(&["tcp://127.0.0.1:0"]).await;
    let mut config = NodeConfig::new("client");
    config.endpoint.stream_send_window = 64 * 1024;
    let client = Node::bind(config).await.unwrap();
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
    tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
        .await
        .expect("in time");
}

#[tokio::test]
async fn connecting_to_a_silent_udp_port_times_out_clearly() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = NodeConfig::new("client");
    config.endpoint.handshake_timeout = Duration::from_millis(300);
    let client = Node::bind(config).await.unwrap();
    let err = client
        .connect(&[Address::Udp(silent.local_addr().unwrap())])
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("timed out"), "{err}");
}

#[tokio::test]
async fn a_peer_without_the_right_token_is_rejected_clearly() {
    let mut config = NodeConfig::new("server").listen("tcp://127.0.0.1:0".parse().unwrap());
    config.accept_tokens = Some(vec![Bytes::from_static(b"secret")]);
    let server = Node::bind(config).await.unwrap();
    let mut wrong = NodeConfig::new("intruder");
    wrong.endpoint.token = Bytes::from_static(b"guess");
    let intruder = Node::bind(wrong).await.unwrap();
    let err = intruder.connect(&addresses(&server)).await.unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
    let mut right = NodeConfig::new("client");
    right.endpoint.token = Bytes::from_static(b"secret");
    let client = Node::bind(right).await.unwrap();
    client.connect(&addresses(&server)).await.unwrap();
}

/// A UDP relay that can black-hole everything for a while.
fn pausable_relay(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let front = std::sync::Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let back = std::sync::Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let address = front.local_addr().unwrap();
    let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = std::sync::Arc::new(std::sync::Mutex::new(None));
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

#[tokio::test]
async fn a_udp_path_closed_by_an_outage_is_renewed_and_the_transfer_completes() {
    use std::sync::atomic::Ordering;
    let short = |mut config: NodeConfig| {
        config.endpoint.idle_timeout = Duration::from_millis(400);
        config.endpoint.keepalive_interval = Duration::from_millis(100);
        config
    };
    let server = Node::bind(short(
        NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap()),
    ))
    .await
    .unwrap();
    let Address::Udp(target) = addresses(&server)[0] else {
        unreachable!()
    };
    let (relay, blocked) = pausable_relay(target);
    let client = Node::bind(short(NodeConfig::new("client"))).await.unwrap();
    let peer = client.connect(&[Address::Udp(relay)]).await.unwrap();
    let count = 2000u32;
    let sending = async {
        for i in 0..count {
            client
                .send(peer, 1, payload(i, 1000), SendOptions::default())
                .await
                .unwrap();
            if i == count / 2 {
                blocked.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(900)).await;
                blocked.store(false, Ordering::Relaxed);
            }
        }
        client.finish(peer, 1).await.unwrap();
    };
    let receiving = receive_numbered(&server, count, 1000);
    tokio::time::timeout(LIMIT, async { tokio::join!(sending, receiving) })
        .await
        .expect("in time");
    assert!(client.stats().await.unwrap().reconnects >= 1);
}

#[tokio::test]
async fn unix_socket_files_are_removed_at_close_and_stale_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("s.sock");
    let dgram = dir.path().join("d.sock");
    let listen = [
        format!("unix://{}", stream.display()),
        format!("unixgram://{}", dgram.display()),
    ];
    let node = server(&[&listen[0], &listen[1]]).await;
    // A live socket is in use.
    let err = Node::bind(NodeConfig::new("again").listen(listen[0].parse().unwrap()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    node.close().await;
    assert!(!stream.exists() && !dgram.exists());
    // Files left behind by a process that is gone are replaced.
    drop(std::os::unix::net::UnixListener::bind(&stream).unwrap());
    drop(std::os::unix::net::UnixDatagram::bind(&dgram).unwrap());
    let node = server(&[&listen[0], &listen[1]]).await;
    transfer(&node, &[listen[0].parse().unwrap()], 100, 100).await;
}

#[tokio::test]
async fn commands_travel_on_the_control_stream() {
    let server = server(&["udp://127.0.0.1:0"]).await;
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    client
        .send_command(
            peer,
            atbus_tokio::CommandId::User(150),
            Bytes::from_static(b"reload please"),
        )
        .await
        .unwrap();
    let command = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(Event::Command { command, .. }) = server.recv().await {
                return command;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(command.id, atbus_tokio::CommandId::User(150));
    assert_eq!(&command.payload[..], b"reload please");
}

/// A shm ring name unique to this test process and call.
fn shm_name(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("atbus-test-tokio-{tag}-{}-{n}", std::process::id())
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

#[tokio::test]
async fn shm_transfers_arrive_in_order_and_the_rings_are_removed_at_close() {
    let name = shm_name("transfer");
    let url = format!("shm://{name}");
    let server = server(&[&url]).await;
    // A live listener's ring is in use.
    let err = Node::bind(NodeConfig::new("again").listen(url.parse().unwrap()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already has a reader"), "{err}");
    // Small messages, then messages larger than the ring's 64 KiB record limit
    // (split into records, reassembled by the stream decoder).
    let small = transfer(&server, &[url.parse().unwrap()], 5000, 64).await;
    let large = transfer(&server, &[url.parse().unwrap()], 50, 100_000).await;
    small.close().await;
    large.close().await;
    server.close().await;
    assert_eq!(shm_files(&name), Vec::<String>::new());
}

#[tokio::test]
async fn connecting_to_a_missing_shm_listener_fails_clearly() {
    let name = shm_name("missing");
    let client = Node::bind(NodeConfig::new("client")).await.unwrap();
    let err = client
        .connect(&[format!("shm://{name}").parse().unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&name), "{err}");
    assert_eq!(shm_files(&name), Vec::<String>::new());
}
