//! Datagram packetization-layer path MTU discovery (DPLPMTUD, RFC 8899).
//!
//! A datagram path starts at a size every path carries (the *base*: 548 bytes of UDP
//! payload on IPv4, 1232 on IPv6) and probes upward with padded pings
//! (`ping_data.pmtud_padding`; the pong's `pmtud_received_size` says what arrived).
//! [`Pmtud`] is the state machine of RFC 8899 §5.2:
//!
//! ```text
//!            base probe acked                 gap < granularity / max reached
//!   Base ───────────────────────▶ Searching ─────────────────────────────▶ SearchComplete
//!    │ ▲                             ▲                                         │
//!    │ └──────── black hole ─────────┼──────────── black hole ◀────────────────┤
//!    │ base probe lost MAX_PROBES×    └──────────── raise timer (600 s) ◀───────┘
//!    ▼
//!  Error ── retry timer ──▶ (probe the base again)
//! ```
//!
//! **Search** (RFC 8899 §5.3.2 leaves the algorithm open): probe the configured
//! maximum first (most paths carry it: one probe), then binary search between the
//! largest acknowledged size and the smallest failed one until they are less than
//! [`PmtudConfig::search_granularity`] apart. A size fails after
//! [`PmtudConfig::max_probes`] consecutive lost probes (RFC 8899 §5.1.2
//! `MAX_PROBES`), so a randomly lost probe does not end the search early.
//!
//! **Black holes** (RFC 8899 §4.3): the path stops carrying datagrams of the current
//! size (a route change). The connection reports its data datagrams' fates
//! ([`Pmtud::on_packet_acked`], [`Pmtud::on_packet_lost`]). A loss is *suspicious*
//! when the datagram is larger than the base and was sent after the newest larger
//! datagram that got through: congestion drops some datagrams of a flight, and they
//! are declared lost only once a later one is acknowledged; a black hole drops all
//! of them, and they time out. The first suspicious loss is confirmed at once with
//! two probes sent back to back, one of the current MTU and one of the base: if the
//! base one alone comes back, the MTU falls to the base and a new search runs below
//! the size that failed; if the MTU-sized one comes back, or a large datagram is
//! acknowledged, the suspicion ends. [`PmtudConfig::black_hole_threshold`]
//! suspicious losses in a row fall back without waiting for the probes.
//!
//! Timers are deadlines handed to the caller ([`Pmtud::next_timeout`]); nothing
//! here reads a clock. Probe losses are PMTUD's business only: they must not be
//! reported to the congestion controller (RFC 8899 §3 item 7).

use std::time::Duration;

use atbus_proto::{encoded_frame_len, pb};
use bytes::Bytes;

use crate::time::Timestamp;

/// RFC 8899 `BASE_PLPMTU` for UDP over IPv4, as atbus uses it: a 576-byte datagram
/// less IP and UDP headers.
pub const IPV4_BASE: usize = 548;
/// RFC 8899 `BASE_PLPMTU` for UDP over IPv6: 1280 less the IPv6 and UDP headers
/// (and 8 bytes of slack for extension headers).
pub const IPV6_BASE: usize = 1232;
/// The default largest size probed: a 1500-byte Ethernet MTU less IPv6 and UDP
/// headers (1452 also leaves room for PPPoE on IPv4).
pub const DEFAULT_MAX: usize = 1452;

/// PMTUD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtudConfig {
    /// Size every path carries; the MTU never goes below it.
    pub base: usize,
    /// Largest size probed; the MTU never goes above it.
    pub max: usize,
    /// A probe unanswered this long is lost. RFC 8899 §5.1.1's `PROBE_TIMER` is at
    /// least a second, for transports without RTT samples; atbus has them, so the
    /// connection should keep this at a few RTTs with
    /// [`Pmtud::set_probe_timeout`] (as QUIC bases it on the PTO).
    pub probe_timeout: Duration,
    /// Consecutive lost probes of one size before that size fails (RFC 8899
    /// `MAX_PROBES`, 3).
    pub max_probes: u32,
    /// After a search completes below `max`, the next search starts this much later
    /// (RFC 8899 `PMTU_RAISE_TIMER`, 600 s).
    pub raise_interval: Duration,
    /// In [`PmtudState::Error`], the base is probed again this much later.
    pub error_retry_interval: Duration,
    /// The search ends when the largest acknowledged and the smallest failed size
    /// are less than this far apart, so the MTU found is at most this much below
    /// the path's.
    pub search_granularity: usize,
    /// Datagrams larger than the base lost in a row that signal a black hole.
    pub black_hole_threshold: u32,
}

impl PmtudConfig {
    /// Defaults for UDP over IPv4: base 548.
    pub fn ipv4() -> Self {
        PmtudConfig::default()
    }

    /// Defaults for UDP over IPv6: base 1232.
    pub fn ipv6() -> Self {
        PmtudConfig {
            base: IPV6_BASE,
            ..PmtudConfig::default()
        }
    }
}

impl Default for PmtudConfig {
    fn default() -> Self {
        PmtudConfig {
            base: IPV4_BASE,
            max: DEFAULT_MAX,
            probe_timeout: Duration::from_secs(1),
            max_probes: 3,
            raise_interval: Duration::from_secs(600),
            error_retry_interval: Duration::from_secs(60),
            search_granularity: 16,
            black_hole_threshold: 4,
        }
    }
}

/// RFC 8899 §5.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtudState {
    /// The MTU is the base, being confirmed by a probe of that size (at the start
    /// and after a black hole).
    Base,
    /// Probing upward.
    Searching,
    /// Done until the raise timer; the MTU is the largest size acknowledged.
    SearchComplete,
    /// Not even base-size probes got through; the MTU stays the base and the base
    /// is probed again later.
    Error,
}

/// A probe to send: a datagram of exactly `size` bytes holding a padded ping
/// (see [`probe_ping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRequest {
    /// Datagram size, bytes.
    pub size: usize,
    /// Number of this probe, increasing.
    pub id: u64,
}

/// Counters of one PMTUD state machine, for connection statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PmtudStats {
    /// Probes handed out by [`Pmtud::next_probe`].
    pub probes_sent: u64,
    /// Probes declared lost (timed out).
    pub probes_lost: u64,
    /// Fallbacks to the base.
    pub black_holes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    size: usize,
    deadline: Timestamp,
}

/// A suspected black hole being confirmed (RFC 8899 §4.3): a probe of the current
/// MTU, then one of the base, back to back. On a FIFO path the first answer to come
/// back tells: the MTU-sized one means the path still carries the MTU; the base
/// one alone means a black hole.
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    /// The MTU when the suspicion began: the size of the first probe.
    size: usize,
    /// Probes still to send: 2 (both), 1 (the base one), 0.
    to_send: u8,
    started: Timestamp,
    /// Neither answered by then: inconclusive (the path may be down altogether).
    deadline: Timestamp,
    /// Pairs sent so far, including this one.
    round: u32,
}

/// Pairs of confirmation probes whose base probe alone must be answered before a
/// suspicion is a black hole: with one, a randomly lost MTU-sized probe (5 % on a
/// lossy path) would drop the MTU to the base; with two, 0.25 %.
pub const CONFIRMATION_ROUNDS: u32 = 2;

/// The DPLPMTUD state machine of one datagram path. See the
/// [module documentation](self).
///
/// ```
/// use atbus_core::connection::pmtud::{Pmtud, PmtudConfig, PmtudState};
/// use atbus_core::time::Timestamp;
///
/// let mut pmtud = Pmtud::new(PmtudConfig::ipv4(), Timestamp::ZERO);
/// assert_eq!(pmtud.current_mtu(), 548);
/// let now = Timestamp::ZERO;
/// let probe = pmtud.next_probe(now).unwrap(); // confirm the base
/// pmtud.on_probe_acked(now, probe.size);
/// let probe = pmtud.next_probe(now).unwrap(); // try the maximum
/// assert_eq!(probe.size, 1452);
/// pmtud.on_probe_acked(now, probe.size);
/// assert_eq!(pmtud.current_mtu(), 1452);
/// assert_eq!(pmtud.state(), PmtudState::SearchComplete);
/// ```
#[derive(Debug, Clone)]
pub struct Pmtud {
    config: PmtudConfig,
    state: PmtudState,
    /// The largest size known to get through: the MTU to use.
    mtu: usize,
    /// The smallest size that failed in this search; `max + 1` if none did.
    failed: usize,
    /// `failed` for the search that follows the base confirmation.
    next_search_ceiling: usize,
    /// The MTU a black hole fell back from: the search after the fallback probes it
    /// first, so that a false alarm (congestion that dropped the large probes of
    /// the confirmation while the small one fitted in the queue) costs one probe,
    /// not the raise interval at a smaller MTU.
    recheck: Option<usize>,
    /// Consecutive losses of probes of the current size.
    probe_count: u32,
    outstanding: Option<Outstanding>,
    suspicion: Option<Suspicion>,
    /// When the next probe may go (`NEVER`: none planned).
    next_probe_at: Timestamp,
    next_id: u64,
    /// Consecutive losses of datagrams larger than the base.
    large_losses: u32,
    /// Send time of the newest suspicious loss counted in `large_losses`.
    newest_large_lost: Timestamp,
    /// Send time of the newest datagram larger than the base that got through.
    newest_large_delivered: Timestamp,
    /// Losses of datagrams sent before this instant (the last fallback) are old news.
    fallback_at: Timestamp,
    stats: PmtudStats,
}

impl Pmtud {
    /// A state machine at the base, ready to confirm it with a probe at `now`.
    /// `config.max` below `config.base` is taken as the base.
    pub fn new(mut config: PmtudConfig, now: Timestamp) -> Self {
        config.base = config.base.max(1);
        config.max = config.max.max(config.base);
        config.max_probes = config.max_probes.max(1);
        config.black_hole_threshold = config.black_hole_threshold.max(1);
        Pmtud {
            config,
            state: PmtudState::Base,
            mtu: config.base,
            failed: config.max + 1,
            next_search_ceiling: config.max + 1,
            recheck: None,
            probe_count: 0,
            outstanding: None,
            suspicion: None,
            next_probe_at: now,
            next_id: 0,
            large_losses: 0,
            newest_large_lost: Timestamp::ZERO,
            newest_large_delivered: Timestamp::ZERO,
            fallback_at: Timestamp::ZERO,
            stats: PmtudStats::default(),
        }
    }

    /// The MTU to use now: the largest size known to get through.
    pub fn current_mtu(&self) -> usize {
        self.mtu
    }

    /// Where the state machine is.
    pub fn state(&self) -> PmtudState {
        self.state
    }

    /// The configuration in use.
    pub fn config(&self) -> &PmtudConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> PmtudStats {
        self.stats
    }

    /// Changes the probe timeout (keep it a few RTTs; see
    /// [`PmtudConfig::probe_timeout`]). Applies to the next probe sent.
    pub fn set_probe_timeout(&mut self, timeout: Duration) {
        self.config.probe_timeout = timeout;
    }

    /// The probe to send at `now`, if one is due and none is outstanding. The caller
    /// sends a datagram of exactly `size` bytes (see [`probe_ping`]) outside the
    /// congestion window, then reports the outcome with
    /// [`on_probe_acked`](Self::on_probe_acked) or lets
    /// [`poll_timeout`](Self::poll_timeout) declare it lost.
    pub fn next_probe(&mut self, now: Timestamp) -> Option<ProbeRequest> {
        if let Some(suspicion) = self.suspicion.as_mut() {
            let size = match suspicion.to_send {
                2 => suspicion.size,
                1 => self.config.base,
                _ => return None,
            };
            suspicion.to_send -= 1;
            return Some(self.new_probe(size));
        }
        if self.outstanding.is_some() || now < self.next_probe_at {
            return None;
        }
        let size = match self.state {
            PmtudState::Base | PmtudState::Error => self.config.base,
            PmtudState::Searching => match self.candidate() {
                Some(size) => size,
                None => {
                    self.complete(now);
                    return None;
                }
            },
            PmtudState::SearchComplete => {
                // RFC 8899 §5.2: the raise timer starts a new search from here.
                self.failed = self.config.max + 1;
                self.probe_count = 0;
                match self.candidate() {
                    Some(size) => {
                        self.state = PmtudState::Searching;
                        size
                    }
                    None => {
                        self.complete(now);
                        return None;
                    }
                }
            }
        };
        self.outstanding = Some(Outstanding {
            size,
            deadline: now + self.config.probe_timeout,
        });
        self.next_probe_at = Timestamp::NEVER;
        Some(self.new_probe(size))
    }

    fn new_probe(&mut self, size: usize) -> ProbeRequest {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.probes_sent += 1;
        ProbeRequest { size, id }
    }

    /// A suspicion ended without a black hole: the search, if one was running,
    /// goes on.
    fn end_suspicion(&mut self) {
        if self.suspicion.take().is_some() && self.state == PmtudState::Searching {
            self.next_probe_at = Timestamp::ZERO;
        }
    }

    /// The next size to probe in a search, `None` when the search is over.
    fn candidate(&self) -> Option<usize> {
        if self.mtu >= self.config.max {
            return None;
        }
        if let Some(size) = self.recheck.filter(|&r| r > self.mtu) {
            return Some(size);
        }
        if self.failed > self.config.max {
            return Some(self.config.max);
        }
        let gap = self.failed.saturating_sub(self.mtu);
        (gap > self.config.search_granularity).then(|| self.mtu + gap / 2)
    }

    fn complete(&mut self, now: Timestamp) {
        self.state = PmtudState::SearchComplete;
        self.probe_count = 0;
        self.next_probe_at = now + self.config.raise_interval;
    }

    /// A probe arrived: the pong's `pmtud_received_size` (or the size of the probe
    /// it answers) is `size`. Counts if it answers the outstanding probe, or, while
    /// searching, any probe (a late answer still proves the size). Never raises the
    /// MTU above the configured maximum.
    pub fn on_probe_acked(&mut self, now: Timestamp, size: usize) {
        if let Some(suspicion) = self.suspicion {
            if size >= suspicion.size {
                // The path still carries the MTU: the losses were congestion.
                self.large_losses = 0;
                self.end_suspicion();
                return;
            }
            if size == self.config.base && suspicion.to_send == 0 {
                if suspicion.round < CONFIRMATION_ROUNDS {
                    // Only the base got through: once more, in case the larger
                    // probe was lost at random.
                    self.suspicion = Some(Suspicion {
                        to_send: 2,
                        started: now,
                        deadline: now + self.config.probe_timeout,
                        round: suspicion.round + 1,
                        ..suspicion
                    });
                    return;
                }
                // Only the base got through, every time: a black hole. The base is
                // confirmed already, so the new search starts at once.
                self.on_black_hole_signal(now);
                self.state = PmtudState::Searching;
                self.failed = self.next_search_ceiling;
                self.next_search_ceiling = self.config.max + 1;
                if self.candidate().is_none() {
                    self.complete(now);
                }
                return;
            }
        }
        let answers_outstanding = self.outstanding.is_some_and(|o| size >= o.size);
        if !answers_outstanding && self.state != PmtudState::Searching {
            return;
        }
        let size = size.min(self.config.max);
        if answers_outstanding {
            self.outstanding = None;
            self.probe_count = 0;
        }
        match self.state {
            PmtudState::Base | PmtudState::Error => {
                // RFC 8899 §5.2: the base is confirmed; search.
                self.state = PmtudState::Searching;
                self.failed = self.next_search_ceiling;
                self.next_search_ceiling = self.config.max + 1;
            }
            PmtudState::Searching => {
                if size > self.mtu {
                    self.mtu = size;
                }
                if self.recheck.is_some_and(|r| size >= r) {
                    self.recheck = None;
                }
                if size >= self.failed {
                    // The failure was a run of random losses after all.
                    self.failed = self.config.max + 1;
                }
            }
            PmtudState::SearchComplete => {}
        }
        if self.outstanding.is_none() {
            self.next_probe_at = self.next_probe_at.min(now);
        }
        if self.state == PmtudState::Searching && self.candidate().is_none() {
            self.outstanding = None;
            self.complete(now);
        }
    }

    /// The outstanding probe of `size` is lost (normally found by
    /// [`poll_timeout`](Self::poll_timeout)). After `max_probes` losses in a row the
    /// size fails.
    pub fn on_probe_lost(&mut self, now: Timestamp, size: usize) {
        if self.outstanding.is_none_or(|o| o.size != size) {
            return;
        }
        self.outstanding = None;
        self.stats.probes_lost += 1;
        self.probe_count += 1;
        self.next_probe_at = now;
        if self.probe_count < self.config.max_probes {
            return;
        }
        self.probe_count = 0;
        match self.state {
            PmtudState::Base | PmtudState::Error => {
                // RFC 8899 §5.2: the path does not even carry the base.
                self.state = PmtudState::Error;
                self.next_probe_at = now + self.config.error_retry_interval;
            }
            PmtudState::Searching => {
                self.failed = self.failed.min(size);
                if self.recheck == Some(size) {
                    self.recheck = None;
                }
                if self.candidate().is_none() {
                    self.complete(now);
                }
            }
            PmtudState::SearchComplete => {}
        }
    }

    /// Handles the deadline of [`next_timeout`](Self::next_timeout): an unanswered
    /// probe is lost. Afterwards [`next_probe`](Self::next_probe) may have a probe.
    pub fn poll_timeout(&mut self, now: Timestamp) {
        if self.suspicion.is_some_and(|s| now >= s.deadline) {
            self.end_suspicion();
        }
        if let Some(o) = self.outstanding {
            if now >= o.deadline {
                self.on_probe_lost(now, o.size);
            }
        }
    }

    /// The next instant the caller must act: the outstanding probe's deadline (call
    /// [`poll_timeout`](Self::poll_timeout)) or when the next probe is due (call
    /// [`next_probe`](Self::next_probe)); may be in the past. `None`: nothing
    /// planned.
    pub fn next_timeout(&self) -> Option<Timestamp> {
        if let Some(suspicion) = self.suspicion {
            return Some(if suspicion.to_send > 0 {
                suspicion.started
            } else {
                suspicion.deadline
            });
        }
        let at = match self.outstanding {
            Some(o) => o.deadline,
            None => self.next_probe_at,
        };
        (at != Timestamp::NEVER).then_some(at)
    }

    /// A data datagram of `size` bytes sent at `sent_at` was acknowledged.
    pub fn on_packet_acked(&mut self, sent_at: Timestamp, size: usize) {
        if size > self.config.base && sent_at >= self.fallback_at {
            self.newest_large_delivered = self.newest_large_delivered.max(sent_at);
            self.large_losses = 0;
            self.end_suspicion();
        }
    }

    /// A data datagram of `size` bytes sent at `sent_at` was declared lost at `now`.
    /// Returns whether this revealed a black hole (the MTU is now the base).
    ///
    /// The first suspicious loss (see the [module documentation](self)) starts a
    /// confirmation: the next two [`next_probe`](Self::next_probe) calls return a
    /// probe of the current MTU and one of the base, to send back to back; if only
    /// the base one is answered, the MTU falls to the base in
    /// [`on_probe_acked`](Self::on_probe_acked). `black_hole_threshold` suspicious
    /// losses in a row fall back without waiting.
    pub fn on_packet_lost(&mut self, now: Timestamp, sent_at: Timestamp, size: usize) -> bool {
        if size <= self.config.base
            || sent_at < self.fallback_at
            || sent_at <= self.newest_large_delivered
        {
            return false;
        }
        // Datagrams sent together (one flight, lost to one burst or one lost
        // acknowledgement) count once: the threshold wants losses spread over
        // time, as a black hole gives.
        if sent_at > self.newest_large_lost {
            self.newest_large_lost = sent_at;
            self.large_losses += 1;
        }
        if self.large_losses >= self.config.black_hole_threshold {
            self.on_black_hole_signal(now);
            return true;
        }
        if self.suspicion.is_none() && self.mtu > self.config.base {
            // Confirm at once rather than wait for more timeouts; the search
            // pauses meanwhile.
            self.outstanding = None;
            self.suspicion = Some(Suspicion {
                size: self.mtu,
                to_send: 2,
                started: now,
                deadline: now + self.config.probe_timeout,
                round: 1,
            });
        }
        false
    }

    /// The path stopped carrying datagrams of the current MTU (found by
    /// [`on_packet_lost`](Self::on_packet_lost) or by the caller): fall back to
    /// the base now, confirm it, and search again below the size that failed.
    pub fn on_black_hole_signal(&mut self, now: Timestamp) {
        self.large_losses = 0;
        if self.mtu <= self.config.base && self.state != PmtudState::Searching {
            return;
        }
        (self.next_search_ceiling, self.recheck) = if self.mtu > self.config.base {
            (self.mtu, Some(self.mtu))
        } else {
            (self.config.max + 1, None)
        };
        self.mtu = self.config.base;
        self.state = PmtudState::Base;
        self.probe_count = 0;
        self.outstanding = None;
        self.suspicion = None;
        self.next_probe_at = now;
        self.fallback_at = now;
        self.stats.black_holes += 1;
    }
}

/// A ping frame whose encoded frame is exactly `size` bytes, for a probe datagram
/// that holds nothing else; `None` if `size` is smaller than an unpadded ping (or
/// within a few bytes of it: the smallest padding field takes three), or one of the
/// rare sizes no frame has (134 and 16 391 bytes: where the frame's length prefix
/// grows a byte).
///
/// The padding is `pmtud_padding`; where varint boundaries make an exact length
/// impossible with padding alone, `pmtud_received_size` (meaningless in a ping,
/// ignored by receivers) and an empty `head` take up the slack.
pub fn probe_ping(timepoint_microseconds: i64, size: usize) -> Option<pb::FrameMessage> {
    let frame = |padding: usize, filler: i32, head: bool| pb::FrameMessage {
        head: head.then(pb::MessageHead::default),
        body: Some(pb::frame_message::Body::Ping(pb::PingData {
            timepoint_microseconds,
            pmtud_padding: Bytes::from(vec![0u8; padding]),
            pmtud_received_size: filler,
        })),
    };
    let bare = encoded_frame_len(&frame(0, 0, false));
    let guess = size.checked_sub(bare)?;
    // Padding costs its length plus 1 to 4 bytes of tag and length; the fillers
    // cost 2 to 4 bytes and shift the varint boundaries.
    for head in [false, true] {
        for filler in [0, 1, 0x80, 0x4000] {
            for padding in (guess.saturating_sub(12)..=guess).rev() {
                let candidate = frame(padding, filler, head);
                if encoded_frame_len(&candidate) == size {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RTT: Duration = Duration::from_millis(40);

    fn config() -> PmtudConfig {
        PmtudConfig {
            probe_timeout: Duration::from_millis(120),
            ..PmtudConfig::ipv4()
        }
    }

    /// A simulated path: a probe is answered one RTT later iff it fits the link.
    struct Link {
        now: Timestamp,
        probes: u32,
        /// Largest MTU ever reported.
        peak_mtu: usize,
    }

    impl Link {
        fn new() -> Self {
            Link {
                now: Timestamp::ZERO,
                probes: 0,
                peak_mtu: 0,
            }
        }

        /// Drives `pmtud` until nothing is planned before `until`; returns the
        /// time the state machine last changed the MTU or state.
        fn run(&mut self, pmtud: &mut Pmtud, link_mtu: usize, until: Timestamp) {
            loop {
                if let Some(probe) = pmtud.next_probe(self.now) {
                    self.probes += 1;
                    if probe.size <= link_mtu {
                        self.now += RTT;
                        pmtud.on_probe_acked(self.now, probe.size);
                    }
                } else {
                    match pmtud.next_timeout() {
                        Some(at) if at <= until => {
                            self.now = self.now.max(at);
                            pmtud.poll_timeout(self.now);
                        }
                        _ => break,
                    }
                }
                assert!(pmtud.current_mtu() <= link_mtu.max(pmtud.config().base));
                assert!(pmtud.current_mtu() <= pmtud.config().max);
                self.peak_mtu = self.peak_mtu.max(pmtud.current_mtu());
            }
        }
    }

    fn secs(n: u64) -> Timestamp {
        Timestamp::from_micros(n * 1_000_000)
    }

    #[test]
    fn finds_a_1400_byte_link_from_the_ipv4_base_within_5_seconds() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 1400, secs(5));
        assert_eq!(pmtud.state(), PmtudState::SearchComplete);
        let mtu = pmtud.current_mtu();
        assert!((1380..=1400).contains(&mtu), "{mtu}");
        assert!(link.probes <= 20, "{} probes", link.probes);
        assert_eq!(pmtud.stats().probes_sent, u64::from(link.probes));
        assert_eq!(pmtud.stats().probes_lost, 9);
        assert!(link.now <= secs(5), "{:?}", link.now);
    }

    #[test]
    fn a_path_carrying_the_maximum_takes_two_probes() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 9000, secs(5));
        assert_eq!(pmtud.current_mtu(), DEFAULT_MAX);
        assert_eq!(link.probes, 2);
        assert_eq!(pmtud.state(), PmtudState::SearchComplete);
    }

    #[test]
    fn the_mtu_never_exceeds_the_configured_maximum() {
        let mut pmtud = Pmtud::new(
            PmtudConfig {
                max: 1200,
                ..config()
            },
            Timestamp::ZERO,
        );
        let probe = pmtud.next_probe(Timestamp::ZERO).unwrap();
        pmtud.on_probe_acked(Timestamp::ZERO, probe.size);
        let probe = pmtud.next_probe(Timestamp::ZERO).unwrap();
        assert_eq!(probe.size, 1200);
        // A pong claiming a larger datagram does not lift the MTU past the maximum.
        pmtud.on_probe_acked(Timestamp::ZERO, 9000);
        assert_eq!(pmtud.current_mtu(), 1200);
        // Nor does a stray answer once the search is over.
        pmtud.on_probe_acked(Timestamp::ZERO, 1400);
        assert_eq!(pmtud.current_mtu(), 1200);
        // Odd configurations: a maximum below the base is the base.
        let pmtud = Pmtud::new(
            PmtudConfig {
                max: 100,
                ..config()
            },
            Timestamp::ZERO,
        );
        assert_eq!(pmtud.config().max, IPV4_BASE);
    }

    #[test]
    fn a_single_lost_probe_does_not_fail_a_size() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let now = Timestamp::ZERO;
        let probe = pmtud.next_probe(now).unwrap();
        pmtud.on_probe_acked(now, probe.size);
        let probe = pmtud.next_probe(now).unwrap();
        assert_eq!(probe.size, 1452);
        let deadline = pmtud.next_timeout().unwrap();
        pmtud.poll_timeout(deadline);
        // Probed again at the same size; this time it gets through.
        let again = pmtud.next_probe(deadline).unwrap();
        assert_eq!(again.size, 1452);
        assert!(again.id > probe.id);
        pmtud.on_probe_acked(deadline, again.size);
        assert_eq!(pmtud.current_mtu(), 1452);
    }

    #[test]
    fn a_black_hole_falls_back_to_the_base_and_a_new_search_finds_the_smaller_mtu() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 1452, secs(1));
        assert_eq!(pmtud.current_mtu(), 1452);
        // Data flows at 1452; the link drops to 1200. Congestion-like losses (older
        // than a delivered full-size datagram) are not a black hole...
        let t = link.now;
        let at = |ms: u64| t + Duration::from_millis(ms);
        pmtud.on_packet_acked(at(10), 1452);
        for ms in 0..9 {
            assert!(!pmtud.on_packet_lost(at(100), at(ms), 1452));
        }
        // ...nor are losses of small datagrams...
        for ms in 20..40 {
            assert!(!pmtud.on_packet_lost(at(200), at(ms), 500));
        }
        // ...but every full-size datagram after the last delivered one lost is.
        let threshold = pmtud.config().black_hole_threshold as u64;
        for ms in 20..20 + threshold - 1 {
            assert!(!pmtud.on_packet_lost(at(300), at(ms), 1452));
        }
        assert!(pmtud.on_packet_lost(at(300), at(100), 1452));
        assert_eq!(pmtud.current_mtu(), IPV4_BASE);
        assert_eq!(pmtud.state(), PmtudState::Base);
        // Datagrams sent before the fallback do not signal again.
        assert!(!pmtud.on_packet_lost(at(301), at(200), 1452));
        link.now = at(300);
        link.run(&mut pmtud, 1200, at(300) + Duration::from_secs(5));
        assert_eq!(pmtud.state(), PmtudState::SearchComplete);
        let mtu = pmtud.current_mtu();
        assert!((1184..=1200).contains(&mtu), "{mtu}");
    }

    /// A state machine done at 1452, and the time it finished.
    fn complete_at_max() -> (Pmtud, Timestamp) {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 1452, secs(1));
        assert_eq!(pmtud.current_mtu(), 1452);
        (pmtud, link.now)
    }

    #[test]
    fn a_suspicious_loss_is_confirmed_by_two_probes_and_only_the_base_answering_is_a_black_hole() {
        let (mut pmtud, t) = complete_at_max();
        let at = |ms: u64| t + Duration::from_millis(ms);
        pmtud.on_packet_acked(at(10), 1452);
        assert!(!pmtud.on_packet_lost(at(100), at(20), 1452));
        assert_eq!(pmtud.next_timeout(), Some(at(100)));
        let first = pmtud.next_probe(at(100)).unwrap();
        let second = pmtud.next_probe(at(100)).unwrap();
        assert_eq!((first.size, second.size), (1452, IPV4_BASE));
        assert!(pmtud.next_probe(at(100)).is_none());
        // The base answer comes back alone: one more pair, in case the large probe
        // was lost at random...
        pmtud.on_probe_acked(at(140), IPV4_BASE);
        assert_eq!(pmtud.current_mtu(), 1452);
        assert_eq!(pmtud.stats().black_holes, 0);
        let first = pmtud.next_probe(at(140)).unwrap();
        let second = pmtud.next_probe(at(140)).unwrap();
        assert_eq!((first.size, second.size), (1452, IPV4_BASE));
        // ...and alone again: black hole, and the base is confirmed, so the search
        // below 1452 starts at once.
        pmtud.on_probe_acked(at(180), IPV4_BASE);
        assert_eq!(pmtud.current_mtu(), IPV4_BASE);
        assert_eq!(pmtud.state(), PmtudState::Searching);
        assert_eq!(pmtud.stats().black_holes, 1);
        // The old MTU is probed once more (a false alarm would end here), then
        // the search goes below it.
        let now = at(180);
        for _ in 0..config().max_probes {
            let probe = pmtud.next_probe(now).unwrap();
            assert_eq!(probe.size, 1452);
            pmtud.on_probe_lost(now, probe.size);
        }
        let probe = pmtud.next_probe(now).unwrap();
        assert_eq!(probe.size, IPV4_BASE + (1452 - IPV4_BASE) / 2);
    }

    #[test]
    fn a_false_black_hole_is_undone_by_one_probe_of_the_old_mtu() {
        let (mut pmtud, t) = complete_at_max();
        let at = |ms: u64| t + Duration::from_millis(ms);
        pmtud.on_black_hole_signal(at(0));
        assert_eq!(pmtud.current_mtu(), IPV4_BASE);
        let base = pmtud.next_probe(at(0)).unwrap();
        pmtud.on_probe_acked(at(40), base.size);
        let probe = pmtud.next_probe(at(40)).unwrap();
        assert_eq!(probe.size, 1452);
        pmtud.on_probe_acked(at(80), probe.size);
        assert_eq!(pmtud.current_mtu(), 1452);
        assert_eq!(pmtud.state(), PmtudState::SearchComplete);
    }

    #[test]
    fn a_suspicion_ends_when_the_mtu_sized_probe_or_a_large_datagram_gets_through() {
        let (mut pmtud, t) = complete_at_max();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // The MTU-sized probe answers first: congestion, not a black hole.
        pmtud.on_packet_lost(at(100), at(20), 1452);
        pmtud.next_probe(at(100)).unwrap();
        pmtud.next_probe(at(100)).unwrap();
        pmtud.on_probe_acked(at(140), 1452);
        pmtud.on_probe_acked(at(140), IPV4_BASE);
        assert_eq!(pmtud.current_mtu(), 1452);
        assert_eq!(pmtud.state(), PmtudState::SearchComplete);
        // A large datagram acknowledged ends the next suspicion too.
        pmtud.on_packet_lost(at(200), at(150), 1452);
        pmtud.next_probe(at(200)).unwrap();
        pmtud.on_packet_acked(at(160), 1452);
        assert!(pmtud.next_probe(at(200)).is_none());
        pmtud.on_probe_acked(at(240), IPV4_BASE);
        assert_eq!(pmtud.current_mtu(), 1452);
        // Neither probe answered: inconclusive, the raise timer is kept.
        pmtud.on_packet_lost(at(300), at(250), 1452);
        pmtud.next_probe(at(300)).unwrap();
        pmtud.next_probe(at(300)).unwrap();
        let deadline = pmtud.next_timeout().unwrap();
        assert_eq!(deadline, at(300) + config().probe_timeout);
        pmtud.poll_timeout(deadline);
        assert_eq!(pmtud.current_mtu(), 1452);
        assert_eq!(pmtud.next_timeout(), Some(t + config().raise_interval));
    }

    #[test]
    fn a_path_that_drops_even_base_probes_is_in_error_and_retried_later() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 0, secs(5));
        assert_eq!(pmtud.state(), PmtudState::Error);
        assert_eq!(pmtud.current_mtu(), IPV4_BASE);
        assert_eq!(link.probes, 3);
        // The retry comes after the configured interval, and succeeds now.
        let retry = pmtud.next_timeout().unwrap();
        assert!(retry >= link.now + config().error_retry_interval);
        link.run(&mut pmtud, 1452, retry + Duration::from_secs(5));
        assert_eq!(pmtud.current_mtu(), 1452);
    }

    #[test]
    fn the_raise_timer_searches_again_and_finds_a_larger_path() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let mut link = Link::new();
        link.run(&mut pmtud, 1300, secs(5));
        let found = pmtud.current_mtu();
        assert!((1284..=1300).contains(&found), "{found}");
        let raise = pmtud.next_timeout().unwrap();
        assert_eq!(raise, link.now + config().raise_interval);
        // Nothing happens before the raise timer.
        assert!(
            pmtud
                .next_probe(link.now + Duration::from_secs(1))
                .is_none()
        );
        link.run(&mut pmtud, 1452, raise + Duration::from_secs(5));
        assert_eq!(pmtud.current_mtu(), 1452);
    }

    #[test]
    fn late_answers_count_only_while_searching() {
        let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
        let now = Timestamp::ZERO;
        // In Base, an answer to no outstanding probe is ignored.
        pmtud.on_probe_acked(now, 1000);
        assert_eq!(pmtud.state(), PmtudState::Base);
        let probe = pmtud.next_probe(now).unwrap();
        pmtud.on_probe_acked(now, probe.size);
        let probe = pmtud.next_probe(now).unwrap();
        assert_eq!(probe.size, 1452);
        // Searching: a late answer to an earlier probe still proves its size.
        pmtud.on_probe_acked(now, 1000);
        assert_eq!(pmtud.current_mtu(), 1000);
    }

    #[test]
    fn probe_pings_have_the_exact_requested_size() {
        let mut missing = Vec::new();
        for size in (30..20_000).chain([65_000]) {
            match probe_ping(1_234_567_890, size) {
                Some(frame) => assert_eq!(encoded_frame_len(&frame), size),
                None => missing.push(size),
            }
        }
        // Below a bare ping, and where the frame's length prefix grows a byte.
        let bare = missing.iter().take_while(|&&s| s < 40).count();
        assert_eq!(&missing[bare..], [134, 16_391], "{missing:?}");
    }

    proptest! {
        #[test]
        fn search_ends_within_20_bytes_below_any_link_and_never_above(
            link_mtu in IPV4_BASE..=DEFAULT_MAX,
        ) {
            let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
            let mut link = Link::new();
            link.run(&mut pmtud, link_mtu, secs(60));
            let mtu = pmtud.current_mtu();
            prop_assert_eq!(pmtud.state(), PmtudState::SearchComplete);
            prop_assert!(mtu <= link_mtu && mtu + 20 >= link_mtu, "{} on {}", mtu, link_mtu);
            prop_assert!(link.peak_mtu <= link_mtu);
            prop_assert!(link.probes <= 25, "{} probes", link.probes);
        }

        #[test]
        fn random_probe_losses_never_raise_the_mtu_above_the_link(
            link_mtu in IPV4_BASE..=DEFAULT_MAX,
            losses in proptest::collection::vec(any::<bool>(), 64),
        ) {
            // Probes that fit are still lost when `losses` says so.
            let mut pmtud = Pmtud::new(config(), Timestamp::ZERO);
            let mut now = Timestamp::ZERO;
            for &lost in &losses {
                match pmtud.next_probe(now) {
                    Some(probe) if probe.size <= link_mtu && !lost => {
                        now += RTT;
                        pmtud.on_probe_acked(now, probe.size);
                    }
                    _ => match pmtud.next_timeout() {
                        Some(at) => {
                            now = now.max(at);
                            pmtud.poll_timeout(now);
                        }
                        None => break,
                    },
                }
                prop_assert!(pmtud.current_mtu() <= link_mtu.max(IPV4_BASE));
                prop_assert!(pmtud.current_mtu() >= IPV4_BASE);
            }
        }
    }
}
