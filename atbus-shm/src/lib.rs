//! A crash-safe shared-memory ring channel (many writers, one reader) between
//! processes.
//!
//! Status: not implemented yet; it arrives with the issue "atbus-shm: crash-safe
//! shared-memory ring channel".
