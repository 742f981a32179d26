//! What a runtime adapter provides: spawning, a timer, and sockets made from
//! bound standard-library sockets. Everything else (the driver, the node handle) is
//! written once, in this crate, against these traits.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;

use crate::udp::RecvScratch;

/// The source or destination of a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    /// An IP socket address (UDP).
    Ip(SocketAddr),
    /// A bound Unix datagram socket.
    Unix(PathBuf),
    /// An unbound Unix datagram socket: it cannot be answered.
    UnixUnnamed,
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Ip(a) => write!(f, "{a}"),
            Remote::Unix(p) => write!(f, "{}", p.display()),
            Remote::UnixUnnamed => f.write_str("(unnamed)"),
        }
    }
}

/// A datagram socket (UDP or Unix datagram) registered with the runtime.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Waits until datagrams are ready, then appends every ready one (one batch:
    /// `recvmmsg` and GRO on UDP) to `out`.
    fn recv_batch<'a>(
        &'a self,
        scratch: &'a mut RecvScratch,
        out: &'a mut Vec<(Remote, Bytes)>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
    /// Datagrams one [`DatagramSocket::try_send`] may carry (GSO segments); 1
    /// without GSO.
    fn max_segments(&self) -> usize;
    /// Sends the concatenation of `parts` to `to` as datagrams of `segment_size`
    /// bytes (the last may be shorter) if the socket has room (`WouldBlock`
    /// otherwise). UDP sockets hand the parts to the kernel as they are
    /// ([`UdpBatching::try_send`](crate::udp::UdpBatching::try_send)).
    fn try_send(&self, to: &Remote, parts: &[&[u8]], segment_size: usize) -> io::Result<()>;
}

/// The concatenation of `parts`, borrowed when there is one (for sockets that
/// take one buffer per send, e.g. Unix datagram sockets).
pub fn contiguous<'a>(parts: &[&'a [u8]]) -> std::borrow::Cow<'a, [u8]> {
    match parts {
        [one] => std::borrow::Cow::Borrowed(one),
        _ => std::borrow::Cow::Owned(parts.concat()),
    }
}

/// The reading half of a byte stream (TCP, Unix stream).
pub trait StreamRead: Send + 'static {
    /// Reads some bytes; 0 at the end of the stream.
    fn read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

/// The writing half of a byte stream.
pub trait StreamWrite: Send + 'static {
    /// Writes all of `buf`.
    fn write_all<'a>(
        &'a mut self,
        buf: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
    /// Flushes and shuts the writing direction down.
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

/// A listening stream socket.
pub trait StreamListener: Send + Sync + 'static {
    /// Reading half of accepted streams.
    type Reader: StreamRead;
    /// Writing half of accepted streams.
    type Writer: StreamWrite;
    /// Waits for a connection; returns its halves and a description of the remote.
    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer, String)>> + Send + '_;
}

/// A runtime adapter: tokio, smol, or anything that can spawn, sleep and poll sockets.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Datagram sockets.
    type Datagram: DatagramSocket;
    /// Reading halves of streams.
    type Reader: StreamRead;
    /// Writing halves of streams.
    type Writer: StreamWrite;
    /// Stream listeners.
    type Listener: StreamListener<Reader = Self::Reader, Writer = Self::Writer>;

    /// Runs a task in the background.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;
    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;
    /// Registers a bound UDP socket (called inside the runtime).
    fn udp(&self, socket: std::net::UdpSocket) -> io::Result<Self::Datagram>;
    /// Registers a bound Unix datagram socket.
    fn unix_datagram(&self, socket: UnixDatagram) -> io::Result<Self::Datagram>;
    /// Registers a listening TCP socket.
    fn tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Registers a listening Unix stream socket.
    fn unix_listener(&self, listener: UnixListener) -> io::Result<Self::Listener>;
    /// Dials a TCP address.
    fn connect_tcp(
        &self,
        address: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send + 'static;
    /// Dials a Unix stream socket.
    fn connect_unix(
        &self,
        path: PathBuf,
    ) -> impl Future<Output = io::Result<(Self::Reader, Self::Writer)>> + Send + 'static;
    /// Runs `future` to completion on a new thread with a runtime of its own (the
    /// dedicated I/O thread option); the runtime handle given to `make` belongs to it.
    fn spawn_dedicated<F, Fut>(&self, make: F) -> io::Result<()>
    where
        F: FnOnce(Self) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static;
}
