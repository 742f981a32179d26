//! Receive-side reassembly of one stream direction, by offset.
//!
//! `DESIGN.md` ("Stream offsets"): a message of `n` payload bytes occupies `n + 1`
//! offset units, its bytes and then one virtual end-of-message unit. A fragment at
//! offset `o` with `data` covers `[o, o + len(data) + (is_final ? 1 : 0))` and never
//! spans two messages. The same range may arrive many times, cut differently
//! (retransmissions on paths of other MTUs, duplicated datagrams, multi-path); the
//! [`Assembler`] merges them and hands every message out exactly once, in order.

use std::collections::{BTreeMap, VecDeque};
use std::iter;

use bytes::{Bytes, BytesMut};

/// The most pieces the in-order fast path holds at once: a large message arriving
/// in order as many small pieces goes on into the B-tree past this. It is above
/// the messages one packed frame carries (about 1,000 of 64 B in 64 KiB), which
/// are all inserted before the first is popped. Every piece held is charged
/// (`CHUNK_COST`), and the queue's capacity goes back to [`IN_ORDER_KEEP`]
/// pieces whenever it empties, so what outlives the messages uncounted stays a
/// few KiB.
const IN_ORDER_MAX: usize = 2048;

/// The capacity (pieces) the fast path's queue keeps when it empties.
const IN_ORDER_KEEP: usize = 256;

/// Reassembles the messages of one stream direction from fragments that may arrive
/// duplicated, overlapping, cut differently and in any order.
///
/// # Guarantees
///
/// - Every message is returned by [`pop_message`](Self::pop_message) at most once, in
///   offset order, byte-identical to what was first received for each offset (when
///   copies of the same offsets disagree, the first copy wins; the frame CRC, not this
///   type, protects integrity). Nothing is lost that the sender keeps resending.
/// - A message's metadata is taken only from a fragment stored at the message's start
///   offset; it is `None` if no such fragment carried any.
/// - Inserting copies no payload (`Bytes::slice`); popping copies once to concatenate a
///   message that arrived in several non-empty pieces, and not at all otherwise.
/// - `insert` costs `O((k + 1) log n)` and `pop_message` `O(k log n)`, for `n` stored
///   chunks and `k` chunks touched; no work is per byte except that one copy.
/// - In-order fast path: a fragment starting exactly at
///   [`acknowledge_offset`](Self::acknowledge_offset) while nothing is stored above
///   it (the common case on a loss-free path) is appended to a queue outside the
///   B-tree in `O(1)`, and popped from it in `O(1)`: no gap walk, no B-tree entry
///   shifting. Any other operation first moves the queue into the B-tree (each chunk
///   at most once), so behaviour and limits are the same on both paths.
///
/// # Memory and back-pressure
///
/// Units are accepted only below `read_offset() + window`. The read offset advances
/// only when the application pops a message (or a reset settles data), so messages
/// that are complete but not yet popped count inside the window: a slow application
/// applies back-pressure, and the sender's data beyond the window is dropped (it
/// resends it).
///
/// One exception keeps a message larger than the window from stalling the stream:
/// while no complete message is waiting, a fragment that starts at or below
/// [`acknowledge_offset`](Self::acknowledge_offset) (it extends the in-order data of
/// the message being assembled) is accepted whole. Only in-order data ever exceeds
/// the window, and with a sender that keeps fragments within messages every stored
/// unit lies below `max(read_offset() + window, end of the message at read_offset())`:
/// [`buffered_bytes`](Self::buffered_bytes) never exceeds the larger of the window and
/// that message's size. The caller bounds message size: while no complete message is
/// waiting, `acknowledge_offset() - read_offset()` is the in-order length of the
/// message being assembled.
///
/// Each stored chunk covers at least one unit, so at most `window` chunks (plus the
/// chunks of that one oversized message) are stored; the worst case, a peer sending
/// one-unit fragments with one-unit gaps, stores about `window / 2` chunks of one byte
/// each, so bookkeeping (a B-tree entry and a `Bytes` handle per chunk, under 100
/// bytes) can be that many times the payload.
///
/// # Example
///
/// ```
/// use atbus_core::stream::assembler::{Assembler, InsertOutcome};
/// use bytes::Bytes;
///
/// let mut rx = Assembler::<u32>::new(1 << 16);
/// // "hello" occupies offsets 0..6: five bytes and its end-of-message unit.
/// let hello = Bytes::from_static(b"hello");
/// assert_eq!(rx.insert(3, hello.slice(3..), true, None), InsertOutcome::Accepted { new_units: 3 });
/// assert!(rx.pop_message().is_none()); // offsets 0..3 are missing
/// assert_eq!(rx.received_ranges(8).collect::<Vec<_>>(), [(3, 6)]);
/// // A retransmission of the whole message, cut differently, fills the gap.
/// assert_eq!(rx.insert(0, hello.clone(), true, Some(7)), InsertOutcome::Accepted { new_units: 3 });
/// let msg = rx.pop_message().unwrap();
/// assert_eq!((msg.offset, msg.meta, &msg.payload[..]), (0, Some(7), &b"hello"[..]));
/// assert_eq!(rx.acknowledge_offset(), 6);
/// ```
#[derive(Debug)]
pub struct Assembler<M> {
    window: u64,
    /// Non-overlapping stored pieces, by start offset; all lie at or above `head`.
    chunks: BTreeMap<u64, Chunk<M>>,
    /// Chunks appended by the in-order fast path, contiguous, in order, all below
    /// `ack` and above every key of `chunks`. Kept out of the B-tree because a
    /// B-tree insert and `pop_first` per message shift the leaf's entries (a
    /// memmove each); any operation that needs the general structure first
    /// [spills](Self::spill) them into `chunks`.
    in_order: VecDeque<(u64, Chunk<M>)>,
    /// Complete messages below `head`, settled by a reset but not popped yet.
    ready: VecDeque<AssembledMessage<M>>,
    /// Start of the first message still in `chunks`; everything below is settled.
    head: u64,
    /// Every unit below is held, popped or settled.
    ack: u64,
    /// End offsets of the complete messages in `[head, ack)`, in order.
    complete_ends: VecDeque<u64>,
    /// One past the highest unit ever stored, or `ack` if higher.
    received_max: u64,
    /// Payload bytes in `chunks` and `ready`.
    buffered: usize,
    /// Bookkeeping charged on top of the payload: [`CHUNK_COST`] and the metadata's
    /// [`Footprint`] per stored chunk and per ready message.
    overhead: usize,
    final_offset: Option<u64>,
    stats: AssemblerStats,
}

/// One stored piece of offset space: `data`, then the end-of-message unit if
/// `is_final`.
#[derive(Debug)]
struct Chunk<M> {
    data: Bytes,
    is_final: bool,
    /// Only meaningful when the chunk starts a message.
    meta: Option<M>,
}

impl<M> Chunk<M> {
    fn span(&self) -> u64 {
        self.data.len() as u64 + u64::from(self.is_final)
    }
}

/// A complete message, returned once by [`Assembler::pop_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledMessage<M> {
    /// Offset of the message's first unit.
    pub offset: u64,
    /// Metadata of the fragment stored at `offset`, if it carried any.
    pub meta: Option<M>,
    /// The message's bytes.
    pub payload: Bytes,
}

impl<M> AssembledMessage<M> {
    /// One past the message's end-of-message unit: where the next message starts.
    pub fn end_offset(&self) -> u64 {
        self.offset + self.payload.len() as u64 + 1
    }
}

/// What [`Assembler::insert`] did with a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// `new_units` units not held before were stored. Part of the fragment may still
    /// have been a duplicate, or cut off at the window edge.
    Accepted {
        /// Offset units newly stored.
        new_units: u64,
    },
    /// Every unit of the fragment was already held.
    Duplicate,
    /// The fragment lies wholly below the delivery point (already popped or settled by
    /// a reset).
    Old,
    /// No new unit fit in the window; the fragment was dropped and the sender will
    /// resend it.
    BeyondWindow,
    /// The fragment reaches past the final offset given to
    /// [`Assembler::finish_at`]; a protocol violation, dropped.
    BeyondFinish,
    /// The fragment covers no unit (no data and not final).
    Empty,
    /// `offset + len(data) + is_final` overflows `u64`; dropped.
    OffsetOverflow,
}

/// What [`Assembler::reset_to`] discarded.
///
/// Complete messages below the reset point whose start is known (the delivery point,
/// or right after a received end-of-message unit) are kept for
/// [`Assembler::pop_message`]; everything else below it is discarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetOutcome {
    /// The fewest messages consistent with what was received in the discarded ranges:
    /// one per end-of-message unit received there, plus one if the unit just below the
    /// reset point was not received as an end-of-message unit (the message it ends was
    /// cut short or never seen). Messages lost whole, with no end-of-message unit
    /// received between them, are indistinguishable and count as one.
    pub skipped_messages: u64,
    /// Offset units settled without being delivered (exact).
    pub skipped_units: u64,
}

/// Counters of an [`Assembler`], for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Units received again: already held, popped or settled.
    pub duplicate_units: u64,
    /// Fragments dropped, or cut short, at the window edge.
    pub beyond_window_fragments: u64,
    /// Sum of [`ResetOutcome::skipped_messages`].
    pub skipped_messages: u64,
    /// Sum of [`ResetOutcome::skipped_units`].
    pub skipped_units: u64,
}

/// Why [`Assembler::finish_at`] refused a final offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// A different final offset was set before.
    #[error("stream already finishes at offset {previous}, not {requested}")]
    Conflict {
        /// The final offset set first.
        previous: u64,
        /// The final offset refused.
        requested: u64,
    },
    /// Data was received (or settled by a reset) at or beyond the final offset.
    #[error("final offset {final_offset} is below data received up to {received_max_offset}")]
    DataBeyond {
        /// The final offset refused.
        final_offset: u64,
        /// One past the highest offset received.
        received_max_offset: u64,
    },
    /// The unit just below the final offset was received, and it does not end a
    /// message.
    #[error("final offset {final_offset} does not follow an end-of-message unit")]
    NotMessageEnd {
        /// The final offset refused.
        final_offset: u64,
    },
}

/// Why [`Assembler::reset_to`] refused a reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    /// The reset point lies beyond the final offset given to [`Assembler::finish_at`].
    #[error("reset to offset {offset} beyond the final offset {final_offset}")]
    BeyondFinish {
        /// The reset point refused.
        offset: u64,
        /// The stream's final offset.
        final_offset: u64,
    },
}

impl<M: Footprint> Assembler<M> {
    /// An assembler for a direction starting at offset 0, accepting data up to `window`
    /// offset units beyond the delivery point.
    pub fn new(window: u64) -> Self {
        Self {
            window,
            chunks: BTreeMap::new(),
            in_order: VecDeque::new(),
            ready: VecDeque::new(),
            head: 0,
            ack: 0,
            complete_ends: VecDeque::new(),
            received_max: 0,
            buffered: 0,
            overhead: 0,
            final_offset: None,
            stats: AssemblerStats::default(),
        }
    }

    /// Inserts one fragment: `data` at `offset`, followed by the end-of-message unit
    /// if `is_final` (the wire fragment lacks `HAS_MORE`). `meta` is used only if the
    /// fragment turns out to start a message; it also fills in the metadata of a
    /// fragment stored earlier at the same offset without any.
    ///
    /// Units already held keep their first copy; only the gaps are stored, as slices
    /// of `data`.
    pub fn insert(
        &mut self,
        offset: u64,
        data: Bytes,
        is_final: bool,
        meta: Option<M>,
    ) -> InsertOutcome {
        let Some(end) = u64::try_from(data.len())
            .ok()
            .and_then(|len| len.checked_add(u64::from(is_final)))
            .and_then(|span| offset.checked_add(span))
        else {
            return InsertOutcome::OffsetOverflow;
        };
        if end == offset {
            return InsertOutcome::Empty;
        }
        if self.final_offset.is_some_and(|f| end > f) {
            return InsertOutcome::BeyondFinish;
        }
        if end <= self.head {
            self.stats.duplicate_units += end - offset;
            return InsertOutcome::Old;
        }
        let settled_units = self.head.saturating_sub(offset);
        let limit = if self.head_may_grow(offset) {
            end
        } else {
            end.min(self.read_offset().saturating_add(self.window))
        };
        let lo = offset.max(self.head);
        if lo >= limit {
            self.stats.duplicate_units += settled_units;
            self.stats.beyond_window_fragments += 1;
            return InsertOutcome::BeyondWindow;
        }

        if offset == self.ack
            && self.received_max == self.ack
            && limit == end
            && self.in_order.len() < IN_ORDER_MAX
        {
            return self.append_in_order(offset, end, data, is_final, meta);
        }

        self.spill();
        let mut meta = meta;
        if lo == offset {
            if let Some(chunk) = self.chunks.get_mut(&offset) {
                if chunk.meta.is_none() {
                    chunk.meta = meta.take();
                    self.overhead += chunk.meta.as_ref().map_or(0, Footprint::footprint);
                }
            }
        }
        let piece = Piece {
            offset,
            end,
            data: &data,
            is_final,
        };
        let mut new_units = 0;
        let mut cursor = lo;
        if let Some((&start, chunk)) = self.chunks.range(..lo).next_back() {
            cursor = cursor.max(start + chunk.span());
        }
        while cursor < limit {
            let next = self
                .chunks
                .range(cursor..limit)
                .next()
                .map(|(&start, chunk)| (start, start + chunk.span()));
            let gap_end = next.map_or(limit, |(start, _)| start);
            if gap_end > cursor {
                let meta = if cursor == offset { meta.take() } else { None };
                self.store(piece.cut(cursor, gap_end, meta), gap_end);
                new_units += gap_end - cursor;
            }
            match next {
                Some((_, chunk_end)) => cursor = chunk_end,
                None => break,
            }
        }
        self.advance_ack();

        self.stats.duplicate_units += settled_units + (limit - lo) - new_units;
        let cut_at_window = limit < end;
        if cut_at_window {
            self.stats.beyond_window_fragments += 1;
        }
        match (new_units, cut_at_window) {
            (0, true) => InsertOutcome::BeyondWindow,
            (0, false) => InsertOutcome::Duplicate,
            (new_units, _) => InsertOutcome::Accepted { new_units },
        }
    }

    /// `RESET_OFFSET` at `offset` (a message start): everything below is settled.
    ///
    /// Complete messages below `offset` whose start is known stay available from
    /// [`pop_message`](Self::pop_message), in order; everything else below `offset` is
    /// discarded and counted (see [`ResetOutcome`]), and data arriving later below
    /// `offset` is [`Old`](InsertOutcome::Old). A stored chunk straddling `offset`
    /// keeps its part at and after `offset`, without metadata. A reset at or below the
    /// delivery point changes nothing.
    pub fn reset_to(&mut self, offset: u64) -> Result<ResetOutcome, ResetError> {
        if offset <= self.head {
            return Ok(ResetOutcome::default());
        }
        if let Some(final_offset) = self.final_offset.filter(|&f| offset > f) {
            return Err(ResetError::BeyondFinish {
                offset,
                final_offset,
            });
        }
        self.spill();
        let old_head = self.head;
        let ends_cleanly = self.unit_is_end(offset - 1) == Some(true);
        let mut delivered_units = 0;
        let mut discarded_ends = 0;
        // Start of the message being collected into `pieces`, if known.
        let mut known_start = Some(old_head);
        let mut pieces = Vec::new();
        let mut cursor = old_head;
        while let Some(entry) = self.chunks.first_entry() {
            let start = *entry.key();
            if start >= offset {
                break;
            }
            let chunk = entry.remove();
            self.overhead -= charge(&chunk.meta);
            if start != cursor {
                known_start = None;
                self.discard(&mut pieces);
            }
            let end = start + chunk.span();
            if end > offset {
                let keep_from = (offset - start) as usize;
                let tail = Chunk {
                    data: chunk.data.slice(keep_from..),
                    is_final: chunk.is_final,
                    meta: None,
                };
                self.buffered -= keep_from;
                self.overhead += charge(&tail.meta);
                self.chunks.insert(offset, tail);
                break;
            }
            cursor = end;
            let is_final = chunk.is_final;
            match (is_final, known_start) {
                (true, Some(message_start)) => {
                    pieces.push(chunk);
                    let message = assemble(message_start, end, pieces.drain(..));
                    self.overhead += charge(&message.meta);
                    self.ready.push_back(message);
                    delivered_units += end - message_start;
                }
                (true, None) => {
                    discarded_ends += 1;
                    self.buffered -= chunk.data.len();
                }
                (false, Some(_)) => pieces.push(chunk),
                (false, None) => self.buffered -= chunk.data.len(),
            }
            if is_final {
                known_start = Some(end);
            }
        }
        self.discard(&mut pieces);

        while self.complete_ends.front().is_some_and(|&end| end <= offset) {
            self.complete_ends.pop_front();
        }
        self.head = offset;
        self.ack = self.ack.max(offset);
        self.advance_ack();
        self.received_max = self.received_max.max(self.ack);

        let outcome = ResetOutcome {
            skipped_messages: discarded_ends + u64::from(!ends_cleanly),
            skipped_units: offset - old_head - delivered_units,
        };
        self.stats.skipped_messages += outcome.skipped_messages;
        self.stats.skipped_units += outcome.skipped_units;
        Ok(outcome)
    }

    /// The next complete message in offset order, if it has arrived.
    ///
    /// The payload is the received `Bytes` itself when the message arrived in one
    /// non-empty piece; otherwise its pieces are copied once into a new buffer.
    pub fn pop_message(&mut self) -> Option<AssembledMessage<M>> {
        if let Some(message) = self.ready.pop_front() {
            self.buffered -= message.payload.len();
            self.overhead -= charge(&message.meta);
            return Some(message);
        }
        let end = self.complete_ends.pop_front()?;
        let chunks = &mut self.chunks;
        let in_order = &mut self.in_order;
        let mut done = false;
        let mut freed = 0;
        let pieces = iter::from_fn(|| {
            if done {
                return None;
            }
            let (_, chunk) = chunks.pop_first().or_else(|| in_order.pop_front())?;
            done = chunk.is_final;
            freed += charge(&chunk.meta);
            Some(chunk)
        });
        let message = assemble(self.head, end, pieces);
        self.overhead -= freed;
        self.buffered -= message.payload.len();
        self.head = end;
        self.trim_in_order();
        Some(message)
    }

    /// Settles `span` units at `offset` as received and delivered at once, without
    /// storing them: for whole messages the caller hands over itself (a packed
    /// fragment at the delivery point). Done, and `true`, only when `offset` is the
    /// delivery point and nothing is held or waiting (so no message can be
    /// delivered before them), `span` fits in the window and does not pass the
    /// final offset; otherwise nothing changes and the caller inserts them.
    pub fn take_in_order(&mut self, offset: u64, span: u64) -> bool {
        let Some(end) = offset.checked_add(span) else {
            return false;
        };
        let drained = offset == self.head
            && self.ack == self.head
            && self.received_max == self.head
            && self.ready.is_empty()
            && self.complete_ends.is_empty()
            && self.in_order.is_empty()
            && self.chunks.is_empty();
        if !drained || span == 0 || span > self.window || self.final_offset.is_some_and(|f| end > f)
        {
            return false;
        }
        self.head = end;
        self.ack = end;
        self.received_max = end;
        true
    }

    /// Puts back the message [`pop_message`](Self::pop_message) just returned: it is
    /// returned again next.
    pub fn unpop(&mut self, message: AssembledMessage<M>) {
        self.buffered += message.payload.len();
        self.overhead += charge(&message.meta);
        self.ready.push_front(message);
    }

    /// Offset of the next complete message a reset left below the delivery point,
    /// if one waits (see [`reset_to`](Self::reset_to)).
    pub fn next_kept_offset(&self) -> Option<u64> {
        self.ready.front().map(|m| m.offset)
    }

    /// Every offset below this has been received, delivered or settled by a reset:
    /// the ACK's `acknowledge_offset`.
    pub fn acknowledge_offset(&self) -> u64 {
        self.ack
    }

    /// One past the highest offset received (at least
    /// [`acknowledge_offset`](Self::acknowledge_offset)): the ACK's
    /// `received_max_offset`, a SACK hint. Fragments dropped at the window edge do not
    /// count.
    pub fn received_max_offset(&self) -> u64 {
        self.received_max
    }

    /// The received ranges above [`acknowledge_offset`](Self::acknowledge_offset), in
    /// order, as `(start, end)` pairs, adjacent pieces merged; at most `max` of them.
    pub fn received_ranges(&self, max: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut chunks = self
            .chunks
            .range(self.ack..)
            .map(|(&start, chunk)| (start, start + chunk.span()))
            .peekable();
        iter::from_fn(move || {
            let (start, mut end) = chunks.next()?;
            while let Some((_, next_end)) = chunks.next_if(|&(next, _)| next == end) {
                end = next_end;
            }
            Some((start, end))
        })
        .take(max)
    }

    /// The received range holding `offset` (adjacent pieces merged), if `offset`
    /// was received and lies above [`acknowledge_offset`](Self::acknowledge_offset).
    pub fn received_range_at(&self, offset: u64) -> Option<(u64, u64)> {
        if offset < self.ack {
            return None;
        }
        let (&start, chunk) = self.chunks.range(..=offset).next_back()?;
        let (mut lo, mut hi) = (start, start + chunk.span());
        if hi <= offset {
            return None;
        }
        while lo > self.ack {
            match self.chunks.range(..lo).next_back() {
                Some((&s, c)) if s + c.span() == lo => lo = s,
                _ => break,
            }
        }
        while let Some((&s, c)) = self.chunks.range(hi..).next() {
            if s != hi {
                break;
            }
            hi = s + c.span();
        }
        let lo = lo.max(self.ack);
        (lo < hi).then_some((lo, hi))
    }

    /// Payload bytes held and not yet popped, for memory accounting.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// The memory this assembler is charged for: the payload bytes it holds plus
    /// [`CHUNK_COST`] and the metadata's [`Footprint`] for each stored piece and
    /// each complete message waiting to be popped. Empty fragments and metadata
    /// are not free: a receiver bounds this, not the payload alone.
    pub fn footprint(&self) -> usize {
        self.buffered + self.overhead
    }

    /// The delivery point: the offset where the next message to pop starts.
    pub fn read_offset(&self) -> u64 {
        self.ready
            .front()
            .map_or(self.head, |message| message.offset)
    }

    /// The window given to [`new`](Self::new).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The sender's declaration that the direction ends at `final_offset` (the offset
    /// after its last message). Repeating the same final offset is fine; a different
    /// one, data already received at or beyond it, or a received unit just below it
    /// that does not end a message, is refused and changes nothing. Afterwards,
    /// fragments reaching past it are [`BeyondFinish`](InsertOutcome::BeyondFinish).
    pub fn finish_at(&mut self, final_offset: u64) -> Result<(), FinishError> {
        if let Some(previous) = self.final_offset {
            return if previous == final_offset {
                Ok(())
            } else {
                Err(FinishError::Conflict {
                    previous,
                    requested: final_offset,
                })
            };
        }
        if self.received_max > final_offset {
            return Err(FinishError::DataBeyond {
                final_offset,
                received_max_offset: self.received_max,
            });
        }
        self.spill();
        if final_offset > self.head && self.unit_is_end(final_offset - 1) == Some(false) {
            return Err(FinishError::NotMessageEnd { final_offset });
        }
        self.final_offset = Some(final_offset);
        Ok(())
    }

    /// The final offset accepted by [`finish_at`](Self::finish_at), if any.
    pub fn final_offset(&self) -> Option<u64> {
        self.final_offset
    }

    /// The direction is finished: its final offset is known and every message below it
    /// has been popped or skipped.
    pub fn is_finished(&self) -> bool {
        self.ready.is_empty() && self.final_offset == Some(self.head)
    }

    /// Counters since creation.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Whether a fragment at `offset` may grow the message being assembled past the
    /// window: nothing complete is waiting, and it continues the in-order data.
    fn head_may_grow(&self, offset: u64) -> bool {
        self.ready.is_empty() && self.complete_ends.is_empty() && offset <= self.ack
    }

    /// The in-order fast path of [`insert`](Self::insert): the fragment starts exactly
    /// at the acknowledge offset, nothing is stored above it (so the fragment overlaps
    /// no stored chunk and `offset >= head`), and it fits in the window. It is stored
    /// whole and the acknowledge offset moves to its end, with no B-tree lookup
    /// besides the one append, instead of the gap walk and the `advance_ack` probes.
    fn append_in_order(
        &mut self,
        offset: u64,
        end: u64,
        data: Bytes,
        is_final: bool,
        meta: Option<M>,
    ) -> InsertOutcome {
        debug_assert!(offset >= self.head && self.chunks.range(offset..).next().is_none());
        let chunk = Chunk {
            data,
            is_final,
            meta,
        };
        self.buffered += chunk.data.len();
        self.overhead += charge(&chunk.meta);
        self.received_max = end;
        self.in_order.push_back((offset, chunk));
        if is_final {
            self.complete_ends.push_back(end);
        }
        self.ack = end;
        InsertOutcome::Accepted {
            new_units: end - offset,
        }
    }

    /// `Some(is_end_of_message)` if unit `unit` (at or above `head`) is held.
    fn unit_is_end(&self, unit: u64) -> Option<bool> {
        let (&start, chunk) = self.chunks.range(..=unit).next_back()?;
        let end = start + chunk.span();
        (unit < end).then_some(chunk.is_final && unit + 1 == end)
    }

    /// Moves the fast path's chunks into the B-tree, so that the general code sees
    /// every stored chunk. Each chunk moves at most once.
    fn spill(&mut self) {
        self.chunks.extend(self.in_order.drain(..));
        self.trim_in_order();
    }

    /// Gives the fast path's queue back its resting capacity once it is empty:
    /// what it grew to is not counted once its pieces are gone.
    fn trim_in_order(&mut self) {
        if self.in_order.is_empty() && self.in_order.capacity() > IN_ORDER_KEEP {
            self.in_order.shrink_to(IN_ORDER_KEEP);
        }
    }

    fn store(&mut self, chunk: (u64, Chunk<M>), end: u64) {
        let (start, chunk) = chunk;
        self.buffered += chunk.data.len();
        self.overhead += charge(&chunk.meta);
        self.received_max = self.received_max.max(end);
        self.chunks.insert(start, chunk);
    }

    fn advance_ack(&mut self) {
        while let Some(chunk) = self.chunks.get(&self.ack) {
            let end = self.ack + chunk.span();
            if chunk.is_final {
                self.complete_ends.push_back(end);
            }
            self.ack = end;
        }
    }

    fn discard(&mut self, pieces: &mut Vec<Chunk<M>>) {
        for piece in pieces.drain(..) {
            self.buffered -= piece.data.len();
        }
    }
}

/// Bookkeeping charged per stored piece or waiting message, beyond its payload
/// and metadata: about what a B-tree entry, a `Bytes` handle and the chunk's fields
/// occupy.
pub const CHUNK_COST: usize = 64;

/// Heap memory a piece of message metadata occupies, charged to the receive
/// limits alongside the payload.
pub trait Footprint {
    /// Bytes charged for this metadata.
    fn footprint(&self) -> usize;
}

macro_rules! no_footprint {
    ($($t:ty),*) => {$(
        impl Footprint for $t {
            fn footprint(&self) -> usize {
                0
            }
        }
    )*};
}
no_footprint!((), u8, u16, u32, u64, i32, i64);

fn charge<M: Footprint>(meta: &Option<M>) -> usize {
    CHUNK_COST + meta.as_ref().map_or(0, Footprint::footprint)
}

/// A fragment being cut into the gaps between stored chunks.
struct Piece<'a> {
    offset: u64,
    end: u64,
    data: &'a Bytes,
    is_final: bool,
}

impl Piece<'_> {
    /// The part of the fragment covering `[start, end)`, ready to store.
    fn cut<M>(&self, start: u64, end: u64, meta: Option<M>) -> (u64, Chunk<M>) {
        let len = self.data.len() as u64;
        let from = (start - self.offset) as usize;
        let to = ((end - self.offset).min(len)) as usize;
        let chunk = Chunk {
            data: self.data.slice(from..to),
            is_final: self.is_final && end == self.end,
            meta,
        };
        (start, chunk)
    }
}

/// One message from its pieces in order, the first starting at `offset`, the last
/// holding the end-of-message unit at `end - 1`.
fn assemble<M>(
    offset: u64,
    end: u64,
    mut pieces: impl Iterator<Item = Chunk<M>>,
) -> AssembledMessage<M> {
    let Some(first) = pieces.next() else {
        return AssembledMessage {
            offset,
            meta: None,
            payload: Bytes::new(),
        };
    };
    let total = (end - offset - 1) as usize;
    let meta = first.meta;
    let payload = join(
        iter::once(first.data).chain(pieces.map(|chunk| chunk.data)),
        total,
    );
    AssembledMessage {
        offset,
        meta,
        payload,
    }
}

/// Concatenates `parts`: zero-copy when at most one is non-empty.
fn join(mut parts: impl Iterator<Item = Bytes>, total: usize) -> Bytes {
    let mut only = Bytes::new();
    while let Some(part) = parts.next() {
        if part.is_empty() {
            continue;
        }
        if only.is_empty() {
            only = part;
            continue;
        }
        let mut buf = BytesMut::with_capacity(total);
        buf.extend_from_slice(&only);
        buf.extend_from_slice(&part);
        for part in parts {
            buf.extend_from_slice(&part);
        }
        return buf.freeze();
    }
    only
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: u64 = 1 << 20;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn pop_all(rx: &mut Assembler<u32>) -> Vec<(u64, Option<u32>, Bytes)> {
        iter::from_fn(|| rx.pop_message())
            .map(|m| (m.offset, m.meta, m.payload))
            .collect()
    }

    fn accepted(new_units: u64) -> InsertOutcome {
        InsertOutcome::Accepted { new_units }
    }

    #[test]
    fn empty_pieces_are_charged_and_everything_is_released_once_popped() {
        let mut rx = Assembler::<u32>::new(BIG);
        // Ten empty messages out of order (offsets 1, 3, ...): no payload, ten
        // stored pieces.
        for i in 0..10 {
            rx.insert(1 + 2 * i, Bytes::new(), true, Some(7));
        }
        assert_eq!(rx.buffered_bytes(), 0);
        assert_eq!(rx.footprint(), 10 * CHUNK_COST);
        // A reset over the first half keeps the complete ones it can (none start
        // at a known offset) and releases the rest.
        rx.reset_to(10).unwrap();
        assert_eq!(rx.footprint(), 5 * CHUNK_COST);
        for i in 0..5 {
            rx.insert(10 + 2 * i, Bytes::new(), true, None);
        }
        while rx.pop_message().is_some() {}
        assert_eq!(rx.footprint(), 0);
    }

    #[test]
    fn in_order_fragments_deliver_one_message() {
        let mut rx = Assembler::new(BIG);
        assert_eq!(rx.insert(0, bytes("hel"), false, Some(1)), accepted(3));
        assert!(rx.pop_message().is_none());
        assert_eq!(rx.insert(3, bytes("lo"), true, None), accepted(3));
        assert_eq!(pop_all(&mut rx), [(0, Some(1), bytes("hello"))]);
        assert_eq!(rx.read_offset(), 6);
        assert_eq!(rx.acknowledge_offset(), 6);
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[test]
    fn single_piece_message_is_not_copied() {
        let mut rx = Assembler::<u32>::new(BIG);
        let data = bytes("payload");
        rx.insert(0, data.clone(), true, None);
        assert_eq!(rx.pop_message().unwrap().payload.as_ptr(), data.as_ptr());
        // Data in one piece and the end unit in an empty fragment: still no copy.
        let data = bytes("second");
        rx.insert(8, data.clone(), false, None);
        rx.insert(14, Bytes::new(), true, None);
        assert_eq!(rx.pop_message().unwrap().payload.as_ptr(), data.as_ptr());
    }

    /// (From review) one large message arriving in order as tiny pieces must not
    /// grow the fast path's queue, whose capacity outlives the message uncounted.
    #[test]
    fn a_large_message_in_tiny_in_order_pieces_keeps_the_fast_path_queue_small() {
        let mut rx = Assembler::<u32>::new(BIG);
        let pieces = 10_000u64;
        for i in 0..pieces {
            let last = i + 1 == pieces;
            assert_eq!(
                rx.insert(i, bytes("x"), last, None),
                accepted(1 + last as u64)
            );
            assert!(rx.in_order.capacity() <= 2 * IN_ORDER_MAX, "piece {i}");
        }
        let message = rx.pop_message().unwrap();
        assert_eq!(message.payload.len(), pieces as usize);
        assert!(message.payload.iter().all(|&b| b == b'x'));
        assert_eq!(rx.footprint(), 0);
        assert!(rx.in_order.capacity() <= IN_ORDER_KEEP);
    }

    /// A run of small whole messages (a packed frame) stays on the fast path up
    /// to `IN_ORDER_MAX` pieces, and the queue gives its capacity back once
    /// drained.
    #[test]
    fn a_long_in_order_run_stays_on_the_fast_path_and_gives_back_its_queue() {
        let mut rx = Assembler::<u32>::new(BIG);
        let run = 1500u64;
        for i in 0..run {
            assert_eq!(rx.insert(i * 2, bytes("m"), true, None), accepted(2));
        }
        assert_eq!(rx.in_order.len(), run as usize);
        assert!(rx.chunks.is_empty(), "spilled into the B-tree");
        for _ in 0..run {
            assert_eq!(rx.pop_message().unwrap().payload, bytes("m"));
        }
        assert!(rx.pop_message().is_none());
        assert_eq!(rx.footprint(), 0);
        assert!(rx.in_order.capacity() <= IN_ORDER_KEEP);
    }

    /// (From review) pieces of an unfinished message that a reset discards leave
    /// the fast path's queue at its resting capacity: nothing counts it once they
    /// are gone.
    #[test]
    fn a_reset_past_an_unfinished_in_order_run_gives_back_the_queue() {
        let mut rx = Assembler::<u32>::new(BIG);
        let run = 2000u64;
        for i in 0..run {
            assert_eq!(rx.insert(i, bytes("x"), false, None), accepted(1));
        }
        assert!(rx.in_order.capacity() > IN_ORDER_KEEP);
        rx.reset_to(run + 10).unwrap();
        assert!(rx.pop_message().is_none());
        assert_eq!(rx.footprint(), 0);
        assert!(rx.in_order.capacity() <= IN_ORDER_KEEP);
    }

    #[test]
    fn take_in_order_settles_only_at_a_drained_delivery_point() {
        let mut rx = Assembler::<u32>::new(100);
        assert!(rx.take_in_order(0, 10));
        assert_eq!((rx.read_offset(), rx.acknowledge_offset()), (10, 10));
        // Not at the delivery point, or past the window.
        assert!(!rx.take_in_order(11, 5));
        assert!(!rx.take_in_order(10, 101));
        // Something held: a message waiting to be popped must come first.
        rx.insert(10, bytes("ab"), true, None);
        assert!(!rx.take_in_order(13, 5));
        assert_eq!(rx.pop_message().unwrap().payload, bytes("ab"));
        assert!(rx.take_in_order(13, 5));
        // A hole above: not drained.
        rx.insert(30, bytes("x"), true, None);
        assert!(!rx.take_in_order(18, 2));
        // Past the final offset.
        let mut rx = Assembler::<u32>::new(100);
        rx.finish_at(4).unwrap();
        assert!(!rx.take_in_order(0, 5));
        assert!(rx.take_in_order(0, 4));
        assert!(rx.is_finished());
    }

    #[test]
    fn in_order_fast_path_delivers_every_message_uncopied() {
        let mut rx = Assembler::<u32>::new(BIG);
        let payloads: Vec<Bytes> = (0..100).map(|i| bytes(&format!("m{i}"))).collect();
        let mut offset = 0;
        for (i, p) in payloads.iter().enumerate() {
            let end = offset + p.len() as u64 + 1;
            assert_eq!(
                rx.insert(offset, p.clone(), true, Some(i as u32)),
                accepted(end - offset)
            );
            assert_eq!(rx.acknowledge_offset(), end);
            assert_eq!(rx.received_max_offset(), end);
            offset = end;
        }
        assert_eq!(rx.received_ranges(8).count(), 0);
        let popped = pop_all(&mut rx);
        assert_eq!(popped.len(), payloads.len());
        for (i, ((_, meta, payload), sent)) in popped.iter().zip(&payloads).enumerate() {
            assert_eq!(*meta, Some(i as u32));
            assert_eq!(payload.as_ptr(), sent.as_ptr());
        }
        assert_eq!(rx.stats().duplicate_units, 0);
        assert_eq!(rx.footprint(), 0);
    }

    #[test]
    fn out_of_order_then_in_order_goes_back_to_the_fast_path() {
        let mut rx = Assembler::new(BIG);
        // "world" at 6..12 first: a gap, stored above ack.
        assert_eq!(rx.insert(6, bytes("world"), true, Some(2)), accepted(6));
        assert_eq!(rx.acknowledge_offset(), 0);
        // "hel" at the ack, but data is stored above it: the general path.
        assert_eq!(rx.insert(0, bytes("hel"), false, Some(1)), accepted(3));
        assert_eq!(rx.acknowledge_offset(), 3);
        assert_eq!(rx.insert(3, bytes("lo"), true, None), accepted(3));
        assert_eq!(rx.acknowledge_offset(), 12);
        // Now in order again.
        assert_eq!(rx.insert(12, bytes("!"), true, Some(3)), accepted(2));
        assert_eq!(
            pop_all(&mut rx),
            [
                (0, Some(1), bytes("hello")),
                (6, Some(2), bytes("world")),
                (12, Some(3), bytes("!"))
            ]
        );
    }

    #[test]
    fn overlap_with_fast_path_data_stores_only_new_units() {
        let mut rx = Assembler::new(BIG);
        assert_eq!(rx.insert(0, bytes("abc"), false, Some(1)), accepted(3));
        // Same start again: a duplicate, first copy (and meta) kept.
        assert_eq!(
            rx.insert(0, bytes("xyz"), false, Some(9)),
            InsertOutcome::Duplicate
        );
        // Overlapping the fast-path data and extending it.
        assert_eq!(rx.insert(1, bytes("BCdef"), true, None), accepted(4));
        assert_eq!(rx.acknowledge_offset(), 7);
        assert_eq!(pop_all(&mut rx), [(0, Some(1), bytes("abcdef"))]);
        assert_eq!(rx.stats().duplicate_units, 3 + 2);
        // Below the delivery point: old.
        assert_eq!(
            rx.insert(0, bytes("abcdef"), true, None),
            InsertOutcome::Old
        );
        assert_eq!(rx.insert(7, bytes("g"), true, None), accepted(2));
        assert_eq!(pop_all(&mut rx), [(7, None, bytes("g"))]);
    }

    #[test]
    fn reset_across_fast_path_data_keeps_complete_messages() {
        let mut rx = Assembler::new(BIG);
        assert_eq!(rx.insert(0, bytes("hello"), true, Some(1)), accepted(6));
        assert_eq!(rx.insert(6, bytes("par"), false, Some(2)), accepted(3));
        let outcome = rx.reset_to(20).unwrap();
        assert_eq!(
            outcome,
            ResetOutcome {
                skipped_messages: 1,
                skipped_units: 14
            }
        );
        assert_eq!(rx.acknowledge_offset(), 20);
        // Data below the reset point is old; data at it takes the fast path.
        assert_eq!(rx.insert(9, bytes("tial"), true, None), InsertOutcome::Old);
        assert_eq!(rx.insert(20, bytes("next"), true, Some(3)), accepted(5));
        assert_eq!(rx.acknowledge_offset(), 25);
        assert_eq!(
            pop_all(&mut rx),
            [(0, Some(1), bytes("hello")), (20, Some(3), bytes("next"))]
        );
        assert_eq!(rx.footprint(), 0);
    }

    #[test]
    fn fast_path_memory_is_bounded_by_the_window() {
        let window = 100;
        let mut rx = Assembler::<u32>::new(window);
        let payload = Bytes::from(vec![7u8; 9]);
        let mut offset = 0;
        let mut accepted_count = 0;
        // Nobody pops: in-order data fills the window, then is refused.
        for _ in 0..50 {
            match rx.insert(offset, payload.clone(), true, None) {
                InsertOutcome::Accepted { new_units } => {
                    assert_eq!(new_units, 10);
                    offset += 10;
                    accepted_count += 1;
                }
                other => assert_eq!(other, InsertOutcome::BeyondWindow),
            }
            assert!(rx.buffered_bytes() as u64 <= window);
            assert!(rx.acknowledge_offset() <= rx.read_offset() + window);
        }
        assert_eq!(accepted_count, 10);
        // Popping one message makes room for exactly one more.
        assert!(rx.pop_message().is_some());
        assert_eq!(rx.insert(offset, payload.clone(), true, None), accepted(10));
        assert_eq!(
            rx.insert(offset + 10, payload, true, None),
            InsertOutcome::BeyondWindow
        );
    }

    #[test]
    fn empty_final_fragment_is_an_empty_message() {
        let mut rx = Assembler::new(BIG);
        assert_eq!(rx.insert(0, Bytes::new(), true, Some(9)), accepted(1));
        assert_eq!(rx.insert(1, Bytes::new(), true, None), accepted(1));
        assert_eq!(
            pop_all(&mut rx),
            [(0, Some(9), Bytes::new()), (1, None, Bytes::new())]
        );
        assert_eq!(rx.insert(1, Bytes::new(), true, None), InsertOutcome::Old);
    }

    #[test]
    fn empty_non_final_fragment_covers_nothing() {
        let mut rx = Assembler::<u32>::new(BIG);
        assert_eq!(
            rx.insert(5, Bytes::new(), false, None),
            InsertOutcome::Empty
        );
        assert_eq!(rx.received_max_offset(), 0);
    }

    #[test]
    fn overlapping_retransmit_with_other_cut_delivers_once() {
        let mut rx = Assembler::new(BIG);
        let msg = bytes("abcdefghij"); // offsets 0..11
        assert_eq!(rx.insert(0, msg.slice(0..4), false, Some(1)), accepted(4));
        assert_eq!(rx.insert(6, msg.slice(6..), true, None), accepted(5));
        // Resent on a path with another MTU: cut at 3 and 7.
        assert_eq!(
            rx.insert(0, msg.slice(0..3), false, Some(1)),
            InsertOutcome::Duplicate
        );
        assert_eq!(rx.insert(3, msg.slice(3..7), false, None), accepted(2));
        assert_eq!(
            rx.insert(7, msg.slice(7..), true, None),
            InsertOutcome::Duplicate
        );
        assert_eq!(pop_all(&mut rx), [(0, Some(1), msg)]);
        assert_eq!(rx.stats().duplicate_units, 3 + 2 + 4);
        assert!(rx.pop_message().is_none());
    }

    #[test]
    fn overlap_whose_end_unit_is_new_is_accepted() {
        let mut rx = Assembler::new(BIG);
        assert_eq!(rx.insert(0, bytes("abc"), false, Some(1)), accepted(3));
        // Same bytes again, now with the end-of-message unit.
        assert_eq!(rx.insert(0, bytes("abc"), true, Some(1)), accepted(1));
        assert_eq!(pop_all(&mut rx), [(0, Some(1), bytes("abc"))]);
    }

    #[test]
    fn fragment_covering_a_stored_chunk_is_split_around_it() {
        let mut rx = Assembler::new(BIG);
        let msg = bytes("0123456789");
        assert_eq!(rx.insert(4, msg.slice(4..6), false, None), accepted(2));
        assert_eq!(rx.insert(0, msg.clone(), true, Some(3)), accepted(9));
        assert_eq!(rx.chunks.len(), 3);
        assert_eq!(rx.buffered_bytes(), 10);
        assert_eq!(rx.received_ranges(8).count(), 0);
        assert_eq!(pop_all(&mut rx), [(0, Some(3), msg)]);
    }

    #[test]
    fn conflicting_data_keeps_the_first_copy() {
        let mut rx = Assembler::new(BIG);
        rx.insert(2, bytes("XY"), false, None);
        assert_eq!(rx.insert(0, bytes("abcd"), true, Some(1)), accepted(3));
        assert_eq!(pop_all(&mut rx), [(0, Some(1), bytes("abXY"))]);
    }

    #[test]
    fn meta_comes_only_from_the_message_start() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("ab"), false, None);
        // A continuation claiming metadata does not lend it to the message.
        rx.insert(2, bytes("cd"), true, Some(5));
        assert_eq!(pop_all(&mut rx), [(0, None, bytes("abcd"))]);
    }

    #[test]
    fn later_copy_fills_in_missing_start_meta() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("ab"), false, None);
        assert_eq!(rx.insert(0, bytes("abc"), true, Some(4)), accepted(2));
        // The first metadata to arrive wins.
        rx.insert(0, bytes("a"), false, Some(5));
        assert_eq!(pop_all(&mut rx), [(0, Some(4), bytes("abc"))]);
    }

    #[test]
    fn offset_overflow_is_rejected() {
        let mut rx = Assembler::<u32>::new(u64::MAX);
        assert_eq!(
            rx.insert(u64::MAX - 1, bytes("ab"), false, None),
            InsertOutcome::OffsetOverflow
        );
        assert_eq!(
            rx.insert(u64::MAX - 2, bytes("ab"), true, None),
            InsertOutcome::OffsetOverflow
        );
        assert_eq!(
            rx.insert(u64::MAX - 2, bytes("ab"), false, None),
            accepted(2)
        );
        assert_eq!(rx.received_max_offset(), u64::MAX);
        assert_eq!(
            rx.received_ranges(8).collect::<Vec<_>>(),
            [(u64::MAX - 2, u64::MAX)]
        );
    }

    #[test]
    fn out_of_order_messages_pop_in_order() {
        let mut rx = Assembler::new(BIG);
        rx.insert(4, bytes("def"), true, Some(2)); // 4..8
        rx.insert(8, Bytes::new(), true, Some(3)); // 8..9
        assert!(rx.pop_message().is_none());
        assert_eq!(rx.acknowledge_offset(), 0);
        assert_eq!(rx.received_max_offset(), 9);
        rx.insert(0, bytes("abc"), true, Some(1)); // 0..4
        assert_eq!(rx.acknowledge_offset(), 9);
        assert_eq!(
            pop_all(&mut rx),
            [
                (0, Some(1), bytes("abc")),
                (4, Some(2), bytes("def")),
                (8, Some(3), Bytes::new())
            ]
        );
    }

    #[test]
    fn received_ranges_merge_adjacent_chunks_above_ack() {
        let mut rx = Assembler::<u32>::new(BIG);
        rx.insert(0, bytes("ab"), false, None);
        rx.insert(5, bytes("x"), false, None);
        rx.insert(6, bytes("y"), false, None);
        rx.insert(9, bytes("z"), true, None);
        assert_eq!(rx.acknowledge_offset(), 2);
        assert_eq!(rx.received_ranges(8).collect::<Vec<_>>(), [(5, 7), (9, 11)]);
        assert_eq!(rx.received_ranges(1).collect::<Vec<_>>(), [(5, 7)]);
    }

    #[test]
    fn reset_keeps_complete_messages_and_skips_partial_ones() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("ab"), true, Some(1)); // message 0..3, complete
        rx.insert(3, bytes("cd"), false, Some(2)); // message 3..8, partial: 3..5
        rx.insert(8, bytes("e"), true, Some(3)); // message 8..10, start known? no: 7 missing
        rx.insert(10, bytes("f"), true, Some(4)); // message 10..12, start known from 9
        rx.insert(12, bytes("g"), false, Some(5)); // message 12..15, partial
        let outcome = rx.reset_to(15).unwrap();
        // Skipped: the end unit at 9 (3..10 may be one or two messages), and the
        // message cut short before 15.
        assert_eq!(
            outcome,
            ResetOutcome {
                skipped_messages: 2,
                skipped_units: 15 - 3 - 2,
            }
        );
        assert_eq!(rx.read_offset(), 0);
        assert_eq!(rx.acknowledge_offset(), 15);
        assert_eq!(rx.buffered_bytes(), 3);
        assert_eq!(
            pop_all(&mut rx),
            [(0, Some(1), bytes("ab")), (10, Some(4), bytes("f"))]
        );
        assert_eq!(rx.read_offset(), 15);
        assert_eq!(rx.buffered_bytes(), 0);
        assert_eq!(rx.stats().skipped_messages, 2);
    }

    #[test]
    fn reset_over_a_gap_without_data_counts_one_message() {
        let mut rx = Assembler::<u32>::new(BIG);
        assert_eq!(
            rx.reset_to(100).unwrap(),
            ResetOutcome {
                skipped_messages: 1,
                skipped_units: 100,
            }
        );
        assert_eq!(rx.acknowledge_offset(), 100);
        assert_eq!(rx.received_max_offset(), 100);
        assert_eq!(rx.read_offset(), 100);
    }

    #[test]
    fn reset_after_a_received_end_unit_counts_only_messages_seen() {
        let mut rx = Assembler::<u32>::new(BIG);
        rx.insert(7, bytes("xy"), true, None); // ends at 10
        let outcome = rx.reset_to(10).unwrap();
        assert_eq!(outcome.skipped_messages, 1);
        assert_eq!(outcome.skipped_units, 10);
    }

    #[test]
    fn reset_at_or_below_read_point_changes_nothing() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("ab"), true, Some(1));
        rx.pop_message();
        rx.insert(3, bytes("c"), false, None);
        assert_eq!(rx.reset_to(3).unwrap(), ResetOutcome::default());
        assert_eq!(rx.reset_to(1).unwrap(), ResetOutcome::default());
        assert_eq!(rx.acknowledge_offset(), 4);
        assert_eq!(rx.buffered_bytes(), 1);
    }

    #[test]
    fn data_below_reset_point_is_old() {
        let mut rx = Assembler::new(BIG);
        rx.reset_to(50).unwrap();
        assert_eq!(
            rx.insert(40, bytes("abc"), true, Some(1)),
            InsertOutcome::Old
        );
        // Reaching past the reset point: only the part at and after it is stored, and
        // it is not the message start's metadata.
        assert_eq!(rx.insert(48, bytes("abcd"), false, Some(2)), accepted(2));
        assert_eq!(rx.insert(52, Bytes::new(), true, None), accepted(1));
        assert_eq!(pop_all(&mut rx), [(50, None, bytes("cd"))]);
    }

    #[test]
    fn reset_trims_a_straddling_chunk_without_meta() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("abcdef"), false, Some(1));
        assert_eq!(rx.reset_to(4).unwrap().skipped_units, 4);
        assert_eq!(rx.buffered_bytes(), 2);
        assert_eq!(rx.acknowledge_offset(), 6);
        rx.insert(6, Bytes::new(), true, None);
        assert_eq!(pop_all(&mut rx), [(4, None, bytes("ef"))]);
    }

    #[test]
    fn reset_keeps_contiguous_messages_after_the_reset_point() {
        let mut rx = Assembler::new(BIG);
        rx.insert(0, bytes("a"), false, None); // partial message at 0
        rx.insert(3, bytes("b"), true, Some(2)); // 3..5 after the reset point
        rx.insert(2, bytes("z"), true, None); // 2..3 ends the message reset away
        assert_eq!(rx.acknowledge_offset(), 1);
        let outcome = rx.reset_to(3).unwrap();
        assert_eq!(outcome.skipped_messages, 1);
        assert_eq!(rx.acknowledge_offset(), 5);
        assert_eq!(pop_all(&mut rx), [(3, Some(2), bytes("b"))]);
    }

    #[test]
    fn fragment_beyond_window_is_dropped_until_read_point_advances() {
        let mut rx = Assembler::new(11);
        assert_eq!(rx.insert(0, bytes("abcd"), true, Some(1)), accepted(5)); // 0..5
        assert_eq!(
            rx.insert(13, bytes("xy"), true, Some(3)),
            InsertOutcome::BeyondWindow
        );
        // 5..13, cut at the window edge: 5..11 is stored, 11..13 dropped.
        assert_eq!(rx.insert(5, bytes("efghijk"), true, Some(2)), accepted(6));
        assert_eq!(rx.stats().beyond_window_fragments, 2);
        assert_eq!(rx.received_max_offset(), 11);
        assert_eq!(rx.buffered_bytes(), 4 + 6);
        assert_eq!(rx.pop_message().unwrap().payload, bytes("abcd"));
        assert_eq!(rx.read_offset(), 5);
        assert_eq!(rx.insert(13, bytes("xy"), true, Some(3)), accepted(3));
        assert_eq!(rx.insert(5, bytes("efghijk"), true, Some(2)), accepted(2));
        assert_eq!(
            pop_all(&mut rx),
            [(5, Some(2), bytes("efghijk")), (13, Some(3), bytes("xy"))]
        );
    }

    #[test]
    fn message_larger_than_window_still_completes() {
        let mut rx = Assembler::new(4);
        let msg = bytes("0123456789");
        // Out of order beyond the window: dropped.
        assert_eq!(
            rx.insert(6, msg.slice(6..), true, None),
            InsertOutcome::BeyondWindow
        );
        // In order: accepted whole, even past the window.
        assert_eq!(rx.insert(0, msg.slice(..6), false, Some(1)), accepted(6));
        assert_eq!(rx.insert(6, msg.slice(6..), true, None), accepted(5));
        // The next message waits for the pop.
        assert_eq!(
            rx.insert(11, bytes("ab"), true, Some(2)),
            InsertOutcome::BeyondWindow
        );
        assert_eq!(rx.buffered_bytes(), 10);
        assert_eq!(rx.pop_message().unwrap().payload, msg);
        assert_eq!(rx.insert(11, bytes("ab"), true, Some(2)), accepted(3));
    }

    #[test]
    fn unpopped_complete_messages_hold_back_the_window() {
        let mut rx = Assembler::<u32>::new(6);
        assert_eq!(rx.insert(0, bytes("ab"), true, None), accepted(3));
        assert_eq!(rx.insert(3, bytes("cd"), true, None), accepted(3));
        assert_eq!(
            rx.insert(6, bytes("e"), true, None),
            InsertOutcome::BeyondWindow
        );
        rx.pop_message();
        assert_eq!(rx.insert(6, bytes("e"), true, None), accepted(2));
    }

    #[test]
    fn finish_conflicts_are_errors() {
        let mut rx = Assembler::<u32>::new(BIG);
        rx.insert(0, bytes("abc"), false, None);
        assert_eq!(
            rx.finish_at(2),
            Err(FinishError::DataBeyond {
                final_offset: 2,
                received_max_offset: 3,
            })
        );
        assert_eq!(
            rx.finish_at(3),
            Err(FinishError::NotMessageEnd { final_offset: 3 })
        );
        rx.finish_at(10).unwrap();
        rx.finish_at(10).unwrap();
        assert_eq!(
            rx.finish_at(11),
            Err(FinishError::Conflict {
                previous: 10,
                requested: 11,
            })
        );
        assert_eq!(
            rx.insert(9, bytes("xy"), true, None),
            InsertOutcome::BeyondFinish
        );
        assert_eq!(
            rx.reset_to(11),
            Err(ResetError::BeyondFinish {
                offset: 11,
                final_offset: 10,
            })
        );
    }

    #[test]
    fn stream_is_finished_once_every_message_is_popped() {
        let mut rx = Assembler::<u32>::new(BIG);
        rx.insert(0, bytes("abc"), true, None);
        rx.finish_at(4).unwrap();
        assert!(!rx.is_finished());
        rx.pop_message();
        assert!(rx.is_finished());

        let mut rx = Assembler::<u32>::new(BIG);
        rx.insert(0, bytes("abc"), true, None);
        rx.reset_to(9).unwrap();
        rx.finish_at(9).unwrap();
        assert!(!rx.is_finished()); // the complete message below the reset waits
        rx.pop_message();
        assert!(rx.is_finished());
    }
}
