//! The claim / commit / skip protocol, independent of where the memory lives.
//!
//! Writers (any number, any process):
//! 1. check for room (`tail + size <= head + ring_size`) and claim `size` bytes by a
//!    compare-and-swap on the tail; a record that would cross the end of the data
//!    area first claims a padding record up to the end, then starts over;
//! 2. stamp the record header `Free{lap} -> Claimed{len, now}` with a
//!    compare-and-swap (free words carry their lap, see `layout.rs`);
//! 3. copy the payload;
//! 4. commit `Claimed -> Committed` with a compare-and-swap.
//!
//! If step 2 or 4 fails, the reader gave up on the record (the writer was slower
//! than the skip timeout) and the send reports [`SendError::Expired`].
//!
//! The reader (one) looks at the header word at its head:
//! - `Committed`: deliver; on consumption clear the payload words, then the
//!   header, to "free for the next lap", then publish the head (so every word below
//!   the head is free for its next use);
//! - `Padding` / `Skipped` (also how a consumed record is marked before it is
//!   cleared, so a reader that dies mid-clear never re-delivers a torn payload):
//!   clear and step over;
//! - `Claimed` with a stamp older than the skip timeout: `Claimed -> Skipped` by
//!   compare-and-swap, clear, step over, count an expired claim;
//! - free for this lap while `tail > head` (a writer claimed space but did not
//!   stamp it yet): wait; after the skip timeout the length is unknown, so the
//!   reader *poisons* every free word from the head up to the next stamped header
//!   (or the tail, or the end of the data area) with a compare-and-swap
//!   `Free -> Poison`. A writer whose stamp lands on poison fails; after a second
//!   timeout the gap is cleared, skipped and counted;
//! - `Poison` found at the head without a recovery in progress (the reader was
//!   restarted mid-recovery): scan and wait again;
//! - free for the *next* lap: a reader died after clearing records but before
//!   publishing the head; step over those words (all cleared) to the first word
//!   that is not.
//!
//! Everything here takes the time (milliseconds of a clock shared by all
//! processes) from the caller, so the loom models and unit tests drive it; the
//! reader asks for it only when a record is late.

use crate::error::{RecvError, SendError};
use crate::layout::field;
use crate::layout::{
    ITEM_CONSUMED, Layout, POISON, RECORD_HEADER, Record, STAMP_MASK, age_ms, free_word, item_word,
    record_size,
};
use crate::sync::{AtomicU64, Ordering};

/// Where the ring's words live: the shared mapping, or a model under loom.
pub(crate) trait Region {
    /// A header field (one of [`crate::layout::field`]).
    fn field(&self, index: usize) -> &AtomicU64;
    /// The data-area word at byte offset `offset` (a multiple of 8, in bounds).
    fn data_word(&self, offset: u64) -> &AtomicU64;
    /// Copies `src` to data-area byte offset `offset`.
    ///
    /// The caller owns those bytes (a successfully stamped claim).
    fn write_payload(&self, offset: u64, src: &[u8]);
    /// Copies `len` bytes from data-area offset `offset` into `dst`.
    #[cfg_attr(not(test), allow(dead_code))]
    fn read_payload(&self, offset: u64, len: u64, dst: &mut Vec<u8>);
    /// Sets the `len / 8` words from data-area offset `offset` to `word`.
    ///
    /// The caller is the reader and the bytes are below no writer's claim.
    fn fill(&self, offset: u64, len: u64, word: u64);
}

/// The ring's geometry as the protocol needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) ring_size: u64,
    pub(crate) max_message: u64,
}

impl From<Layout> for Geometry {
    fn from(layout: Layout) -> Self {
        Self {
            ring_size: layout.ring_size,
            max_message: u64::from(layout.max_message),
        }
    }
}

impl Geometry {
    /// The data-area offset of `position`: always in bounds and 8-aligned, even
    /// for a position read from a corrupted header.
    #[inline]
    fn offset(&self, position: u64) -> u64 {
        position & (self.ring_size - 1) & !(RECORD_HEADER - 1)
    }

    /// The largest payload of a batch record: one item of the largest message.
    #[inline]
    pub(crate) fn max_batch(&self) -> u64 {
        record_size(self.max_message)
    }

    /// The lap of `position`.
    #[inline]
    pub(crate) fn lap(&self, position: u64) -> u64 {
        position / self.ring_size
    }
}

/// One writer's view: its cached copy of the reader's head saves reading the
/// reader's cache line on every send.
#[derive(Debug, Clone)]
pub(crate) struct WriterState {
    cached_head: u64,
}

impl WriterState {
    pub(crate) fn new() -> Self {
        Self { cached_head: 0 }
    }

    fn has_room<R: Region>(&mut self, region: &R, geo: Geometry, tail: u64, size: u64) -> bool {
        if tail + size <= self.cached_head + geo.ring_size {
            return true;
        }
        // Acquire: the reader zeroed everything below the head before publishing it.
        self.cached_head = region.field(field::HEAD).load(Ordering::Acquire);
        tail + size <= self.cached_head + geo.ring_size
    }

    /// Sends one message without waiting. Returns the record's position.
    pub(crate) fn try_send<R: Region>(
        &mut self,
        region: &R,
        geo: Geometry,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<u64, SendError> {
        self.reserve(region, geo, payload.len())?
            .stamp(region, now_ms)?
            .commit(region, payload)
    }

    /// Sends a prefix of `messages` as batch records: as many messages as fit
    /// in one record (at most [`Geometry::max_batch`] bytes of items) are
    /// claimed once, written, and committed once; a longer batch takes several
    /// records, for as long as the ring has room. A record of one message is a
    /// plain record. `sent` is called with each message's position once its
    /// record is committed.
    ///
    /// Returns how many messages were sent (at least one; committed in order),
    /// or the error of the first message ([`SendError::Full`] if not even it
    /// fits now). A writer killed mid-record leaves a claim the reader skips
    /// whole: none of that record's messages were committed.
    pub(crate) fn try_send_batch<R: Region, M: AsRef<[u8]>>(
        &mut self,
        region: &R,
        geo: Geometry,
        messages: &[M],
        now_ms: u64,
        sent: impl FnMut(u64),
    ) -> Result<usize, SendError> {
        self.send_batch_dying_after(region, geo, messages, now_ms, usize::MAX, sent)
    }

    /// [`Self::try_send_batch`] by a writer that dies (stops) after committing
    /// `commits` records, leaving the next one stamped and written but not
    /// committed (testing: `usize::MAX` never dies).
    pub(crate) fn send_batch_dying_after<R: Region, M: AsRef<[u8]>>(
        &mut self,
        region: &R,
        geo: Geometry,
        messages: &[M],
        now_ms: u64,
        commits: usize,
        mut sent: impl FnMut(u64),
    ) -> Result<usize, SendError> {
        let mut done = 0;
        let mut records = 0;
        while done < messages.len() {
            let rest = &messages[done..];
            let first = self.check_len(geo, rest[0].as_ref().len());
            let first = match first {
                Ok(size) => size,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            };
            // The longest prefix that fits in one record and in the known room
            // (a full ring then sends a smaller record rather than nothing).
            let tail = region.field(field::TAIL).load(Ordering::Relaxed);
            let mut room = (self.cached_head + geo.ring_size).saturating_sub(tail);
            if room < geo.max_batch() + RECORD_HEADER {
                // Acquire: as in `has_room`.
                self.cached_head = region.field(field::HEAD).load(Ordering::Acquire);
                room = (self.cached_head + geo.ring_size).saturating_sub(tail);
            }
            let room = room.saturating_sub(RECORD_HEADER);
            let limit = geo.max_batch().min(room.max(first));
            let (count, total) = batch_prefix(geo, rest, first, limit);
            let dying = records == commits;
            let result = if count == 1 {
                let payload = rest[0].as_ref();
                self.reserve(region, geo, payload.len())
                    .and_then(|reserved| {
                        let stamped = reserved.stamp(region, now_ms)?;
                        if dying {
                            stamped.write(region, |at| region.write_payload(at, payload));
                            return Err(SendError::Timeout);
                        }
                        stamped.commit(region, payload)
                    })
            } else {
                self.reserve_bytes(region, geo, total).and_then(|reserved| {
                    let stamped = reserved.stamp(region, now_ms)?;
                    let items = &rest[..count];
                    if dying {
                        stamped.write(region, |at| write_items(region, at, items));
                        return Err(SendError::Timeout);
                    }
                    stamped.commit_batch(region, items)
                })
            };
            match result {
                Ok(position) => {
                    if count == 1 {
                        sent(position);
                    } else {
                        let mut at = position + RECORD_HEADER;
                        for message in &rest[..count] {
                            sent(at);
                            at += record_size(message.as_ref().len() as u64);
                        }
                    }
                    done += count;
                    records += 1;
                }
                Err(e) if done == 0 && !dying => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// The record size of a `len`-byte message, or [`SendError::TooLarge`].
    fn check_len(&self, geo: Geometry, len: usize) -> Result<u64, SendError> {
        if len as u64 > geo.max_message {
            return Err(SendError::TooLarge {
                len,
                max: geo.max_message as usize,
            });
        }
        Ok(record_size(len as u64))
    }

    /// Step 1: claims room for a record of `len` payload bytes (claiming padding
    /// first if the record would cross the end of the data area).
    pub(crate) fn reserve<R: Region>(
        &mut self,
        region: &R,
        geo: Geometry,
        len: usize,
    ) -> Result<Reservation, SendError> {
        self.check_len(geo, len)?;
        self.reserve_bytes(region, geo, len as u64)
    }

    /// [`Self::reserve`] for `len` payload bytes already checked against the
    /// limit of their record kind.
    fn reserve_bytes<R: Region>(
        &mut self,
        region: &R,
        geo: Geometry,
        len: u64,
    ) -> Result<Reservation, SendError> {
        let size = record_size(len);
        let tail_word = region.field(field::TAIL);
        let mut tail = tail_word.load(Ordering::Acquire);
        loop {
            let offset = geo.offset(tail);
            let to_end = geo.ring_size - offset;
            let claim = if size <= to_end { size } else { to_end };
            if !self.has_room(region, geo, tail, claim) {
                return Err(SendError::Full);
            }
            if let Err(current) = tail_word.compare_exchange_weak(
                tail,
                tail + claim,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                tail = current;
                continue;
            }
            if claim == size {
                return Ok(Reservation {
                    position: tail,
                    offset,
                    len,
                    free: free_word(geo.lap(tail)),
                });
            }
            // Padding up to the end; if the stamp fails the reader is already
            // recovering this space as a torn gap, which is just as good.
            let padding = Record::Padding {
                len: to_end - RECORD_HEADER,
            };
            let _ = region.data_word(offset).compare_exchange(
                free_word(geo.lap(tail)),
                padding.word(),
                Ordering::Release,
                Ordering::Relaxed,
            );
            tail += claim;
        }
    }
}

/// How many of `messages` (the first of record size `first`) go into one
/// record of at most `limit` payload bytes, and the record's payload length
/// (for one message: its own length; for several: the items' total).
fn batch_prefix<M: AsRef<[u8]>>(
    geo: Geometry,
    messages: &[M],
    first: u64,
    limit: u64,
) -> (usize, u64) {
    let mut total = first;
    let mut count = 1;
    for message in &messages[1..] {
        let len = message.as_ref().len() as u64;
        if len > geo.max_message || total + record_size(len) > limit {
            break;
        }
        total += record_size(len);
        count += 1;
    }
    if count == 1 {
        (1, messages[0].as_ref().len() as u64)
    } else {
        (count, total)
    }
}

/// Writes `items` back to back from data-area offset `at`: each an item word
/// and its payload, padded to 8 bytes.
#[inline]
fn write_items<R: Region, M: AsRef<[u8]>>(region: &R, mut at: u64, items: &[M]) {
    for item in items {
        let item = item.as_ref();
        let len = item.len() as u64;
        region
            .data_word(at)
            .store(item_word(len), Ordering::Relaxed);
        region.write_payload(at + RECORD_HEADER, item);
        at += record_size(len);
    }
}

/// Room claimed on the tail whose header is not stamped yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation {
    position: u64,
    offset: u64,
    len: u64,
    /// The free word of this position's lap.
    free: u64,
}

impl Reservation {
    /// Step 2: stamps the header `Free{lap} -> Claimed{len, now}`; fails if the
    /// reader poisoned it or the ring has moved past it (this writer was slower
    /// than the skip timeout).
    pub(crate) fn stamp<R: Region>(self, region: &R, now_ms: u64) -> Result<Stamped, SendError> {
        let claimed = Record::Claimed {
            len: self.len,
            stamp: now_ms & STAMP_MASK,
        }
        .word();
        region
            .data_word(self.offset)
            .compare_exchange(self.free, claimed, Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| SendError::Expired {
                position: self.position,
            })?;
        Ok(Stamped { at: self, claimed })
    }
}

/// A stamped claim: the writer owns the payload bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamped {
    at: Reservation,
    claimed: u64,
}

impl Stamped {
    /// Step 3 and 4: copies the payload and commits `Claimed -> Committed`.
    /// `payload` must be the length reserved.
    pub(crate) fn commit<R: Region>(self, region: &R, payload: &[u8]) -> Result<u64, SendError> {
        debug_assert_eq!(payload.len() as u64, self.at.len);
        let committed = Record::Committed { len: self.at.len }.word();
        self.finish(region, committed, |at| region.write_payload(at, payload))
    }

    /// Step 3 and 4 for a batch record: writes the items and commits
    /// `Claimed -> Batch` once. The items must fill the length reserved.
    fn commit_batch<R: Region, M: AsRef<[u8]>>(
        self,
        region: &R,
        items: &[M],
    ) -> Result<u64, SendError> {
        let committed = Record::Batch { len: self.at.len }.word();
        self.finish(region, committed, |at| write_items(region, at, items))
    }

    /// Writes the payload (only if the header is still this claim) and stops:
    /// a writer dying before its commit (testing).
    fn write<R: Region>(self, region: &R, write: impl FnOnce(u64)) {
        if region.data_word(self.at.offset).load(Ordering::Relaxed) == self.claimed {
            write(self.at.offset + RECORD_HEADER);
        }
    }

    /// Calls `write` with the payload's offset, then commits the header to
    /// `committed`.
    #[inline]
    fn finish<R: Region>(
        self,
        region: &R,
        committed: u64,
        write: impl FnOnce(u64),
    ) -> Result<u64, SendError> {
        let header = region.data_word(self.at.offset);
        // A writer that finds its claim skipped does not write: this narrows the
        // late-writer hazard (crate docs) to a writer paused in the middle of the copy.
        if header.load(Ordering::Relaxed) != self.claimed {
            return Err(SendError::Expired {
                position: self.at.position,
            });
        }
        write(self.at.offset + RECORD_HEADER);
        // SeqCst: pairs with the reader's SeqCst store of READER_SLEEPING and its
        // re-check of this word before it sleeps (see `ReaderState::may_sleep`).
        header
            .compare_exchange(self.claimed, committed, Ordering::SeqCst, Ordering::Relaxed)
            .map_err(|_| SendError::Expired {
                position: self.at.position,
            })?;
        Ok(self.at.position)
    }

    /// Writes only the first `n` payload bytes and stops (a writer dying mid-copy).
    #[cfg(test)]
    pub(crate) fn write_prefix<R: Region>(self, region: &R, payload: &[u8], n: usize) {
        region.write_payload(self.at.offset + RECORD_HEADER, &payload[..n]);
    }
}

/// Whether a writer that just committed must wake the reader.
#[inline]
pub(crate) fn reader_sleeping<R: Region>(region: &R) -> bool {
    region.field(field::READER_SLEEPING).load(Ordering::SeqCst) != 0
}

/// A committed record ready for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The record's position.
    pub(crate) position: u64,
    /// Data-area offset of the payload.
    pub(crate) payload_offset: u64,
    /// Payload bytes.
    pub(crate) len: u64,
    /// For an item of a batch record: the record's payload length.
    pub(crate) batch: Option<u64>,
}

/// What the reader found at its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poll {
    /// A committed record.
    Ready(Ready),
    /// Nothing claimed beyond the head.
    Empty,
    /// A writer holds the record at the head; look again within `retry_ms`
    /// milliseconds at the latest (that is when its claim may be skipped).
    Pending {
        /// The header word seen, for the pre-sleep re-check.
        seen: u64,
        retry_ms: u64,
    },
}

/// A torn gap being recovered.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// A zero header below the tail, first seen at `since`.
    Unstamped { at: u64, since: u64 },
    /// `[at, end)` is poisoned since `since`.
    Poisoned { at: u64, end: u64, since: u64 },
}

/// The reader's protocol state.
#[derive(Debug)]
pub(crate) struct ReaderState {
    head: u64,
    stall: Option<Stall>,
    skip_timeout_ms: u64,
    /// Free headers seen in a row at the head, and how often the tail is read
    /// among them: reading the tail (the writers' hottest line) on every idle poll
    /// slows the writers down; it only matters to start the stall timer.
    idle_polls: u32,
    tail_check_every: u32,
    /// The head last published to the shared header, and how far the reader may
    /// run ahead of it before publishing again (0: publish every record). The
    /// words between are cleared for the next lap, which is what a restarted
    /// reader steps over (`finish_clearing`), so deferring costs no safety; it
    /// saves a store to a line the writers read on every full ring.
    published: u64,
    publish_every: u64,
    /// In a batch record at the head: the payload offset of the next item to
    /// look at (items before it are consumed). Zero elsewhere.
    item: u64,
    /// Set by `resume`: the first record this reader delivers may be a batch
    /// record a previous reader partly consumed, so look for its last consumed
    /// mark (a mark consumes its item and every item before it).
    scan_marks: bool,
}

impl ReaderState {
    /// Resumes at the published head.
    pub(crate) fn resume<R: Region>(region: &R, skip_timeout_ms: u64) -> Self {
        let head = region.field(field::HEAD).load(Ordering::Acquire);
        Self {
            head,
            stall: None,
            skip_timeout_ms: skip_timeout_ms.max(1),
            idle_polls: 0,
            tail_check_every: 1,
            published: head,
            publish_every: 0,
            item: 0,
            scan_marks: true,
        }
    }

    /// Publishes the head only after `bytes` of records were consumed since the
    /// last publication, or when the ring is found empty or stalled (batch
    /// consume: one shared store for many records).
    pub(crate) fn with_publish_every(mut self, bytes: u64) -> Self {
        self.publish_every = bytes;
        self
    }

    /// Publishes the head if consumption ran ahead of the shared copy.
    pub(crate) fn publish<R: Region>(&mut self, region: &R) {
        if self.published != self.head {
            self.published = self.head;
            // Release: writers that see this head see the cleared words.
            region
                .field(field::HEAD)
                .store(self.head, Ordering::Release);
        }
    }

    /// Reads the tail on only every `n`th idle poll (the stall timer starts up to
    /// `n` polls late).
    pub(crate) fn with_tail_check_every(mut self, n: u32) -> Self {
        self.tail_check_every = n.max(1);
        self
    }

    /// The position of the next record.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// Steps over padding, skipped and torn records and reports what is at the
    /// head. Publishes the head unless a record is ready.
    #[inline(always)]
    pub(crate) fn poll<R: Region>(
        &mut self,
        region: &R,
        geo: Geometry,
        clock: impl FnMut() -> u64,
    ) -> Result<Poll, RecvError> {
        let polled = self.poll_head(region, geo, clock);
        if !matches!(polled, Ok(Poll::Ready(_))) {
            self.publish(region);
        }
        polled
    }

    fn poll_head<R: Region>(
        &mut self,
        region: &R,
        geo: Geometry,
        mut clock: impl FnMut() -> u64,
    ) -> Result<Poll, RecvError> {
        // The clock is read only when a record is late, never on the hot path.
        let mut cached = None;
        let mut now = move || *cached.get_or_insert_with(|| clock() & STAMP_MASK);
        loop {
            let head = self.head;
            let offset = geo.offset(head);
            let header = region.data_word(offset);
            let word = header.load(Ordering::Acquire);
            let corrupt = RecvError::Corrupt {
                position: head,
                word,
            };
            let record = Record::decode(word).ok_or(corrupt.clone())?;
            let span = |len: u64| -> Result<u64, RecvError> {
                let size = record_size(len);
                if offset + size > geo.ring_size {
                    return Err(corrupt.clone());
                }
                Ok(size)
            };
            match record {
                Record::Committed { len } => {
                    if len > geo.max_message {
                        return Err(corrupt);
                    }
                    span(len)?;
                    self.stall = None;
                    self.scan_marks = false;
                    return Ok(Poll::Ready(Ready {
                        position: head,
                        payload_offset: offset + RECORD_HEADER,
                        len,
                        batch: None,
                    }));
                }
                Record::Batch { len } => {
                    if len > geo.max_batch() {
                        return Err(corrupt);
                    }
                    let size = span(len)?;
                    self.stall = None;
                    if self.scan_marks {
                        // Resume after the last marked item (a restarted reader).
                        self.scan_marks = false;
                        let mut at = self.item;
                        // A garbage item ends the scan; it is reported when reached.
                        while let Ok(item) = self.item_at(region, geo, len, at) {
                            at += record_size(item.len);
                            let word = region.data_word(item.payload_offset - RECORD_HEADER);
                            if word.load(Ordering::Relaxed) & ITEM_CONSUMED != 0 {
                                self.item = at;
                            }
                            if at >= len {
                                break;
                            }
                        }
                    }
                    if self.item < len {
                        return self.item_at(region, geo, len, self.item).map(Poll::Ready);
                    }
                    // Every item consumed (a reader died before clearing).
                    header.store(Record::Skipped { len }.word(), Ordering::Relaxed);
                    self.advance(region, geo, size);
                }
                Record::Padding { len } => {
                    let size = span(len)?;
                    self.advance(region, geo, size);
                }
                Record::Skipped { len } => {
                    let size = span(len)?;
                    self.advance(region, geo, size);
                }
                Record::Claimed { len, stamp } => {
                    // A plain record or a batch record being written.
                    if len > geo.max_batch() {
                        return Err(corrupt);
                    }
                    let size = span(len)?;
                    let age = age_ms(now(), stamp);
                    if age < self.skip_timeout_ms {
                        return Ok(Poll::Pending {
                            seen: word,
                            retry_ms: self.skip_timeout_ms - age,
                        });
                    }
                    if header
                        .compare_exchange(
                            word,
                            Record::Skipped { len }.word(),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                    {
                        region
                            .field(field::EXPIRED_CLAIMS)
                            .fetch_add(1, Ordering::Relaxed);
                        self.advance(region, geo, size);
                    }
                    // On failure the writer committed just in time: look again.
                }
                Record::Free { lap } if lap == geo.lap(head) + 1 => {
                    self.finish_clearing(region, geo);
                }
                Record::Free { lap } if lap != geo.lap(head) => return Err(corrupt),
                Record::Free { .. } => {
                    self.idle_polls = self.idle_polls.wrapping_add(1);
                    if self.stall.is_none() && self.idle_polls % self.tail_check_every != 0 {
                        return Ok(Poll::Empty);
                    }
                    let tail = region.field(field::TAIL).load(Ordering::Acquire);
                    if tail <= head {
                        self.stall = None;
                        return Ok(Poll::Empty);
                    }
                    match self.stall {
                        Some(Stall::Unstamped { at, since }) if at == head => {
                            let age = age_ms(now(), since);
                            if age < self.skip_timeout_ms {
                                return Ok(Poll::Pending {
                                    seen: word,
                                    retry_ms: self.skip_timeout_ms - age,
                                });
                            }
                            self.poison(region, geo, now());
                        }
                        _ => {
                            self.stall = Some(Stall::Unstamped {
                                at: head,
                                since: now(),
                            });
                            return Ok(Poll::Pending {
                                seen: word,
                                retry_ms: self.skip_timeout_ms,
                            });
                        }
                    }
                }
                Record::Poison => match self.stall {
                    Some(Stall::Poisoned { at, end, since }) if at == head => {
                        let age = age_ms(now(), since);
                        if age < self.skip_timeout_ms {
                            return Ok(Poll::Pending {
                                seen: word,
                                retry_ms: self.skip_timeout_ms - age,
                            });
                        }
                        let gap = end - head;
                        region
                            .field(field::TORN_GAPS)
                            .fetch_add(1, Ordering::Relaxed);
                        region
                            .field(field::TORN_BYTES)
                            .fetch_add(gap, Ordering::Relaxed);
                        self.advance(region, geo, gap);
                    }
                    // A restarted reader found a recovery in progress: redo it.
                    _ => self.poison(region, geo, now()),
                },
            }
        }
    }

    /// Poisons the torn gap at the head (see the module docs).
    fn poison<R: Region>(&mut self, region: &R, geo: Geometry, now: u64) {
        let head = self.head;
        let free = free_word(geo.lap(head));
        let tail = region.field(field::TAIL).load(Ordering::Acquire);
        let lap_end = (geo.lap(head) + 1) * geo.ring_size;
        let bound = tail.min(lap_end);
        let mut at = head;
        while at < bound {
            let word = region.data_word(geo.offset(at));
            let current = word.load(Ordering::Acquire);
            if current == POISON
                || (current == free
                    && word
                        .compare_exchange(free, POISON, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok())
            {
                at += RECORD_HEADER;
            } else if current != free {
                break;
            }
            // A failed Free -> Poison means a writer just stamped here: re-read.
        }
        self.stall = (at > head).then_some(Stall::Poisoned {
            at: head,
            end: at,
            since: now,
        });
    }

    /// Steps over words a previous reader cleared without publishing the head.
    fn finish_clearing<R: Region>(&mut self, region: &R, geo: Geometry) {
        let head = self.head;
        let cleared = free_word(geo.lap(head) + 1);
        let tail = region.field(field::TAIL).load(Ordering::Acquire);
        let bound = tail.min((geo.lap(head) + 1) * geo.ring_size);
        let mut at = head;
        while at < bound && region.data_word(geo.offset(at)).load(Ordering::Acquire) == cleared {
            at += RECORD_HEADER;
        }
        self.head = at.max(head + RECORD_HEADER);
        self.stall = None;
        self.publish(region);
    }

    /// Clears the `size` bytes at the head (payload words first, the header word
    /// last) to "free for the next lap" and publishes the new head.
    fn advance<R: Region>(&mut self, region: &R, geo: Geometry, size: u64) {
        let offset = geo.offset(self.head);
        let cleared = free_word(geo.lap(self.head) + 1);
        if size > RECORD_HEADER {
            region.fill(offset + RECORD_HEADER, size - RECORD_HEADER, cleared);
        }
        region.data_word(offset).store(cleared, Ordering::Relaxed);
        self.head += size;
        self.stall = None;
        self.item = 0;
        if self.head - self.published >= self.publish_every {
            self.publish(region);
        }
    }

    /// The item at payload offset `item` of the batch record (of payload length
    /// `len`) at the head, checked against the record and `max_message`.
    #[inline(always)]
    fn item_at<R: Region>(
        &self,
        region: &R,
        geo: Geometry,
        len: u64,
        item: u64,
    ) -> Result<Ready, RecvError> {
        let at = geo.offset(self.head) + RECORD_HEADER + item;
        let word = region.data_word(at).load(Ordering::Relaxed);
        let item_len = word & !ITEM_CONSUMED;
        if item_len > geo.max_message || item + record_size(item_len) > len {
            return Err(RecvError::Corrupt {
                position: self.head + RECORD_HEADER + item,
                word,
            });
        }
        Ok(Ready {
            position: self.head + RECORD_HEADER + item,
            payload_offset: at + RECORD_HEADER,
            len: item_len,
            batch: Some(len),
        })
    }

    /// The item after `ready` in the batch record at the head (`ready` being one
    /// of its items, delivered but not yet consumed), without a poll: `None` after
    /// the record's last item or for a plain record. Lets a batch receive walk a
    /// record and consume every item it took with one `consume` of the last.
    #[inline(always)]
    pub(crate) fn next_item<R: Region>(
        &self,
        region: &R,
        geo: Geometry,
        ready: Ready,
    ) -> Result<Option<Ready>, RecvError> {
        let Some(len) = ready.batch else {
            return Ok(None);
        };
        let next = ready.position + record_size(ready.len) - self.head - RECORD_HEADER;
        if next >= len {
            return Ok(None);
        }
        self.item_at(region, geo, len, next).map(Some)
    }

    /// Consumes the record `poll` returned or, for an item of a batch record,
    /// that item and every earlier item of the record (`ready` may come from
    /// `next_item`): one mark on the item word of `ready`, or, after the record's
    /// last item, the record is marked `Skipped` and cleared.
    #[inline(always)]
    pub(crate) fn consume<R: Region>(&mut self, region: &R, geo: Geometry, ready: Ready) {
        let len = match ready.batch {
            None => ready.len,
            Some(len) => {
                debug_assert!(ready.position >= self.head + RECORD_HEADER + self.item);
                // Mark the item: a restarted reader resumes after it (and after
                // every item before it, marked or not).
                let item = region.data_word(ready.payload_offset - RECORD_HEADER);
                self.item = ready.position + record_size(ready.len) - self.head - RECORD_HEADER;
                if self.item < len {
                    item.store(item_word(ready.len) | ITEM_CONSUMED, Ordering::Relaxed);
                    return;
                }
                len
            }
        };
        debug_assert!(ready.batch.is_some() || ready.position == self.head);
        // Mark the record first: a reader that dies while clearing it must not
        // re-deliver a half-cleared payload; its successor finds `Skipped` (with
        // the length) and finishes the job.
        region
            .data_word(geo.offset(self.head))
            .store(Record::Skipped { len }.word(), Ordering::Relaxed);
        self.advance(region, geo, record_size(len));
    }

    /// Whether the reader may go to sleep after `poll` answered `seen`: called
    /// after the SeqCst store of READER_SLEEPING, it re-reads the head's header
    /// word and the tail with SeqCst, so a writer that committed before the flag
    /// was visible is seen here.
    pub(crate) fn may_sleep<R: Region>(
        &self,
        region: &R,
        geo: Geometry,
        seen: Option<u64>,
    ) -> bool {
        let word = region
            .data_word(geo.offset(self.head))
            .load(Ordering::SeqCst);
        match seen {
            Some(seen) => word == seen,
            None => word == 0 && region.field(field::TAIL).load(Ordering::SeqCst) <= self.head,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::model::Model;

    const TIMEOUT: u64 = 1000;

    fn recv(reader: &mut ReaderState, m: &Model, now: u64) -> Result<Option<Vec<u8>>, RecvError> {
        match reader.poll(m, m.geo, || now)? {
            Poll::Ready(ready) => {
                let mut out = Vec::new();
                m.read_payload(ready.payload_offset, ready.len, &mut out);
                reader.consume(m, m.geo, ready);
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }

    fn setup(ring: u64, max: u64) -> (Model, WriterState, ReaderState) {
        let m = Model::new(ring, max);
        let r = ReaderState::resume(&m, TIMEOUT);
        (m, WriterState::new(), r)
    }

    #[test]
    fn messages_arrive_in_order_across_many_laps() {
        let (m, mut w, mut r) = setup(256, 64);
        let mut next = 0u32;
        for round in 0..200u32 {
            let burst = round % 7 + 1;
            let mut sent = Vec::new();
            for i in 0..burst {
                let msg = vec![(next + i) as u8; ((next + i) % 40) as usize];
                match w.try_send(&m, m.geo, &msg, 0) {
                    Ok(_) => sent.push(msg),
                    Err(SendError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            for msg in &sent {
                assert_eq!(recv(&mut r, &m, 0).unwrap().as_ref(), Some(msg));
            }
            next += sent.len() as u32;
            assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
            assert!(m.is_clear(r.head()), "consumed records are cleared");
        }
        assert!(next > 500);
    }

    /// Sends a batch, returning the positions of the messages sent.
    fn send_batch<M: AsRef<[u8]>>(
        w: &mut WriterState,
        m: &Model,
        batch: &[M],
        commits: usize,
    ) -> Result<Vec<u64>, SendError> {
        let mut positions = Vec::new();
        let sent = w.send_batch_dying_after(m, m.geo, batch, 0, commits, |p| positions.push(p))?;
        assert_eq!(sent, positions.len());
        Ok(positions)
    }

    #[test]
    fn batch_is_one_record_of_items() {
        let (m, mut w, mut r) = setup(512, 128);
        let batch: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 8 + i as usize]).collect();
        // One record: its header, then items of 16 + 24 * 4 bytes.
        assert_eq!(
            send_batch(&mut w, &m, &batch, usize::MAX),
            Ok(vec![8, 24, 48, 72, 96])
        );
        assert_eq!(
            m.field(field::TAIL).load(Ordering::Relaxed),
            8 + 16 + 4 * 24
        );
        assert_eq!(
            Record::decode(m.data_word(0).load(Ordering::Relaxed)),
            Some(Record::Batch { len: 16 + 4 * 24 })
        );
        for msg in &batch {
            assert_eq!(recv(&mut r, &m, 0).unwrap().as_ref(), Some(msg));
        }
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn batch_is_split_into_records_and_stops_at_the_room() {
        let (m, mut w, mut r) = setup(256, 64);
        // 32-byte items, two per record (72 bytes with the header): three such
        // records, then a plain one of 32 bytes in the last 40, then no room.
        let batch = vec![[3u8; 24]; 10];
        assert_eq!(
            send_batch(&mut w, &m, &batch, usize::MAX),
            Ok(vec![8, 40, 80, 112, 152, 184, 216])
        );
        // The failed attempt claimed the padding of the last 8 bytes.
        assert_eq!(m.field(field::TAIL).load(Ordering::Relaxed), 256);
        assert_eq!(
            send_batch(&mut w, &m, &batch, usize::MAX),
            Err(SendError::Full)
        );
        for _ in 0..7 {
            assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [3; 24]);
        }
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        // The next record pads the last 8 bytes and starts the next lap.
        assert_eq!(
            send_batch(&mut w, &m, &batch[..2], usize::MAX),
            Ok(vec![264, 296])
        );
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [3; 24]);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [3; 24]);
        assert!(m.is_clear(r.head()));
        assert_eq!(
            w.try_send_batch(&m, m.geo, &[[0u8; 65]], 0, |_| {}),
            Err(SendError::TooLarge { len: 65, max: 64 })
        );
        // A message over the limit ends the batch before it.
        let mixed: [&[u8]; 3] = [&[1; 8], &[2; 8], &[0; 65]];
        assert_eq!(
            send_batch(&mut w, &m, &mixed, usize::MAX).map(|p| p.len()),
            Ok(2)
        );
    }

    #[test]
    fn writer_killed_mid_batch_record_loses_that_record_whole() {
        let (m, mut w, mut r) = setup(256, 64);
        let batch: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 20]).collect();
        // Commits a record of two items, stamps and writes the next, dies.
        assert_eq!(send_batch(&mut w, &m, &batch, 1), Ok(vec![8, 40]));
        w.try_send(&m, m.geo, b"after", 0).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [1; 20]);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [2; 20]);
        assert_eq!(recv(&mut r, &m, TIMEOUT - 1).unwrap(), None);
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap().unwrap(), b"after");
        assert_eq!(m.counter(field::EXPIRED_CLAIMS), 1);
        assert_eq!(m.counter(field::TORN_GAPS), 0);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn restarted_reader_resumes_inside_a_batch_record() {
        let (m, mut w, mut r) = setup(512, 128);
        let batch: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 10]).collect();
        send_batch(&mut w, &m, &batch, usize::MAX).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [1; 10]);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [2; 10]);
        // Polled but not consumed: delivered again after the restart.
        assert!(matches!(r.poll(&m, m.geo, || 0).unwrap(), Poll::Ready(_)));
        let mut r = ReaderState::resume(&m, TIMEOUT);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [3; 10]);
        // Killed after consuming the last item, before marking the record.
        let Poll::Ready(last) = r.poll(&m, m.geo, || 0).unwrap() else {
            panic!("committed")
        };
        assert_eq!(last.batch, Some(4 * 24));
        m.data_word(last.payload_offset - 8)
            .store(item_word(10) | ITEM_CONSUMED, Ordering::Relaxed);
        let mut r = ReaderState::resume(&m, TIMEOUT);
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(r.head(), 8 + 4 * 24);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn items_taken_at_once_are_consumed_by_one_mark() {
        let (m, mut w, mut r) = setup(512, 128);
        let batch: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 10]).collect();
        send_batch(&mut w, &m, &batch, usize::MAX).unwrap();
        let walk = |r: &mut ReaderState, n: usize| {
            let Poll::Ready(mut ready) = r.poll(&m, m.geo, || 0).unwrap() else {
                panic!("committed")
            };
            let mut got = Vec::new();
            for i in 0..n {
                let mut out = Vec::new();
                m.read_payload(ready.payload_offset, ready.len, &mut out);
                got.push(out);
                if i + 1 < n {
                    ready = r.next_item(&m, m.geo, ready).unwrap().unwrap();
                }
            }
            (ready, got)
        };
        // Walked three items, killed before consuming: all three come again.
        let (_, got) = walk(&mut r, 3);
        assert_eq!(got, batch[..3]);
        let mut r = ReaderState::resume(&m, TIMEOUT);
        let (third, got) = walk(&mut r, 3);
        assert_eq!(got, batch[..3]);
        r.consume(&m, m.geo, third);
        // One store: only the third item's word carries the mark.
        let marked = |at: u64| m.data_word(at).load(Ordering::Relaxed) & ITEM_CONSUMED != 0;
        assert_eq!((marked(8), marked(32), marked(56)), (false, false, true));
        assert_eq!(
            r.next_item(&m, m.geo, third).unwrap().map(|x| x.position),
            Some(80)
        );
        // A restarted reader resumes after the mark: items 4 and 5, once.
        let mut r = ReaderState::resume(&m, TIMEOUT);
        let (last, got) = walk(&mut r, 2);
        assert_eq!(got, batch[3..]);
        assert_eq!(r.next_item(&m, m.geo, last).unwrap(), None);
        r.consume(&m, m.geo, last);
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn garbage_item_is_reported_not_followed() {
        let (m, mut w, mut r) = setup(512, 128);
        send_batch(&mut w, &m, &[[1u8; 8], [2; 8]], usize::MAX).unwrap();
        // The second item's length runs past the record.
        m.data_word(24).store(item_word(100), Ordering::Relaxed);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [1; 8]);
        assert!(matches!(
            r.poll(&m, m.geo, || 0),
            Err(RecvError::Corrupt { position: 24, .. })
        ));
    }

    #[test]
    fn deferred_head_is_published_when_idle_and_survives_a_reader_restart() {
        let m = Model::new(256, 64);
        let mut w = WriterState::new();
        let mut r = ReaderState::resume(&m, TIMEOUT).with_publish_every(128);
        for i in 0..4u8 {
            w.try_send(&m, m.geo, &[i; 24], 0).unwrap();
        }
        // Consume three (96 bytes, under the threshold) without an idle poll.
        for i in 0..3u8 {
            let Poll::Ready(ready) = r.poll(&m, m.geo, || 0).unwrap() else {
                panic!("committed")
            };
            assert_eq!(ready.position, u64::from(i) * 32);
            r.consume(&m, m.geo, ready);
        }
        assert_eq!(m.field(field::HEAD).load(Ordering::Relaxed), 0);
        // The reader dies; its successor steps over the cleared records.
        let mut r = ReaderState::resume(&m, TIMEOUT).with_publish_every(128);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [3; 24]);
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(m.field(field::HEAD).load(Ordering::Relaxed), 128);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn full_ring_refuses_and_recovers() {
        let (m, mut w, mut r) = setup(128, 32);
        let msg = [7u8; 24]; // 32-byte records
        for _ in 0..4 {
            w.try_send(&m, m.geo, &msg, 0).unwrap();
        }
        assert_eq!(w.try_send(&m, m.geo, &msg, 0), Err(SendError::Full));
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), msg);
        w.try_send(&m, m.geo, &msg, 0).unwrap();
    }

    #[test]
    fn oversized_messages_are_refused() {
        let (m, mut w, _) = setup(128, 32);
        assert_eq!(
            w.try_send(&m, m.geo, &[0; 33], 0),
            Err(SendError::TooLarge { len: 33, max: 32 })
        );
        w.try_send(&m, m.geo, &[0; 32], 0).unwrap();
    }

    #[test]
    fn record_that_would_cross_the_end_is_preceded_by_padding() {
        let (m, mut w, mut r) = setup(128, 64);
        w.try_send(&m, m.geo, &[1; 80 - 8], 0).unwrap_err(); // > max
        w.try_send(&m, m.geo, &[1; 64], 0).unwrap(); // 72 bytes
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [1; 64]);
        // 56 bytes to the end; a 72-byte record pads them and starts at 128.
        let at = w.try_send(&m, m.geo, &[2; 64], 0).unwrap();
        assert_eq!(at, 128);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [2; 64]);
        assert_eq!(r.head(), 200);
    }

    #[test]
    fn stamped_but_uncommitted_record_is_skipped_after_the_timeout() {
        let (m, mut w, mut r) = setup(256, 64);
        let dead = w.reserve(&m, m.geo, 20).unwrap().stamp(&m, 100).unwrap();
        dead.write_prefix(&m, &[9; 20], 11);
        w.try_send(&m, m.geo, b"after", 150).unwrap();
        assert_eq!(
            recv(&mut r, &m, 500).unwrap(),
            None,
            "still within the timeout"
        );
        assert_eq!(recv(&mut r, &m, 100 + TIMEOUT).unwrap().unwrap(), b"after");
        assert_eq!(m.counter(field::EXPIRED_CLAIMS), 1);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn late_commit_after_a_skip_reports_expired() {
        let (m, mut w, mut r) = setup(256, 64);
        let slow = w.reserve(&m, m.geo, 8).unwrap().stamp(&m, 0).unwrap();
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap(), None);
        assert_eq!(
            slow.commit(&m, &[1; 8]),
            Err(SendError::Expired { position: 0 })
        );
        // The late writer saw its claim skipped before copying, so it wrote nothing.
        assert!(m.is_clear(r.head()));
        w.try_send(&m, m.geo, b"next", TIMEOUT).unwrap();
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap().unwrap(), b"next");
    }

    #[test]
    fn claim_that_was_never_stamped_is_poisoned_then_skipped() {
        let (m, mut w, mut r) = setup(256, 64);
        w.reserve(&m, m.geo, 30).unwrap(); // writer dies here
        let late = w.reserve(&m, m.geo, 8).unwrap(); // writer stalls here
        w.try_send(&m, m.geo, b"live", 0).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(recv(&mut r, &m, TIMEOUT - 1).unwrap(), None);
        // Timeout: both unstamped claims are poisoned up to the live record.
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap(), None);
        assert_eq!(
            late.stamp(&m, TIMEOUT).unwrap_err(),
            SendError::Expired { position: 40 }
        );
        assert_eq!(recv(&mut r, &m, 2 * TIMEOUT - 1).unwrap(), None);
        assert_eq!(recv(&mut r, &m, 2 * TIMEOUT).unwrap().unwrap(), b"live");
        assert_eq!(m.counter(field::TORN_GAPS), 1);
        assert_eq!(m.counter(field::TORN_BYTES), 40 + 16);
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn unstamped_claim_at_the_tail_is_skipped_too() {
        let (m, mut w, mut r) = setup(256, 64);
        w.reserve(&m, m.geo, 30).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap(), None);
        assert_eq!(recv(&mut r, &m, 2 * TIMEOUT).unwrap(), None);
        assert_eq!(r.head(), 40);
        w.try_send(&m, m.geo, b"x", 2 * TIMEOUT).unwrap();
        assert_eq!(recv(&mut r, &m, 2 * TIMEOUT).unwrap().unwrap(), b"x");
    }

    #[test]
    fn restarted_reader_finishes_a_recovery_in_progress() {
        let (m, mut w, mut r) = setup(256, 64);
        w.reserve(&m, m.geo, 30).unwrap();
        w.try_send(&m, m.geo, b"live", 0).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap(), None); // poisoned
        // The reader is gone; a new one resumes from the shared state.
        let mut r = ReaderState::resume(&m, TIMEOUT);
        assert_eq!(recv(&mut r, &m, 5000).unwrap(), None);
        assert_eq!(recv(&mut r, &m, 5000 + TIMEOUT).unwrap().unwrap(), b"live");
        assert_eq!(m.counter(field::TORN_GAPS), 1);
    }

    #[test]
    fn restarted_reader_resumes_at_the_first_unconsumed_record() {
        let (m, mut w, mut r) = setup(256, 64);
        for i in 0..4u8 {
            w.try_send(&m, m.geo, &[i; 10], 0).unwrap();
        }
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [0; 10]);
        // Polled but not consumed: delivered again after the restart.
        assert!(matches!(r.poll(&m, m.geo, || 0).unwrap(), Poll::Ready(_)));
        // The reader is gone; a new one resumes from the shared state.
        let mut r = ReaderState::resume(&m, TIMEOUT);
        for i in 1..4u8 {
            assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [i; 10]);
        }
    }

    #[test]
    fn writer_stalled_past_a_skipped_gap_cannot_stamp_the_reused_place() {
        let (m, mut w, mut r) = setup(64, 16);
        let stalled = w.reserve(&m, m.geo, 8).unwrap();
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(recv(&mut r, &m, TIMEOUT).unwrap(), None);
        assert_eq!(recv(&mut r, &m, 2 * TIMEOUT).unwrap(), None);
        assert_eq!(r.head(), 16);
        // The place at offset 0 is now free for lap 1, not for the stalled claim.
        assert!(stalled.stamp(&m, 2 * TIMEOUT).is_err());
        assert!(m.is_clear(r.head()));
    }

    #[test]
    fn reader_killed_while_clearing_neither_redelivers_nor_stalls() {
        let (m, mut w, mut r) = setup(256, 64);
        for i in 0..3u8 {
            w.try_send(&m, m.geo, &[i + 1; 20], 0).unwrap();
        }
        // Killed after marking the first record, with half its payload cleared.
        let Poll::Ready(first) = r.poll(&m, m.geo, || 0).unwrap() else {
            panic!("committed")
        };
        m.data_word(0)
            .store(Record::Skipped { len: first.len }.word(), Ordering::Relaxed);
        m.fill(8, 8, free_word(1));
        let mut r = ReaderState::resume(&m, TIMEOUT);
        assert_eq!(recv(&mut r, &m, 0).unwrap().unwrap(), [2; 20]);
        // Killed after clearing the third record entirely, before publishing.
        let Poll::Ready(third) = r.poll(&m, m.geo, || 0).unwrap() else {
            panic!("committed")
        };
        m.fill(
            third.payload_offset - 8,
            record_size(third.len),
            free_word(1),
        );
        let mut r = ReaderState::resume(&m, TIMEOUT);
        assert_eq!(recv(&mut r, &m, 0).unwrap(), None);
        assert_eq!(r.head(), 3 * 32);
        assert!(m.is_clear(r.head()));
    }

    /// A seeded xorshift generator.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random sends, writers dying or stalling at every step of the protocol, and
    /// reader polls with a moving clock, checked against a reference: every
    /// committed message is delivered once, in position order, with its bytes.
    #[test]
    fn random_operations_match_the_reference() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let (m, mut w, r) = setup(512, 200);
            // Odd seeds defer the head publication (batch consume).
            let publish_every = if seed % 2 == 1 { 200 } else { 0 };
            let mut r = r.with_publish_every(publish_every);
            let mut now = 0u64;
            let mut next_id = 0u32;
            let mut expected = std::collections::BTreeMap::<u64, Vec<u8>>::new();
            let mut stalled: Vec<(Stamped, Vec<u8>)> = Vec::new();
            let mut delivered = 0usize;
            let message = |id: u32, len: usize| {
                let mut v = id.to_le_bytes().to_vec();
                v.resize(len, id as u8);
                v
            };
            for _ in 0..5000 {
                let len = 4 + rng.below(97) as usize;
                next_id += 1;
                let msg = message(next_id, len);
                match rng.below(100) {
                    0..=34 => match w.try_send(&m, m.geo, &msg, now) {
                        Ok(position) => assert!(expected.insert(position, msg).is_none()),
                        Err(SendError::Full) => {}
                        Err(e) => panic!("seed {seed}: {e}"),
                    },
                    // Batches; some writers die after committing part of one.
                    35..=44 => {
                        let mut batch = vec![msg];
                        for _ in 0..rng.below(4) {
                            next_id += 1;
                            batch.push(message(next_id, 4 + rng.below(97) as usize));
                        }
                        let commits = if rng.below(8) == 0 {
                            rng.below(batch.len() as u64) as usize
                        } else {
                            usize::MAX
                        };
                        let mut positions = Vec::new();
                        let sent = w.send_batch_dying_after(&m, m.geo, &batch, now, commits, |p| {
                            positions.push(p)
                        });
                        match sent {
                            Ok(sent) => {
                                assert_eq!(sent, positions.len());
                                for (msg, position) in batch.into_iter().zip(positions) {
                                    assert!(expected.insert(position, msg).is_none());
                                }
                            }
                            Err(SendError::Full) => {}
                            Err(e) => panic!("seed {seed}: {e}"),
                        }
                    }
                    // Writers that die after claiming, after stamping, mid-copy.
                    45 => drop(w.reserve(&m, m.geo, len).ok()),
                    46 => {
                        if let Ok(res) = w.reserve(&m, m.geo, len) {
                            let _ = res.stamp(&m, now);
                        }
                    }
                    47 => {
                        if let Ok(Ok(stamped)) =
                            w.reserve(&m, m.geo, len).map(|res| res.stamp(&m, now))
                        {
                            stamped.write_prefix(&m, &msg, len / 2);
                        }
                    }
                    // A writer that stalls between stamping and committing.
                    48..=49 => {
                        if let Ok(Ok(stamped)) =
                            w.reserve(&m, m.geo, len).map(|res| res.stamp(&m, now))
                        {
                            stalled.push((stamped, msg));
                        }
                    }
                    50..=54 if !stalled.is_empty() => {
                        let (stamped, msg) = stalled.remove(0);
                        match stamped.commit(&m, &msg) {
                            Ok(position) => {
                                assert!(position >= r.head(), "seed {seed}: committed behind");
                                expected.insert(position, msg);
                            }
                            Err(SendError::Expired { .. }) => {}
                            Err(e) => panic!("seed {seed}: {e}"),
                        }
                    }
                    55..=68 => now += rng.below(400),
                    // The reader is killed and restarted.
                    69 => r = ReaderState::resume(&m, TIMEOUT).with_publish_every(publish_every),
                    _ => {
                        let polled = r.poll(&m, m.geo, || now);
                        match polled.unwrap_or_else(|e| panic!("seed {seed}: {e}")) {
                            Poll::Ready(mut ready) => {
                                // Take up to four items of a batch record at once
                                // (checked against the reference in order), then
                                // consume them with one mark, or die holding them.
                                let mut walked = vec![ready];
                                for _ in 0..rng.below(4) {
                                    match r.next_item(&m, m.geo, ready) {
                                        Ok(Some(next)) => ready = next,
                                        Ok(None) => break,
                                        Err(e) => panic!("seed {seed}: {e}"),
                                    }
                                    walked.push(ready);
                                }
                                let mut refs = expected.iter();
                                for item in &walked {
                                    let (&position, message) = refs.next().unwrap_or_else(|| {
                                        panic!("seed {seed}: delivered {item:?} unexpectedly")
                                    });
                                    assert_eq!(position, item.position, "seed {seed}: skipped");
                                    let mut got = Vec::new();
                                    m.read_payload(item.payload_offset, item.len, &mut got);
                                    assert_eq!(message, &got, "seed {seed}");
                                }
                                if rng.below(16) == 0 {
                                    // Killed before consuming: all come again.
                                    r = ReaderState::resume(&m, TIMEOUT)
                                        .with_publish_every(publish_every);
                                } else {
                                    r.consume(&m, m.geo, ready);
                                    for item in &walked {
                                        expected.remove(&item.position);
                                    }
                                    delivered += walked.len();
                                }
                            }
                            Poll::Empty | Poll::Pending { .. } => {}
                        }
                    }
                }
            }
            // Abandon the stalled writers; drain with the clock moving on.
            stalled.clear();
            for _ in 0..10_000 {
                now += 100;
                if let Poll::Ready(ready) = r.poll(&m, m.geo, || now).unwrap() {
                    let first = *expected.keys().next().expect("a delivery is expected");
                    assert_eq!(first, ready.position, "seed {seed}: skipped a message");
                    expected.remove(&first);
                    r.consume(&m, m.geo, ready);
                }
            }
            assert!(
                expected.is_empty(),
                "seed {seed}: {} never delivered",
                expected.len()
            );
            let skipped = m.counter(field::TORN_GAPS) + m.counter(field::EXPIRED_CLAIMS);
            assert!(
                delivered > 500 && skipped > 10 && r.head() > 50 * 512,
                "seed {seed}: too little exercised: {delivered} delivered, {skipped} skipped, head {}",
                r.head()
            );
            assert_eq!(r.head(), m.field(field::TAIL).load(Ordering::Relaxed));
            assert!(m.is_clear(r.head()), "seed {seed}");
        }
    }

    #[test]
    fn garbage_header_is_reported_not_followed() {
        let (m, mut w, mut r) = setup(256, 64);
        w.try_send(&m, m.geo, b"ok", 0).unwrap();
        m.data_word(0)
            .store(0xdead_beef_0000_0007, Ordering::Relaxed);
        assert!(matches!(
            r.poll(&m, m.geo, || 0),
            Err(RecvError::Corrupt { position: 0, .. })
        ));
        // A committed length past the end of the data area is refused too.
        m.data_word(0)
            .store(Record::Committed { len: 250 }.word(), Ordering::Relaxed);
        assert!(r.poll(&m, m.geo, || 0).is_err());
    }
}
