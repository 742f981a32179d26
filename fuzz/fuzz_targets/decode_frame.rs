//! Arbitrary bytes through every decoder of atbus-proto: one frame, a datagram of
//! frames, a byte stream split at input-chosen points, packet contents and packed
//! fragments' records. None may
//! panic, and the stream decoder may not buffer beyond its frame limit.
#![no_main]

use atbus_proto::pb::frame_message::Body;
use atbus_proto::{
    DecodeLimits, Frames, PackedRecords, StreamDecoder, decode_content, decode_frame, strip_padding,
};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks a small frame limit sometimes, to exercise the size check.
    let (limits, data) = match input.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (
            DecodeLimits { max_frame_size: usize::from(b) * 16, max_fragments: 16, max_map_entries: 16 },
            rest,
        ),
        Some((_, rest)) => (DecodeLimits::default(), rest),
        None => (DecodeLimits::default(), input),
    };
    let bytes = Bytes::copy_from_slice(data);

    let _ = decode_frame(&bytes, &limits);
    for frame in Frames::new(bytes.clone(), limits) {
        if let Ok(frame) = frame {
            if let Some(Body::Packet(packet)) = frame.body {
                if let Ok(content) = strip_padding(packet.content, packet.padding_size) {
                    if let Ok(content) = decode_content(content, &limits) {
                        for fragment in content.fragment {
                            packed_records(fragment.data, &limits);
                        }
                    }
                }
            }
        }
    }
    let _ = decode_content(bytes.clone(), &limits);
    packed_records(bytes.clone(), &limits);

    // The stream decoder, fed in chunks whose sizes come from the data itself.
    let mut decoder = StreamDecoder::new(limits);
    let mut rest = data;
    while !rest.is_empty() {
        let take = (usize::from(rest[0]) % 64 + 1).min(rest.len());
        decoder.extend(&rest[..take]);
        rest = &rest[take..];
        loop {
            match decoder.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Waiting for more, it holds at most one frame within the limit, or a header
        // still incomplete (two varints, under 20 bytes).
        assert!(decoder.buffered() <= limits.max_frame_size.max(20));
    }
});

/// Packed records: whatever the data, what is accepted covers exactly the records'
/// bytes, and iterating yields that many records within the data.
fn packed_records(data: Bytes, limits: &DecodeLimits) {
    let Ok(records) = PackedRecords::new(data.clone(), limits.max_fragments) else {
        return;
    };
    let (count, span) = (records.messages(), records.span());
    let mut seen = 0usize;
    let mut units = 0u64;
    for record in records {
        assert!(record.len() <= data.len());
        seen += 1;
        units += record.len() as u64 + 1;
    }
    assert_eq!((seen, units), (count, span));
}
