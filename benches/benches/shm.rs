//! The shared-memory ring against a Unix stream socket, side by side: the rate of
//! 64-byte messages and the throughput of 16 KiB messages, one writer (the bench
//! thread) and a busy-polling reader thread. Like is compared with like:
//! - per message: `shm_busy_poll` (one `try_send` and one `recv` per message)
//!   against `unix_stream` (one `write` per message);
//! - batched: `shm_batched` (`try_send_batch` of up to 64 KiB of messages: batch
//!   records of up to 910 items of 64 B, each claimed, written and committed once;
//!   the reader takes them item by item with `try_recv_batch`) against
//!   `unix_stream_batched` (writes of up to 64 KiB).
//!
//! After the criterion groups the bench prints a summary table: the median of
//! the samples measured here, the ratio shm / socket, and the first-generation
//! libatbus figures for reference (5.25 M msg/s at small sizes, 1.56 GB/s at
//! large ones, on 2016 hardware; not measured here).
//!
//! `cargo bench -p atbus-benches --bench shm`

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Bytes of messages per batch on the batched paths (shm and socket alike).
const BATCH_BYTES: usize = 64 << 10;

/// The shm writer, its reader thread, and the channel (removed on drop).
struct ShmPair {
    writer: Writer,
    sink: Sink,
    name: String,
    batched: bool,
}

/// The batched reader: consumes everything committed, spins (and now and then
/// yields the core) while the ring is empty.
fn batched_reader(mut reader: Reader, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let (mut count, mut idle) = (0u64, 0u32);
    while !stop.load(Ordering::Relaxed) {
        let n = reader
            .try_recv_batch(4096, |message| {
                black_box(message[0]);
            })
            .expect("recv");
        if n == 0 {
            idle = idle.wrapping_add(1);
            if idle % 256 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        count += n as u64;
        received.store(count, Ordering::Release);
    }
}

/// The rings' layout: the default (8 MiB ring), or a ring of
/// `ATBUS_BENCH_RING` bytes (a power of two) to see the effect of the ring
/// fitting in the caches.
fn bench_layout() -> Layout {
    let mut layout = Layout::default();
    if let Some(ring) = std::env::var("ATBUS_BENCH_RING")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        layout.ring_size = ring;
    }
    layout
}

impl ShmPair {
    fn new(tag: &str, batched: bool) -> Self {
        let name = format!("atbus-bench-{}-{tag}", std::process::id());
        let _ = atbus_shm::remove_force(&name);
        let config = ReaderConfig {
            wait: WaitStrategy::BusyPoll,
            ..ReaderConfig::default()
        };
        let mut reader = Reader::create(&name, bench_layout(), config).expect("create");
        let writer = Writer::open(&name).expect("open");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                if batched {
                    return batched_reader(reader, received, stop);
                }
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
            batched,
        }
    }

    fn run(&mut self, message: &[u8], iters: u64) -> Duration {
        let target = self.sink.received.load(Ordering::Acquire) + iters;
        let per_batch = if self.batched {
            (BATCH_BYTES / (message.len() + 4)).max(1)
        } else {
            1
        };
        let batch = vec![message; per_batch];
        let start = Instant::now();
        let mut left = iters as usize;
        while left > 0 {
            let mut spins = 0u32;
            let want = &batch[..left.min(per_batch)];
            let sent = loop {
                let sent = if self.batched {
                    self.writer.try_send_batch(black_box(want))
                } else {
                    self.writer.try_send(black_box(want[0])).map(|_| 1)
                };
                match sent {
                    Ok(n) => break n,
                    // Full: let the reader have the core if it shares ours.
                    Err(SendError::Full) if spins % 64 == 63 => std::thread::yield_now(),
                    Err(SendError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
                spins += 1;
            };
            left -= sent;
        }
        self.sink.wait_for(target);
        start.elapsed()
    }
}

/// Criterion samples per benchmark.
const SAMPLE_SIZE: usize = 20;

/// Every sample measured, per (group, bench): (iterations, elapsed).
static SAMPLES: Mutex<Vec<(String, &'static str, u64, Duration)>> = Mutex::new(Vec::new());

/// Runs `run` and records the sample for the summary.
fn recorded(
    group: &str,
    bench: &'static str,
    iters: u64,
    run: impl FnOnce(u64) -> Duration,
) -> Duration {
    let elapsed = run(iters);
    SAMPLES
        .lock()
        .expect("samples")
        .push((group.to_owned(), bench, iters, elapsed));
    elapsed
}

/// The median rate (per second) of the samples of `group`/`bench`, in units of
/// messages (`bytes == 1`) or bytes (`bytes == size`).
fn median_rate(group: &str, bench: &str, unit: f64) -> Option<f64> {
    let samples = SAMPLES.lock().expect("samples");
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|(g, b, _, e)| g == group && *b == bench && !e.is_zero())
        .map(|(_, _, iters, e)| *iters as f64 * unit / e.as_secs_f64())
        .collect();
    // Criterion's warm-up calls come first; the last SAMPLE_SIZE are the samples.
    let warm_up = rates.len().saturating_sub(SAMPLE_SIZE);
    let rates = &mut rates[warm_up..];
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    Some(rates[rates.len() / 2])
}

/// Prints the side-by-side table of the medians measured in this run.
fn summary(_: &mut Criterion) {
    println!(
        "\nshm vs Unix stream socket, medians of this run (reference: libatbus gen 1, 2016 hardware):"
    );
    for (group, unit, scale, name, reference) in [
        ("message_64B", 1.0, 1e6, "M msg/s", "5.25 M msg/s"),
        ("message_16KiB", 16384.0, 1e9, "GB/s", "1.56 GB/s"),
    ] {
        for (mode, shm, unix) in [
            ("per message", "shm_busy_poll", "unix_stream"),
            ("batched", "shm_batched", "unix_stream_batched"),
        ] {
            let (Some(s), Some(u)) = (
                median_rate(group, shm, unit),
                median_rate(group, unix, unit),
            ) else {
                continue;
            };
            println!(
                "  {group:14} {mode:12} shm {:8.3} {name}  unix {:8.3} {name}  shm/unix {:6.2}x  (libatbus: {reference})",
                s / scale,
                u / scale,
                s / u
            );
        }
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
        Reader::create(&name, bench_layout(), ReaderConfig::default()).expect("create");
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
    // The batched path's own cost: one `try_send_batch` of 1024 messages (two
    // batch records), then `try_recv_batch` of them.
    let batch = vec![message; 1024];
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("shm_same_thread_batch1024", |b| {
        b.iter(|| {
            let mut sent = 0;
            while sent < batch.len() {
                sent += writer
                    .try_send_batch(black_box(&batch[sent..]))
                    .expect("room");
            }
            let mut sum = 0u64;
            let got = reader
                .try_recv_batch(usize::MAX, |m| sum += u64::from(m[0]))
                .expect("recv");
            assert_eq!(got, batch.len());
            black_box(sum);
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
        let group_name = format!("message_{label}");
        for (bench, batched) in [("shm_busy_poll", false), ("shm_batched", true)] {
            let mut shm = ShmPair::new(&format!("{label}-{batched}"), batched);
            group.bench_function(bench, |b| {
                b.iter_custom(|iters| recorded(&group_name, bench, iters, |n| shm.run(&message, n)))
            });
        }
        for (bench, batch_limit) in [("unix_stream_batched", BATCH_BYTES), ("unix_stream", 0)] {
            let mut unix = UnixPair::new(batch_limit);
            group.bench_function(bench, |b| {
                b.iter_custom(|iters| {
                    recorded(&group_name, bench, iters, |n| unix.run(&message, n))
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = shm_same_thread, shm_vs_unix, summary
}
criterion_main!(benches);
