//! atbus itself as a simulated [`Transport`]: an [`atbus_core::Endpoint`] with one
//! datagram connection per path.
//!
//! The client connects on path 0 and adds a connection on every further path (the
//! server sees one hello per path from the same session and binds them all to one
//! peer). Like a runtime adapter, the transport reconnects a path whose connection
//! closed (idle timeout after a long outage or loss burst): the client sends a new
//! hello from the "same socket", the server accepts it on the same path, and the
//! streams continue where they were. Virtual time maps to [`Timestamp`]s offset by one second, because a
//! timepoint of 0 means "absent" on the wire.

use std::collections::VecDeque;
use std::time::Duration;

use atbus_core::connection::pmtud::{IPV4_BASE, PmtudConfig};
use atbus_core::{
    ConnectionId, ConnectionKind, Endpoint, EndpointConfig, Event, Input, Output, PeerId,
    SendError, SendOptions, Timestamp,
};
use bytes::Bytes;

use crate::transport::{PathStats, Received, Transport, TransportStats, WouldBlock};

/// Offset of virtual time zero in endpoint timestamps.
const EPOCH: Duration = Duration::from_secs(1);

fn stamp(now: Duration) -> Timestamp {
    Timestamp::from_duration(now + EPOCH)
}

/// One atbus endpoint under simulation.
#[derive(Debug)]
pub struct AtbusTransport {
    endpoint: Endpoint,
    /// Connection of each path.
    paths: Vec<ConnectionId>,
    mtus: Vec<usize>,
    /// Round-robin weight of each path (kept across reconnections).
    weights: Vec<u32>,
    /// PMTUD of each path (on: `mtus` holds its base).
    pmtud: Vec<Option<PmtudConfig>>,
    peer: Option<PeerId>,
    /// Whether this side initiates (and so re-initiates) the connections.
    client: bool,
    /// The latest virtual time seen.
    now: Duration,
    /// Connections replaced after they closed.
    reconnects: u64,
    transmits: VecDeque<(usize, Bytes)>,
    received: VecDeque<Received>,
    /// Events other than messages, for tests and the CLI's verbose mode.
    events: Vec<Event>,
}

/// A client and a server endpoint over paths of these MTUs, with default
/// configurations (node names "client" and "server").
pub fn pair(mtus: &[usize]) -> (AtbusTransport, AtbusTransport) {
    pair_with(
        mtus,
        EndpointConfig::new("client", 1),
        EndpointConfig::new("server", 2),
    )
}

/// [`pair`] with both endpoints spreading data over the paths by `scheduler`.
pub fn pair_scheduled(
    mtus: &[usize],
    scheduler: atbus_core::Scheduler,
) -> (AtbusTransport, AtbusTransport) {
    let mut client = EndpointConfig::new("client", 1);
    client.scheduler = scheduler;
    let mut server = EndpointConfig::new("server", 2);
    server.scheduler = scheduler;
    pair_with(mtus, client, server)
}

/// A client and a server endpoint over paths of these MTUs, with the given
/// configurations.
///
/// # Panics
/// If `mtus` is empty or an MTU is below [`atbus_core::config::MIN_MTU`].
pub fn pair_with(
    mtus: &[usize],
    client: EndpointConfig,
    server: EndpointConfig,
) -> (AtbusTransport, AtbusTransport) {
    assert!(!mtus.is_empty(), "at least one path");
    let now = stamp(Duration::ZERO);
    let mut c = Endpoint::new(client);
    let mut s = Endpoint::new(server);
    let mut client_paths = Vec::new();
    let mut server_paths = Vec::new();
    let mut peer = None;
    for &mtu in mtus {
        let kind = ConnectionKind::Datagram { mtu };
        let connection = match peer {
            None => {
                let (p, connection) = c.connect(now, kind).expect("valid MTU");
                peer = Some(p);
                connection
            }
            Some(p) => c.add_connection(now, p, kind).expect("valid MTU"),
        };
        client_paths.push(connection);
        server_paths.push(s.accept(now, kind).expect("valid MTU"));
    }
    let make = |endpoint, paths, peer, client| AtbusTransport {
        endpoint,
        paths,
        mtus: mtus.to_vec(),
        weights: Vec::new(),
        pmtud: vec![None; mtus.len()],
        peer,
        client,
        now: Duration::ZERO,
        reconnects: 0,
        transmits: VecDeque::new(),
        received: VecDeque::new(),
        events: Vec::new(),
    };
    (
        make(c, client_paths, peer, true),
        make(s, server_paths, None, false),
    )
}

/// A client and a server endpoint over these links, both spreading data by
/// `scheduler`. A path whose link has `pmtud` on starts at the IPv4 base (548
/// bytes, or the link's MTU if smaller) on both sides and discovers the link's
/// MTU up to 1452 (RFC 8899, [`PmtudConfig::default`]); the others use the link's
/// MTU.
///
/// # Panics
/// If `links` is empty or an MTU is below [`atbus_core::config::MIN_MTU`].
pub fn pair_for_links(
    links: &[crate::LinkConfig],
    scheduler: atbus_core::Scheduler,
) -> (AtbusTransport, AtbusTransport) {
    let mtus: Vec<usize> = links.iter().map(|l| l.mtu).collect();
    let (mut client, mut server) = pair_scheduled(&mtus, scheduler);
    enable_pmtud(links, &mut client, &mut server);
    (client, server)
}

/// Turns PMTUD on, on both sides, for the paths whose link says `pmtud=on`:
/// they start at the IPv4 base (or the link's MTU if smaller).
pub fn enable_pmtud(
    links: &[crate::LinkConfig],
    client: &mut AtbusTransport,
    server: &mut AtbusTransport,
) {
    for (path, link) in links.iter().enumerate() {
        if link.pmtud {
            let config = PmtudConfig {
                base: link.mtu.min(IPV4_BASE),
                ..PmtudConfig::default()
            };
            for side in [&mut *client, &mut *server] {
                side.set_pmtud(path, Some(config));
            }
        }
    }
}

impl AtbusTransport {
    /// Turns PMTUD on (or off) for `path`, now and on its reconnections (see
    /// [`Endpoint::set_pmtud`]: the path's MTU becomes `config.base`).
    pub fn set_pmtud(&mut self, path: usize, config: Option<PmtudConfig>) {
        if let (Some(slot), Some(&connection)) = (self.pmtud.get_mut(path), self.paths.get(path)) {
            *slot = config;
            self.endpoint.set_pmtud(stamp(self.now), connection, config);
        }
    }

    /// The endpoint, for inspection.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sets the weight of each path under the round-robin scheduler, in path
    /// order (see [`Endpoint::set_connection_weight`]); missing entries keep
    /// weight 1, extra ones are ignored.
    pub fn set_path_weights(&mut self, weights: &[u32]) {
        self.weights = weights.to_vec();
        for (&connection, &weight) in self.paths.iter().zip(weights) {
            // Every path's connection exists from construction on.
            let _ = self.endpoint.set_connection_weight(connection, weight);
        }
    }

    /// How many times a closed connection was replaced by a new one.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Events other than delivered messages seen so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    fn drain(&mut self) {
        loop {
            match self.endpoint.poll_output() {
                Output::Transmit(t) => {
                    if let Some(path) = self.paths.iter().position(|&c| c == t.connection) {
                        self.transmits.push_back((path, t.data));
                    }
                }
                Output::Event(Event::Message {
                    stream, message, ..
                }) => self.received.push_back(Received {
                    stream: u32::try_from(stream).unwrap_or(u32::MAX),
                    payload: message.payload,
                }),
                Output::Event(Event::Messages {
                    stream, payloads, ..
                }) => self
                    .received
                    .extend(payloads.into_iter().map(|payload| Received {
                        stream: u32::try_from(stream).unwrap_or(u32::MAX),
                        payload,
                    })),
                Output::Event(event) => {
                    match &event {
                        Event::PeerConnected { peer, .. } => self.peer = Some(*peer),
                        Event::PeerLost { peer, .. } if self.peer == Some(*peer) => {
                            self.peer = None;
                        }
                        Event::ConnectionClosed { connection, .. } => {
                            self.reconnect(*connection);
                        }
                        _ => {}
                    }
                    self.events.push(event);
                }
                Output::Timeout(_) => break,
            }
        }
    }
}

impl AtbusTransport {
    /// Replaces the closed connection of a path, as an adapter would.
    fn reconnect(&mut self, closed: ConnectionId) {
        let Some(path) = self.paths.iter().position(|&c| c == closed) else {
            return;
        };
        let now = stamp(self.now);
        let kind = ConnectionKind::Datagram {
            mtu: self.mtus[path],
        };
        let replacement = if !self.client {
            self.endpoint.accept(now, kind).ok()
        } else if let Some(peer) = self.peer {
            self.endpoint.add_connection(now, peer, kind).ok()
        } else {
            self.endpoint.connect(now, kind).ok().map(|(peer, c)| {
                self.peer = Some(peer);
                c
            })
        };
        if let Some(connection) = replacement {
            if let Some(&weight) = self.weights.get(path) {
                let _ = self.endpoint.set_connection_weight(connection, weight);
            }
            self.paths[path] = connection;
            self.reconnects += 1;
            self.endpoint.set_pmtud(now, connection, self.pmtud[path]);
        }
    }
}

impl Transport for AtbusTransport {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.now = self.now.max(now);
        let Some(peer) = self.peer else {
            return Err(WouldBlock);
        };
        match self.endpoint.send(
            stamp(now),
            peer,
            i64::from(stream),
            payload,
            &SendOptions::default(),
        ) {
            Ok(()) => Ok(()),
            Err(SendError::WouldBlock) => Err(WouldBlock),
            // The simulator only sends what the endpoint accepts; anything else
            // (a lost peer) leaves the message with the driver, which retries it.
            Err(_) => Err(WouldBlock),
        }
    }

    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.now = self.now.max(now);
        let Some(&connection) = self.paths.get(path) else {
            return;
        };
        self.endpoint.handle_input(
            stamp(now),
            Input::Datagram {
                connection,
                data: datagram,
            },
        );
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        self.endpoint.handle_timeout(stamp(now));
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.now = self.now.max(now);
        if self.transmits.is_empty() {
            self.drain();
        }
        self.transmits.pop_front()
    }

    fn poll_received(&mut self) -> Option<Received> {
        if self.received.is_empty() {
            self.drain();
        }
        self.received.pop_front()
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        let at = self.endpoint.next_timeout();
        (at != Timestamp::NEVER).then(|| at.saturating_since(stamp(Duration::ZERO)))
    }

    fn snapshot(&self, now: Duration) -> Option<atbus_core::stats::StatsSnapshot> {
        Some(self.endpoint.snapshot(stamp(now)))
    }

    fn stats(&self) -> TransportStats {
        let paths = self
            .paths
            .iter()
            .zip(&self.mtus)
            .map(
                |(&connection, &mtu)| match self.endpoint.connection_info(connection) {
                    Some(info) => PathStats {
                        mtu: info.mtu,
                        srtt: info.srtt,
                        sent_packets: info.stats.sent_packets,
                        lost_packets: info.stats.lost_packets,
                        retransmits: info.stats.retransmits,
                        spurious_retransmits: info.stats.spurious_retransmits,
                        congestion_window: info.congestion_window,
                        sent_bytes: info.stats.sent_bytes,
                    },
                    None => PathStats {
                        mtu,
                        ..PathStats::default()
                    },
                },
            )
            .collect();
        TransportStats {
            paths,
            skipped: self.endpoint.stats().skipped_messages,
        }
    }
}
