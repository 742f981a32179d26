//! The shared-memory ring against a Unix stream socket, side by side: the rate of
//! 64-byte messages and the throughput of 16 KiB messages, one writer (the bench
//! thread) and a busy-polling reader thread. The socket runs twice: with one
//! `write` per message (`unix_stream`, what a per-message send costs) and with
//! writes batched up to 64 KiB (`unix_stream_batched`).
//!
//! `cargo bench -p atbus-benches --bench shm`

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atbus_shm::{Layout, Reader, ReaderConfig, SendError, WaitStrategy, Writer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A reader thread that counts what it receives.
struct Sink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn wait_for(&self, count: u64) {
        while self.received.load(Ordering::Acquire) < count {
            std::hint::spin_loop();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The shm writer, its reader thread, and the channel (removed on drop).
struct ShmPair {
    writer: Writer,
    sink: Sink,
    name: String,
}

impl ShmPair {
    fn new(tag: &str) -> Self {
        let name = format!("atbus-bench-{}-{tag}", std::process::id());
        let _ = atbus_shm::remove_force(&name);
        let config = ReaderConfig {
            wait: WaitStrategy::BusyPoll,
            ..ReaderConfig::default()
        };
        let mut reader = Reader::create(&name, Layout::default(), config).expect("create");
        let writer = Writer::open(&name).expect("open");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let wait = Duration::from_millis(10);
                    if let Some(message) = reader.recv_timeout(wait).expect("recv") {
                        black_box(message[0]);
                        count += 1;
                        received.store(count, Ordering::Release);
                    }
                }
            })
        };
        Self {
            writer,
            sink: Sink {
                received,
                stop,
                thread: Some(thread),
            },
            name,
        }
    }

    fn run(&mut self, message: &[u8], iters: u64) -> Duration {
        let target = self.sink.received.load(Ordering::Acquire) + iters;
        let start = Instant::now();
        for _ in 0..iters {
            let mut spins = 0u32;
            loop {
                match self.writer.try_send(black_box(message)) {
                    Ok(_) => break,
                    // Full: let the reader have the core if it shares ours.
                    Err(SendError::Full) if spins % 64 == 63 => std::thread::yield_now(),
                    Err(SendError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
                spins += 1;
            }
        }
        self.sink.wait_for(target);
        start.elapsed()
    }
}

impl Drop for ShmPair {
    fn drop(&mut self) {
        self.sink.stop.store(true, Ordering::Release);
        if let Some(t) = self.sink.thread.take() {
            let _ = t.join();
        }
        let _ = atbus_shm::remove_force(&self.name);
    }
}

/// A Unix stream socket pair carrying `u32`-length-prefixed messages; the writer
/// batches up to `batch_limit` bytes per `write` (0: one `write` per message), the
/// reader reads 256 KiB at a time.
struct UnixPair {
    stream: UnixStream,
    batch: Vec<u8>,
    batch_limit: usize,
    sink: Sink,
}

impl UnixPair {
    fn new(batch_limit: usize) -> Self {
        let (stream, mut peer) = UnixStream::pair().expect("socketpair");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        peer.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                let (mut filled, mut count) = (0usize, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let n = match peer.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(_) => continue, // read timeout: check `stop`
                    };
                    filled += n;
                    let mut at = 0;
                    while filled - at >= 4 {
                        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                        if filled - at < 4 + len {
                            break;
                        }
                        black_box(buf[at + 4]);
                        at += 4 + len;
                        count += 1;
                    }
                    buf.copy_within(at..filled, 0);
                    filled -= at;
                    received.store(count, Ordering::Release);
                }
            })
        };
        Self {
            stream,
            batch: Vec::with_capacity(128 << 10),
            batch_limit,
            sink: Sink {
                received,
                stop,
                thread: Some(thread),
            },
        }
    }

    fn run(&mut self, message: &[u8], iters: u64) -> Duration {
        let target = self.sink.received.load(Ordering::Acquire) + iters;
        let start = Instant::now();
        for _ in 0..iters {
            self.batch
                .extend_from_slice(&(message.len() as u32).to_le_bytes());
            self.batch.extend_from_slice(black_box(message));
            if self.batch.len() >= self.batch_limit {
                self.stream.write_all(&self.batch).expect("write");
                self.batch.clear();
            }
        }
        if !self.batch.is_empty() {
            self.stream.write_all(&self.batch).expect("write");
            self.batch.clear();
        }
        self.sink.wait_for(target);
        start.elapsed()
    }
}

/// Send then receive on one thread, in bursts of 64: the protocol's own cost,
/// without cross-core cache traffic or scheduling.
fn shm_same_thread(c: &mut Criterion) {
    let name = format!("atbus-bench-{}-same-thread", std::process::id());
    let _ = atbus_shm::remove_force(&name);
    let mut reader =
        Reader::create(&name, Layout::default(), ReaderConfig::default()).expect("create");
    let mut writer = Writer::open(&name).expect("open");
    let message = [0x5au8; 64];
    let mut group = c.benchmark_group("message_64B");
    group.throughput(Throughput::Elements(64));
    group.bench_function("shm_same_thread_burst64", |b| {
        b.iter(|| {
            for _ in 0..64 {
                writer.try_send(black_box(&message)).expect("room");
            }
            for _ in 0..64 {
                let m = reader.try_recv().expect("recv").expect("committed");
                black_box(m[0]);
            }
        })
    });
    group.finish();
    drop(reader);
    let _ = atbus_shm::remove_force(&name);
}

fn shm_vs_unix(c: &mut Criterion) {
    for (label, size) in [("64B", 64usize), ("16KiB", 16 << 10)] {
        let message = vec![0xa5u8; size];
        let mut group = c.benchmark_group(format!("message_{label}"));
        group.throughput(if size == 64 {
            Throughput::Elements(1)
        } else {
            Throughput::Bytes(size as u64)
        });
        let mut shm = ShmPair::new(label);
        group.bench_function("shm_busy_poll", |b| {
            b.iter_custom(|iters| shm.run(&message, iters))
        });
        drop(shm);
        for (label, batch_limit) in [("unix_stream_batched", 64 << 10), ("unix_stream", 0)] {
            let mut unix = UnixPair::new(batch_limit);
            group.bench_function(label, |b| b.iter_custom(|iters| unix.run(&message, iters)));
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = shm_same_thread, shm_vs_unix
}
criterion_main!(benches);
