//! Reference-model property tests of `stream::Assembler`, in the style of s2n-quic's
//! reassembler tests: random operation sequences (fragments cut anywhere within a
//! message, duplicated, overlapping, in any order; resets; pops; finish) are applied to
//! the assembler and to a trivially correct model (one flag per offset unit, one state
//! per message), and every observable result is compared after every step.

use std::collections::VecDeque;

use atbus_core::stream::{Assembler, InsertOutcome, ResetOutcome};
use bytes::Bytes;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Units `[from, to)` of message `message`, mapped into its span by `fragment`.
    Fragment {
        message: usize,
        from: u16,
        to: u16,
        with_meta: bool,
    },
    Pop,
    /// Reset to the start of message `message % (n + 1)` (n: the end of the stream).
    Reset {
        message: usize,
    },
    Finish,
}

/// The messages laid out in offset space.
struct Layout {
    ids: Vec<u32>,
    payloads: Vec<Bytes>,
    starts: Vec<u64>,
    total: u64,
}

impl Layout {
    fn new(messages: Vec<(u32, Vec<u8>)>) -> Self {
        let mut starts = Vec::new();
        let mut offset = 0;
        for (_, payload) in &messages {
            starts.push(offset);
            offset += payload.len() as u64 + 1;
        }
        let (ids, payloads) = messages
            .into_iter()
            .map(|(id, payload)| (id, Bytes::from(payload)))
            .unzip();
        Self {
            ids,
            payloads,
            starts,
            total: offset,
        }
    }

    fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Start offset of message `m`; `total` for `m == len()`.
    fn start(&self, m: usize) -> u64 {
        self.starts.get(m).copied().unwrap_or(self.total)
    }

    fn end(&self, m: usize) -> u64 {
        self.start(m) + self.payloads[m].len() as u64 + 1
    }

    fn span(&self, m: usize) -> u64 {
        self.end(m) - self.start(m)
    }

    /// Whether unit `u` is a payload byte (not an end-of-message unit).
    fn is_data(&self, u: u64) -> bool {
        let m = self.starts.partition_point(|&s| s <= u) - 1;
        u + 1 != self.end(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Ready,
    Delivered,
    Skipped,
}

/// The reference: every question answered by scanning a unit map.
struct Model<'a> {
    layout: &'a Layout,
    window: u64,
    received: Vec<bool>,
    /// Index of the first message not yet delivered, ready or skipped.
    head: usize,
    ready: VecDeque<usize>,
    meta_seen: Vec<bool>,
    state: Vec<State>,
    received_max: u64,
    finished: bool,
    duplicate_units: u64,
    skipped_messages: u64,
    skipped_units: u64,
}

impl<'a> Model<'a> {
    fn new(layout: &'a Layout, window: u64) -> Self {
        Self {
            layout,
            window,
            received: vec![false; layout.total as usize],
            head: 0,
            ready: VecDeque::new(),
            meta_seen: vec![false; layout.len()],
            state: vec![State::Pending; layout.len()],
            received_max: 0,
            finished: false,
            duplicate_units: 0,
            skipped_messages: 0,
            skipped_units: 0,
        }
    }

    fn head_offset(&self) -> u64 {
        self.layout.start(self.head)
    }

    fn read_offset(&self) -> u64 {
        self.ready
            .front()
            .map_or(self.head_offset(), |&m| self.layout.start(m))
    }

    fn all_received(&self, from: u64, to: u64) -> bool {
        (from..to).all(|u| self.received[u as usize])
    }

    fn ack(&self) -> u64 {
        (self.head_offset()..self.layout.total)
            .find(|&u| !self.received[u as usize])
            .unwrap_or(self.layout.total)
    }

    fn head_complete(&self) -> bool {
        self.head < self.layout.len()
            && self.all_received(self.layout.start(self.head), self.layout.end(self.head))
    }

    fn buffered(&self) -> usize {
        let ready: usize = self
            .ready
            .iter()
            .map(|&m| self.layout.payloads[m].len())
            .sum();
        let held = (self.head_offset()..self.layout.total)
            .filter(|&u| self.received[u as usize] && self.layout.is_data(u))
            .count();
        ready + held
    }

    /// Runs of received units above the acknowledge offset.
    fn received_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for u in self.ack()..self.layout.total {
            if !self.received[u as usize] {
                continue;
            }
            match ranges.last_mut() {
                Some((_, end)) if *end == u => *end += 1,
                _ => ranges.push((u, u + 1)),
            }
        }
        ranges
    }

    fn insert(&mut self, m: usize, from: u64, to: u64, with_meta: bool) -> InsertOutcome {
        let (fs, fe) = (self.layout.start(m) + from, self.layout.start(m) + to);
        let head = self.head_offset();
        if fe <= head {
            self.duplicate_units += fe - fs;
            return InsertOutcome::Old;
        }
        let settled = head.saturating_sub(fs);
        let grows_head = self.ready.is_empty() && !self.head_complete() && fs <= self.ack();
        let limit = if grows_head {
            fe
        } else {
            fe.min(self.read_offset().saturating_add(self.window))
        };
        let lo = fs.max(head);
        if lo >= limit {
            self.duplicate_units += settled;
            return InsertOutcome::BeyondWindow;
        }
        if with_meta && lo == fs {
            self.meta_seen[m] = true;
        }
        let mut new_units = 0;
        for u in lo..limit {
            if !self.received[u as usize] {
                self.received[u as usize] = true;
                self.received_max = self.received_max.max(u + 1);
                new_units += 1;
            }
        }
        self.duplicate_units += settled + (limit - lo) - new_units;
        match new_units {
            0 if limit < fe => InsertOutcome::BeyondWindow,
            0 => InsertOutcome::Duplicate,
            new_units => InsertOutcome::Accepted { new_units },
        }
    }

    fn reset(&mut self, r: usize) -> ResetOutcome {
        let (layout, head) = (self.layout, self.head);
        if r <= head {
            return ResetOutcome::default();
        }
        let reset_at = layout.start(r);
        let mut outcome = ResetOutcome {
            skipped_messages: u64::from(!self.received[reset_at as usize - 1]),
            skipped_units: reset_at - layout.start(head),
        };
        for m in head..r {
            let start_known = m == head || self.received[layout.start(m) as usize - 1];
            if start_known && self.all_received(layout.start(m), layout.end(m)) {
                self.state[m] = State::Ready;
                self.ready.push_back(m);
                outcome.skipped_units -= layout.span(m);
            } else {
                self.state[m] = State::Skipped;
                if self.received[layout.end(m) as usize - 1] {
                    outcome.skipped_messages += 1;
                }
            }
        }
        self.head = r;
        self.received_max = self.received_max.max(self.ack());
        self.skipped_messages += outcome.skipped_messages;
        self.skipped_units += outcome.skipped_units;
        outcome
    }

    fn pop(&mut self) -> Option<usize> {
        let m = match self.ready.pop_front() {
            Some(m) => m,
            None if self.head_complete() => {
                self.head += 1;
                self.head - 1
            }
            None => return None,
        };
        assert_ne!(
            self.state[m],
            State::Delivered,
            "message {m} delivered twice"
        );
        self.state[m] = State::Delivered;
        Some(m)
    }

    fn is_finished(&self) -> bool {
        self.finished && self.ready.is_empty() && self.head == self.layout.len()
    }

    /// Size of the message at the delivery point, if any is left.
    fn read_message_span(&self) -> u64 {
        let m = self.ready.front().copied().unwrap_or(self.head);
        if m < self.layout.len() {
            self.layout.span(m)
        } else {
            0
        }
    }
}

struct Harness<'a> {
    layout: &'a Layout,
    model: Model<'a>,
    rx: Assembler<u32>,
}

impl<'a> Harness<'a> {
    fn new(layout: &'a Layout, window: u64) -> Self {
        Self {
            layout,
            model: Model::new(layout, window),
            rx: Assembler::new(window),
        }
    }

    fn fragment(&mut self, m: usize, from: u64, to: u64, with_meta: bool) {
        let start = self.layout.start(m);
        let payload = &self.layout.payloads[m];
        let len = payload.len() as u64;
        let data = payload.slice(from as usize..to.min(len) as usize);
        let meta = (with_meta && from == 0).then_some(self.layout.ids[m]);
        let got = self.rx.insert(start + from, data, to == len + 1, meta);
        let want = self.model.insert(m, from, to, meta.is_some());
        assert_eq!(got, want, "insert of message {m} units {from}..{to}");
    }

    fn pop(&mut self) -> bool {
        let got = self.rx.pop_message();
        let want = self.model.pop();
        match (got, want) {
            (None, None) => false,
            (Some(got), Some(m)) => {
                assert_eq!(got.offset, self.layout.start(m), "offset of message {m}");
                assert_eq!(
                    got.payload, self.layout.payloads[m],
                    "payload of message {m}"
                );
                let meta = self.model.meta_seen[m].then_some(self.layout.ids[m]);
                assert_eq!(got.meta, meta, "meta of message {m}");
                assert_eq!(got.end_offset(), self.layout.end(m));
                true
            }
            (got, want) => panic!("pop gave {got:?}, the model expects message {want:?}"),
        }
    }

    fn apply(&mut self, op: &Op) {
        let n = self.layout.len();
        match *op {
            Op::Fragment {
                message,
                from,
                to,
                with_meta,
            } => {
                let m = message % n;
                let span = self.layout.span(m);
                // Whole-message edges are common: a quarter of the draws.
                let from = if from % 4 == 0 {
                    0
                } else {
                    u64::from(from) % span
                };
                let to = if to % 4 == 0 {
                    span
                } else {
                    from + 1 + u64::from(to) % (span - from)
                };
                self.fragment(m, from, to, with_meta);
            }
            Op::Pop => {
                self.pop();
            }
            Op::Reset { message } => {
                let r = message % (n + 1);
                let got = self.rx.reset_to(self.layout.start(r));
                assert_eq!(got, Ok(self.model.reset(r)), "reset to message {r}");
            }
            Op::Finish => {
                assert_eq!(self.rx.finish_at(self.layout.total), Ok(()));
                self.model.finished = true;
            }
        }
        self.check();
    }

    fn check(&self) {
        let (rx, model) = (&self.rx, &self.model);
        assert_eq!(rx.acknowledge_offset(), model.ack(), "acknowledge_offset");
        assert_eq!(rx.received_max_offset(), model.received_max, "received_max");
        assert_eq!(rx.read_offset(), model.read_offset(), "read_offset");
        assert_eq!(rx.buffered_bytes(), model.buffered(), "buffered_bytes");
        let bound = model.window.max(model.read_message_span());
        assert!(
            rx.buffered_bytes() as u64 <= bound,
            "{} bytes buffered, bound {bound}",
            rx.buffered_bytes()
        );
        assert_eq!(
            rx.received_ranges(usize::MAX).collect::<Vec<_>>(),
            model.received_ranges(),
            "received_ranges"
        );
        assert_eq!(rx.is_finished(), model.is_finished(), "is_finished");
        let stats = rx.stats();
        assert_eq!(
            stats.duplicate_units, model.duplicate_units,
            "duplicate_units"
        );
        assert_eq!(stats.skipped_messages, model.skipped_messages);
        assert_eq!(stats.skipped_units, model.skipped_units);
    }

    /// Sends every message not yet settled in order, cut by `mtu`, and pops what
    /// completes, until the stream is drained; then finishes it.
    fn drain(&mut self, mtu: u64) {
        let n = self.layout.len();
        for _round in 0..=n + 1 {
            for m in self.model.head..n {
                let span = self.layout.span(m);
                for from in (0..span).step_by(mtu as usize) {
                    self.fragment(m, from, (from + mtu).min(span), true);
                    self.check();
                }
            }
            while self.pop() {
                self.check();
            }
            if self.model.head == n && self.model.ready.is_empty() {
                break;
            }
        }
        self.apply(&Op::Finish);
        assert!(self.rx.is_finished(), "drained stream is finished");
        for (m, state) in self.model.state.iter().enumerate() {
            assert!(
                matches!(state, State::Delivered | State::Skipped),
                "message {m} left {state:?}"
            );
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (any::<usize>(), any::<u16>(), any::<u16>(), prop::bool::weighted(0.8))
            .prop_map(|(message, from, to, with_meta)| Op::Fragment { message, from, to, with_meta }),
        3 => Just(Op::Pop),
        1 => any::<usize>().prop_map(|message| Op::Reset { message }),
        1 => Just(Op::Finish),
    ]
}

fn window() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..16, 16u64..200, Just(u64::MAX)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn assembler_matches_reference_model(
        messages in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)), 1..12),
        window in window(),
        ops in prop::collection::vec(op(), 0..80),
        mtu in 1u64..70,
    ) {
        let layout = Layout::new(messages);
        let mut harness = Harness::new(&layout, window);
        harness.check();
        for op in &ops {
            harness.apply(op);
        }
        harness.drain(mtu);
    }

    /// Whatever a peer sends (fragments across message boundaries, resets anywhere,
    /// finishes anywhere), the assembler neither panics nor breaks its bookkeeping.
    #[test]
    fn arbitrary_input_never_breaks_invariants(
        window in window(),
        ops in prop::collection::vec(
            (0u8..8, 0u64..300, prop::collection::vec(any::<u8>(), 0..40), any::<bool>()),
            0..100,
        ),
    ) {
        let mut rx = Assembler::<u8>::new(window);
        let mut popped = 0;
        for (kind, offset, data, is_final) in ops {
            match kind {
                0 => { let _ = rx.reset_to(offset); }
                1 => { let _ = rx.finish_at(offset); }
                2 | 3 => {
                    if let Some(message) = rx.pop_message() {
                        prop_assert!(message.offset >= popped);
                        popped = message.end_offset();
                    }
                }
                _ => { let _ = rx.insert(offset, Bytes::from(data), is_final, Some(kind)); }
            }
            prop_assert!(rx.read_offset() <= rx.acknowledge_offset());
            prop_assert!(rx.acknowledge_offset() <= rx.received_max_offset());
            let held: u64 = rx.received_ranges(usize::MAX).map(|(s, e)| e - s).sum();
            prop_assert!(held <= rx.received_max_offset() - rx.acknowledge_offset());
        }
        while let Some(message) = rx.pop_message() {
            prop_assert!(message.offset >= popped);
            popped = message.end_offset();
        }
    }
}

#[test]
fn fragment_beyond_window_is_accepted_after_the_read_point_advances() {
    let mut rx = Assembler::<u32>::new(8);
    assert_eq!(
        rx.insert(0, Bytes::from_static(b"abcde"), true, Some(1)),
        InsertOutcome::Accepted { new_units: 6 }
    );
    let second = Bytes::from_static(b"fghi"); // offsets 6..11
    assert_eq!(
        rx.insert(6, second.clone(), true, Some(2)),
        InsertOutcome::Accepted { new_units: 2 }
    );
    assert_eq!(rx.received_max_offset(), 8);
    assert_eq!(
        rx.insert(8, second.slice(2..), true, None),
        InsertOutcome::BeyondWindow
    );
    assert_eq!(rx.pop_message().map(|m| m.meta), Some(Some(1)));
    assert_eq!(
        rx.insert(8, second.slice(2..), true, None),
        InsertOutcome::Accepted { new_units: 3 }
    );
    let message = rx.pop_message().expect("second message");
    assert_eq!((message.offset, message.meta), (6, Some(2)));
    assert_eq!(message.payload, second);
}
