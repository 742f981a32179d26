//! The atomics the ring protocol uses, switched between `std` and `loom`.
//!
//! Under `--cfg loom` the protocol in [`crate::ring`] runs against loom's
//! model-checked atomics (see `loom_tests.rs`); otherwise it uses `std`'s.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
