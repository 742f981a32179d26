//! What a simulation run measured: [`Report`], printable for people
//! ([`Display`](fmt::Display)) and as JSON for tools ([`Report::to_json`]).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The outcome of one [`run`](crate::run).
///
/// Every figure is exact in virtual time and identical from one run of the same
/// scenario and transports to the next. Message counts follow the receiving
/// application (the server's, or the client's for echoes; see
/// [`run`](crate::run#what-is-counted)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Messages the workload offered before the run ended.
    pub sent: u64,
    /// Distinct messages delivered intact (with echo: whose echo reached the client),
    /// in order or not.
    pub delivered: u64,
    /// Deliveries of a message already delivered.
    pub duplicates: u64,
    /// Deliveries of a message after a later message of the same stream (counted in
    /// `delivered` too).
    pub out_of_order: u64,
    /// Deliveries that match no message of their stream.
    pub corrupted: u64,
    /// Messages the receiving sides' transports said they skipped.
    pub skipped: u64,
    /// Latency of the delivered messages, from the workload's offer to delivery.
    pub latency_ms: LatencySummary,
    /// Payload bytes of the delivered messages.
    pub payload_bytes: u64,
    /// Bytes both sides handed to the links, all paths, dropped datagrams included.
    pub wire_bytes: u64,
    /// Virtual time from the first offer to the last delivery, in milliseconds.
    pub sim_duration_ms: f64,
    /// One entry per path, in path order.
    pub paths: Vec<PathReport>,
    /// Instants at which a transport kept asking for a timeout that had already
    /// passed until the driver gave up and moved time on.
    pub stalls: u64,
    /// Whether the run hit the scenario's time limit with messages outstanding.
    pub timed_out: bool,
    /// The client transport's windowed statistics at the end of the run, if it
    /// keeps any (atbus does: its endpoint's, all paths together).
    pub stats: Option<StatsReport>,
    /// Per flow, when the sides are several flows ([`crate::flows`]); else empty.
    pub flows: Vec<FlowReport>,
}

/// What one flow delivered (receiving side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowReport {
    /// Payload bytes delivered.
    pub payload_bytes: u64,
    /// From the first to the last delivery, in milliseconds.
    pub duration_ms: f64,
    /// Payload bits per second over that time.
    pub goodput_bps: f64,
}

/// Windowed statistics in a form for JSON: the totals, the 1 / 5 / 15 / 60-second
/// windows keyed `"1s"`, `"5s"`, `"15s"`, `"60s"`, and the latency histogram of
/// the 60-second window with its bucket edges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsReport {
    /// Counts since the transport started.
    pub totals: TotalsReport,
    /// Each window's figures.
    pub windows: std::collections::BTreeMap<String, WindowReport>,
    /// The 60-second window's histogram.
    pub histogram: HistogramReport,
}

/// [`atbus_core::stats::Totals`] for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TotalsReport {
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Fragments sent.
    pub fragments_sent: u64,
    /// Fragments received.
    pub fragments_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
}

/// [`atbus_core::stats::WindowStats`] for JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    /// Seconds the window covers (less at the start).
    pub seconds: f64,
    /// Bytes sent per second.
    pub bytes_sent_per_sec: f64,
    /// Bytes received per second.
    pub bytes_received_per_sec: f64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Fragments sent.
    pub fragments_sent: u64,
    /// Fragments received.
    pub fragments_received: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Lost / sent packets; null when nothing was sent.
    pub loss_rate: Option<f64>,
    /// Mean RTT in milliseconds; null without samples.
    pub avg_rtt_ms: Option<f64>,
}

/// A latency histogram for JSON: `counts[i]` samples below `edges_ms[i]` (and at or
/// above the previous edge); the last count has no upper edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistogramReport {
    /// Upper bucket edges in milliseconds.
    pub edges_ms: Vec<u64>,
    /// Samples per bucket (one more than the edges).
    pub counts: Vec<u64>,
}

impl StatsReport {
    /// The JSON form of `snapshot`.
    pub fn from_snapshot(snapshot: &atbus_core::stats::StatsSnapshot) -> Self {
        use atbus_core::stats::{HISTOGRAM_EDGES_MS, Window};
        let t = snapshot.totals;
        let windows = Window::ALL
            .iter()
            .map(|&w| {
                let s = snapshot.window(w);
                let report = WindowReport {
                    seconds: s.covered.as_secs_f64(),
                    bytes_sent_per_sec: s.bytes_sent_per_sec,
                    bytes_received_per_sec: s.bytes_received_per_sec,
                    packets_sent: s.packets_sent,
                    packets_received: s.packets_received,
                    fragments_sent: s.fragments_sent,
                    fragments_received: s.fragments_received,
                    lost_packets: s.lost_packets,
                    loss_rate: s.loss_rate,
                    avg_rtt_ms: s.average_rtt.map(millis),
                };
                (w.label().to_owned(), report)
            })
            .collect();
        StatsReport {
            totals: TotalsReport {
                packets_sent: t.packets_sent,
                packets_received: t.packets_received,
                bytes_sent: t.bytes_sent,
                bytes_received: t.bytes_received,
                fragments_sent: t.fragments_sent,
                fragments_received: t.fragments_received,
                lost_packets: t.lost_packets,
            },
            windows,
            histogram: HistogramReport {
                edges_ms: HISTOGRAM_EDGES_MS.to_vec(),
                counts: snapshot.window(Window::S60).histogram.counts().to_vec(),
            },
        }
    }
}

/// Latency percentiles in milliseconds, nearest-rank; all zero without samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Mean.
    pub avg: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One path as the client saw it, and what the client→server link did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PathReport {
    /// The client's MTU on the path at the end of the run.
    pub mtu: usize,
    /// The client's smoothed round-trip time, in milliseconds.
    pub srtt_ms: f64,
    /// Datagrams the client sent.
    pub sent_packets: u64,
    /// Datagrams the client declared lost.
    pub lost_packets: u64,
    /// Retransmissions the client sent.
    pub retransmits: u64,
    /// Retransmissions the client found unnecessary.
    pub spurious_retransmits: u64,
    /// The client's congestion window at the end, in bytes.
    pub cwnd_bytes: usize,
    /// Bytes the client sent on the path.
    pub sent_bytes: u64,
    /// Faults of the client→server link.
    pub link: LinkFaults,
}

/// What the simulated network did to one link's datagrams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkFaults {
    /// Datagrams dropped for any reason (MTU, outage, queue overflow, loss).
    pub dropped: u64,
    /// Datagrams delivered twice.
    pub duplicated: u64,
    /// Datagrams held back so that later ones overtook them.
    pub reordered: u64,
    /// Datagrams delivered with one bit flipped.
    pub corrupted: u64,
}

impl Report {
    /// The report as one line of JSON, with the field names of this type.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("a report is numbers, booleans and arrays of structs: it always serializes")
    }
}

impl LatencySummary {
    /// Summarizes `latencies` (any order).
    ///
    /// Percentile `p` is the nearest-rank value: the `⌈p/100 × n⌉`-th smallest.
    ///
    /// ```
    /// use std::time::Duration;
    /// use atbus_sim::LatencySummary;
    ///
    /// let ms = |n| Duration::from_millis(n);
    /// let summary = LatencySummary::from_latencies(&[ms(30), ms(10), ms(20), ms(40)]);
    /// assert_eq!((summary.avg, summary.p50, summary.p90, summary.max), (25.0, 20.0, 40.0, 40.0));
    /// ```
    pub fn from_latencies(latencies: &[Duration]) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        let mut sorted = latencies.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        // Per mille, so that 99.9 stays an integer.
        let rank = |per_mille: usize| millis(sorted[(per_mille * n).div_ceil(1000).max(1) - 1]);
        let total: u128 = sorted.iter().map(Duration::as_nanos).sum();
        Self {
            avg: total as f64 / n as f64 / 1e6,
            p50: rank(500),
            p90: rank(900),
            p99: rank(990),
            p999: rank(999),
            max: millis(sorted[n - 1]),
        }
    }
}

/// `duration` in milliseconds, the `f64` nearest to the exact value (unlike
/// `as_secs_f64() * 1000.0`, which turns 25 ms into `25.000000000000004`).
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e6
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "messages  {} sent, {} delivered ({} out of order), {} duplicates, {} corrupted, {} skipped",
            self.sent,
            self.delivered,
            self.out_of_order,
            self.duplicates,
            self.corrupted,
            self.skipped
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency   avg {:.3} ms, p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}",
            l.avg, l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        writeln!(
            f,
            "bytes     {} payload delivered, {} on the wire",
            self.payload_bytes, self.wire_bytes
        )?;
        write!(
            f,
            "time      {:.3} ms virtual, {} stalls",
            self.sim_duration_ms, self.stalls
        )?;
        if self.timed_out {
            write!(f, ", time limit hit with messages outstanding")?;
        }
        for (index, path) in self.paths.iter().enumerate() {
            let link = &path.link;
            write!(
                f,
                "\npath {index}    mtu {}, srtt {:.3} ms, cwnd {} B, {} packets ({} B) sent, {} lost, {} retransmits ({} spurious); \
                 link: {} dropped, {} duplicated, {} reordered, {} corrupted",
                path.mtu,
                path.srtt_ms,
                path.cwnd_bytes,
                path.sent_packets,
                path.sent_bytes,
                path.lost_packets,
                path.retransmits,
                path.spurious_retransmits,
                link.dropped,
                link.duplicated,
                link.reordered,
                link.corrupted
            )?;
        }
        for (index, flow) in self.flows.iter().enumerate() {
            write!(
                f,
                "\nflow {index}    {} B payload in {:.3} ms: {:.3} Mbit/s",
                flow.payload_bytes,
                flow.duration_ms,
                flow.goodput_bps / 1e6
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_sample_gives_zeros() {
        assert_eq!(
            LatencySummary::from_latencies(&[]),
            LatencySummary::default()
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=1000).rev().map(ms).collect();
        let s = LatencySummary::from_latencies(&samples);
        assert_eq!(
            (s.p50, s.p90, s.p99, s.p999, s.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(s.avg, 500.5);

        let s = LatencySummary::from_latencies(&[ms(1), ms(2), ms(3)]);
        assert_eq!((s.p50, s.p90, s.p999), (2.0, 3.0, 3.0));
        let s = LatencySummary::from_latencies(&[ms(7)]);
        assert_eq!((s.avg, s.p50, s.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn millis_are_the_nearest_f64() {
        assert_eq!(millis(ms(25)), 25.0);
        assert_eq!(millis(Duration::from_micros(25_001)), 25.001);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let report = Report {
            sent: 1,
            delivered: 1,
            duplicates: 0,
            out_of_order: 0,
            corrupted: 0,
            skipped: 0,
            latency_ms: LatencySummary::from_latencies(&[ms(25)]),
            payload_bytes: 10,
            wire_bytes: 22,
            sim_duration_ms: 25.0,
            paths: vec![PathReport::default()],
            stalls: 0,
            timed_out: false,
            stats: None,
            flows: Vec::new(),
        };
        assert_eq!(
            report.to_json(),
            r#"{"sent":1,"delivered":1,"duplicates":0,"out_of_order":0,"corrupted":0,"skipped":0,"latency_ms":{"avg":25.0,"p50":25.0,"p90":25.0,"p99":25.0,"p999":25.0,"max":25.0},"payload_bytes":10,"wire_bytes":22,"sim_duration_ms":25.0,"paths":[{"mtu":0,"srtt_ms":0.0,"sent_packets":0,"lost_packets":0,"retransmits":0,"spurious_retransmits":0,"cwnd_bytes":0,"sent_bytes":0,"link":{"dropped":0,"duplicated":0,"reordered":0,"corrupted":0}}],"stalls":0,"timed_out":false,"stats":null,"flows":[]}"#
        );
        assert!(
            report
                .to_string()
                .starts_with("messages  1 sent, 1 delivered")
        );
    }
}
