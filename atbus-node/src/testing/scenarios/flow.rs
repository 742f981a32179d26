//! Flow control between the network, the node and its application: an
//! application that awaits the node from its event loop, one that does not read,
//! and sends whose caller gave up.

use std::time::Duration;

use futures_lite::future;

use super::{addresses, bind, server, sleep, within};
use crate::runtime::Runtime;
use crate::testing::payload;
use crate::{Event, Node, NodeConfig, NodeError, PeerId, SendOptions};

/// Requests of 1 KiB; each reply is 4 KiB, 2000 of them: 8 MB through a 64 KiB send
/// window, from an echo server whose application holds at most 16 events and
/// awaits each reply's `send` inside its receive loop. Its node must keep reading
/// the client's acknowledgements while the application does not read events, or
/// the `send` waits for ever and the application never reads again.
pub async fn an_echo_server_awaiting_each_reply_in_its_receive_loop_does_not_wedge<
    R: Runtime + Clone,
>(
    rt: R,
) {
    for listen in ["tcp://127.0.0.1:0", "udp://127.0.0.1:0"] {
        let mut config = NodeConfig::new("echo").listen(listen.parse().unwrap());
        config.event_capacity = 16;
        config.endpoint.stream_send_window = 64 * 1024;
        let server = bind(&rt, config).unwrap();
        let client = bind(&rt, NodeConfig::new("client")).unwrap();
        let peer = client.connect(&addresses(&server)).await.unwrap();
        let count = 2000u32;
        let echo = async {
            let mut replies = 0;
            while replies < count {
                let Some(event) = server.recv().await else {
                    panic!("{listen}: the server closed");
                };
                if let Event::Message { peer, message, .. } = event {
                    let number = u32::from_le_bytes(message.payload[..4].try_into().unwrap());
                    server
                        .send(peer, 1, payload(number, 4096), SendOptions::default())
                        .await
                        .unwrap();
                    replies += 1;
                }
            }
        };
        // All at once: the server's queue fills while it waits for its window.
        let requests = client.send_many(
            peer,
            1,
            (0..count).map(|i| payload(i, 1024)).collect(),
            SendOptions::default(),
        );
        let replies = async {
            let mut next = 0;
            while next < count {
                if let Some(Event::Message { message, .. }) = client.recv().await {
                    assert_eq!(
                        message.payload,
                        payload(next, 4096),
                        "{listen}: reply {next}"
                    );
                    next += 1;
                }
            }
        };
        let ((), (sent, ())) = within(&rt, future::zip(echo, future::zip(requests, replies))).await;
        sent.unwrap();
        let stats = server.stats().await.unwrap();
        assert!(
            stats.delivery_pauses > 0,
            "{listen}: the server's queue of 16 events was never full"
        );
        client.close().await;
        server.close().await;
    }
}

/// A node whose application reads no events while a peer floods it still
/// connects to another node, and waits for its sends to be acknowledged.
pub async fn connect_and_waits_complete_while_the_application_reads_no_events<
    R: Runtime + Clone,
>(
    rt: R,
) {
    let mut config = NodeConfig::new("busy").listen("tcp://127.0.0.1:0".parse().unwrap());
    config.event_capacity = 4;
    let busy = bind(&rt, config).unwrap();
    let flooder = bind(&rt, NodeConfig::new("flooder")).unwrap();
    let other = server(&rt, &["udp://127.0.0.1:0"]);
    within(&rt, async {
        let to_busy = flooder.connect(&addresses(&busy)).await.unwrap();
        for i in 0..64 {
            flooder
                .try_send(to_busy, 1, payload(i, 1000), SendOptions::default())
                .await
                .unwrap();
        }
        flooder.wait_acknowledged(to_busy).await.unwrap();
        let peer = busy.connect(&addresses(&other)).await.unwrap();
        busy.send(peer, 1, payload(0, 100_000), SendOptions::default())
            .await
            .unwrap();
        busy.wait_acknowledged(peer).await.unwrap();
    })
    .await;
    let stats = busy.stats().await.unwrap();
    assert!(
        stats.delivery_pauses > 0,
        "the queue of 4 events was never full"
    );
    // Full at 4 events (messages and the flooder's `PeerConnected`), then the
    // other node's `PeerConnected`: events other than messages are not held back.
    assert_eq!(stats.queued_events, 5, "events queued");
    assert_eq!(stats.queued_event_bytes, 3 * 1000);
    for node in [&flooder, &busy, &other] {
        node.close().await;
    }
}

/// Samples `node`'s queues `samples` times, 10 ms apart, and checks they stay
/// within their bounds.
async fn assert_queues_bounded<R: Runtime>(rt: &R, node: &Node, config: &NodeConfig, what: &str) {
    let max_message = 512 * 1024;
    // One reader's overshoot: a batch of datagrams (GRO: up to 16 × 64 KiB).
    let max_input = 16 * 64 * 1024;
    for _ in 0..20 {
        let stats = node.stats().await.unwrap();
        assert!(
            stats.queued_event_bytes <= config.event_bytes + max_message,
            "{what}: {} B of events queued",
            stats.queued_event_bytes
        );
        assert!(
            stats.queued_input_bytes <= config.input_bytes + max_input,
            "{what}: {} B of input queued",
            stats.queued_input_bytes
        );
        // Receive windows of the four streams, with their bookkeeping.
        let windows = 4 * config.endpoint.stream_receive_window as usize;
        assert!(
            stats.buffered_bytes <= windows + windows / 4,
            "{what}: the core holds {} B",
            stats.buffered_bytes
        );
        sleep(rt, Duration::from_millis(10)).await;
    }
}

/// A peer sends 32 MiB of 512 KiB messages on four streams to a node whose
/// application does not read, with a 1 MiB bound on queued event bytes: the node's
/// queues stay within their configured bounds (event bytes, input bytes, the
/// streams' receive windows) while the sender is flow-controlled, and once the
/// application reads every message arrives.
pub async fn a_node_whose_application_does_not_read_holds_bounded_memory<R: Runtime + Clone>(
    rt: R,
) {
    for listen in ["tcp://127.0.0.1:0", "udp://127.0.0.1:0"] {
        let mut config = NodeConfig::new("server").listen(listen.parse().unwrap());
        config.event_bytes = 1024 * 1024;
        config.input_bytes = 256 * 1024;
        config.endpoint.stream_receive_window = 1024 * 1024;
        let server = bind(&rt, config.clone()).unwrap();
        let client = bind(&rt, NodeConfig::new("client")).unwrap();
        let peer = client.connect(&addresses(&server)).await.unwrap();
        let (per_stream, size) = (16u32, 512 * 1024);
        let send_on = |stream: i64| {
            let client = &client;
            async move {
                for i in 0..per_stream {
                    client
                        .send(peer, stream, payload(i, size), SendOptions::default())
                        .await
                        .unwrap();
                }
            }
        };
        let sending = future::zip(
            future::zip(send_on(1), send_on(2)),
            future::zip(send_on(3), send_on(4)),
        );
        let watching = async {
            within(&rt, async {
                while server.stats().await.unwrap().delivery_pauses == 0 {
                    sleep(&rt, Duration::from_millis(5)).await;
                }
            })
            .await;
            assert_queues_bounded(&rt, &server, &config, listen).await;
            let client_stats = client.stats().await.unwrap();
            let server_stats = server.stats().await.unwrap();
            assert!(
                server_stats.queued_event_bytes >= config.event_bytes - size,
                "{listen}: the queue filled ({} B)",
                server_stats.queued_event_bytes
            );
            // Flow-controlled: the client still holds data it could not send.
            assert!(
                client_stats.buffered_bytes > 0,
                "{listen}: the client was not held back"
            );
            let mut next = [0u32; 4];
            while next.iter().any(|&n| n < per_stream) {
                if let Some(Event::Message {
                    stream, message, ..
                }) = server.recv().await
                {
                    let n = &mut next[(stream - 1) as usize];
                    assert_eq!(message.payload, payload(*n, size), "{listen}: {stream}/{n}");
                    *n += 1;
                }
            }
        };
        within(&rt, future::zip(sending, watching)).await;
        client.close().await;
        server.close().await;
    }
}

/// A `send` that waits for a full window and whose caller gives up (a timeout
/// drops its future) is not sent later, however many times it is retried.
pub async fn a_send_given_up_while_waiting_for_the_window_is_not_sent_later<R: Runtime + Clone>(
    rt: R,
) {
    let mut config = NodeConfig::new("server").listen("tcp://127.0.0.1:0".parse().unwrap());
    // The application's queue is full after one message, and what waits behind
    // it fills one 64 KiB window: the client's window stays full until it reads.
    config.event_bytes = 1;
    config.endpoint.stream_receive_window = 64 * 1024;
    let server = bind(&rt, config).unwrap();
    let mut config = NodeConfig::new("client");
    config.endpoint.stream_send_window = 64 * 1024;
    let client = bind(&rt, config).unwrap();
    let peer = client.connect(&addresses(&server)).await.unwrap();
    let sent = fill_window(&rt, &client, peer).await;
    // As large as the others, so that none fits in what is left of the window.
    for k in 0..20 {
        let given_up = payload(u32::MAX - k, 1000);
        let attempt = client.send(peer, 1, given_up, SendOptions::default());
        let gave_up = future::or(async { attempt.await.map(|()| false) }, async {
            sleep(&rt, Duration::from_millis(20)).await;
            Ok(true)
        })
        .await;
        assert!(gave_up.unwrap(), "the window was not full");
    }
    // Message `sent` follows the numbered ones directly.
    let last = client.send(peer, 1, payload(sent, 1000), SendOptions::default());
    let receiving = async {
        let mut next = 0;
        while next <= sent {
            if let Some(Event::Message { message, .. }) = server.recv().await {
                let number = u32::from_le_bytes(message.payload[..4].try_into().unwrap());
                assert_eq!(number, next, "a message given up was sent");
                assert_eq!(message.payload, payload(next, 1000), "message {next}");
                next += 1;
            }
        }
    };
    let (sent_last, ()) = within(&rt, future::zip(last, receiving)).await;
    sent_last.unwrap();
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.queued_events, 0, "nothing after the last message");
    client.close().await;
    server.close().await;
}

/// Sends numbered 1000 B messages on stream 1 until the window is full (a `send`
/// still waits after 50 ms); returns how many went.
async fn fill_window<R: Runtime>(rt: &R, client: &Node, peer: PeerId) -> u32 {
    let mut sent = 0;
    loop {
        match client
            .try_send(peer, 1, payload(sent, 1000), SendOptions::default())
            .await
        {
            Ok(()) => sent += 1,
            Err(NodeError::Send(crate::SendError::WouldBlock)) => {
                // The peer's acknowledgements may still open it: wait a little.
                sleep(rt, Duration::from_millis(50)).await;
                match client
                    .try_send(peer, 1, payload(sent, 1000), SendOptions::default())
                    .await
                {
                    Ok(()) => sent += 1,
                    Err(NodeError::Send(crate::SendError::WouldBlock)) => return sent,
                    Err(err) => panic!("{err}"),
                }
            }
            Err(err) => panic!("{err}"),
        }
    }
}
