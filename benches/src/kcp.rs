//! The `kcp` crate as a simulated [`Transport`], so that KCP runs over the same links
//! as atbus.
//!
//! Choices, stated once here and in `docs/comparison.md`:
//! - **One KCP conversation per stream**, `conv = stream + 1`, like atbus's
//!   independent streams: a loss on one stream never holds back another. The
//!   receiving side creates a conversation when the first datagram of a new `conv`
//!   arrives. Each conversation packs its own segments into datagrams; KCP does not
//!   mix conversations in one datagram.
//! - **Message mode** (`Kcp::new`, not stream mode): one `send` is one message. KCP
//!   splits it into at most 127 segments of one MSS (`MTU − 24` bytes); a larger
//!   message is refused by KCP (`UserBufTooBig`): the transport drops it, counts it in
//!   [`KcpTransport::oversized`] and the report shows it as not delivered.
//! - **Turbo mode** ([`KcpConfig::TURBO`]): `set_nodelay(true, 10, 2, true)` (no delay,
//!   10 ms update interval, fast resend after 2 duplicate ACKs, congestion control
//!   off), send and receive windows of 1024 segments, MTU = the path's MTU.
//! - **Flush on send**: after `send`, the conversation is flushed at once instead of
//!   waiting up to one interval for the next `update`; ACKs go out with the next
//!   `update`, every 10 ms, as KCP does by itself.
//! - **Back-pressure**: the application stops queueing on a stream while KCP's
//!   `wait_snd()` (segments queued or in flight) is at or above the send window; the
//!   simulator then offers the message again later ([`WouldBlock`]).
//! - **Single path**: KCP knows one path; everything goes over path 0 and datagrams
//!   on other paths are ignored.
//! - **Time**: KCP counts `u32` milliseconds; the simulator's virtual `now` is
//!   truncated to whole milliseconds.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::rc::Rc;
use std::time::Duration;

use atbus_sim::{PathStats, Received, Transport, TransportStats, WouldBlock};
use bytes::Bytes;
use kcp::Kcp;

/// KCP segment header size (`KCP_OVERHEAD`).
const HEADER_LEN: usize = 24;
/// KCP command of a data segment (`IKCP_CMD_PUSH`).
const CMD_PUSH: u8 = 81;
/// KCP command of an acknowledgement (`IKCP_CMD_ACK`).
const CMD_ACK: u8 = 82;
/// KCP refuses a message of this many segments or more (`IKCP_WND_RCV`).
const MAX_SEGMENTS: usize = 128;

/// How each KCP conversation is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcpConfig {
    /// `nodelay`: minimum RTO of 30 ms and RTO backoff × 1.5 instead of × 2.
    pub nodelay: bool,
    /// Update (flush) interval in milliseconds.
    pub interval_ms: u32,
    /// Duplicate ACKs that trigger a fast retransmission (0: off).
    pub fast_resend: u32,
    /// Congestion control off (`nc`): only the windows limit what is in flight.
    pub no_congestion_window: bool,
    /// Send window, in segments.
    pub send_window: u16,
    /// Receive window, in segments.
    pub recv_window: u16,
    /// Flush a conversation right after the application sends on it.
    pub flush_on_send: bool,
}

impl KcpConfig {
    /// KCP's "turbo" mode: `set_nodelay(true, 10, 2, true)`, windows of 1024
    /// segments, flush on send.
    pub const TURBO: Self = Self {
        nodelay: true,
        interval_ms: 10,
        fast_resend: 2,
        no_congestion_window: true,
        send_window: 1024,
        recv_window: 1024,
        flush_on_send: true,
    };
}

impl Default for KcpConfig {
    /// [`KcpConfig::TURBO`].
    fn default() -> Self {
        Self::TURBO
    }
}

/// Where KCP writes its datagrams: a queue shared by the conversations of one side.
#[derive(Debug, Clone, Default)]
struct Outbox(Rc<RefCell<VecDeque<Bytes>>>);

impl Write for Outbox {
    /// Each `write` from KCP is one whole datagram (KCP calls `write_all` once per
    /// datagram and this accepts everything).
    fn write(&mut self, datagram: &[u8]) -> io::Result<usize> {
        self.0
            .borrow_mut()
            .push_back(Bytes::copy_from_slice(datagram));
        Ok(datagram.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One KCP conversation (one stream).
struct Conversation {
    kcp: Kcp<Outbox>,
    /// Next sequence number never sent before: a data segment below it is a
    /// retransmission.
    next_new_sn: u32,
}

/// One side of a KCP "connection": one conversation per stream, over path 0.
pub struct KcpTransport {
    config: KcpConfig,
    mtu: usize,
    conversations: BTreeMap<u32, Conversation>,
    outbox: Outbox,
    received: VecDeque<Received>,
    /// Virtual time in whole milliseconds, as KCP counts it.
    now_ms: u32,
    sent_packets: u64,
    retransmits: u64,
    /// Shared so that it can be read after the simulator consumed the transport.
    oversized: Rc<Cell<u64>>,
    /// Smoothed RTT from the ACKs received (RFC 6298 weights), in milliseconds.
    srtt_ms: Option<f64>,
}

impl std::fmt::Debug for KcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KcpTransport")
            .field("config", &self.config)
            .field("mtu", &self.mtu)
            .field("conversations", &self.conversations.len())
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

/// A client and a server KCP side over a path of this MTU, in turbo mode.
pub fn pair(mtu: usize) -> (KcpTransport, KcpTransport) {
    pair_with(mtu, KcpConfig::TURBO)
}

/// A client and a server KCP side over a path of this MTU with `config`.
pub fn pair_with(mtu: usize, config: KcpConfig) -> (KcpTransport, KcpTransport) {
    (
        KcpTransport::new(mtu, config),
        KcpTransport::new(mtu, config),
    )
}

impl KcpTransport {
    /// One side whose datagrams are at most `mtu` bytes.
    pub fn new(mtu: usize, config: KcpConfig) -> Self {
        Self {
            config,
            mtu,
            conversations: BTreeMap::new(),
            outbox: Outbox::default(),
            received: VecDeque::new(),
            now_ms: 0,
            sent_packets: 0,
            retransmits: 0,
            oversized: Rc::default(),
            srtt_ms: None,
        }
    }

    /// The largest message KCP accepts in message mode at this MTU: 127 segments.
    pub fn max_message_size(&self) -> usize {
        (MAX_SEGMENTS - 1) * (self.mtu - HEADER_LEN)
    }

    /// Messages the application sent that KCP refused as too large (dropped).
    pub fn oversized(&self) -> u64 {
        self.oversized.get()
    }

    /// A handle on the [`oversized`](Self::oversized) count that stays readable after
    /// the transport is gone (the simulator consumes it).
    pub fn oversized_counter(&self) -> Rc<Cell<u64>> {
        self.oversized.clone()
    }

    fn advance(&mut self, now: Duration) {
        // KCP's clock is u32 milliseconds and wraps; so does this.
        self.now_ms = self.now_ms.max(now.as_millis() as u32);
    }

    fn conversation(&mut self, stream: u32) -> &mut Conversation {
        let config = self.config;
        let mtu = self.mtu;
        let outbox = &self.outbox;
        self.conversations.entry(stream).or_insert_with(|| {
            let mut kcp = Kcp::new(stream.wrapping_add(1), outbox.clone());
            kcp.set_nodelay(
                config.nodelay,
                config.interval_ms as i32,
                config.fast_resend as i32,
                config.no_congestion_window,
            );
            kcp.set_wndsize(config.send_window, config.recv_window);
            // Below 50 bytes KCP refuses the MTU and keeps its default of 1400,
            // which the link then drops: the run shows nothing delivered.
            let _ = kcp.set_mtu(mtu);
            Conversation {
                kcp,
                next_new_sn: 0,
            }
        })
    }

    /// Moves the messages KCP has reassembled on `stream` to the application.
    fn collect(&mut self, stream: u32) {
        let Some(conversation) = self.conversations.get_mut(&stream) else {
            return;
        };
        while let Ok(size) = conversation.kcp.peeksize() {
            let mut buf = vec![0; size];
            match conversation.kcp.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    self.received.push_back(Received {
                        stream,
                        payload: buf.into(),
                    });
                }
                Err(_) => break,
            }
        }
    }

    /// Counts what a datagram this side sends carries.
    fn account_sent(&mut self, datagram: &[u8]) {
        self.sent_packets += 1;
        for segment in segments(datagram) {
            if segment.cmd != CMD_PUSH {
                continue;
            }
            let Some(conversation) = self.conversations.get_mut(&segment.conv.wrapping_sub(1))
            else {
                continue;
            };
            if segment.sn.wrapping_sub(conversation.next_new_sn) as i32 >= 0 {
                conversation.next_new_sn = segment.sn.wrapping_add(1);
            } else {
                self.retransmits += 1;
            }
        }
    }

    /// Takes RTT samples from the ACKs of a datagram received (KCP echoes the
    /// timestamp of the segment it acknowledges).
    fn account_received(&mut self, datagram: &[u8]) {
        for segment in segments(datagram) {
            if segment.cmd != CMD_ACK {
                continue;
            }
            let rtt = f64::from(self.now_ms.wrapping_sub(segment.ts));
            self.srtt_ms = Some(match self.srtt_ms {
                None => rtt,
                Some(srtt) => 0.875 * srtt + 0.125 * rtt,
            });
        }
    }
}

/// The header fields of one KCP segment that the accounting needs.
struct SegmentHeader {
    conv: u32,
    cmd: u8,
    ts: u32,
    sn: u32,
}

/// The segments of a KCP datagram (conv, cmd, frg, wnd, ts, sn, una, len, data).
fn segments(mut datagram: &[u8]) -> impl Iterator<Item = SegmentHeader> + '_ {
    std::iter::from_fn(move || {
        if datagram.len() < HEADER_LEN {
            return None;
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([
                datagram[at],
                datagram[at + 1],
                datagram[at + 2],
                datagram[at + 3],
            ])
        };
        let header = SegmentHeader {
            conv: u32_at(0),
            cmd: datagram[4],
            ts: u32_at(8),
            sn: u32_at(12),
        };
        let len = u32_at(20) as usize;
        datagram = datagram.get(HEADER_LEN + len..).unwrap_or_default();
        Some(header)
    })
}

impl Transport for KcpTransport {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.advance(now);
        let now_ms = self.now_ms;
        let config = self.config;
        let conversation = self.conversation(stream);
        if conversation.kcp.wait_snd() >= usize::from(config.send_window) {
            return Err(WouldBlock);
        }
        if conversation.kcp.send(&payload).is_err() {
            // Too many segments for KCP's message mode.
            self.oversized.set(self.oversized.get() + 1);
            return Ok(());
        }
        if config.flush_on_send {
            // `update` sets KCP's clock (and flushes if an interval has passed);
            // `flush` sends the new segments now.
            let _ = conversation.kcp.update(now_ms);
            let _ = conversation.kcp.flush();
        }
        Ok(())
    }

    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.advance(now);
        if path != 0 || datagram.len() < HEADER_LEN {
            return;
        }
        self.account_received(&datagram);
        let stream = kcp::get_conv(&datagram).wrapping_sub(1);
        let now_ms = self.now_ms;
        let conversation = self.conversation(stream);
        let _ = conversation.kcp.update(now_ms);
        // A malformed or foreign datagram is KCP's to refuse; nothing to do here.
        let _ = conversation.kcp.input(&datagram);
        self.collect(stream);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.advance(now);
        let now_ms = self.now_ms;
        for conversation in self.conversations.values_mut() {
            let _ = conversation.kcp.update(now_ms);
        }
        let streams: Vec<u32> = self.conversations.keys().copied().collect();
        for stream in streams {
            self.collect(stream);
        }
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.advance(now);
        let datagram = self.outbox.0.borrow_mut().pop_front()?;
        self.account_sent(&datagram);
        Some((0, datagram))
    }

    fn poll_received(&mut self) -> Option<Received> {
        self.received.pop_front()
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        let now_ms = self.now_ms;
        // KCP wants `update` at `check`; at least 1 ms later, because `check`
        // says 0 when a segment is due but `update` only flushes once per interval.
        self.conversations
            .values()
            .map(|c| now_ms.wrapping_add(c.kcp.check(now_ms).max(1)))
            .min()
            .map(|ms| Duration::from_millis(u64::from(ms)))
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            paths: vec![PathStats {
                mtu: self.mtu,
                srtt: Duration::from_secs_f64(self.srtt_ms.unwrap_or(0.0) / 1e3),
                sent_packets: self.sent_packets,
                lost_packets: 0,
                retransmits: self.retransmits,
                spurious_retransmits: 0,
                ..PathStats::default()
            }],
            skipped: 0,
        }
    }
}
