//! Delivery held back for the application: a budget of payload bytes the endpoint
//! may turn into [`Event::Message`](crate::Event::Message)s. While it is spent,
//! complete messages stay in their streams' receive windows, which is what
//! flow-controls the peers (data past a full window is dropped and resent later),
//! while acknowledgements, handshakes and control traffic go on as usual.

use std::collections::{BTreeMap, BTreeSet};

use super::Endpoint;
use crate::event::{ConnectionId, PeerId};

/// How much the endpoint may still deliver (see
/// [`Endpoint::set_delivery_budget`]): spent when either reaches 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryBudget {
    /// Payload bytes of messages (an empty message counts one).
    pub bytes: usize,
    /// Messages.
    pub messages: usize,
}

impl DeliveryBudget {
    /// None at all: complete messages wait in their receive windows.
    pub const NONE: DeliveryBudget = DeliveryBudget {
        bytes: 0,
        messages: 0,
    };

    /// Whether nothing more may be delivered.
    pub fn is_spent(&self) -> bool {
        self.bytes == 0 || self.messages == 0
    }
}

/// The budget and what waits for it.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// What may still be delivered; `None`: no limit.
    remaining: Option<DeliveryBudget>,
    /// Streams whose complete messages wait for the budget, with the connection
    /// their last frame came on.
    held: BTreeMap<(PeerId, i64), ConnectionId>,
    /// The held stream served last: the next budget starts after it (round-robin),
    /// so that a stream with more waiting than a budget does not starve the others.
    last_served: Option<(PeerId, i64)>,
    /// Connections whose control stream holds a command for the budget.
    held_control: BTreeSet<ConnectionId>,
    /// Streams of connections on which a frame was dropped whole while delivery
    /// was held, and not acknowledged: an acknowledgement would have the sender of
    /// a reliable connection resend it at once, into the same full window, for as
    /// long as the application does not read. Acknowledged once the stream is
    /// delivered again, so that the sender resends it then.
    unacknowledged: BTreeSet<(ConnectionId, i64)>,
}

impl Delivery {
    /// Whether nothing more may be delivered.
    pub(super) fn spent(&self) -> bool {
        self.remaining.is_some_and(|r| r.is_spent())
    }

    /// What may still be delivered, as `(bytes, messages)`; `None`: no limit.
    pub(super) fn room(&self) -> Option<(usize, usize)> {
        self.remaining.map(|r| (r.bytes, r.messages))
    }

    /// Counts a delivered message.
    pub(super) fn charge(&mut self, payload: usize) {
        if let Some(r) = self.remaining.as_mut() {
            r.bytes = r.bytes.saturating_sub(payload.max(1));
            r.messages = r.messages.saturating_sub(1);
        }
    }

    /// Counts `messages` delivered messages of `payload` bytes together.
    pub(super) fn charge_many(&mut self, messages: usize, payload: usize) {
        if let Some(r) = self.remaining.as_mut() {
            r.bytes = r.bytes.saturating_sub(payload.max(messages));
            r.messages = r.messages.saturating_sub(messages);
        }
    }

    /// Remembers a stream whose delivery stopped at the spent budget.
    pub(super) fn hold(&mut self, peer: PeerId, stream: i64, connection: ConnectionId) {
        self.held.insert((peer, stream), connection);
    }

    /// Remembers a connection whose next control message is a command waiting for
    /// the budget.
    pub(super) fn hold_control(&mut self, connection: ConnectionId) {
        self.held_control.insert(connection);
    }

    /// Whether a command waits in `connection`'s control stream for the budget.
    pub(super) fn holds_control(&self, connection: ConnectionId) -> bool {
        self.held_control.contains(&connection)
    }

    /// Remembers a frame dropped whole while delivery was held; false (the frame
    /// is acknowledged as usual) while the budget is not spent.
    pub(super) fn withhold_ack(&mut self, connection: ConnectionId, stream: i64) -> bool {
        if self.spent() {
            self.unacknowledged.insert((connection, stream));
        }
        self.spent()
    }
}

impl Endpoint {
    /// Limits the messages (and their payload bytes) the endpoint hands out as
    /// events from now on (`None`, the default: no limit). An adapter sets it to
    /// the room left in the application's queue of events. Once it is spent, complete
    /// messages wait in their streams' receive windows (bounded by
    /// `stream_receive_window` and `peer_receive_limit`): the peers' data past a
    /// full window is dropped and resent once there is room again, so a sender's
    /// `send` waits for its window like for any slow receiver. Everything else
    /// (acknowledgements of what this endpoint sends, handshakes, pings, commands,
    /// connection events) goes on, except that commands
    /// ([`Event::Command`](crate::Event::Command)) wait in their connection's
    /// bounded control window too, and skips
    /// ([`Event::MessagesSkipped`](crate::Event::MessagesSkipped)) of a stream wait
    /// merged into one, after the stream's earlier messages: both count against
    /// the budget (a skip as one message of one byte, a command as its payload).
    /// Held streams get the budget in turn (round-robin). Setting a budget that is not spent delivers what
    /// waits, up to that budget, and acknowledges the frames dropped meanwhile so
    /// that their senders resend them. A message larger than what is left is still
    /// delivered whole: the budget may be passed by one message.
    pub fn set_delivery_budget(&mut self, budget: Option<DeliveryBudget>) {
        self.delivery.remaining = budget;
        if self.delivery.spent() {
            return;
        }
        for id in std::mem::take(&mut self.delivery.held_control) {
            // Holds it again if the budget is spent.
            self.deliver(id, None, -1);
        }
        // Round-robin: from the stream after the one served last.
        let held = std::mem::take(&mut self.delivery.held);
        let (before, after): (Vec<_>, Vec<_>) = held
            .into_iter()
            .partition(|(key, _)| self.delivery.last_served.is_some_and(|last| *key <= last));
        for ((peer, stream), id) in after.into_iter().chain(before) {
            if self.delivery.spent() {
                self.delivery.hold(peer, stream, id);
            } else {
                self.delivery.last_served = Some((peer, stream));
                self.deliver(id, Some(peer), stream);
            }
        }
        let now = self.now;
        let unacknowledged = std::mem::take(&mut self.delivery.unacknowledged);
        for (id, stream) in unacknowledged {
            let peer = self.connections.get(&id).and_then(|c| c.peer);
            let full = if stream < 0 {
                self.delivery.holds_control(id)
            } else {
                peer.is_some_and(|p| self.delivery.held.contains_key(&(p, stream)))
            };
            if full {
                // Its window is still full.
                self.delivery.unacknowledged.insert((id, stream));
                continue;
            }
            if let Some(c) = self.connections.get_mut(&id) {
                c.ack_pending.entry(stream).or_insert(now);
                self.dirty.insert(id);
                self.stale_timers.insert(id);
            }
        }
    }

    /// Hands out what a peer about to be dropped has waiting, whatever the budget:
    /// it was acknowledged, so its sender counts it delivered, and it would be lost
    /// with the peer. The application's queue may pass its bound by that much (at
    /// most `peer_receive_limit` and one message).
    pub(super) fn release_held(&mut self, peer: PeerId) {
        let held: Vec<((PeerId, i64), ConnectionId)> = self
            .delivery
            .held
            .range((peer, i64::MIN)..=(peer, i64::MAX))
            .map(|(&key, &id)| (key, id))
            .collect();
        if held.is_empty() {
            return;
        }
        let budget = self.delivery.remaining.take();
        for ((peer, stream), id) in held {
            self.delivery.held.remove(&(peer, stream));
            self.deliver(id, Some(peer), stream);
        }
        self.delivery.remaining = budget;
    }

    /// What is left of the delivery budget (see [`Endpoint::set_delivery_budget`]).
    pub fn delivery_budget(&self) -> Option<DeliveryBudget> {
        self.delivery.remaining
    }
}
