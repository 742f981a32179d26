//! Errors of creating, attaching, sending and receiving.

use std::io;

use crate::layout::Layout;

/// Creating, attaching to or removing a channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The channel name is not usable as a file name under `/dev/shm`.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The requested layout is out of bounds.
    #[error("invalid layout: {reason}")]
    InvalidLayout {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `create` found a channel of that name; it was left untouched.
    #[error("channel {name:?} already exists")]
    AlreadyExists {
        /// The channel name.
        name: String,
    },
    /// No channel of that name exists.
    #[error("channel {name:?} does not exist")]
    NotFound {
        /// The channel name.
        name: String,
    },
    /// The file exists but its creator never finished initialising it (it is
    /// still running, or died while creating it).
    #[error("channel {name:?} is not initialised")]
    NotInitialized {
        /// The channel name.
        name: String,
    },
    /// The file is not an atbus channel.
    #[error("channel {name:?} is not an atbus shm channel (magic {found:#018x})")]
    BadMagic {
        /// The channel name.
        name: String,
        /// The first word found.
        found: u64,
    },
    /// The channel was created by an incompatible version of this crate.
    #[error("channel {name:?} has layout version {found}, this build reads {expected}")]
    VersionMismatch {
        /// The channel name.
        name: String,
        /// The version in the header.
        found: u64,
        /// The version this build reads.
        expected: u64,
    },
    /// The channel exists with a different geometry than the caller asked for.
    #[error("channel {name:?} has layout {found:?}, expected {expected:?}")]
    LayoutMismatch {
        /// The channel name.
        name: String,
        /// The layout the caller asked for.
        expected: Layout,
        /// The layout in the header.
        found: Layout,
    },
    /// The header is inconsistent with itself or with the file size.
    #[error("channel {name:?} has a corrupt header: {reason}")]
    CorruptHeader {
        /// The channel name.
        name: String,
        /// What is inconsistent.
        reason: &'static str,
    },
    /// Another live reader holds the channel.
    #[error("channel {name:?} already has a reader")]
    ReaderAttached {
        /// The channel name.
        name: String,
    },
    /// `remove` refused: committed messages are still waiting for the reader.
    #[error("channel {name:?} still holds {pending} unconsumed bytes")]
    NotEmpty {
        /// The channel name.
        name: String,
        /// Bytes between the reader's head and the writers' tail.
        pending: u64,
    },
    /// A system call failed.
    #[error("{op} failed for channel {name:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The channel name.
        name: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Sending a message failed; the message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is longer than the channel's `max_message`.
    #[error("message of {len} bytes exceeds the channel's limit of {max}")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The channel's `max_message`.
        max: usize,
    },
    /// The ring has no room now (`try_send`); try again later.
    #[error("the ring is full")]
    Full,
    /// The ring stayed full until the deadline (`send_timeout`).
    #[error("the ring stayed full until the deadline")]
    Timeout,
    /// This writer took longer than the reader's skip timeout between claiming
    /// and committing, and the reader skipped the record: the message is lost.
    #[error("the reader skipped the record at position {position} as torn")]
    Expired {
        /// The record's position.
        position: u64,
    },
}

/// Receiving failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The record header at the reader's head is not one any writer writes; the
    /// ring was overwritten by something other than this protocol. The reader
    /// stays where it is.
    #[error("corrupt record header {word:#018x} at position {position}")]
    Corrupt {
        /// The reader's head.
        position: u64,
        /// The header word found.
        word: u64,
    },
}
