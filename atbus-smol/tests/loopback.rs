//! Two smol nodes over real loopback sockets.

use std::time::Duration;

use atbus_node::testing::{payload, receive_numbered, receive_numbered_batched, send_numbered};
use atbus_smol::{Address, Node, NodeConfig, PeerId, SendOptions};
use smol::future;

fn run<T>(test: impl std::future::Future<Output = T>) -> T {
    smol::block_on(test)
}

async fn timeout<T>(limit: Duration, fut: impl std::future::Future<Output = T>) -> Result<T, ()> {
    future::or(async { Ok(fut.await) }, async {
        smol::Timer::after(limit).await;
        Err(())
    })
    .await
}

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
    timeout(LIMIT, future::zip(sending, receiving))
        .await
        .expect("transfer finished in time");
    client
}

fn addresses(node: &Node) -> Vec<Address> {
    node.local_addresses().to_vec()
}

#[test]
fn udp_transfer_arrives_in_order() {
    run(async {
        let server = server(&["udp://127.0.0.1:0"]).await;
        let client = transfer(&server, &addresses(&server), 2000, 3000).await;
        client.close().await;
        server.close().await;
    })
}

#[test]
fn udp_over_ipv6_transfer_arrives_in_order() {
    run(async {
        let Ok(server) =
            Node::bind(NodeConfig::new("server").listen("udp://[::1]:0".parse().unwrap())).await
        else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        transfer(&server, &addresses(&server), 500, 2000).await;
    })
}

/// Small messages over TCP and a Unix stream, received with `recv_many`: every
/// message once and in order, no batch empty or above its bound.
#[test]
fn small_messages_received_in_batches_arrive_once_in_order() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let unix = format!("unix://{}", dir.path().join("s.sock").display());
        let server = server(&["tcp://127.0.0.1:0", &unix]).await;
        for address in addresses(&server) {
            let client = Node::bind(NodeConfig::new("client")).await.expect("bind");
            let peer = client.connect(&[address]).await.expect("connect");
            let sending = send_numbered(&client, peer, 5000, 64);
            let receiving = receive_numbered_batched(&server, 5000, 64, 64);
            timeout(LIMIT, future::zip(sending, receiving))
                .await
                .expect("transfer finished in time");
            client.close().await;
        }
    })
}

#[test]
fn tcp_transfer_arrives_in_order() {
    run(async {
        let server = server(&["tcp://127.0.0.1:0"]).await;
        transfer(&server, &addresses(&server), 2000, 3000).await;
    })
}

#[test]
fn unix_stream_and_datagram_transfers_arrive_in_order() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let stream = format!("unix://{}", dir.path().join("s.sock").display());
        let dgram = format!("unixgram://{}", dir.path().join("d.sock").display());
        let server = server(&[&stream, &dgram]).await;
        transfer(&server, &[stream.parse().unwrap()], 1000, 5000).await;
        transfer(&server, &[dgram.parse().unwrap()], 1000, 5000).await;
    })
}

#[test]
fn multi_path_udp_and_tcp_peer_uses_both_paths() {
    run(async {
        let server = server(&["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]).await;
        let client = transfer(&server, &addresses(&server), 3000, 2000).await;
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.paths.len(), 2, "{stats:?}");
        assert!(stats.paths.iter().all(|p| p.info.stats.sent_packets > 0));
    })
}

#[test]
fn connecting_to_nothing_or_binding_twice_fails_clearly() {
    run(async {
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
    })
}

#[test]
fn garbage_datagrams_are_dropped_and_the_node_keeps_serving() {
    run(async {
        let server = server(&["udp://127.0.0.1:0"]).await;
        let Address::Udp(target) = addresses(&server)[0] else {
            unreachable!()
        };
        let garbage = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
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
        let (client, ()) = future::zip(transfer(&server, &to, 1000, 1000), flood).await;
        drop(client);
        let stats = server.stats().await.unwrap();
        let malformed: u64 = stats.paths.iter().map(|p| p.info.stats.malformed).sum();
        assert!(malformed > 0 || stats.dropped_datagrams > 0, "{stats:?}");
    })
}

#[test]
fn truncated_and_oversized_frames_on_tcp_close_only_that_connection() {
    run(async {
        use std::io::Write;
        let server = server(&["tcp://127.0.0.1:0"]).await;
        let Address::Tcp(target) = addresses(&server)[0] else {
            unreachable!()
        };
        // A huge declared length, then a truncated frame and a hang-up.
        let mut hostile = std::net::TcpStream::connect(target).unwrap();
        hostile
            .write_all(&[3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3])
            .unwrap();
        let mut truncated = std::net::TcpStream::connect(target).unwrap();
        truncated.write_all(&[3, 40, 1, 2]).unwrap();
        drop(truncated);
        transfer(&server, &addresses(&server), 500, 1000).await;
        drop(hostile);
    })
}

#[test]
fn a_dropped_tcp_connection_is_redialled_and_the_transfer_completes() {
    run(async {
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
            future::zip(sending, receiving).await;
        };
        timeout(LIMIT, run).await.expect("in time");
        assert!(client.stats().await.unwrap().reconnects >= 1);
    })
}

#[test]
fn a_node_on_a_dedicated_thread_serves_like_any_other() {
    run(async {
        let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
        config.dedicated_thread = true;
        let server = Node::bind(config).await.unwrap();
        transfer(&server, &addresses(&server), 1000, 1000).await;
    })
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

#[test]
fn a_cut_tcp_connection_is_redialled_and_data_in_flight_survives() {
    run(async {
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
        timeout(LIMIT, future::zip(sending, receiving))
            .await
            .expect("in time");
        assert!(client.stats().await.unwrap().reconnects >= 1);
    })
}

#[test]
fn a_garbage_flood_from_many_ports_cannot_hold_the_accept_slots() {
    run(async {
        let mut config = NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap());
        config.max_pending_accepts = 4;
        let server = Node::bind(config).await.unwrap();
        let to = addresses(&server);
        let Address::Udp(target) = to[0] else {
            unreachable!()
        };
        let flooders: Vec<_> = (0..32)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
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
    })
}

/// A shm ring name unique to this test process and call.
fn shm_name(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("atbus-test-smol-{tag}-{}-{n}", std::process::id())
}

#[test]
fn shm_transfers_arrive_in_order_and_the_rings_are_removed_at_close() {
    run(async {
        let name = shm_name("transfer");
        let url = format!("shm://{name}");
        let server = server(&[&url]).await;
        let small = transfer(&server, &[url.parse().unwrap()], 5000, 64).await;
        let large = transfer(&server, &[url.parse().unwrap()], 50, 100_000).await;
        small.close().await;
        large.close().await;
        server.close().await;
        let left: Vec<String> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&name))
            .collect();
        assert_eq!(left, Vec::<String>::new());
    })
}
