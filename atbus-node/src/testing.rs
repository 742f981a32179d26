//! Runtime-neutral pieces of the adapters' loopback tests (the `testing`
//! feature): numbered payloads, the two halves of a transfer, and the
//! [`scenarios`] every adapter runs through [`loopback_tests!`](crate::loopback_tests).

pub mod scenarios;

use bytes::Bytes;

use crate::{Event, Node, PeerId, SendOptions};

/// Message `i` of `size` bytes (`size` at least 4): its number, then a filler
/// that depends on it.
pub fn payload(i: u32, size: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; size];
    v[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(v)
}

/// Sends messages `0..count` of `size` bytes on stream 1 to `peer`, finishes the
/// stream and waits until everything is acknowledged. Panics on any error.
pub async fn send_numbered(client: &Node, peer: PeerId, count: u32, size: usize) {
    for i in 0..count {
        client
            .send(peer, 1, payload(i, size), SendOptions::default())
            .await
            .expect("send");
    }
    client.finish(peer, 1).await.expect("finish");
    client.wait_acknowledged(peer).await.expect("acknowledged");
}

/// Receives stream 1 until it finishes and checks it held messages `0..count`
/// of `size` bytes, each once and in order. Panics otherwise.
pub async fn receive_numbered(server: &Node, count: u32, size: usize) {
    let mut next = 0;
    while !check_numbered(server.recv().await.expect("event"), &mut next, size) {}
    assert_eq!(next, count);
}

/// [`receive_numbered`] through [`Node::recv_many`], `max` events per call: also
/// checks that no batch is empty or longer than `max`. Returns the number of
/// batches taken.
pub async fn receive_numbered_batched(server: &Node, count: u32, size: usize, max: usize) -> usize {
    let mut next = 0;
    let mut batches = 0;
    let mut events = Vec::new();
    'receive: loop {
        let taken = server.recv_many(&mut events, max).await;
        assert!(
            (1..=max).contains(&taken),
            "batch of {taken} for at most {max}"
        );
        assert_eq!(taken, events.len());
        batches += 1;
        for event in events.drain(..) {
            if check_numbered(event, &mut next, size) {
                break 'receive;
            }
        }
    }
    assert_eq!(next, count);
    batches
}

/// Checks one event of [`receive_numbered`]: message `next` on stream 1 (then
/// counts it), or the end of stream 1 (returns true).
fn check_numbered(event: Event, next: &mut u32, size: usize) -> bool {
    match event {
        Event::Message {
            stream, message, ..
        } => {
            assert_eq!(stream, 1);
            assert_eq!(message.payload, payload(*next, size), "message {next}");
            *next += 1;
            false
        }
        Event::StreamFinished { stream: 1, .. } => true,
        _ => false,
    }
}
