//! Traces the client's congestion window, bytes in flight, smoothed RTT and losses
//! every 100 ms of virtual time while it sends fixed-size messages over one path.
//!
//! `cargo run --release -p atbus-sim --example cwnd_trace -- SPEC MESSAGES`, e.g.
//! `-- delay=20ms,bw=20mbit,queue=64kb 20000`.

use atbus_sim::atbus::{AtbusTransport, pair};
use atbus_sim::{LinkConfig, Scenario, SizeRange, Transport, run};
use std::time::Duration;
struct W(AtbusTransport, bool, std::cell::Cell<u64>);
impl Transport for W {
    fn send(
        &mut self,
        now: Duration,
        st: u32,
        p: bytes::Bytes,
    ) -> Result<(), atbus_sim::WouldBlock> {
        self.0.send(now, st, p)
    }
    fn handle_datagram(&mut self, now: Duration, path: usize, d: bytes::Bytes) {
        self.0.handle_datagram(now, path, d)
    }
    fn handle_timeout(&mut self, now: Duration) {
        self.0.handle_timeout(now)
    }
    fn poll_transmit(&mut self, now: Duration) -> Option<(usize, bytes::Bytes)> {
        if self.1 {
            let tick = now.as_millis() as u64 / 100;
            if tick != self.2.get() {
                self.2.set(tick);
                let ep = self.0.endpoint();
                for c in ep.connections() {
                    let i = ep.connection_info(c).unwrap();
                    println!(
                        "{:>6}ms cwnd {:>7} inflight {:>7} srtt {:?} lost {} sent {}",
                        now.as_millis(),
                        i.congestion_window,
                        i.bytes_in_flight,
                        i.srtt,
                        i.stats.lost_packets,
                        i.stats.sent_packets
                    );
                }
            }
        }
        self.0.poll_transmit(now)
    }
    fn poll_received(&mut self) -> Option<atbus_sim::Received> {
        self.0.poll_received()
    }
    fn next_timeout(&mut self) -> Option<Duration> {
        self.0.next_timeout()
    }
    fn stats(&self) -> atbus_sim::TransportStats {
        self.0.stats()
    }
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let s = Scenario {
        paths: vec![args[1].parse::<LinkConfig>().unwrap()],
        messages: args[2].parse().unwrap(),
        size: SizeRange {
            min: 1000,
            max: 1000,
        },
        interval: Duration::ZERO,
        streams: 1,
        echo: false,
        seed: 1,
        time_limit: Duration::from_secs(600),
    };
    let (c, sv) = pair(&[s.paths[0].mtu]);
    let r = run(
        &s,
        W(c, true, Default::default()),
        W(sv, false, Default::default()),
    );
    println!("{r}");
}
