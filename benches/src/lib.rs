//! Benchmarks of atbus: criterion micro-benches (in `benches/`) and the side-by-side
//! comparisons with its peers in the simulator.
//!
//! - [`kcp`]: the `kcp` crate (turbo mode) as an [`atbus_sim::Transport`];
//! - [`quinn`]: `quinn-proto` (QUIC, real TLS through rustls) as one;
//! - [`compare`]: runs one scenario with atbus, KCP or quinn ([`compare::Peer`]) and
//!   collects every message's latency ([`compare::Observed`]);
//! - [`plot`]: draws the latency distributions of a comparison as an SVG.
//!
//! The `netsim-compare` binary puts them behind the flags of `atbus sim`. On real
//! loopback sockets, `loopback-quinn` (quinn's bulk transfer, encrypted) and
//! `loopback-raw` (raw TCP / Unix / UDP baselines) are run next to `atbus bench` by
//! `benches/loopback-compare.sh`. Run the
//! micro-benches with `cargo bench -p atbus-benches`; results are recorded in
//! `docs/benchmarks.md` and `docs/comparison.md` with the command that produced them.

pub mod compare;
pub mod kcp;
pub mod plot;
pub mod quinn;
