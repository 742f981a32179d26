//! atbus on the smol runtime (async-io / async-net): the same API as `atbus-tokio`.
//!
//! Status: not implemented yet; it arrives with the issue "Runtime adapters (tokio,
//! smol) and the atbus command-line tool".
