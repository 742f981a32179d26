//! The application's handle on a node: commands to the I/O task, events back.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use atbus_core::{
    CloseReason, CommandId, ConnectionId, ConnectionInfo, EndpointStats, Event, PeerId, SendError,
    SendOptions,
};
use bytes::Bytes;

use crate::address::Address;
use crate::budget::EventGauge;
use crate::config::NodeConfig;
use crate::driver::Driver;
use crate::runtime::Runtime;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listen address could not be bound (in use, no permission, ...).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: Address,
        /// The system's reason.
        source: io::Error,
    },
    /// An address could not be dialled (refused, unreachable, timed out).
    #[error("cannot connect to {address}: {source}")]
    Dial {
        /// The address.
        address: Address,
        /// The system's reason.
        source: io::Error,
    },
    /// The transport exists in the URL syntax but not in this version.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// The peer refused the handshake.
    #[error("the peer rejected the connection: {0}")]
    Rejected(String),
    /// Nothing answered the handshake in time (no node at the address, or the
    /// path drops everything).
    #[error("timed out: the peer did not answer the handshake within {0:?}")]
    TimedOut(std::time::Duration),
    /// Every connection to the peer closed before the handshake completed.
    #[error("connection failed: {0}")]
    ConnectionFailed(CloseReason),
    /// A connect call was given no address.
    #[error("no address to connect to")]
    NoAddress,
    /// The core refused a message or a stream operation.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The peer is gone (lost, forgotten).
    #[error("the peer is gone")]
    PeerGone,
    /// The peer closed its connections cleanly (`SHUTDOWN`: its node closed, or
    /// its application closed the connection) and none is open or being re-dialled,
    /// so what waits on it cannot complete. The peer's state lingers
    /// (`peer_linger`): sending to it again re-dials it.
    #[error(
        "the peer closed its connections ({reason}); {unacknowledged_bytes} bytes sent to it are not acknowledged"
    )]
    PeerDeparted {
        /// The reason the peer gave when it closed its last connection.
        reason: CloseReason,
        /// Payload bytes queued to it and not acknowledged (kept until the peer
        /// comes back or is lost, then reported in `Event::PeerLost`).
        unacknowledged_bytes: usize,
    },
    /// The node was closed.
    #[error("the node is closed")]
    Closed,
    /// A [`NodeConfig`] value the node cannot run with (see
    /// [`NodeConfig::validate`]).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// One connection (path) in [`NodeStats`].
#[derive(Debug, Clone)]
pub struct PathStats {
    /// The core's id of the connection.
    pub connection: ConnectionId,
    /// `scheme://remote` of the path.
    pub remote: String,
    /// State, RTT, MTU and counters from the core.
    pub info: ConnectionInfo,
    /// The connection's windowed statistics (last 1 / 5 / 15 / 60 s, totals,
    /// histogram of RTT samples), read when the stats were taken.
    pub windows: atbus_core::stats::StatsSnapshot,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Endpoint-wide counters from the core.
    pub endpoint: EndpointStats,
    /// The endpoint's windowed statistics, every connection it has had together
    /// (`atbus_core::Endpoint::snapshot`).
    pub windows: atbus_core::stats::StatsSnapshot,
    /// Every live connection.
    pub paths: Vec<PathStats>,
    /// Datagrams dropped outside the core: from new remotes without a hello, to a
    /// dialled socket from a stranger, garbage, over a full send queue, to a Unix
    /// datagram receiver whose queue is full, or read while the I/O task was behind
    /// ([`NodeConfig::input_bytes`]).
    pub dropped_datagrams: u64,
    /// Socket errors seen (each one is also handled: retried, or the connection
    /// closed).
    pub io_errors: u64,
    /// Stream connections re-dialled and datagram connections renewed.
    pub reconnects: u64,
    /// Stream connections closed because their peer did not read: more than the
    /// reliable window plus 1 MiB waited to be written.
    pub backlog_closes: u64,
    /// Accepted connections closed before their handshake completed because
    /// `max_pending_accepts` newer ones needed the room (the oldest goes first).
    pub evicted_accepts: u64,
    /// Route MTUs looked up for the PMTUD ceiling of UDP paths
    /// ([`UdpPmtudCeiling::Route`](crate::UdpPmtudCeiling::Route)): one per UDP
    /// connection whose handshake completed, none for remotes that never complete
    /// one.
    pub route_lookups: u64,
    /// Payload bytes the endpoint holds (queued and received).
    pub buffered_bytes: usize,
    /// Sockets the node holds open: datagram sockets (listening and dialled, each
    /// with its reader task) and stream connections (each with a reader and a
    /// writer task; shm connections included). Listening stream sockets are not
    /// counted. Dialled sockets are released when their path is given up (a
    /// failed connect, a lost peer).
    pub open_sockets: usize,
    /// Events waiting for the application (`recv`); see
    /// [`NodeConfig::event_capacity`].
    pub queued_events: usize,
    /// Payload bytes of the messages waiting for the application; see
    /// [`NodeConfig::event_bytes`].
    pub queued_event_bytes: usize,
    /// Payload bytes the socket tasks have read and the I/O task has not taken
    /// yet; see [`NodeConfig::input_bytes`].
    pub queued_input_bytes: usize,
    /// Times the node held delivery back because the application's queue of
    /// events was full (its peers were flow-controlled meanwhile).
    pub delivery_pauses: u64,
}

pub(crate) type Reply<T> = async_channel::Sender<T>;

/// What the handle asks of the I/O task.
pub(crate) enum Command {
    Connect {
        addresses: Vec<Address>,
        reply: Reply<Result<PeerId, NodeError>>,
    },
    Send {
        peer: PeerId,
        stream: i64,
        payload: Bytes,
        options: SendOptions,
        reply: Reply<Result<(), NodeError>>,
    },
    SendMany {
        peer: PeerId,
        stream: i64,
        payloads: Vec<Bytes>,
        options: SendOptions,
        reply: Reply<Result<(), NodeError>>,
    },
    TrySend {
        peer: PeerId,
        stream: i64,
        payload: Bytes,
        options: SendOptions,
        reply: Reply<Result<(), NodeError>>,
    },
    Finish {
        peer: PeerId,
        stream: i64,
        reply: Reply<Result<(), NodeError>>,
    },
    SetStreamScheduler {
        peer: PeerId,
        stream: i64,
        scheduler: Option<atbus_core::Scheduler>,
        reply: Reply<Result<(), NodeError>>,
    },
    Control {
        peer: PeerId,
        id: CommandId,
        payload: Bytes,
        reply: Reply<Result<(), NodeError>>,
    },
    WaitSettled {
        peer: PeerId,
        reply: Reply<Result<(), NodeError>>,
    },
    WaitAcknowledged {
        peer: PeerId,
        reply: Reply<Result<(), NodeError>>,
    },
    CloseConnection {
        connection: ConnectionId,
        reply: Reply<Result<(), NodeError>>,
    },
    Stats {
        reply: Reply<NodeStats>,
    },
    Close {
        reply: Reply<()>,
    },
    Wake,
}

impl Command {
    /// The peer a command sends something to (data, a finish, a command).
    pub(crate) fn sends_to(&self) -> Option<PeerId> {
        match self {
            Command::Send { peer, .. }
            | Command::SendMany { peer, .. }
            | Command::TrySend { peer, .. }
            | Command::Finish { peer, .. }
            | Command::Control { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// A running node: listens, connects, sends and receives. Cloning the handle is
/// not offered; share it behind an `Arc` (every method takes `&self`).
///
/// The node's I/O runs on a task of its runtime (or its own thread, see
/// [`NodeConfig::dedicated_thread`]); this handle talks to it through channels, so
/// it is the same for every runtime adapter.
#[derive(Debug)]
pub struct Node {
    commands: async_channel::Sender<Command>,
    events: async_channel::Receiver<Event>,
    /// Messages of an [`Event::Messages`] taken from the channel by `recv`,
    /// `try_recv` or `recv_many` and not handed over yet (those hand over one
    /// message per event); at most one batch.
    split: Mutex<VecDeque<Event>>,
    gauge: Arc<EventGauge>,
    event_capacity: usize,
    event_bytes: usize,
    local: Vec<Address>,
}

/// What an event counts against [`NodeConfig::event_capacity`]: its messages, or 1.
pub(crate) fn event_weight(event: &Event) -> usize {
    event.message_count().max(1)
}

impl Node {
    /// Binds every listen address of `config` and starts the node's I/O on `runtime`.
    /// Must be called from within the runtime (tokio: inside a runtime context).
    /// Fails with [`NodeError::InvalidConfig`] for values the node cannot run with
    /// ([`NodeConfig::validate`]).
    pub fn start<R: Runtime>(config: NodeConfig, runtime: R) -> Result<Node, NodeError> {
        config.validate()?;
        let (commands, command_rx) = async_channel::bounded(1024);
        let (event_tx, events) = async_channel::unbounded();
        let gauge = Arc::new(EventGauge::default());
        let event_capacity = config.event_capacity.max(1);
        let event_bytes = config.event_bytes.max(1);
        let dedicated = config.dedicated_thread;
        let bound = crate::driver::bind_all(&config.listen)?;
        let local = bound.iter().map(|b| b.local.clone()).collect();
        let parts = crate::driver::DriverParts {
            config,
            bound,
            commands: command_rx,
            events: event_tx,
            gauge: gauge.clone(),
        };
        if dedicated {
            runtime
                .spawn_dedicated(move |rt| Driver::new(parts, rt).run())
                .map_err(|source| NodeError::Listen {
                    address: Address::Shm("dedicated I/O thread".into()),
                    source,
                })?;
        } else {
            let driver = Driver::new(parts, runtime.clone());
            runtime.spawn(driver.run());
        }
        Ok(Node {
            commands,
            events,
            split: Mutex::new(VecDeque::new()),
            gauge,
            event_capacity,
            event_bytes,
            local,
        })
    }

    /// The addresses the node listens on, with the ports the system chose for port 0.
    pub fn local_addresses(&self) -> &[Address] {
        &self.local
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NodeError> {
        let (reply, answer) = async_channel::bounded(1);
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Closed)?;
        answer.recv().await.map_err(|_| NodeError::Closed)
    }

    /// Connects to a peer by one or several addresses (several make a multi-path
    /// peer) and waits for the handshake. Errors name the address that could not
    /// be dialled, a rejection, or a handshake that timed out.
    pub async fn connect(&self, addresses: &[Address]) -> Result<PeerId, NodeError> {
        if addresses.is_empty() {
            return Err(NodeError::NoAddress);
        }
        let addresses = addresses.to_vec();
        self.ask(|reply| Command::Connect { addresses, reply })
            .await?
    }

    /// Queues a message; waits while the stream's send window is full (the core's
    /// window is the only buffer: nothing queues unbounded). To a peer that closed
    /// its connections cleanly, this re-dials it (see [`NodeError::PeerDeparted`]);
    /// a wait for the window fails with `PeerDeparted` if that does not bring it
    /// back.
    ///
    /// Cancel-safety: dropping the future before it completes (a timeout) gives
    /// the message up if it still waits for the window: it is never sent later.
    /// If the I/O task had already queued it in the core, it is sent. So a caller
    /// that gave up does not know which happened; retrying may send it twice.
    pub async fn send(
        &self,
        peer: PeerId,
        stream: i64,
        payload: Bytes,
        options: SendOptions,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::Send {
            peer,
            stream,
            payload,
            options,
            reply,
        })
        .await?
    }

    /// Queues several messages on one stream, in order, with one round trip to the
    /// I/O task (cheaper than one [`Node::send`] each); waits while the window is
    /// full, like `send`. On an error, the messages before the failing one are
    /// queued and the rest are not. Cancel-safety as for `send`: dropping the
    /// future gives up the messages still waiting for the window (a prefix of the
    /// batch may have been queued, and is sent).
    pub async fn send_many(
        &self,
        peer: PeerId,
        stream: i64,
        payloads: Vec<Bytes>,
        options: SendOptions,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::SendMany {
            peer,
            stream,
            payloads,
            options,
            reply,
        })
        .await?
    }

    /// Queues a message or answers [`SendError::WouldBlock`] at once.
    pub async fn try_send(
        &self,
        peer: PeerId,
        stream: i64,
        payload: Bytes,
        options: SendOptions,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::TrySend {
            peer,
            stream,
            payload,
            options,
            reply,
        })
        .await?
    }

    /// Finishes the sending direction of a stream (after every queued message).
    pub async fn finish(&self, peer: PeerId, stream: i64) -> Result<(), NodeError> {
        self.ask(|reply| Command::Finish {
            peer,
            stream,
            reply,
        })
        .await?
    }

    /// Spreads `stream`'s data over the peer's connections with `scheduler`
    /// instead of the node's ([`NodeConfig`]'s scheduler); `None` goes back to
    /// the node's. See [`atbus_core::Endpoint::set_stream_scheduler`].
    pub async fn set_stream_scheduler(
        &self,
        peer: PeerId,
        stream: i64,
        scheduler: Option<atbus_core::Scheduler>,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::SetStreamScheduler {
            peer,
            stream,
            scheduler,
            reply,
        })
        .await?
    }

    /// Sends a command (stop, reload, or a user id >= 100) on the control stream;
    /// the peer sees [`Event::Command`]. Answers `WouldBlock` when the control
    /// stream is full.
    pub async fn send_command(
        &self,
        peer: PeerId,
        id: CommandId,
        payload: Bytes,
    ) -> Result<(), NodeError> {
        self.ask(|reply| Command::Control {
            peer,
            id,
            payload,
            reply,
        })
        .await?
    }

    /// Waits until every payload byte queued to `peer` is acknowledged. Fails with
    /// [`NodeError::PeerDeparted`] (and the bytes left unacknowledged) once the
    /// peer has closed its connections cleanly and none is being re-dialled, and
    /// with [`NodeError::PeerGone`] once the peer is lost.
    pub async fn wait_acknowledged(&self, peer: PeerId) -> Result<(), NodeError> {
        self.ask(|reply| Command::WaitAcknowledged { peer, reply })
            .await?
    }

    /// Waits until every stream with `peer` is finished both ways and settled
    /// (everything sent acknowledged, everything received delivered). Fails like
    /// [`Node::wait_acknowledged`].
    pub async fn wait_settled(&self, peer: PeerId) -> Result<(), NodeError> {
        self.ask(|reply| Command::WaitSettled { peer, reply })
            .await?
    }

    /// Closes one connection (the peer is told, `SHUTDOWN`); a dialled connection
    /// is re-dialled like a dropped one. For the peer it is a goodbye: it does not
    /// re-dial the connection until its application sends again.
    pub async fn close_connection(&self, connection: ConnectionId) -> Result<(), NodeError> {
        self.ask(|reply| Command::CloseConnection { connection, reply })
            .await?
    }

    /// The next event: messages, stream ends, peers connected and lost,
    /// connections closed. `None` once the node is closed and drained. Messages
    /// come one per event ([`Event::Message`]); see [`Node::recv_batch`] for runs
    /// of them as one event.
    pub async fn recv(&self) -> Option<Event> {
        if let Some(event) = self.take_split() {
            return Some(event);
        }
        loop {
            let Ok(event) = self.events.recv().await else {
                self.after_recv();
                return None;
            };
            if let Some(first) = self.split_first(self.taken(event)) {
                return Some(first);
            }
        }
    }

    /// The next event if one is ready (one message per event, like [`Node::recv`]).
    pub fn try_recv(&self) -> Option<Event> {
        if let Some(event) = self.take_split() {
            return Some(event);
        }
        loop {
            let Ok(event) = self.events.try_recv() else {
                self.after_recv();
                return None;
            };
            if let Some(first) = self.split_first(self.taken(event)) {
                return Some(first);
            }
        }
    }

    /// Waits for the next event, then appends it and every further event already
    /// queued, up to `max` in all, to `out`: one wake-up for a batch of messages
    /// instead of one per message (events keep their order, each is handed over
    /// once, one message per event). Returns how many were appended; 0 once the
    /// node is closed and drained (or if `max` is 0). Bounded by `max`: the caller
    /// sizes its batch.
    pub async fn recv_many(&self, out: &mut Vec<Event>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let mut taken = self.drain_split(out, max);
        if taken == 0 {
            let Some(first) = self.recv().await else {
                return 0;
            };
            out.push(first);
            // The rest of a run `recv` split comes before anything newer.
            taken = 1 + self.drain_split(out, max - 1);
        }
        while taken < max {
            let Ok(event) = self.events.try_recv() else {
                break;
            };
            let mut messages = self.taken(event).into_messages();
            for event in messages.by_ref() {
                out.push(event);
                taken += 1;
                if taken == max {
                    break;
                }
            }
            let mut split = self.split.lock().unwrap_or_else(PoisonError::into_inner);
            split.extend(messages);
        }
        self.after_recv();
        taken
    }

    /// Appends up to `max` messages split earlier and not handed over yet to
    /// `out`; returns how many.
    fn drain_split(&self, out: &mut Vec<Event>, max: usize) -> usize {
        let mut split = self.split.lock().unwrap_or_else(PoisonError::into_inner);
        let n = split.len().min(max);
        out.extend(split.drain(..n));
        n
    }

    /// Like [`Node::recv_many`], but a run of in-order messages of one stream
    /// that the node handed over together stays one [`Event::Messages`]: no
    /// event per message, which is what a high message rate needs. `max` counts
    /// events, so a call may bring many more messages than `max`.
    /// ([`Event::message_count`] says how many an event holds;
    /// [`Event::into_messages`] splits one.) Messages that `recv` or `recv_many`
    /// had split but not handed over come first, one per event.
    pub async fn recv_batch(&self, out: &mut Vec<Event>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let mut taken = self.drain_split(out, max);
        if taken == 0 {
            let Ok(first) = self.events.recv().await else {
                self.after_recv();
                return 0;
            };
            out.push(self.taken(first));
            taken = 1;
        }
        while taken < max {
            match self.events.try_recv() {
                Ok(event) => {
                    out.push(self.taken(event));
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        self.after_recv();
        taken
    }

    /// Counts `event` out of the channel.
    fn taken(&self, event: Event) -> Event {
        self.gauge.taken(&event);
        event
    }

    /// A message split earlier and not handed over yet.
    fn take_split(&self) -> Option<Event> {
        let event = self
            .split
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if event.is_some() {
            self.after_recv();
        }
        event
    }

    /// The first message of `event` (or the event itself); the others wait in
    /// `split`. `None` only for a run of no message.
    fn split_first(&self, event: Event) -> Option<Event> {
        let mut messages = event.into_messages();
        let first = messages.next();
        self.split
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(messages);
        self.after_recv();
        first
    }

    /// Wakes the I/O task once a queue it stopped delivering to is half empty
    /// (the events taken were uncounted by [`Node::taken`]).
    fn after_recv(&self) {
        if self.gauge.paused()
            && self.gauge.messages() < self.event_capacity / 2
            && self.gauge.bytes() < self.event_bytes / 2
        {
            let _ = self.commands.try_send(Command::Wake);
        }
    }

    /// Counters of the node and of each connection.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Closes every connection (peers are told, SHUTDOWN), flushes what is queued
    /// to the sockets, and stops the I/O task. Returns once the stream connections'
    /// writers (shm included) have written what was queued to them, the close
    /// frame last (at most 5 s for a peer that does not read), so the process may
    /// exit right after.
    ///
    /// It does not wait for acknowledgements: data not yet acknowledged by a peer
    /// is dropped without a report (no `PeerLost` event follows), and parked sends
    /// fail with [`NodeError::Closed`]. Call [`Node::wait_acknowledged`] (or
    /// [`Node::wait_settled`]) for each peer first to know the data arrived.
    pub async fn close(&self) {
        let _ = self.ask(|reply| Command::Close { reply }).await;
    }
}
