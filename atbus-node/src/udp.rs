//! Batched UDP system calls through `quinn-udp`: `recvmmsg` with GRO on receive,
//! GSO (one `sendmsg` carrying many equal-size datagrams) on send. The adapters call
//! these inside their runtime's readiness wrappers.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use atbus_core::connection::pmtud::{IPV4_BASE, IPV6_BASE, PmtudConfig};
use bytes::Bytes;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::runtime::Remote;

/// Receive buffers of one socket (owned by its reader task).
pub struct RecvScratch {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

/// Bytes of one receive buffer: room for a GRO-coalesced run of datagrams.
const RECV_BUFFER: usize = 64 * 1024;
/// Receive buffers per system call (at most quinn-udp's batch size).
const RECV_BUFFERS: usize = 16;

impl RecvScratch {
    /// Buffers for one `recvmmsg`.
    pub fn new() -> Self {
        let n = RECV_BUFFERS.clamp(1, quinn_udp::BATCH_SIZE.max(1));
        RecvScratch {
            bufs: vec![vec![0u8; RECV_BUFFER]; n],
            meta: vec![RecvMeta::default(); n],
        }
    }

    /// One plain buffer, for sockets without batching (Unix datagram).
    pub fn first_buffer(&mut self) -> &mut [u8] {
        &mut self.bufs[0]
    }
}

impl Default for RecvScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The batching state of one UDP socket.
#[derive(Debug)]
pub struct UdpBatching {
    state: UdpSocketState,
}

impl UdpBatching {
    /// Probes the socket's offloads (GSO, GRO), sets the options batching needs and
    /// asks for socket buffers of [`SOCKET_BUFFER`] bytes (see [`grow_buffers`]).
    pub fn new(socket: &std::net::UdpSocket) -> io::Result<Self> {
        grow_buffers(socket, SOCKET_BUFFER);
        Ok(UdpBatching {
            state: UdpSocketState::new(socket.into())?,
        })
    }

    /// Datagrams one [`UdpBatching::try_send`] may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Receives every datagram ready (one `recvmmsg`, GRO runs split into their
    /// datagrams) and appends them to `out`; `WouldBlock` when none is ready.
    pub fn try_recv<'a>(
        &self,
        socket: impl Into<UdpSockRef<'a>>,
        scratch: &mut RecvScratch,
        out: &mut Vec<(Remote, Bytes)>,
    ) -> io::Result<()> {
        let mut slices: Vec<IoSliceMut<'_>> = scratch
            .bufs
            .iter_mut()
            .map(|b| IoSliceMut::new(b.as_mut_slice()))
            .collect();
        let n = self
            .state
            .recv(socket.into(), &mut slices, &mut scratch.meta)?;
        for (meta, buf) in scratch.meta.iter().zip(&scratch.bufs).take(n) {
            let data = &buf[..meta.len.min(buf.len())];
            let stride = if meta.stride == 0 {
                data.len().max(1)
            } else {
                meta.stride
            };
            for datagram in data.chunks(stride) {
                out.push((Remote::Ip(meta.addr), Bytes::copy_from_slice(datagram)));
            }
        }
        Ok(())
    }

    /// Sends `contents` to `to` as datagrams of `segment_size` bytes (the last may be
    /// shorter); one datagram when `contents` is no longer than `segment_size`.
    pub fn try_send<'a>(
        &self,
        socket: impl Into<UdpSockRef<'a>>,
        to: SocketAddr,
        contents: &[u8],
        segment_size: usize,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment_size).then_some(segment_size),
            src_ip: None,
        };
        match self.state.try_send(socket.into(), &transmit) {
            // Larger than the local interface carries (fragmentation is off): the
            // datagram is lost, as it would be further along the path. For a PMTUD
            // probe that is the answer; data is resent cut to the MTU found.
            Err(err) if is_message_too_long(&err) => Ok(()),
            other => other,
        }
    }
}

/// Bytes asked for the send and the receive buffer of a UDP socket. The system
/// defaults (208 KiB on Linux) hold about 140 datagrams of 1452 B: a burst of a few
/// GSO sends overflows the receiver's buffer while its task is not running, and
/// every datagram lost there costs a retransmission and a congestion response.
/// The kernel caps the request at its limit (`net.core.rmem_max` / `wmem_max`).
///
/// A flood of garbage the driver cannot keep up with queues in this buffer ahead of
/// real peers' datagrams: the deeper the buffer, the longer their wait. The driver
/// therefore drops a new remote's datagram that does not start with a well-formed
/// frame before making a connection for it (`driver/input.rs`): making and
/// discarding a core connection per garbage datagram was what let a flood stall a
/// real transfer past 30 s with this buffer (docs/adapters.md).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for send and receive buffers of `bytes` (best effort: a buffer that cannot
/// grow stays as it was). Returns the receive buffer size the kernel reports.
pub fn grow_buffers(socket: &std::net::UdpSocket, bytes: usize) -> Option<usize> {
    let sock = socket2::SockRef::from(socket);
    if sock.recv_buffer_size().is_ok_and(|have| have < bytes) {
        let _ = sock.set_recv_buffer_size(bytes);
    }
    if sock.send_buffer_size().is_ok_and(|have| have < bytes) {
        let _ = sock.set_send_buffer_size(bytes);
    }
    sock.recv_buffer_size().ok()
}

/// `EMSGSIZE`: a datagram larger than the path (or the interface) carries.
fn is_message_too_long(err: &io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const EMSGSIZE: i32 = 90;
    #[cfg(windows)]
    const EMSGSIZE: i32 = 10040; // WSAEMSGSIZE
    #[cfg(not(any(target_os = "linux", target_os = "android", windows)))]
    const EMSGSIZE: i32 = 40; // BSDs, macOS
    err.raw_os_error() == Some(EMSGSIZE)
}

/// The PMTUD configuration of a UDP path to `remote`: `config` with the base of
/// its address family (548 for IPv4 and IPv4-mapped IPv6, 1232 for IPv6).
/// `None` for a non-IP remote or when `config` is `None`.
pub fn udp_pmtud(remote: &Remote, config: Option<PmtudConfig>) -> Option<PmtudConfig> {
    let Remote::Ip(addr) = remote else {
        return None;
    };
    let ipv4 = match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let base = if ipv4 { IPV4_BASE } else { IPV6_BASE };
    config.map(|c| PmtudConfig { base, ..c })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_follows_the_address_family() {
        let config = Some(PmtudConfig::default());
        let base = |a: &str| udp_pmtud(&Remote::Ip(a.parse().unwrap()), config).map(|c| c.base);
        assert_eq!(base("127.0.0.1:1"), Some(548));
        assert_eq!(base("[::1]:1"), Some(1232));
        assert_eq!(base("[::ffff:10.0.0.1]:1"), Some(548));
        assert_eq!(udp_pmtud(&Remote::UnixUnnamed, config), None);
        assert_eq!(
            udp_pmtud(&Remote::Ip("[::1]:1".parse().unwrap()), None),
            None
        );
    }

    #[test]
    fn socket_buffers_grow_and_never_shrink() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Asking for less than the socket has leaves it alone.
        assert_eq!(grow_buffers(&socket, 1024), Some(before));
        // Asking for more grows it, up to the system's cap (never below the start).
        let after = grow_buffers(&socket, SOCKET_BUFFER).unwrap();
        assert!(after >= before);
    }

    /// A GSO run (as many segments as the socket offers, one without GSO) sent
    /// through the batching path comes back split into its datagrams, GRO or not.
    #[test]
    fn a_gso_run_arrives_as_its_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Blocking with a bound: the receive waits for the kernel, never forever.
        rx.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let rx_batching = UdpBatching::new(&rx).unwrap();
        let tx_batching = UdpBatching::new(&tx).unwrap();
        let segments = tx_batching.max_segments().min(4);
        let size = 1200;
        let contents: Vec<u8> = (0..segments * size - 100)
            .map(|i| (i / size) as u8)
            .collect();
        tx_batching
            .try_send(&tx, rx.local_addr().unwrap(), &contents, size)
            .unwrap();
        let mut scratch = RecvScratch::new();
        let mut out = Vec::new();
        while out.len() < segments {
            rx_batching.try_recv(&rx, &mut scratch, &mut out).unwrap();
        }
        assert_eq!(out.len(), segments);
        for (i, (from, datagram)) in out.iter().enumerate() {
            assert_eq!(*from, Remote::Ip(tx.local_addr().unwrap()));
            let expected = &contents[i * size..((i + 1) * size).min(contents.len())];
            assert_eq!(&datagram[..], expected, "datagram {i}");
        }
    }

    #[test]
    fn emsgsize_is_recognised() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(is_message_too_long(&io::Error::from_raw_os_error(90)));
        assert!(!is_message_too_long(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
    }
}
