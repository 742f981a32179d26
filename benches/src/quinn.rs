//! `quinn-proto` (QUIC) as a simulated [`Transport`], with its real TLS 1.3 handshake
//! through rustls (the *ring* provider) and a certificate made by rcgen.
//!
//! Choices, stated once here and in `docs/comparison.md`:
//! - **One unidirectional QUIC stream per atbus stream and direction**: the sender
//!   opens it on its first message and writes the atbus stream number (`u32`, little
//!   endian) first; each message then goes as a `u32` little-endian length and the
//!   payload (QUIC streams are byte streams). QUIC datagrams are unreliable and not
//!   used.
//! - **Defaults** for everything that shapes the comparison: the congestion
//!   controller (Cubic), the flow-control windows, the idle timeout (30 s), ACK
//!   frequency. Only these differ from `TransportConfig::default()`: the MTU is the
//!   path's (`initial_mtu = min_mtu = path MTU`, PLPMTUD off, since the path MTU is
//!   known), segmentation offload is off (one datagram per transmit) and up to
//!   [`MAX_STREAMS`] streams may be open.
//! - **Back-pressure**: a message is taken when the stream has nothing left over from
//!   earlier; what `SendStream::write` does not take at once (flow control) is kept
//!   and written as soon as quinn accepts more, and meanwhile the stream refuses new
//!   messages with [`WouldBlock`]. Before the handshake completes every message is
//!   refused (no 0-RTT), so the first messages wait one round trip and a half.
//! - **Time**: quinn-proto counts [`Instant`]s; virtual time `now` is `base + now`
//!   for one `base` captured by [`pair`] and shared by both sides. Nothing else reads
//!   the clock.
//! - **Randomness**: quinn's endpoints are seeded ([`pair`]'s `seed`), so connection
//!   IDs and quinn's own draws repeat; rustls draws its key shares and randoms from
//!   the system. Those have fixed sizes (X25519, Ed25519 signatures), so the
//!   datagram sizes and therefore the run repeat; only the bytes differ.
//! - **Single path**: QUIC without migration uses path 0; datagrams on other paths
//!   are ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atbus_sim::{PathStats, Received, Transport, TransportStats, WouldBlock};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Streams (per direction) either side may open.
pub const MAX_STREAMS: u32 = 10_000;
/// The name in the server's certificate.
pub const SERVER_NAME: &str = "localhost";
/// Bytes before a message on a stream: its length.
const LENGTH_PREFIX: usize = 4;

/// One QUIC endpoint with at most one connection, under simulation.
pub struct QuinnTransport {
    endpoint: Endpoint,
    /// The connection, once connected (client: from the start; server: once the
    /// client's first Initial arrived).
    connection: Option<(ConnectionHandle, Connection)>,
    /// The other side's (made-up) address; nothing is ever sent to it for real.
    peer: SocketAddr,
    base: Instant,
    mtu: usize,
    connected: bool,
    /// Streams this side sends on, by atbus stream.
    outgoing: BTreeMap<u32, Outgoing>,
    /// Streams this side receives on.
    incoming: HashMap<StreamId, Incoming>,
    transmits: VecDeque<Bytes>,
    received: VecDeque<Received>,
    buf: Vec<u8>,
}

/// A stream this side sends on.
struct Outgoing {
    id: StreamId,
    /// Bytes accepted from the application but not yet taken by quinn.
    unwritten: BytesMut,
}

/// A stream this side receives on.
#[derive(Default)]
struct Incoming {
    /// The atbus stream, once its header arrived.
    stream: Option<u32>,
    /// Bytes read but not yet a whole message.
    buffered: BytesMut,
}

impl std::fmt::Debug for QuinnTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuinnTransport")
            .field("mtu", &self.mtu)
            .field("connected", &self.connected)
            .field("outgoing", &self.outgoing.len())
            .field("incoming", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

/// A self-signed certificate for [`SERVER_NAME`] (ed25519, made by rcgen) and its
/// private key: what the server presents and the client trusts.
///
/// # Panics
/// If rcgen fails to make the key or the certificate (it does not for these inputs).
pub fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .expect("valid name")
        .self_signed(&key)
        .expect("self-signed certificate");
    let cert_der: CertificateDer<'static> = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert_der, key_der)
}

/// A client and a server QUIC endpoint over a path of this MTU, the client's
/// connection already started (its first Initial is the client's first transmit).
///
/// `seed` seeds both endpoints' random generators.
///
/// # Panics
/// If `mtu` is below 1200 bytes (QUIC's minimum) or above 65527, or if rustls
/// refuses the generated certificate (it does not).
pub fn pair(mtu: usize, seed: u64) -> (QuinnTransport, QuinnTransport) {
    let mtu16 = u16::try_from(mtu).expect("a QUIC MTU fits a u16");
    assert!(mtu >= 1200, "QUIC needs datagrams of 1200 bytes or more");
    let (cert_der, key_der) = self_signed();

    let mut transport = TransportConfig::default();
    transport
        .initial_mtu(mtu16)
        .min_mtu(mtu16)
        .mtu_discovery_config(None)
        .enable_segmentation_offload(false)
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS));
    let transport = Arc::new(transport);

    let mut server_config =
        ServerConfig::with_single_cert(vec![cert_der.clone()], key_der).expect("server config");
    server_config.transport_config(transport.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("trust anchor");
    let mut client_config =
        ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client_config.transport_config(transport);

    let endpoint_config = |salt: u8| {
        let mut config = EndpointConfig::default();
        config
            .max_udp_payload_size(mtu16.max(1200))
            .expect("valid UDP payload size");
        let mut rng_seed = [salt; 32];
        rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
        config.rng_seed(Some(rng_seed));
        Arc::new(config)
    };
    let client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 4001));
    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 4002));
    let base = Instant::now();

    let mut client_endpoint = Endpoint::new(endpoint_config(1), None, false, None);
    let connection = client_endpoint
        .connect(base, client_config, server_addr, SERVER_NAME)
        .expect("connect");
    let server_endpoint = Endpoint::new(
        endpoint_config(2),
        Some(Arc::new(server_config)),
        false,
        None,
    );
    let side = |endpoint, connection, peer| QuinnTransport {
        endpoint,
        connection,
        peer,
        base,
        mtu,
        connected: false,
        outgoing: BTreeMap::new(),
        incoming: HashMap::new(),
        transmits: VecDeque::new(),
        received: VecDeque::new(),
        buf: Vec::new(),
    };
    (
        side(client_endpoint, Some(connection), server_addr),
        side(server_endpoint, None, client_addr),
    )
}

impl QuinnTransport {
    fn instant(&self, now: Duration) -> Instant {
        self.base + now
    }

    /// Whether the handshake has completed.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Runs everything the connection has to say after an input: endpoint events,
    /// application events (new streams, readable streams, writable streams).
    fn process(&mut self) {
        let Some((handle, connection)) = self.connection.as_mut() else {
            return;
        };
        let mut readable = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(event) = connection.poll_endpoint_events() {
                progressed = true;
                if let Some(event) = self.endpoint.handle_event(*handle, event) {
                    connection.handle_event(event);
                }
            }
            while let Some(event) = connection.poll() {
                progressed = true;
                match event {
                    Event::Connected => self.connected = true,
                    Event::ConnectionLost { .. } => self.connected = false,
                    Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                        while let Some(id) = connection.streams().accept(Dir::Uni) {
                            self.incoming.entry(id).or_default();
                            readable.push(id);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => readable.push(id),
                    _ => {}
                }
            }
            for id in readable.drain(..) {
                let incoming = self.incoming.entry(id).or_default();
                read_stream(connection, id, incoming, &mut self.received);
            }
            for outgoing in self.outgoing.values_mut() {
                write_unwritten(connection, outgoing);
            }
            if !progressed {
                break;
            }
        }
    }

    fn push_transmit(&mut self, size: usize) {
        self.transmits
            .push_back(Bytes::copy_from_slice(&self.buf[..size]));
    }
}

/// Reads what `id` has and moves every whole message to `received`.
fn read_stream(
    connection: &mut Connection,
    id: StreamId,
    incoming: &mut Incoming,
    received: &mut VecDeque<Received>,
) {
    let mut stream = connection.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return;
    };
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        incoming.buffered.extend_from_slice(&chunk.bytes);
    }
    // Whether to send MAX_STREAM_DATA is quinn's to decide; poll_transmit sends it.
    let _ = chunks.finalize();
    loop {
        let stream = match incoming.stream {
            Some(stream) => stream,
            None if incoming.buffered.len() >= 4 => {
                let stream = incoming.buffered.get_u32_le();
                incoming.stream = Some(stream);
                stream
            }
            None => return,
        };
        if incoming.buffered.len() < LENGTH_PREFIX {
            return;
        }
        let len = u32::from_le_bytes(
            incoming.buffered[..LENGTH_PREFIX]
                .try_into()
                .unwrap_or_default(),
        ) as usize;
        if incoming.buffered.len() < LENGTH_PREFIX + len {
            return;
        }
        incoming.buffered.advance(LENGTH_PREFIX);
        let payload = incoming.buffered.split_to(len).freeze();
        received.push_back(Received { stream, payload });
    }
}

/// Writes as much of `outgoing.unwritten` as quinn takes.
fn write_unwritten(connection: &mut Connection, outgoing: &mut Outgoing) {
    while !outgoing.unwritten.is_empty() {
        match connection
            .send_stream(outgoing.id)
            .write(&outgoing.unwritten)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => outgoing.unwritten.advance(n),
        }
    }
}

impl Transport for QuinnTransport {
    fn send(&mut self, _now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        let Some((_, connection)) = self.connection.as_mut() else {
            return Err(WouldBlock);
        };
        if !self.connected {
            return Err(WouldBlock);
        }
        let outgoing = match self.outgoing.get_mut(&stream) {
            Some(outgoing) => outgoing,
            None => {
                let id = connection.streams().open(Dir::Uni).ok_or(WouldBlock)?;
                let mut unwritten = BytesMut::new();
                unwritten.put_u32_le(stream);
                self.outgoing
                    .entry(stream)
                    .or_insert(Outgoing { id, unwritten })
            }
        };
        write_unwritten(connection, outgoing);
        if !outgoing.unwritten.is_empty() {
            return Err(WouldBlock);
        }
        let len = u32::try_from(payload.len()).map_err(|_| WouldBlock)?;
        outgoing.unwritten.put_u32_le(len);
        outgoing.unwritten.extend_from_slice(&payload);
        write_unwritten(connection, outgoing);
        Ok(())
    }

    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        if path != 0 {
            return;
        }
        let at = self.instant(now);
        self.buf.clear();
        let event = self.endpoint.handle(
            at,
            self.peer,
            None,
            None,
            BytesMut::from(&datagram[..]),
            &mut self.buf,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(_, event)) => {
                if let Some((_, connection)) = self.connection.as_mut() {
                    connection.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.connection.is_some() {
                    self.endpoint.ignore(incoming);
                } else {
                    self.buf.clear();
                    match self.endpoint.accept(incoming, at, &mut self.buf, None) {
                        Ok(connection) => self.connection = Some(connection),
                        Err(error) => {
                            if let Some(transmit) = error.response {
                                self.push_transmit(transmit.size);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => self.push_transmit(transmit.size),
            None => {}
        }
        self.process();
    }

    fn handle_timeout(&mut self, now: Duration) {
        let at = self.instant(now);
        if let Some((_, connection)) = self.connection.as_mut() {
            connection.handle_timeout(at);
        }
        self.process();
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        if let Some(datagram) = self.transmits.pop_front() {
            return Some((0, datagram));
        }
        let at = self.instant(now);
        let (_, connection) = self.connection.as_mut()?;
        self.buf.clear();
        let transmit = connection.poll_transmit(at, 1, &mut self.buf)?;
        let datagram = Bytes::copy_from_slice(&self.buf[..transmit.size]);
        // Sending may have produced endpoint events (retired connection IDs).
        self.process();
        Some((0, datagram))
    }

    fn poll_received(&mut self) -> Option<Received> {
        self.received.pop_front()
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        let (_, connection) = self.connection.as_mut()?;
        let at = connection.poll_timeout()?;
        Some(at.saturating_duration_since(self.base))
    }

    fn stats(&self) -> TransportStats {
        let path = self
            .connection
            .as_ref()
            .map(|(_, connection)| connection.stats());
        let sent_bytes = path.as_ref().map_or(0, |s| s.udp_tx.bytes);
        let path = path.map(|s| s.path);
        TransportStats {
            paths: vec![match path {
                Some(path) => PathStats {
                    mtu: usize::from(path.current_mtu),
                    srtt: path.rtt,
                    sent_packets: path.sent_packets,
                    lost_packets: path.lost_packets,
                    // quinn retransmits frames, not packets, and does not count them.
                    retransmits: 0,
                    spurious_retransmits: 0,
                    congestion_window: usize::try_from(path.cwnd).unwrap_or(usize::MAX),
                    sent_bytes,
                },
                None => PathStats {
                    mtu: self.mtu,
                    ..PathStats::default()
                },
            }],
            skipped: 0,
        }
    }
}
