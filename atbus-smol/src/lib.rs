//! atbus on the smol runtime (async-io / async-net): the same API as `atbus-tokio`.
//!
//! The node, its driver and its addresses live in `atbus-node` and are shared with
//! `atbus-tokio`; this crate only provides sockets, timers and spawning
//! ([`SmolRuntime`]). Tasks run on smol's global executor.
//!
//! ```no_run
//! use atbus_smol::{Node, NodeConfig, SendOptions};
//! # async fn example() -> Result<(), atbus_smol::NodeError> {
//! let server = Node::bind(NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap())).await?;
//! let client = Node::bind(NodeConfig::new("client")).await?;
//! let peer = client.connect(server.local_addresses()).await?;
//! client.send(peer, 1, bytes::Bytes::from_static(b"hello"), SendOptions::default()).await?;
//! let event = server.recv().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::Deref;
use std::os::unix::net::{UnixDatagram, UnixListener as StdUnixListener};
use std::path::PathBuf;
use std::time::Instant;

use atbus_node::runtime::{
    DatagramSocket, Remote, Runtime, StreamListener, StreamRead, StreamWrite, contiguous,
};
use atbus_node::udp::{RecvScratch, UdpBatching};
use bytes::Bytes;
use smol::Async;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::unix::{UnixListener, UnixStream};
use smol::net::{TcpListener, TcpStream};

/// OpenTelemetry metrics of a node (the `otel` feature); see [`atbus_node::otel`].
#[cfg(feature = "otel")]
pub use atbus_node::otel;
pub use atbus_node::{
    Address, AddressError, CloseCode, CloseReason, CommandId, ConnectionId, Event, NodeConfig,
    NodeError, NodeStats, PathStats, PeerId, ReceivedMessage, Scheduler, SendError, SendOptions,
};

/// A node on smol. Dereferences to the runtime-neutral [`atbus_node::Node`], whose
/// methods (`connect`, `send`, `recv`, `stats`, `close`, ...) it offers.
#[derive(Debug)]
pub struct Node(atbus_node::Node);

impl Node {
    /// Binds the listen addresses of `config` and starts the node's I/O task on
    /// smol's global executor (or on a thread of its own with
    /// [`NodeConfig::dedicated_thread`]).
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        atbus_node::Node::start(config, SmolRuntime).map(Node)
    }

    /// The runtime-neutral node.
    pub fn into_inner(self) -> atbus_node::Node {
        self.0
    }
}

impl Deref for Node {
    type Target = atbus_node::Node;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// [`Runtime`] for smol: async-io's reactor and smol's global executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

/// A UDP or Unix datagram socket on async-io.
#[derive(Debug)]
pub enum SmolDatagram {
    /// UDP, with batched system calls (`recvmmsg`, GRO, GSO).
    Udp(Async<std::net::UdpSocket>, UdpBatching),
    /// Unix datagram.
    Unix(Async<UnixDatagram>),
}

/// Datagrams taken from a Unix datagram socket in one batch.
const UNIX_BATCH: usize = 64;

fn unix_remote(addr: std::os::unix::net::SocketAddr) -> Remote {
    match addr.as_pathname() {
        Some(path) => Remote::Unix(path.to_path_buf()),
        None => Remote::UnixUnnamed,
    }
}

impl DatagramSocket for SmolDatagram {
    async fn recv_batch(
        &self,
        scratch: &mut RecvScratch,
        out: &mut Vec<(Remote, Bytes)>,
    ) -> io::Result<()> {
        match self {
            SmolDatagram::Udp(s, batching) => {
                s.read_with(|inner| batching.try_recv(inner, scratch, out))
                    .await
            }
            SmolDatagram::Unix(s) => {
                let buf = scratch.first_buffer();
                let (n, from) = s.recv_from(buf).await?;
                out.push((unix_remote(from), Bytes::copy_from_slice(&buf[..n])));
                // Async::new made the socket non-blocking.
                while out.len() < UNIX_BATCH {
                    match s.get_ref().recv_from(buf) {
                        Ok((n, from)) => {
                            out.push((unix_remote(from), Bytes::copy_from_slice(&buf[..n])))
                        }
                        Err(_) => break,
                    }
                }
                Ok(())
            }
        }
    }

    fn max_segments(&self) -> usize {
        match self {
            SmolDatagram::Udp(_, batching) => batching.max_segments(),
            SmolDatagram::Unix(_) => 1,
        }
    }

    fn try_send(&self, to: &Remote, parts: &[&[u8]], segment_size: usize) -> io::Result<()> {
        match (self, to) {
            (SmolDatagram::Udp(s, batching), Remote::Ip(a)) => {
                batching.try_send(s.get_ref(), *a, parts, segment_size)
            }
            (SmolDatagram::Unix(s), Remote::Unix(p)) => {
                s.get_ref().send_to(&contiguous(parts), p).map(|_| ())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family mismatch",
            )),
        }
    }
}

/// One half of a TCP or Unix stream on async-net (the handles are shared clones).
#[derive(Debug, Clone)]
pub enum SmolStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream.
    Unix(UnixStream),
}

impl StreamRead for SmolStream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SmolStream::Tcp(s) => s.read(buf).await,
            SmolStream::Unix(s) => s.read(buf).await,
        }
    }
}

impl StreamWrite for SmolStream {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            SmolStream::Tcp(s) => s.write_all(buf).await,
            SmolStream::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            SmolStream::Tcp(s) => {
                s.flush().await?;
                s.shutdown(Shutdown::Write)
            }
            SmolStream::Unix(s) => {
                s.flush().await?;
                s.shutdown(Shutdown::Write)
            }
        }
    }
}

fn split(stream: SmolStream) -> (SmolStream, SmolStream) {
    if let SmolStream::Tcp(s) = &stream {
        let _ = s.set_nodelay(true);
    }
    (stream.clone(), stream)
}

/// A TCP or Unix stream listener on async-net.
#[derive(Debug)]
pub enum SmolListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream.
    Unix(UnixListener, PathBuf),
}

impl StreamListener for SmolListener {
    type Reader = SmolStream;
    type Writer = SmolStream;

    async fn accept(&self) -> io::Result<(SmolStream, SmolStream, String)> {
        match self {
            SmolListener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                let (r, w) = split(SmolStream::Tcp(stream));
                Ok((r, w, format!("tcp://{remote}")))
            }
            SmolListener::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                let (r, w) = split(SmolStream::Unix(stream));
                Ok((r, w, format!("unix://{} (accepted)", path.display())))
            }
        }
    }
}

impl Runtime for SmolRuntime {
    type Datagram = SmolDatagram;
    type Reader = SmolStream;
    type Writer = SmolStream;
    type Listener = SmolListener;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(future).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let timer = smol::Timer::at(deadline);
        async move {
            timer.await;
        }
    }

    fn udp(&self, socket: std::net::UdpSocket) -> io::Result<SmolDatagram> {
        let batching = UdpBatching::new(&socket)?;
        Async::new(socket).map(|s| SmolDatagram::Udp(s, batching))
    }

    fn unix_datagram(&self, socket: UnixDatagram) -> io::Result<SmolDatagram> {
        Async::new(socket).map(SmolDatagram::Unix)
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<SmolListener> {
        TcpListener::try_from(listener).map(SmolListener::Tcp)
    }

    fn unix_listener(&self, listener: StdUnixListener) -> io::Result<SmolListener> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        UnixListener::try_from(listener).map(|l| SmolListener::Unix(l, path))
    }

    #[allow(clippy::manual_async_fn)] // the future must not borrow `self`
    fn connect_tcp(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = io::Result<(SmolStream, SmolStream)>> + Send + 'static {
        async move {
            TcpStream::connect(address)
                .await
                .map(|s| split(SmolStream::Tcp(s)))
        }
    }

    #[allow(clippy::manual_async_fn)] // the future must not borrow `self`
    fn connect_unix(
        &self,
        path: PathBuf,
    ) -> impl Future<Output = io::Result<(SmolStream, SmolStream)>> + Send + 'static {
        async move {
            UnixStream::connect(path)
                .await
                .map(|s| split(SmolStream::Unix(s)))
        }
    }

    fn spawn_dedicated<F, Fut>(&self, make: F) -> io::Result<()>
    where
        F: FnOnce(Self) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        std::thread::Builder::new()
            .name("atbus-io".into())
            .spawn(move || smol::block_on(make(SmolRuntime)))?;
        Ok(())
    }
}
