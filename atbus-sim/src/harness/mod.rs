//! The driver: [`run`] plays a [`Scenario`] between two [`Transport`]s over simulated
//! links, in virtual time, and measures what the applications receive.

mod endpoint;
mod recorder;

use std::time::Duration;

use rand::Rng;

use crate::link::Link;
use crate::report::{
    FlowReport, LatencySummary, LinkFaults, PathReport, Report, StatsReport, millis,
};
use crate::transport::{Transport, TransportStats};
use crate::workload::{Scenario, ScenarioError, SeedPurpose, Workload, derived_rng};
use endpoint::Endpoint;
use recorder::Recorder;

/// Rounds of input and output at one instant after which the driver gives up on it
/// (a transport keeps asking for a timeout that has already passed).
const MAX_ROUNDS_PER_INSTANT: u32 = 10_000;
/// How far time moves on after such a stall.
const STALL_STEP: Duration = Duration::from_micros(1);
/// Stalls after which the run ends: a transport that stalls that often would make
/// the run take forever, one microsecond at a time.
const MAX_STALLS: u64 = 100;

/// Index of the client (the workload's sender) in per-side arrays.
const CLIENT: usize = 0;
/// Index of the server (the workload's receiver, and echoer) in per-side arrays.
const SERVER: usize = 1;
const SIDE_NAMES: [&str; 2] = ["client", "server"];

/// Runs `scenario` with `client` sending the workload to `server`, and reports.
///
/// Each path of the scenario is two [`Link`]s, client→server and server→client,
/// each seeded from [`Scenario::seed`]. The run is deterministic: the same scenario
/// and transports give the same report.
///
/// # The event loop
///
/// Virtual time jumps from one event to the next: the next workload message due,
/// the next datagram arriving on any link, either transport's
/// [`next_timeout`](Transport::next_timeout). At each instant the driver repeats, until
/// nothing more is due:
/// 1. hands every datagram due on every link to the receiving side
///    ([`handle_datagram`](Transport::handle_datagram), the whole batch before any
///    output is read);
/// 2. calls [`handle_timeout`](Transport::handle_timeout) on each side whose timeout
///    is at or before now;
/// 3. offers again the messages a side refused with
///    [`WouldBlock`](crate::transport::WouldBlock), if that side got a datagram or a
///    timeout, or (client) a new message is due; then offers the new messages. A
///    stream never offers a message while an older one of it is refused;
/// 4. drains both sides until neither has output: each
///    [`poll_transmit`](Transport::poll_transmit) goes to the link of that side's
///    direction on the path it names, each
///    [`poll_received`](Transport::poll_received) to the side's recorder (and, with
///    [`Scenario::echo`], the server sends it back on the same stream).
///
/// A transport whose timeout stays at or before now after 10,000 such rounds has
/// stalled: time moves on by 1 µs and [`Report::stalls`] counts it; the run ends
/// after 100 stalls.
///
/// The run ends when every message is delivered (with echo: echoed back) and no
/// datagram is left on any link, when no event is left (the rest is lost for good),
/// after the last event at or before [`Scenario::time_limit`], or after too many
/// stalls.
///
/// # What is counted
///
/// The receiving application (the server's; with echo the client's, counting
/// echoes) checks every message against the workload: a message's latency runs from
/// the instant the workload first offered it (refused or not) to its delivery.
/// Reordering is judged per stream as in RFC 4737 §3.3: a message is out of order
/// when a later message of its stream was delivered before it; messages skipped or
/// lost never make the ones after them out of order. Payloads too short to carry
/// their index (under 8 bytes) are matched by content, so two equal short payloads of
/// one stream may be told apart wrongly (the counts stay right). With echo, what the
/// server receives is checked too, and its duplicates, reorderings and corruptions
/// are added to the client's.
///
/// # Panics
///
/// If the scenario is invalid ([`Scenario::validate`]), or if a transport sends on a
/// path the scenario does not have.
///
/// # Example
///
/// A transport that puts each message in one datagram, stream number first:
///
/// ```
/// use std::collections::VecDeque;
/// use std::time::Duration;
/// use atbus_sim::{Received, Scenario, Transport, TransportStats, WouldBlock, run};
/// use bytes::Bytes;
///
/// #[derive(Default)]
/// struct OneDatagramPerMessage {
///     outbox: VecDeque<Bytes>,
///     inbox: VecDeque<Received>,
/// }
///
/// impl Transport for OneDatagramPerMessage {
///     fn send(&mut self, _: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
///         self.outbox.push_back([&stream.to_le_bytes()[..], &payload].concat().into());
///         Ok(())
///     }
///     fn handle_datagram(&mut self, _: Duration, _path: usize, datagram: Bytes) {
///         let stream = u32::from_le_bytes(datagram[..4].try_into().unwrap());
///         self.inbox.push_back(Received { stream, payload: datagram.slice(4..) });
///     }
///     fn handle_timeout(&mut self, _: Duration) {}
///     fn poll_transmit(&mut self, _: Duration) -> Option<(usize, Bytes)> {
///         self.outbox.pop_front().map(|datagram| (0, datagram))
///     }
///     fn poll_received(&mut self) -> Option<Received> {
///         self.inbox.pop_front()
///     }
///     fn next_timeout(&mut self) -> Option<Duration> {
///         None
///     }
///     fn stats(&self) -> TransportStats {
///         TransportStats::default()
///     }
/// }
///
/// let scenario = Scenario { messages: 10, ..Scenario::default() };
/// let report = run(&scenario, OneDatagramPerMessage::default(), OneDatagramPerMessage::default());
/// assert_eq!(report.delivered, 10);
/// assert_eq!(report.latency_ms.max, 25.0); // the default path's one-way delay
/// assert_eq!(report.wire_bytes, 10 * 1004);
/// ```
pub fn run<T: Transport>(scenario: &Scenario, client: T, server: T) -> Report {
    match Simulation::new(scenario, client, server) {
        Ok(simulation) => simulation.run(),
        Err(error) => panic!("cannot run the scenario: {error}"),
    }
}

/// The state of one run.
struct Simulation<T> {
    workload: Workload,
    echo: bool,
    time_limit: Duration,
    /// `links[path][side]`: the link from `side` to the other side on `path`.
    links: Vec<[Link; 2]>,
    sides: [Endpoint<T>; 2],
    recorders: [Recorder; 2],
    /// The next workload message to offer; all before it are offered.
    next_message: u64,
    stalls: u64,
    /// The latest instant handled.
    now: Duration,
}

impl<T: Transport> Simulation<T> {
    fn new(scenario: &Scenario, client: T, server: T) -> Result<Self, ScenarioError> {
        scenario.validate()?;
        let mut links = Vec::with_capacity(scenario.paths.len());
        for (path, config) in scenario.paths.iter().enumerate() {
            let link = |side: usize| {
                let index = 2 * path as u64 + side as u64;
                let seed = derived_rng(scenario.seed, SeedPurpose::Link, index).next_u64();
                Link::new(config.clone(), seed)
                    .map_err(|source| ScenarioError::InvalidPath { path, source })
            };
            links.push([link(CLIENT)?, link(SERVER)?]);
        }
        let workload = Workload::new(scenario);
        Ok(Self {
            recorders: [
                Recorder::new(workload.clone()),
                Recorder::new(workload.clone()),
            ],
            workload,
            echo: scenario.echo,
            time_limit: scenario.time_limit,
            links,
            sides: [Endpoint::new(client), Endpoint::new(server)],
            next_message: 0,
            stalls: 0,
            now: Duration::ZERO,
        })
    }

    fn run(mut self) -> Report {
        let mut earliest = Duration::ZERO;
        let mut timed_out = false;
        while let Some(next) = self.next_event() {
            let now = next.max(earliest);
            if now > self.time_limit {
                timed_out = !self.all_delivered();
                break;
            }
            self.now = now;
            if self.run_instant(now) {
                self.stalls += 1;
                if self.stalls >= MAX_STALLS {
                    break;
                }
                earliest = now.saturating_add(STALL_STEP);
            } else {
                earliest = now;
            }
            if self.all_delivered() && self.links.iter().flatten().all(|l| l.in_flight() == 0) {
                break;
            }
        }
        self.report(timed_out)
    }

    /// The earliest instant at which something happens, if anything ever does.
    fn next_event(&mut self) -> Option<Duration> {
        let message = (self.next_message < self.workload.messages())
            .then(|| self.workload.due(self.next_message));
        let arrivals = self.links.iter().flatten().filter_map(Link::next_delivery);
        let timeouts = self
            .sides
            .iter_mut()
            .filter_map(|side| side.transport.next_timeout());
        message.into_iter().chain(arrivals).chain(timeouts).min()
    }

    /// Runs rounds at `now` until nothing is due; true if it gave up (a stall).
    fn run_instant(&mut self, now: Duration) -> bool {
        for _ in 0..MAX_ROUNDS_PER_INSTANT {
            let mut active = [false; 2];
            self.deliver_arrivals(now, &mut active);
            self.fire_timeouts(now, &mut active);
            let message_due = self.next_message < self.workload.messages()
                && self.workload.due(self.next_message) <= now;
            active[CLIENT] |= message_due;
            if active == [false; 2] {
                return false;
            }
            for (endpoint, _) in self.sides.iter_mut().zip(active).filter(|(_, a)| *a) {
                endpoint.retry(now);
            }
            self.offer_due_messages(now);
            self.drain(now);
        }
        self.next_event().is_some_and(|next| next <= now)
    }

    fn deliver_arrivals(&mut self, now: Duration, active: &mut [bool; 2]) {
        for (path, pair) in self.links.iter_mut().enumerate() {
            for (from, link) in pair.iter_mut().enumerate() {
                let to = 1 - from;
                while let Some(datagram) = link.poll_delivery(now) {
                    self.sides[to]
                        .transport
                        .handle_datagram(now, path, datagram);
                    active[to] = true;
                }
            }
        }
    }

    fn fire_timeouts(&mut self, now: Duration, active: &mut [bool; 2]) {
        for (side, endpoint) in self.sides.iter_mut().enumerate() {
            if endpoint
                .transport
                .next_timeout()
                .is_some_and(|at| at <= now)
            {
                endpoint.transport.handle_timeout(now);
                active[side] = true;
            }
        }
    }

    fn offer_due_messages(&mut self, now: Duration) {
        while self.next_message < self.workload.messages()
            && self.workload.due(self.next_message) <= now
        {
            let index = self.next_message;
            let payload = self.workload.payload(index);
            for recorder in &mut self.recorders {
                recorder.offer(index, &payload);
            }
            self.sides[CLIENT].submit(now, self.workload.stream(index), payload);
            self.next_message += 1;
        }
    }

    /// Moves both sides' output to the links and recorders until neither has any.
    fn drain(&mut self, now: Duration) {
        loop {
            let mut progressed = false;
            for side in [CLIENT, SERVER] {
                while let Some((path, datagram)) = self.sides[side].transport.poll_transmit(now) {
                    let paths = self.links.len();
                    let Some(pair) = self.links.get_mut(path) else {
                        panic!(
                            "the {} transport sent on path {path}, but the scenario has {paths} path(s)",
                            SIDE_NAMES[side]
                        );
                    };
                    pair[side].send(now, datagram);
                    progressed = true;
                }
                while let Some(received) = self.sides[side].transport.poll_received() {
                    self.recorders[side].record(now, &received);
                    if self.echo && side == SERVER {
                        self.sides[SERVER].submit(now, received.stream, received.payload);
                    }
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// The recorder of the application whose deliveries the report counts.
    fn measured(&self) -> &Recorder {
        &self.recorders[if self.echo { CLIENT } else { SERVER }]
    }

    fn all_delivered(&self) -> bool {
        self.measured().delivered == self.workload.messages()
    }

    fn report(&self, timed_out: bool) -> Report {
        let client = self.sides[CLIENT].transport.stats();
        let server = self.sides[SERVER].transport.stats();
        let measured = self.measured();
        let sum = |count: fn(&Recorder) -> u64| self.recorders.iter().map(count).sum();
        let first_offer = self.workload.due(0);
        Report {
            sent: self.next_message,
            delivered: measured.delivered,
            duplicates: sum(|r| r.duplicates),
            out_of_order: sum(|r| r.out_of_order),
            corrupted: sum(|r| r.corrupted),
            skipped: server.skipped + if self.echo { client.skipped } else { 0 },
            latency_ms: LatencySummary::from_latencies(&measured.latencies),
            payload_bytes: measured.payload_bytes,
            wire_bytes: self
                .links
                .iter()
                .flatten()
                .map(|link| link.stats().sent_bytes)
                .sum(),
            sim_duration_ms: measured
                .last_delivery
                .map_or(0.0, |last| millis(last.saturating_sub(first_offer))),
            paths: self.path_reports(&client),
            stalls: self.stalls,
            timed_out,
            stats: self.sides[CLIENT]
                .transport
                .snapshot(self.now)
                .as_ref()
                .map(StatsReport::from_snapshot),
            flows: self.sides[SERVER]
                .transport
                .flows()
                .iter()
                .map(|f| {
                    let span = match (f.first_delivery, f.last_delivery) {
                        (Some(a), Some(b)) => b.saturating_sub(a),
                        _ => Duration::ZERO,
                    };
                    FlowReport {
                        payload_bytes: f.payload_bytes,
                        duration_ms: millis(span),
                        goodput_bps: if span.is_zero() {
                            0.0
                        } else {
                            f.payload_bytes as f64 * 8.0 / span.as_secs_f64()
                        },
                    }
                })
                .collect(),
        }
    }

    fn path_reports(&self, client: &TransportStats) -> Vec<PathReport> {
        self.links
            .iter()
            .enumerate()
            .map(|(path, pair)| {
                let stats = client.paths.get(path).cloned().unwrap_or_default();
                let link = pair[CLIENT].stats();
                PathReport {
                    mtu: stats.mtu,
                    srtt_ms: millis(stats.srtt),
                    sent_packets: stats.sent_packets,
                    lost_packets: stats.lost_packets,
                    retransmits: stats.retransmits,
                    spurious_retransmits: stats.spurious_retransmits,
                    cwnd_bytes: stats.congestion_window,
                    sent_bytes: stats.sent_bytes,
                    link: LinkFaults {
                        dropped: link.dropped_total(),
                        duplicated: link.duplicated,
                        reordered: link.reordered,
                        corrupted: link.corrupted,
                    },
                }
            })
            .collect()
    }
}
