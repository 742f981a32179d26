//! The sans-IO atbus protocol core.
//!
//! The core is the endpoint state machine of `DESIGN.md` ("The core's contract"):
//! peers, connections, streams, reliability, scheduling, congestion control, PMTUD and
//! statistics, driven by datagrams and timestamps and drained of transmits, events and
//! the next deadline. It never reads a clock, touches a socket or spawns a thread, and
//! draws randomness only from a seed in its configuration, so the same inputs give the
//! same outputs byte for byte.
//!
//! Status: the building blocks exist — [`time`] (caller-provided timestamps),
//! [`timer`] (deadlines that scale with idle connections), [`connection::rtt`] (RTT
//! estimation and the 1.2 × RTT retransmission timeout) and [`stream`] (the send
//! buffer with acknowledged and lost ranges, and offset reassembly); the `Endpoint` that ties them together arrives with the issue
//! "atbus-core: reliable streams over a connection". The wire format is in
//! `atbus-proto`.
#![forbid(unsafe_code)]

pub mod connection;
pub mod stream;
pub mod time;
pub mod timer;
