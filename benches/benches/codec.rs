//! Encode and decode of an ACK frame and of a 1200-byte data frame.
//!
//! `cargo bench -p atbus-benches --bench codec`

use atbus_proto::pb::{self, frame_message::Body};
use atbus_proto::{
    CachedHead, CachedMessageMeta, Content, DataFrame, DecodeLimits, FragmentSpec, decode_content,
    decode_frame, encode_frame,
};
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn head() -> pb::MessageHead {
    pb::MessageHead {
        source: "gamesvr-1".into(),
        destination: "router-7".into(),
        ..Default::default()
    }
}

fn ack_frame() -> pb::FrameMessage {
    pb::FrameMessage {
        head: Some(head()),
        body: Some(Body::Acknowledge(pb::AcknowledgeData {
            acknowledge: Some(pb::StreamAcknowledge {
                stream_id: 1,
                acknowledge_offset: 1_234_567,
                received_max_offset: 1_240_000,
                received_ranges: Vec::new(),
            }),
            timepoint_microseconds: 987_654_321,
            forward_for: None,
        })),
    }
}

fn codec(c: &mut Criterion) {
    let limits = DecodeLimits::default();

    let ack = ack_frame();
    let mut ack_wire = BytesMut::new();
    encode_frame(&ack, &mut ack_wire);
    let ack_wire = ack_wire.freeze();
    let mut group = c.benchmark_group("ack_frame");
    group.throughput(Throughput::Bytes(ack_wire.len() as u64));
    let mut buf = BytesMut::with_capacity(4096);
    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(&ack), &mut buf);
            black_box(buf.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| decode_frame(black_box(&ack_wire), &limits).map(|(m, _)| m))
    });
    group.finish();

    // A 1200-byte datagram: one data packet filled with one fragment of a message.
    let cached_head = CachedHead::new(&head());
    let meta = CachedMessageMeta::of_type(pb::AtbusPacketType::Data as i32);
    let payload = Bytes::from(vec![0x5a; 4096]);
    let frame_for = |len: usize| {
        let fragments = [FragmentSpec {
            meta: Some(&meta),
            data: &payload[..len],
            has_more: true,
            packed: false,
        }];
        DataFrame {
            head: &cached_head,
            stream_id: 1,
            stream_offset: 1 << 20,
            flags: 0,
            padding_size: 0,
            timepoint_microseconds: 987_654_321,
            content: Content::Fragments(&fragments),
        }
        .encoded_len()
    };
    let data_len = (1..1200)
        .rev()
        .find(|&len| frame_for(len) <= 1200)
        .unwrap_or(0);
    let fragments = [FragmentSpec {
        meta: Some(&meta),
        data: &payload[..data_len],
        has_more: true,
        packed: false,
    }];
    let frame = DataFrame {
        head: &cached_head,
        stream_id: 1,
        stream_offset: 1 << 20,
        flags: 0,
        padding_size: 0,
        timepoint_microseconds: 987_654_321,
        content: Content::Fragments(&fragments),
    };
    let mut data_wire = BytesMut::new();
    frame.encode(&mut data_wire);
    let data_wire = data_wire.freeze();
    assert_eq!(data_wire.len(), 1200);

    let mut group = c.benchmark_group("data_frame_1200");
    group.throughput(Throughput::Bytes(data_wire.len() as u64));
    group.bench_function("encode_spliced", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&frame).encode(&mut buf);
            black_box(buf.len())
        })
    });
    let (prost_frame, _) = decode_frame(&data_wire, &limits).expect("valid frame");
    group.bench_function("encode_prost", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(&prost_frame), &mut buf);
            black_box(buf.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let (msg, _) = decode_frame(black_box(&data_wire), &limits).expect("valid frame");
            match msg.body {
                Some(Body::Packet(packet)) => decode_content(packet.content, &limits).ok(),
                _ => None,
            }
        })
    });
    group.finish();

    // The same datagram size for the first fragment of a message with labels and a
    // token: the splicer reuses the cached metadata, prost re-encodes it every time.
    let template = pb::packet_content::FragmentType {
        packet_type: 100,
        options: Some(pb::PacketOptions {
            token: Bytes::from_static(b"0123456789abcdef"),
        }),
        labels: [
            ("app", "battle"),
            ("region", "eu-west-1"),
            ("shard", "42"),
            ("zone", "b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Default::default()
    };
    let meta = CachedMessageMeta::new(&template);
    let room = 1200 - frame_for(0) - meta.encoded_len();
    let data_len = (1..room).rev().find(|&len| {
        let fragments = [FragmentSpec {
            meta: Some(&meta),
            data: &payload[..len],
            has_more: true,
            packed: false,
        }];
        DataFrame {
            content: Content::Fragments(&fragments),
            ..frame
        }
        .encoded_len()
            <= 1200
    });
    let data_len = data_len.unwrap_or(0);
    let fragments = [FragmentSpec {
        meta: Some(&meta),
        data: &payload[..data_len],
        has_more: true,
        packed: false,
    }];
    let labelled = DataFrame {
        content: Content::Fragments(&fragments),
        ..frame
    };
    let mut group = c.benchmark_group("data_frame_1200_labelled");
    group.throughput(Throughput::Bytes(labelled.encoded_len() as u64));
    group.bench_function("encode_spliced", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&labelled).encode(&mut buf);
            black_box(buf.len())
        })
    });
    let mut fragment = template.clone();
    fragment.data = payload.slice(..data_len);
    fragment.fragment_flag = 1;
    let content = pb::PacketContent {
        fragment: vec![fragment],
    };
    let mut msg = pb::FrameMessage {
        head: Some(head()),
        body: Some(Body::Packet(pb::PacketData {
            stream_id: 1,
            stream_offset: 1 << 20,
            content: Bytes::new(),
            flags: 0,
            padding_size: 0,
            timepoint_microseconds: 987_654_321,
        })),
    };
    group.bench_function("encode_prost", |b| {
        b.iter(|| {
            // What a sender without the cache does per datagram: encode the content
            // (labels and token included), then the frame around it.
            let encoded = prost::Message::encode_to_vec(black_box(&content));
            if let Some(Body::Packet(packet)) = &mut msg.body {
                packet.content = encoded.into();
            }
            buf.clear();
            encode_frame(&msg, &mut buf);
            black_box(buf.len())
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
