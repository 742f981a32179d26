//! The public ends of a channel: [`Reader`] and [`Writer`], and [`remove`].

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;
use rustix::thread::futex;

use crate::error::{OpenError, RecvError, SendError};
use crate::layout::{DEFAULT_SKIP_TIMEOUT, Layout, field};
use crate::mapping::{Mapping, channel_path};
use crate::ring::{Geometry, Poll, ReaderState, Ready, Region, WriterState, reader_sleeping};

/// Milliseconds of `CLOCK_MONOTONIC_COARSE`, the clock of claim stamps and skip
/// timeouts. It is one clock for all processes, never set back, and (like
/// `/dev/shm`) reset only by a reboot, so a claim stamped by a process that has
/// since died is still comparable with the reader's clock. It stops while the
/// machine is suspended, as the writers do, so a suspend does not make live claims
/// look late (`CLOCK_BOOTTIME` would). The coarse variant is read from the vDSO in
/// a few nanoseconds, with a resolution of a few milliseconds.
pub fn clock_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Pause instructions between two polls of an idle ring.
const BACKOFF_SPINS: u32 = 8;
/// Idle polls between two `sched_yield`s while busy-polling.
const YIELD_EVERY: u32 = 256;

/// The reader publishes its head after consuming this fraction of the ring (and
/// whenever it finds the ring empty or stalled, and when dropped): one store to
/// the shared head for many records.
const HEAD_PUBLISH_FRACTION: u64 = 16;

/// How a reader waits for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Never sleep: poll the ring continuously (one core busy; lowest latency).
    /// The reader yields the CPU (`sched_yield`) every 256 idle polls, so a
    /// writer that shares its core is not starved for a whole time slice.
    BusyPoll,
    /// Poll `spins` times, then sleep on the channel's futex until a writer
    /// commits (writers only make the wake-up system call while the reader
    /// has declared itself asleep).
    SpinThenSleep {
        /// Polls before sleeping.
        spins: u32,
    },
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenSleep { spins: 2000 }
    }
}

/// The reader's settings (local to the reader; not stored in the channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    /// How long a writer may hold a claimed record before the reader skips it
    /// as torn. Must exceed the longest pause a live writer can take between
    /// claiming and committing (see the crate docs); default 1 s.
    pub skip_timeout: Duration,
    /// How to wait in [`Reader::recv`] and [`Reader::recv_timeout`].
    pub wait: WaitStrategy,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self {
            skip_timeout: DEFAULT_SKIP_TIMEOUT,
            wait: WaitStrategy::default(),
        }
    }
}

/// Counters kept in the channel header (they survive reader restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// The reader's consumed position (bytes).
    pub head: u64,
    /// The writers' claim position (bytes).
    pub tail: u64,
    /// Claimed-and-stamped records whose writer did not commit within the skip
    /// timeout (the writer died mid-record or was too slow).
    pub expired_claims: u64,
    /// Gaps of claimed space that no writer ever stamped (the writer died just
    /// after claiming).
    pub torn_gaps: u64,
    /// Bytes of those gaps.
    pub torn_bytes: u64,
    /// Whether the reader is asleep on the futex right now.
    pub reader_sleeping: bool,
}

fn stats_of(map: &Mapping) -> ChannelStats {
    let read = |i| map.field(i).load(Ordering::Relaxed);
    ChannelStats {
        head: read(field::HEAD),
        tail: read(field::TAIL),
        expired_claims: read(field::EXPIRED_CLAIMS),
        torn_gaps: read(field::TORN_GAPS),
        torn_bytes: read(field::TORN_BYTES),
        reader_sleeping: read(field::READER_SLEEPING) != 0,
    }
}

/// The one receiving end of a channel.
///
/// Only one reader may be attached at a time (an advisory `flock` on the
/// channel file, which the kernel releases when the process dies).
///
/// # Delivery guarantee
///
/// A message is consumed when the [`Received`] guard is dropped: the record is
/// cleared and the head published. A committed message is never lost; it is
/// delivered again (to the next reader) only if the reader died before the guard
/// was dropped. Consume a message after its effect is durable to get
/// exactly-once processing across reader crashes.
#[derive(Debug)]
pub struct Reader {
    map: Mapping,
    geo: Geometry,
    state: ReaderState,
    config: ReaderConfig,
}

impl Reader {
    /// Creates channel `name` and becomes its reader. Fails with
    /// [`OpenError::AlreadyExists`] (leaving the file alone) if it exists.
    pub fn create(name: &str, layout: Layout, config: ReaderConfig) -> Result<Self, OpenError> {
        Self::attach(Mapping::create(name, layout)?, config)
    }

    /// Attaches as the reader of the existing channel `name` (e.g. after a
    /// restart), resuming at the first unconsumed record.
    pub fn open(name: &str, config: ReaderConfig) -> Result<Self, OpenError> {
        Self::attach(Mapping::open(name, None)?, config)
    }

    /// Creates channel `name`, or attaches to it if it exists with exactly
    /// `layout` ([`OpenError::LayoutMismatch`] otherwise).
    pub fn open_or_create(
        name: &str,
        layout: Layout,
        config: ReaderConfig,
    ) -> Result<Self, OpenError> {
        match Mapping::create(name, layout) {
            Ok(map) => Self::attach(map, config),
            Err(OpenError::AlreadyExists { .. }) => {
                Self::attach(Mapping::open(name, Some(layout))?, config)
            }
            Err(e) => Err(e),
        }
    }

    fn attach(map: Mapping, config: ReaderConfig) -> Result<Self, OpenError> {
        rustix::fs::flock(map.file(), FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            if e == rustix::io::Errno::WOULDBLOCK {
                OpenError::ReaderAttached {
                    name: map.name().to_owned(),
                }
            } else {
                OpenError::Io {
                    op: "flock",
                    name: map.name().to_owned(),
                    source: e.into(),
                }
            }
        })?;
        let geo = Geometry::from(map.layout());
        let timeout_ms = u64::try_from(config.skip_timeout.as_millis()).unwrap_or(u64::MAX / 4);
        let state = ReaderState::resume(&map, timeout_ms)
            .with_tail_check_every(64)
            .with_publish_every(geo.ring_size / HEAD_PUBLISH_FRACTION);
        Ok(Self {
            map,
            geo,
            state,
            config,
        })
    }

    /// The channel's layout.
    pub fn layout(&self) -> Layout {
        self.map.layout()
    }

    /// The channel's counters.
    pub fn stats(&self) -> ChannelStats {
        stats_of(&self.map)
    }

    /// The position of the next record to deliver.
    pub fn position(&self) -> u64 {
        self.state.head()
    }

    /// Returns the next committed message if there is one now.
    ///
    /// This is also what moves the reader past torn records: call it (or a
    /// waiting variant) regularly.
    pub fn try_recv(&mut self) -> Result<Option<Received<'_>>, RecvError> {
        match self.state.poll(&self.map, self.geo, clock_ms)? {
            Poll::Ready(ready) => Ok(Some(Received {
                reader: self,
                ready,
            })),
            Poll::Empty | Poll::Pending { .. } => Ok(None),
        }
    }

    /// Batch consume: hands every message committed now (at most `max`) to
    /// `each`, without waiting, and returns how many were delivered.
    ///
    /// Messages are consumed **per record taken**: the messages a call takes
    /// from one batch record are walked by reference without a per-message
    /// atomic and consumed together by one store once `each` returned for the
    /// last of them (a plain record: once `each` returned for it). When the call
    /// returns, everything it handed out is consumed. A reader that dies inside
    /// the call re-delivers, after its restart, exactly the messages of the record
    /// it was walking that this call had handed out (none of an earlier record),
    /// and never loses one; a reader restarted after the call returned resumes at
    /// the first message not handed out.
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<usize, RecvError> {
        let mut delivered = 0;
        while delivered < max {
            match self.state.poll(&self.map, self.geo, clock_ms)? {
                Poll::Ready(mut ready) => {
                    // Walk the record's items without a poll each; one consume
                    // (one store) for all the items taken from it.
                    let walked = loop {
                        each(self.map.payload(ready.payload_offset, ready.len));
                        delivered += 1;
                        if delivered == max {
                            break Ok(());
                        }
                        match self.state.next_item(&self.map, self.geo, ready) {
                            Ok(Some(next)) => ready = next,
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    };
                    self.state.consume(&self.map, self.geo, ready);
                    walked?;
                }
                Poll::Empty | Poll::Pending { .. } => break,
            }
        }
        Ok(delivered)
    }

    /// Waits for the next committed message, at most `timeout`; `None` if none
    /// arrived in time.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Received<'_>>, RecvError> {
        // Reading the clock costs as much as a message: only when there is none.
        let ready = match self.state.poll(&self.map, self.geo, clock_ms)? {
            Poll::Ready(ready) => Some(ready),
            _ => self.wait_ready(Instant::now().checked_add(timeout))?,
        };
        match ready {
            Some(ready) => Ok(Some(Received {
                reader: self,
                ready,
            })),
            None => Ok(None),
        }
    }

    /// Waits for the next committed message.
    pub fn recv(&mut self) -> Result<Received<'_>, RecvError> {
        loop {
            if let Some(ready) = self.wait_ready(None)? {
                return Ok(Received {
                    reader: self,
                    ready,
                });
            }
        }
    }

    /// Copies the next message into `buf` (cleared first) and consumes it,
    /// waiting at most `timeout`. Returns whether a message arrived.
    pub fn recv_into(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<bool, RecvError> {
        buf.clear();
        match self.recv_timeout(timeout)? {
            Some(message) => {
                buf.extend_from_slice(&message);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn wait_ready(&mut self, deadline: Option<Instant>) -> Result<Option<Ready>, RecvError> {
        let mut spins: u32 = 0;
        loop {
            let seen = match self.state.poll(&self.map, self.geo, clock_ms)? {
                Poll::Ready(ready) => return Ok(Some(ready)),
                Poll::Empty => None,
                Poll::Pending { seen, retry_ms } => Some((seen, retry_ms)),
            };
            spins = spins.wrapping_add(1);
            let now = (spins % 64 == 0 || !matches!(self.config.wait, WaitStrategy::BusyPoll))
                .then(Instant::now);
            if let (Some(now), Some(deadline)) = (now, deadline) {
                if now >= deadline {
                    return Ok(None);
                }
            }
            match self.config.wait {
                WaitStrategy::SpinThenSleep { spins: limit } if spins > limit => {
                    let mut nap = deadline.map_or(Duration::from_secs(1), |d| {
                        d.saturating_duration_since(now.unwrap_or_else(Instant::now))
                    });
                    if let Some((_, retry_ms)) = seen {
                        nap = nap.min(Duration::from_millis(retry_ms));
                    }
                    self.sleep(seen.map(|(word, _)| word), nap);
                    spins = 0;
                }
                // Every so often give the core away, in case a writer waits for it
                // (an oversubscribed machine); otherwise pause briefly: the line
                // polled is the one the writer is writing, and every poll takes it
                // away from the writer.
                _ if spins % YIELD_EVERY == 0 => std::thread::yield_now(),
                _ => (0..BACKOFF_SPINS).for_each(|_| std::hint::spin_loop()),
            }
        }
    }

    /// Sleeps on the futex for at most `nap` unless the head changed from `seen`.
    fn sleep(&self, seen: Option<u64>, nap: Duration) {
        let flag = self.map.field(field::READER_SLEEPING);
        let futex_word = self.map.futex();
        flag.store(1, Ordering::SeqCst);
        let seq = futex_word.load(Ordering::SeqCst);
        if self.state.may_sleep(&self.map, self.geo, seen) {
            let timeout = rustix::time::Timespec {
                tv_sec: nap.as_secs() as _,
                tv_nsec: nap.subsec_nanos() as _,
            };
            // Shared (not PRIVATE): writers in other processes wake us. Early
            // returns (EAGAIN, EINTR, ETIMEDOUT) just mean "poll again".
            let _ = futex::wait(futex_word, futex::Flags::empty(), seq, Some(&timeout));
        }
        flag.store(0, Ordering::SeqCst);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Consumption may have run ahead of the shared head (batch consume).
        self.state.publish(&self.map);
    }
}

/// A received message; dropping it consumes it (see [`Reader`]'s delivery
/// guarantee). Dereferences to the payload, which stays in the ring until then.
#[derive(Debug)]
pub struct Received<'a> {
    reader: &'a mut Reader,
    ready: Ready,
}

impl Received<'_> {
    /// The record's position in the channel (bytes since creation): unique and
    /// increasing, so a consumer can recognise a re-delivered message.
    pub fn position(&self) -> u64 {
        self.ready.position
    }
}

impl Deref for Received<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.reader
            .map
            .payload(self.ready.payload_offset, self.ready.len)
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        let reader = &mut *self.reader;
        reader.state.consume(&reader.map, reader.geo, self.ready);
    }
}

/// A sending end of a channel. Any number of writers, in any processes, may
/// send concurrently. Cloning a writer shares the mapping.
#[derive(Debug, Clone)]
pub struct Writer {
    map: Arc<Mapping>,
    geo: Geometry,
    state: WriterState,
}

impl Writer {
    /// Attaches to the existing channel `name`.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Ok(Self::from_mapping(Mapping::open(name, None)?))
    }

    /// Attaches to the existing channel `name`, which must have exactly `layout`.
    pub fn open_with_layout(name: &str, layout: Layout) -> Result<Self, OpenError> {
        Ok(Self::from_mapping(Mapping::open(name, Some(layout))?))
    }

    fn from_mapping(map: Mapping) -> Self {
        let geo = Geometry::from(map.layout());
        Self {
            map: Arc::new(map),
            geo,
            state: WriterState::new(),
        }
    }

    /// The channel's layout.
    pub fn layout(&self) -> Layout {
        self.map.layout()
    }

    /// The channel's counters.
    pub fn stats(&self) -> ChannelStats {
        stats_of(&self.map)
    }

    /// Sends `message` if the ring has room now. Returns the record's position.
    pub fn try_send(&mut self, message: &[u8]) -> Result<u64, SendError> {
        let position = self
            .state
            .try_send(&*self.map, self.geo, message, clock_ms())?;
        self.wake_reader();
        Ok(position)
    }

    /// Sends a prefix of `messages` in batch records: as many messages as fit
    /// in one record (up to `max_message` + 8 bytes of items) are claimed,
    /// written and committed at once, for as many records as the ring has room
    /// for. A writer killed mid-record loses that record's messages, none of
    /// which were committed; the reader skips it as one torn record. Returns
    /// how many were sent, at least one; call again with the rest. Errors are
    /// those of the first message ([`SendError::Full`] if none fits now).
    pub fn try_send_batch<M: AsRef<[u8]>>(&mut self, messages: &[M]) -> Result<usize, SendError> {
        let sent = self
            .state
            .try_send_batch(&*self.map, self.geo, messages, clock_ms(), |_| {})?;
        self.wake_reader();
        Ok(sent)
    }

    fn wake_reader(&self) {
        if reader_sleeping(&*self.map) {
            let futex_word = self.map.futex();
            futex_word.fetch_add(1, Ordering::SeqCst);
            let _ = futex::wake(futex_word, futex::Flags::empty(), 1);
        }
    }

    /// Sends `message`, waiting at most `timeout` for room. Waiting polls with
    /// a growing back-off (spin, yield, then sleeps of up to 1 ms).
    pub fn send_timeout(&mut self, message: &[u8], timeout: Duration) -> Result<u64, SendError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut attempt: u32 = 0;
        loop {
            match self.try_send(message) {
                Err(SendError::Full) => {}
                other => return other,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(SendError::Timeout);
            }
            attempt = attempt.saturating_add(1);
            if attempt < 64 {
                std::hint::spin_loop();
            } else if attempt < 128 {
                std::thread::yield_now();
            } else {
                let micros = 1u64 << (attempt - 128).min(10);
                std::thread::sleep(Duration::from_micros(micros.min(1000)));
            }
        }
    }

    /// Testing hook: claims a record of `len` bytes and abandons it at `at`, as a
    /// writer killed at that point would. The reader skips it after its timeout.
    #[doc(hidden)]
    pub fn abandon_record(&mut self, len: usize, at: AbandonAt) -> Result<(), SendError> {
        let reserved = self.state.reserve(&*self.map, self.geo, len)?;
        if at == AbandonAt::AfterStamp {
            reserved.stamp(&*self.map, clock_ms())?;
        }
        Ok(())
    }

    /// Sends `message`, waiting for room as long as it takes.
    pub fn send(&mut self, message: &[u8]) -> Result<u64, SendError> {
        self.send_timeout(message, Duration::MAX)
    }
}

/// Where [`Writer::abandon_record`] stops (testing hook).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbandonAt {
    /// After claiming room on the tail, before stamping the header.
    AfterClaim,
    /// After stamping the header, before writing the payload.
    AfterStamp,
}

/// Removes channel `name`, refusing if a reader is attached
/// ([`OpenError::ReaderAttached`]) or if records are still unconsumed
/// ([`OpenError::NotEmpty`]). Processes that still map the channel keep their
/// mapping; the name is free for a new `create`.
pub fn remove(name: &str) -> Result<(), OpenError> {
    let map = Mapping::open(name, None)?;
    if rustix::fs::flock(map.file(), FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(OpenError::ReaderAttached {
            name: name.to_owned(),
        });
    }
    let stats = stats_of(&map);
    if stats.tail != stats.head {
        return Err(OpenError::NotEmpty {
            name: name.to_owned(),
            pending: stats.tail.saturating_sub(stats.head),
        });
    }
    remove_force(name)
}

/// Removes channel `name` whatever its state (unconsumed messages are lost).
pub fn remove_force(name: &str) -> Result<(), OpenError> {
    let path = channel_path(name)?;
    std::fs::remove_file(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => OpenError::NotFound {
            name: name.to_owned(),
        },
        _ => OpenError::Io {
            op: "unlink",
            name: name.to_owned(),
            source: e,
        },
    })
}
