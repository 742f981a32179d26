//! The channel through real `/dev/shm` mappings, in one process.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use atbus_shm::{
    Layout, OpenError, Reader, ReaderConfig, SendError, WaitStrategy, Writer, remove, remove_force,
};

/// A unique channel name, removed when dropped.
struct Name(String);

impl Name {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Name(format!(
            "atbus-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = remove_force(&self.0);
    }
}

const SMALL: Layout = Layout {
    ring_size: 4096,
    max_message: 1024,
};

fn config() -> ReaderConfig {
    ReaderConfig::default()
}

#[test]
fn messages_from_a_writer_arrive_in_order() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    for i in 0..1000u32 {
        writer.try_send(&i.to_le_bytes()).unwrap();
        let message = reader.try_recv().unwrap().expect("committed");
        assert_eq!(&*message, i.to_le_bytes());
    }
    assert!(reader.try_recv().unwrap().is_none());
    assert_eq!(reader.stats().head, reader.stats().tail);
}

#[test]
fn create_refuses_an_existing_channel_and_keeps_its_data() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    Writer::open(&name.0).unwrap().try_send(b"kept").unwrap();
    assert!(matches!(
        Reader::create(&name.0, SMALL, config()),
        Err(OpenError::AlreadyExists { .. })
    ));
    assert!(matches!(
        Reader::create(&name.0, Layout::default(), config()),
        Err(OpenError::AlreadyExists { .. })
    ));
    assert_eq!(&*reader.try_recv().unwrap().unwrap(), b"kept");
}

#[test]
fn attaching_with_another_layout_is_refused() {
    let name = Name::new();
    let reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let other = Layout {
        ring_size: 8192,
        max_message: 1024,
    };
    assert!(matches!(
        Writer::open_with_layout(&name.0, other),
        Err(OpenError::LayoutMismatch { found, .. }) if found == SMALL
    ));
    Writer::open_with_layout(&name.0, SMALL).unwrap();
    drop(reader);
    assert!(matches!(
        Reader::open_or_create(&name.0, other, config()),
        Err(OpenError::LayoutMismatch { .. })
    ));
    Reader::open_or_create(&name.0, SMALL, config()).unwrap();
}

#[test]
fn open_or_create_creates_then_attaches() {
    let name = Name::new();
    let mut reader = Reader::open_or_create(&name.0, SMALL, config()).unwrap();
    Writer::open(&name.0).unwrap().try_send(b"a").unwrap();
    drop(reader);
    reader = Reader::open_or_create(&name.0, SMALL, config()).unwrap();
    assert_eq!(&*reader.try_recv().unwrap().unwrap(), b"a");
}

#[test]
fn foreign_or_newer_files_are_refused() {
    let name = Name::new();
    drop(Reader::create(&name.0, SMALL, config()).unwrap());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{}", name.0))
        .unwrap();
    // A newer layout, and version 1 (before batch records), are both refused.
    for version in [3u64, 1] {
        file.write_at(&version.to_le_bytes(), 8).unwrap();
        assert!(matches!(
            Writer::open(&name.0),
            Err(OpenError::VersionMismatch { found, expected: 2, .. }) if found == version
        ));
    }
    file.write_at(b"NOTATBUS", 0).unwrap();
    assert!(matches!(
        Writer::open(&name.0),
        Err(OpenError::BadMagic { .. })
    ));
}

#[test]
fn an_uninitialised_file_is_reported_after_a_bounded_wait() {
    let name = Name::new();
    std::fs::write(format!("/dev/shm/{}", name.0), b"").unwrap();
    let started = Instant::now();
    assert!(matches!(
        Writer::open(&name.0),
        Err(OpenError::NotInitialized { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_names_and_missing_channels_are_reported() {
    for bad in ["", "a/b", ".x", "../etc"] {
        assert!(matches!(
            Writer::open(bad),
            Err(OpenError::InvalidName { .. })
        ));
    }
    let name = Name::new();
    assert!(matches!(
        Writer::open(&name.0),
        Err(OpenError::NotFound { .. })
    ));
    assert!(matches!(remove(&name.0), Err(OpenError::NotFound { .. })));
    assert!(matches!(
        Reader::create(
            &name.0,
            Layout {
                ring_size: 3000,
                max_message: 10
            },
            config()
        ),
        Err(OpenError::InvalidLayout { .. })
    ));
}

#[test]
fn only_one_reader_at_a_time() {
    let name = Name::new();
    let reader = Reader::create(&name.0, SMALL, config()).unwrap();
    assert!(matches!(
        Reader::open(&name.0, config()),
        Err(OpenError::ReaderAttached { .. })
    ));
    drop(reader);
    Reader::open(&name.0, config()).unwrap();
}

#[test]
fn remove_refuses_live_or_unconsumed_channels() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    assert!(matches!(
        remove(&name.0),
        Err(OpenError::ReaderAttached { .. })
    ));
    Writer::open(&name.0).unwrap().try_send(b"pending").unwrap();
    drop(reader);
    assert!(matches!(
        remove(&name.0),
        Err(OpenError::NotEmpty { pending: 16, .. })
    ));
    reader = Reader::open(&name.0, config()).unwrap();
    assert_eq!(&*reader.try_recv().unwrap().unwrap(), b"pending");
    drop(reader);
    remove(&name.0).unwrap();
    assert!(matches!(
        Writer::open(&name.0),
        Err(OpenError::NotFound { .. })
    ));
}

#[test]
fn unconsumed_message_is_redelivered_to_the_next_reader() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    writer.try_send(b"one").unwrap();
    writer.try_send(b"two").unwrap();
    assert_eq!(&*reader.try_recv().unwrap().unwrap(), b"one");
    let second = reader.try_recv().unwrap().unwrap();
    let position = second.position();
    // The reader "dies" holding the message: it was never consumed.
    std::mem::forget(second);
    drop(reader);
    let mut reader = Reader::open(&name.0, config()).unwrap();
    let again = reader.try_recv().unwrap().unwrap();
    assert_eq!((&*again, again.position()), (&b"two"[..], position));
    drop(again);
    assert!(reader.try_recv().unwrap().is_none());
}

#[test]
fn full_ring_refuses_then_times_out() {
    let name = Name::new();
    let _reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    let message = [1u8; 1016]; // 1 KiB records
    for _ in 0..4 {
        writer.try_send(&message).unwrap();
    }
    assert_eq!(writer.try_send(&message), Err(SendError::Full));
    assert_eq!(
        writer.send_timeout(&message, Duration::from_millis(20)),
        Err(SendError::Timeout)
    );
    assert!(matches!(
        writer.try_send(&[0; 1025]),
        Err(SendError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
}

#[test]
fn recv_timeout_returns_nothing_when_idle() {
    let name = Name::new();
    for wait in [
        WaitStrategy::BusyPoll,
        WaitStrategy::SpinThenSleep { spins: 10 },
    ] {
        let name = Name(format!("{}-{wait:?}", name.0).replace([' ', '{', '}', ':'], ""));
        let mut reader = Reader::create(&name.0, SMALL, ReaderConfig { wait, ..config() }).unwrap();
        let started = Instant::now();
        assert!(
            reader
                .recv_timeout(Duration::from_millis(30))
                .unwrap()
                .is_none()
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(5));
    }
}

#[test]
fn concurrent_writers_keep_per_writer_order_and_wake_a_sleeping_reader() {
    const WRITERS: u32 = 4;
    const EACH: u32 = 20_000;
    let name = Name::new();
    let config = ReaderConfig {
        wait: WaitStrategy::SpinThenSleep { spins: 1 },
        ..config()
    };
    let mut reader = Reader::create(&name.0, SMALL, config).unwrap();
    let handles: Vec<_> = (0..WRITERS)
        .map(|id| {
            let mut writer = Writer::open(&name.0).unwrap();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    let mut message = [0u8; 24];
                    message[..4].copy_from_slice(&id.to_le_bytes());
                    message[4..8].copy_from_slice(&seq.to_le_bytes());
                    writer
                        .send_timeout(&message[..8 + (seq % 16) as usize], Duration::from_secs(20))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u32; WRITERS as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().any(|&n| n < EACH) {
        assert!(Instant::now() < deadline, "stalled at {next:?}");
        let Some(message) = reader.recv_timeout(Duration::from_secs(1)).unwrap() else {
            continue;
        };
        let id = u32::from_le_bytes(message[..4].try_into().unwrap()) as usize;
        let seq = u32::from_le_bytes(message[4..8].try_into().unwrap());
        assert_eq!(seq, next[id], "writer {id} out of order");
        assert_eq!(message.len(), 8 + (seq % 16) as usize);
        next[id] += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
    let stats = reader.stats();
    assert_eq!((stats.torn_gaps, stats.expired_claims), (0, 0));
}

#[test]
fn sleeping_reader_is_woken_by_a_commit() {
    let name = Name::new();
    let config = ReaderConfig {
        wait: WaitStrategy::SpinThenSleep { spins: 10 },
        ..config()
    };
    let mut reader = Reader::create(&name.0, SMALL, config).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    let receiver = std::thread::spawn(move || {
        let started = Instant::now();
        let got = reader
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
            .map(|m| m.to_vec());
        (got, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writer.stats().reader_sleeping {
        assert!(Instant::now() < deadline, "the reader never went to sleep");
        std::thread::yield_now();
    }
    writer.try_send(b"wake up").unwrap();
    let (got, waited) = receiver.join().unwrap();
    assert_eq!(got.as_deref(), Some(&b"wake up"[..]));
    // Without the wake-up the reader would sleep until its 60 s deadline (or
    // at most the 1 s re-check of a pending record).
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

#[test]
fn batches_cross_threads_in_order_and_are_consumed_in_batches() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    const TOTAL: u32 = 20_000;
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut next, mut calls) = (0u32, 0u32);
        while next < TOTAL {
            let batch: Vec<[u8; 4]> = (next..TOTAL.min(next + 16)).map(u32::to_le_bytes).collect();
            match writer.try_send_batch(&batch) {
                Ok(sent) => {
                    next += sent as u32;
                    calls += 1;
                }
                Err(SendError::Full) => {
                    assert!(Instant::now() < deadline, "no room for 60 s");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        calls
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut expected = 0u32;
    while expected < TOTAL {
        assert!(Instant::now() < deadline, "only {expected} arrived in 60 s");
        let n = reader
            .try_recv_batch(64, |m| {
                assert_eq!(m, expected.to_le_bytes());
                expected += 1;
            })
            .unwrap();
        if n == 0 {
            std::thread::yield_now();
        }
    }
    let calls = sender.join().unwrap();
    assert!(calls < TOTAL, "batches carried several messages per claim");
    assert!(reader.try_recv().unwrap().is_none());
    // Found empty: the deferred head is published.
    assert_eq!(reader.stats().head, reader.stats().tail);
}

/// A batch taken at once is consumed at once: a reader restarted after a call
/// resumes at the first message not handed out (nothing lost, nothing twice), and
/// one that dies inside a call re-delivers exactly what that call had handed out
/// from the record it was walking.
#[test]
fn batch_receive_is_exact_across_a_reader_restart_mid_record() {
    let name = Name::new();
    let mut reader = Reader::create(&name.0, SMALL, config()).unwrap();
    let mut writer = Writer::open(&name.0).unwrap();
    let messages: Vec<[u8; 4]> = (0..10u32).map(u32::to_le_bytes).collect();
    // One batch record of ten items.
    assert_eq!(writer.try_send_batch(&messages), Ok(10));
    let mut got = Vec::new();
    let taken = reader.try_recv_batch(4, |m| got.push(m.to_vec())).unwrap();
    assert_eq!(taken, 4);
    // Restart after the call returned: the next reader starts at message 4.
    drop(reader);
    let mut reader = Reader::open(&name.0, config()).unwrap();
    // Dies inside the call after two more messages (a panic in `each`).
    let mut dying = Vec::new();
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reader.try_recv_batch(usize::MAX, |m| {
            dying.push(m.to_vec());
            assert!(dying.len() < 3, "reader dies holding its third message");
        })
    }));
    assert!(died.is_err());
    assert_eq!(dying.len(), 3);
    drop(reader);
    let mut reader = Reader::open(&name.0, config()).unwrap();
    let rest = reader
        .try_recv_batch(usize::MAX, |m| got.push(m.to_vec()))
        .unwrap();
    assert_eq!(rest, 6, "the dead call's messages come again, nothing more");
    assert_eq!(got, messages.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
    assert_eq!(
        reader.try_recv_batch(usize::MAX, |_| panic!("empty")),
        Ok(0)
    );
    assert_eq!(reader.stats().head, reader.stats().tail);
}
