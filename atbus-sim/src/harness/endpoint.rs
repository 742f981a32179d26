//! One side of a run: a transport and the application's messages it refused.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::transport::Transport;

/// A transport, with the messages its application could not hand over yet.
#[derive(Debug)]
pub(crate) struct Endpoint<T> {
    pub(crate) transport: T,
    /// Per stream, oldest first, the messages the transport refused with
    /// [`WouldBlock`](crate::transport::WouldBlock) and the ones queued behind them.
    /// A stream is present only while it has one; while it does, nothing newer on
    /// that stream is offered, so each stream keeps its order.
    blocked: BTreeMap<u32, VecDeque<Bytes>>,
}

impl<T: Transport> Endpoint<T> {
    pub(crate) fn new(transport: T) -> Self {
        Self {
            transport,
            blocked: BTreeMap::new(),
        }
    }

    /// The application sends `payload` on `stream`: now if the stream has nothing
    /// blocked and the transport takes it, otherwise later by [`Self::retry`].
    pub(crate) fn submit(&mut self, now: Duration, stream: u32, payload: Bytes) {
        if let Some(queue) = self.blocked.get_mut(&stream) {
            queue.push_back(payload);
        } else if self.transport.send(now, stream, payload.clone()).is_err() {
            self.blocked.insert(stream, VecDeque::from([payload]));
        }
    }

    /// Offers the blocked messages again: stream by stream in stream order, each
    /// oldest first until the transport refuses one.
    pub(crate) fn retry(&mut self, now: Duration) {
        let transport = &mut self.transport;
        self.blocked.retain(|&stream, queue| {
            while let Some(payload) = queue.front() {
                if transport.send(now, stream, payload.clone()).is_err() {
                    return true;
                }
                queue.pop_front();
            }
            false
        });
    }
}
