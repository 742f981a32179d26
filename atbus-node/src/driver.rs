//! The I/O task of a node: owns the [`Endpoint`], maps the core's connections to
//! sockets, and runs the loop "wait for input, hand it all to the core, drain the
//! outputs, write the transmits". Written once against [`Runtime`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atbus_core::{
    CloseCode, CloseReason, ConnectionId, ConnectionKind, Endpoint, Event, Input, Output, PeerId,
    SendError, SendOptions, Timestamp, Transmit,
};
use bytes::Bytes;
use futures_lite::future;

use crate::address::Address;
use crate::config::{NodeConfig, UNIX_DATAGRAM_MTU};
use crate::node::{Command, NodeError, NodeStats, PathStats, Reply};
use crate::runtime::{DatagramSocket, Remote, Runtime};
use crate::tasks::{self, Dialed, NetInput};

/// Timestamps start one second after the node's start: a timepoint of 0 means
/// "absent" on the wire.
const EPOCH: Duration = Duration::from_secs(1);
/// Inputs taken from a channel before the core's outputs are drained.
const INPUT_BURST: usize = 256;
/// How often a node whose application stopped reading events looks again.
const PAUSED_RECHECK: Duration = Duration::from_millis(5);
/// How soon a backed-up socket queue is tried again.
const OVERFLOW_RETRY: Duration = Duration::from_millis(1);

/// A listen address, bound.
pub(crate) struct Bound {
    pub local: Address,
    socket: BoundSocket,
}

enum BoundSocket {
    Udp(std::net::UdpSocket),
    UnixDatagram(std::os::unix::net::UnixDatagram, PathBuf),
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// Binds every listen address with the standard library (so that errors such as
/// "address in use" come back from `Node::start`, before any task runs).
pub(crate) fn bind_all(listen: &[Address]) -> Result<Vec<Bound>, NodeError> {
    let mut bound = Vec::new();
    for address in listen {
        let fail = |source: io::Error| NodeError::Listen {
            address: address.clone(),
            source,
        };
        let b = match address {
            Address::Udp(addr) => {
                let s = std::net::UdpSocket::bind(addr).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: Address::Udp(s.local_addr().map_err(fail)?),
                    socket: BoundSocket::Udp(s),
                }
            }
            Address::Tcp(addr) => {
                let s = std::net::TcpListener::bind(addr).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: Address::Tcp(s.local_addr().map_err(fail)?),
                    socket: BoundSocket::Tcp(s),
                }
            }
            Address::Unix(path) => {
                let s = std::os::unix::net::UnixListener::bind(path).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: address.clone(),
                    socket: BoundSocket::Unix(s, path.clone()),
                }
            }
            Address::UnixDatagram(path) => {
                let s = std::os::unix::net::UnixDatagram::bind(path).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: address.clone(),
                    socket: BoundSocket::UnixDatagram(s, path.clone()),
                }
            }
            Address::Shm(_) => {
                return Err(NodeError::Unsupported(format!(
                    "{address}: the shm transport"
                )));
            }
        };
        bound.push(b);
    }
    Ok(bound)
}

/// What [`Driver::new`] is built from.
pub(crate) struct DriverParts {
    pub config: NodeConfig,
    pub bound: Vec<Bound>,
    pub commands: async_channel::Receiver<Command>,
    pub events: async_channel::Sender<Event>,
    pub paused: Arc<AtomicBool>,
}

struct DatagramSlot<R: Runtime> {
    socket: Arc<R::Datagram>,
    /// A listening socket accepts new remotes; a dialled one talks to one remote.
    listening: bool,
    scheme: &'static str,
    mtu: usize,
    /// Datagrams waiting to be written (bounded by `write_queue`).
    queue: VecDeque<(Remote, Bytes)>,
    /// Scratch space for GSO runs.
    gso: Vec<u8>,
    _stop: async_channel::Sender<()>,
}

/// Bytes one GSO system call may carry (the UDP length limit, with room to spare).
const GSO_BYTES: usize = 60_000;

impl<R: Runtime> DatagramSlot<R> {
    /// Writes queued datagrams until the socket is full; consecutive datagrams to
    /// one remote of one size (the last may be shorter) leave in one system call.
    /// Returns the number of send errors (the datagrams are dropped: loss).
    fn flush(&mut self) -> u64 {
        let mut errors = 0;
        let max_segments = self.socket.max_segments();
        while let Some((remote, first)) = self.queue.front() {
            let size = first.len();
            let mut run = 1;
            let mut bytes = size;
            while run < max_segments && size > 0 {
                match self.queue.get(run) {
                    Some((r, d))
                        if r == remote && d.len() <= size && bytes + d.len() <= GSO_BYTES =>
                    {
                        bytes += d.len();
                        run += 1;
                        if d.len() < size {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let result = if run == 1 {
                self.socket.try_send(remote, first, size.max(1))
            } else {
                self.gso.clear();
                for (_, d) in self.queue.iter().take(run) {
                    self.gso.extend_from_slice(d);
                }
                self.socket.try_send(remote, &self.gso, size)
            };
            match result {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Ok(()) => {}
                Err(_) => errors += 1,
            }
            self.queue.drain(..run);
        }
        errors
    }
}

struct StreamSlot {
    connection: ConnectionId,
    writer: async_channel::Sender<Bytes>,
    overflow: VecDeque<Bytes>,
    _stop: async_channel::Sender<()>,
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
}

/// Where the answer to an operation without a value goes.
type Done = Reply<Result<(), NodeError>>;

enum Parked {
    Message {
        payload: Bytes,
        options: SendOptions,
        reply: Reply<Result<(), NodeError>>,
    },
    Finish {
        reply: Reply<Result<(), NodeError>>,
    },
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
    paused: Arc<AtomicBool>,
    bound: Vec<Bound>,
    sockets: Vec<Option<DatagramSlot<R>>>,
    by_remote: HashMap<(usize, Remote), ConnectionId>,
    streams: HashMap<u64, StreamSlot>,
    next_handle: u64,
    conns: HashMap<ConnectionId, Conn>,
    pending_accepts: HashSet<ConnectionId>,
    /// Garbage connections closed silently; their close event is not forwarded.
    discarded: HashSet<ConnectionId>,
    listener_stops: Vec<async_channel::Sender<()>>,
    dial_requests: HashMap<u64, Reply<Result<PeerId, NodeError>>>,
    next_request: u64,
    connect_waiters: HashMap<PeerId, Reply<Result<PeerId, NodeError>>>,
    dialed: BTreeMap<u64, DialedPath>,
    next_path: u64,
    parked: HashMap<(PeerId, i64), VecDeque<Parked>>,
    settle_waiters: Vec<(PeerId, bool, Done)>,
    closed_now: Vec<ConnectionId>,
    deadline: Timestamp,
    dropped_datagrams: u64,
    io_errors: u64,
    reconnects: u64,
    unix_paths: Vec<PathBuf>,
    closing: bool,
    finished: bool,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(parts: DriverParts, rt: R) -> Self {
        let (net_tx, net_rx) = async_channel::bounded(1024);
        let endpoint = Endpoint::new(parts.config.endpoint.clone());
        Driver {
            rt,
            config: parts.config,
            endpoint,
            start: Instant::now(),
            commands: parts.commands,
            net_tx,
            net_rx,
            events: parts.events,
            paused: parts.paused,
            bound: parts.bound,
            sockets: Vec::new(),
            by_remote: HashMap::new(),
            streams: HashMap::new(),
            next_handle: 0,
            conns: HashMap::new(),
            pending_accepts: HashSet::new(),
            discarded: HashSet::new(),
            listener_stops: Vec::new(),
            dial_requests: HashMap::new(),
            next_request: 0,
            connect_waiters: HashMap::new(),
            dialed: BTreeMap::new(),
            next_path: 0,
            parked: HashMap::new(),
            settle_waiters: Vec::new(),
            closed_now: Vec::new(),
            deadline: Timestamp::NEVER,
            dropped_datagrams: 0,
            io_errors: 0,
            reconnects: 0,
            unix_paths: Vec::new(),
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
            let paused = self.events.len() >= self.config.event_capacity;
            self.paused.store(paused, Ordering::Relaxed);
            let wake_at = self.wake_instant(paused);
            let sleep = self.rt.sleep_until(wake_at);
            let commands = self.commands.clone();
            let net = self.net_rx.clone();
            let wake: Wake<R> = future::or(
                async { Wake::Command(commands.recv().await.ok()) },
                future::or(
                    async {
                        if paused {
                            future::pending::<()>().await;
                        }
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
            if !paused {
                for _ in 0..INPUT_BURST {
                    match self.net_rx.try_recv() {
                        Ok(input) => self.on_net(input),
                        Err(_) => break,
                    }
                }
            }
            self.service();
        }
        for path in &self.unix_paths {
            let _ = std::fs::remove_file(path);
        }
    }

    fn wake_instant(&self, paused: bool) -> Instant {
        let now = Instant::now();
        let mut at = self
            .instant_of(self.deadline)
            .unwrap_or(now + Duration::from_secs(3600));
        let overflow = self.sockets.iter().flatten().any(|s| !s.queue.is_empty())
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
            }
        }
    }

    fn add_listener(&mut self, listener: R::Listener) {
        let (stop, stopped) = async_channel::bounded(1);
        self.listener_stops.push(stop);
        self.rt.spawn(tasks::accept_loop(
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
        let index = self.sockets.len();
        self.rt.spawn(tasks::datagram_reader(
            socket.clone(),
            index,
            self.net_tx.clone(),
            stopped,
        ));
        self.sockets.push(Some(DatagramSlot {
            socket,
            listening,
            scheme,
            mtu,
            queue: VecDeque::new(),
            gso: Vec::new(),
            _stop: stop,
        }));
        index
    }

    fn add_stream(
        &mut self,
        reader: R::Reader,
        writer: R::Writer,
        connection: ConnectionId,
    ) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        let (stop, stopped) = async_channel::bounded(1);
        let (queue, queued) = async_channel::bounded(self.config.write_queue.max(1));
        self.rt.spawn(tasks::stream_reader(
            reader,
            handle,
            self.net_tx.clone(),
            stopped,
        ));
        self.rt.spawn(tasks::stream_writer(writer, queued));
        self.streams.insert(
            handle,
            StreamSlot {
                connection,
                writer: queue,
                overflow: VecDeque::new(),
                _stop: stop,
            },
        );
        handle
    }

    // ----- inputs -----

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Connect { addresses, reply } => {
                if self.closing {
                    let _ = reply.try_send(Err(NodeError::Closed));
                    return;
                }
                if let Some(shm) = addresses.iter().find(|a| matches!(a, Address::Shm(_))) {
                    let _ = reply.try_send(Err(NodeError::Unsupported(format!(
                        "{shm}: the shm transport"
                    ))));
                    return;
                }
                let request = self.next_request;
                self.next_request += 1;
                self.dial_requests.insert(request, reply);
                let rt = self.rt.clone();
                let net = self.net_tx.clone();
                self.rt.spawn(async move {
                    let mut results = Vec::new();
                    for address in addresses {
                        results.push(tasks::dial(&rt, address).await);
                    }
                    let _ = net.send(NetInput::Dialed { request, results }).await;
                });
            }
            Command::Send {
                peer,
                stream,
                payload,
                options,
                reply,
            } => {
                if let Some(queue) = self.parked.get_mut(&(peer, stream)) {
                    queue.push_back(Parked::Message {
                        payload,
                        options,
                        reply,
                    });
                    return;
                }
                match self
                    .endpoint
                    .send(now, peer, stream, payload.clone(), &options)
                {
                    Ok(()) => {
                        let _ = reply.try_send(Ok(()));
                    }
                    Err(SendError::WouldBlock) => {
                        self.parked
                            .entry((peer, stream))
                            .or_default()
                            .push_back(Parked::Message {
                                payload,
                                options,
                                reply,
                            });
                    }
                    Err(err) => {
                        let _ = reply.try_send(Err(err.into()));
                    }
                }
            }
            Command::TrySend {
                peer,
                stream,
                payload,
                options,
                reply,
            } => {
                let result = if self.parked.contains_key(&(peer, stream)) {
                    Err(SendError::WouldBlock)
                } else {
                    self.endpoint.send(now, peer, stream, payload, &options)
                };
                let _ = reply.try_send(result.map_err(NodeError::from));
            }
            Command::Finish {
                peer,
                stream,
                reply,
            } => {
                if let Some(queue) = self.parked.get_mut(&(peer, stream)) {
                    queue.push_back(Parked::Finish { reply });
                    return;
                }
                let result = self.endpoint.finish_stream(
                    now,
                    peer,
                    stream,
                    CloseReason::new(CloseCode::Shutdown, "finished"),
                );
                let _ = reply.try_send(result.map_err(NodeError::from));
            }
            Command::WaitSettled { peer, reply } => self.settle_waiters.push((peer, true, reply)),
            Command::WaitAcknowledged { peer, reply } => {
                self.settle_waiters.push((peer, false, reply))
            }
            Command::CloseConnection { connection, reply } => {
                let result = self.endpoint.close_connection(
                    now,
                    connection,
                    CloseReason::new(CloseCode::Shutdown, "closed by the application"),
                );
                let _ = reply.try_send(result.map_err(NodeError::from));
            }
            Command::Stats { reply } => {
                let _ = reply.try_send(self.stats());
            }
            Command::Close { reply } => self.begin_close(Some(reply)),
            Command::Wake => {}
        }
    }

    fn begin_close(&mut self, reply: Option<Reply<()>>) {
        let now = self.now();
        self.closing = true;
        let connections: Vec<ConnectionId> = self.endpoint.connections().collect();
        for connection in connections {
            let _ = self.endpoint.close_connection(
                now,
                connection,
                CloseReason::new(CloseCode::Shutdown, "node closed"),
            );
        }
        self.drain();
        self.flush();
        // Hand what waits in the driver to the writers; they finish on their own.
        for slot in self.streams.values_mut() {
            while let Some(data) = slot.overflow.pop_front() {
                if slot.writer.try_send(data).is_err() {
                    break;
                }
            }
        }
        for (_, reply) in self.dial_requests.drain() {
            let _ = reply.try_send(Err(NodeError::Closed));
        }
        for (_, reply) in self.connect_waiters.drain() {
            let _ = reply.try_send(Err(NodeError::Closed));
        }
        for (_, queue) in self.parked.drain() {
            for parked in queue {
                let reply = match parked {
                    Parked::Message { reply, .. } | Parked::Finish { reply } => reply,
                };
                let _ = reply.try_send(Err(NodeError::Closed));
            }
        }
        for (_, _, reply) in self.settle_waiters.drain(..) {
            let _ = reply.try_send(Err(NodeError::Closed));
        }
        if let Some(reply) = reply {
            let _ = reply.try_send(());
        }
        self.finished = true;
    }

    fn on_net(&mut self, input: NetInput<R>) {
        let now = self.now();
        match input {
            NetInput::Datagrams { socket, batch } => {
                for (remote, data) in batch {
                    self.on_datagram(now, socket, remote, data);
                }
            }
            NetInput::DatagramError => self.io_errors += 1,
            NetInput::Accepted {
                reader,
                writer,
                remote,
                ..
            } => {
                if self.closing || self.pending_accepts.len() >= self.config.max_pending_accepts {
                    self.dropped_datagrams += 1;
                    return;
                }
                let Ok(connection) = self.endpoint.accept(now, ConnectionKind::Stream) else {
                    return;
                };
                let handle = self.add_stream(reader, writer, connection);
                self.pending_accepts.insert(connection);
                self.conns.insert(
                    connection,
                    Conn {
                        link: Link::Stream { handle },
                        remote,
                        dialed: None,
                    },
                );
            }
            NetInput::StreamData { handle, data } => {
                if let Some(slot) = self.streams.get(&handle) {
                    let connection = slot.connection;
                    self.endpoint
                        .handle_input(now, Input::StreamData { connection, data });
                }
            }
            NetInput::StreamEnded { handle } => {
                if let Some(slot) = self.streams.get(&handle) {
                    let connection = slot.connection;
                    let _ = self.endpoint.close_connection(
                        now,
                        connection,
                        CloseReason::new(CloseCode::PeerReset, "connection lost"),
                    );
                }
            }
            NetInput::Dialed { request, results } => self.on_dialed(now, request, results),
            NetInput::Redialed { path, result } => self.on_redialed(now, path, result),
        }
    }

    fn on_datagram(&mut self, now: Timestamp, socket: usize, remote: Remote, data: Bytes) {
        if let Some(&connection) = self.by_remote.get(&(socket, remote.clone())) {
            self.endpoint
                .handle_input(now, Input::Datagram { connection, data });
            self.discard_if_garbage(now, connection);
            return;
        }
        let Some(Some(slot)) = self.sockets.get(socket) else {
            return;
        };
        if !slot.listening
            || self.closing
            || remote == Remote::UnixUnnamed
            || self.pending_accepts.len() >= self.config.max_pending_accepts
        {
            self.dropped_datagrams += 1;
            return;
        }
        let (scheme, mtu) = (slot.scheme, slot.mtu);
        let Ok(connection) = self.endpoint.accept(now, ConnectionKind::Datagram { mtu }) else {
            self.dropped_datagrams += 1;
            return;
        };
        self.pending_accepts.insert(connection);
        self.by_remote.insert((socket, remote.clone()), connection);
        self.conns.insert(
            connection,
            Conn {
                remote: format!("{scheme}://{remote}"),
                link: Link::Datagram { socket, remote },
                dialed: None,
            },
        );
        self.endpoint
            .handle_input(now, Input::Datagram { connection, data });
        self.discard_if_garbage(now, connection);
    }

    /// An accepted datagram connection that has received nothing but malformed
    /// datagrams is dropped at once (silently: no FINISH_CONNECTION goes to a
    /// possibly spoofed source), so that garbage from many addresses cannot hold the
    /// pending-accept slots until the handshake timeout.
    fn discard_if_garbage(&mut self, now: Timestamp, connection: ConnectionId) {
        if !self.pending_accepts.contains(&connection) {
            return;
        }
        let garbage = self.endpoint.connection_info(connection).is_some_and(|info| {
            info.state == atbus_core::ConnectionState::Handshaking
                && info.stats.malformed >= info.stats.received_packets
        });
        if !garbage {
            return;
        }
        self.dropped_datagrams += 1;
        self.pending_accepts.remove(&connection);
        if let Some(Conn {
            link: Link::Datagram { socket, remote },
            ..
        }) = self.conns.remove(&connection)
        {
            self.by_remote.remove(&(socket, remote));
        }
        self.discarded.insert(connection);
        let _ = self.endpoint.close_connection(
            now,
            connection,
            CloseReason::new(CloseCode::PeerReset, "malformed input"),
        );
    }

    fn kind_of(&self, address: &Address) -> ConnectionKind {
        match address {
            Address::Udp(_) => ConnectionKind::Datagram {
                mtu: self.config.udp_mtu,
            },
            Address::UnixDatagram(_) => ConnectionKind::Datagram {
                mtu: UNIX_DATAGRAM_MTU,
            },
            _ => ConnectionKind::Stream,
        }
    }

    fn on_dialed(
        &mut self,
        now: Timestamp,
        request: u64,
        results: Vec<Result<Dialed<R>, (Address, io::Error)>>,
    ) {
        let Some(reply) = self.dial_requests.remove(&request) else {
            return;
        };
        let mut dialed = Vec::new();
        for result in results {
            match result {
                Ok(d) => dialed.push(d),
                Err((address, source)) => {
                    for d in dialed {
                        if let Dialed::Datagram {
                            own_path: Some(p), ..
                        } = d
                        {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                    let _ = reply.try_send(Err(NodeError::Dial { address, source }));
                    return;
                }
            }
        }
        let mut peer: Option<PeerId> = None;
        for d in dialed {
            let address = match &d {
                Dialed::Datagram { address, .. } | Dialed::Stream { address, .. } => {
                    address.clone()
                }
            };
            let kind = self.kind_of(&address);
            let created = match peer {
                None => self.endpoint.connect(now, kind).map(|(p, c)| {
                    peer = Some(p);
                    c
                }),
                Some(p) => self.endpoint.add_connection(now, p, kind),
            };
            let (Ok(connection), Some(p)) = (created, peer) else {
                let _ = reply.try_send(Err(NodeError::Unsupported(format!(
                    "{address}: the core refused the connection"
                ))));
                return;
            };
            let path = self.next_path;
            self.next_path += 1;
            let mut socket_of_path = None;
            let link = match d {
                Dialed::Datagram {
                    socket,
                    remote,
                    own_path,
                    ..
                } => {
                    if let Some(own) = own_path {
                        self.unix_paths.push(own);
                    }
                    let (scheme, mtu) = match &address {
                        Address::Udp(_) => ("udp", self.config.udp_mtu),
                        _ => ("unixgram", UNIX_DATAGRAM_MTU),
                    };
                    let index = self.add_datagram_socket(socket, false, scheme, mtu);
                    self.by_remote.insert((index, remote.clone()), connection);
                    socket_of_path = Some((index, remote.clone()));
                    Link::Datagram {
                        socket: index,
                        remote,
                    }
                }
                Dialed::Stream { reader, writer, .. } => Link::Stream {
                    handle: self.add_stream(reader, writer, connection),
                },
            };
            self.conns.insert(
                connection,
                Conn {
                    link,
                    remote: address.to_string(),
                    dialed: Some(path),
                },
            );
            self.dialed.insert(
                path,
                DialedPath {
                    address,
                    peer: p,
                    socket: socket_of_path,
                    connection: Some(connection),
                    backoff: self.config.reconnect_min,
                    retry_at: None,
                    dialing: false,
                },
            );
        }
        match peer {
            Some(p) => {
                self.connect_waiters.insert(p, reply);
            }
            None => {
                let _ = reply.try_send(Err(NodeError::NoAddress));
            }
        }
    }

    fn on_redialed(
        &mut self,
        now: Timestamp,
        path: u64,
        result: io::Result<(R::Reader, R::Writer)>,
    ) {
        let Some(p) = self.dialed.get_mut(&path) else {
            return;
        };
        p.dialing = false;
        let peer = p.peer;
        match result {
            Ok((reader, writer)) => {
                let Ok(connection) =
                    self.endpoint
                        .add_connection(now, peer, ConnectionKind::Stream)
                else {
                    self.dialed.remove(&path);
                    return;
                };
                let remote = p.address.to_string();
                p.connection = Some(connection);
                self.reconnects += 1;
                let handle = self.add_stream(reader, writer, connection);
                self.conns.insert(
                    connection,
                    Conn {
                        link: Link::Stream { handle },
                        remote,
                        dialed: Some(path),
                    },
                );
            }
            Err(_) => {
                self.io_errors += 1;
                self.schedule_retry(path);
            }
        }
    }

    fn schedule_retry(&mut self, path: u64) {
        let max = self.config.reconnect_max;
        if let Some(p) = self.dialed.get_mut(&path) {
            p.retry_at = Some(Instant::now() + p.backoff);
            p.backoff = (p.backoff * 2).min(max);
        }
    }

    // ----- the core's outputs -----

    fn service(&mut self) {
        let now = self.now();
        if now >= self.deadline {
            self.endpoint.handle_timeout(now);
        }
        self.redial_due(now);
        self.drain();
        self.flush();
        self.finish_closed();
        self.check_waiters();
    }

    fn drain(&mut self) {
        loop {
            match self.endpoint.poll_output() {
                Output::Transmit(transmit) => self.route(transmit),
                Output::Event(event) => self.on_event(event),
                Output::Timeout(at) => {
                    self.deadline = at;
                    break;
                }
            }
        }
    }

    fn route(&mut self, transmit: Transmit) {
        let Some(conn) = self.conns.get(&transmit.connection) else {
            return;
        };
        match &conn.link {
            Link::Datagram { socket, remote } => {
                let Some(Some(slot)) = self.sockets.get_mut(*socket) else {
                    return;
                };
                // Queued, then written in `flush` after the whole drain, so that runs
                // of datagrams to one remote leave in one GSO system call.
                if slot.queue.len() < self.config.write_queue {
                    slot.queue.push_back((remote.clone(), transmit.data));
                } else {
                    // Lost like any datagram; the core retransmits.
                    self.dropped_datagrams += 1;
                }
            }
            Link::Stream { handle } => {
                let Some(slot) = self.streams.get_mut(handle) else {
                    return;
                };
                // Byte streams must be written whole and in order: what the writer
                // cannot take yet waits here (bounded by the core's reliable window).
                if slot.overflow.is_empty() {
                    match slot.writer.try_send(transmit.data) {
                        Ok(()) => {}
                        Err(async_channel::TrySendError::Full(data)) => {
                            slot.overflow.push_back(data)
                        }
                        Err(async_channel::TrySendError::Closed(_)) => {}
                    }
                } else {
                    slot.overflow.push_back(transmit.data);
                }
            }
        }
    }

    fn flush(&mut self) {
        for slot in self.sockets.iter_mut().flatten() {
            self.io_errors += slot.flush();
        }
        for slot in self.streams.values_mut() {
            while let Some(data) = slot.overflow.pop_front() {
                match slot.writer.try_send(data) {
                    Ok(()) => {}
                    Err(async_channel::TrySendError::Full(data)) => {
                        slot.overflow.push_front(data);
                        break;
                    }
                    Err(async_channel::TrySendError::Closed(_)) => {
                        slot.overflow.clear();
                        break;
                    }
                }
            }
        }
    }

    fn forward(&mut self, event: Event) {
        let _ = self.events.try_send(event);
    }

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::PeerConnected {
                peer, connection, ..
            } => {
                self.pending_accepts.remove(connection);
                if let Some(path) = self.conns.get(connection).and_then(|c| c.dialed) {
                    if let Some(p) = self.dialed.get_mut(&path) {
                        p.backoff = self.config.reconnect_min;
                    }
                }
                if let Some(reply) = self.connect_waiters.remove(peer) {
                    let _ = reply.try_send(Ok(*peer));
                }
            }
            Event::ConnectionClosed {
                connection,
                peer,
                reason,
                ..
            } => {
                if self.discarded.remove(connection) {
                    return;
                }
                self.closed_now.push(*connection);
                self.pending_accepts.remove(connection);
                let path = self.conns.get(connection).and_then(|c| c.dialed);
                let waiting = peer.filter(|p| self.connect_waiters.contains_key(p));
                if let Some(peer) = waiting {
                    let none_left = self
                        .endpoint
                        .peer_info(peer)
                        .is_none_or(|p| p.connections.is_empty());
                    if none_left {
                        if let Some(reply) = self.connect_waiters.remove(&peer) {
                            let error = if reason.code == CloseCode::Unauthorized {
                                NodeError::Rejected(reason.message.clone())
                            } else {
                                NodeError::ConnectionFailed(reason.clone())
                            };
                            let _ = reply.try_send(Err(error));
                        }
                        self.dialed.retain(|_, p| p.peer != peer);
                        let _ = self.endpoint.forget_peer(self.now(), peer);
                    }
                } else if let (Some(path), false) = (path, self.closing) {
                    if let Some(p) = self.dialed.get_mut(&path) {
                        p.connection = None;
                    }
                    self.schedule_retry(path);
                }
            }
            Event::Writable { peer, stream } => {
                self.retry_parked(*peer, *stream);
                return;
            }
            Event::PeerLost { peer, .. } => {
                let peer = *peer;
                let keys: Vec<_> = self
                    .parked
                    .keys()
                    .filter(|(p, _)| *p == peer)
                    .copied()
                    .collect();
                for key in keys {
                    for parked in self.parked.remove(&key).unwrap_or_default() {
                        let reply = match parked {
                            Parked::Message { reply, .. } | Parked::Finish { reply } => reply,
                        };
                        let _ = reply.try_send(Err(NodeError::PeerGone));
                    }
                }
                if let Some(reply) = self.connect_waiters.remove(&peer) {
                    let _ = reply.try_send(Err(NodeError::PeerGone));
                }
                let sockets: Vec<usize> = self
                    .dialed
                    .values()
                    .filter(|p| p.peer == peer)
                    .filter_map(|p| p.socket.as_ref().map(|(s, _)| *s))
                    .collect();
                for socket in sockets {
                    if let Some(slot) = self.sockets.get_mut(socket) {
                        *slot = None;
                    }
                }
                self.dialed.retain(|_, p| p.peer != peer);
            }
            _ => {}
        }
        self.forward(event);
    }

    fn retry_parked(&mut self, peer: PeerId, stream: i64) {
        let now = self.now();
        let Some(mut queue) = self.parked.remove(&(peer, stream)) else {
            return;
        };
        while let Some(parked) = queue.pop_front() {
            match parked {
                Parked::Message {
                    payload,
                    options,
                    reply,
                } => match self
                    .endpoint
                    .send(now, peer, stream, payload.clone(), &options)
                {
                    Ok(()) => {
                        let _ = reply.try_send(Ok(()));
                    }
                    Err(SendError::WouldBlock) => {
                        queue.push_front(Parked::Message {
                            payload,
                            options,
                            reply,
                        });
                        break;
                    }
                    Err(err) => {
                        let _ = reply.try_send(Err(err.into()));
                    }
                },
                Parked::Finish { reply } => {
                    let result = self.endpoint.finish_stream(
                        now,
                        peer,
                        stream,
                        CloseReason::new(CloseCode::Shutdown, "finished"),
                    );
                    let _ = reply.try_send(result.map_err(NodeError::from));
                }
            }
        }
        if !queue.is_empty() {
            self.parked.insert((peer, stream), queue);
        }
    }

    fn redial_due(&mut self, now: Timestamp) {
        let due_at = Instant::now();
        let due: Vec<u64> = self
            .dialed
            .iter()
            .filter(|(_, p)| !p.dialing && p.retry_at.is_some_and(|t| t <= due_at))
            .map(|(&id, _)| id)
            .collect();
        for path in due {
            let Some(p) = self.dialed.get_mut(&path) else {
                continue;
            };
            p.retry_at = None;
            let peer = p.peer;
            if self.endpoint.peer_info(peer).is_none() {
                self.dialed.remove(&path);
                continue;
            }
            let address = p.address.clone();
            match p.socket.clone() {
                Some((socket, remote)) => {
                    let kind = self.kind_of(&address);
                    let remote_name = address.to_string();
                    match self.endpoint.add_connection(now, peer, kind) {
                        Ok(connection) => {
                            if let Some(p) = self.dialed.get_mut(&path) {
                                p.connection = Some(connection);
                            }
                            self.reconnects += 1;
                            self.by_remote.insert((socket, remote.clone()), connection);
                            self.conns.insert(
                                connection,
                                Conn {
                                    link: Link::Datagram { socket, remote },
                                    remote: remote_name,
                                    dialed: Some(path),
                                },
                            );
                        }
                        Err(_) => {
                            self.dialed.remove(&path);
                        }
                    }
                }
                None => {
                    if let Some(p) = self.dialed.get_mut(&path) {
                        p.dialing = true;
                    }
                    let rt = self.rt.clone();
                    let net = self.net_tx.clone();
                    self.rt.spawn(async move {
                        let result = tasks::dial_stream(&rt, &address).await;
                        let _ = net.send(NetInput::Redialed { path, result }).await;
                    });
                }
            }
        }
    }

    fn finish_closed(&mut self) {
        for connection in std::mem::take(&mut self.closed_now) {
            let Some(conn) = self.conns.remove(&connection) else {
                continue;
            };
            match conn.link {
                Link::Datagram { socket, remote } => {
                    let key = (socket, remote);
                    if self.by_remote.get(&key) == Some(&connection) {
                        self.by_remote.remove(&key);
                    }
                }
                Link::Stream { handle } => {
                    if let Some(mut slot) = self.streams.remove(&handle) {
                        while let Some(data) = slot.overflow.pop_front() {
                            if slot.writer.try_send(data).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_waiters(&mut self) {
        let endpoint = &self.endpoint;
        self.settle_waiters.retain(|(peer, full, reply)| {
            let result = match endpoint.peer_info(*peer) {
                None => Some(Err(NodeError::PeerGone)),
                Some(info) if info.send_buffered == 0 && (!*full || info.streams == 0) => {
                    Some(Ok(()))
                }
                Some(_) => None,
            };
            match result {
                Some(result) => {
                    let _ = reply.try_send(result);
                    false
                }
                None => true,
            }
        });
    }

    fn stats(&self) -> NodeStats {
        let paths = self
            .endpoint
            .connections()
            .filter_map(|connection| {
                let info = self.endpoint.connection_info(connection)?;
                let remote = self
                    .conns
                    .get(&connection)
                    .map(|c| c.remote.clone())
                    .unwrap_or_default();
                Some(PathStats {
                    connection,
                    remote,
                    info,
                })
            })
            .collect();
        NodeStats {
            endpoint: self.endpoint.stats(),
            paths,
            dropped_datagrams: self.dropped_datagrams,
            io_errors: self.io_errors,
            reconnects: self.reconnects,
            buffered_bytes: self.endpoint.buffered_bytes(),
        }
    }
}
