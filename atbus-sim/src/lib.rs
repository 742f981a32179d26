//! Deterministic, seeded, virtual-time network simulator for sans-IO transports.
//!
//! The network:
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
//! The endpoints and the harness:
//! - [`Transport`]: the trait through which any sans-IO transport (atbus, the `kcp`
//!   crate, `quinn-proto`) is driven; see [`transport`] for the driver's rules.
//! - [`Scenario`]: a run as data: the paths, the application's messages (count,
//!   sizes, pacing, streams, echo), the seed and a time limit. [`Workload`]
//!   generates its messages.
//! - [`run`]: plays a scenario between a client and a server transport over a pair
//!   of links per path, and returns a [`Report`]: messages delivered, duplicated,
//!   reordered, corrupted, latency percentiles exact in virtual time, wire bytes and
//!   per-path figures, printable as text or JSON.
//!
//! Time is a [`std::time::Duration`] since the simulation start, always given by the
//! caller: nothing here reads a clock, sleeps or spawns a thread. All randomness comes
//! from ChaCha8 generators derived from the caller's seed, so the same scenario and
//! transports give the same report.
#![forbid(unsafe_code)]

pub mod atbus;
mod bottleneck;
mod config;
pub mod flags;
pub mod flows;
mod harness;
mod link;
mod loss;
mod report;
pub mod spec;
pub mod transport;
mod workload;

pub use config::{ConfigError, DEFAULT_DELAY, DEFAULT_MTU, DEFAULT_QUEUE_BYTES, LinkConfig};
pub use flags::ScenarioFlags;
pub use harness::run;
pub use link::{DropReason, Fate, Link, LinkStats};
pub use report::{
    FlowReport, HistogramReport, LatencySummary, LinkFaults, PathReport, Report, StatsReport,
    TotalsReport, WindowReport,
};
pub use spec::SpecError;
pub use transport::{FlowStats, PathStats, Received, Transport, TransportStats, WouldBlock};
pub use workload::{
    DEFAULT_INTERVAL, DEFAULT_MESSAGE_SIZE, DEFAULT_MESSAGES, DEFAULT_TIME_LIMIT, ID_PREFIX_LEN,
    Scenario, ScenarioError, SizeRange, Workload,
};
