//! Packed fragments (several whole messages per fragment, docs/protocol.md
//! "Packed fragments") and batched delivery events ([`Event::Messages`]), driven
//! over the in-memory network of `common` in virtual time: negotiation, order and
//! exactly-once delivery, loss and retransmission, resets across packed records,
//! hostile packed fragments and the receive window.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use atbus_core::{ConnectionKind, EndpointConfig, Event, OPTION_PACKED_FRAGMENTS, SendOptions};
use atbus_proto::{
    CachedMessageMeta, DecodeLimits, FRAGMENT_FLAG_PACKED, FragmentSpec, decode_content, pb,
    put_packed_record,
};
use bytes::Bytes;
use common::{
    DATAGRAM, Fate, Net, Pair, Side, config, cut_off_stream, data_frame, feed, packets, payload,
};

/// A configuration that packs and batches.
fn packing(name: &str, session: u64) -> EndpointConfig {
    let mut c = config(name, session);
    c.pack_messages = true;
    c.batch_events = true;
    c
}

/// `(packed fragments, records in them, plain fragments)` of stream `stream` in
/// what `side` sent.
fn fragments_sent(net: &Net, side: Side, stream: i64) -> (usize, usize, usize) {
    let (mut packed, mut records, mut plain) = (0, 0, 0);
    for sent in net.sent_by(side) {
        for p in packets(&sent.transmit.data) {
            if p.stream_id != stream {
                continue;
            }
            let content = decode_content(p.content, &DecodeLimits::default()).unwrap();
            for f in content.fragment {
                if f.fragment_flag & FRAGMENT_FLAG_PACKED != 0 {
                    packed += 1;
                    records += atbus_proto::PackedRecords::new(f.data, 1 << 20)
                        .unwrap()
                        .messages();
                } else {
                    plain += 1;
                }
            }
        }
    }
    (packed, records, plain)
}

fn send_all(net: &mut Net, pair: &Pair, stream: i64, messages: &[Bytes], options: &SendOptions) {
    let mut queue: VecDeque<Bytes> = messages.iter().cloned().collect();
    while !queue.is_empty() {
        let now = net.now;
        net.a
            .send_many(now, pair.a_peer, stream, &mut queue, options)
            .unwrap();
        if !queue.is_empty() {
            assert!(net.step(), "stalled with {} queued", queue.len());
        }
    }
}

#[test]
fn packed_runs_arrive_once_in_order_as_batch_events() {
    for kind in [ConnectionKind::Stream, DATAGRAM] {
        let (mut net, pair) = Net::pair(packing("client", 1), packing("server", 2), kind);
        let expected: Vec<Bytes> = (0..3000).map(|i| payload(64, i)).collect();
        send_all(&mut net, &pair, 1, &expected, &SendOptions::default());
        assert!(net.run_until(|n| n.payloads(Side::B, 1).len() == expected.len()));
        net.settle();
        assert_eq!(
            net.payloads(Side::B, 1),
            expected,
            "{kind:?}: in order, once each"
        );
        let (packed, records, plain) = fragments_sent(&net, Side::A, 1);
        // Plain fragments: messages cut at the end of a datagram, as without
        // packing.
        assert!(records + plain >= expected.len(), "{kind:?}");
        let info = net.a.connection_info(pair.a_conn).unwrap();
        assert_eq!(info.stats.retransmits, 0, "{kind:?}");
        assert!(
            packed * 10 < records,
            "{kind:?}: {packed} packed fragments for {records} messages"
        );
        // Runs come as one event each.
        let batches = net.count_events(Side::B, |e| matches!(e, Event::Messages { .. }));
        assert!(
            batches > 0 && batches * 10 < expected.len(),
            "{batches} batches"
        );
        assert_eq!(net.b.stats().delivered_messages, expected.len() as u64);
        // Copied out of the frame into shared blocks of at most 4 KiB: a message
        // the application keeps pins no more than that.
        let got = net.payloads(Side::B, 1);
        let (mut run, mut longest) = (got[0].len(), 0);
        for w in got.windows(2) {
            if w[0].as_ptr().wrapping_add(w[0].len()) == w[1].as_ptr() {
                run += w[1].len();
            } else {
                run = w[1].len();
            }
            longest = longest.max(run);
        }
        assert!(longest <= 4096, "{kind:?}: a shared block of {longest} B");
        assert!(longest >= 1024, "{kind:?}: not shared ({longest} B)");
    }
}

/// Messages of every size, empty ones included: those too large to go whole in
/// what is left of a frame are cut as plain fragments between packed runs, and
/// runs of tiny messages are split into packed fragments of at most 512 records
/// (under the receiver's limit of 4096 per fragment).
#[test]
fn mixed_sizes_and_empty_messages_go_packed_or_plain_and_all_arrive() {
    for kind in [ConnectionKind::Stream, DATAGRAM] {
        let (mut net, pair) = Net::pair(packing("client", 1), packing("server", 2), kind);
        let mut rng = common::Rng::new(7);
        let mut expected: Vec<Bytes> = (0..1500)
            .map(|i| match rng.below(10) {
                0 => payload(1000 + rng.below(5000) as usize, i),
                1..=3 => Bytes::new(),
                _ => payload(rng.below(100) as usize, i),
            })
            .collect();
        expected.extend((0..3000).map(|_| Bytes::new()));
        send_all(&mut net, &pair, 1, &expected, &SendOptions::default());
        assert!(
            net.run_until(|n| n.payloads(Side::B, 1).len() == expected.len()),
            "{kind:?}: stalled"
        );
        net.settle();
        assert_eq!(net.payloads(Side::B, 1), expected, "{kind:?}");
        assert_eq!(
            net.b.connection_info(pair.b_conn).unwrap().stats.malformed,
            0
        );
        let (packed, records, plain) = fragments_sent(&net, Side::A, 1);
        assert!(
            packed > 0 && plain > 0,
            "{kind:?}: {packed} packed, {plain} plain"
        );
        assert!(
            records <= packed * 512,
            "{kind:?}: {records} records in {packed}"
        );
    }
}

#[test]
fn packing_needs_both_handshakes_to_offer_it() {
    for (a, b) in [(true, false), (false, true)] {
        let mut ca = config("client", 1);
        ca.pack_messages = a;
        let mut cb = config("server", 2);
        cb.pack_messages = b;
        let (mut net, pair) = Net::pair(ca, cb, DATAGRAM);
        let expected: Vec<Bytes> = (0..200).map(|i| payload(32, i)).collect();
        send_all(&mut net, &pair, 1, &expected, &SendOptions::default());
        assert!(net.run_until(|n| n.payloads(Side::B, 1).len() == expected.len()));
        assert_eq!(net.payloads(Side::B, 1), expected);
        assert_eq!(
            fragments_sent(&net, Side::A, 1).0,
            0,
            "packed to a peer that did not offer it"
        );
        // Batching is off: one event per message.
        assert_eq!(
            net.count_events(Side::B, |e| matches!(e, Event::Messages { .. })),
            0
        );
    }
}

#[test]
fn the_hello_offers_packing_in_its_options() {
    let mut net = Net::new(packing("client", 1), config("server", 2));
    net.b.set_authenticator(Box::new(Recording));
    net.establish(DATAGRAM);
    let seen = RECORDED.with(|r| r.borrow().clone());
    assert_eq!(
        seen.first()
            .and_then(|o| o.get(OPTION_PACKED_FRAGMENTS))
            .map(String::as_str),
        Some("1")
    );
}

thread_local! {
    static RECORDED: std::cell::RefCell<Vec<BTreeMap<String, String>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

struct Recording;

impl atbus_core::Authenticator for Recording {
    fn authenticate(
        &mut self,
        _: atbus_core::ConnectionId,
        hello: &atbus_core::Hello,
    ) -> atbus_core::AuthDecision {
        RECORDED.with(|r| r.borrow_mut().push(hello.options.clone()));
        atbus_core::AuthDecision::Accept
    }
}

#[test]
fn lost_packed_datagrams_are_resent_and_delivered_once_in_order() {
    for seed in 1..=4u64 {
        let (mut net, pair) = Net::pair(packing("client", 1), packing("server", 2), DATAGRAM);
        let mut rng = common::Rng::new(seed);
        // A fifth of A's datagrams carrying stream data are lost (copies too).
        net.fate = Box::new(move |d| {
            if d.from == Side::A && common::carries_data(d.data) && rng.chance(20) {
                Fate::Drop
            } else if rng.chance(5) {
                Fate::Delay(Duration::from_millis(rng.below(30)))
            } else {
                Fate::Deliver
            }
        });
        let expected: Vec<Bytes> = (0..2000)
            .map(|i| payload(1 + (i % 90) as usize, i))
            .collect();
        send_all(&mut net, &pair, 1, &expected, &SendOptions::default());
        assert!(
            net.run_until(|n| n.payloads(Side::B, 1).len() == expected.len()),
            "seed {seed}"
        );
        net.settle();
        assert_eq!(net.payloads(Side::B, 1), expected, "seed {seed}");
        assert!(net.dropped[0] > 0, "seed {seed}: nothing was lost");
        let info = net.a.connection_info(pair.a_conn).unwrap();
        assert!(info.stats.retransmits > 0, "seed {seed}");
        let (packed, _, _) = fragments_sent(&net, Side::A, 1);
        assert!(packed > 0, "seed {seed}");
        assert_eq!(
            net.b.connection_info(pair.b_conn).unwrap().stats.malformed,
            0
        );
    }
}

#[test]
fn labelled_messages_break_packed_runs_and_keep_their_place() {
    let (mut net, pair) = Net::pair(
        packing("client", 1),
        packing("server", 2),
        ConnectionKind::Stream,
    );
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let options = match i % 50 {
            7 => SendOptions {
                labels: [("k".to_owned(), format!("v{i}"))].into_iter().collect(),
                ..Default::default()
            },
            8 => SendOptions {
                token: Bytes::from(format!("t{i}")),
                ..Default::default()
            },
            9 => SendOptions {
                packet_type: 100,
                ..Default::default()
            },
            // A run of another type: its own packed fragment, next to runs of
            // type 0 in the same packet.
            20..=24 => SendOptions {
                packet_type: 101,
                ..Default::default()
            },
            _ => SendOptions::default(),
        };
        let data = payload(40, i);
        let now = net.now;
        net.a
            .send(now, pair.a_peer, 1, data.clone(), &options)
            .unwrap();
        expected.push((data, options));
    }
    assert!(net.run_until(|n| n.messages(Side::B, 1).len() == expected.len()));
    net.settle();
    let got = net.messages(Side::B, 1);
    for (i, (m, (data, options))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(&m.payload, data, "message {i}");
        assert_eq!(m.labels, options.labels, "message {i}");
        assert_eq!(m.token, options.token, "message {i}");
        assert_eq!(m.packet_type, options.packet_type, "message {i}");
    }
    assert!(fragments_sent(&net, Side::A, 1).0 > 0);
    let typed_runs = net.count_events(
        Side::B,
        |e| matches!(e, Event::Messages { packet_type: 101, payloads, .. } if payloads.len() == 5),
    );
    assert_eq!(typed_runs, 6, "each run of type 101 is one event");
}

/// Messages with a deadline go packed; those in the datagrams that never arrive
/// expire, the reset skips them, and every packed record received above the hole
/// (stored out of order, record by record) is delivered once, in order.
#[test]
fn a_reset_across_packed_records_keeps_what_arrived() {
    let (mut net, pair) = Net::pair(packing("client", 1), packing("server", 2), DATAGRAM);
    // Every copy of the stream's first datagram is lost.
    net.fate = Box::new(|d| {
        let first = packets(d.data)
            .iter()
            .any(|p| p.stream_id == 1 && p.stream_offset == 0 && !p.content.is_empty());
        if d.from == Side::A && first {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let deadline = net.now + Duration::from_millis(200);
    let expected: Vec<Bytes> = (0..400).map(|i| payload(48, i)).collect();
    let options = SendOptions {
        deadline: Some(deadline),
        ..Default::default()
    };
    send_all(&mut net, &pair, 1, &expected, &options);
    assert!(net.run_until(|n| {
        n.count_events(Side::B, |e| matches!(e, Event::MessagesSkipped { .. })) > 0
    }));
    net.settle();
    let expired: u64 = net
        .events(Side::A)
        .map(|e| match e {
            Event::MessagesExpired { messages, .. } => *messages,
            _ => 0,
        })
        .sum();
    assert!(expired > 0);
    let got = net.payloads(Side::B, 1);
    // What arrived is a run of the sent messages from some point on, once each
    // and in order: the lost head was skipped, nothing after it.
    assert!(!got.is_empty() && got.len() < expected.len());
    let skipped = expected.len() - got.len();
    assert_eq!(
        got,
        expected[skipped..],
        "in order, once each, after the skip"
    );
    // The sender drops every expired message it holds, including those only
    // selectively acknowledged (received above the hole), so it may count more.
    assert!(
        expired >= skipped as u64,
        "{expired} expired, {skipped} missing"
    );
    // The records above the hole were taken out of order (packed on the wire).
    assert!(fragments_sent(&net, Side::A, 1).0 > 0);
    // The stream goes on.
    let after = Bytes::from_static(b"after");
    let now = net.now;
    net.a
        .send(now, pair.a_peer, 1, after.clone(), &SendOptions::default())
        .unwrap();
    assert!(net.run_until(|n| n.payloads(Side::B, 1).last() == Some(&after)));
    assert_eq!(net.payloads(Side::B, 1).len(), got.len() + 1);
}

/// (From review) the messages after a gap that expired at the sender come after
/// the skip event that reports the gap, also when the first frame past the gap
/// (which carries the reset) is packed and could be handed over whole.
#[test]
fn a_skip_event_comes_before_the_packed_messages_after_the_gap() {
    let (mut net, pair) = Net::pair(packing("client", 1), packing("server", 2), DATAGRAM);
    // Stream 1's data and the resets the sender sends on their own.
    let blocked = cut_off_stream(&mut net, 1);
    let lost: Vec<Bytes> = (0..3).map(|i| payload(48, i)).collect();
    let options = SendOptions {
        deadline: Some(net.now + Duration::from_millis(100)),
        ..Default::default()
    };
    send_all(&mut net, &pair, 1, &lost, &options);
    net.run_for(Duration::from_millis(400));
    assert!(net.count_events(Side::A, |e| matches!(e, Event::MessagesExpired { .. })) > 0);
    *blocked.lock().unwrap() = false;
    let after: Vec<Bytes> = (10..30).map(|i| payload(48, i)).collect();
    send_all(&mut net, &pair, 1, &after, &SendOptions::default());
    assert!(net.run_until(|n| n.payloads(Side::B, 1).len() == after.len()));
    assert_eq!(net.payloads(Side::B, 1), after);
    let events: Vec<&Event> = net.events(Side::B).collect();
    let skip = events
        .iter()
        .position(|e| matches!(e, Event::MessagesSkipped { stream: 1, .. }))
        .expect("a skip event");
    let first = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::Message { stream: 1, .. } | Event::Messages { stream: 1, .. }
            )
        })
        .unwrap();
    assert!(skip < first, "skip at {skip}, first message at {first}");
}

/// A packed data frame of stream `stream` at `offset` whose fragment's data is
/// `records` (encoded by the caller), with `flag` added to PACKED and `meta`.
fn packed_frame(
    stream: i64,
    offset: u64,
    records: &[u8],
    has_more: bool,
    meta: &CachedMessageMeta,
) -> Bytes {
    let specs = [FragmentSpec {
        meta: Some(meta),
        data: records,
        has_more,
        packed: true,
    }];
    data_frame(stream, offset, 0, &specs)
}

fn records(messages: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        put_packed_record(&mut out, m);
    }
    out
}

#[test]
fn malformed_packed_fragments_are_dropped_and_counted() {
    let (mut net, pair) = Net::pair(config("client", 1), config("server", 2), DATAGRAM);
    let plain = CachedMessageMeta::of_type(0);
    let good = records(&[Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
    let mut past_end = good.clone();
    past_end.extend_from_slice(&[9, b'x']);
    let mut cut_varint = good.clone();
    cut_varint.push(0x80);
    let labelled = CachedMessageMeta::new(&pb::packet_content::FragmentType {
        labels: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
        ..Default::default()
    });
    let hostile = [
        packed_frame(1, 0, &past_end, false, &plain),
        packed_frame(1, 0, &cut_varint, false, &plain),
        packed_frame(1, 0, &[0xff; 12], false, &plain),
        // PACKED with HAS_MORE, and PACKED with metadata besides the type.
        packed_frame(1, 0, &good, true, &plain),
        packed_frame(1, 0, &good, false, &labelled),
    ];
    for (i, data) in hostile.into_iter().enumerate() {
        feed(&mut net, &pair, data);
        let info = net.b.connection_info(pair.b_conn).unwrap();
        assert_eq!(info.stats.malformed, i as u64 + 1, "frame {i}");
        assert!(
            net.messages(Side::B, 1).is_empty(),
            "frame {i}: delivered something"
        );
    }
    // A good one after them is taken: nothing above was applied.
    feed(&mut net, &pair, packed_frame(1, 0, &good, false, &plain));
    assert_eq!(
        net.payloads(Side::B, 1),
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
}

#[test]
fn packed_records_past_the_receive_window_are_not_taken() {
    let mut server = config("server", 2);
    server.stream_receive_window = 1000;
    let (mut net, pair) = Net::pair(config("client", 1), server, DATAGRAM);
    let plain = CachedMessageMeta::of_type(0);
    // 50 records of 64 B: 3,250 offsets, over three times the window.
    let messages: Vec<Bytes> = (0..50).map(|i| payload(64, i)).collect();
    feed(
        &mut net,
        &pair,
        packed_frame(1, 0, &records(&messages), false, &plain),
    );
    let got = net.payloads(Side::B, 1);
    // Those within the window (65 offsets each), in order, and no more.
    assert_eq!(got, messages[..1000 / 65], "the first records only");
    assert!(net.b.buffered_bytes() <= 1000);
    // The same frame again (a retransmission) brings the next window's worth.
    feed(
        &mut net,
        &pair,
        packed_frame(1, 0, &records(&messages), false, &plain),
    );
    let got = net.payloads(Side::B, 1);
    assert_eq!(
        got,
        messages[..2 * (1000 / 65)],
        "the next records, once each"
    );
}

#[test]
fn a_packed_frame_above_a_hole_waits_for_it() {
    let (mut net, pair) = Net::pair(config("client", 1), config("server", 2), DATAGRAM);
    let plain = CachedMessageMeta::of_type(0);
    let first: Vec<Bytes> = (0..5).map(|i| payload(10, i)).collect();
    let second: Vec<Bytes> = (5..12).map(|i| payload(10, i)).collect();
    let span = 5 * 11;
    feed(
        &mut net,
        &pair,
        packed_frame(1, span, &records(&second), false, &plain),
    );
    assert!(
        net.payloads(Side::B, 1).is_empty(),
        "delivered above a hole"
    );
    feed(
        &mut net,
        &pair,
        packed_frame(1, 0, &records(&first), false, &plain),
    );
    let all: Vec<Bytes> = first.iter().chain(&second).cloned().collect();
    assert_eq!(net.payloads(Side::B, 1), all);
    // Duplicates of both change nothing.
    feed(
        &mut net,
        &pair,
        packed_frame(1, 0, &records(&first), false, &plain),
    );
    feed(
        &mut net,
        &pair,
        packed_frame(1, span, &records(&second), false, &plain),
    );
    assert_eq!(net.payloads(Side::B, 1), all);
}
