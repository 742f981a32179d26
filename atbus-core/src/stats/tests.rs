//! Window semantics, edge cases, and a property test against a model that keeps every
//! event.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

const SEC: u64 = 1_000_000;

fn at(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn secs(s: u64) -> Timestamp {
    at(s * SEC)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[test]
fn an_event_shows_from_the_next_second_boundary_on() {
    let mut stats = StatsRecorder::new(secs(10));
    stats.record_sent(at(11 * SEC - 1), 100, 1);
    assert_eq!(stats.window(at(11 * SEC - 1), Window::S1).packets_sent, 0);
    assert_eq!(stats.totals().packets_sent, 1);
    assert_eq!(stats.window(secs(11), Window::S1).packets_sent, 1);
    assert_eq!(stats.window(at(12 * SEC - 1), Window::S1).packets_sent, 1);
    assert_eq!(stats.window(secs(12), Window::S1).packets_sent, 0);
    assert_eq!(stats.window(secs(12), Window::S5).packets_sent, 1);
}

#[test]
fn windows_roll_over_at_exact_second_boundaries() {
    let mut stats = StatsRecorder::new(secs(10));
    stats.record_sent(secs(10), 1, 0);
    stats.record_sent(at(11 * SEC - 1), 2, 0);
    assert_eq!(stats.window(at(11 * SEC - 1), Window::S1).bytes_sent, 0);
    stats.record_sent(secs(11), 4, 0);
    assert_eq!(stats.window(secs(11), Window::S1).bytes_sent, 3);
    stats.record_sent(secs(12), 8, 0);
    assert_eq!(stats.window(secs(12), Window::S1).bytes_sent, 4);
    assert_eq!(stats.window(secs(12), Window::S5).bytes_sent, 7);
    assert_eq!(stats.window(secs(13), Window::S1).bytes_sent, 8);
    assert_eq!(stats.window(secs(13), Window::S5).bytes_sent, 15);
    // Second 10 leaves the 5 s window when second 16 starts.
    assert_eq!(stats.window(at(16 * SEC - 1), Window::S5).bytes_sent, 15);
    assert_eq!(stats.window(secs(16), Window::S5).bytes_sent, 12);
}

#[test]
fn a_second_leaves_the_60_second_window_60_seconds_after_it_ends() {
    let mut stats = StatsRecorder::new(secs(10));
    stats.record_received(at(10 * SEC + 500_000), 1_000, 2);
    assert_eq!(stats.window(secs(70), Window::S60).packets_received, 1);
    assert_eq!(stats.window(secs(70), Window::S60).fragments_received, 2);
    assert_eq!(
        stats.window(at(71 * SEC - 1), Window::S60).packets_received,
        1
    );
    assert_eq!(stats.window(secs(71), Window::S60).packets_received, 0);
    assert_eq!(stats.window(secs(1_000), Window::S60).packets_received, 0);
}

#[test]
fn idle_gaps_around_the_ring_size_keep_only_what_the_window_holds() {
    for (gap, first_counted) in [
        (59, true),
        (60, false),
        (61, false),
        (122, false),
        (10_000, false),
    ] {
        let mut stats = StatsRecorder::new(secs(5));
        stats.record_sent(secs(5), 1, 0);
        // A gap of 61 s (and 122 s) lands on the same slot of the ring.
        stats.record_sent(secs(5 + gap), 10, 0);
        let window = stats.window(secs(5 + gap + 1), Window::S60);
        let expected = if first_counted { 11 } else { 10 };
        assert_eq!(window.bytes_sent, expected, "gap {gap}");
        assert_eq!(
            window.packets_sent,
            expected / 10 + expected % 10,
            "gap {gap}"
        );
        assert_eq!(stats.totals().bytes_sent, 11, "gap {gap}");
    }
}

#[test]
fn a_stale_slot_from_an_earlier_lap_reads_as_empty() {
    let mut stats = StatsRecorder::new(secs(0));
    // Seconds 0 and 1 sit in the slots that seconds 61 and 62 will use.
    stats.record_sent(secs(0), 1, 0);
    stats.record_sent(secs(1), 1, 0);
    for now in [secs(63), secs(100), secs(130), secs(1_000_000)] {
        for window in Window::ALL {
            assert_eq!(stats.window(now, window).packets_sent, 0);
        }
    }
}

#[test]
fn latency_samples_fill_the_histogram_by_the_bucket_rule() {
    let mut stats = StatsRecorder::new(secs(0));
    for sample in [
        Duration::ZERO,
        Duration::from_micros(14_999),
        ms(15),
        ms(2_000),
        ms(9_999),
    ] {
        stats.record_latency(secs(0), sample);
    }
    let histogram = stats.window(secs(1), Window::S1).histogram;
    assert_eq!(histogram.counts()[0], 2);
    assert_eq!(histogram.counts()[1], 1);
    assert_eq!(histogram.counts()[HISTOGRAM_BUCKETS - 1], 2);
    assert_eq!(histogram.total(), 5);
    assert_eq!(stats.totals().latency_samples, 5);
    // RTT samples do not feed the histogram.
    stats.record_rtt(secs(0), ms(20));
    assert_eq!(stats.window(secs(1), Window::S1).histogram.total(), 5);
}

#[test]
fn loss_rate_is_none_without_sends_and_capped_at_one() {
    let mut stats = StatsRecorder::new(secs(0));
    assert_eq!(stats.window(secs(1), Window::S1).loss_rate, None);
    stats.record_lost(secs(1), 3);
    let window = stats.window(secs(2), Window::S1);
    assert_eq!((window.lost_packets, window.loss_rate), (3, None));
    stats.record_sent(secs(1), 10, 1);
    assert_eq!(stats.window(secs(2), Window::S1).loss_rate, Some(1.0));
    for _ in 0..5 {
        stats.record_sent(secs(1), 10, 1);
    }
    assert_eq!(stats.window(secs(2), Window::S1).loss_rate, Some(0.5));
    assert_eq!(stats.window(secs(2), Window::S5).loss_rate, Some(0.5));
}

#[test]
fn average_rtt_is_none_without_samples_and_the_mean_otherwise() {
    let mut stats = StatsRecorder::new(secs(0));
    stats.record_sent(secs(0), 10, 1);
    assert_eq!(stats.window(secs(1), Window::S1).average_rtt, None);
    assert_eq!(stats.window(secs(1), Window::S1).rtt_samples, 0);
    stats.record_rtt(secs(1), ms(10));
    stats.record_rtt(secs(1), ms(15));
    stats.record_rtt(secs(2), ms(40));
    assert_eq!(
        stats.window(secs(2), Window::S1).average_rtt,
        Some(Duration::from_micros(12_500))
    );
    assert_eq!(
        stats.window(secs(3), Window::S5).average_rtt,
        Some(Duration::from_micros(21_666))
    );
    assert_eq!(stats.totals().rtt_samples, 3);
}

#[test]
fn rates_over_a_partial_first_second_divide_by_the_time_since_creation() {
    let mut stats = StatsRecorder::new(at(3_500_000));
    stats.record_sent(at(3_600_000), 1_000, 1);
    stats.record_received(at(3_700_000), 500, 1);
    // Before the first boundary nothing is covered: zero rates, no division by zero.
    let early = stats.window(at(3_900_000), Window::S1);
    assert_eq!(early.covered, Duration::ZERO);
    assert_eq!(early.bytes_sent_per_sec, 0.0);
    assert_eq!(early.per_second(early.packets_sent), 0.0);
    for window in Window::ALL {
        let w = stats.window(at(4_200_000), window);
        assert_eq!(w.covered, ms(500), "{}", window.label());
        assert_eq!(w.bytes_sent_per_sec, 2_000.0);
        assert_eq!(w.bytes_received_per_sec, 1_000.0);
        assert_eq!(w.per_second(w.packets_sent), 2.0);
    }
    let later = stats.snapshot(at(5_500_000));
    assert_eq!(later.window(Window::S1).covered, Duration::from_secs(1));
    assert_eq!(later.window(Window::S1).bytes_sent_per_sec, 0.0);
    assert_eq!(later.window(Window::S5).covered, ms(1_500));
    assert_eq!(later.window(Window::S5).bytes_sent_per_sec, 1_000.0 / 1.5);
}

#[test]
fn a_window_covers_at_most_its_length() {
    let stats = StatsRecorder::new(secs(0));
    for window in Window::ALL {
        assert_eq!(stats.window(secs(1_000), window).covered, window.duration());
        assert_eq!(
            stats.window(at(1_000 * SEC + 999_999), window).covered,
            window.duration()
        );
    }
    assert_eq!(
        stats.window(secs(3), Window::S5).covered,
        Duration::from_secs(3)
    );
}

#[test]
fn totals_count_everything_since_creation() {
    let mut stats = StatsRecorder::new(secs(0));
    for s in 0..200 {
        stats.record_sent(secs(s), 100, 2);
        stats.record_received(secs(s), 50, 1);
    }
    stats.record_lost(secs(150), 7);
    stats.record_rtt(secs(150), ms(1));
    stats.record_latency(secs(150), ms(1));
    let expected = Totals {
        packets_sent: 200,
        packets_received: 200,
        bytes_sent: 20_000,
        bytes_received: 10_000,
        fragments_sent: 400,
        fragments_received: 200,
        lost_packets: 7,
        rtt_samples: 1,
        latency_samples: 1,
    };
    assert_eq!(stats.totals(), expected);
    let snapshot = stats.snapshot(secs(200));
    assert_eq!(snapshot.totals, expected);
    assert_eq!(snapshot.at, secs(200));
    assert_eq!(snapshot.window(Window::S60).packets_sent, 60);
    assert_eq!(snapshot.window(Window::S60).bytes_sent_per_sec, 100.0);
}

#[test]
fn time_going_backwards_counts_in_the_newest_second() {
    let mut stats = StatsRecorder::new(secs(5));
    stats.record_sent(at(10_500_000), 1, 0);
    stats.record_sent(secs(8), 2, 0);
    stats.record_sent(secs(0), 4, 0); // before creation, too
    assert_eq!(stats.window(secs(11), Window::S1).bytes_sent, 7);
    // A read from the past reads as of the newest second.
    assert_eq!(
        stats.window(secs(9), Window::S1),
        stats.window(secs(10), Window::S1)
    );
    assert_eq!(stats.window(secs(0), Window::S15).bytes_sent, 0);
    assert_eq!(stats.totals().bytes_sent, 7);
}

#[test]
fn extreme_inputs_saturate_instead_of_panicking() {
    let mut stats = StatsRecorder::new(Timestamp::ZERO);
    stats.record_sent(Timestamp::NEVER, u64::MAX, u64::MAX);
    stats.record_sent(Timestamp::NEVER, u64::MAX, u64::MAX);
    stats.record_lost(Timestamp::NEVER, u64::MAX);
    stats.record_rtt(Timestamp::NEVER, Duration::MAX);
    stats.record_rtt(Timestamp::NEVER, Duration::MAX);
    stats.record_latency(Timestamp::NEVER, Duration::MAX);
    assert_eq!(stats.totals().bytes_sent, u64::MAX);
    assert_eq!(stats.totals().fragments_sent, u64::MAX);
    let snapshot = stats.snapshot(Timestamp::NEVER);
    assert_eq!(snapshot.totals.lost_packets, u64::MAX);
    // The newest second is still current at the end of time: no window holds it.
    assert_eq!(snapshot.window(Window::S60).packets_sent, 0);
}

#[test]
fn windows_have_labels_and_lengths_in_order() {
    let labels: Vec<_> = Window::ALL.iter().map(|w| w.label()).collect();
    assert_eq!(labels, ["1s", "5s", "15s", "60s"]);
    let seconds: Vec<_> = Window::ALL.iter().map(|w| w.seconds()).collect();
    assert_eq!(seconds, [1, 5, 15, 60]);
    let snapshot = StatsRecorder::new(secs(0)).snapshot(secs(100));
    for (i, window) in Window::ALL.into_iter().enumerate() {
        assert_eq!(snapshot.windows[i].window, window);
        assert_eq!(snapshot.window(window).window, window);
    }
}

#[test]
fn merge_adds_seconds_and_totals() {
    let mut a = StatsRecorder::new(secs(10));
    let mut b = StatsRecorder::new(secs(5));
    a.record_sent(secs(10), 1, 1);
    a.record_sent(secs(80), 2, 1); // second 10's slot is reused by second 71
    b.record_sent(secs(10), 4, 1);
    b.record_sent(secs(71), 8, 1);
    b.record_rtt(secs(79), ms(30));
    a.merge(&b);
    assert_eq!(a.created(), secs(5));
    assert_eq!(a.totals().bytes_sent, 15);
    assert_eq!(a.window(secs(81), Window::S1).bytes_sent, 2);
    assert_eq!(a.window(secs(81), Window::S15).bytes_sent, 10);
    assert_eq!(a.window(secs(81), Window::S60).average_rtt, Some(ms(30)));
    // Second 10 is beyond the 60 s window of second 81.
    assert_eq!(a.window(secs(81), Window::S60).bytes_sent, 10);
}

// ---------------------------------------------------------------------------
// Property tests against a model that keeps every event.

#[derive(Debug, Clone)]
enum Event {
    Sent { bytes: u64, fragments: u64 },
    Received { bytes: u64, fragments: u64 },
    Lost(u64),
    Rtt(Duration),
    Latency(Duration),
}

#[derive(Debug, Clone)]
enum Op {
    Record(Event),
    Read,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..100_000u64, 0..8u64).prop_map(|(bytes, fragments)| Event::Sent { bytes, fragments }),
        (0..100_000u64, 0..8u64)
            .prop_map(|(bytes, fragments)| Event::Received { bytes, fragments }),
        (0..4u64).prop_map(Event::Lost),
        (0..3_000_000u64).prop_map(|us| Event::Rtt(Duration::from_micros(us))),
        (0..3_000_000u64).prop_map(|us| Event::Latency(Duration::from_micros(us))),
    ]
}

/// Steps between operations: mostly within a second or two, sometimes idle for up to
/// three laps of the ring, sometimes backwards.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0..2_000_000i64,
        1 => 0..200_000_000i64,
        1 => -3_000_000..0i64,
    ]
}

fn ops() -> impl Strategy<Value = (u64, Vec<(i64, Op)>)> {
    let op = prop_oneof![4 => event().prop_map(Op::Record), 1 => Just(Op::Read)];
    (0..5_000_000u64, prop::collection::vec((step(), op), 0..300))
}

fn apply(stats: &mut StatsRecorder, now: Timestamp, event: &Event) {
    match *event {
        Event::Sent { bytes, fragments } => stats.record_sent(now, bytes, fragments),
        Event::Received { bytes, fragments } => stats.record_received(now, bytes, fragments),
        Event::Lost(packets) => stats.record_lost(now, packets),
        Event::Rtt(rtt) => stats.record_rtt(now, rtt),
        Event::Latency(latency) => stats.record_latency(now, latency),
    }
}

/// Every event with the second it counts in (its own, or the newest second before it
/// when time went backwards).
struct Model {
    created: u64,
    newest_second: u64,
    events: Vec<(u64, Event)>,
}

impl Model {
    fn new(created: u64) -> Self {
        Model {
            created,
            newest_second: created / SEC,
            events: Vec::new(),
        }
    }

    fn record(&mut self, now: u64, event: Event) {
        self.newest_second = self.newest_second.max(now / SEC);
        self.events.push((self.newest_second, event));
    }

    fn window(&self, now: u64, window: Window) -> WindowStats {
        let end = (now / SEC).max(self.newest_second);
        let start = end.saturating_sub(window.seconds());
        let covered =
            Duration::from_micros(end * SEC - (start * SEC).max(self.created).min(end * SEC));
        let mut w = WindowStats {
            window,
            covered,
            bytes_sent: 0,
            bytes_received: 0,
            bytes_sent_per_sec: 0.0,
            bytes_received_per_sec: 0.0,
            packets_sent: 0,
            packets_received: 0,
            fragments_sent: 0,
            fragments_received: 0,
            lost_packets: 0,
            loss_rate: None,
            rtt_samples: 0,
            average_rtt: None,
            histogram: LatencyHistogram::new(),
        };
        let mut rtt_sum = Duration::ZERO;
        for (second, event) in &self.events {
            if !(start..end).contains(second) {
                continue;
            }
            match *event {
                Event::Sent { bytes, fragments } => {
                    w.packets_sent += 1;
                    w.bytes_sent += bytes;
                    w.fragments_sent += fragments;
                }
                Event::Received { bytes, fragments } => {
                    w.packets_received += 1;
                    w.bytes_received += bytes;
                    w.fragments_received += fragments;
                }
                Event::Lost(packets) => w.lost_packets += packets,
                Event::Rtt(rtt) => {
                    w.rtt_samples += 1;
                    rtt_sum += rtt;
                }
                Event::Latency(latency) => w.histogram.record(latency),
            }
        }
        if !covered.is_zero() {
            w.bytes_sent_per_sec = w.bytes_sent as f64 / covered.as_secs_f64();
            w.bytes_received_per_sec = w.bytes_received as f64 / covered.as_secs_f64();
        }
        if w.packets_sent > 0 {
            w.loss_rate = Some((w.lost_packets as f64 / w.packets_sent as f64).min(1.0));
        }
        if w.rtt_samples > 0 {
            let mean = rtt_sum.as_micros() / u128::from(w.rtt_samples);
            w.average_rtt = Some(Duration::from_micros(mean as u64));
        }
        w
    }
}

fn advance(now: u64, step: i64) -> u64 {
    now.saturating_add_signed(step)
}

proptest! {
    #[test]
    fn windows_match_a_model_that_keeps_every_event((start, ops) in ops()) {
        let mut stats = StatsRecorder::new(at(start));
        let mut model = Model::new(start);
        let mut now = start;
        let mut totals = Totals::default();
        for (step, op) in ops {
            now = advance(now, step);
            match op {
                Op::Record(event) => {
                    apply(&mut stats, at(now), &event);
                    let mut one = StatsRecorder::new(Timestamp::ZERO);
                    apply(&mut one, Timestamp::ZERO, &event);
                    totals.merge(&one.totals());
                    model.record(now, event);
                }
                Op::Read => {
                    for window in Window::ALL {
                        prop_assert_eq!(stats.window(at(now), window), model.window(now, window));
                    }
                }
            }
        }
        prop_assert_eq!(stats.totals(), totals);
        let snapshot = stats.snapshot(at(now));
        for window in Window::ALL {
            prop_assert_eq!(snapshot.window(window), &model.window(now, window));
        }
    }

    #[test]
    fn merging_two_recorders_matches_one_fed_both(
        start in 0..5_000_000u64,
        events in prop::collection::vec((0..90_000_000u64, any::<bool>(), event()), 0..200),
        read_after in 0..70_000_000u64,
    ) {
        let mut events = events;
        events.sort_by_key(|(time, _, _)| *time);
        let (mut a, mut b, mut both) =
            (StatsRecorder::new(at(start)), StatsRecorder::new(at(start)), StatsRecorder::new(at(start)));
        let mut last = start;
        for (offset, to_a, event) in &events {
            last = start + offset;
            apply(if *to_a { &mut a } else { &mut b }, at(last), event);
            apply(&mut both, at(last), event);
        }
        a.merge(&b);
        prop_assert_eq!(a.totals(), both.totals());
        let now = at(last + read_after);
        prop_assert_eq!(a.snapshot(now), both.snapshot(now));
    }
}

#[test]
fn the_cumulative_histogram_keeps_samples_past_every_window() {
    let mut stats = StatsRecorder::new(secs(0));
    stats.record_latency(secs(0), ms(15));
    stats.record_latency(secs(0), Duration::from_micros(1_999_999));
    stats.record_latency(secs(30), ms(2_000));
    let later = stats.snapshot(secs(200));
    // Every window has let the samples go; the cumulative histogram has not.
    assert!(later.windows.iter().all(|w| w.histogram.total() == 0));
    let counts = later.histogram_total.counts();
    assert_eq!(counts[1], 1, "15 ms is in the [15 ms, 30 ms) bucket");
    assert_eq!(
        LatencyHistogram::bucket_bounds(1),
        Some((ms(15), Some(ms(30))))
    );
    assert_eq!(counts[HISTOGRAM_BUCKETS - 2], 1, "just under 2000 ms");
    assert_eq!(
        counts[HISTOGRAM_BUCKETS - 1],
        1,
        "2000 ms: the upper bucket"
    );
    assert_eq!(later.histogram_total.total(), later.totals.latency_samples);
    // Merging adds the cumulative histograms too.
    let mut other = StatsRecorder::new(secs(0));
    other.record_latency(secs(1), ms(15));
    stats.merge(&other);
    assert_eq!(stats.snapshot(secs(200)).histogram_total.counts()[1], 2);
}
