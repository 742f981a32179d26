//! The handshake on the control stream (`-1`): hello, accept, reject, and the
//! application's authenticator hook.
//!
//! The initiator's first control message is a hello (`packet_type = HANDSHAKE`,
//! payload `handshake_data{kind = HELLO}`, labels and token on the fragment). The
//! acceptor asks its [`Authenticator`]; it answers `ACCEPT` with its own identity, or
//! `REJECT` with `close_reason = UNAUTHORIZED` and closes the connection. Data the
//! initiator sends right after its hello is buffered by the acceptor (bounded by
//! [`EndpointConfig::early_data_limit`](crate::EndpointConfig::early_data_limit)) and
//! delivered once the hello is accepted.

use std::collections::BTreeMap;

use atbus_proto::pb;
use bytes::Bytes;
use prost::Message as _;

use crate::event::ConnectionId;

/// What a peer presents in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The peer's node name.
    pub node_name: String,
    /// The peer's incarnation.
    pub session_id: u64,
    /// The protocol version the peer speaks.
    pub protocol_version: i32,
    /// The peer's token.
    pub token: Bytes,
    /// The peer's labels.
    pub labels: BTreeMap<String, String>,
    /// Handshake options.
    pub options: BTreeMap<String, String>,
}

/// The authenticator's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Accept the connection.
    Accept,
    /// Refuse it; the message goes to the peer with `UNAUTHORIZED`.
    Reject(String),
    /// Decide later: the endpoint raises
    /// [`Event::HelloReceived`](crate::Event::HelloReceived) and buffers early data
    /// until [`Endpoint::accept_hello`](crate::Endpoint::accept_hello) or
    /// [`Endpoint::reject_hello`](crate::Endpoint::reject_hello).
    Defer,
}

/// Decides whether a hello is accepted. Called synchronously inside the endpoint; an
/// authenticator that needs I/O answers [`AuthDecision::Defer`].
pub trait Authenticator: Send {
    /// Judges `hello`, received on `connection`.
    fn authenticate(&mut self, connection: ConnectionId, hello: &Hello) -> AuthDecision;
}

/// Accepts every hello (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Authenticator for AcceptAll {
    fn authenticate(&mut self, _: ConnectionId, _: &Hello) -> AuthDecision {
        AuthDecision::Accept
    }
}

/// Accepts a hello whose token is one of a fixed set.
#[derive(Debug, Clone, Default)]
pub struct TokenAuthenticator {
    tokens: Vec<Bytes>,
}

impl TokenAuthenticator {
    /// Accepts exactly these tokens.
    pub fn new(tokens: impl IntoIterator<Item = Bytes>) -> Self {
        TokenAuthenticator {
            tokens: tokens.into_iter().collect(),
        }
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&mut self, _: ConnectionId, hello: &Hello) -> AuthDecision {
        if self.tokens.contains(&hello.token) {
            AuthDecision::Accept
        } else {
            AuthDecision::Reject("invalid token".into())
        }
    }
}

/// The handshake option a node sets (to `"1"`) in its hello or accept when it
/// takes packed fragments (docs/protocol.md, "Packed fragments"); packed fragments
/// are sent on a connection only when both handshake messages carry it, so a peer
/// that does not know them never gets one.
pub const OPTION_PACKED_FRAGMENTS: &str = "packed_fragments";

/// The options a handshake message carries: packed fragments offered or not.
pub(crate) fn handshake_options(pack: bool) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    if pack {
        options.insert(OPTION_PACKED_FRAGMENTS.to_owned(), "1".to_owned());
    }
    options
}

/// Whether handshake `options` offer packed fragments.
pub(crate) fn offers_packed(options: &BTreeMap<String, String>) -> bool {
    options
        .get(OPTION_PACKED_FRAGMENTS)
        .is_some_and(|v| v == "1")
}

/// Kinds of handshake message.
pub(crate) use pb::handshake_data::KindType as HandshakeKind;

/// Encodes a `handshake_data` payload.
pub(crate) fn encode_handshake(
    kind: HandshakeKind,
    node_name: &str,
    session_id: u64,
    connection_nonce: u64,
    association: (u64, u64),
    options: &BTreeMap<String, String>,
) -> Bytes {
    pb::HandshakeData {
        kind: kind as i32,
        node_name: node_name.to_owned(),
        session_id,
        protocol_version: atbus_proto::PROTOCOL_VERSION as i32,
        options: options.clone(),
        connection_nonce,
        association_session: association.0,
        association_id: association.1,
    }
    .encode_to_vec()
    .into()
}

/// Decodes a `handshake_data` payload.
pub(crate) fn decode_handshake(payload: &[u8]) -> Option<pb::HandshakeData> {
    pb::HandshakeData::decode(payload).ok()
}

/// Encodes a `command_data` payload.
pub(crate) fn encode_command(id: i32, payload: &Bytes) -> Bytes {
    pb::CommandData {
        command_id: id,
        payload: payload.clone(),
    }
    .encode_to_vec()
    .into()
}

/// Decodes a `command_data` payload.
pub(crate) fn decode_command(payload: Bytes) -> Option<pb::CommandData> {
    pb::CommandData::decode(payload).ok()
}
