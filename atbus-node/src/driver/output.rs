//! The driver's outputs: draining the core, writing transmits, acting on events,
//! re-dialling, answering waiters, statistics.

use std::time::Instant;

use atbus_core::{CloseCode, CloseReason, Event, Output, PeerId, Timestamp, Transmit};

use super::*;

impl<R: Runtime> Driver<R> {
    pub(super) fn service(&mut self) {
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

    pub(super) fn drain(&mut self) {
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
        self.release_orphans();
    }

    pub(super) fn route(&mut self, transmit: Transmit) {
        let Some(conn) = self.conns.get(&transmit.connection) else {
            return;
        };
        match &conn.link {
            Link::Datagram { socket, remote } => {
                let Some(slot) = self.sockets.get_mut(socket) else {
                    return;
                };
                // Queued, then written in `flush` after the whole drain, so that runs
                // of datagrams to one remote leave in one GSO system call. A drain can
                // yield more than the queue holds (a congestion window of datagrams):
                // a full queue is written out before it drops anything.
                let (len, limit) = (transmit.data.len(), self.config.write_queue);
                if !slot.has_room(len, limit) {
                    let (errors, dropped) = slot.flush(keep_blocked(limit));
                    self.io_errors += errors;
                    self.dropped_datagrams += dropped;
                }
                if slot.has_room(len, limit) {
                    slot.push(remote.clone(), transmit.data);
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
                // cannot take yet waits here. Data is bounded by the core's reliable
                // window; past it and a slack for control frames the peer is not
                // reading, and the connection is closed rather than grow the queue.
                let limit = self
                    .endpoint
                    .config()
                    .reliable_window
                    .saturating_add(BACKLOG_SLACK);
                let within = if slot.overflow.is_empty() {
                    match slot.writer.try_send(transmit.data) {
                        Ok(()) | Err(async_channel::TrySendError::Closed(_)) => true,
                        Err(async_channel::TrySendError::Full(data)) => slot.hold(data, limit),
                    }
                } else {
                    slot.hold(transmit.data, limit)
                };
                if !within {
                    slot.drop_held();
                    let connection = slot.connection;
                    self.backlog_closes += 1;
                    let now = self.now();
                    let reason = CloseReason::new(
                        CloseCode::PeerReset,
                        format!("the peer is not reading: over {limit} bytes wait to be written"),
                    );
                    let _ = self.endpoint.close_connection(now, connection, reason);
                }
            }
        }
    }

    pub(super) fn flush(&mut self) {
        let keep = keep_blocked(self.config.write_queue);
        for slot in self.sockets.values_mut() {
            let (errors, dropped) = slot.flush(keep);
            self.io_errors += errors;
            self.dropped_datagrams += dropped;
        }
        for slot in self.streams.values_mut() {
            while let Some(data) = slot.next_held() {
                match slot.writer.try_send(data) {
                    Ok(()) => {}
                    Err(async_channel::TrySendError::Full(data)) => {
                        slot.hold_first(data);
                        break;
                    }
                    Err(async_channel::TrySendError::Closed(_)) => {
                        slot.drop_held();
                        break;
                    }
                }
            }
        }
    }

    pub(super) fn forward(&mut self, event: Event) {
        let (bytes, messages) = self.gauge.queued(&event);
        if self.events.try_send(event).is_err() {
            self.gauge.release(bytes, messages);
        }
    }

    pub(super) fn on_event(&mut self, event: Event) {
        match &event {
            Event::PeerConnected {
                peer,
                connection,
                node_name,
                restarted,
                ..
            } => {
                self.pending_accepts.remove(connection);
                self.start_route_ceiling(*connection);
                self.departed.remove(peer);
                if let Some(path) = self.conns.get(connection).and_then(|c| c.dialed) {
                    if let Some(p) = self.dialed.get_mut(&path) {
                        p.backoff = self.config.reconnect_min;
                        p.after_goodbye = false;
                        // A restarted node is a new peer on the same path.
                        p.peer = *peer;
                        p.node_name = Some(node_name.clone());
                    }
                }
                if *restarted {
                    self.adopt_orphans(*peer, node_name);
                }
                if let Some(reply) = self.connect_waiters.remove(peer) {
                    let _ = reply.try_send(Ok(*peer));
                }
            }
            Event::ConnectionClosed {
                connection,
                peer,
                reason,
                by_peer,
            } => {
                // A discarded accept, one the remote closed before any handshake
                // bound a peer (a FINISH_CONNECTION, possibly spoofed, on a stream
                // that never sent a hello), or an accept closed here before its
                // handshake completed (a hello refused for its token, a handshake
                // that timed out: one per spoofed datagram otherwise): the
                // application never heard of it, so it hears nothing of its close
                // either.
                let accepted = self
                    .conns
                    .get(connection)
                    .is_some_and(|c| c.dialed.is_none());
                let unannounced = peer.is_none() && (*by_peer || accepted);
                if self.discarded.remove(connection) || unannounced {
                    self.pending_accepts.remove(connection);
                    // A stream's slot (its socket and tasks) still goes.
                    self.closed_now.push(*connection);
                    return;
                }
                // The peer said goodbye: its node closed, or its application closed
                // the connection. Not re-dialled until the application sends again.
                let goodbye = *by_peer && reason.code == CloseCode::Shutdown;
                if let (true, Some(peer)) = (goodbye, peer) {
                    self.departed.insert(*peer, reason.clone());
                }
                self.closed_now.push(*connection);
                self.pending_accepts.remove(connection);
                self.route_pending.remove(connection);
                let path = self.conns.get(connection).and_then(|c| c.dialed);
                let waiting = peer.filter(|p| self.connect_waiters.contains_key(p));
                // A connect fails once none of its paths is left; a path that fails
                // while another may still succeed is re-dialled like any other.
                let failed = waiting.filter(|&peer| {
                    self.endpoint
                        .peer_info(peer)
                        .is_none_or(|p| p.connections.is_empty())
                });
                if let Some(peer) = failed {
                    if let Some(reply) = self.connect_waiters.remove(&peer) {
                        let error = if reason.code == CloseCode::Unauthorized {
                            NodeError::Rejected(reason.message.clone())
                        } else if reason.message.contains("handshake timed out") {
                            NodeError::TimedOut(self.config.endpoint.handshake_timeout)
                        } else {
                            NodeError::ConnectionFailed(reason.clone())
                        };
                        let _ = reply.try_send(Err(error));
                    }
                    self.release_paths_of(peer);
                    let _ = self.endpoint.forget_peer(self.now(), peer);
                } else if let (Some(path), false) = (path, self.closing) {
                    if let Some(p) = self.dialed.get_mut(&path) {
                        p.connection = None;
                        if goodbye {
                            p.after_goodbye = true;
                            p.not_before = Instant::now();
                        }
                    }
                    if !goodbye {
                        self.schedule_retry(path);
                    }
                }
            }
            Event::Writable { peer, stream } => {
                self.retry_parked(*peer, *stream);
                return;
            }
            Event::PeerLost { peer, .. } => {
                let peer = *peer;
                self.departed.remove(&peer);
                self.fail_parked(peer, || NodeError::PeerGone);
                if let Some(reply) = self.connect_waiters.remove(&peer) {
                    let _ = reply.try_send(Err(NodeError::PeerGone));
                }
                self.on_peer_lost(peer);
            }
            _ => {}
        }
        self.forward(event);
    }

    /// `peer` is gone. A dialled path belongs to its address, not to one
    /// incarnation of the node there: a path whose connection now serves another
    /// peer (the node restarted, and the handshake of the path's re-dial bound a
    /// new peer) is kept for it; a path without a live connection is held until
    /// the end of this drain, for a restarted node's new peer to take over
    /// ([`Driver::adopt_orphans`]), and released then.
    fn on_peer_lost(&mut self, peer: PeerId) {
        let ids = self.dialed_ids_of(peer);
        for id in ids {
            let now_serves = self.dialed[&id]
                .connection
                .and_then(|c| self.endpoint.connection_info(c))
                .and_then(|info| info.peer)
                .filter(|&p| p != peer);
            match now_serves {
                Some(new_peer) => {
                    if let Some(p) = self.dialed.get_mut(&id) {
                        p.peer = new_peer;
                    }
                }
                None => {
                    if let Some(p) = self.dialed.get_mut(&id) {
                        p.connection = None;
                    }
                    self.orphans.push(id);
                }
            }
        }
    }

    /// A restarted node connected as `peer`: the dialled paths to it left
    /// without a peer in this drain serve the new one, and are re-dialled.
    fn adopt_orphans(&mut self, peer: PeerId, node_name: &str) {
        let now = Instant::now();
        let orphans = std::mem::take(&mut self.orphans);
        for id in orphans {
            match self.dialed.get_mut(&id) {
                Some(p) if p.node_name.as_deref() == Some(node_name) => {
                    p.peer = peer;
                    p.after_goodbye = false;
                    if !p.dialing && p.retry_at.is_none() {
                        p.retry_at = Some(now);
                    }
                }
                Some(_) => self.orphans.push(id),
                None => {}
            }
        }
    }

    /// Releases the dialled paths left without a peer (see [`Driver::on_peer_lost`]).
    pub(super) fn release_orphans(&mut self) {
        for id in std::mem::take(&mut self.orphans) {
            self.release_path(id);
        }
    }

    /// The ids of the dialled paths to `peer`.
    fn dialed_ids_of(&self, peer: PeerId) -> Vec<u64> {
        self.dialed
            .iter()
            .filter(|(_, p)| p.peer == peer)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Drops every dialled path to `peer` with what it holds.
    pub(super) fn release_paths_of(&mut self, peer: PeerId) {
        let ids = self.dialed_ids_of(peer);
        for id in ids {
            self.release_path(id);
        }
    }

    /// Drops a dialled path and what it holds: its datagram socket (and with it
    /// the socket's reader task and buffers) and the socket file it bound. A
    /// stream path's socket belongs to its connection, which is closed already.
    pub(super) fn release_path(&mut self, id: u64) {
        let Some(path) = self.dialed.remove(&id) else {
            return;
        };
        if let Some((socket, _)) = path.socket {
            self.sockets.remove(&socket);
            self.by_remote.retain(|(s, _), _| *s != socket);
        }
        if let Some(own) = path.own_path {
            // Dropping it removes the file.
            self.unix_paths.retain(|p| p != own.path());
        }
    }

    /// Fails every send and finish parked on `peer` with `error()`.
    pub(super) fn fail_parked(&mut self, peer: PeerId, error: impl Fn() -> NodeError) {
        let keys: Vec<_> = self
            .parked
            .keys()
            .filter(|(p, _)| *p == peer)
            .copied()
            .collect();
        for key in keys {
            for parked in self.parked.remove(&key).unwrap_or_default() {
                let reply = match parked {
                    Parked::Messages { reply, .. } | Parked::Finish { reply } => reply,
                };
                let _ = reply.try_send(Err(error()));
            }
        }
    }

    pub(super) fn retry_parked(&mut self, peer: PeerId, stream: i64) {
        let now = self.now();
        let Some(mut queue) = self.parked.remove(&(peer, stream)) else {
            return;
        };
        while let Some(parked) = queue.pop_front() {
            if parked.is_cancelled() {
                continue;
            }
            match parked {
                Parked::Messages {
                    mut payloads,
                    options,
                    reply,
                } => match self.send_queued(peer, stream, &mut payloads, &options) {
                    Ok(true) => {
                        let _ = reply.try_send(Ok(()));
                    }
                    Ok(false) => {
                        queue.push_front(Parked::Messages {
                            payloads,
                            options,
                            reply,
                        });
                        break;
                    }
                    Err(err) => {
                        let _ = reply.try_send(Err(err));
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

    pub(super) fn redial_due(&mut self, now: Timestamp) {
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
                self.release_path(path);
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
                            self.start_udp_pmtud(now, connection, &remote);
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
                            self.release_path(path);
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
                        if let Address::Shm(name) = &address {
                            let result = crate::shm::dial(name);
                            let _ = net.send(NetInput::ShmRedialed { path, result }).await;
                            return;
                        }
                        let result = tasks::dial_stream(&rt, &address).await;
                        let _ = net.send(NetInput::Redialed { path, result }).await;
                    });
                }
            }
        }
    }

    pub(super) fn finish_closed(&mut self) {
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

    /// Answers the settle waiters that can be answered: settled, or the peer lost
    /// or departed (see [`Driver::departure`]); sends parked on a departed peer
    /// fail too, as their window cannot open.
    pub(super) fn check_waiters(&mut self) {
        let departed: Vec<(PeerId, CloseReason, usize)> = self
            .departed
            .keys()
            .filter_map(|&peer| {
                let reason = self.departure(peer)?.clone();
                let info = self.endpoint.peer_info(peer)?;
                Some((peer, reason, info.send_buffered))
            })
            .collect();
        let departed_error = |peer: PeerId| {
            let (_, reason, bytes) = departed.iter().find(|(p, ..)| *p == peer)?;
            Some(NodeError::PeerDeparted {
                reason: reason.clone(),
                unacknowledged_bytes: *bytes,
            })
        };
        for (peer, ..) in &departed {
            self.fail_parked(*peer, || {
                departed_error(*peer).unwrap_or(NodeError::PeerGone)
            });
        }
        let endpoint = &self.endpoint;
        self.settle_waiters.retain(|(peer, full, reply)| {
            if reply.is_closed() {
                // The caller gave up.
                return false;
            }
            let result = match endpoint.peer_info(*peer) {
                None => Some(Err(NodeError::PeerGone)),
                Some(info) if info.send_buffered == 0 && (!*full || info.streams == 0) => {
                    Some(Ok(()))
                }
                Some(_) => departed_error(*peer).map(Err),
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

    pub(super) fn stats(&self) -> NodeStats {
        let now = self.now();
        let paths = self
            .endpoint
            .connections()
            .filter_map(|connection| {
                let info = self.endpoint.connection_info(connection)?;
                // Closed connections only wait to send their FINISH_CONNECTION.
                if info.state == atbus_core::ConnectionState::Closed {
                    return None;
                }
                let remote = self
                    .conns
                    .get(&connection)
                    .map(|c| c.remote.clone())
                    .unwrap_or_default();
                Some(PathStats {
                    connection,
                    remote,
                    info,
                    windows: self.endpoint.connection_snapshot(connection, now)?,
                })
            })
            .collect();
        NodeStats {
            endpoint: self.endpoint.stats(),
            windows: self.endpoint.snapshot(now),
            paths,
            dropped_datagrams: self.dropped_datagrams + self.input_budget.dropped_datagrams(),
            io_errors: self.io_errors,
            reconnects: self.reconnects,
            backlog_closes: self.backlog_closes,
            evicted_accepts: self.evicted_accepts,
            route_lookups: self.route_lookups,
            buffered_bytes: self.endpoint.buffered_bytes(),
            open_sockets: self.sockets.len() + self.streams.len(),
            queued_events: self.events.len(),
            queued_event_bytes: self.gauge.bytes(),
            queued_input_bytes: self.input_budget.queued(),
            delivery_pauses: self.delivery_pauses,
        }
    }
}
