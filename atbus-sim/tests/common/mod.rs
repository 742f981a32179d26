//! Helpers shared by the link tests.
#![allow(dead_code)]

use std::time::Duration;

use atbus_sim::Link;
use bytes::Bytes;

/// A datagram of `len` bytes (at least 4) carrying `index` in its first bytes.
pub fn numbered(index: u32, len: usize) -> Bytes {
    let mut bytes = vec![0xA5; len.max(4)];
    bytes[..4].copy_from_slice(&index.to_be_bytes());
    Bytes::from(bytes)
}

/// The index written by [`numbered`].
pub fn index_of(datagram: &[u8]) -> u32 {
    u32::from_be_bytes([datagram[0], datagram[1], datagram[2], datagram[3]])
}

/// Delivers everything that arrives by `until`, with its arrival instant.
pub fn drain(link: &mut Link, until: Duration, out: &mut Vec<(Duration, Bytes)>) {
    while let Some(at) = link.next_delivery().filter(|&at| at <= until) {
        let datagram = link.poll_delivery(at).expect("due datagram is delivered");
        out.push((at, datagram));
    }
}

/// Sends `datagrams` at their instants (in order), collecting every delivery with its
/// arrival instant, until the link is empty.
pub fn run(
    link: &mut Link,
    datagrams: impl IntoIterator<Item = (Duration, Bytes)>,
) -> Vec<(Duration, Bytes)> {
    let mut delivered = Vec::new();
    for (at, datagram) in datagrams {
        drain(link, at, &mut delivered);
        link.send(at, datagram);
    }
    drain(link, Duration::MAX, &mut delivered);
    delivered
}

/// `count` datagrams of `len` bytes, one every `gap` starting at zero.
pub fn evenly_spaced(
    count: u32,
    gap: Duration,
    len: usize,
) -> impl Iterator<Item = (Duration, Bytes)> {
    (0..count).map(move |i| (gap * i, numbered(i, len)))
}

/// Asserts `actual` is within `tolerance` of `expected`.
pub fn assert_near(what: &str, actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} is not within {tolerance} of {expected}"
    );
}
