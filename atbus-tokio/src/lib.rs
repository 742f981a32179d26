//! atbus on the tokio runtime: UDP (IPv4 and IPv6), TCP, Unix stream and Unix
//! datagram sockets.
//!
//! The node, its driver and its addresses live in `atbus-node` and are shared with
//! `atbus-smol`; this crate only provides sockets, timers and spawning
//! ([`TokioRuntime`]). [`Node`] has the same API on both runtimes.
//!
//! ```no_run
//! use atbus_tokio::{Address, Node, NodeConfig, SendOptions};
//! # async fn example() -> Result<(), atbus_tokio::NodeError> {
//! let server = Node::bind(NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap())).await?;
//! let client = Node::bind(NodeConfig::new("client")).await?;
//! let peer = client.connect(server.local_addresses()).await?;
//! client.send(peer, 1, bytes::Bytes::from_static(b"hello"), SendOptions::default()).await?;
//! let event = server.recv().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::unix::net::{UnixDatagram as StdUnixDatagram, UnixListener as StdUnixListener};
use std::path::PathBuf;
use std::time::Instant;

use atbus_node::runtime::{
    DatagramSocket, Remote, Runtime, StreamListener, StreamRead, StreamWrite, contiguous,
};
use atbus_node::udp::{RecvScratch, UdpBatching};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream};

/// OpenTelemetry metrics of a node (the `otel` feature); see [`atbus_node::otel`].
#[cfg(feature = "otel")]
pub use atbus_node::otel;
pub use atbus_node::{
    Address, AddressError, CloseCode, CloseReason, CommandId, ConnectionId, Event, NodeConfig,
    NodeError, NodeStats, PathStats, PeerId, ReceivedMessage, Scheduler, SendError, SendOptions,
};

/// A node on tokio. Dereferences to the runtime-neutral [`atbus_node::Node`], whose
/// methods (`connect`, `send`, `recv`, `stats`, `close`, ...) it offers.
#[derive(Debug)]
pub struct Node(atbus_node::Node);

impl Node {
    /// Binds the listen addresses of `config` and starts the node's I/O task on the
    /// current tokio runtime (or on a thread of its own with
    /// [`NodeConfig::dedicated_thread`]). Must be called inside a tokio runtime.
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        atbus_node::Node::start(config, TokioRuntime::current()).map(Node)
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

/// [`Runtime`] for tokio: a handle of the runtime the node's tasks run on.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime of the current context.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn current() -> Self {
        TokioRuntime {
            handle: tokio::runtime::Handle::current(),
        }
    }
}

/// A UDP or Unix datagram socket on tokio.
#[derive(Debug)]
pub enum TokioDatagram {
    /// UDP, with batched system calls (`recvmmsg`, GRO, GSO).
    Udp(UdpSocket, UdpBatching),
    /// Unix datagram.
    Unix(UnixDatagram),
}

/// Datagrams taken from a Unix datagram socket in one batch.
const UNIX_BATCH: usize = 64;

fn unix_remote(addr: tokio::net::unix::SocketAddr) -> Remote {
    match addr.as_pathname() {
        Some(path) => Remote::Unix(path.to_path_buf()),
        None => Remote::UnixUnnamed,
    }
}

fn wrong_family() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "address family mismatch")
}

impl DatagramSocket for TokioDatagram {
    async fn recv_batch(
        &self,
        scratch: &mut RecvScratch,
        out: &mut Vec<(Remote, Bytes)>,
    ) -> io::Result<()> {
        match self {
            TokioDatagram::Udp(s, batching) => loop {
                s.readable().await?;
                match s.try_io(Interest::READABLE, || batching.try_recv(s, scratch, out)) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            },
            TokioDatagram::Unix(s) => {
                let buf = scratch.first_buffer();
                let (n, from) = s.recv_from(buf).await?;
                out.push((unix_remote(from), Bytes::copy_from_slice(&buf[..n])));
                while out.len() < UNIX_BATCH {
                    match s.try_recv_from(buf) {
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
            TokioDatagram::Udp(_, batching) => batching.max_segments(),
            TokioDatagram::Unix(_) => 1,
        }
    }

    fn try_send(&self, to: &Remote, parts: &[&[u8]], segment_size: usize) -> io::Result<()> {
        match (self, to) {
            (TokioDatagram::Udp(s, batching), Remote::Ip(a)) => s
                .try_io(Interest::WRITABLE, || {
                    batching.try_send(s, *a, parts, segment_size)
                }),
            (TokioDatagram::Unix(s), Remote::Unix(p)) => {
                s.try_send_to(&contiguous(parts), p).map(|_| ())
            }
            _ => Err(wrong_family()),
        }
    }
}

/// The reading half of a TCP or Unix stream on tokio.
#[derive(Debug)]
pub enum TokioReader {
    /// TCP.
    Tcp(tokio::net::tcp::OwnedReadHalf),
    /// Unix stream.
    Unix(tokio::net::unix::OwnedReadHalf),
}

/// The writing half of a TCP or Unix stream on tokio.
#[derive(Debug)]
pub enum TokioWriter {
    /// TCP.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// Unix stream.
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl StreamRead for TokioReader {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TokioReader::Tcp(r) => r.read(buf).await,
            TokioReader::Unix(r) => r.read(buf).await,
        }
    }
}

impl StreamWrite for TokioWriter {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            TokioWriter::Tcp(w) => w.write_all(buf).await,
            TokioWriter::Unix(w) => w.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            TokioWriter::Tcp(w) => w.shutdown().await,
            TokioWriter::Unix(w) => w.shutdown().await,
        }
    }
}

fn split_tcp(stream: TcpStream) -> (TokioReader, TokioWriter) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    (TokioReader::Tcp(r), TokioWriter::Tcp(w))
}

fn split_unix(stream: UnixStream) -> (TokioReader, TokioWriter) {
    let (r, w) = stream.into_split();
    (TokioReader::Unix(r), TokioWriter::Unix(w))
}

/// A TCP or Unix stream listener on tokio.
#[derive(Debug)]
pub enum TokioListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream.
    Unix(UnixListener, PathBuf),
}

impl StreamListener for TokioListener {
    type Reader = TokioReader;
    type Writer = TokioWriter;

    async fn accept(&self) -> io::Result<(TokioReader, TokioWriter, String)> {
        match self {
            TokioListener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                let (r, w) = split_tcp(stream);
                Ok((r, w, format!("tcp://{remote}")))
            }
            TokioListener::Unix(l, path) => {
                let (stream, _) = l.accept().await?;
                let (r, w) = split_unix(stream);
                Ok((r, w, format!("unix://{} (accepted)", path.display())))
            }
        }
    }
}

impl Runtime for TokioRuntime {
    type Datagram = TokioDatagram;
    type Reader = TokioReader;
    type Writer = TokioWriter;
    type Listener = TokioListener;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let _guard = self.handle.enter();
        tokio::time::sleep_until(deadline.into())
    }

    fn udp(&self, socket: std::net::UdpSocket) -> io::Result<TokioDatagram> {
        let _guard = self.handle.enter();
        let batching = UdpBatching::new(&socket)?;
        UdpSocket::from_std(socket).map(|s| TokioDatagram::Udp(s, batching))
    }

    fn unix_datagram(&self, socket: StdUnixDatagram) -> io::Result<TokioDatagram> {
        let _guard = self.handle.enter();
        UnixDatagram::from_std(socket).map(TokioDatagram::Unix)
    }

    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<TokioListener> {
        let _guard = self.handle.enter();
        TcpListener::from_std(listener).map(TokioListener::Tcp)
    }

    fn unix_listener(&self, listener: StdUnixListener) -> io::Result<TokioListener> {
        let _guard = self.handle.enter();
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        UnixListener::from_std(listener).map(|l| TokioListener::Unix(l, path))
    }

    #[allow(clippy::manual_async_fn)] // the future must not borrow `self`
    fn connect_tcp(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = io::Result<(TokioReader, TokioWriter)>> + Send + 'static {
        async move { TcpStream::connect(address).await.map(split_tcp) }
    }

    #[allow(clippy::manual_async_fn)] // the future must not borrow `self`
    fn connect_unix(
        &self,
        path: PathBuf,
    ) -> impl Future<Output = io::Result<(TokioReader, TokioWriter)>> + Send + 'static {
        async move { UnixStream::connect(path).await.map(split_unix) }
    }

    fn spawn_dedicated<F, Fut>(&self, make: F) -> io::Result<()>
    where
        F: FnOnce(Self) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("atbus-io".into())
            .spawn(move || {
                let rt = TokioRuntime {
                    handle: runtime.handle().clone(),
                };
                runtime.block_on(make(rt));
            })?;
        Ok(())
    }
}
