//! A lossy, reordering UDP relay on loopback, for the demo: datagrams from one
//! client are forwarded to a target and back, each direction dropping a share and
//! delaying some datagrams more than others (so they arrive out of order).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

/// How a relay mistreats datagrams.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Share of datagrams dropped, each direction.
    pub loss: f64,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Share of datagrams delayed by `reorder_extra` more (they overtake nothing,
    /// they are overtaken).
    pub reorder: f64,
    /// Extra delay of reordered datagrams.
    pub reorder_extra: Duration,
    /// Largest datagram (UDP payload) the link carries; larger ones are dropped,
    /// like on a link with a smaller MTU (so path MTU discovery has something to
    /// find).
    pub mtu: usize,
    /// Seed of the random draws.
    pub seed: u64,
}

/// What a relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose.
    pub dropped: AtomicU64,
    /// Datagrams held back to be overtaken.
    pub reordered: AtomicU64,
    /// Datagrams dropped for being larger than the link's MTU (path MTU probes).
    pub too_big: AtomicU64,
}

/// xorshift64*: small, seeded, good enough to pick datagrams to drop.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Starts a relay towards `target`; returns the address clients send to.
pub async fn start(
    target: SocketAddr,
    config: RelayConfig,
) -> std::io::Result<(SocketAddr, Arc<RelayStats>)> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let address = front.local_addr()?;
    let stats = Arc::new(RelayStats::default());
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    // Client -> target.
    {
        let (front, back, stats, client) =
            (front.clone(), back.clone(), stats.clone(), client.clone());
        tokio::spawn(async move {
            let mut rng = Rng(config.seed | 1);
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if let Ok(mut c) = client.lock() {
                    *c = Some(from);
                }
                forward(&back, target, &buf[..n], &config, &mut rng, &stats);
            }
        });
    }
    // Target -> client.
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut rng = Rng(config.seed.rotate_left(17) | 1);
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to = client.lock().ok().and_then(|c| *c);
                if let Some(to) = to {
                    forward(&front, to, &buf[..n], &config, &mut rng, &stats);
                }
            }
        });
    }
    Ok((address, stats))
}

fn forward(
    socket: &Arc<UdpSocket>,
    to: SocketAddr,
    data: &[u8],
    config: &RelayConfig,
    rng: &mut Rng,
    stats: &RelayStats,
) {
    if data.len() > config.mtu {
        stats.too_big.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if rng.unit() < config.loss {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut delay = config.delay;
    if rng.unit() < config.reorder {
        stats.reordered.fetch_add(1, Ordering::Relaxed);
        delay += config.reorder_extra;
    }
    if delay.is_zero() {
        let _ = socket.try_send_to(data, to);
        return;
    }
    let (socket, data) = (socket.clone(), data.to_vec());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&data, to).await;
    });
}
