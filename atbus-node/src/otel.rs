//! OpenTelemetry metrics of a node (the `otel` feature; the adapters forward it).
//!
//! [`NodeMetrics`] registers instruments on an OpenTelemetry [`Meter`] and feeds them
//! from the node's [`NodeStats`] — the core's counters and windowed statistics
//! (`atbus_core::stats`) — never from the packet path: recording costs what the
//! core's recorder costs, and exporting costs one [`Node::stats`] call per
//! [`refresh`](NodeMetrics::refresh). The application refreshes at the pace it
//! exports (before each collection of its reader, e.g. every few seconds); the
//! observable instruments report the stats of the latest refresh.
//!
//! What is exported (attribute `node` on every point):
//!
//! | name | instrument | unit | attributes |
//! |---|---|---|---|
//! | `atbus.packets.sent`, `atbus.packets.received` | counter | `{packet}` | |
//! | `atbus.bytes.sent`, `atbus.bytes.received` | counter | `By` | |
//! | `atbus.fragments.sent`, `atbus.fragments.received` | counter | `{fragment}` | |
//! | `atbus.packets.lost` | counter | `{packet}` | |
//! | `atbus.connection.retransmits` | counter | `{range}` | `peer`, `connection`, `transport` |
//! | `atbus.window.bytes_sent.rate`, `atbus.window.bytes_received.rate` | gauge | `By/s` | `window` |
//! | `atbus.window.packets_sent.rate`, `atbus.window.packets_received.rate` | gauge | `{packet}/s` | `window` |
//! | `atbus.window.fragments_sent.rate`, `atbus.window.fragments_received.rate` | gauge | `{fragment}/s` | `window` |
//! | `atbus.window.loss_rate` | gauge | `1` | `window` (absent while nothing was sent) |
//! | `atbus.window.rtt.average` | gauge | `ms` | `window` (absent without samples) |
//! | `atbus.connection.srtt` | gauge | `ms` | `peer`, `connection`, `transport` |
//! | `atbus.connection.cwnd` | gauge | `By` | `peer`, `connection`, `transport` |
//! | `atbus.connection.mtu` | gauge | `By` | `peer`, `connection`, `transport` |
//! | `atbus.rtt` | histogram | `ms` | |
//!
//! The counters and windows are the endpoint's (every connection it has had, so they
//! never go backwards when a connection closes); `window` is `"1s"`, `"5s"`, `"15s"`
//! or `"60s"`. Per-connection points are those of the live connections.
//!
//! The histogram has the explicit bucket edges of `DESIGN.md`
//! ([`HISTOGRAM_EDGES_MS`]) and counts the core's RTT samples. OpenTelemetry has no
//! observable histogram, so each refresh records the samples the core counted since
//! the previous refresh (the cumulative
//! [`StatsSnapshot::histogram_total`](atbus_core::stats::StatsSnapshot::histogram_total)
//! less what was already recorded), each at the middle of its bucket (the last,
//! unbounded bucket: 1.5 × its lower edge): the bucket counts are exact, the sum and
//! min / max are those midpoints, since the core keeps only buckets. The core's
//! buckets include their lower edge and OpenTelemetry's their upper one; a midpoint
//! lies inside both, so the two agree on every bucket.

use std::sync::{Arc, Mutex, PoisonError};

use atbus_core::stats::{
    HISTOGRAM_BUCKETS, HISTOGRAM_EDGES_MS, LatencyHistogram, Window, WindowStats,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

use crate::node::{Node, NodeError, NodeStats, PathStats};

/// The histogram's bucket edges in milliseconds, as OpenTelemetry takes them.
pub fn bucket_edges_ms() -> Vec<f64> {
    HISTOGRAM_EDGES_MS.iter().map(|&e| e as f64).collect()
}

/// The value recorded for a sample of core bucket `bucket`: inside the bucket for
/// both the core (lower edge included) and OpenTelemetry (upper edge included).
fn bucket_midpoint_ms(bucket: usize) -> f64 {
    match LatencyHistogram::bucket_bounds(bucket) {
        Some((lower, Some(upper))) => (lower + upper).as_secs_f64() * 500.0,
        Some((lower, None)) => lower.as_secs_f64() * 1500.0,
        None => 0.0,
    }
}

/// An instrument fed from a `T`: its name, its unit, and how to read its value.
type Spec<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// What the callbacks read: the latest stats and the node's name.
struct Shared {
    node: KeyValue,
    latest: Option<NodeStats>,
}

/// A node's OpenTelemetry instruments; see the [module documentation](self).
///
/// Build it once per node with the meter of the application's provider, then call
/// [`refresh`](Self::refresh) (or [`update`](Self::update) with stats already at
/// hand) before each export.
pub struct NodeMetrics {
    shared: Arc<Mutex<Shared>>,
    rtt: Histogram<f64>,
    /// The cumulative histogram counts already recorded into `rtt`.
    recorded: [u64; HISTOGRAM_BUCKETS],
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

/// The attributes of one connection's points.
fn path_attributes(node: &KeyValue, path: &PathStats) -> [KeyValue; 4] {
    let transport = path.remote.split("://").next().unwrap_or_default();
    [
        node.clone(),
        KeyValue::new(
            "peer",
            path.info.peer.map(|p| p.to_string()).unwrap_or_default(),
        ),
        KeyValue::new("connection", path.connection.to_string()),
        KeyValue::new("transport", transport.to_owned()),
    ]
}

impl NodeMetrics {
    /// Registers the instruments on `meter`, every point tagged `node = node_name`.
    pub fn new(meter: &Meter, node_name: &str) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            node: KeyValue::new("node", node_name.to_owned()),
            latest: None,
        }));
        type Totals = atbus_core::stats::Totals;
        let counters: [Spec<Totals, u64>; 7] = [
            ("atbus.packets.sent", "{packet}", |t| t.packets_sent),
            ("atbus.packets.received", "{packet}", |t| t.packets_received),
            ("atbus.bytes.sent", "By", |t| t.bytes_sent),
            ("atbus.bytes.received", "By", |t| t.bytes_received),
            ("atbus.fragments.sent", "{fragment}", |t| t.fragments_sent),
            ("atbus.fragments.received", "{fragment}", |t| {
                t.fragments_received
            }),
            ("atbus.packets.lost", "{packet}", |t| t.lost_packets),
        ];
        for (name, unit, read) in counters {
            let shared = Arc::clone(&shared);
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_callback(move |observer| {
                    with_latest(&shared, |node, stats| {
                        observer.observe(read(&stats.windows.totals), std::slice::from_ref(node));
                    });
                })
                .build();
        }
        {
            let shared = Arc::clone(&shared);
            meter
                .u64_observable_counter("atbus.connection.retransmits")
                .with_unit("{range}")
                .with_callback(move |observer| {
                    with_latest(&shared, |node, stats| {
                        for path in &stats.paths {
                            observer
                                .observe(path.info.stats.retransmits, &path_attributes(node, path));
                        }
                    });
                })
                .build();
        }
        let windows: [Spec<WindowStats, Option<f64>>; 8] = [
            ("atbus.window.bytes_sent.rate", "By/s", |w| {
                Some(w.bytes_sent_per_sec)
            }),
            ("atbus.window.bytes_received.rate", "By/s", |w| {
                Some(w.bytes_received_per_sec)
            }),
            ("atbus.window.packets_sent.rate", "{packet}/s", |w| {
                Some(w.per_second(w.packets_sent))
            }),
            ("atbus.window.packets_received.rate", "{packet}/s", |w| {
                Some(w.per_second(w.packets_received))
            }),
            ("atbus.window.fragments_sent.rate", "{fragment}/s", |w| {
                Some(w.per_second(w.fragments_sent))
            }),
            (
                "atbus.window.fragments_received.rate",
                "{fragment}/s",
                |w| Some(w.per_second(w.fragments_received)),
            ),
            ("atbus.window.loss_rate", "1", |w| w.loss_rate),
            ("atbus.window.rtt.average", "ms", |w| {
                w.average_rtt.map(|d| d.as_secs_f64() * 1e3)
            }),
        ];
        for (name, unit, read) in windows {
            let shared = Arc::clone(&shared);
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_callback(move |observer| {
                    with_latest(&shared, |node, stats| {
                        for window in Window::ALL {
                            if let Some(value) = read(stats.windows.window(window)) {
                                let attributes =
                                    [node.clone(), KeyValue::new("window", window.label())];
                                observer.observe(value, &attributes);
                            }
                        }
                    });
                })
                .build();
        }
        let paths: [Spec<PathStats, f64>; 3] = [
            ("atbus.connection.srtt", "ms", |p| {
                p.info.srtt.as_secs_f64() * 1e3
            }),
            ("atbus.connection.cwnd", "By", |p| {
                p.info.congestion_window as f64
            }),
            ("atbus.connection.mtu", "By", |p| p.info.mtu as f64),
        ];
        for (name, unit, read) in paths {
            let shared = Arc::clone(&shared);
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_callback(move |observer| {
                    with_latest(&shared, |node, stats| {
                        for path in &stats.paths {
                            observer.observe(read(path), &path_attributes(node, path));
                        }
                    });
                })
                .build();
        }
        let rtt = meter
            .f64_histogram("atbus.rtt")
            .with_unit("ms")
            .with_description("RTT samples of the node's connections")
            .with_boundaries(bucket_edges_ms())
            .build();
        NodeMetrics {
            shared,
            rtt,
            recorded: [0; HISTOGRAM_BUCKETS],
        }
    }

    /// Reads the node's stats and [`update`](Self::update)s the instruments.
    pub async fn refresh(&mut self, node: &Node) -> Result<(), NodeError> {
        let stats = node.stats().await?;
        self.update(stats);
        Ok(())
    }

    /// Makes `stats` what the observable instruments report, and records into the
    /// histogram the RTT samples counted since the previous update.
    pub fn update(&mut self, stats: NodeStats) {
        let counts = stats.windows.histogram_total.counts();
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let attributes = std::slice::from_ref(&shared.node);
        for (bucket, (&count, recorded)) in counts.iter().zip(&mut self.recorded).enumerate() {
            let value = bucket_midpoint_ms(bucket);
            // A count below what was recorded (stats of another node) records nothing.
            for _ in *recorded..count {
                self.rtt.record(value, attributes);
            }
            *recorded = (*recorded).max(count);
        }
        shared.latest = Some(stats);
    }
}

/// Runs `f` on the latest stats, if any (nothing is observed before the first
/// update).
fn with_latest(shared: &Mutex<Shared>, f: impl FnOnce(&KeyValue, &NodeStats)) {
    let shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(stats) = &shared.latest {
        f(&shared.node, stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_midpoint_lies_in_its_bucket_for_both_conventions() {
        let edges = bucket_edges_ms();
        for bucket in 0..HISTOGRAM_BUCKETS {
            let value = bucket_midpoint_ms(bucket);
            // The core's bucket of the value.
            let core = LatencyHistogram::bucket_of(std::time::Duration::from_secs_f64(value / 1e3));
            assert_eq!(core, bucket, "{value} ms");
            // OpenTelemetry's: the first edge at or above the value.
            let otel = edges
                .iter()
                .position(|&e| value <= e)
                .unwrap_or(edges.len());
            assert_eq!(otel, bucket, "{value} ms");
        }
    }
}
