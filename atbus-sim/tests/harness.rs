//! The simulation harness driven with small transports written here: exact latency in
//! virtual time, classification of what arrives, refused sends, echo, time limit,
//! stalls and determinism.

use std::collections::VecDeque;
use std::time::Duration;

use atbus_sim::{
    LinkFaults, PathStats, Received, Report, Scenario, SizeRange, Transport, TransportStats,
    WouldBlock, run,
};
use bytes::{BufMut, Bytes, BytesMut};

const MS: Duration = Duration::from_millis(1);
const HEADER_LEN: usize = 12;
const MTU: usize = 1200;

/// FNV-1a, 32 bits: any change of a single byte changes the result.
fn checksum(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(0x811c_9dc5, |hash, &byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
}

/// No reliability at all: each message is one datagram, `stream | length | checksum`
/// (little-endian `u32`s, the checksum over the first 8 bytes and the payload), sent
/// on path `stream % paths`.
#[derive(Debug, Clone)]
struct Datagram {
    paths: usize,
    verify_checksum: bool,
    outbox: VecDeque<(usize, Bytes)>,
    inbox: VecDeque<Received>,
    sent_packets: Vec<u64>,
}

impl Datagram {
    fn new(paths: usize) -> Self {
        Self {
            paths,
            verify_checksum: false,
            outbox: VecDeque::new(),
            inbox: VecDeque::new(),
            sent_packets: vec![0; paths],
        }
    }

    fn verifying(paths: usize) -> Self {
        Self {
            verify_checksum: true,
            ..Self::new(paths)
        }
    }
}

impl Transport for Datagram {
    fn send(&mut self, _now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        let mut datagram = BytesMut::with_capacity(HEADER_LEN + payload.len());
        datagram.put_u32_le(stream);
        datagram.put_u32_le(payload.len() as u32);
        let sum = checksum(&[&datagram[..8], &payload]);
        datagram.put_u32_le(sum);
        datagram.put_slice(&payload);
        let path = stream as usize % self.paths;
        self.outbox.push_back((path, datagram.freeze()));
        Ok(())
    }

    fn handle_datagram(&mut self, _now: Duration, _path: usize, datagram: Bytes) {
        if datagram.len() < HEADER_LEN {
            return;
        }
        let field = |at: usize| u32::from_le_bytes(datagram[at..at + 4].try_into().unwrap());
        let payload = datagram.slice(HEADER_LEN..);
        let intact =
            field(4) as usize == payload.len() && field(8) == checksum(&[&datagram[..8], &payload]);
        if self.verify_checksum && !intact {
            return;
        }
        self.inbox.push_back(Received {
            stream: field(0),
            payload,
        });
    }

    fn handle_timeout(&mut self, _now: Duration) {}

    fn poll_transmit(&mut self, _now: Duration) -> Option<(usize, Bytes)> {
        let (path, datagram) = self.outbox.pop_front()?;
        self.sent_packets[path] += 1;
        Some((path, datagram))
    }

    fn poll_received(&mut self) -> Option<Received> {
        self.inbox.pop_front()
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        None
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            paths: self
                .sent_packets
                .iter()
                .map(|&sent_packets| PathStats {
                    mtu: MTU,
                    sent_packets,
                    ..PathStats::default()
                })
                .collect(),
            skipped: 0,
        }
    }
}

/// A [`Datagram`] that refuses every second `send` call (the 2nd, 4th, ...) and then
/// asks to be woken 1 ms later, when it takes messages again.
#[derive(Debug, Clone)]
struct Refusing {
    inner: Datagram,
    send_calls: u64,
    wake_at: Option<Duration>,
}

impl Transport for Refusing {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.send_calls += 1;
        if self.send_calls % 2 == 0 {
            self.wake_at = Some(now + MS);
            return Err(WouldBlock);
        }
        self.inner.send(now, stream, payload)
    }
    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.inner.handle_datagram(now, path, datagram);
    }
    fn handle_timeout(&mut self, _now: Duration) {
        self.wake_at = None;
    }
    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.inner.poll_transmit(now)
    }
    fn poll_received(&mut self) -> Option<Received> {
        self.inner.poll_received()
    }
    fn next_timeout(&mut self) -> Option<Duration> {
        self.wake_at
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

/// A [`Datagram`] whose timeout stays at time zero until it has been fired
/// `stale_fires` times.
#[derive(Debug, Clone)]
struct Stalling {
    inner: Datagram,
    stale_fires: u64,
}

impl Transport for Stalling {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.inner.send(now, stream, payload)
    }
    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.inner.handle_datagram(now, path, datagram);
    }
    fn handle_timeout(&mut self, _now: Duration) {
        self.stale_fires = self.stale_fires.saturating_sub(1);
    }
    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.inner.poll_transmit(now)
    }
    fn poll_received(&mut self) -> Option<Received> {
        self.inner.poll_received()
    }
    fn next_timeout(&mut self) -> Option<Duration> {
        (self.stale_fires > 0).then_some(Duration::ZERO)
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

fn on_path(spec: &str) -> Scenario {
    Scenario {
        paths: vec![spec.parse().expect("valid spec")],
        ..Scenario::default()
    }
}

fn run_datagram(scenario: &Scenario) -> Report {
    let paths = scenario.paths.len();
    run(scenario, Datagram::new(paths), Datagram::new(paths))
}

fn assert_every_latency_is(report: &Report, ms: f64) {
    let l = &report.latency_ms;
    assert_eq!(
        [l.avg, l.p50, l.p90, l.p99, l.p999, l.max],
        [ms; 6],
        "{report}"
    );
}

#[test]
fn fault_free_path_delivers_every_message_in_order_after_exactly_the_delay() {
    let report = run_datagram(&Scenario::default());
    assert_eq!(report.sent, 100);
    assert_eq!(report.delivered, 100);
    assert_eq!(
        (
            report.duplicates,
            report.out_of_order,
            report.corrupted,
            report.skipped
        ),
        (0, 0, 0, 0)
    );
    assert_every_latency_is(&report, 25.0);
    assert_eq!(report.payload_bytes, 100 * 1000);
    assert_eq!(report.wire_bytes, 100 * (1000 + HEADER_LEN as u64));
    // The last message is offered at 990 ms and arrives 25 ms later.
    assert_eq!(report.sim_duration_ms, 1015.0);
    assert_eq!(report.paths.len(), 1);
    assert_eq!(report.paths[0].mtu, MTU);
    assert_eq!(report.paths[0].sent_packets, 100);
    assert_eq!(report.paths[0].link, LinkFaults::default());
    assert_eq!((report.stalls, report.timed_out), (0, false));
}

#[test]
fn lost_messages_are_missing_but_do_not_make_the_next_ones_out_of_order() {
    let report = run_datagram(&on_path("loss=50%"));
    let dropped = report.paths[0].link.dropped;
    assert!(dropped > 20 && dropped < 80, "{report}");
    assert_eq!(report.sent, 100);
    assert_eq!(report.delivered, 100 - dropped);
    assert_eq!(
        (report.duplicates, report.out_of_order, report.corrupted),
        (0, 0, 0)
    );
    assert_every_latency_is(&report, 25.0);
    assert!(!report.timed_out);
}

#[test]
fn every_duplicated_datagram_is_one_duplicate() {
    let report = run_datagram(&on_path("dup=100%"));
    assert_eq!(report.paths[0].link.duplicated, 100);
    assert_eq!(report.delivered, 100);
    assert_eq!(report.duplicates, 100);
    assert_eq!((report.out_of_order, report.corrupted), (0, 0));
    assert_eq!(report.payload_bytes, 100 * 1000);
    assert_every_latency_is(&report, 25.0);
}

#[test]
fn held_back_messages_are_out_of_order_and_still_delivered() {
    let report = run_datagram(&on_path("reorder=30%"));
    let reordered = report.paths[0].link.reordered;
    assert!(reordered > 10, "{report}");
    // A held-back message is out of order only if a later one overtook it.
    assert!(
        report.out_of_order > 0 && report.out_of_order <= reordered,
        "{report}"
    );
    assert_eq!(report.delivered, 100);
    assert_eq!((report.duplicates, report.corrupted), (0, 0));
    assert!(report.latency_ms.max > 35.0, "{report}");
    assert_eq!(report.latency_ms.p50, 25.0);
}

#[test]
fn flipped_bits_are_found_by_the_recorder_when_the_transport_lets_them_through() {
    let scenario = on_path("corrupt=30%");
    let report = run_datagram(&scenario);
    let flipped = report.paths[0].link.corrupted;
    assert!(flipped > 10, "{report}");
    // Flips in the length or checksum fields leave the message intact.
    assert!(
        report.corrupted > 0 && report.corrupted <= flipped,
        "{report}"
    );
    assert_eq!(report.delivered + report.corrupted, 100);
    assert_eq!((report.duplicates, report.out_of_order), (0, 0));

    let checked = run(&scenario, Datagram::verifying(1), Datagram::verifying(1));
    assert_eq!(checked.paths[0].link.corrupted, flipped);
    assert_eq!(checked.corrupted, 0);
    assert_eq!(checked.delivered, 100 - flipped);
}

#[test]
fn refused_messages_keep_their_stream_order_and_latency_counts_from_the_first_offer() {
    let scenario = Scenario {
        messages: 6,
        streams: 2,
        interval: Duration::ZERO,
        ..Scenario::default()
    };
    let refusing = || Refusing {
        inner: Datagram::new(1),
        send_calls: 0,
        wake_at: None,
    };
    let report = run(&scenario, refusing(), refusing());
    // At 0 ms: m0 taken, m1 refused (stream 1 waits), m2 taken, m4 refused (stream 0
    // waits). 1 ms: m4 taken, m1 refused. 2 ms: m1 taken, m3 refused. 3 ms: m3
    // taken, m5 refused. 4 ms: m5 taken. Latencies 25, 25, 26, 27, 28, 29 ms.
    assert_eq!(report.sent, 6);
    assert_eq!(report.delivered, 6);
    assert_eq!(report.out_of_order, 0);
    let l = &report.latency_ms;
    assert_eq!([l.p50, l.p90, l.max], [26.0, 29.0, 29.0]);
    assert_eq!(l.avg, 160.0 / 6.0);
    assert_eq!(report.sim_duration_ms, 29.0);
}

#[test]
fn echo_latency_is_the_round_trip() {
    let scenario = Scenario {
        echo: true,
        ..Scenario::default()
    };
    let report = run_datagram(&scenario);
    assert_eq!(report.delivered, 100);
    assert_every_latency_is(&report, 50.0);
    assert_eq!(report.wire_bytes, 2 * 100 * (1000 + HEADER_LEN as u64));
    assert_eq!(report.sim_duration_ms, 990.0 + 50.0);
    assert_eq!(
        (report.duplicates, report.out_of_order, report.corrupted),
        (0, 0, 0)
    );
}

#[test]
fn echo_counts_duplicates_seen_in_both_directions() {
    let scenario = Scenario {
        echo: true,
        ..on_path("dup=100%")
    };
    let report = run_datagram(&scenario);
    // The server gets 200 copies (100 duplicates) and echoes them all; each echo is
    // duplicated too, so the client gets 400 (300 duplicates).
    assert_eq!(report.delivered, 100);
    assert_eq!(report.duplicates, 100 + 300);
    assert_every_latency_is(&report, 50.0);
}

#[test]
fn the_time_limit_ends_the_run_with_what_was_delivered() {
    let scenario = Scenario {
        time_limit: 500 * MS,
        ..Scenario::default()
    };
    let report = run_datagram(&scenario);
    assert!(report.timed_out);
    // Offered at 0, 10, ..., 500 ms; delivered by 500 ms: those offered by 475 ms.
    assert_eq!(report.sent, 51);
    assert_eq!(report.delivered, 48);
    assert_eq!(report.sim_duration_ms, 495.0);
    assert_every_latency_is(&report, 25.0);
}

#[test]
fn every_message_on_its_own_path() {
    let scenario = Scenario {
        paths: vec![
            "delay=25ms".parse().unwrap(),
            "delay=40ms,mtu=1400".parse().unwrap(),
        ],
        streams: 2,
        ..Scenario::default()
    };
    let report = run_datagram(&scenario);
    assert_eq!(report.delivered, 100);
    let l = &report.latency_ms;
    assert_eq!([l.avg, l.p50, l.p90, l.max], [32.5, 25.0, 40.0, 40.0]);
    assert_eq!(report.paths.len(), 2);
    assert_eq!(report.paths[0].sent_packets, 50);
    assert_eq!(report.paths[1].sent_packets, 50);
    assert_eq!(report.sim_duration_ms, 990.0 + 40.0);
}

#[test]
fn short_payloads_are_matched_by_content() {
    let scenario = Scenario {
        size: SizeRange { min: 0, max: 7 },
        ..on_path("dup=100%")
    };
    let report = run_datagram(&scenario);
    assert_eq!(report.delivered, 100);
    assert_eq!(report.duplicates, 100);
    assert_eq!((report.out_of_order, report.corrupted), (0, 0));

    let lossy = Scenario {
        size: SizeRange { min: 0, max: 7 },
        ..on_path("loss=30%")
    };
    let report = run_datagram(&lossy);
    assert_eq!(report.delivered, 100 - report.paths[0].link.dropped);
    assert_eq!(
        (report.duplicates, report.out_of_order, report.corrupted),
        (0, 0, 0)
    );
}

#[test]
fn a_timeout_left_in_the_past_stalls_once_then_the_run_goes_on() {
    let stalling = |stale_fires| Stalling {
        inner: Datagram::new(1),
        stale_fires,
    };
    // 10,000 fires at 0 ms, then 5,000 at 1 µs and the timeout is gone.
    let report = run(&Scenario::default(), stalling(15_000), stalling(0));
    assert_eq!(report.stalls, 1);
    assert_eq!(report.delivered, 100);
    assert_every_latency_is(&report, 25.0);
}

#[test]
fn a_transport_that_never_stops_stalling_ends_the_run() {
    let stalling = |stale_fires| Stalling {
        inner: Datagram::new(1),
        stale_fires,
    };
    let report = run(&Scenario::default(), stalling(u64::MAX), stalling(0));
    assert_eq!(report.stalls, 100);
    // Gave up at 99 µs, long before the first arrival.
    assert_eq!(report.sent, 1);
    assert_eq!(report.delivered, 0);
    assert!(!report.timed_out);
}

#[test]
fn the_same_scenario_gives_the_same_report() {
    let scenario = Scenario {
        paths: vec![
            "delay=20ms,jitter=8ms,loss=10%,burst=2,dup=5%,reorder=10%,corrupt=5%"
                .parse()
                .unwrap(),
            "delay=35ms,loss=3%,bw=2mbit,queue=8kb".parse().unwrap(),
        ],
        messages: 500,
        size: SizeRange { min: 0, max: 1100 },
        interval: 2 * MS,
        streams: 3,
        echo: true,
        seed: 42,
        ..Scenario::default()
    };
    let first = run_datagram(&scenario);
    let second = run_datagram(&scenario);
    assert_eq!(first, second);
    assert_eq!(first.to_json(), second.to_json());
    assert_eq!(first.to_string(), second.to_string());
    assert!(first.delivered > 0 && first.delivered < 500, "{first}");

    let other_seed = run_datagram(&Scenario {
        seed: 43,
        ..scenario
    });
    assert_ne!(first, other_seed);
}

#[test]
fn the_report_prints_for_people_and_for_tools() {
    let report = run_datagram(&Scenario {
        messages: 2,
        ..Scenario::default()
    });
    let text = report.to_string();
    assert!(text.starts_with("messages  2 sent, 2 delivered"), "{text}");
    assert!(text.contains("p50 25.000"), "{text}");
    assert!(text.contains("\npath 0 "), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["latency_ms"]["p999"], 25.0);
    assert_eq!(json["paths"][0]["link"]["dropped"], 0);
    assert_eq!(json["timed_out"], false);
}

#[test]
#[should_panic(expected = "cannot run the scenario: a scenario needs at least one path")]
fn a_scenario_without_a_path_is_refused() {
    let scenario = Scenario {
        paths: Vec::new(),
        ..Scenario::default()
    };
    run_datagram(&scenario);
}

#[test]
#[should_panic(expected = "the client transport sent on path 1, but the scenario has 1 path(s)")]
fn a_transport_sending_on_a_missing_path_is_a_bug() {
    let scenario = Scenario {
        streams: 2,
        ..Scenario::default()
    };
    run(&scenario, Datagram::new(2), Datagram::new(2));
}
