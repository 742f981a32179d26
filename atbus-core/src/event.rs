//! What an [`Endpoint`](crate::Endpoint) hands back: transmits, events, deadlines.

use std::collections::BTreeMap;
use std::fmt;

use atbus_proto::pb;
use bytes::Bytes;

use crate::handshake::Hello;
use crate::time::Timestamp;

/// Identifies a connection within one endpoint; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

/// Identifies a peer within one endpoint; never reused (a restarted peer gets a new
/// id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// One output of the endpoint; see [`Endpoint::poll_output`](crate::Endpoint::poll_output).
#[derive(Debug)]
pub enum Output {
    /// Bytes to send on a connection: one datagram, or bytes to append to a stream.
    Transmit(Transmit),
    /// Something the application should know.
    Event(Event),
    /// Nothing more to do now; call [`Endpoint::handle_timeout`](crate::Endpoint::handle_timeout)
    /// at this instant ([`Timestamp::NEVER`] when nothing is scheduled).
    Timeout(Timestamp),
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The connection to send on.
    pub connection: ConnectionId,
    /// A whole datagram (datagram connections) or the next bytes of the stream.
    pub data: Bytes,
}

/// Why a connection or a stream ended (`close_reason_data` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The reason code.
    pub code: CloseCode,
    /// A human-readable explanation.
    pub message: String,
}

impl CloseReason {
    /// A reason with this code and message.
    pub fn new(code: CloseCode, message: impl Into<String>) -> Self {
        CloseReason {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn to_pb(&self) -> pb::CloseReasonData {
        pb::CloseReasonData {
            code: self.code.to_pb() as i32,
            message: self.message.clone(),
        }
    }

    pub(crate) fn from_pb(data: &pb::CloseReasonData) -> Self {
        CloseReason {
            code: CloseCode::from_pb(data.code),
            message: data.message.clone(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{:?}", self.code)
        } else {
            write!(f, "{:?}: {}", self.code, self.message)
        }
    }
}

/// `ATBUS_CLOSE_REASON` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// No reason given (or a code this version does not know).
    Unknown,
    /// Orderly shutdown.
    Shutdown,
    /// The peer stopped answering, restarted, or broke the protocol.
    PeerReset,
    /// The handshake was refused.
    Unauthorized,
    /// No route to the destination.
    RouterNotFound,
}

impl CloseCode {
    pub(crate) fn to_pb(self) -> pb::AtbusCloseReason {
        match self {
            CloseCode::Unknown => pb::AtbusCloseReason::Unknown,
            CloseCode::Shutdown => pb::AtbusCloseReason::Shutdown,
            CloseCode::PeerReset => pb::AtbusCloseReason::PeerReset,
            CloseCode::Unauthorized => pb::AtbusCloseReason::Unauthorized,
            CloseCode::RouterNotFound => pb::AtbusCloseReason::RouterNotFound,
        }
    }

    pub(crate) fn from_pb(code: i32) -> Self {
        match pb::AtbusCloseReason::try_from(code) {
            Ok(pb::AtbusCloseReason::Shutdown) => CloseCode::Shutdown,
            Ok(pb::AtbusCloseReason::PeerReset) => CloseCode::PeerReset,
            Ok(pb::AtbusCloseReason::Unauthorized) => CloseCode::Unauthorized,
            Ok(pb::AtbusCloseReason::RouterNotFound) => CloseCode::RouterNotFound,
            _ => CloseCode::Unknown,
        }
    }
}

/// A command on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub id: CommandId,
    /// The command's argument.
    pub payload: Bytes,
}

/// Command identifiers: the two built-in ones and user-defined ids (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandId {
    /// Stop the node.
    Stop,
    /// Reload configuration.
    Reload,
    /// A user-defined command; the id is at least [`CommandId::FIRST_USER`].
    User(i32),
}

impl CommandId {
    /// The first user-defined command id.
    pub const FIRST_USER: i32 = 100;

    /// The wire value.
    pub fn to_wire(self) -> i32 {
        match self {
            CommandId::Stop => 1,
            CommandId::Reload => 2,
            CommandId::User(id) => id,
        }
    }

    /// The command for a wire value, if it is one.
    pub fn from_wire(id: i32) -> Option<Self> {
        match id {
            1 => Some(CommandId::Stop),
            2 => Some(CommandId::Reload),
            id if id >= Self::FIRST_USER => Some(CommandId::User(id)),
            _ => None,
        }
    }
}

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// `packet_type`: 0 (DATA) or a user type >= 100.
    pub packet_type: i32,
    /// The message's labels.
    pub labels: BTreeMap<String, String>,
    /// The message's token option (empty if none).
    pub token: Bytes,
    /// The payload; a slice of the received datagram when the message came in one
    /// fragment.
    pub payload: Bytes,
}

impl ReceivedMessage {
    /// A message of `packet_type` with no labels and no token.
    pub(crate) fn plain(packet_type: i32, payload: Bytes) -> Self {
        ReceivedMessage {
            packet_type,
            labels: BTreeMap::new(),
            token: Bytes::new(),
            payload,
        }
    }
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A hello awaits the application's decision (the authenticator deferred):
    /// answer with [`Endpoint::accept_hello`](crate::Endpoint::accept_hello) or
    /// [`Endpoint::reject_hello`](crate::Endpoint::reject_hello).
    HelloReceived {
        /// The connection the hello came on.
        connection: ConnectionId,
        /// What the peer presented.
        hello: Hello,
    },
    /// A handshake completed on a connection; the peer is usable.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// The connection the handshake completed on.
        connection: ConnectionId,
        /// The peer's node name.
        node_name: String,
        /// The peer's incarnation.
        session_id: u64,
        /// The peer's labels.
        labels: BTreeMap<String, String>,
        /// The same node was known with another session id: it restarted, and its
        /// streams start afresh (the old peer was reported lost).
        restarted: bool,
    },
    /// A connection ended.
    ConnectionClosed {
        /// The connection.
        connection: ConnectionId,
        /// Its peer, if the handshake had bound one.
        peer: Option<PeerId>,
        /// Why.
        reason: CloseReason,
        /// Whether the peer closed it (FINISH_CONNECTION or a reject) rather than this
        /// endpoint (idle timeout, local close, protocol error).
        by_peer: bool,
    },
    /// A peer's last connection closed. Its streams and queued messages stay for
    /// [`EndpointConfig::peer_linger`](crate::EndpointConfig::peer_linger), waiting
    /// for a new connection ([`Endpoint::add_connection`](crate::Endpoint::add_connection),
    /// or the peer's new hello); then it is lost.
    PeerUnreachable {
        /// The peer.
        peer: PeerId,
    },
    /// A peer's state is gone: it restarted, was forgotten, or stayed unreachable
    /// for the linger time.
    PeerLost {
        /// The peer.
        peer: PeerId,
        /// Messages queued to it that were never acknowledged and are dropped.
        unacknowledged_messages: u64,
    },
    /// A message arrived.
    Message {
        /// From whom.
        peer: PeerId,
        /// On which stream.
        stream: i64,
        /// The message.
        message: ReceivedMessage,
    },
    /// Several messages of one stream that arrived in order and were handed over
    /// together, in stream order: each a plain message (no labels, no token) of
    /// `packet_type`. Raised only when
    /// [`EndpointConfig::batch_events`](crate::EndpointConfig::batch_events) is on,
    /// for runs of at least two; it stands for one [`Event::Message`] per payload
    /// ([`Event::into_messages`] makes them).
    Messages {
        /// From whom.
        peer: PeerId,
        /// On which stream.
        stream: i64,
        /// `packet_type` of every message: 0 (DATA) or a user type >= 100.
        packet_type: i32,
        /// The payloads, in stream order.
        payloads: Vec<Bytes>,
    },
    /// The peer skipped part of a stream with RESET_OFFSET (messages that expired
    /// at the sender): raised whenever a reset jumps over anything.
    MessagesSkipped {
        /// From whom.
        peer: PeerId,
        /// On which stream.
        stream: i64,
        /// Messages this side knows it lost: those partly received and discarded,
        /// plus the message ending at the reset point when its end had not
        /// arrived. Other messages of which nothing had arrived are not known here;
        /// the sender reports every dropped message in [`Event::MessagesExpired`].
        messages: u64,
        /// Length of the span the reset settled, from the first offset missing here
        /// to the reset point (payload bytes plus one per message end). Complete
        /// messages inside it that had arrived are still delivered.
        offsets: u64,
    },
    /// Messages this endpoint queued passed their deadline unacknowledged and were
    /// dropped.
    MessagesExpired {
        /// To whom.
        peer: PeerId,
        /// On which stream.
        stream: i64,
        /// How many.
        messages: u64,
    },
    /// The peer finished a stream (FINISH_STREAM): every message before it was
    /// delivered; nothing more will arrive on it.
    StreamFinished {
        /// From whom.
        peer: PeerId,
        /// Which stream.
        stream: i64,
        /// The reason the peer gave.
        reason: CloseReason,
    },
    /// A stream that answered `WouldBlock` has room again.
    Writable {
        /// To whom.
        peer: PeerId,
        /// Which stream.
        stream: i64,
    },
    /// A command arrived on the control stream.
    Command {
        /// From whom.
        peer: PeerId,
        /// The command.
        command: Command,
    },
}

impl Event {
    /// How many messages the event delivers: 1 for [`Event::Message`], the number
    /// of payloads for [`Event::Messages`], 0 otherwise.
    pub fn message_count(&self) -> usize {
        match self {
            Event::Message { .. } => 1,
            Event::Messages { payloads, .. } => payloads.len(),
            _ => 0,
        }
    }

    /// The event as events of one message each: [`Event::Messages`] becomes one
    /// [`Event::Message`] per payload, in order; any other event is itself.
    pub fn into_messages(self) -> impl Iterator<Item = Event> {
        let (one, run) = match self {
            Event::Messages {
                peer,
                stream,
                packet_type,
                payloads,
            } => (None, Some((peer, stream, packet_type, payloads))),
            other => (Some(other), None),
        };
        let run = run
            .into_iter()
            .flat_map(|(peer, stream, packet_type, payloads)| {
                payloads.into_iter().map(move |payload| Event::Message {
                    peer,
                    stream,
                    message: ReceivedMessage::plain(packet_type, payload),
                })
            });
        one.into_iter().chain(run)
    }
}
