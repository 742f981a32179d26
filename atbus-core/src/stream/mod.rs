//! Streams: the per-direction state of one ordered message flow.
//!
//! Each direction of a stream has one offset space (`DESIGN.md`, "Stream offsets").
//! The send side queues messages and tracks acknowledged and lost ranges in a
//! [`SendBuffer`]; the receive side merges fragments by offset in an [`Assembler`].

pub mod assembler;
pub mod send;

pub use assembler::{
    AssembledMessage, Assembler, AssemblerStats, FinishError, InsertOutcome, ResetError,
    ResetOutcome,
};
pub use send::{AckOutcome, Expired, Pending, PushError, QueuedMessage, SendBuffer};
