//! One scenario, run with atbus or one of its peers, with every message's latency.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use atbus_sim::{
    ID_PREFIX_LEN, Received, Report, Scenario, Transport, TransportStats, Workload, WouldBlock,
};
use bytes::Bytes;

/// A transport compared in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// atbus itself ([`atbus_sim::atbus::pair`]).
    Atbus,
    /// The `kcp` crate in turbo mode ([`crate::kcp::pair`]).
    Kcp,
    /// `quinn-proto` with rustls ([`crate::quinn::pair`]).
    Quinn,
}

impl Peer {
    /// All of them, in the order of the tables.
    pub const ALL: [Peer; 3] = [Peer::Atbus, Peer::Kcp, Peer::Quinn];

    /// The name on the command line and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Atbus => "atbus",
            Peer::Kcp => "kcp",
            Peer::Quinn => "quinn",
        }
    }
}

impl std::str::FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|peer| peer.name() == s)
            .ok_or_else(|| format!("unknown transport {s:?}: expected atbus, kcp or quinn"))
    }
}

/// What a run gives: the simulator's report, every delivered message's latency
/// and the peer's own remarks.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The simulator's report, as `atbus sim` prints it.
    pub report: Report,
    /// The latency of every distinct message delivered to the measuring application,
    /// ascending; messages shorter than [`ID_PREFIX_LEN`] carry no index and are
    /// left out.
    pub latencies: Vec<Duration>,
    /// Messages the transport refused for good as too large (KCP only).
    pub oversized: u64,
    /// The scenario's seed.
    pub seed: u64,
}

/// Why a scenario cannot run with a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// How the peers are configured for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// KCP's configuration ([`KcpConfig::TURBO`](crate::kcp::KcpConfig::TURBO) by
    /// default).
    pub kcp: crate::kcp::KcpConfig,
}

/// Runs `scenario` with `peer` on both sides, each peer configured by `settings`.
///
/// KCP and quinn use only the first path (they are single-path); the other paths of
/// the scenario stay idle. Quinn needs an MTU of 1200 to 65527 bytes, KCP 50 or more,
/// atbus its own minimum ([`atbus_core::config::MIN_MTU`]).
///
/// # Panics
/// If the scenario is invalid ([`Scenario::validate`]).
///
/// # Example
///
/// ```
/// use atbus_benches::compare::{self, Peer, Settings};
/// use atbus_sim::{Scenario, SizeRange};
///
/// let scenario = Scenario {
///     paths: vec!["delay=30ms,loss=5%".parse().unwrap()],
///     messages: 50,
///     size: SizeRange::fixed(8),
///     echo: true,
///     ..Scenario::default()
/// };
/// for peer in Peer::ALL {
///     let outcome = compare::run(peer, &scenario, &Settings::default()).unwrap();
///     assert_eq!(outcome.report.delivered, 50);
///     assert_eq!(outcome.latencies.len(), 50);
/// }
/// ```
pub fn run(peer: Peer, scenario: &Scenario, settings: &Settings) -> Result<Outcome, Unsupported> {
    let mtus: Vec<usize> = scenario.paths.iter().map(|p| p.mtu).collect();
    let first_mtu = mtus.first().copied().unwrap_or(atbus_sim::DEFAULT_MTU);
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut oversized = 0;
    let report = match peer {
        Peer::Atbus => {
            let min = atbus_core::config::MIN_MTU;
            if let Some(mtu) = mtus.iter().find(|&&mtu| mtu < min) {
                return Err(Unsupported(format!(
                    "mtu={mtu} is below the smallest atbus accepts ({min})"
                )));
            }
            let (client, server) = atbus_sim::atbus::pair(&mtus);
            let (client, server) = observe_pair(scenario, &log, client, server);
            atbus_sim::run(scenario, client, server)
        }
        Peer::Kcp => {
            if first_mtu < 50 {
                return Err(Unsupported(format!(
                    "mtu={first_mtu} is below the smallest KCP accepts (50)"
                )));
            }
            let (client, server) = crate::kcp::pair_with(first_mtu, settings.kcp);
            let counters = [client.oversized_counter(), server.oversized_counter()];
            let (client, server) = observe_pair(scenario, &log, client, server);
            let report = atbus_sim::run(scenario, client, server);
            oversized = counters.iter().map(|c| c.get()).sum();
            report
        }
        Peer::Quinn => {
            if !(1200..=65527).contains(&first_mtu) {
                return Err(Unsupported(format!(
                    "mtu={first_mtu}: QUIC needs datagrams of 1200 to 65527 bytes"
                )));
            }
            let (client, server) = crate::quinn::pair(first_mtu, scenario.seed);
            let (client, server) = observe_pair(scenario, &log, client, server);
            atbus_sim::run(scenario, client, server)
        }
    };
    let mut latencies = log.take();
    latencies.sort_unstable();
    Ok(Outcome {
        report,
        latencies,
        oversized,
        seed: scenario.seed,
    })
}

/// Wraps both sides; the measuring one (the server, or with echo the client) logs.
fn observe_pair<T>(
    scenario: &Scenario,
    log: &Rc<RefCell<Vec<Duration>>>,
    client: T,
    server: T,
) -> (Observed<T>, Observed<T>) {
    let client_measures = scenario.echo;
    (
        Observed::new(client, scenario, client_measures.then(|| log.clone())),
        Observed::new(server, scenario, (!client_measures).then(|| log.clone())),
    )
}

/// A transport whose deliveries are timed message by message, for the latency
/// distribution (the report has only percentiles).
///
/// The latency of message `i` is its delivery instant minus the instant the workload
/// offered it ([`Workload::due`]), as the simulator counts it; duplicates and
/// corrupted payloads are left out. The delivery instant is the latest `now` the
/// driver gave this side: the driver drains [`Transport::poll_received`] right after
/// a call that carries `now` (at least [`Transport::poll_transmit`]).
#[derive(Debug)]
pub struct Observed<T> {
    inner: T,
    log: Option<Rc<RefCell<Vec<Duration>>>>,
    workload: Workload,
    seen: HashSet<u64>,
    now: Duration,
}

impl<T> Observed<T> {
    /// `inner`, whose deliveries are timed into `log` if given (the measuring side:
    /// the server, or with echo the client).
    pub fn new(inner: T, scenario: &Scenario, log: Option<Rc<RefCell<Vec<Duration>>>>) -> Self {
        Self {
            inner,
            log,
            workload: Workload::new(scenario),
            seen: HashSet::new(),
            now: Duration::ZERO,
        }
    }

    fn tick(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    fn observe(&mut self, received: &Received) {
        let Some(log) = &self.log else {
            return;
        };
        let Some(prefix) = received.payload.get(..ID_PREFIX_LEN) else {
            return;
        };
        let index = u64::from_le_bytes(prefix.try_into().unwrap_or_default());
        if index >= self.workload.messages()
            || self.seen.contains(&index)
            || self.workload.payload(index) != received.payload
        {
            return;
        }
        self.seen.insert(index);
        log.borrow_mut()
            .push(self.now.saturating_sub(self.workload.due(index)));
    }
}

impl<T: Transport> Transport for Observed<T> {
    fn send(&mut self, now: Duration, stream: u32, payload: Bytes) -> Result<(), WouldBlock> {
        self.tick(now);
        self.inner.send(now, stream, payload)
    }

    fn handle_datagram(&mut self, now: Duration, path: usize, datagram: Bytes) {
        self.tick(now);
        self.inner.handle_datagram(now, path, datagram);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        self.inner.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, Bytes)> {
        self.tick(now);
        self.inner.poll_transmit(now)
    }

    fn poll_received(&mut self) -> Option<Received> {
        let received = self.inner.poll_received()?;
        self.observe(&received);
        Some(received)
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        self.inner.next_timeout()
    }

    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }

    fn snapshot(&self, now: Duration) -> Option<atbus_core::stats::StatsSnapshot> {
        self.inner.snapshot(now)
    }
}
