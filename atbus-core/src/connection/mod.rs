//! Connections (paths) to a peer: RTT, in-flight ranges, MTU, congestion state and
//! statistics. A connection owns no stream data; it only knows which stream ranges it
//! has carried.

pub mod rtt;
