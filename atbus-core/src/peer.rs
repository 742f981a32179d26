//! A remote node as the endpoint sees it: identity, connections, streams.

use std::collections::{BTreeMap, VecDeque};

use crate::config::Scheduler;
use crate::event::ConnectionId;
use crate::stream::Stream;

/// Finished streams remembered per peer, so that late retransmissions of a finished
/// stream are acknowledged instead of opening it again.
pub(crate) const MAX_TOMBSTONES: usize = 65_536;

/// An association: the name and session of the node that numbered it, and the
/// number.
pub(crate) type Association = (String, u64, u64);

/// One peer.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// Node name and session id, once a handshake told them.
    pub identity: Option<(String, u64)>,
    /// The association this peer state is one side of: the node that numbered it
    /// (name, session) and its number (`handshake_data.association_*`).
    pub association: Association,
    pub labels: BTreeMap<String, String>,
    /// Connections bound to this peer, in the order they were added.
    pub connections: Vec<ConnectionId>,
    pub streams: BTreeMap<i64, Stream>,
    /// Finished and forgotten streams: id → final receive offset.
    pub tombstones: BTreeMap<i64, u64>,
    pub tombstone_order: VecDeque<i64>,
    /// Bytes held undelivered over all streams: payload plus bookkeeping (the
    /// assemblers' [`footprint`](crate::stream::Assembler::footprint)).
    pub recv_buffered: usize,
    /// The stream allowed past the receive limit, by at most one message, to
    /// complete the message it is assembling in order. One stream at a time, so
    /// that several half-received large messages cannot share the headroom and
    /// block each other forever.
    pub headroom: Option<i64>,
    /// Next stream a connection serves first (round robin).
    pub cursor: i64,
    /// Index into `connections` of the one whose turn it is to carry data (the
    /// round-robin scheduler).
    pub turn: usize,
    /// Datagrams with data the connection whose turn it is has sent in this turn
    /// (weighted round robin).
    pub turn_sent: u32,
    /// Streams whose data is spread by another scheduler than the endpoint's.
    pub schedulers: BTreeMap<i64, Scheduler>,
}

impl Peer {
    /// The scheduler of `stream`: its own, or the endpoint's `default`.
    pub fn scheduler(&self, stream: i64, default: Scheduler) -> Scheduler {
        self.schedulers.get(&stream).copied().unwrap_or(default)
    }

    /// `released` bytes left the receive buffers; the headroom is given back once
    /// the peer is within its limit again.
    pub fn release(&mut self, released: usize, limit: usize) {
        self.recv_buffered -= released.min(self.recv_buffered);
        if self.recv_buffered <= limit {
            self.headroom = None;
        }
    }

    pub fn bury(&mut self, stream: i64, final_offset: u64) {
        self.schedulers.remove(&stream);
        if self.tombstones.insert(stream, final_offset).is_none() {
            self.tombstone_order.push_back(stream);
        }
        while self.tombstone_order.len() > MAX_TOMBSTONES {
            if let Some(old) = self.tombstone_order.pop_front() {
                self.tombstones.remove(&old);
            }
        }
    }
}
