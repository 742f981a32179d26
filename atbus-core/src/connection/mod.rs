//! Connections (paths) to a peer: RTT, in-flight ranges, MTU, congestion state and
//! statistics. A connection owns no stream data; it only knows which stream ranges it
//! has carried ([`recovery`]), plus the tiny control stream (`-1`) of its own
//! handshake.

pub mod congestion;
pub mod pacing;
pub mod pmtud;
pub mod recovery;
pub mod rtt;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use atbus_proto::{CachedHead, StreamDecoder, pb};

use crate::config::{ConnectionKind, EndpointConfig, STREAM_TRANSMIT_SIZE};
use crate::event::{CloseReason, PeerId};
use crate::stats::StatsRecorder;
use crate::stream::{Assembler, RecvMeta, SendBuffer, SendMeta};
use crate::time::Timestamp;
use congestion::{CongestionController, FixedWindow};
use pacing::Pacer;
use pmtud::{Pmtud, PmtudConfig};
use recovery::InFlight;
use rtt::RttEstimator;

/// Window of the control stream, both ways, and the largest control message:
/// hellos and commands are small, and this bounds what a connection that has not
/// completed its handshake can make the endpoint hold.
pub const CONTROL_WINDOW: u64 = 16 * 1024;

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This endpoint sent the hello.
    Initiator,
    /// The peer sent the hello.
    Acceptor,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Hello sent or awaited.
    Handshaking,
    /// The hello was accepted: data flows.
    Established,
    /// Closed; only a FINISH_CONNECTION may still go out.
    Closed,
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Datagrams (or stream transmits) sent.
    pub sent_packets: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Datagrams (or stream reads) received.
    pub received_packets: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Data frames sent.
    pub sent_frames: u64,
    /// Fragments sent.
    pub sent_fragments: u64,
    /// Datagrams with at least one range declared lost.
    pub lost_packets: u64,
    /// Of `lost_packets`, those the retransmission timeout declared lost (their
    /// first range unacknowledged `rto` after it was sent).
    pub lost_by_timeout: u64,
    /// Of `lost_packets`, those the time-ordered rule (RACK) declared lost from an
    /// acknowledgement of a newer frame.
    pub lost_by_rack: u64,
    /// Ranges resent after being declared lost.
    pub retransmits: u64,
    /// Retransmissions found unnecessary.
    pub spurious_retransmits: u64,
    /// Datagrams or frames dropped as malformed (bad checksum, bad protobuf, ...).
    pub malformed: u64,
    /// Frames dropped because a receive limit was reached.
    pub dropped_over_limit: u64,
    /// Early-data frames dropped because the early-data budget was full.
    pub dropped_early: u64,
    /// Ranges resent on a reliable connection because the peer's acknowledgement
    /// showed it had dropped them (over a receive limit, or too early).
    pub resent_after_drop: u64,
    /// ACK frames sent.
    pub sent_acks: u64,
    /// Pings sent.
    pub sent_pings: u64,
}

/// A snapshot of a connection for the application.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    /// The connection's kind.
    pub kind: ConnectionKind,
    /// Its role.
    pub role: Role,
    /// Its state.
    pub state: ConnectionState,
    /// Its peer, once bound.
    pub peer: Option<PeerId>,
    /// Largest datagram it sends.
    pub mtu: usize,
    /// Path MTU discovery's counters, if it runs on this connection.
    pub pmtud: Option<pmtud::PmtudStats>,
    /// Smoothed RTT.
    pub srtt: Duration,
    /// Minimum RTT seen, if any sample was taken.
    pub min_rtt: Option<Duration>,
    /// Current retransmission timeout.
    pub rto: Duration,
    /// Congestion window.
    pub congestion_window: usize,
    /// Bytes in flight.
    pub bytes_in_flight: usize,
    /// Counters.
    pub stats: ConnectionStats,
}

/// Retransmitted ranges a connection keeps at most to copy (a longer list is a
/// burst of losses, whose copies are not sent).
pub const MAX_RESENT_COPIES: usize = 64;

/// One connection's state.
#[derive(Debug)]
pub(crate) struct Connection {
    pub kind: ConnectionKind,
    pub role: Role,
    pub state: ConnectionState,
    pub peer: Option<PeerId>,
    pub mtu: usize,
    pub head: CachedHead,
    /// Whether data frames on this connection may hold packed fragments: both
    /// handshake messages offered them (docs/protocol.md, "Packed fragments").
    pub pack: bool,
    pub rtt: RttEstimator,
    pub cc: Box<dyn CongestionController>,
    pub in_flight: InFlight,
    /// Send time of the newest frame the peer is known to have received.
    pub newest_delivered: Timestamp,
    /// RTT of that frame.
    pub rack_rtt: Duration,
    /// Multiplier of the reordering window, raised when losses prove spurious.
    pub reorder_factor: u32,
    /// Recovery episodes since the reordering factor was last raised (see
    /// `InFlight::began_recovery`).
    pub recoveries_since_reorder: u32,
    /// Consecutive retransmission timeouts without progress.
    pub rto_backoff: u32,
    /// The newest echoed timepoint an RTT sample was taken from.
    pub sampled_echo: Timestamp,
    /// The newest timepoint this connection sent.
    pub last_sent_timepoint: Timestamp,
    pub control_send: SendBuffer<SendMeta>,
    pub control_recv: Assembler<RecvMeta>,
    /// Streams with an acknowledgement to send, and since when.
    pub ack_pending: BTreeMap<i64, Timestamp>,
    /// Per stream, where the data frames received on this connection since its
    /// last acknowledgement of the stream started (newest last, a few at most):
    /// the next acknowledgement reports the ranges around them first, so that a
    /// sender learns of what arrived on this path even when more holes lie below
    /// than one acknowledgement can list (data spread over paths of different
    /// delay).
    pub ack_recent: BTreeMap<i64, Vec<u64>>,
    /// Finished streams to acknowledge again, with their final offsets.
    pub tombstone_acks: BTreeMap<i64, u64>,
    /// Streams whose frames this endpoint dropped without creating them (refused:
    /// too many streams; or early frames over the limit): acknowledged as holding
    /// nothing, so that a reliable connection's sender learns of the drop.
    pub refused_acks: BTreeSet<i64>,
    /// The timepoint of the newest frame sent on a reliable connection: every
    /// frame there gets a distinct, increasing one (see [`Connection::frame_time`]).
    pub stamp: Timestamp,
    /// The newest timepoint received (echoed in ACKs).
    pub echo: i64,
    /// Pings to answer: timepoint, and the size of the datagram that carried a
    /// padded one (a PMTUD probe; 0 otherwise), for `pmtud_received_size`.
    pub pongs: VecDeque<(i64, i32)>,
    /// A ping to send, and the timepoint of the one outstanding.
    pub ping_due: bool,
    pub ping_outstanding: Option<Timestamp>,
    pub last_received: Timestamp,
    pub last_sent: Timestamp,
    pub decoder: Option<StreamDecoder>,
    /// Frames received before the handshake completed (acceptor side).
    pub early: Vec<pb::FrameMessage>,
    pub early_bytes: usize,
    /// Session id and connection nonce of the hello this (acceptor) connection
    /// accepted.
    pub hello_identity: Option<(u64, u64)>,
    /// The association its hello named (numbering session, number).
    pub hello_association: (u64, u64),
    /// A hello waiting for the application's decision.
    pub deferred_hello: Option<crate::handshake::Hello>,
    /// FINISH_CONNECTION to send before forgetting the connection.
    pub close_frame: Option<CloseReason>,
    pub packets_sent: u64,
    pub stats: ConnectionStats,
    /// Windowed statistics (1 / 5 / 15 / 60 s).
    pub recorder: StatsRecorder,
    /// Spaces datagrams carrying data at the controller's pacing rate.
    pub pacer: Pacer,
    /// Ranges other connections of the peer sent, to send here too (the
    /// redundant scheduler): `(stream, start, end)`, oldest first.
    pub copies: VecDeque<(i64, u64, u64)>,
    /// Retransmitted ranges to send once more when nothing else waits (see
    /// `build_transmit`): `(stream, start, end)`, at most [`MAX_RESENT_COPIES`].
    pub resent: Vec<(i64, u64, u64)>,
    /// Datagrams this connection carries per turn under the round-robin
    /// scheduler (at least 1).
    pub weight: u32,
    /// Fragments received in the input being handled.
    pub rx_fragments: u64,
    /// Path MTU discovery asked for (datagram connections): the connection's
    /// `mtu` is the base; the state machine starts with the handshake's end.
    pub pmtud_config: Option<PmtudConfig>,
    /// Path MTU discovery running (established datagram connection).
    pub pmtud: Option<Pmtud>,
    /// Probes sent and not yet answered: timepoint and size, oldest first (at most
    /// [`MAX_PROBES_REMEMBERED`]).
    pub probes: VecDeque<(i64, usize)>,
}

/// Unanswered PMTUD probes a connection remembers (a late answer to an older
/// one still counts while searching).
pub const MAX_PROBES_REMEMBERED: usize = 8;

impl Connection {
    pub fn new(kind: ConnectionKind, role: Role, config: &EndpointConfig, now: Timestamp) -> Self {
        let pmtud_config = match kind {
            ConnectionKind::Datagram { mtu } => {
                config.pmtud.map(|p| PmtudConfig { base: mtu, ..p })
            }
            ConnectionKind::Stream => None,
        };
        let (mtu, cc, decoder): (usize, Box<dyn CongestionController>, _) = match kind {
            ConnectionKind::Datagram { mtu } => (
                mtu,
                config.congestion_algorithm.build(config.congestion, mtu),
                None,
            ),
            ConnectionKind::Stream => (
                STREAM_TRANSMIT_SIZE.min(config.decode_limits.max_frame_size),
                Box::new(FixedWindow(config.reliable_window)),
                Some(StreamDecoder::new(config.decode_limits)),
            ),
        };
        Connection {
            kind,
            role,
            state: ConnectionState::Handshaking,
            peer: None,
            mtu,
            head: CachedHead::absent(),
            pack: false,
            rtt: RttEstimator::new(config.rto),
            cc,
            in_flight: InFlight::default(),
            newest_delivered: Timestamp::ZERO,
            rack_rtt: Duration::ZERO,
            rto_backoff: 0,
            reorder_factor: 1,
            recoveries_since_reorder: 0,
            sampled_echo: Timestamp::ZERO,
            last_sent_timepoint: Timestamp::ZERO,
            control_send: SendBuffer::new(CONTROL_WINDOW),
            control_recv: Assembler::new(CONTROL_WINDOW),
            ack_pending: BTreeMap::new(),
            ack_recent: BTreeMap::new(),
            tombstone_acks: BTreeMap::new(),
            refused_acks: BTreeSet::new(),
            stamp: Timestamp::ZERO,
            echo: 0,
            pongs: VecDeque::new(),
            ping_due: false,
            ping_outstanding: None,
            last_received: now,
            last_sent: now,
            decoder,
            early: Vec::new(),
            early_bytes: 0,
            hello_identity: None,
            hello_association: (0, 0),
            deferred_hello: None,
            close_frame: None,
            packets_sent: 0,
            stats: ConnectionStats::default(),
            recorder: StatsRecorder::new(now),
            pacer: Pacer::for_mtu(mtu),
            copies: VecDeque::new(),
            resent: Vec::new(),
            weight: 1,
            rx_fragments: 0,
            pmtud_config,
            pmtud: None,
            probes: VecDeque::new(),
        }
    }

    /// Starts path MTU discovery if it was asked for and is not running yet
    /// (called when the handshake completes: probes never precede it).
    pub fn start_pmtud(&mut self, now: Timestamp) {
        if self.pmtud.is_some() || !self.is_lossy() {
            return;
        }
        if let Some(config) = self.pmtud_config {
            self.pmtud = Some(Pmtud::new(config, now));
            self.apply_mtu();
        }
    }

    /// Sets the MTU; the controller and the pacer follow.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
        self.cc.on_mtu(mtu);
        self.pacer.set_burst(pacing::burst_for_mtu(mtu));
    }

    /// Follows PMTUD's MTU after any of its inputs: the controller and pacer learn
    /// the new size; when it went down, the ranges of datagrams larger than the new
    /// MTU sent before `now` are taken out of flight (without a congestion signal:
    /// the MTU dropped them, not congestion) and returned, to be resent cut to the
    /// new size at once rather than after their timeouts.
    pub fn apply_mtu(&mut self) -> Vec<recovery::SentRange> {
        let Some(mtu) = self.pmtud.as_ref().map(Pmtud::current_mtu) else {
            return Vec::new();
        };
        if mtu == self.mtu {
            return Vec::new();
        }
        let lowered = mtu < self.mtu;
        self.set_mtu(mtu);
        if !lowered {
            return Vec::new();
        }
        let ranges = self.in_flight.drain();
        let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &ranges {
            *sizes.entry(r.packet).or_default() += r.bytes;
        }
        let mut cut = Vec::new();
        for range in ranges {
            if sizes[&range.packet] > mtu {
                cut.push(range);
            } else {
                self.in_flight.on_sent(range);
            }
        }
        cut
    }

    /// Whether the connection retransmits (datagram kind).
    pub fn is_lossy(&self) -> bool {
        matches!(self.kind, ConnectionKind::Datagram { .. })
    }

    /// The send time (and timepoint) of the next frame. On a reliable connection
    /// every frame gets a distinct, increasing timepoint (`now`, or one microsecond
    /// past the previous frame's): the peer's echo then names exactly the last
    /// frame it processed, so that anything of a stream sent up to it and not
    /// acknowledged was dropped and must be resent (nothing else would resend it).
    pub fn frame_time(&mut self, now: Timestamp) -> Timestamp {
        if self.is_lossy() {
            return now;
        }
        self.stamp = now.max(self.stamp + Duration::from_micros(1));
        self.stamp
    }

    /// The rate data may leave at, bytes per second (`None`: unpaced).
    pub fn pacing_rate(&self) -> Option<u64> {
        self.cc.pacing_rate(self.rtt.smoothed())
    }

    /// The retransmission timeout with the current backoff.
    pub fn rto(&self) -> Duration {
        self.rtt.retransmit_timeout(self.rto_backoff)
    }

    /// The reordering window of the time-ordered loss rule. 1 ms while no
    /// reordering has been seen (an acknowledgement settling a frame sent before one
    /// an earlier acknowledgement reported, or a spurious retransmission of a range
    /// this rule declared lost; not one the timeout declared, which shows a delay
    /// spike, not reordering; RFC 8985 §6.2 uses no window in recovery while
    /// `RACK.reord` is false): a path that
    /// keeps send order, however jittery, delivers nothing after a newer frame, so
    /// a hole below a delivered frame is a loss. Once reordering is seen: a quarter
    /// of the minimum RTT, or the RTT variation if larger (jittery links), times the
    /// reordering factor (raised by spurious losses), at most the smoothed RTT.
    pub fn reorder_window(&self) -> Duration {
        if !self.in_flight.reordering_seen() {
            return Duration::from_millis(1);
        }
        let quarter = self.rtt.min().unwrap_or(self.rtt.smoothed()) / 4;
        (quarter.max(self.rtt.variance()) * self.reorder_factor)
            .max(Duration::from_millis(1))
            .min(self.rtt.smoothed())
    }

    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            kind: self.kind,
            role: self.role,
            state: self.state,
            peer: self.peer,
            mtu: self.mtu,
            pmtud: self.pmtud.as_ref().map(Pmtud::stats),
            srtt: self.rtt.smoothed(),
            min_rtt: self.rtt.min(),
            rto: self.rto(),
            congestion_window: self.cc.window(),
            bytes_in_flight: self.in_flight.bytes(),
            stats: self.stats,
        }
    }
}
