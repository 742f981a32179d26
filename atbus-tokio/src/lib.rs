//! atbus on the tokio runtime: UDP, TCP, Unix sockets and shared memory.
//!
//! Status: not implemented yet; it arrives with the issue "Runtime adapters (tokio,
//! smol) and the atbus command-line tool".
