//! The sans-IO atbus protocol core.
//!
//! This crate will hold the endpoint state machine of `DESIGN.md` ("The core's
//! contract"): peers, connections, streams, reliability, scheduling, congestion
//! control, PMTUD and statistics, driven by datagrams and timestamps and drained of
//! transmits, events and the next deadline. It never reads a clock, touches a socket
//! or spawns a thread.
//!
//! Status: not implemented yet; it arrives with the issue "atbus-core: reliable
//! streams over a connection". The wire format it builds on is in `atbus-proto`.
#![forbid(unsafe_code)]
