//! Batched UDP system calls through `quinn-udp`: `recvmmsg` with GRO on receive,
//! GSO (one `sendmsg` carrying many equal-size datagrams) on send. The adapters call
//! these inside their runtime's readiness wrappers.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use atbus_core::connection::pmtud::{IPV4_BASE, IPV6_BASE, PmtudConfig};
use bytes::Bytes;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::config::UdpPmtudCeiling;
use crate::runtime::Remote;

/// Receive buffers of one socket (owned by its reader task).
pub struct RecvScratch {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

/// Bytes of one receive buffer: room for a GRO-coalesced run of datagrams, and for
/// the largest datagram ([`MAX_UDP_PAYLOAD_V6`]).
const RECV_BUFFER: usize = 64 * 1024;
/// Receive buffers per system call (at most quinn-udp's batch size).
const RECV_BUFFERS: usize = 16;
const _: () = assert!(RECV_BUFFER >= MAX_UDP_PAYLOAD_V6);

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

    /// Sends the concatenation of `parts` to `to` as datagrams of `segment_size`
    /// bytes (the last may be shorter); one datagram when it is no longer than
    /// `segment_size`. Several parts of a GSO run leave in one `sendmsg` that
    /// gathers them (Linux), without being copied into one buffer first.
    pub fn try_send<S: std::os::fd::AsFd>(
        &self,
        socket: &S,
        to: SocketAddr,
        parts: &[&[u8]],
        segment_size: usize,
    ) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let result = match parts {
            [one] if total <= segment_size => self.send_contiguous(socket, to, one, segment_size),
            _ => {
                // GSO (or several parts): sent here first, so that an `EINVAL` for
                // a segment larger than the route carries is not taken for a lack
                // of GSO support.
                #[cfg(target_os = "linux")]
                if let Ok(segment) = u16::try_from(segment_size) {
                    match gather::send(socket2::SockRef::from(socket), to, parts, segment) {
                        Ok(()) => return Ok(()),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Err(err),
                        Err(err) if is_invalid(&err) && segment_too_large(to, segment_size) => {
                            return Ok(());
                        }
                        // Anything else goes the copying way through quinn-udp, which
                        // knows what to do about it (turning GSO off after `EIO`, ...).
                        Err(_) => {}
                    }
                }
                match parts {
                    [one] => self.send_contiguous(socket, to, one, segment_size),
                    _ => self.send_contiguous(socket, to, &parts.concat(), segment_size),
                }
            }
        };
        match result {
            // Larger than the local interface carries (fragmentation is off): the
            // datagram is lost, as it would be further along the path. For a PMTUD
            // probe that is the answer; data is resent cut to the MTU found.
            Err(err) if is_message_too_long(&err) => Ok(()),
            other => other,
        }
    }

    /// [`try_send`](Self::try_send) of one buffer, through quinn-udp.
    fn send_contiguous<S: std::os::fd::AsFd>(
        &self,
        socket: &S,
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
        self.state.try_send(UdpSockRef::from(socket), &transmit)
    }
}

/// A GSO send of several buffers: one `sendmsg` whose iovecs are the buffers and
/// whose `UDP_SEGMENT` control message cuts their concatenation into datagrams.
#[cfg(target_os = "linux")]
mod gather {
    use std::io::{self, IoSlice};
    use std::mem::size_of;
    use std::net::SocketAddr;

    use socket2::{MsgHdr, SockAddr, SockRef};

    /// `SOL_UDP` / `IPPROTO_UDP`.
    const SOL_UDP: i32 = 17;
    /// `UDP_SEGMENT` (linux/udp.h): the GSO segment size of one send, a `u16`.
    const UDP_SEGMENT: i32 = 103;
    /// `struct cmsghdr` on Linux: `cmsg_len` (a `size_t`; on musl a `socklen_t`
    /// and a zero pad, the same bytes for any length that fits), level, type.
    const HEADER: usize = size_of::<usize>() + 2 * size_of::<i32>();
    /// `CMSG_LEN(sizeof(u16))`: the kernel wants exactly this.
    const LEN: usize = HEADER + size_of::<u16>();
    /// `CMSG_SPACE(sizeof(u16))`: the length rounded up to `size_t` alignment.
    const SPACE: usize = LEN.div_ceil(size_of::<usize>()) * size_of::<usize>();

    /// The control message asking for datagrams of `segment_size` bytes, as the
    /// bytes `CMSG_FIRSTHDR` / `CMSG_DATA` would fill in (the kernel copies the
    /// control buffer before parsing it, so its alignment here does not matter).
    pub(super) fn segment_control(segment_size: u16) -> [u8; SPACE] {
        let mut control = [0u8; SPACE];
        let word = size_of::<usize>();
        control[..word].copy_from_slice(&LEN.to_ne_bytes());
        control[word..word + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
        control[word + 4..HEADER].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
        control[HEADER..LEN].copy_from_slice(&segment_size.to_ne_bytes());
        control
    }

    /// Sends the concatenation of `parts` to `to` in datagrams of `segment_size`.
    pub(super) fn send(
        socket: SockRef<'_>,
        to: SocketAddr,
        parts: &[&[u8]],
        segment_size: u16,
    ) -> io::Result<()> {
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let addr = SockAddr::from(to);
        let control = segment_control(segment_size);
        let msg = MsgHdr::new()
            .with_addr(&addr)
            .with_buffers(&slices)
            .with_control(&control);
        loop {
            match socket.sendmsg(&msg, 0) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.map(|_| ()),
            }
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
///
/// Unix datagram sockets get them too: each datagram is charged to its sender's
/// send buffer until it is read, so the default (208 KiB on Linux) holds about
/// three unread 64 KiB datagrams before every send, to any receiver, would block.
pub fn grow_buffers<'s>(socket: impl Into<socket2::SockRef<'s>>, bytes: usize) -> Option<usize> {
    let sock: socket2::SockRef<'s> = socket.into();
    if sock.recv_buffer_size().is_ok_and(|have| have < bytes) {
        let _ = sock.set_recv_buffer_size(bytes);
    }
    if sock.send_buffer_size().is_ok_and(|have| have < bytes) {
        let _ = sock.set_send_buffer_size(bytes);
    }
    sock.recv_buffer_size().ok()
}

/// `EMSGSIZE`: a datagram larger than the path (or the interface) carries.
/// `EINVAL`: what Linux answers a GSO send whose segment (with its headers) is
/// larger than the route's MTU, as it does a socket without GSO support.
#[cfg(target_os = "linux")]
fn is_invalid(err: &io::Error) -> bool {
    const EINVAL: i32 = 22;
    err.raw_os_error() == Some(EINVAL)
}

/// Whether GSO segments of `segment_size` bytes are larger than the route to
/// `to` carries (see [`segment_exceeds_route`]); looked up only after an error.
#[cfg(target_os = "linux")]
fn segment_too_large(to: SocketAddr, segment_size: usize) -> bool {
    segment_exceeds_route(is_ipv4(&to), segment_size, route_mtu(to))
}

/// Whether a datagram of `segment_size` bytes of UDP payload, with its IP and UDP
/// headers, is larger than `route` (the route's MTU, if known). Such an `EINVAL`
/// of a GSO send is the datagrams' loss, as `EMSGSIZE` would be (the route
/// changed under PMTUD, which finds the new size): handing it to quinn-udp would
/// turn GSO off for the socket for good.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn segment_exceeds_route(ipv4: bool, segment_size: usize, route: Option<usize>) -> bool {
    let headers = if ipv4 {
        IPV4_UDP_HEADERS
    } else {
        IPV6_UDP_HEADERS
    };
    route.is_some_and(|mtu| segment_size + headers > mtu)
}

fn is_message_too_long(err: &io::Error) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const EMSGSIZE: i32 = 90;
    #[cfg(windows)]
    const EMSGSIZE: i32 = 10040; // WSAEMSGSIZE
    #[cfg(not(any(target_os = "linux", target_os = "android", windows)))]
    const EMSGSIZE: i32 = 40; // BSDs, macOS
    err.raw_os_error() == Some(EMSGSIZE)
}

/// The largest UDP payload of one IPv4 datagram: the 16-bit IP total length less
/// the IPv4 and UDP headers.
pub const MAX_UDP_PAYLOAD_V4: usize = 65_535 - IPV4_UDP_HEADERS;
/// The largest UDP payload of one IPv6 datagram without jumbograms: the 16-bit
/// payload length less the UDP header.
pub const MAX_UDP_PAYLOAD_V6: usize = 65_535 - UDP_HEADER;
/// Bytes of a UDP header.
const UDP_HEADER: usize = 8;
/// Bytes of an IPv4 header without options, and a UDP header.
const IPV4_UDP_HEADERS: usize = 20 + UDP_HEADER;
/// Bytes of an IPv6 header without extension headers, and a UDP header.
const IPV6_UDP_HEADERS: usize = 40 + UDP_HEADER;

/// Whether `addr` is reached over IPv4 (an IPv4 address or an IPv4-mapped IPv6 one).
fn is_ipv4(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    }
}

/// The PMTUD configuration of a UDP path to `remote`: `config` with the base of
/// its address family (548 for IPv4 and IPv4-mapped IPv6, 1232 for IPv6) and the
/// ceiling `ceiling` picks (for [`UdpPmtudCeiling::Route`], the route's MTU as
/// [`route_mtu`] reads it). `None` for a non-IP remote or when `config` is `None`.
pub fn udp_pmtud(
    remote: &Remote,
    config: Option<PmtudConfig>,
    ceiling: UdpPmtudCeiling,
) -> Option<PmtudConfig> {
    let Remote::Ip(addr) = remote else {
        return None;
    };
    let config = config?;
    let route = match ceiling {
        UdpPmtudCeiling::Fixed => None,
        UdpPmtudCeiling::Route { .. } => route_mtu(*addr),
    };
    Some(pmtud_for_route(is_ipv4(addr), config, ceiling, route))
}

/// [`udp_pmtud`] without the system call: `route` is the route's MTU (IP packet
/// bytes) if the OS reported one. The ceiling never goes below the base (PMTUD
/// then has nothing to search) nor above what one UDP datagram carries.
pub fn pmtud_for_route(
    ipv4: bool,
    config: PmtudConfig,
    ceiling: UdpPmtudCeiling,
    route: Option<usize>,
) -> PmtudConfig {
    let (base, headers, largest) = if ipv4 {
        (IPV4_BASE, IPV4_UDP_HEADERS, MAX_UDP_PAYLOAD_V4)
    } else {
        (IPV6_BASE, IPV6_UDP_HEADERS, MAX_UDP_PAYLOAD_V6)
    };
    let max = match (ceiling, route) {
        (UdpPmtudCeiling::Route { cap }, Some(route)) => {
            route.saturating_sub(headers).min(cap).min(largest)
        }
        _ => config.max.min(largest),
    };
    PmtudConfig {
        base,
        max: max.max(base),
        ..config
    }
}

/// The MTU (IP packet bytes) the OS holds for the route to `remote`, if it says:
/// on Linux, `IP_MTU` / `IPV6_MTU` of a throwaway UDP socket connected to
/// `remote` (connecting sends nothing; it only looks the route up, so this works
/// for a listening socket's many peers alike). `None` elsewhere or on any error.
pub fn route_mtu(remote: SocketAddr) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let remote = match remote {
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, a.port())),
                None => remote,
            },
            v4 => v4,
        };
        let local: SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = std::net::UdpSocket::bind(local).ok()?;
        socket.connect(remote).ok()?;
        let mtu = if remote.is_ipv4() {
            rustix::net::sockopt::ip_mtu(&socket)
        } else {
            rustix::net::sockopt::ipv6_mtu(&socket)
        };
        mtu.ok().and_then(|m| usize::try_from(m).ok())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = remote;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ROUTE_MTU_CAP;

    #[test]
    fn the_base_follows_the_address_family() {
        let config = Some(PmtudConfig::default());
        let fixed = UdpPmtudCeiling::Fixed;
        let base = |a: &str| {
            udp_pmtud(&Remote::Ip(a.parse().unwrap()), config, fixed).map(|c| (c.base, c.max))
        };
        assert_eq!(base("127.0.0.1:1"), Some((548, 1452)));
        assert_eq!(base("[::1]:1"), Some((1232, 1452)));
        assert_eq!(base("[::ffff:10.0.0.1]:1"), Some((548, 1452)));
        assert_eq!(udp_pmtud(&Remote::UnixUnnamed, config, fixed), None);
        let ip = Remote::Ip("[::1]:1".parse().unwrap());
        assert_eq!(udp_pmtud(&ip, None, UdpPmtudCeiling::default()), None);
    }

    #[test]
    fn a_gso_segment_larger_than_the_route_is_a_loss_not_a_lack_of_gso() {
        // A 9000-byte ceiling found on a jumbo route, then the route moves to a
        // 1500-byte device.
        assert!(segment_exceeds_route(true, 8972, Some(1500)));
        assert!(segment_exceeds_route(false, 1453, Some(1500)));
        assert!(!segment_exceeds_route(true, 1472, Some(1500)));
        assert!(!segment_exceeds_route(false, 1452, Some(1500)));
        // Unknown route: quinn-udp decides.
        assert!(!segment_exceeds_route(true, 8972, None));
    }

    #[test]
    fn the_ceiling_is_the_route_mtu_less_the_headers_within_the_cap() {
        let config = PmtudConfig::default();
        let route =
            |ipv4, cap, mtu| pmtud_for_route(ipv4, config, UdpPmtudCeiling::Route { cap }, mtu).max;
        let big = DEFAULT_ROUTE_MTU_CAP;
        // Ethernet, jumbo frames, loopback: the route less 28 (IPv4) or 48 (IPv6).
        assert_eq!(route(true, big, Some(1500)), 1472);
        assert_eq!(route(false, big, Some(1500)), 1452);
        assert_eq!(route(true, big, Some(9000)), 8972);
        assert_eq!(route(false, big, Some(9000)), 8952);
        assert_eq!(route(false, big, Some(65536)), 65488);
        // One IPv4 datagram carries at most 65507 bytes whatever the route says.
        assert_eq!(route(true, big, Some(65536)), MAX_UDP_PAYLOAD_V4);
        assert_eq!(route(false, usize::MAX, Some(1 << 20)), MAX_UDP_PAYLOAD_V6);
        // The cap bounds it, and a small route lowers it below the fixed maximum.
        assert_eq!(route(true, 1452, Some(65536)), 1452);
        assert_eq!(route(true, big, Some(1280)), 1252);
        // Never below the base.
        assert_eq!(route(true, big, Some(100)), IPV4_BASE);
        assert_eq!(route(false, 1000, Some(9000)), IPV6_BASE);
        // No report: the configured maximum.
        assert_eq!(route(true, big, None), 1452);
        let fixed = pmtud_for_route(true, config, UdpPmtudCeiling::Fixed, Some(9000));
        assert_eq!(fixed.max, 1452);
        // The rest of the configuration is kept.
        assert_eq!(fixed.probe_timeout, config.probe_timeout);
    }

    /// Loopback's route MTU is what `ip link` says of `lo` (65536 on Linux), which
    /// IPv4 clamps to its largest packet (65535).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_loopback_route_reports_its_mtu() {
        let Ok(lo) = std::fs::read_to_string("/sys/class/net/lo/mtu") else {
            return;
        };
        let lo: usize = lo.trim().parse().unwrap();
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            assert_eq!(route_mtu("[::1]:9".parse().unwrap()), Some(lo));
        }
        let lo = lo.min(65_535);
        assert_eq!(route_mtu("127.0.0.1:9".parse().unwrap()), Some(lo));
        assert_eq!(route_mtu("[::ffff:127.0.0.1]:9".parse().unwrap()), Some(lo));
        let remote = Remote::Ip("127.0.0.1:9".parse().unwrap());
        let config = udp_pmtud(
            &remote,
            Some(PmtudConfig::default()),
            UdpPmtudCeiling::default(),
        );
        assert_eq!(config.unwrap().max, (lo - 28).min(MAX_UDP_PAYLOAD_V4));
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
        // In pieces that do not follow the datagrams' boundaries: the kernel gathers.
        let parts: Vec<&[u8]> = contents.chunks(size / 2 + 7).collect();
        tx_batching
            .try_send(&tx, rx.local_addr().unwrap(), &parts, size)
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

    /// The control message is `CMSG_LEN(2)` long and carries the size where
    /// `CMSG_DATA` points, and the kernel takes it: three parts leave as the
    /// datagrams of their concatenation.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_gathered_gso_send_arrives_as_its_datagrams() {
        let control = gather::segment_control(1200);
        let word = std::mem::size_of::<usize>();
        let header = word + 8;
        assert_eq!(control.len() % word, 0);
        assert_eq!(
            usize::from_ne_bytes(control[..word].try_into().unwrap()),
            header + 2
        );
        assert_eq!(&control[header..header + 2], &1200u16.to_ne_bytes());
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        if UdpBatching::new(&tx).unwrap().max_segments() < 3 {
            eprintln!("no GSO here; skipped");
            return;
        }
        let contents: Vec<u8> = (0..3000u32).map(|i| (i / 1200) as u8).collect();
        let parts = [&contents[..500], &contents[500..2500], &contents[2500..]];
        gather::send(
            socket2::SockRef::from(&tx),
            rx.local_addr().unwrap(),
            &parts,
            1200,
        )
        .unwrap();
        let mut buf = [0u8; 2000];
        for expected in contents.chunks(1200) {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], expected);
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
