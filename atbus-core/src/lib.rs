//! The sans-IO atbus protocol core.
//!
//! The core is the endpoint state machine of `DESIGN.md` ("The core's contract"):
//! peers, connections, streams, reliability and congestion control, driven by
//! datagrams and timestamps and drained of transmits, events and the next deadline.
//! It never reads a clock, touches a socket or spawns a thread, and draws no
//! randomness, so the same inputs give the same outputs byte for byte.
//!
//! Where each concern lives:
//! - [`endpoint`]: the [`Endpoint`], its inputs ([`Input`], application calls) and
//!   its single output path ([`Endpoint::poll_output`]); the receive path and the
//!   packetizer are its submodules;
//! - [`handshake`]: hello / accept / reject on the control stream, the
//!   [`Authenticator`] hook;
//! - [`connection`]: per-path state: [`connection::rtt`] (RTT, the 1.2 × RTT
//!   retransmission timeout), [`connection::recovery`] (in-flight ranges, loss
//!   detection), [`connection::congestion`] (the congestion window);
//! - [`stream`]: per-stream state: the send buffer and the offset reassembler;
//! - [`time`] and [`timer`]: caller-provided timestamps and deadlines that scale
//!   with idle connections;
//! - [`config`] and [`event`]: what goes in and what comes out.
//!
//! The wire format is in `atbus-proto`.
#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod endpoint;
pub mod event;
pub mod handshake;
mod peer;
pub mod stats;
pub mod stream;
pub mod time;
pub mod timer;

pub use config::{ConnectionKind, EndpointConfig, Scheduler, UnknownScheduler};
pub use connection::congestion::CongestionAlgorithm;
pub use connection::{ConnectionInfo, ConnectionState, ConnectionStats, Role};
pub use endpoint::{
    DeliveryBudget, Endpoint, EndpointStats, Input, PeerInfo, SendError, SendOptions,
};
pub use event::{
    CloseCode, CloseReason, Command, CommandId, ConnectionId, Event, Output, PeerId,
    ReceivedMessage, Transmit,
};
pub use handshake::{
    AcceptAll, AuthDecision, Authenticator, Hello, OPTION_PACKED_FRAGMENTS, TokenAuthenticator,
};
pub use time::Timestamp;
