//! Benchmarks of atbus: criterion micro-benches (in `benches/`) and, later, the
//! side-by-side comparisons with KCP, quinn and raw sockets.
//!
//! Run them with `cargo bench -p atbus-benches`; results are recorded in
//! `docs/benchmarks.md` with the command that produced them.
