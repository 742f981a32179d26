//! Golden vectors: `docs/vectors/*.bin`, one complete frame per file, described in
//! `docs/vectors/README.md`. This test rebuilds each frame from its description and
//! requires the file to match byte for byte; `ATBUS_BLESS_VECTORS=1` rewrites them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use atbus_proto::pb::{self, frame_message::Body, packet_content::FragmentType};
use atbus_proto::{
    CachedHead, CachedMessageMeta, Content, DataFrame, DecodeLimits, FragmentSpec, decode_content,
    decode_frame, encode_frame,
};
use bytes::{Bytes, BytesMut};
use prost::Message;

const DATA: i32 = pb::AtbusPacketType::Data as i32;
const HAS_MORE: i32 = pb::AtbusPacketFragmentFlagType::HasMore as i32;

fn head() -> pb::MessageHead {
    pb::MessageHead {
        source: "node-a".into(),
        destination: "node-b".into(),
        ..Default::default()
    }
}

fn packet(
    stream_id: i64,
    offset: i64,
    flags: i32,
    t: i64,
    fragment: Vec<FragmentType>,
) -> pb::FrameMessage {
    pb::FrameMessage {
        head: Some(head()),
        body: Some(Body::Packet(pb::PacketData {
            stream_id,
            stream_offset: offset,
            content: pb::PacketContent { fragment }.encode_to_vec().into(),
            flags,
            padding_size: 0,
            timepoint_microseconds: t,
        })),
    }
}

/// The vectors, by file name.
fn vectors() -> Vec<(&'static str, pb::FrameMessage)> {
    // A PMTU probe padded with 8 zero bytes (40 bytes on the wire), and its answer.
    let ping = pb::PingData {
        timepoint_microseconds: 1_000_000,
        pmtud_padding: Bytes::from_static(&[0; 8]),
        pmtud_received_size: 0,
    };
    let pong = pb::PingData {
        timepoint_microseconds: 1_000_000,
        pmtud_padding: Bytes::new(),
        pmtud_received_size: 40,
    };
    let labels: BTreeMap<String, String> = [("app", "demo"), ("zone", "eu-1")]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    vec![
        (
            "ping",
            pb::FrameMessage {
                head: Some(head()),
                body: Some(Body::Ping(ping)),
            },
        ),
        (
            "pong",
            pb::FrameMessage {
                head: Some(head()),
                body: Some(Body::Pong(pong)),
            },
        ),
        (
            "ack",
            pb::FrameMessage {
                head: Some(head()),
                body: Some(Body::Acknowledge(pb::AcknowledgeData {
                    acknowledge: Some(pb::StreamAcknowledge {
                        stream_id: 1,
                        acknowledge_offset: 18,
                        received_max_offset: 42,
                        received_ranges: Vec::new(),
                    }),
                    timepoint_microseconds: 1_000_500,
                    forward_for: None,
                })),
            },
        ),
        (
            "data_one_fragment",
            packet(
                1,
                0,
                0,
                1_000_500,
                vec![FragmentType {
                    packet_type: DATA,
                    data: Bytes::from_static(b"hello"),
                    ..Default::default()
                }],
            ),
        ),
        (
            "data_three_fragments",
            packet(
                1,
                0,
                0,
                1_001_000,
                vec![
                    FragmentType {
                        packet_type: DATA,
                        data: Bytes::from_static(b"hello "),
                        fragment_flag: HAS_MORE,
                        options: Some(pb::PacketOptions {
                            token: Bytes::from_static(b"secret-token"),
                        }),
                        labels,
                        ..Default::default()
                    },
                    FragmentType {
                        data: Bytes::from_static(b"world"),
                        ..Default::default()
                    },
                    FragmentType {
                        packet_type: 100,
                        data: Bytes::from_static(b"bye"),
                        ..Default::default()
                    },
                ],
            ),
        ),
        (
            "finish_stream",
            packet(
                1,
                16,
                pb::AtbusPacketFlagType::FinishStream as i32,
                1_002_000,
                vec![FragmentType {
                    packet_type: DATA,
                    close_reason: Some(pb::CloseReasonData {
                        code: pb::AtbusCloseReason::Shutdown as i32,
                        message: "done".into(),
                    }),
                    ..Default::default()
                }],
            ),
        ),
    ]
}

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/vectors")
}

#[test]
fn golden_vectors_are_reproduced_byte_for_byte() {
    let bless = std::env::var_os("ATBUS_BLESS_VECTORS").is_some();
    for (name, msg) in vectors() {
        let mut wire = BytesMut::new();
        encode_frame(&msg, &mut wire);
        let path = vector_dir().join(format!("{name}.bin"));
        if bless {
            std::fs::write(&path, &wire).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            wire[..],
            golden[..],
            "{name}.bin differs from the encoder's output"
        );

        let (decoded, used) = decode_frame(&Bytes::from(golden), &DecodeLimits::default()).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(decoded, msg, "{name}.bin decodes to something else");
    }
}

#[test]
fn golden_data_frames_are_what_the_splicer_writes() {
    for (name, msg) in vectors() {
        let Some(Body::Packet(packet)) = &msg.body else {
            continue;
        };
        let content = decode_content(packet.content.clone(), &DecodeLimits::default()).unwrap();
        let metas: Vec<Option<CachedMessageMeta>> = content
            .fragment
            .iter()
            .map(|f| {
                (f.packet_type != 0
                    || f.options.is_some()
                    || f.close_reason.is_some()
                    || !f.labels.is_empty())
                .then(|| CachedMessageMeta::new(f))
            })
            .collect();
        let specs: Vec<FragmentSpec> = content
            .fragment
            .iter()
            .zip(&metas)
            .map(|(f, meta)| FragmentSpec {
                meta: meta.as_ref(),
                data: &f.data,
                has_more: f.fragment_flag == HAS_MORE,
                packed: false,
            })
            .collect();
        let head = CachedHead::new(msg.head.as_ref().unwrap());
        let frame = DataFrame {
            head: &head,
            stream_id: packet.stream_id,
            stream_offset: packet.stream_offset,
            flags: packet.flags,
            padding_size: packet.padding_size,
            timepoint_microseconds: packet.timepoint_microseconds,
            content: Content::Fragments(&specs),
        };
        let mut spliced = BytesMut::new();
        frame.encode(&mut spliced);
        let golden = std::fs::read(vector_dir().join(format!("{name}.bin"))).unwrap();
        assert_eq!(spliced[..], golden[..], "{name}");
    }
}
