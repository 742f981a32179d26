//! The send side of one stream direction.
//!
//! A [`SendBuffer`] owns the messages the application queued, in one offset space: a
//! message of `n` bytes occupies `n + 1` offsets (its bytes, then the end-of-message
//! unit). It tracks what was never sent, what is acknowledged, and which sent ranges
//! are lost and must go out again; it knows nothing of connections. A connection asks
//! for the next [`Pending`] range, cuts it by its own MTU with `Bytes::slice`, and
//! reports what it sent with [`SendBuffer::mark_sent`].

use std::collections::VecDeque;

use bytes::Bytes;
use rangemap::RangeSet;

/// Separate selectively acknowledged ranges a send buffer remembers at most.
const MAX_SACKED_RANGES: usize = 4096;

use crate::time::Timestamp;

/// One queued message.
#[derive(Debug, Clone)]
pub struct QueuedMessage<M> {
    /// Offset of the message's first unit.
    pub start: u64,
    /// The application's payload.
    pub data: Bytes,
    /// The message's metadata (sent on the fragment that starts it).
    pub meta: M,
    /// When the message expires unacknowledged, if ever.
    pub deadline: Option<Timestamp>,
}

impl<M> QueuedMessage<M> {
    /// One past the message's end-of-message unit.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64 + 1
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The send window is full; retry when the stream becomes writable.
    #[error("the stream's send window is full")]
    WouldBlock,
    /// The stream was finished; nothing more can be sent on it.
    #[error("the stream is finished")]
    Finished,
}

/// The next range a connection may send: from `offset` up to at most `limit`, all
/// within `message`.
#[derive(Debug)]
pub struct Pending<'a, M> {
    /// First offset to send.
    pub offset: u64,
    /// The range must end at or before this offset (the message's end, or the end of
    /// the lost range being resent).
    pub limit: u64,
    /// The message the range belongs to.
    pub message: &'a QueuedMessage<M>,
    /// Whether the range was sent before and declared lost.
    pub retransmit: bool,
}

impl<M> Pending<'_, M> {
    /// The payload of `[self.offset, end)` as a slice of the message (no copy), and
    /// whether it includes the end-of-message unit. `end` is clamped to `limit`.
    pub fn cut(&self, end: u64) -> (Bytes, bool) {
        let end = end.clamp(self.offset, self.limit);
        let len = self.message.data.len() as u64;
        let from = self.offset - self.message.start;
        let to = (end - self.message.start).min(len);
        let is_final = end == self.message.end();
        (
            self.message
                .data
                .slice(from as usize..to.max(from) as usize),
            is_final,
        )
    }

    /// Whether a fragment starting at `offset` starts the message (and so carries its
    /// metadata).
    pub fn starts_message(&self) -> bool {
        self.offset == self.message.start
    }
}

/// What an acknowledgement changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Offset units newly acknowledged.
    pub newly_acknowledged: u64,
    /// Messages fully acknowledged and released.
    pub released_messages: usize,
}

/// Messages dropped because their deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// How many messages were dropped.
    pub messages: usize,
    /// The stream continues at this offset; the receiver is told with RESET_OFFSET.
    pub reset_to: u64,
}

/// The send side of one stream direction.
#[derive(Debug)]
pub struct SendBuffer<M> {
    /// Messages not yet fully acknowledged, in offset order.
    messages: VecDeque<QueuedMessage<M>>,
    /// Everything below is acknowledged or dropped.
    base: u64,
    /// One past the last queued message.
    end: u64,
    /// First offset never sent.
    next_new: u64,
    /// Acknowledged ranges above `base`.
    acked: RangeSet<u64>,
    /// Sent, unacknowledged ranges declared lost, to send again.
    lost: RangeSet<u64>,
    /// Largest number of unacknowledged offset units queued.
    window: u64,
    /// A RESET_OFFSET to deliver: every packet at this offset carries the flag until
    /// the peer acknowledges it.
    reset: Option<u64>,
    /// Whether the reset must go out in a packet of its own (no packet at its offset
    /// has carried it since it was set or last declared lost).
    reset_unsent: bool,
    finished: bool,
    /// Payload bytes of `messages`.
    buffered: usize,
    /// Messages ever popped from the front of `messages`: `cursor - popped` is an
    /// index into it.
    popped: usize,
    /// Absolute index (counting popped messages) of the message holding `next_new`,
    /// kept by [`Self::mark_sent`]: the in-order send path finds its message without
    /// a binary search. Only a hint: [`Self::message_at`] checks it and falls back
    /// to the search when it does not hold `next_new`.
    cursor: usize,
}

impl<M> SendBuffer<M> {
    /// An empty stream starting at offset 0 whose first packet carries RESET_OFFSET
    /// (a new stream incarnation), holding at most `window` unacknowledged units.
    pub fn new(window: u64) -> Self {
        SendBuffer {
            messages: VecDeque::new(),
            base: 0,
            end: 0,
            next_new: 0,
            acked: RangeSet::new(),
            lost: RangeSet::new(),
            window,
            reset: Some(0),
            reset_unsent: false,
            finished: false,
            buffered: 0,
            popped: 0,
            cursor: 0,
        }
    }

    /// Whether a message of `len` bytes fits in the window now. A message larger than
    /// the window fits when nothing else is outstanding, so every message that passes
    /// the size limit can eventually be sent.
    pub fn has_room(&self, len: usize) -> bool {
        let span = len as u64 + 1;
        self.messages.is_empty() || (self.end - self.base).saturating_add(span) <= self.window
    }

    /// Queues a message; returns its start offset.
    pub fn push(
        &mut self,
        data: Bytes,
        meta: M,
        deadline: Option<Timestamp>,
    ) -> Result<u64, PushError> {
        if self.finished {
            return Err(PushError::Finished);
        }
        if !self.has_room(data.len()) {
            return Err(PushError::WouldBlock);
        }
        Ok(self.enqueue(data, meta, deadline))
    }

    fn enqueue(&mut self, data: Bytes, meta: M, deadline: Option<Timestamp>) -> u64 {
        let start = self.end;
        self.end += data.len() as u64 + 1;
        self.buffered += data.len();
        self.messages.push_back(QueuedMessage {
            start,
            data,
            meta,
            deadline,
        });
        start
    }

    /// Queues a last message whatever the window (a finish marker must always fit)
    /// and finishes the stream; returns its start offset, or `Finished` if the stream
    /// already was.
    pub fn push_final(&mut self, data: Bytes, meta: M) -> Result<u64, PushError> {
        if self.finished {
            return Err(PushError::Finished);
        }
        let start = self.enqueue(data, meta, None);
        self.finished = true;
        Ok(start)
    }

    /// Marks the stream finished: no more messages; the final offset is [`Self::end`].
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether the stream was finished.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The deadline of the first unacknowledged message, if it has one: the next
    /// instant [`Self::expire`] can drop anything.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.messages.front().and_then(|m| m.deadline)
    }

    /// Number of messages queued and not acknowledged.
    pub fn queued_messages(&self) -> usize {
        self.messages.len()
    }

    /// Whether everything queued is acknowledged.
    pub fn is_settled(&self) -> bool {
        self.messages.is_empty() && self.reset.is_none()
    }

    /// Everything below is acknowledged or dropped.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the last queued message (the final offset once finished).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// First offset never sent.
    pub fn next_new(&self) -> u64 {
        self.next_new
    }

    /// Payload bytes held (queued and not acknowledged).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// The offset a RESET_OFFSET must still be delivered for.
    pub fn pending_reset(&self) -> Option<u64> {
        self.reset
    }

    /// Whether there is anything to send: a lost range, new data, or a reset.
    pub fn has_pending(&self) -> bool {
        !self.lost.is_empty() || self.next_new < self.end || self.reset_unsent
    }

    /// The offset of a RESET_OFFSET that must go out in a packet of its own (empty
    /// content at that offset): after an expiry, the data at the reset offset may all
    /// be acknowledged already, or there may be none.
    pub fn reset_to_send(&self) -> Option<u64> {
        self.reset.filter(|_| self.reset_unsent)
    }

    /// Records that a packet at the pending reset's offset carried RESET_OFFSET.
    pub fn mark_reset_sent(&mut self) {
        self.reset_unsent = false;
    }

    /// A frame carrying `[start, end)` (and the reset at `start`, if `reset`) was
    /// declared lost, or its connection closed: send again what is unacknowledged.
    pub fn on_frame_lost(&mut self, start: u64, end: u64, reset: bool) {
        if end > start {
            self.on_lost(start, end);
        }
        if reset {
            self.on_reset_lost();
        }
    }

    /// The packet that carried the reset was declared lost: send it again unless it
    /// was acknowledged meanwhile.
    pub fn on_reset_lost(&mut self) {
        self.reset_unsent = self.reset.is_some();
    }

    fn message_at(&self, offset: u64) -> Option<&QueuedMessage<M>> {
        if let Some(hinted) = self
            .cursor
            .checked_sub(self.popped)
            .and_then(|index| self.messages.get(index))
            .filter(|m| m.start <= offset && offset < m.end())
        {
            return Some(hinted);
        }
        let index = self.messages.partition_point(|m| m.end() <= offset);
        self.messages.get(index).filter(|m| m.start <= offset)
    }

    /// Moves the cursor forward to the message holding `next_new` (one step per
    /// message sent in order; a search if the hint fell behind the front).
    fn advance_cursor(&mut self) {
        let mut index = match self.cursor.checked_sub(self.popped) {
            Some(index) if index < self.messages.len() => index,
            _ => self.messages.partition_point(|m| m.end() <= self.next_new),
        };
        while self
            .messages
            .get(index)
            .is_some_and(|m| m.end() <= self.next_new)
        {
            index += 1;
        }
        self.cursor = self.popped + index;
    }

    /// The next range to send: the lowest lost range first, then new data.
    pub fn next_pending(&self) -> Option<Pending<'_, M>> {
        if let Some(lost) = self.lost.iter().next() {
            let message = self.message_at(lost.start)?;
            return Some(Pending {
                offset: lost.start,
                limit: lost.end.min(message.end()),
                message,
                retransmit: true,
            });
        }
        let message = self.message_at(self.next_new)?;
        Some(Pending {
            offset: self.next_new,
            limit: message.end(),
            message,
            retransmit: false,
        })
    }

    /// The first queued piece at or after `offset` that the peer has not
    /// acknowledged (cumulatively or selectively), up to `limit`, the end of its
    /// message and the next selectively acknowledged range, for sending a redundant
    /// copy of data already sent (no bookkeeping changes). `None` if all of
    /// `[offset, limit)` is acknowledged or was never sent.
    pub fn piece_at(&self, offset: u64, limit: u64) -> Option<Pending<'_, M>> {
        let mut offset = offset.max(self.base);
        // Skip what the peer reported through selective acknowledgements.
        if let Some(acked) = self.acked.get(&offset) {
            offset = acked.end;
        }
        if offset >= self.next_new || offset >= limit {
            return None;
        }
        let next_acked = self
            .acked
            .overlapping(offset..limit)
            .next()
            .map_or(u64::MAX, |r| r.start);
        let message = self.message_at(offset)?;
        Some(Pending {
            offset,
            limit: limit.min(message.end()).min(self.next_new).min(next_acked),
            message,
            // A copy, not a retransmission: it is not counted as one.
            retransmit: false,
        })
    }

    /// Records that `[start, end)` was sent: it is no longer lost, and new data
    /// advances.
    ///
    /// `end` is clamped to the end of the message holding `start`, as
    /// [`Pending::cut`] clamps it: one fragment never spans two messages.
    pub fn mark_sent(&mut self, start: u64, end: u64) {
        let Some(message_end) = self.message_at(start).map(QueuedMessage::end) else {
            return;
        };
        let end = end.min(message_end);
        if start >= end {
            return;
        }
        self.lost.remove(start..end);
        if start <= self.next_new && end > self.next_new {
            self.next_new = end.min(self.end);
            self.advance_cursor();
        }
    }

    /// The peer has everything below `acknowledged` (`acknowledge_offset`).
    ///
    /// An acknowledgement beyond what was ever sent is impossible from an honest peer
    /// of this incarnation; it is ignored (returns `None`) rather than trusted.
    pub fn on_acknowledged(&mut self, acknowledged: u64) -> Option<AckOutcome> {
        if acknowledged > self.next_new {
            return None;
        }
        // The peer's read point reached the reset: it has applied it (or received
        // everything before it, which makes it moot). A reset at 0 (a new incarnation)
        // is only known to have arrived once something after it is acknowledged.
        if self
            .reset
            .is_some_and(|reset| acknowledged > reset || (reset > 0 && acknowledged == reset))
        {
            self.reset = None;
            self.reset_unsent = false;
        }
        Some(self.advance_base(acknowledged))
    }

    fn advance_base(&mut self, acknowledged: u64) -> AckOutcome {
        if acknowledged <= self.base {
            return AckOutcome::default();
        }
        let newly = acknowledged - self.base - self.acked_units_in(self.base, acknowledged);
        self.base = acknowledged;
        self.acked.remove(0..acknowledged);
        self.lost.remove(0..acknowledged);
        let released = self.release_acknowledged();
        AckOutcome {
            newly_acknowledged: newly,
            released_messages: released,
        }
    }

    /// The peer has `[start, end)` (an explicit selective acknowledgement).
    pub fn on_range_acknowledged(&mut self, start: u64, end: u64) -> u64 {
        let start = start.max(self.base);
        let end = end.min(self.next_new);
        if start >= end {
            return 0;
        }
        let before = self.acked_units_in(start, end);
        if before == 0 && self.acked.len() >= MAX_SACKED_RANGES {
            // A new island past the bound: not remembered (selective
            // acknowledgements only spare retransmissions; the cumulative one
            // still counts), so a peer acknowledging every other unit cannot grow
            // the set without end. The peer has it all the same: it is not resent
            // if it was declared lost (a removal splits at most one lost range,
            // so the lost set is held to the same bound).
            if self.lost.len() < MAX_SACKED_RANGES {
                self.lost.remove(start..end);
            }
            return 0;
        }
        self.acked.insert(start..end);
        self.lost.remove(start..end);
        (end - start) - before
    }

    /// Units of `[start, end)` already selectively acknowledged: visits only the
    /// ranges overlapping it.
    fn acked_units_in(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        self.acked
            .overlapping(start..end)
            .map(|r| r.end.min(end) - r.start.max(start))
            .sum()
    }

    fn release_acknowledged(&mut self) -> usize {
        let mut released = 0;
        while self.messages.front().is_some_and(|m| m.end() <= self.base) {
            if let Some(m) = self.messages.pop_front() {
                self.buffered -= m.data.len();
                self.popped += 1;
            }
            released += 1;
        }
        released
    }

    /// Declares `[start, end)` lost: the parts that were sent and are not
    /// acknowledged will be sent again. Returns the units newly marked lost.
    pub fn on_lost(&mut self, start: u64, end: u64) -> u64 {
        let start = start.max(self.base);
        let end = end.min(self.next_new);
        if start >= end {
            return 0;
        }
        let mut newly = 0;
        for gap in self.acked.gaps(&(start..end)) {
            let already: u64 = self
                .lost
                .overlapping(&gap)
                .map(|r| r.end.min(gap.end) - r.start.max(gap.start))
                .sum();
            newly += (gap.end - gap.start) - already;
            self.lost.insert(gap);
        }
        newly
    }

    /// Drops the unacknowledged messages at the head of the stream whose deadline is
    /// at or before `now`. Only a prefix can be dropped: the receiver learns of it
    /// through RESET_OFFSET at the first message kept, which settles everything
    /// before it. A message with a later deadline stops the prefix.
    pub fn expire(&mut self, now: Timestamp) -> Option<Expired> {
        let mut messages = 0;
        while self
            .messages
            .front()
            .is_some_and(|m| m.deadline.is_some_and(|d| d <= now))
        {
            if let Some(m) = self.messages.pop_front() {
                self.buffered -= m.data.len();
                self.popped += 1;
            }
            messages += 1;
        }
        if messages == 0 {
            return None;
        }
        let reset_to = self.messages.front().map_or(self.end, |m| m.start);
        self.base = reset_to;
        self.next_new = self.next_new.max(reset_to);
        self.advance_cursor();
        self.acked.remove(0..reset_to);
        self.lost.remove(0..reset_to);
        self.reset = Some(reset_to);
        self.reset_unsent = true;
        Some(Expired { messages, reset_to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> SendBuffer<u32> {
        SendBuffer::new(1 << 20)
    }

    /// Sends everything pending in pieces of at most `mtu` units; returns the ranges.
    fn send_all(buf: &mut SendBuffer<u32>, mtu: u64) -> Vec<(u64, u64, Bytes, bool)> {
        let mut sent = Vec::new();
        while let Some(p) = buf.next_pending() {
            let end = (p.offset + mtu).min(p.limit);
            let (data, fin) = p.cut(end);
            let offset = p.offset;
            buf.mark_sent(offset, end);
            sent.push((offset, end, data, fin));
        }
        sent
    }

    #[test]
    fn selective_acknowledgements_of_every_other_unit_stay_bounded_and_counted() {
        let mut buf = buffer();
        let units = 4 * MAX_SACKED_RANGES as u64;
        buf.push(Bytes::from(vec![7u8; units as usize - 1]), 1, None)
            .unwrap();
        send_all(&mut buf, 1000);
        let mut newly = 0;
        for u in (1..units).step_by(2) {
            newly += buf.on_range_acknowledged(u, u + 1);
        }
        assert_eq!(buf.acked.len(), MAX_SACKED_RANGES);
        assert_eq!(newly, MAX_SACKED_RANGES as u64);
        // Repeats count nothing; a range joining remembered ones still counts.
        assert_eq!(buf.on_range_acknowledged(1, 2), 0);
        assert_eq!(buf.on_range_acknowledged(0, 4), 2);
        // The cumulative acknowledgement counts only what was not counted before.
        let outcome = buf.on_acknowledged(units).unwrap();
        assert_eq!(
            outcome.newly_acknowledged,
            units - MAX_SACKED_RANGES as u64 - 2
        );
        assert_eq!(buf.acked.len(), 0);
    }

    #[test]
    fn a_lost_range_acknowledged_past_the_bound_is_not_resent() {
        let mut buf = buffer();
        let units = 4 * MAX_SACKED_RANGES as u64;
        buf.push(Bytes::from(vec![7u8; units as usize - 1]), 1, None)
            .unwrap();
        send_all(&mut buf, 1000);
        for u in (1..2 * MAX_SACKED_RANGES as u64).step_by(2) {
            buf.on_range_acknowledged(u, u + 1);
        }
        assert_eq!(buf.acked.len(), MAX_SACKED_RANGES);
        // Declared lost, then acknowledged selectively past the bound: the peer
        // has it, so only the rest of the lost range goes out again.
        let high = units - 100;
        buf.on_lost(high, high + 50);
        assert_eq!(buf.on_range_acknowledged(high + 10, high + 20), 0);
        assert_eq!(buf.acked.len(), MAX_SACKED_RANGES);
        let lost: Vec<_> = buf.lost.iter().cloned().collect();
        assert_eq!(lost, vec![high..high + 10, high + 20..high + 50]);
    }

    #[test]
    fn copies_skip_selectively_acknowledged_ranges() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![1u8; 99]), 1, None).unwrap(); // [0, 100)
        send_all(&mut buf, 10);
        buf.on_range_acknowledged(20, 40);
        buf.on_range_acknowledged(60, 70);
        let piece =
            |buf: &SendBuffer<u32>, from, to| buf.piece_at(from, to).map(|p| (p.offset, p.limit));
        assert_eq!(piece(&buf, 0, 100), Some((0, 20)));
        assert_eq!(piece(&buf, 20, 100), Some((40, 60)));
        assert_eq!(piece(&buf, 25, 50), Some((40, 50)));
        assert_eq!(piece(&buf, 60, 70), None);
        assert_eq!(piece(&buf, 65, 100), Some((70, 100)));
        // Cumulatively acknowledged data is skipped too.
        buf.on_acknowledged(30).unwrap();
        assert_eq!(piece(&buf, 0, 100), Some((40, 60)));
        buf.on_acknowledged(100).unwrap();
        assert_eq!(piece(&buf, 0, 100), None);
    }

    /// The send cursor finds the same message as the binary search it replaces,
    /// through in-order sends, acknowledgements releasing messages, losses and
    /// expiry (a fixed pseudo-random mix of them).
    #[test]
    fn the_send_cursor_agrees_with_the_search() {
        let mut buf = SendBuffer::new(1 << 20);
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut at = 0u64;
        for step in 0..5000u32 {
            match next() % 8 {
                0..=2 => {
                    let len = (next() % 40) as usize;
                    let deadline =
                        (next() % 4 == 0).then(|| Timestamp::from_micros(u64::from(step)));
                    let _ = buf.push(Bytes::from(vec![1u8; len]), step, deadline);
                }
                3..=5 => {
                    if let Some(p) = buf.next_pending() {
                        let end = p.offset + 1 + next() % 30;
                        let offset = p.offset;
                        buf.mark_sent(offset, end);
                    }
                }
                6 => {
                    let sent = buf.next_new() - buf.base();
                    if sent > 0 {
                        let _ = buf.on_acknowledged(buf.base() + next() % (sent + 1));
                    }
                }
                _ => {
                    if next() % 4 == 0 {
                        at += 1;
                        let _ = buf.expire(Timestamp::from_micros(at * 50));
                    } else if buf.next_new() > buf.base() {
                        let from = buf.base() + next() % (buf.next_new() - buf.base());
                        buf.on_lost(from, from + 1 + next() % 20);
                    }
                }
            }
            let offset = buf.next_new();
            let index = buf.messages.partition_point(|m| m.end() <= offset);
            let searched = buf.messages.get(index).filter(|m| m.start <= offset);
            assert_eq!(
                buf.message_at(offset).map(|m| (m.start, m.meta)),
                searched.map(|m| (m.start, m.meta)),
                "step {step}"
            );
        }
    }

    #[test]
    fn messages_occupy_length_plus_one_offsets() {
        let mut buf = buffer();
        assert_eq!(buf.push(Bytes::from_static(b"hello"), 1, None), Ok(0));
        assert_eq!(buf.push(Bytes::new(), 2, None), Ok(6));
        assert_eq!(buf.push(Bytes::from_static(b"x"), 3, None), Ok(7));
        assert_eq!(buf.end(), 9);
    }

    #[test]
    fn a_connection_cuts_by_its_mtu_without_copying() {
        let mut buf = buffer();
        let payload = Bytes::from(vec![7u8; 10]);
        buf.push(payload.clone(), 1, None).unwrap();
        let sent = send_all(&mut buf, 4);
        let ranges: Vec<_> = sent
            .iter()
            .map(|(a, b, d, f)| (*a, *b, d.len(), *f))
            .collect();
        assert_eq!(
            ranges,
            vec![(0, 4, 4, false), (4, 8, 4, false), (8, 11, 2, true)]
        );
        for (_, _, data, _) in &sent {
            assert!(payload.as_ptr_range().contains(&data.as_ptr()), "copied");
        }
        assert!(!buf.has_pending());
    }

    #[test]
    fn lost_ranges_go_first_and_may_be_cut_differently() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![1u8; 20]), 1, None).unwrap();
        buf.push(Bytes::from(vec![2u8; 20]), 2, None).unwrap();
        send_all(&mut buf, 8);
        buf.push(Bytes::from(vec![3u8; 5]), 3, None).unwrap();
        assert_eq!(buf.on_lost(4, 12), 8);
        let p = buf.next_pending().unwrap();
        assert!(p.retransmit);
        assert_eq!((p.offset, p.limit), (4, 12));
        // Resent in pieces of 3 (another path's MTU).
        let (data, fin) = p.cut(7);
        assert_eq!((data.len(), fin), (3, false));
        buf.mark_sent(4, 7);
        assert_eq!(buf.next_pending().unwrap().offset, 7);
        buf.mark_sent(7, 12);
        // Then new data.
        let p = buf.next_pending().unwrap();
        assert!(!p.retransmit);
        assert_eq!(p.offset, 42);
    }

    #[test]
    fn a_lost_range_spanning_two_messages_is_resent_message_by_message() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![1u8; 5]), 1, None).unwrap();
        buf.push(Bytes::from(vec![2u8; 5]), 2, None).unwrap();
        send_all(&mut buf, 100);
        buf.on_lost(3, 9);
        let p = buf.next_pending().unwrap();
        assert_eq!((p.offset, p.limit, p.message.meta), (3, 6, 1));
        assert_eq!(p.cut(6), (Bytes::from(vec![1u8; 2]), true));
        buf.mark_sent(3, 6);
        let p = buf.next_pending().unwrap();
        assert_eq!((p.offset, p.limit, p.message.meta), (6, 9, 2));
        assert!(p.starts_message());
    }

    #[test]
    fn cumulative_ack_releases_messages_and_frees_the_window() {
        let mut buf = SendBuffer::new(30);
        buf.push(Bytes::from(vec![0u8; 9]), 1, None).unwrap();
        buf.push(Bytes::from(vec![0u8; 9]), 2, None).unwrap();
        buf.push(Bytes::from(vec![0u8; 9]), 3, None).unwrap();
        assert_eq!(
            buf.push(Bytes::from(vec![0u8; 9]), 4, None),
            Err(PushError::WouldBlock)
        );
        send_all(&mut buf, 100);
        let outcome = buf.on_acknowledged(20);
        assert_eq!(
            outcome,
            Some(AckOutcome {
                newly_acknowledged: 20,
                released_messages: 2
            })
        );
        assert!(buf.has_room(9));
        assert_eq!(
            buf.on_acknowledged(20),
            Some(AckOutcome::default()),
            "duplicate ack"
        );
        assert_eq!(
            buf.on_acknowledged(5),
            Some(AckOutcome::default()),
            "stale ack"
        );
    }

    #[test]
    fn an_acknowledged_range_is_never_marked_lost() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![0u8; 99]), 1, None).unwrap();
        send_all(&mut buf, 10);
        assert_eq!(buf.on_range_acknowledged(20, 40), 20);
        assert_eq!(buf.on_range_acknowledged(30, 50), 10);
        assert_eq!(buf.on_lost(0, 100), 70);
        let lost: Vec<_> = buf.lost.iter().cloned().collect();
        assert_eq!(lost, vec![0..20, 50..100]);
        // A cumulative ack over selectively acknowledged units counts them once.
        assert_eq!(buf.on_acknowledged(60).unwrap().newly_acknowledged, 30);
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_ignored() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![0u8; 9]), 1, None).unwrap();
        assert_eq!(buf.on_acknowledged(1_000), None);
        assert_eq!(
            buf.pending_reset(),
            Some(0),
            "an impossible ack clears nothing"
        );
        send_all(&mut buf, 100);
        assert_eq!(buf.on_acknowledged(11), None);
        assert_eq!(buf.on_acknowledged(10).unwrap().newly_acknowledged, 10);
        assert!(buf.is_settled());
    }

    #[test]
    fn the_incarnation_reset_needs_an_ack_past_zero() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![0u8; 9]), 1, None).unwrap();
        send_all(&mut buf, 4);
        // The first packet (with the flag) was lost; the peer acks 0.
        buf.on_acknowledged(0);
        assert_eq!(buf.pending_reset(), Some(0));
        buf.on_acknowledged(4);
        assert_eq!(buf.pending_reset(), None);
    }

    #[test]
    fn mark_sent_never_runs_past_the_message() {
        let mut buf = buffer();
        buf.push(Bytes::from(vec![1u8; 5]), 1, None).unwrap();
        buf.push(Bytes::from(vec![2u8; 5]), 2, None).unwrap();
        let p = buf.next_pending().unwrap();
        let offset = p.offset;
        // A caller that forgets the limit: the first message ends at 6.
        buf.mark_sent(offset, offset + 100);
        assert_eq!(buf.next_new(), 6);
        send_all(&mut buf, 100);
        buf.on_lost(3, 9);
        buf.mark_sent(3, 103);
        assert_eq!(
            buf.next_pending().map(|p| (p.offset, p.limit)),
            Some((6, 9))
        );
    }

    #[test]
    fn a_reset_with_nothing_left_to_carry_it_goes_out_alone() {
        let mut buf = buffer();
        let t = Timestamp::from_micros;
        buf.push(Bytes::from(vec![0u8; 4]), 1, Some(t(100)))
            .unwrap();
        send_all(&mut buf, 100);
        buf.on_acknowledged(0);
        buf.expire(t(100));
        assert!(buf.has_pending());
        assert!(buf.next_pending().is_none(), "no data left");
        assert_eq!(buf.reset_to_send(), Some(5));
        buf.mark_reset_sent();
        assert!(!buf.has_pending());
        buf.on_reset_lost();
        assert_eq!(buf.reset_to_send(), Some(5));
        buf.mark_reset_sent();
        buf.on_acknowledged(5);
        assert!(buf.is_settled());
        assert_eq!(buf.reset_to_send(), None);
    }

    #[test]
    fn expired_head_messages_are_dropped_with_a_reset() {
        let mut buf = buffer();
        let t = Timestamp::from_micros;
        buf.push(Bytes::from(vec![0u8; 4]), 1, Some(t(100)))
            .unwrap();
        buf.push(Bytes::from(vec![0u8; 4]), 2, Some(t(100)))
            .unwrap();
        buf.push(Bytes::from(vec![0u8; 4]), 3, Some(t(500)))
            .unwrap();
        send_all(&mut buf, 3);
        buf.on_acknowledged(3);
        assert!(
            buf.pending_reset().is_none(),
            "the incarnation reset is acknowledged"
        );
        assert_eq!(buf.expire(t(99)), None);
        assert_eq!(
            buf.expire(t(100)),
            Some(Expired {
                messages: 2,
                reset_to: 10
            })
        );
        assert_eq!(buf.pending_reset(), Some(10));
        assert_eq!(buf.base(), 10);
        // A late ack below the reset changes nothing; one at the reset clears it.
        buf.on_acknowledged(5);
        assert_eq!(buf.pending_reset(), Some(10));
        buf.on_acknowledged(10);
        assert_eq!(buf.pending_reset(), None);
    }

    #[test]
    fn a_finished_stream_refuses_more_messages() {
        let mut buf = buffer();
        buf.push(Bytes::new(), 1, None).unwrap();
        buf.finish();
        assert_eq!(buf.push(Bytes::new(), 2, None), Err(PushError::Finished));
        assert_eq!(buf.end(), 1);
    }

    #[test]
    fn a_message_larger_than_the_window_goes_alone() {
        let mut buf = SendBuffer::new(10);
        assert!(buf.push(Bytes::from(vec![0u8; 100]), 1, None).is_ok());
        assert_eq!(buf.push(Bytes::new(), 2, None), Err(PushError::WouldBlock));
    }
}
