//! The runtime-independent part of the atbus adapters.
//!
//! `atbus-tokio` and `atbus-smol` expose the same [`Node`]; everything but the
//! sockets, timers and spawning is here, written once:
//! - [`address`]: transport URLs (`udp://`, `tcp://`, `unix://`, `unixgram://`,
//!   `shm://`);
//! - [`config`]: [`NodeConfig`] (name, listen addresses, endpoint limits, scheduler,
//!   I/O options);
//! - the driver: the node's I/O task, which owns the sans-IO
//!   [`Endpoint`](atbus_core::Endpoint), maps its connections to sockets (one
//!   listening UDP socket serves many remotes: a datagram from an unknown remote
//!   opens a new accepted connection, up to a cap), hands each received batch to
//!   the core before it polls the transmits, and re-dials dropped paths;
//! - [`node`]: the application's handle ([`Node`]): connect, send with backpressure
//!   from the core's window, receive events, stats, close;
//! - [`runtime`]: the small [`Runtime`] trait an adapter implements;
//! - `shm`: the `shm://name` transport (rings of `atbus-shm`, served by threads);
//! - [`udp`]: batched UDP system calls (`recvmmsg`, GRO, GSO) through `quinn-udp`;
//! - [`histogram`]: message-latency buckets used by the tools.
#![forbid(unsafe_code)]

pub mod address;
mod budget;
pub mod config;
mod driver;
pub mod histogram;
pub mod node;
#[cfg(feature = "otel")]
pub mod otel;
pub mod runtime;
mod shm;
mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod udp;

pub use address::{Address, AddressError};
pub use atbus_core::{
    CloseCode, CloseReason, CommandId, ConnectionId, ConnectionInfo, EndpointConfig, Event, PeerId,
    ReceivedMessage, SendError, SendOptions,
};
pub use atbus_core::{Scheduler, UnknownScheduler};
pub use config::{DEFAULT_ROUTE_MTU_CAP, NodeConfig, UDP_INITIAL_MTU, UdpPmtudCeiling};
pub use node::{Node, NodeError, NodeStats, PathStats};
pub use runtime::Runtime;
