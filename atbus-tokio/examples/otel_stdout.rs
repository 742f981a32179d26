//! Two nodes exchange messages over loopback UDP for about three seconds while the
//! client's OpenTelemetry metrics are exported to stdout once a second.
//!
//! ```text
//! cargo run -p atbus-tokio --example otel_stdout
//! ```
//!
//! In an application, enable the adapter's `otel` feature and use
//! `atbus_tokio::otel::NodeMetrics`; this example uses the same module through
//! `atbus_node::otel` (its dev-dependency enables it), so that it builds without
//! extra features.

use std::time::Duration;

use atbus_node::otel::NodeMetrics;
use atbus_tokio::{Event, Node, NodeConfig, SendOptions};
use bytes::Bytes;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

/// How long the nodes exchange messages.
const RUN: Duration = Duration::from_secs(3);
/// Between exports.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Node::bind(NodeConfig::new("server").listen("udp://127.0.0.1:0".parse()?)).await?;
    let client = Node::bind(NodeConfig::new("client")).await?;
    let peer = client.connect(server.local_addresses()).await?;

    // The reader exports when flushed; the example flushes after each refresh so
    // that every export shows fresh stats.
    let exporter = opentelemetry_stdout::MetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .build();
    let mut metrics = NodeMetrics::new(&provider.meter("atbus"), "client");

    let receiving = async {
        let mut received = 0u64;
        while let Some(event) = server.recv().await {
            match event {
                Event::Message { .. } => received += 1,
                Event::StreamFinished { .. } => break,
                _ => {}
            }
        }
        received
    };
    let sending = async {
        let start = tokio::time::Instant::now();
        let mut next_export = start + EXPORT_EVERY;
        let mut sent = 0u64;
        while start.elapsed() < RUN {
            let payload = Bytes::from(vec![0x5a; 1200]);
            client
                .send(peer, 1, payload, SendOptions::default())
                .await?;
            sent += 1;
            if sent % 100 == 0 {
                // About 1000 messages a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if tokio::time::Instant::now() >= next_export {
                next_export += EXPORT_EVERY;
                metrics.refresh(&client).await?;
                provider.force_flush()?;
            }
        }
        client.finish(peer, 1).await?;
        client.wait_acknowledged(peer).await?;
        metrics.refresh(&client).await?;
        provider.force_flush()?;
        Ok::<u64, Box<dyn std::error::Error>>(sent)
    };
    let (sent, received) =
        tokio::time::timeout(RUN * 5, async { tokio::join!(sending, receiving) }).await?;
    let sent = sent?;
    eprintln!("sent {sent} messages, the server received {received}");
    provider.shutdown()?;
    client.close().await;
    server.close().await;
    Ok(())
}
