//! Property tests of the codec (proptest).

mod common;

use atbus_proto::pb::{self, frame_message::Body, packet_content::FragmentType};
use atbus_proto::{
    CachedHead, CachedMessageMeta, Content, DataFrame, DecodeLimits, FragmentSpec, Frames,
    StreamDecoder, decode_content, decode_frame, encode_content, encode_frame, encoded_frame_len,
};
use bytes::{Bytes, BytesMut};
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

fn wire(msg: &pb::FrameMessage) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf);
    buf.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip(msg in frame()) {
        let bytes = wire(&msg);
        prop_assert_eq!(bytes.len(), encoded_frame_len(&msg));
        let (decoded, used) = decode_frame(&bytes, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decoded, msg);
    }

    #[test]
    fn content_round_trips(content in content()) {
        let bytes = Bytes::from(content.encode_to_vec());
        prop_assert_eq!(decode_content(bytes, &DecodeLimits::default()).unwrap(), content);
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(
        bytes in vec(any::<u8>(), 0..2048),
        max in 0usize..4096,
    ) {
        let limits = DecodeLimits { max_frame_size: max, max_fragments: 8, max_map_entries: 8 };
        let bytes = Bytes::from(bytes);
        let _ = decode_frame(&bytes, &limits);
        let _ = Frames::new(bytes.clone(), limits).count();
        let _ = decode_content(bytes.clone(), &limits);
        let mut decoder = StreamDecoder::new(limits);
        decoder.extend(&bytes);
        while let Ok(Some(_)) = decoder.next_frame() {}
        prop_assert!(decoder.buffered() <= bytes.len());
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(body in vec(any::<u8>(), 0..512)) {
        // With a correct checksum the protobuf decoder itself is exercised.
        let mut frame = vec![3u8];
        prost::encoding::encode_varint(body.len() as u64, &mut frame);
        frame.extend_from_slice(&body);
        let crc = crc32c::crc32c(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
        let limits = DecodeLimits { max_fragments: 8, max_map_entries: 8, ..DecodeLimits::default() };
        if let Ok((pb::FrameMessage { body: Some(Body::Packet(p)), .. }, _)) =
            decode_frame(&Bytes::from(frame), &limits)
        {
            let _ = decode_content(p.content, &limits);
        }
    }

    #[test]
    fn stream_decoder_yields_the_same_frames_however_the_input_is_split(
        msgs in vec(frame(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for msg in &msgs {
            encode_frame(msg, &mut stream);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = StreamDecoder::new(DecodeLimits::default());
        let mut out = Vec::new();
        for pair in cuts.windows(2) {
            decoder.extend(&stream[pair[0]..pair[1]]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                out.push(frame);
            }
        }
        prop_assert_eq!(out, msgs);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn spliced_data_frames_equal_prosts_encoding(
        head in proptest::option::of(head()),
        metas in vec(fragment_meta(), 1..4),
        pieces in vec((0usize..4, bytes(300), any::<bool>(), 0u8..3), 0..6),
        (stream_id, stream_offset, flags, padding_size, t) in
            (any::<i64>(), any::<i64>(), any::<i32>(), any::<i32>(), any::<i64>()),
    ) {
        let cached_metas: Vec<CachedMessageMeta> = metas.iter().map(CachedMessageMeta::new).collect();
        let specs: Vec<FragmentSpec> = pieces
            .iter()
            // Flag 1: HAS_MORE, 2: PACKED (the splicer does not look inside).
            .map(|(m, data, first, flag)| FragmentSpec {
                meta: first.then(|| &cached_metas[m % cached_metas.len()]),
                data,
                has_more: *flag == 1,
                packed: *flag == 2,
            })
            .collect();
        // The same content built the prost way.
        let fragments: Vec<FragmentType> = pieces
            .iter()
            .map(|(m, data, first, flag)| {
                let mut f = if *first { metas[m % metas.len()].clone() } else { FragmentType::default() };
                f.data = data.clone();
                f.fragment_flag = i32::from(*flag);
                f
            })
            .collect();
        let content = pb::PacketContent { fragment: fragments }.encode_to_vec();

        let mut plain = Vec::new();
        encode_content(&specs, &mut plain);
        prop_assert_eq!(&plain, &content);

        let expected = wire(&pb::FrameMessage {
            head: head.clone(),
            body: Some(Body::Packet(pb::PacketData {
                stream_id,
                stream_offset,
                content: content.clone().into(),
                flags,
                padding_size,
                timepoint_microseconds: t,
            })),
        });
        let cached_head = head.as_ref().map(CachedHead::new).unwrap_or_default();
        for content in [Content::Fragments(&specs), Content::Encoded(&content)] {
            let frame = DataFrame {
                head: &cached_head,
                stream_id,
                stream_offset,
                flags,
                padding_size,
                timepoint_microseconds: t,
                content,
            };
            prop_assert_eq!(frame.encoded_len(), expected.len());
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            prop_assert_eq!(&buf[..], &expected[..]);
        }
        for spec in &specs {
            prop_assert_eq!(spec.overhead() + spec.data.len(), spec.encoded_len());
        }
    }
}
