//! OpenTelemetry export (atbus-node's `otel` module, the adapters' `otel` feature):
//! two tokio nodes exchange messages over loopback UDP, and the client's metrics,
//! collected by the SDK's in-memory exporter, hold the expected names, bucket edges
//! and counts.

use std::time::Duration;

use atbus_node::otel::{NodeMetrics, bucket_edges_ms};
use atbus_node::testing::{receive_numbered, send_numbered};
use atbus_tokio::{Node, NodeConfig};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

const LIMIT: Duration = Duration::from_secs(30);

fn find<'a>(exported: &'a [ResourceMetrics], name: &str) -> &'a Metric {
    exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
        .last()
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn u64_sum(metric: &Metric) -> Vec<(u64, Vec<String>)> {
    match metric.data() {
        AggregatedMetrics::U64(MetricData::Sum(sum)) => {
            assert!(sum.is_monotonic(), "{}", metric.name());
            sum.data_points()
                .map(|p| {
                    let keys = p.attributes().map(|kv| kv.key.to_string()).collect();
                    (p.value(), keys)
                })
                .collect()
        }
        other => panic!("{}: not a u64 sum: {other:?}", metric.name()),
    }
}

fn f64_gauge(metric: &Metric) -> Vec<(f64, Vec<(String, String)>)> {
    match metric.data() {
        AggregatedMetrics::F64(MetricData::Gauge(gauge)) => gauge
            .data_points()
            .map(|p| {
                let attributes = p
                    .attributes()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect();
                (p.value(), attributes)
            })
            .collect(),
        other => panic!("{}: not an f64 gauge: {other:?}", metric.name()),
    }
}

#[tokio::test]
async fn exported_metrics_have_the_names_bucket_edges_and_counts_of_the_traffic() {
    let server = Node::bind(NodeConfig::new("server").listen("udp://127.0.0.1:0".parse().unwrap()))
        .await
        .expect("bind");
    let client = Node::bind(NodeConfig::new("client")).await.expect("bind");
    let peer = client
        .connect(server.local_addresses())
        .await
        .expect("connect");
    tokio::time::timeout(LIMIT, async {
        tokio::join!(
            send_numbered(&client, peer, 300, 2000),
            receive_numbered(&server, 300, 2000)
        )
    })
    .await
    .expect("transfer finished in time");

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let mut metrics = NodeMetrics::new(&provider.meter("atbus"), "client");
    // Before any refresh the observable instruments report nothing.
    provider.force_flush().unwrap();
    let before = exporter.get_finished_metrics().unwrap();
    let observed = before
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .any(|m| m.name() == "atbus.packets.sent");
    assert!(!observed, "points before the first refresh");

    let stats = client.stats().await.unwrap();
    metrics.update(stats.clone());
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();

    // Counters: the endpoint's totals, tagged with the node.
    let totals = stats.windows.totals;
    for (name, expected) in [
        ("atbus.packets.sent", totals.packets_sent),
        ("atbus.packets.received", totals.packets_received),
        ("atbus.bytes.sent", totals.bytes_sent),
        ("atbus.bytes.received", totals.bytes_received),
        ("atbus.fragments.sent", totals.fragments_sent),
        ("atbus.fragments.received", totals.fragments_received),
        ("atbus.packets.lost", totals.lost_packets),
    ] {
        let points = u64_sum(find(&exported, name));
        assert_eq!(points, [(expected, vec!["node".to_owned()])], "{name}");
    }
    assert!(totals.packets_sent > 0 && totals.fragments_sent >= 300);
    assert!(totals.bytes_sent >= 300 * 2000);
    let retransmits = u64_sum(find(&exported, "atbus.connection.retransmits"));
    assert_eq!(retransmits.len(), stats.paths.len());

    // Per-connection gauges carry node, peer, connection and transport.
    let srtt = f64_gauge(find(&exported, "atbus.connection.srtt"));
    assert_eq!(srtt.len(), 1, "{srtt:?}");
    let (value, attributes) = &srtt[0];
    assert!(*value > 0.0);
    let mut keys: Vec<&str> = attributes.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["connection", "node", "peer", "transport"]);
    assert!(attributes.contains(&("transport".into(), "udp".into())));
    for name in ["atbus.connection.cwnd", "atbus.connection.mtu"] {
        let points = f64_gauge(find(&exported, name));
        assert!(points.len() == 1 && points[0].0 > 0.0, "{name}: {points:?}");
    }

    // Window gauges: one point per window.
    let rates = f64_gauge(find(&exported, "atbus.window.bytes_sent.rate"));
    let mut windows: Vec<&str> = rates
        .iter()
        .flat_map(|(_, a)| a.iter().filter(|(k, _)| k == "window"))
        .map(|(_, v)| v.as_str())
        .collect();
    windows.sort_unstable();
    assert_eq!(windows, ["15s", "1s", "5s", "60s"]);
    for name in [
        "atbus.window.bytes_received.rate",
        "atbus.window.packets_sent.rate",
        "atbus.window.packets_received.rate",
        "atbus.window.fragments_sent.rate",
        "atbus.window.fragments_received.rate",
    ] {
        assert_eq!(f64_gauge(find(&exported, name)).len(), 4, "{name}");
    }

    // The histogram: DESIGN.md's edges, the core's RTT sample counts bucket by bucket.
    let histogram = match find(&exported, "atbus.rtt").data() {
        AggregatedMetrics::F64(MetricData::Histogram(h)) => h,
        other => panic!("atbus.rtt: not an f64 histogram: {other:?}"),
    };
    let point = histogram.data_points().next().expect("one point");
    assert_eq!(point.bounds().collect::<Vec<_>>(), bucket_edges_ms());
    let counts: Vec<u64> = point.bucket_counts().collect();
    assert_eq!(counts, stats.windows.histogram_total.counts());
    assert!(point.count() > 0);

    // A later refresh records only the samples counted since: the exported
    // cumulative counts follow the core's, bucket by bucket.
    for i in 0..50 {
        let message = atbus_node::testing::payload(i, 2000);
        client
            .send(peer, 2, message, Default::default())
            .await
            .unwrap();
    }
    client.wait_acknowledged(peer).await.unwrap();
    metrics.refresh(&client).await.unwrap();
    let later = client.stats().await.unwrap();
    metrics.update(later.clone());
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let histogram = match find(&exported, "atbus.rtt").data() {
        AggregatedMetrics::F64(MetricData::Histogram(h)) => h,
        other => panic!("atbus.rtt: {other:?}"),
    };
    let counts: Vec<u64> = histogram
        .data_points()
        .next()
        .unwrap()
        .bucket_counts()
        .collect();
    assert_eq!(counts, later.windows.histogram_total.counts());
    assert!(later.windows.histogram_total.total() > point.count());

    provider.shutdown().unwrap();
    client.close().await;
    server.close().await;
}
