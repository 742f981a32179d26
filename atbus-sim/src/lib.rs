//! Deterministic, seeded, virtual-time network simulator for sans-IO transports.
//!
//! What exists so far is the network itself:
//! - [`Link`]: one direction of a path. It takes datagrams at virtual instants
//!   ([`Link::send`]) and hands them back at their arrival instants
//!   ([`Link::poll_delivery`]), after one-way delay, jitter, loss (independent or
//!   bursty Gilbert–Elliott), duplication, reordering, corruption, an MTU, a
//!   bandwidth-limited bottleneck with a bounded queue, and outage windows. It counts
//!   what it did in [`LinkStats`].
//! - [`LinkConfig`]: what a link does, validated once ([`LinkConfig::validate`]);
//!   it parses from and prints to the path SPEC syntax of the CLI's `--path`
//!   (`delay=30ms,jitter=5ms,loss=2%,burst=3,bw=20mbit,down=2s-5s`, see [`spec`]).
//!
//! Time is a [`std::time::Duration`] since the simulation start, always given by the
//! caller: nothing here reads a clock, sleeps or spawns a thread. All randomness comes
//! from a ChaCha8 generator seeded by the caller, so the same config, seed and
//! sequence of calls give the same results.
//!
//! To come: the transport trait through which any sans-IO transport (atbus, the `kcp`
//! crate, `quinn-proto`) is driven, and the simulator driver that runs two endpoints
//! over a pair of links and reports per-message latency.
#![forbid(unsafe_code)]

mod bottleneck;
mod config;
mod link;
mod loss;
pub mod spec;

pub use config::{ConfigError, DEFAULT_DELAY, DEFAULT_MTU, DEFAULT_QUEUE_BYTES, LinkConfig};
pub use link::{DropReason, Fate, Link, LinkStats};
pub use spec::SpecError;
