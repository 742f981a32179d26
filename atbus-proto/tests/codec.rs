//! The frame codec's behaviour on valid and malformed input.

use atbus_proto::pb::{self, frame_message::Body};
use atbus_proto::{
    DecodeLimits, FrameError, Frames, StreamDecoder, decode_content, decode_frame, encode_frame,
    encoded_frame_len,
};
use bytes::{Bytes, BytesMut};
use prost::Message;

fn data_frame(payload: &[u8]) -> pb::FrameMessage {
    let content = pb::PacketContent {
        fragment: vec![pb::packet_content::FragmentType {
            data: Bytes::copy_from_slice(payload),
            ..Default::default()
        }],
    };
    pb::FrameMessage {
        head: Some(pb::MessageHead {
            source: "a".into(),
            destination: "b".into(),
            ..Default::default()
        }),
        body: Some(Body::Packet(pb::PacketData {
            stream_id: 1,
            content: content.encode_to_vec().into(),
            ..Default::default()
        })),
    }
}

/// An ACK frame whose relay data carries `n` attributes.
fn ack_with_attributes(n: usize) -> pb::FrameMessage {
    let attributes = (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
    pb::FrameMessage {
        head: None,
        body: Some(Body::Acknowledge(pb::AcknowledgeData {
            forward_for: Some(pb::ForwardData {
                attributes,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn wire(msg: &pb::FrameMessage) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf);
    buf.freeze()
}

/// A frame with the given version, declared length and body, checksummed correctly.
fn raw_frame(version: u64, length: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(version, &mut out);
    prost::encoding::encode_varint(length, &mut out);
    out.extend_from_slice(body);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn crc32c(data: &[u8]) -> u32 {
    // Bitwise CRC-32C (reflected polynomial 0x82F63B78), independent of the crate's.
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn checksum_is_crc32c_little_endian_over_the_preceding_bytes() {
    let frame = wire(&data_frame(b"hello"));
    let (bytes, trailer) = frame.split_at(frame.len() - 4);
    assert_eq!(trailer, crc32c(bytes).to_le_bytes());
    assert_eq!(bytes[0], 3, "version varint");
}

#[test]
fn decoded_payload_is_a_slice_of_the_input_buffer() {
    let frame = wire(&data_frame(&[9u8; 1000]));
    let (msg, used) = decode_frame(&frame, &DecodeLimits::default()).unwrap();
    assert_eq!(used, frame.len());
    let Some(Body::Packet(packet)) = msg.body else {
        panic!("not a packet")
    };
    let content = decode_content(packet.content.clone(), &DecodeLimits::default()).unwrap();
    let data = &content.fragment[0].data;
    let range = frame.as_ptr_range();
    assert!(
        range.contains(&packet.content.as_ptr()),
        "content was copied"
    );
    assert!(range.contains(&data.as_ptr()), "fragment data was copied");
}

#[test]
fn truncated_frame_asks_for_more() {
    let frame = wire(&data_frame(b"hello world"));
    for cut in 0..frame.len() {
        let err = decode_frame(&frame.slice(..cut), &DecodeLimits::default()).unwrap_err();
        assert!(err.is_truncated(), "cut at {cut}: {err}");
    }
}

#[test]
fn overlong_varint_is_rejected() {
    let mut bytes = vec![3u8];
    bytes.extend_from_slice(&[0xff; 11]);
    let err = decode_frame(&Bytes::from(bytes), &DecodeLimits::default()).unwrap_err();
    assert_eq!(err, FrameError::VarintTooLong);
}

#[test]
fn unknown_version_is_rejected() {
    for version in [0u64, 1, 2, 4, 300] {
        let bytes = Bytes::from(raw_frame(version, 0, &[]));
        let err = decode_frame(&bytes, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err, FrameError::UnsupportedVersion(version));
    }
}

#[test]
fn length_above_the_limit_is_rejected_from_the_header_alone() {
    let limits = DecodeLimits::with_max_frame_size(1024);
    // Only the header: a decoder must not wait for (or buffer) a 4 GiB body.
    let mut header = vec![3u8];
    prost::encoding::encode_varint(4 << 30, &mut header);
    let err = decode_frame(&Bytes::from(header.clone()), &limits).unwrap_err();
    assert!(
        matches!(err, FrameError::FrameTooLarge { max: 1024, .. }),
        "{err}"
    );

    let mut decoder = StreamDecoder::new(limits);
    decoder.extend(&header);
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::FrameTooLarge { .. })
    ));
    assert_eq!(decoder.buffered(), 0);

    // A length of u64::MAX does not overflow the size computation.
    let mut header = vec![3u8];
    prost::encoding::encode_varint(u64::MAX, &mut header);
    let err = decode_frame(&Bytes::from(header), &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, FrameError::FrameTooLarge { size: u64::MAX, .. }),
        "{err}"
    );

    // A frame exactly at the limit passes.
    let body = vec![0u8; 0];
    let exact = raw_frame(3, 0, &body);
    let limits = DecodeLimits::with_max_frame_size(exact.len());
    assert!(decode_frame(&Bytes::from(exact.clone()), &limits).is_ok());
    let limits = DecodeLimits::with_max_frame_size(exact.len() - 1);
    assert!(decode_frame(&Bytes::from(exact), &limits).is_err());
}

#[test]
fn corrupted_byte_fails_the_checksum() {
    let frame = wire(&data_frame(b"payload"));
    for i in 2..frame.len() {
        let mut bad = frame.to_vec();
        bad[i] ^= 0x10;
        match decode_frame(&Bytes::from(bad), &DecodeLimits::default()) {
            Err(FrameError::ChecksumMismatch { .. }) => {}
            other => panic!("flip at {i}: {other:?}"),
        }
    }
}

#[test]
fn protobuf_that_does_not_decode_is_rejected() {
    // Field 7 (packet), length-delimited, declares 5 bytes but only 1 follows.
    let bytes = Bytes::from(raw_frame(3, 3, &[0x3a, 0x05, 0x00]));
    let err = decode_frame(&bytes, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    // Well-formed wire structure that prost refuses: field 7 holding a varint.
    let bytes = Bytes::from(raw_frame(3, 2, &[0x38, 0x01]));
    let err = decode_frame(&bytes, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, FrameError::Protobuf(_)), "{err}");
}

#[test]
fn too_many_fragments_are_refused_before_decoding() {
    let limits = DecodeLimits {
        max_fragments: 10,
        ..DecodeLimits::default()
    };
    // Eleven empty fragments: `0a 00` each.
    let content = Bytes::from([0x0au8, 0x00].repeat(11));
    let err = decode_content(content, &limits).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooManyElements {
            what: "fragments",
            max: 10
        }
    );
    let content = Bytes::from([0x0au8, 0x00].repeat(10));
    assert_eq!(decode_content(content, &limits).unwrap().fragment.len(), 10);
}

#[test]
fn too_many_map_entries_are_refused_before_decoding() {
    let limits = DecodeLimits {
        max_map_entries: 3,
        ..DecodeLimits::default()
    };
    let labels = (0..4).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let content = pb::PacketContent {
        fragment: vec![pb::packet_content::FragmentType {
            labels,
            ..Default::default()
        }],
    };
    let err = decode_content(content.encode_to_vec().into(), &limits).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooManyElements {
            what: "map entries",
            max: 3
        }
    );

    let err = decode_frame(&wire(&ack_with_attributes(4)), &limits).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooManyElements {
            what: "map entries",
            max: 3
        }
    );
}

#[test]
fn a_datagram_carries_several_frames_and_stops_at_the_first_bad_one() {
    let a = data_frame(b"first");
    let b = pb::FrameMessage {
        head: None,
        body: Some(Body::Pong(pb::PingData {
            timepoint_microseconds: 7,
            ..Default::default()
        })),
    };
    let mut datagram = BytesMut::new();
    encode_frame(&a, &mut datagram);
    encode_frame(&b, &mut datagram);
    let good = datagram.clone().freeze();
    let frames: Vec<_> = Frames::new(good, DecodeLimits::default()).collect();
    assert_eq!(frames, vec![Ok(a.clone()), Ok(b.clone())]);

    datagram.extend_from_slice(&[0xde, 0xad]);
    encode_frame(&b, &mut datagram);
    let frames: Vec<_> = Frames::new(datagram.freeze(), DecodeLimits::default()).collect();
    assert_eq!(frames.len(), 3);
    assert!(frames[2].is_err());
}

#[test]
fn encoded_length_is_known_before_encoding() {
    for size in [0usize, 1, 100, 127, 128, 1000, 20_000, 70_000] {
        let msg = data_frame(&vec![1u8; size]);
        assert_eq!(wire(&msg).len(), encoded_frame_len(&msg), "payload {size}");
    }
}

#[test]
fn stream_decoder_error_is_final() {
    let mut decoder = StreamDecoder::new(DecodeLimits::default());
    decoder.extend(&[7, 0, 0, 0, 0, 0]);
    let err = decoder.next_frame().unwrap_err();
    assert_eq!(err, FrameError::UnsupportedVersion(7));
    decoder.extend(&wire(&data_frame(b"late")));
    assert_eq!(decoder.buffered(), 0, "a failed decoder keeps nothing");
    assert_eq!(decoder.next_frame().unwrap_err(), err);
}

#[test]
fn crc32c_check_value_matches_the_spec() {
    // docs/protocol.md states this check value.
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(::crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn a_group_cannot_hide_fragments_from_the_limit() {
    let limits = DecodeLimits {
        max_fragments: 10,
        ..DecodeLimits::default()
    };
    // An empty group on unknown field 15 (`7b 7c`), then 100 empty fragments: prost
    // would skip the group and decode them all.
    let mut content = vec![0x7bu8, 0x7c];
    content.extend([0x0au8, 0x00].repeat(100));
    let err = decode_content(Bytes::from(content), &limits).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");

    // The same trick in front of an ACK's relay attributes.
    let limits = DecodeLimits {
        max_map_entries: 3,
        ..DecodeLimits::default()
    };
    let mut body = vec![0x7bu8, 0x7c];
    body.extend(ack_with_attributes(10).encode_to_vec());
    let bytes = Bytes::from(raw_frame(3, body.len() as u64, &body));
    let err = decode_frame(&bytes, &limits).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
}

#[test]
fn a_small_frame_read_with_a_large_one_reports_the_buffer_it_pins() {
    let small = data_frame(b"tiny");
    let large = data_frame(&vec![7u8; 60_000]);
    let mut bytes = BytesMut::new();
    encode_frame(&small, &mut bytes);
    let small_len = bytes.len();
    encode_frame(&large, &mut bytes);
    let mut decoder = StreamDecoder::new(DecodeLimits::default());
    decoder.extend(&bytes);
    assert_eq!(decoder.next_frame().unwrap(), Some(small));
    // The small frame shares the allocation holding the large one too.
    assert!(
        decoder.last_frame_pinned() >= bytes.len(),
        "{} < {}",
        decoder.last_frame_pinned(),
        bytes.len()
    );
    assert_eq!(decoder.next_frame().unwrap(), Some(large));
    assert!(decoder.last_frame_pinned() >= bytes.len() - small_len);
}
