//! Processes killed with SIGKILL at seeded points: writers mid-record and at
//! random moments, the reader at random moments (then restarted). Every
//! committed message must arrive exactly once, in per-writer order, except that
//! what a reader held when it was killed may be delivered once more: one
//! message (`recv_timeout`), or the messages the killed `try_recv_batch` call had
//! handed out from its current record (odd incarnations receive in batches).
//!
//! The test binary re-runs itself as the child processes (`child_process` with
//! the `ATBUS_SHM_CHILD` environment variable). Set `ATBUS_SHM_CRASH_SEED` to
//! replay another plan.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use atbus_shm::{AbandonAt, Layout, Reader, ReaderConfig, SendError, WaitStrategy, Writer};

const CHILD_ENV: &str = "ATBUS_SHM_CHILD";
const WRITERS: u32 = 4;
const PER_WRITER: u32 = 2000;
// Well above any pause a live writer takes on a loaded 2-core CI machine (a writer
// paused longer mid-copy is the documented hazard, not a bug).
const SKIP_TIMEOUT: Duration = Duration::from_secs(1);
const LAYOUT: Layout = Layout {
    ring_size: 64 << 10,
    max_message: 1024,
};

fn message(id: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + 200);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.resize(8 + (seq as usize * 7 % 200), (seq % 251) as u8);
    m
}

fn reader_config() -> ReaderConfig {
    ReaderConfig {
        skip_timeout: SKIP_TIMEOUT,
        wait: WaitStrategy::SpinThenSleep { spins: 100 },
    }
}

/// The entry point of the child processes; a no-op in the normal test run.
#[test]
fn child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<&str> = spec.split('\t').collect();
    let code = match args[0] {
        "writer" => run_writer(&args[1..]),
        "reader" => run_reader(&args[1..]),
        _ => 64,
    };
    std::process::exit(code);
}

/// `writer NAME ID CRASH_AT STAGE PROGRESS EXPIRED`
fn run_writer(args: &[&str]) -> i32 {
    let (name, id) = (args[0], args[1].parse::<u32>().unwrap());
    let crash_at: u32 = args[2].parse().unwrap();
    let stage = match args[3] {
        "claim" => Some(AbandonAt::AfterClaim),
        "stamp" => Some(AbandonAt::AfterStamp),
        _ => None,
    };
    let progress = OpenOptions::new().write(true).open(args[4]).unwrap();
    let mut expired = OpenOptions::new().append(true).open(args[5]).unwrap();
    let mut writer = Writer::open(name).unwrap();
    if args[3] == "batch" {
        return run_batch_writer(id, &mut writer, &progress, &mut expired);
    }
    for seq in 0..PER_WRITER {
        let m = message(id, seq);
        if seq == crash_at {
            if let Some(stage) = stage {
                let deadline = Instant::now() + Duration::from_secs(30);
                // Wait (bounded) for room, as `send_timeout` would.
                while let Err(e) = writer.abandon_record(m.len(), stage) {
                    assert!(e == SendError::Full && Instant::now() < deadline, "{e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                let me = rustix::process::getpid();
                let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            }
        }
        match writer.send_timeout(&m, Duration::from_secs(30)) {
            Ok(_) => progress.write_all_at(&(seq + 1).to_le_bytes(), 0).unwrap(),
            Err(SendError::Expired { .. }) => expired.write_all(&seq.to_le_bytes()).unwrap(),
            Err(e) => panic!("writer {id}: {e}"),
        }
    }
    0
}

/// Messages per `try_send_batch` of the batch writers.
const BATCH: u32 = 8;

/// Sends this writer's messages in batches of up to [`BATCH`] (one claim each);
/// the progress file counts the messages committed when a call returned.
fn run_batch_writer(id: u32, writer: &mut Writer, progress: &File, expired: &mut File) -> i32 {
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seq < PER_WRITER {
        let batch: Vec<Vec<u8>> = (seq..PER_WRITER.min(seq + BATCH))
            .map(|s| message(id, s))
            .collect();
        match writer.try_send_batch(&batch) {
            Ok(sent) => seq += sent as u32,
            Err(SendError::Full) => {
                assert!(Instant::now() < deadline, "writer {id}: no room for 60 s");
                std::thread::yield_now();
                continue;
            }
            Err(SendError::Expired { .. }) => {
                expired.write_all(&seq.to_le_bytes()).unwrap();
                seq += 1;
            }
            Err(e) => panic!("writer {id}: {e}"),
        }
        progress.write_all_at(&seq.to_le_bytes(), 0).unwrap();
    }
    0
}

/// `reader NAME LOG DONE`
/// At most this many messages per `try_recv_batch` call of a batch reader.
const BATCH_RECV: usize = 16;

fn run_reader(args: &[&str]) -> i32 {
    let (name, done) = (args[0], Path::new(args[2]));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(args[1])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reader = loop {
        match Reader::open(name, reader_config()) {
            Ok(r) => break r,
            // The killed predecessor's lock goes with its process.
            Err(atbus_shm::OpenError::ReaderAttached { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let batched = args[3] == "batch";
    while Instant::now() < deadline {
        if batched {
            // Logged inside the call: a kill before it returns re-delivers what
            // it had handed out from its current record.
            let taken = reader
                .try_recv_batch(BATCH_RECV, |m| log.write_all(&m[..8]).unwrap())
                .unwrap();
            if taken > 0 {
                continue;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Logged before the guard is dropped: a kill in between re-delivers.
        else if let Some(m) = reader.recv_timeout(Duration::from_millis(20)).unwrap() {
            log.write_all(&m[..8]).unwrap();
            continue;
        }
        let stats = reader.stats();
        if done.exists() && stats.head == stats.tail {
            return 0;
        }
    }
    2
}

/// A seeded xorshift generator: the kill plan is a function of the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(spec: &[&str]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.join("\t"))
        .spawn()
        .unwrap()
}

fn entries(path: &Path) -> Vec<(u32, u32)> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().unwrap()),
                u32::from_le_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect()
}

/// A child process, killed and reaped if the test fails early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

struct Scratch {
    dir: PathBuf,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = atbus_shm::remove_force(&self.name);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn killed_writers_and_reader_lose_and_duplicate_nothing() {
    let seed = std::env::var("ATBUS_SHM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_a7b5_u64);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1) | 1);
    let tag = format!("atbus-crash-{}", std::process::id());
    let scratch = Scratch {
        dir: std::env::temp_dir().join(&tag),
        name: tag,
    };
    std::fs::create_dir_all(&scratch.dir).unwrap();
    let path = |f: String| scratch.dir.join(f).to_string_lossy().into_owned();
    drop(Reader::create(&scratch.name, LAYOUT, reader_config()).unwrap());

    // The plan: writer 0 dies after claiming, writer 1 after stamping, writer 2 is
    // killed by us, writer 3 survives; the reader is killed twice. Writers 2 and 3
    // send in batches (one claim for up to BATCH records): the kill of writer 2
    // lands mid-batch or between batches.
    let plan_crash = |rng: &mut Rng| 200 + rng.below(u64::from(PER_WRITER) - 400) as u32;
    let crash_at = [plan_crash(&mut rng), plan_crash(&mut rng)];
    let total = u64::from(WRITERS * PER_WRITER);
    let kill_writer2_at = total / 8 + rng.below(total / 4);
    let mut reader_kills = [
        total / 10 + rng.below(total / 3),
        total / 2 + rng.below(total / 3),
    ];
    reader_kills.sort();
    eprintln!(
        "seed {seed:#x}: crash_at {crash_at:?}, writer 2 killed at {kill_writer2_at}, reader killed at {reader_kills:?}"
    );

    let mut writers: Vec<Option<Reaped>> = (0..WRITERS)
        .map(|id| {
            let (crash, stage) = match id {
                0 => (crash_at[0], "claim"),
                1 => (crash_at[1], "stamp"),
                _ => (u32::MAX, "batch"),
            };
            File::create(path(format!("progress.{id}"))).unwrap();
            File::create(path(format!("expired.{id}"))).unwrap();
            Some(Reaped(spawn(&[
                "writer",
                &scratch.name,
                &id.to_string(),
                &crash.to_string(),
                stage,
                &path(format!("progress.{id}")),
                &path(format!("expired.{id}")),
            ])))
        })
        .collect();
    let done = path("done".into());
    let spawn_reader = |k: usize| {
        let mode = if k % 2 == 1 { "batch" } else { "single" };
        spawn(&[
            "reader",
            &scratch.name,
            &path(format!("log.{k}")),
            &done,
            mode,
        ])
    };
    let mut incarnation = 0;
    let mut reader = Reaped(spawn_reader(incarnation));
    let mut next_reader_kill = 0;
    let mut writer2_killed = false;

    let received = |upto: usize| -> u64 {
        (0..=upto)
            .map(|k| std::fs::metadata(path(format!("log.{k}"))).map_or(0, |m| m.len() / 8))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "crash test timed out");
        let got = received(incarnation);
        if !writer2_killed && got >= kill_writer2_at {
            if let Some(mut w) = writers[2].take() {
                let _ = w.0.kill();
                let _ = w.0.wait();
            }
            writer2_killed = true;
        }
        let writers_done = writers.iter().all(Option::is_none);
        if next_reader_kill < reader_kills.len()
            && (got >= reader_kills[next_reader_kill] || writers_done)
        {
            let _ = reader.0.kill();
            let _ = reader.0.wait();
            incarnation += 1;
            next_reader_kill += 1;
            reader = Reaped(spawn_reader(incarnation));
        }
        for w in writers.iter_mut() {
            if let Some(child) = w {
                if let Some(status) = child.0.try_wait().unwrap() {
                    // Writers 0 and 1 kill themselves; the others must succeed.
                    assert!(status.success() || status.code().is_none(), "{status}");
                    *w = None;
                }
            }
        }
        if writers.iter().all(Option::is_none) && next_reader_kill == reader_kills.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    File::create(&done).unwrap();
    let status = loop {
        assert!(Instant::now() < deadline, "reader did not drain in time");
        if let Some(status) = reader.0.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(status.success(), "reader: {status}");

    // Concatenate the incarnations' logs; an incarnation may begin by repeating
    // the end of its predecessor's log: the message (or, for a batch reader, up
    // to `BATCH_RECV` messages of one call) it held when it was killed.
    let mut all: Vec<(u32, u32)> = Vec::new();
    let mut redelivered = 0;
    for k in 0..=incarnation {
        let log = entries(Path::new(&path(format!("log.{k}"))));
        let held = if k % 2 == 0 { BATCH_RECV } else { 1 };
        let skip = (0..=held.min(log.len()).min(all.len()))
            .rev()
            .find(|&n| log[..n] == all[all.len() - n..])
            .unwrap_or(0);
        redelivered += skip;
        all.extend_from_slice(&log[skip..]);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a message was delivered twice");

    let stats = Writer::open(&scratch.name).unwrap().stats();
    eprintln!(
        "{} messages, {redelivered} re-delivered after a reader kill, {stats:?}",
        all.len()
    );
    for id in 0..WRITERS {
        let seqs: Vec<u32> = all.iter().filter(|e| e.0 == id).map(|e| e.1).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "writer {id} out of order"
        );
        let progress = std::fs::read(path(format!("progress.{id}"))).unwrap();
        let committed = if progress.len() >= 4 {
            u32::from_le_bytes(progress[..4].try_into().unwrap())
        } else {
            0
        };
        let expired: HashSet<u32> = std::fs::read(path(format!("expired.{id}")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got: HashSet<u32> = seqs.iter().copied().collect();
        for seq in 0..committed {
            assert!(
                got.contains(&seq) || expired.contains(&seq),
                "writer {id}: committed message {seq} lost"
            );
        }
        // At most the ones in flight when the writer was killed (one message, or
        // one batch) are beyond its log.
        let in_flight = if id >= 2 { BATCH } else { 1 };
        assert!(
            seqs.iter().all(|&s| s < committed + in_flight),
            "writer {id}: phantom message"
        );
        match id {
            0 | 1 => assert_eq!(committed, crash_at[id as usize], "writer {id} crash point"),
            3 => assert_eq!(committed, PER_WRITER),
            _ => {}
        }
    }
    assert!(
        stats.torn_gaps >= 1,
        "writer 0's unstamped claim was skipped"
    );
    assert!(
        stats.expired_claims >= 1,
        "writer 1's stamped claim was skipped"
    );
}
