//! proptest strategies for the protocol's messages, shared by the test files.
#![allow(dead_code)]

use std::collections::BTreeMap;

use atbus_proto::pb::{self, frame_message::Body, packet_content::FragmentType};
use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

pub fn text() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,12}"
}

pub fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

pub fn head() -> impl Strategy<Value = pb::MessageHead> {
    (text(), text(), text(), any::<i64>()).prop_map(
        |(source, destination, forward_for_source, id)| pb::MessageHead {
            source,
            destination,
            forward_for_source,
            forward_for_connection_id: id,
        },
    )
}

pub fn forward() -> impl Strategy<Value = pb::ForwardData> {
    (
        any::<i32>(),
        text(),
        text(),
        text(),
        any::<i32>(),
        any::<i64>(),
        labels(),
    )
        .prop_map(
            |(version, source, scheme, address, port, connection_id, attributes)| pb::ForwardData {
                version,
                source,
                scheme,
                address,
                port,
                connection_id,
                attributes,
            },
        )
}

pub fn close_reason() -> impl Strategy<Value = pb::CloseReasonData> {
    (0..5i32, text()).prop_map(|(code, message)| pb::CloseReasonData { code, message })
}

pub fn ping() -> impl Strategy<Value = pb::PingData> {
    (any::<i64>(), bytes(64), any::<i32>()).prop_map(|(t, padding, size)| pb::PingData {
        timepoint_microseconds: t,
        pmtud_padding: padding,
        pmtud_received_size: size,
    })
}

/// Fragment metadata only (what `CachedMessageMeta` caches).
pub fn fragment_meta() -> impl Strategy<Value = FragmentType> {
    (
        prop_oneof![Just(0i32), Just(1), Just(2), 100..200i32, any::<i32>()],
        proptest::option::of(bytes(16).prop_map(|token| pb::PacketOptions { token })),
        labels(),
        proptest::option::of(forward()),
        proptest::option::of(close_reason()),
    )
        .prop_map(
            |(packet_type, options, labels, forward_for, close_reason)| FragmentType {
                packet_type,
                data: Bytes::new(),
                fragment_flag: 0,
                options,
                labels,
                forward_for,
                close_reason,
            },
        )
}

pub fn fragment() -> impl Strategy<Value = FragmentType> {
    (fragment_meta(), bytes(300), 0..2i32).prop_map(|(mut f, data, flag)| {
        f.data = data;
        f.fragment_flag = flag;
        f
    })
}

pub fn content() -> impl Strategy<Value = pb::PacketContent> {
    vec(fragment(), 0..5).prop_map(|fragment| pb::PacketContent { fragment })
}

pub fn packet() -> impl Strategy<Value = pb::PacketData> {
    (
        any::<i64>(),
        any::<i64>(),
        bytes(400),
        any::<i32>(),
        any::<i32>(),
        any::<i64>(),
    )
        .prop_map(
            |(stream_id, stream_offset, content, flags, padding_size, t)| pb::PacketData {
                stream_id,
                stream_offset,
                content,
                flags,
                padding_size,
                timepoint_microseconds: t,
            },
        )
}

pub fn ack() -> impl Strategy<Value = pb::AcknowledgeData> {
    (
        proptest::option::of(
            (
                any::<i64>(),
                any::<i64>(),
                any::<i64>(),
                proptest::collection::vec(any::<i64>(), 0..8),
            )
                .prop_map(|(s, a, r, ranges)| pb::StreamAcknowledge {
                    stream_id: s,
                    acknowledge_offset: a,
                    received_max_offset: r,
                    received_ranges: ranges,
                }),
        ),
        any::<i64>(),
        proptest::option::of(forward()),
    )
        .prop_map(|(acknowledge, t, forward_for)| pb::AcknowledgeData {
            acknowledge,
            timepoint_microseconds: t,
            forward_for,
        })
}

pub fn frame() -> impl Strategy<Value = pb::FrameMessage> {
    (
        proptest::option::of(head()),
        proptest::option::of(prop_oneof![
            ping().prop_map(Body::Ping),
            ping().prop_map(Body::Pong),
            packet().prop_map(Body::Packet),
            ack().prop_map(Body::Acknowledge),
        ]),
    )
        .prop_map(|(head, body)| pb::FrameMessage { head, body })
}
