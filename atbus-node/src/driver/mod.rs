//! The I/O task of a node: owns the [`Endpoint`], maps the core's connections to
//! sockets, and runs the loop "wait for input, hand it all to the core, drain the
//! outputs, write the transmits". Written once against [`Runtime`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atbus_core::{ConnectionId, Endpoint, Event, PeerId, SendOptions, Timestamp};
use bytes::Bytes;
use futures_lite::future;

use crate::address::Address;
use crate::budget::{EventGauge, InputBudget};
use crate::config::{NodeConfig, UNIX_DATAGRAM_MTU};
use crate::node::{Command, NodeError, NodeStats, PathStats, Reply};
use crate::runtime::{DatagramSocket, Remote, Runtime};
use crate::tasks::{self, Dialed, NetInput};

mod bind;
mod input;
mod output;

use bind::BoundSocket;
pub(crate) use bind::{Bound, bind_all};
#[cfg(feature = "testing")]
pub(crate) use input::control_frame;

/// Timestamps start one second after the node's start: a timepoint of 0 means
/// "absent" on the wire.
const EPOCH: Duration = Duration::from_secs(1);
/// Inputs taken from a channel before the core's outputs are drained.
const INPUT_BURST: usize = 256;
/// How often a node holding delivery back for its application looks again (the
/// application's reads wake it up sooner).
const PAUSED_RECHECK: Duration = Duration::from_millis(5);
/// How soon a backed-up socket queue is tried again.
const OVERFLOW_RETRY: Duration = Duration::from_millis(1);

/// What [`Driver::new`] is built from.
pub(crate) struct DriverParts {
    pub config: NodeConfig,
    pub bound: Vec<Bound>,
    pub commands: async_channel::Receiver<Command>,
    pub events: async_channel::Sender<Event>,
    pub gauge: Arc<EventGauge>,
}

struct DatagramSlot<R: Runtime> {
    socket: Arc<R::Datagram>,
    /// A listening socket accepts new remotes; a dialled one talks to one remote.
    listening: bool,
    scheme: &'static str,
    mtu: usize,
    /// Datagrams waiting to be written (bounded by `write_queue` and
    /// [`DATAGRAM_QUEUE_BYTES`]).
    queue: VecDeque<(Remote, Bytes)>,
    /// Bytes in `queue`.
    queue_bytes: usize,
    /// The Unix remote that would block in the last flush (see
    /// [`DatagramSlot::flush`]).
    blocked: Option<Remote>,
    _stop: async_channel::Sender<()>,
}

/// Bytes one GSO system call may carry (the UDP length limit, with room to spare).
const GSO_BYTES: usize = 60_000;

/// Bytes of datagrams a socket's write queue holds at most (besides `write_queue`
/// datagrams): what its kernel send buffer is asked to hold
/// ([`SOCKET_BUFFER`](crate::udp::SOCKET_BUFFER)). Without it, `write_queue`
/// datagrams of up to 64 KiB (PMTUD on loopback) would be 16 MiB per socket.
const DATAGRAM_QUEUE_BYTES: usize = crate::udp::SOCKET_BUFFER;

/// Whether a write queue of `count` datagrams and `bytes` bytes takes one more of
/// `len` bytes: within `limit` datagrams and [`DATAGRAM_QUEUE_BYTES`] (an empty
/// queue takes any datagram).
fn queue_has_room(count: usize, bytes: usize, len: usize, limit: usize) -> bool {
    count == 0 || (count < limit && bytes + len <= DATAGRAM_QUEUE_BYTES)
}

impl<R: Runtime> DatagramSlot<R> {
    /// Whether the write queue takes one more datagram of `len` bytes.
    fn has_room(&self, len: usize, limit: usize) -> bool {
        queue_has_room(self.queue.len(), self.queue_bytes, len, limit)
    }

    /// Queues a datagram to write.
    fn push(&mut self, remote: Remote, data: Bytes) {
        self.queue_bytes += data.len();
        self.queue.push_back((remote, data));
    }

    /// Writes queued datagrams until the socket is full; consecutive datagrams to
    /// one remote of one size (the last may be shorter) leave in one system call.
    /// Returns the number of send errors and of datagrams dropped because their
    /// Unix receiver did not take them (both are loss, which the core repairs).
    ///
    /// A full UDP socket is full for every remote: writing stops and the rest
    /// waits. A Unix datagram socket answers "would block" both when its own send
    /// buffer is full (every datagram is charged to it until read) and when the
    /// one receiver's queue is full. After the first "would block" that remote is
    /// skipped for the rest of the flush and its datagrams wait for the next one;
    /// if it would block in the next flush as well, only `keep_blocked` of them
    /// wait and the rest are dropped (a receiver that does not read holds no more
    /// of the queue than that, while a short stall of the socket itself loses
    /// nothing); the other remotes go on. A second remote that would block too
    /// means the socket itself is full: writing stops and the rest waits, as for
    /// UDP.
    fn flush(&mut self, keep_blocked: usize) -> (u64, u64) {
        let outcome = flush_datagrams(
            &*self.socket,
            &mut self.queue,
            keep_blocked,
            &mut self.blocked,
        );
        self.queue_bytes = self.queue.iter().map(|(_, d)| d.len()).sum();
        outcome
    }
}

/// How many datagrams of a Unix remote that would block wait for the next flush
/// (see [`DatagramSlot::flush`]): half the write queue, so that one receiver that
/// does not read cannot take all of it.
fn keep_blocked(write_queue: usize) -> usize {
    (write_queue / 2).max(1)
}

/// [`DatagramSlot::flush`] of `queue` on `socket`; `last_blocked` is the Unix
/// remote that would block in the previous flush, and becomes this one's.
fn flush_datagrams<S: DatagramSocket>(
    socket: &S,
    queue: &mut VecDeque<(Remote, Bytes)>,
    keep_blocked: usize,
    last_blocked: &mut Option<Remote>,
) -> (u64, u64) {
    let mut errors = 0;
    let mut dropped = 0;
    let max_segments = socket.max_segments();
    let mut blocked: Option<Remote> = None;
    // How many of the blocked remote's datagrams wait: all of them the first
    // time it would block, `keep_blocked` once it would block twice in a row.
    let mut keep = usize::MAX;
    let mut kept = VecDeque::new();
    while let Some((remote, first)) = queue.front() {
        if blocked.as_ref() == Some(remote) {
            let datagram = queue.pop_front();
            if kept.len() < keep {
                kept.extend(datagram);
            } else {
                dropped += 1;
            }
            continue;
        }
        let size = first.len();
        let mut run = 1;
        let mut bytes = size;
        while run < max_segments && size > 0 {
            match queue.get(run) {
                Some((r, d)) if r == remote && d.len() <= size && bytes + d.len() <= GSO_BYTES => {
                    bytes += d.len();
                    run += 1;
                    if d.len() < size {
                        break;
                    }
                }
                _ => break,
            }
        }
        // The run's datagrams go to the kernel as they are (no copy into one
        // buffer): it gathers them and cuts them at `size`.
        let result = if run == 1 {
            socket.try_send(remote, &[first], size.max(1))
        } else {
            let parts: Vec<&[u8]> = queue.iter().take(run).map(|(_, d)| &d[..]).collect();
            socket.try_send(remote, &parts, size)
        };
        match result {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if !matches!(remote, Remote::Unix(_)) || blocked.is_some() {
                    break;
                }
                // Kept (or dropped past `keep`) by the next turn.
                if last_blocked.as_ref() == Some(remote) {
                    keep = keep_blocked;
                }
                blocked = Some(remote.clone());
                continue;
            }
            Ok(()) => {}
            Err(_) => errors += 1,
        }
        queue.drain(..run);
    }
    // The blocked remote's datagrams were ahead of the rest: back in front, in
    // their order.
    while let Some(datagram) = kept.pop_back() {
        queue.push_front(datagram);
    }
    *last_blocked = blocked;
    (errors, dropped)
}

struct StreamSlot {
    connection: ConnectionId,
    writer: async_channel::Sender<Bytes>,
    overflow: VecDeque<Bytes>,
    /// Bytes in `overflow`.
    overflow_bytes: usize,
    _stop: async_channel::Sender<()>,
}

/// What may wait for a stream writer beyond the core's reliable window (ACKs,
/// pongs, control frames) before the connection counts as not read by its peer.
const BACKLOG_SLACK: usize = 1 << 20;

impl StreamSlot {
    /// Queues `data` behind what already waits for the writer; false once the
    /// backlog passes `limit` bytes (the peer is not reading).
    fn hold(&mut self, data: Bytes, limit: usize) -> bool {
        self.overflow_bytes += data.len();
        self.overflow.push_back(data);
        self.overflow_bytes <= limit
    }

    /// The oldest waiting bytes.
    fn next_held(&mut self) -> Option<Bytes> {
        let data = self.overflow.pop_front()?;
        self.overflow_bytes -= data.len();
        Some(data)
    }

    /// Puts back what the writer could not take.
    fn hold_first(&mut self, data: Bytes) {
        self.overflow_bytes += data.len();
        self.overflow.push_front(data);
    }

    fn drop_held(&mut self) {
        self.overflow.clear();
        self.overflow_bytes = 0;
    }
}

enum Link {
    Datagram { socket: usize, remote: Remote },
    Stream { handle: u64 },
}

struct Conn {
    link: Link,
    remote: String,
    /// The dialled path this connection serves, re-dialled when it drops.
    dialed: Option<u64>,
}

struct DialedPath {
    address: Address,
    peer: PeerId,
    /// Datagram paths keep their socket across renewals.
    socket: Option<(usize, Remote)>,
    connection: Option<ConnectionId>,
    backoff: Duration,
    retry_at: Option<Instant>,
    dialing: bool,
    /// The peer closed this path's connection cleanly (`SHUTDOWN`): it is not
    /// re-dialled on its own, only when the application sends to the peer again
    /// (see [`Driver::recall`]); cleared once a handshake completes on it.
    after_goodbye: bool,
    /// An on-demand re-dial of a path after a goodbye waits until then (the
    /// backoff of its failed attempts).
    not_before: Instant,
    /// The socket file a Unix datagram path bound for itself: removed with the path.
    own_path: Option<OwnSocketFile>,
    /// The name of the node at the address, once a handshake on the path
    /// completed: a restarted node (a new peer) takes over the path.
    node_name: Option<String>,
}

/// A socket file this node bound for itself (a Unix datagram client's): removed
/// when dropped, so that no path through which a dialled transport is let go
/// (a failed connect, a result that comes after the node closed or its request
/// was answered, a released path) leaves it on disk.
#[derive(Debug)]
pub(crate) struct OwnSocketFile(PathBuf);

impl OwnSocketFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        OwnSocketFile(path)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for OwnSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where the answer to an operation without a value goes.
type Done = Reply<Result<(), NodeError>>;

enum Parked {
    Messages {
        payloads: VecDeque<Bytes>,
        options: SendOptions,
        reply: Done,
    },
    Finish {
        reply: Reply<Result<(), NodeError>>,
    },
}

impl Parked {
    /// Whether its caller gave up waiting (dropped the future of `send`,
    /// `send_many` or `finish`): it is not carried out.
    fn is_cancelled(&self) -> bool {
        match self {
            Parked::Messages { reply, .. } | Parked::Finish { reply } => reply.is_closed(),
        }
    }
}

enum Wake<R: Runtime> {
    Command(Option<Command>),
    Net(NetInput<R>),
    Timer,
}

/// The node's I/O task.
pub(crate) struct Driver<R: Runtime> {
    rt: R,
    config: NodeConfig,
    endpoint: Endpoint,
    start: Instant,
    commands: async_channel::Receiver<Command>,
    net_tx: async_channel::Sender<NetInput<R>>,
    net_rx: async_channel::Receiver<NetInput<R>>,
    events: async_channel::Sender<Event>,
    /// The application's queue of events: its payload bytes, and whether delivery
    /// is held back.
    gauge: Arc<EventGauge>,
    /// Bytes the socket tasks queue in `net_rx`.
    input_budget: Arc<InputBudget>,
    /// Times delivery was held back because the application's queue was full.
    delivery_pauses: u64,
    bound: Vec<Bound>,
    /// Datagram sockets by number (never reused: a batch still in the channel
    /// from a closed socket's reader is dropped, not given to a newer socket).
    sockets: HashMap<usize, DatagramSlot<R>>,
    next_socket: usize,
    by_remote: HashMap<(usize, Remote), ConnectionId>,
    streams: HashMap<u64, StreamSlot>,
    next_handle: u64,
    conns: HashMap<ConnectionId, Conn>,
    /// Accepted connections whose handshake has not completed, oldest (lowest
    /// id) first: when `max_pending_accepts` of them wait, a new one evicts the
    /// oldest.
    pending_accepts: BTreeSet<ConnectionId>,
    /// Garbage connections closed silently; their close event is not forwarded.
    discarded: HashSet<ConnectionId>,
    listener_stops: Vec<async_channel::Sender<()>>,
    dial_requests: HashMap<u64, Reply<Result<PeerId, NodeError>>>,
    next_request: u64,
    connect_waiters: HashMap<PeerId, Reply<Result<PeerId, NodeError>>>,
    dialed: BTreeMap<u64, DialedPath>,
    next_path: u64,
    /// Dialled paths whose peer was lost in this drain, without a live
    /// connection: a restarted node's new peer may take them over.
    orphans: Vec<u64>,
    parked: HashMap<(PeerId, i64), VecDeque<Parked>>,
    settle_waiters: Vec<(PeerId, bool, Done)>,
    /// Peers whose last connection the peer closed cleanly (`SHUTDOWN`), with its
    /// reason: while none of their connections is open or being dialled, waits on
    /// them fail with [`NodeError::PeerDeparted`].
    departed: HashMap<PeerId, atbus_core::CloseReason>,
    closed_now: Vec<ConnectionId>,
    deadline: Timestamp,
    dropped_datagrams: u64,
    io_errors: u64,
    backlog_closes: u64,
    evicted_accepts: u64,
    /// UDP connections whose PMTUD ceiling waits for their route's MTU, looked
    /// up once their handshake completes: not per new remote (a spoofed source
    /// never gets that far), and only for a peer that is there.
    route_pending: HashSet<ConnectionId>,
    route_lookups: u64,
    reconnects: u64,
    unix_paths: Vec<PathBuf>,
    /// Each task or thread that holds a socket (stream writers and readers,
    /// datagram readers, listeners, shm writers) holds a clone until it ends
    /// (see [`Driver::spawn_io`]); `None` once closing.
    writers_alive: Option<async_channel::Sender<()>>,
    /// Closed once every such task has ended.
    writers_done: async_channel::Receiver<()>,
    /// The application's close, answered once the writers are done.
    close_reply: Option<Reply<()>>,
    closing: bool,
    finished: bool,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(parts: DriverParts, rt: R) -> Self {
        let (net_tx, net_rx) = async_channel::bounded(1024);
        let (writers_alive, writers_done) = async_channel::bounded(1);
        let input_budget = Arc::new(InputBudget::new(parts.config.input_bytes));
        let mut endpoint_config = parts.config.endpoint.clone();
        endpoint_config.scheduler = parts.config.scheduler;
        let mut endpoint = Endpoint::new(endpoint_config);
        if let Some(tokens) = &parts.config.accept_tokens {
            endpoint.set_authenticator(Box::new(atbus_core::TokenAuthenticator::new(
                tokens.iter().cloned(),
            )));
        }
        Driver {
            rt,
            config: parts.config,
            endpoint,
            start: Instant::now(),
            commands: parts.commands,
            net_tx,
            net_rx,
            events: parts.events,
            gauge: parts.gauge,
            input_budget,
            delivery_pauses: 0,
            bound: parts.bound,
            sockets: HashMap::new(),
            next_socket: 0,
            by_remote: HashMap::new(),
            streams: HashMap::new(),
            next_handle: 0,
            conns: HashMap::new(),
            pending_accepts: BTreeSet::new(),
            discarded: HashSet::new(),
            listener_stops: Vec::new(),
            dial_requests: HashMap::new(),
            next_request: 0,
            connect_waiters: HashMap::new(),
            dialed: BTreeMap::new(),
            next_path: 0,
            orphans: Vec::new(),
            parked: HashMap::new(),
            settle_waiters: Vec::new(),
            departed: HashMap::new(),
            closed_now: Vec::new(),
            deadline: Timestamp::NEVER,
            dropped_datagrams: 0,
            io_errors: 0,
            backlog_closes: 0,
            evicted_accepts: 0,
            route_pending: HashSet::new(),
            route_lookups: 0,
            reconnects: 0,
            unix_paths: Vec::new(),
            writers_alive: Some(writers_alive),
            writers_done,
            close_reply: None,
            closing: false,
            finished: false,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.start.elapsed() + EPOCH)
    }

    fn instant_of(&self, at: Timestamp) -> Option<Instant> {
        (at != Timestamp::NEVER).then(|| self.start + at.since_epoch().saturating_sub(EPOCH))
    }

    /// Runs until the node is closed.
    pub(crate) async fn run(mut self) {
        self.open_listeners();
        while !self.finished {
            // Socket input is always taken (acknowledgements, handshakes, control
            // must flow while the application is busy, or a node whose application
            // awaits it would wedge); what the application has not taken bounds
            // only the delivery of messages, which stay in their streams' receive
            // windows meanwhile (flow control towards the peers).
            self.set_delivery_budget();
            let paused = self.gauge.paused();
            let wake_at = self.wake_instant(paused);
            let sleep = self.rt.sleep_until(wake_at);
            let commands = self.commands.clone();
            let net = self.net_rx.clone();
            let wake: Wake<R> = future::or(
                async { Wake::Command(commands.recv().await.ok()) },
                future::or(
                    async {
                        match net.recv().await {
                            Ok(input) => Wake::Net(input),
                            Err(_) => future::pending().await,
                        }
                    },
                    async {
                        sleep.await;
                        Wake::Timer
                    },
                ),
            )
            .await;
            match wake {
                Wake::Command(Some(command)) => self.on_command(command),
                Wake::Command(None) => self.begin_close(None),
                Wake::Net(input) => self.on_net(input),
                Wake::Timer => {}
            }
            for _ in 0..INPUT_BURST {
                match self.commands.try_recv() {
                    Ok(command) => self.on_command(command),
                    Err(_) => break,
                }
            }
            for _ in 0..INPUT_BURST {
                match self.net_rx.try_recv() {
                    Ok(input) => self.on_net(input),
                    Err(_) => break,
                }
            }
            self.service();
            let paused = self
                .endpoint
                .delivery_budget()
                .is_some_and(|b| b.is_spent());
            if paused && !self.gauge.paused() {
                self.delivery_pauses += 1;
            }
            self.gauge.set_paused(paused);
        }
        // What was handed to the stream writers (each connection's FINISH_CONNECTION
        // last) reaches the sockets before the close is answered: a process may exit
        // right after it, and its peers would see a lost connection instead of a
        // goodbye. Bounded: a writer gives up WRITER_CLOSE_GRACE after its slot goes.
        // Every other socket is closed by then too (its task stops at once), so a
        // listen address is free again when `close` returns.
        self.streams.clear();
        self.sockets.clear();
        self.listener_stops.clear();
        self.net_rx.close();
        self.writers_alive = None;
        let writers_done = self.writers_done.clone();
        let grace = self
            .rt
            .sleep_until(Instant::now() + tasks::WRITER_CLOSE_GRACE + OVERFLOW_RETRY);
        future::or(
            async {
                let _ = writers_done.recv().await;
            },
            grace,
        )
        .await;
        // Socket files go before the answer, for the same reason.
        for path in self.unix_paths.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.try_send(());
        }
    }

    /// Lets the core deliver what the application's queue has room for: none once
    /// it holds `event_capacity` messages (other events count 1) or `event_bytes`
    /// payload bytes.
    fn set_delivery_budget(&mut self) {
        let room = atbus_core::DeliveryBudget {
            bytes: self.config.event_bytes.saturating_sub(self.gauge.bytes()),
            messages: self
                .config
                .event_capacity
                .saturating_sub(self.gauge.messages()),
        };
        self.endpoint.set_delivery_budget(Some(room));
    }

    /// Remembers the ring files of a dialled shm connection, to remove at close
    /// if its reader has not; the files already removed are forgotten, so a node
    /// that re-dials for ever keeps a bounded list.
    fn remember_ring_paths(&mut self, paths: Vec<PathBuf>) {
        self.unix_paths.retain(|path| path.exists());
        self.unix_paths.extend(paths);
    }

    fn wake_instant(&self, paused: bool) -> Instant {
        let now = Instant::now();
        let mut at = self
            .instant_of(self.deadline)
            .unwrap_or(now + Duration::from_secs(3600));
        let overflow = self.sockets.values().any(|s| !s.queue.is_empty())
            || self.streams.values().any(|s| !s.overflow.is_empty());
        if overflow {
            at = at.min(now + OVERFLOW_RETRY);
        }
        if paused {
            at = at.min(now + PAUSED_RECHECK);
        }
        for path in self.dialed.values() {
            if let (Some(retry), false) = (path.retry_at, path.dialing) {
                at = at.min(retry);
            }
        }
        at
    }

    fn open_listeners(&mut self) {
        for bound in std::mem::take(&mut self.bound) {
            match bound.socket {
                BoundSocket::Udp(s) => match self.rt.udp(s) {
                    Ok(socket) => {
                        let mtu = self.config.udp_mtu;
                        self.add_datagram_socket(socket, true, "udp", mtu);
                    }
                    Err(_) => self.io_errors += 1,
                },
                BoundSocket::UnixDatagram(s, path) => {
                    self.unix_paths.push(path);
                    match self.rt.unix_datagram(s) {
                        Ok(socket) => {
                            self.add_datagram_socket(socket, true, "unixgram", UNIX_DATAGRAM_MTU);
                        }
                        Err(_) => self.io_errors += 1,
                    }
                }
                BoundSocket::Tcp(l) => match self.rt.tcp_listener(l) {
                    Ok(listener) => self.add_listener(listener),
                    Err(_) => self.io_errors += 1,
                },
                BoundSocket::Unix(l, path) => {
                    self.unix_paths.push(path);
                    match self.rt.unix_listener(l) {
                        Ok(listener) => self.add_listener(listener),
                        Err(_) => self.io_errors += 1,
                    }
                }
                BoundSocket::Shm(reader, name) => {
                    // The listener ring goes when the node closes.
                    self.unix_paths.extend(crate::shm::ring_path(&name));
                    let (stop, stopped) = async_channel::bounded(1);
                    self.listener_stops.push(stop);
                    let net = self.net_tx.clone();
                    if crate::shm::spawn_listener(reader, name, net, stopped).is_err() {
                        self.io_errors += 1;
                    }
                }
            }
        }
    }

    fn add_listener(&mut self, listener: R::Listener) {
        let (stop, stopped) = async_channel::bounded(1);
        self.listener_stops.push(stop);
        self.spawn_io(tasks::accept_loop(
            listener,
            self.net_tx.clone(),
            stopped,
            self.rt.clone(),
        ));
    }

    fn add_datagram_socket(
        &mut self,
        socket: R::Datagram,
        listening: bool,
        scheme: &'static str,
        mtu: usize,
    ) -> usize {
        let socket = Arc::new(socket);
        let (stop, stopped) = async_channel::bounded(1);
        let index = self.next_socket;
        self.next_socket += 1;
        self.spawn_io(tasks::datagram_reader(
            socket.clone(),
            index,
            self.net_tx.clone(),
            self.input_budget.clone(),
            stopped,
        ));
        self.sockets.insert(
            index,
            DatagramSlot {
                socket,
                listening,
                scheme,
                mtu,
                queue: VecDeque::new(),
                queue_bytes: 0,
                blocked: None,
                _stop: stop,
            },
        );
        index
    }

    fn add_stream(
        &mut self,
        reader: R::Reader,
        writer: R::Writer,
        connection: ConnectionId,
    ) -> u64 {
        let (handle, stopped, queued) = self.new_stream_slot(connection);
        self.spawn_io(tasks::stream_reader(
            reader,
            handle,
            self.net_tx.clone(),
            self.input_budget.clone(),
            stopped.clone(),
        ));
        // Once the connection is gone, its writer has a grace period to write what
        // was queued (the close frame last), then gives up and closes the socket.
        let rt = self.rt.clone();
        let abort = async move {
            let _ = stopped.recv().await;
            rt.sleep_until(Instant::now() + tasks::WRITER_CLOSE_GRACE)
                .await;
        };
        self.spawn_io(tasks::stream_writer(writer, queued, abort));
        handle
    }

    /// Spawns a task that holds a socket: the node's close waits (bounded) until
    /// every such task has ended.
    fn spawn_io(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let alive = self.writers_alive.clone();
        self.rt.spawn(async move {
            task.await;
            drop(alive);
        });
    }

    /// A shm connection: a stream served by its reader and writer threads.
    fn add_shm_stream(&mut self, link: crate::shm::ShmLink, connection: ConnectionId) -> u64 {
        let (handle, stopped, queued) = self.new_stream_slot(connection);
        let net = self.net_tx.clone();
        let writing = self.writers_alive.clone();
        let budget = self.input_budget.clone();
        if crate::shm::spawn_connection(link, handle, net, budget, stopped, queued, writing)
            .is_err()
        {
            // No thread: the connection ends at once.
            self.io_errors += 1;
            let now = self.now();
            let _ = self.endpoint.close_connection(
                now,
                connection,
                atbus_core::CloseReason::new(
                    atbus_core::CloseCode::PeerReset,
                    "no thread for the shm connection",
                ),
            );
        }
        handle
    }

    /// Registers a stream connection's slot: its handle, the receiver its reader
    /// watches for the stop, and the write queue its writer drains.
    fn new_stream_slot(
        &mut self,
        connection: ConnectionId,
    ) -> (
        u64,
        async_channel::Receiver<()>,
        async_channel::Receiver<Bytes>,
    ) {
        let handle = self.next_handle;
        self.next_handle += 1;
        let (stop, stopped) = async_channel::bounded(1);
        let (queue, queued) = async_channel::bounded(self.config.write_queue.max(1));
        self.streams.insert(
            handle,
            StreamSlot {
                connection,
                writer: queue,
                overflow: VecDeque::new(),
                overflow_bytes: 0,
                _stop: stop,
            },
        );
        (handle, stopped, queued)
    }

    // ----- inputs -----
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A socket whose receivers in `full` would block, as would the socket itself
    /// after `room` sends; records what was sent.
    struct FakeSocket {
        full: Vec<Remote>,
        room: Mutex<usize>,
        sent: Mutex<Vec<(Remote, u8)>>,
    }

    impl DatagramSocket for FakeSocket {
        async fn recv_batch<'a>(
            &'a self,
            _scratch: &'a mut crate::udp::RecvScratch,
            _out: &'a mut Vec<(Remote, Bytes)>,
        ) -> io::Result<()> {
            future::pending().await
        }

        fn max_segments(&self) -> usize {
            1
        }

        fn try_send(&self, to: &Remote, parts: &[&[u8]], _segment: usize) -> io::Result<()> {
            let mut room = self.room.lock().unwrap();
            if self.full.contains(to) || *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *room -= 1;
            self.sent.lock().unwrap().push((to.clone(), parts[0][0]));
            Ok(())
        }
    }

    fn unix(name: &str) -> Remote {
        Remote::Unix(PathBuf::from(name))
    }

    /// Datagrams numbered 0.. to `remotes` in turn; their first byte is the number.
    fn queue_of(remotes: &[&Remote], count: u8) -> VecDeque<(Remote, Bytes)> {
        (0..count)
            .map(|i| {
                let remote = remotes[usize::from(i) % remotes.len()];
                (remote.clone(), Bytes::from(vec![i; 10 + usize::from(i)]))
            })
            .collect()
    }

    #[test]
    fn a_unix_receiver_that_would_block_is_skipped_and_its_datagrams_kept() {
        let (slow, fast) = (unix("slow"), unix("fast"));
        let socket = FakeSocket {
            full: vec![slow.clone()],
            room: Mutex::new(usize::MAX),
            sent: Mutex::new(Vec::new()),
        };
        let mut queue = queue_of(&[&slow, &fast], 12);
        let mut last_blocked = None;
        // The fast receiver gets all 6; the slow one keeps its 6 the first time
        // it would block...
        assert_eq!(
            flush_datagrams(&socket, &mut queue, 4, &mut last_blocked),
            (0, 0)
        );
        assert_eq!(queue.len(), 6);
        assert_eq!(last_blocked, Some(slow.clone()));
        // ... and 4 of them once it would block again.
        assert_eq!(
            flush_datagrams(&socket, &mut queue, 4, &mut last_blocked),
            (0, 2)
        );
        let sent = socket.sent.lock().unwrap().clone();
        assert_eq!(
            sent.iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 3, 5, 7, 9, 11]
        );
        let left: Vec<_> = queue.iter().map(|(r, d)| (r.clone(), d[0])).collect();
        assert_eq!(left, [0, 2, 4, 6].map(|i| (slow.clone(), i)));
    }

    #[test]
    fn a_full_unix_socket_stops_the_flush_and_keeps_the_queue() {
        let (a, b) = (unix("a"), unix("b"));
        let socket = FakeSocket {
            full: Vec::new(),
            room: Mutex::new(3),
            sent: Mutex::new(Vec::new()),
        };
        let mut queue = queue_of(&[&a, &b], 10);
        // 3 go; then `b` and `a` would block: the socket is full, nothing is lost.
        assert_eq!(flush_datagrams(&socket, &mut queue, 4, &mut None), (0, 0));
        let left: Vec<_> = queue.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(left, [3, 4, 5, 6, 7, 8, 9]);
    }

    /// (From review) one peer on the socket, whose own send buffer is full for
    /// a moment: its datagrams wait, none is dropped for a single stall.
    #[test]
    fn a_single_unix_peer_stalled_once_loses_nothing() {
        let a = unix("a");
        let socket = FakeSocket {
            full: Vec::new(),
            room: Mutex::new(3),
            sent: Mutex::new(Vec::new()),
        };
        let mut queue = queue_of(&[&a], 12);
        let mut last_blocked = None;
        assert_eq!(
            flush_datagrams(&socket, &mut queue, 4, &mut last_blocked),
            (0, 0)
        );
        let left: Vec<_> = queue.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(left, (3..12).collect::<Vec<u8>>());
        // Room again: everything left goes, in order.
        *socket.room.lock().unwrap() = usize::MAX;
        assert_eq!(
            flush_datagrams(&socket, &mut queue, 4, &mut last_blocked),
            (0, 0)
        );
        assert!(queue.is_empty());
        assert_eq!(last_blocked, None);
        let sent: Vec<u8> = socket.sent.lock().unwrap().iter().map(|s| s.1).collect();
        assert_eq!(sent, (0..12).collect::<Vec<u8>>());
    }

    #[test]
    fn a_datagram_write_queue_is_bounded_in_bytes_as_well_as_datagrams() {
        let big = crate::udp::MAX_UDP_PAYLOAD_V4;
        // 256 datagrams of 64 KiB would be 16 MiB: the bytes stop it first.
        let fits = DATAGRAM_QUEUE_BYTES / big;
        assert!(queue_has_room(fits - 1, (fits - 1) * big, big, 256));
        assert!(!queue_has_room(fits, fits * big, big, 256));
        // Small datagrams stop at the count.
        assert!(queue_has_room(255, 255 * 100, 100, 256));
        assert!(!queue_has_room(256, 256 * 100, 100, 256));
        // An empty queue takes any datagram.
        assert!(queue_has_room(0, 0, usize::MAX / 2, 256));
    }

    #[test]
    fn a_stream_backlog_counts_its_bytes_and_reports_passing_the_limit() {
        let (writer, _queued) = async_channel::bounded(1);
        let (stop, _stopped) = async_channel::bounded(1);
        let mut slot = StreamSlot {
            connection: ConnectionId(1),
            writer,
            overflow: VecDeque::new(),
            overflow_bytes: 0,
            _stop: stop,
        };
        assert!(slot.hold(Bytes::from(vec![0; 600]), 1000));
        assert!(slot.hold(Bytes::from(vec![1; 400]), 1000));
        assert_eq!(slot.overflow_bytes, 1000);
        let first = slot.next_held().unwrap();
        assert_eq!((first[0], slot.overflow_bytes), (0, 400));
        slot.hold_first(first);
        assert_eq!(slot.overflow_bytes, 1000);
        assert!(!slot.hold(Bytes::from_static(b"x"), 1000), "past the limit");
        slot.drop_held();
        assert_eq!((slot.overflow.len(), slot.overflow_bytes), (0, 0));
        assert!(slot.next_held().is_none());
    }
}
