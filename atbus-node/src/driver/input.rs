//! The driver's inputs: commands from the handle, and what the socket tasks
//! report (datagrams, accepted and dialled streams, stream bytes and ends).

use crate::UdpPmtudCeiling;
use std::io;
use std::time::Instant;

use atbus_core::{
    CloseCode, CloseReason, ConnectionId, ConnectionKind, Input, PeerId, SendError, Timestamp,
};
use bytes::Bytes;

use std::collections::VecDeque;

use super::*;

impl<R: Runtime> Driver<R> {
    pub(super) fn on_command(&mut self, command: Command) {
        let now = self.now();
        if let Some(peer) = command.sends_to() {
            self.recall(peer);
        }
        match command {
            Command::Connect { addresses, reply } => {
                if self.closing {
                    let _ = reply.try_send(Err(NodeError::Closed));
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
            } => self.on_send(peer, stream, VecDeque::from([payload]), options, reply),
            Command::SendMany {
                peer,
                stream,
                payloads,
                options,
                reply,
            } => self.on_send(peer, stream, payloads.into(), options, reply),
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
            Command::SetStreamScheduler {
                peer,
                stream,
                scheduler,
                reply,
            } => {
                let result = self.endpoint.set_stream_scheduler(peer, stream, scheduler);
                let _ = reply.try_send(result.map_err(NodeError::from));
            }
            Command::Control {
                peer,
                id,
                payload,
                reply,
            } => {
                let result = self.endpoint.send_command(now, peer, id, payload);
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

    /// Queues messages in order; what the window cannot take yet waits, parked, for
    /// [`Event::Writable`]. A send whose caller gave up (its future dropped) is not
    /// queued, and leaves the parked ones: it must not go out later, and a caller
    /// retrying on a timeout must not pile up parked copies.
    fn on_send(
        &mut self,
        peer: PeerId,
        stream: i64,
        mut payloads: VecDeque<Bytes>,
        options: SendOptions,
        reply: Done,
    ) {
        if reply.is_closed() {
            return;
        }
        if let Some(queue) = self.parked.get_mut(&(peer, stream)) {
            queue.retain(|parked| !parked.is_cancelled());
            queue.push_back(Parked::Messages {
                payloads,
                options,
                reply,
            });
            return;
        }
        match self.send_queued(peer, stream, &mut payloads, &options) {
            Ok(true) => {
                let _ = reply.try_send(Ok(()));
            }
            Ok(false) => {
                self.parked
                    .entry((peer, stream))
                    .or_default()
                    .push_back(Parked::Messages {
                        payloads,
                        options,
                        reply,
                    })
            }
            Err(err) => {
                let _ = reply.try_send(Err(err));
            }
        }
    }

    /// Hands messages to the core until its window is full: `Ok(true)` when all
    /// were taken.
    pub(super) fn send_queued(
        &mut self,
        peer: PeerId,
        stream: i64,
        payloads: &mut VecDeque<Bytes>,
        options: &SendOptions,
    ) -> Result<bool, NodeError> {
        let now = self.now();
        match self
            .endpoint
            .send_many(now, peer, stream, payloads, options)
        {
            Ok(()) => Ok(true),
            Err(SendError::WouldBlock) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    pub(super) fn begin_close(&mut self, reply: Option<Reply<()>>) {
        let now = self.now();
        self.closing = true;
        // What was received and acknowledged but held back for the application is
        // handed over: the application may still read it after the close.
        self.endpoint.set_delivery_budget(None);
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
            while let Some(data) = slot.next_held() {
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
                    Parked::Messages { reply, .. } | Parked::Finish { reply } => reply,
                };
                let _ = reply.try_send(Err(NodeError::Closed));
            }
        }
        for (_, _, reply) in self.settle_waiters.drain(..) {
            let _ = reply.try_send(Err(NodeError::Closed));
        }
        // Answered when the run loop ends, once the writers are done.
        self.close_reply = reply;
        self.finished = true;
    }

    pub(super) fn on_net(&mut self, input: NetInput<R>) {
        let now = self.now();
        self.input_budget.release(input.budget_bytes());
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
                self.accept_stream(now, remote, |driver, connection| {
                    driver.add_stream(reader, writer, connection)
                });
            }
            NetInput::ShmAccepted { link } => {
                // Not accepted: the link is dropped, which removes its rings.
                let remote = link.remote.clone();
                self.accept_stream(now, remote, |driver, connection| {
                    driver.add_shm_stream(link, connection)
                });
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
            NetInput::Redialed { path, result } => {
                let add = result.map(|(reader, writer)| {
                    move |driver: &mut Self, connection| {
                        driver.add_stream(reader, writer, connection)
                    }
                });
                self.on_redialed(now, path, add);
            }
            NetInput::ShmRedialed { path, result } => {
                let add = result.map(|link| {
                    move |driver: &mut Self, connection| {
                        driver.remember_ring_paths(link.ring_paths());
                        driver.add_shm_stream(link, connection)
                    }
                });
                self.on_redialed(now, path, add);
            }
        }
    }

    /// Accepts a stream connection (see `max_pending_accepts`); `add` makes its
    /// slot. Not accepted (the node closes), `add` is dropped with what it holds.
    fn accept_stream(
        &mut self,
        now: Timestamp,
        remote: String,
        add: impl FnOnce(&mut Self, ConnectionId) -> u64,
    ) {
        if self.closing {
            return;
        }
        self.make_room_for_an_accept(now);
        let Ok(connection) = self.endpoint.accept(now, ConnectionKind::Stream) else {
            return;
        };
        let handle = add(self, connection);
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

    pub(super) fn on_datagram(
        &mut self,
        now: Timestamp,
        socket: usize,
        remote: Remote,
        data: Bytes,
    ) {
        if let Some(&connection) = self.by_remote.get(&(socket, remote.clone())) {
            self.endpoint
                .handle_input(now, Input::Datagram { connection, data });
            self.discard_if_garbage(now, connection);
            return;
        }
        let Some(slot) = self.sockets.get(&socket) else {
            return;
        };
        if !slot.listening || self.closing || remote == Remote::UnixUnnamed {
            self.dropped_datagrams += 1;
            return;
        }
        // A new remote's first datagram must carry a hello (well-formed frames,
        // header and CRC32C, one of them the start of the control stream) before a
        // connection is made for it: building and discarding a connection per
        // garbage datagram costs far more than reading it, a flood the driver
        // cannot keep up with queues in the socket's receive buffer ahead of real
        // peers, and one cheap valid frame (a ping) per spoofed source must not
        // hold a pending-accept slot (docs/adapters.md).
        if !starts_a_connection(&data, &self.config.endpoint.decode_limits) {
            self.dropped_datagrams += 1;
            return;
        }
        let (scheme, mtu) = (slot.scheme, slot.mtu);
        self.make_room_for_an_accept(now);
        let Ok(connection) = self.endpoint.accept(now, ConnectionKind::Datagram { mtu }) else {
            self.dropped_datagrams += 1;
            return;
        };
        self.start_udp_pmtud(now, connection, &remote);
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
    pub(super) fn discard_if_garbage(&mut self, now: Timestamp, connection: ConnectionId) {
        if !self.pending_accepts.contains(&connection) {
            return;
        }
        let garbage = self
            .endpoint
            .connection_info(connection)
            .is_some_and(|info| {
                info.state == atbus_core::ConnectionState::Handshaking
                    && info.stats.malformed >= info.stats.received_packets
            });
        if !garbage {
            return;
        }
        self.dropped_datagrams += 1;
        self.discard_pending(now, connection, "malformed input");
    }

    /// Evicts the oldest pending accept if `max_pending_accepts` of them wait:
    /// a connection that sends nothing (or nothing but a hello that goes
    /// nowhere) holds its slot only until newer ones need it, not for the whole
    /// handshake timeout; a real peer's handshake takes one round trip.
    fn make_room_for_an_accept(&mut self, now: Timestamp) {
        while self.pending_accepts.len() >= self.config.max_pending_accepts {
            let Some(oldest) = oldest_handshaking(&mut self.pending_accepts, &self.endpoint) else {
                return;
            };
            self.evicted_accepts += 1;
            self.discard_pending(now, oldest, "evicted by newer connections");
        }
    }

    /// Closes a pending accept silently: no FINISH_CONNECTION goes to a possibly
    /// spoofed source, and the application hears nothing of it.
    fn discard_pending(&mut self, now: Timestamp, connection: ConnectionId, why: &str) {
        self.pending_accepts.remove(&connection);
        // A datagram remote is forgotten at once (its next datagram must be a
        // hello); a stream's slot goes with the close, in `finish_closed`.
        if let Some(Conn {
            link: Link::Datagram { socket, remote },
            ..
        }) = self.conns.get(&connection)
        {
            self.by_remote.remove(&(*socket, remote.clone()));
            self.conns.remove(&connection);
        }
        self.discarded.insert(connection);
        let _ = self.endpoint.close_connection(
            now,
            connection,
            CloseReason::new(CloseCode::PeerReset, why),
        );
    }

    /// Turns path MTU discovery on for a new datagram connection to `remote` if
    /// it is a UDP one (see [`NodeConfig::udp_pmtud`](crate::NodeConfig::udp_pmtud)).
    /// A ceiling from the route's MTU is looked up once the handshake completes
    /// ([`Driver::start_route_ceiling`]); until then the search has not started
    /// and the configured maximum stands in.
    pub(super) fn start_udp_pmtud(
        &mut self,
        now: Timestamp,
        connection: ConnectionId,
        remote: &Remote,
    ) {
        let ceiling = self.config.udp_pmtud_ceiling;
        if let Some(config) =
            crate::udp::udp_pmtud(remote, self.config.udp_pmtud, UdpPmtudCeiling::Fixed)
        {
            self.endpoint.set_pmtud(now, connection, Some(config));
            if matches!(ceiling, UdpPmtudCeiling::Route { .. }) {
                self.route_pending.insert(connection);
            }
        }
    }

    /// Sets the PMTUD ceiling of a UDP connection whose handshake just completed
    /// from its route's MTU (see [`Driver::start_udp_pmtud`]).
    pub(super) fn start_route_ceiling(&mut self, connection: ConnectionId) {
        if !self.route_pending.remove(&connection) {
            return;
        }
        let Some(Conn {
            link: Link::Datagram { remote, .. },
            ..
        }) = self.conns.get(&connection)
        else {
            return;
        };
        self.route_lookups += 1;
        let fixed = crate::udp::udp_pmtud(remote, self.config.udp_pmtud, UdpPmtudCeiling::Fixed);
        let route =
            crate::udp::udp_pmtud(remote, self.config.udp_pmtud, self.config.udp_pmtud_ceiling);
        if route != fixed {
            let now = self.now();
            self.endpoint.set_pmtud(now, connection, route);
        }
    }

    pub(super) fn kind_of(&self, address: &Address) -> ConnectionKind {
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

    pub(super) fn on_dialed(
        &mut self,
        now: Timestamp,
        request: u64,
        results: Vec<Result<Dialed<R>, (Address, io::Error)>>,
    ) {
        let Some(reply) = self.dial_requests.remove(&request) else {
            return;
        };
        // On the first failure what was dialled (before and after it) is dropped:
        // its sockets close, and its files go (`OwnSocketFile`, `ShmLink`).
        let dialed = match results.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(dialed) => dialed,
            Err((address, source)) => {
                let _ = reply.try_send(Err(NodeError::Dial { address, source }));
                return;
            }
        };
        let mut peer: Option<PeerId> = None;
        for d in dialed {
            let address = match &d {
                Dialed::Datagram { address, .. }
                | Dialed::Stream { address, .. }
                | Dialed::Shm { address, .. } => address.clone(),
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
                // Nothing of the attempt stays: the paths made so far, and what was
                // dialled for the rest (dropped on return).
                if let Some(p) = peer {
                    self.release_paths_of(p);
                    let _ = self.endpoint.forget_peer(now, p);
                }
                let _ = reply.try_send(Err(NodeError::Unsupported(format!(
                    "{address}: the core refused the connection"
                ))));
                return;
            };
            let path = self.next_path;
            self.next_path += 1;
            let mut socket_of_path = None;
            let mut own_path_of_path = None;
            let link = match d {
                Dialed::Datagram {
                    socket,
                    remote,
                    own_path,
                    ..
                } => {
                    if let Some(own) = own_path {
                        self.unix_paths.push(own.path().to_path_buf());
                        own_path_of_path = Some(own);
                    }
                    let (scheme, mtu) = match &address {
                        Address::Udp(_) => ("udp", self.config.udp_mtu),
                        _ => ("unixgram", UNIX_DATAGRAM_MTU),
                    };
                    let index = self.add_datagram_socket(socket, false, scheme, mtu);
                    self.start_udp_pmtud(now, connection, &remote);
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
                Dialed::Shm { link, .. } => {
                    // The node's close removes the rings before it answers.
                    self.remember_ring_paths(link.ring_paths());
                    Link::Stream {
                        handle: self.add_shm_stream(*link, connection),
                    }
                }
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
                    after_goodbye: false,
                    not_before: Instant::now(),
                    own_path: own_path_of_path,
                    node_name: None,
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

    /// A re-dialled stream path: `result` holds what makes its slot.
    pub(super) fn on_redialed(
        &mut self,
        now: Timestamp,
        path: u64,
        result: io::Result<impl FnOnce(&mut Self, ConnectionId) -> u64>,
    ) {
        let Some(p) = self.dialed.get_mut(&path) else {
            return;
        };
        p.dialing = false;
        let peer = p.peer;
        match result {
            Ok(add) => {
                let Ok(connection) =
                    self.endpoint
                        .add_connection(now, peer, ConnectionKind::Stream)
                else {
                    self.release_path(path);
                    return;
                };
                let remote = p.address.to_string();
                p.connection = Some(connection);
                self.reconnects += 1;
                let handle = add(self, connection);
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

    /// The path's dial or connection failed: it is tried again after its backoff,
    /// which doubles up to `reconnect_max`. A path the peer said goodbye on is not
    /// tried again on its own: the backoff only delays the next on-demand attempt.
    pub(super) fn schedule_retry(&mut self, path: u64) {
        let max = self.config.reconnect_max;
        if let Some(p) = self.dialed.get_mut(&path) {
            let at = Instant::now() + p.backoff;
            p.backoff = (p.backoff * 2).min(max);
            if p.after_goodbye {
                p.not_before = at;
            } else {
                p.retry_at = Some(at);
            }
        }
    }

    /// The application sends to `peer` again: if it had said goodbye and no
    /// connection to it is left, its dialled paths are re-dialled (each at most
    /// once per backoff), so that what is queued can travel.
    pub(super) fn recall(&mut self, peer: PeerId) {
        if !self.departed.contains_key(&peer) || self.has_connection(peer) {
            return;
        }
        let now = Instant::now();
        for p in self.dialed.values_mut() {
            if p.peer == peer
                && p.after_goodbye
                && p.connection.is_none()
                && !p.dialing
                && p.retry_at.is_none()
            {
                p.retry_at = Some(p.not_before.max(now));
            }
        }
    }

    /// Whether any connection is bound to `peer` (open or handshaking).
    pub(super) fn has_connection(&self, peer: PeerId) -> bool {
        self.endpoint
            .peer_info(peer)
            .is_some_and(|info| !info.connections.is_empty())
    }

    /// Why waits on `peer` fail now, if they do: it said goodbye, and no
    /// connection to it is open, being dialled or due to be.
    pub(super) fn departure(&self, peer: PeerId) -> Option<&CloseReason> {
        let reason = self.departed.get(&peer)?;
        let trying = self
            .dialed
            .values()
            .any(|p| p.peer == peer && (p.dialing || p.retry_at.is_some()));
        (!trying && !self.has_connection(peer)).then_some(reason)
    }

    // ----- the core's outputs -----
}

/// The oldest accept of `pending` still handshaking, the only kind that may be
/// evicted. An accept whose handshake completed (a UDP hello is answered inside
/// `handle_input`) or that closed since the last drain leaves the set here
/// first: its `PeerConnected` or `ConnectionClosed` is still on its way, and
/// evicting it would drop a live connection the application is told of.
fn oldest_handshaking(
    pending: &mut BTreeSet<ConnectionId>,
    endpoint: &atbus_core::Endpoint,
) -> Option<ConnectionId> {
    pending.retain(|&c| {
        endpoint
            .connection_info(c)
            .is_some_and(|info| info.state == atbus_core::ConnectionState::Handshaking)
    });
    pending.first().copied()
}

/// Whether a datagram from a new remote may open a connection: well-formed
/// frames, one of them the start of the control stream (where the hello is)
/// that is not a FINISH_CONNECTION (which has the same stream and offset but
/// only closes: letting it in would cost a connection per spoofed datagram).
fn starts_a_connection(data: &Bytes, limits: &atbus_proto::DecodeLimits) -> bool {
    use atbus_proto::pb::frame_message::Body;
    const FINISH: i32 = atbus_proto::pb::AtbusPacketFlagType::FinishConnection as i32;
    atbus_proto::Frames::new(data.clone(), *limits).any(|frame| {
        matches!(
            frame,
            Ok(atbus_proto::pb::FrameMessage {
                body: Some(Body::Packet(ref p)),
                ..
            }) if p.stream_id == -1 && p.stream_offset == 0 && p.flags & FINISH == 0
        )
    })
}

/// A hand-built frame on the control stream (-1) from a node named `source`, with
/// `flags` and one empty data fragment: what a peer (or a spoofer) sends, for
/// tests.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn control_frame(source: &str, flags: i32) -> Bytes {
    use atbus_proto::{CachedHead, CachedMessageMeta, Content, DataFrame, FragmentSpec, pb};
    let head = CachedHead::new(&pb::MessageHead {
        source: source.into(),
        ..Default::default()
    });
    let meta = CachedMessageMeta::of_type(pb::AtbusPacketType::Data as i32);
    let fragments = [FragmentSpec {
        meta: Some(&meta),
        data: &[],
        has_more: false,
        packed: false,
    }];
    let frame = DataFrame {
        head: &head,
        stream_id: -1,
        stream_offset: 0,
        flags,
        padding_size: 0,
        timepoint_microseconds: 1,
        content: Content::Fragments(&fragments),
    };
    let mut buf = bytes::BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use atbus_proto::pb;

    #[test]
    fn only_handshaking_accepts_are_evictable() {
        use atbus_core::{ConnectionKind, Endpoint, Output};
        let kind = ConnectionKind::Datagram { mtu: 1400 };
        let now = Timestamp::ZERO;
        let mut client = Endpoint::new(crate::NodeConfig::new("client").endpoint);
        let mut server = Endpoint::new(crate::NodeConfig::new("server").endpoint);
        client.connect(now, kind).unwrap();
        let established = server.accept(now, kind).unwrap();
        let handshaking = server.accept(now, kind).unwrap();
        loop {
            match client.poll_output() {
                Output::Transmit(t) => server.handle_input(
                    now,
                    Input::Datagram {
                        connection: established,
                        data: t.data,
                    },
                ),
                Output::Event(_) => {}
                Output::Timeout(_) => break,
            }
        }
        let state = |c| server.connection_info(c).map(|i| i.state);
        assert_eq!(
            state(established),
            Some(atbus_core::ConnectionState::Established)
        );
        let mut pending = BTreeSet::from([established, handshaking]);
        assert_eq!(oldest_handshaking(&mut pending, &server), Some(handshaking));
        assert_eq!(pending, BTreeSet::from([handshaking]));
    }

    #[test]
    fn a_finish_connection_frame_does_not_open_a_connection() {
        let limits = atbus_proto::DecodeLimits::default();
        assert!(starts_a_connection(&control_frame("a", 0), &limits));
        let finish = pb::AtbusPacketFlagType::FinishConnection as i32;
        assert!(!starts_a_connection(&control_frame("a", finish), &limits));
    }
}
