//! A crash-safe shared-memory ring channel between processes: many writers, one
//! reader.
//!
//! A channel is a file under `/dev/shm` ([`mapping`]) holding a header and a ring
//! of records ([`layout`]). Writers claim space with a compare-and-swap on the
//! tail, write, and commit; the reader delivers committed records in claim order
//! and clears them (the private `ring` module documents the protocol). Records never wrap: a
//! padding record fills the end of the ring.
//!
//! Crash safety:
//! - a writer killed mid-record blocks the reader for at most the skip timeout
//!   (twice that if it died between claiming and stamping its record); the torn
//!   record is skipped and counted in [`ChannelStats`];
//! - a reader killed and restarted resumes at the first unconsumed record: a
//!   committed message is never lost, and it is delivered again only if the
//!   reader died before dropping its [`Received`] guard.
//!
//! One hazard is inherent in skipping after a timeout: a *live* writer paused
//! longer than the skip timeout between claiming and committing (stopped with
//! `SIGSTOP`, in a debugger, swapped out) is skipped, gets
//! [`SendError::Expired`], and may in the meantime have written payload bytes
//! into space the ring has reused. Choose the timeout well above any pause a
//! healthy writer can take.
//!
//! `docs/shm.md` in the repository describes the layout, the protocol, the exact
//! guarantees and the measured cost.
//!
//! ```no_run
//! use std::time::Duration;
//! use atbus_shm::{Layout, Reader, ReaderConfig, Writer};
//!
//! let mut reader = Reader::create("atbus-example", Layout::default(), ReaderConfig::default())?;
//! let mut writer = Writer::open("atbus-example")?;
//! writer.try_send(b"hello")?;
//! if let Some(message) = reader.recv_timeout(Duration::from_secs(1))? {
//!     assert_eq!(&*message, b"hello");
//! } // dropping the guard consumes the message
//! atbus_shm::remove("atbus-example")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// Under loom only the protocol is compiled; the mapping-side helpers go unused.
#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(loom))]
mod channel;
pub mod error;
pub mod layout;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(not(loom))]
pub mod mapping;
#[cfg(test)]
mod model;
mod ring;
mod sync;

#[cfg(not(loom))]
pub use channel::{
    AbandonAt, ChannelStats, Reader, ReaderConfig, Received, WaitStrategy, Writer, clock_ms,
    remove, remove_force,
};
pub use error::{OpenError, RecvError, SendError};
pub use layout::Layout;
