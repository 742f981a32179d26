//! Deterministic, seeded, virtual-time network simulator for sans-IO transports.
//!
//! Status: not implemented yet; it arrives with the issue "atbus-core: reliable
//! streams over a connection, and the deterministic simulator".
#![forbid(unsafe_code)]
