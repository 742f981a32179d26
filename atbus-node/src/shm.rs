//! The `shm://name` transport: reliable byte-stream connections over
//! [`atbus_shm`] rings, runtime-independent (plain threads, no runtime calls).
//!
//! - The listener creates ring `name` and is its only reader; it carries only
//!   hellos (`ATBUS-SHM1 <pid> <session>`).
//! - A connector creates two rings of its own, `name.<session>.l` (to the listener)
//!   and `name.<session>.c` (to the connector), then writes its hello on `name`.
//!   The listener opens them and the connection is a byte stream in each
//!   direction: records carry the core's stream bytes in order (a transmit longer
//!   than the ring's `max_message` is split; the core's stream decoder reassembles
//!   frames), so the core sees it as [`ConnectionKind::Stream`](atbus_core::ConnectionKind):
//!   no retransmits, since a committed record is delivered once and in order.
//! - Each ring has one dedicated reader thread (spin, then futex sleep) that hands
//!   every batch of records to the driver through the channel the socket tasks
//!   use, and one writer thread that takes the driver's bytes from the bounded
//!   write queue and sends them with [`Writer::try_send_batch`], backing off while
//!   the ring is full (back-pressure: the queue fills, then the core's window).
//! - The first record of each connection ring is the writer's hello
//!   (`ATBUS-SHM1 <pid>`), so each side knows the other's process; an empty record
//!   is a clean end. The reader thread checks every second that the peer process
//!   is alive: a peer killed with SIGKILL ends the connection within a second.
//! - Both sides remove both connection rings when the connection ends (missing
//!   files are ignored); the listener removes its ring when the node closes.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atbus_shm::{Layout, Reader, ReaderConfig, SendError, WaitStrategy, Writer};
use bytes::Bytes;

use crate::runtime::Runtime;
use crate::tasks::NetInput;

/// The first bytes of every hello record.
const HELLO: &str = "ATBUS-SHM1";
/// How long a reader thread waits for a record before it looks at its stop
/// signal and the peer's liveness again.
const READ_WAIT: Duration = Duration::from_millis(20);
/// How often the peer process's liveness is checked.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
/// Records taken from a ring per batch.
const BATCH: usize = 256;

/// The two rings of a connection and the ends this side holds. A link dropped
/// before its connection started ([`spawn_connection`]) removes both rings: a
/// re-dial result or an accept the driver gives up on leaves no file behind.
pub(crate) struct ShmLink {
    /// This side's reader and writer, until the connection's threads take them.
    ends: Option<(Reader, Writer)>,
    /// The peer's process, once known (from a hello).
    peer_pid: Option<u32>,
    /// Both rings of the connection, removed when it ends.
    rings: [String; 2],
    /// A description of the remote end.
    pub(crate) remote: String,
}

impl ShmLink {
    /// The files of both rings (for removal when the node closes).
    pub(crate) fn ring_paths(&self) -> Vec<PathBuf> {
        self.rings
            .iter()
            .filter_map(|r| atbus_shm::mapping::channel_path(r).ok())
            .collect()
    }
}

#[cfg(feature = "testing")]
impl ShmLink {
    /// The name of the ring this side writes to.
    pub(crate) fn outgoing_ring(&self) -> &str {
        &self.rings[0]
    }
}

impl Drop for ShmLink {
    fn drop(&mut self) {
        if self.ends.is_some() {
            remove_rings(&self.rings);
        }
    }
}

fn remove_rings(rings: &[String]) {
    for ring in rings {
        let _ = atbus_shm::remove_force(ring);
    }
}

pub(crate) fn reader_config() -> ReaderConfig {
    ReaderConfig {
        wait: WaitStrategy::SpinThenSleep { spins: 2000 },
        ..ReaderConfig::default()
    }
}

fn io_error(err: atbus_shm::OpenError) -> io::Error {
    match err {
        atbus_shm::OpenError::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        atbus_shm::OpenError::ReaderAttached { .. }
        | atbus_shm::OpenError::AlreadyExists { .. } => {
            io::Error::new(io::ErrorKind::AddrInUse, err)
        }
        other => io::Error::other(other),
    }
}

/// The rings of session `session` of listener `name`: (to the listener, to the
/// connector).
fn ring_names(name: &str, session: u64) -> (String, String) {
    (
        format!("{name}.{session:016x}.l"),
        format!("{name}.{session:016x}.c"),
    )
}

/// The path of ring `name` (for removal when the node closes).
pub(crate) fn ring_path(name: &str) -> Option<PathBuf> {
    atbus_shm::mapping::channel_path(name).ok()
}

/// Creates (or takes over, if its reader is gone) the listener ring `name`.
pub(crate) fn bind(name: &str) -> io::Result<Reader> {
    Reader::open_or_create(name, Layout::default(), reader_config()).map_err(io_error)
}

/// Opens a connection to listener `name`: creates the connection's rings and
/// writes the hello on the listener's ring.
pub(crate) fn dial(name: &str) -> io::Result<ShmLink> {
    let mut listener = Writer::open(name).map_err(io_error)?;
    let layout = listener.layout();
    let session = crate::config::random_session_id();
    let (to_listener, to_us) = ring_names(name, session);
    let reader = Reader::create(&to_us, layout, reader_config()).map_err(io_error)?;
    let rings = [to_listener.clone(), to_us];
    let opened = Reader::create(&to_listener, layout, reader_config())
        .map(drop)
        .and_then(|()| Writer::open(&to_listener))
        .map_err(io_error);
    let writer = match opened {
        Ok(writer) => writer,
        Err(err) => {
            remove_rings(&rings);
            return Err(err);
        }
    };
    let hello = format!("{HELLO} {} {session:016x}", std::process::id());
    if let Err(err) = listener.try_send(hello.as_bytes()) {
        remove_rings(&rings);
        return Err(io::Error::new(io::ErrorKind::WouldBlock, err));
    }
    Ok(ShmLink {
        ends: Some((reader, writer)),
        peer_pid: None,
        rings,
        remote: format!("shm://{name}"),
    })
}

/// Parses a listener hello: (pid, session).
fn parse_listener_hello(record: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(record).ok()?;
    let mut words = text.split(' ');
    if words.next()? != HELLO {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    let session = u64::from_str_radix(words.next()?, 16).ok()?;
    words.next().is_none().then_some((pid, session))
}

/// Parses a connection hello: the writer's pid.
fn parse_connection_hello(record: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(record).ok()?;
    text.strip_prefix(HELLO)?.strip_prefix(' ')?.parse().ok()
}

fn accept(name: &str, pid: u32, session: u64) -> Result<ShmLink, atbus_shm::OpenError> {
    let (to_us, to_peer) = ring_names(name, session);
    let reader = Reader::open(&to_us, reader_config())?;
    let writer = Writer::open(&to_peer)?;
    Ok(ShmLink {
        ends: Some((reader, writer)),
        peer_pid: Some(pid),
        rings: [to_us, to_peer],
        remote: format!("shm://{name}#{pid}"),
    })
}

/// Runs the listener ring's reader thread: every valid hello from a live process
/// becomes an accepted connection ([`NetInput::ShmAccepted`]). Ends when `stop`
/// is closed.
pub(crate) fn spawn_listener<R: Runtime>(
    mut reader: Reader,
    name: String,
    net: async_channel::Sender<NetInput<R>>,
    stop: async_channel::Receiver<()>,
) -> io::Result<()> {
    let run = move || {
        let mut hellos: Vec<Vec<u8>> = Vec::new();
        while !stop.is_closed() {
            hellos.clear();
            match reader.recv_timeout(READ_WAIT) {
                Ok(Some(record)) => hellos.push(record.to_vec()),
                Ok(None) => continue,
                // Overwritten by something else: the listener cannot go on.
                Err(_) => return,
            }
            if reader
                .try_recv_batch(BATCH, |r| hellos.push(r.to_vec()))
                .is_err()
            {
                return;
            }
            for hello in &hellos {
                // Malformed hellos, and hellos of processes gone since, are dropped.
                let Some((pid, session)) = parse_listener_hello(hello) else {
                    continue;
                };
                if !atbus_shm::mapping::process_alive(pid) {
                    continue;
                }
                let Ok(link) = accept(&name, pid, session) else {
                    continue;
                };
                // A link the driver cannot take is dropped: that removes its rings.
                if net.send_blocking(NetInput::ShmAccepted { link }).is_err() {
                    return;
                }
            }
        }
    };
    std::thread::Builder::new()
        .name("atbus-shm-listen".into())
        .spawn(run)
        .map(drop)
}

/// Starts the threads of a connection: the reader hands the peer's bytes to the
/// driver as stream `handle`; the writer sends what the driver queues, and holds
/// `writing` until it has written the end record (or given up).
pub(crate) fn spawn_connection<R: Runtime>(
    link: ShmLink,
    handle: u64,
    net: async_channel::Sender<NetInput<R>>,
    budget: Arc<crate::budget::InputBudget>,
    stop: async_channel::Receiver<()>,
    queue: async_channel::Receiver<Bytes>,
    writing: Option<async_channel::Sender<()>>,
) -> io::Result<()> {
    let mut link = link;
    let Some((reader, writer)) = link.ends.take() else {
        return Err(io::Error::other("the shm link is already in use"));
    };
    let (peer_pid, rings) = (link.peer_pid, link.rings.clone());
    let alive = Arc::new(AtomicBool::new(true));
    let writer_alive = alive.clone();
    let reader_alive = alive.clone();
    let ring_names = rings.clone();
    let spawned = std::thread::Builder::new()
        .name("atbus-shm-write".into())
        .spawn(move || {
            write_loop(writer, queue, &writer_alive);
            // The node's close waits for this (bounded): the end record and the
            // connection's last frames are in the ring before it answers.
            drop(writing);
        })
        .and_then(|_| {
            std::thread::Builder::new()
                .name("atbus-shm-read".into())
                .spawn(move || {
                    read_loop(
                        reader,
                        peer_pid,
                        &rings,
                        handle,
                        (&net, &budget),
                        &stop,
                        &reader_alive,
                    );
                })
        });
    if spawned.is_err() {
        // No reader will end the connection: stop the writer (if it started) and
        // remove the rings here.
        alive.store(false, Ordering::Release);
        remove_rings(&ring_names);
    }
    spawned.map(drop)
}

fn read_loop<R: Runtime>(
    mut reader: Reader,
    mut peer_pid: Option<u32>,
    rings: &[String; 2],
    handle: u64,
    (net, budget): (
        &async_channel::Sender<NetInput<R>>,
        &crate::budget::InputBudget,
    ),
    stop: &async_channel::Receiver<()>,
    alive: &AtomicBool,
) {
    let mut hello_seen = false;
    let mut checked = Instant::now();
    let mut data: Vec<u8> = Vec::new();
    let mut ended = false;
    while !stop.is_closed() {
        let mut take = |record: &[u8]| {
            if ended {
                // Nothing follows an end record; a later one would be garbage.
            } else if !hello_seen {
                hello_seen = true;
                peer_pid = parse_connection_hello(record).or(peer_pid);
            } else if record.is_empty() {
                ended = true;
            } else {
                data.extend_from_slice(record);
            }
        };
        // While the driver is behind, the records stay in the ring and the peer's
        // writer backs up.
        if !budget.room_blocking(stop) {
            break;
        }
        let first = match reader.recv_timeout(READ_WAIT) {
            Ok(Some(record)) => {
                take(&record);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(err) => Err(err),
        };
        let polled = match first {
            Ok(true) => reader.try_recv_batch(BATCH, take).map(drop),
            Ok(false) => Ok(()),
            Err(err) => Err(err),
        };
        if !data.is_empty() {
            let batch = Bytes::from(std::mem::take(&mut data));
            budget.add(batch.len());
            if net
                .send_blocking(NetInput::StreamData {
                    handle,
                    data: batch,
                })
                .is_err()
            {
                break;
            }
        }
        let peer_gone = checked.elapsed() >= LIVENESS_EVERY && {
            checked = Instant::now();
            peer_pid.is_some_and(|pid| !atbus_shm::mapping::process_alive(pid))
        };
        if ended || peer_gone || polled.is_err() {
            let _ = net.send_blocking(NetInput::StreamEnded { handle });
            break;
        }
    }
    alive.store(false, Ordering::Release);
    drop(reader);
    remove_rings(rings);
}

fn write_loop(mut writer: Writer, queue: async_channel::Receiver<Bytes>, alive: &AtomicBool) {
    let max = writer.layout().max_message as usize;
    let hello = format!("{HELLO} {}", std::process::id());
    if !send_all(&mut writer, &[hello.as_bytes()], alive) {
        return;
    }
    let mut batch: Vec<Bytes> = Vec::new();
    while let Ok(first) = queue.recv_blocking() {
        batch.clear();
        push_split(&mut batch, first, max);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(more) => push_split(&mut batch, more, max),
                Err(_) => break,
            }
        }
        if !send_all(&mut writer, &batch, alive) {
            return;
        }
    }
    // The driver dropped the queue: the connection is over; an empty record says
    // so (a peer that sees no end record relies on the liveness check).
    let _ = send_all(&mut writer, &[&[][..]], alive);
}

/// Appends `data` in pieces of at most `max` bytes (empty transmits are dropped:
/// an empty record means "end").
fn push_split(batch: &mut Vec<Bytes>, mut data: Bytes, max: usize) {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(max));
        batch.push(piece);
    }
}

/// Sends every record, waiting while the ring is full; false if the connection
/// is over (the reader side stopped, or a record was lost).
fn send_all<M: AsRef<[u8]>>(writer: &mut Writer, records: &[M], alive: &AtomicBool) -> bool {
    send_all_with(|rest| writer.try_send_batch(rest), records, alive)
}

/// [`send_all`] over any batch sender: `try_send` takes records from the front of
/// what it is given and says how many it took.
fn send_all_with<M: AsRef<[u8]>>(
    mut try_send: impl FnMut(&[M]) -> Result<usize, SendError>,
    records: &[M],
    alive: &AtomicBool,
) -> bool {
    let mut sent = 0;
    let mut waits: u32 = 0;
    while sent < records.len() {
        match try_send(&records[sent..]) {
            Ok(n) => {
                sent += n;
                waits = 0;
            }
            Err(SendError::Full) => {
                if !alive.load(Ordering::Acquire) {
                    return false;
                }
                waits = waits.saturating_add(1);
                back_off(waits);
            }
            // This thread stalled past the reader's skip timeout and the reader
            // skipped the record as torn: none of its messages were delivered, so
            // sending them again keeps the byte stream whole and in order.
            Err(SendError::Expired { .. }) => {
                if !alive.load(Ordering::Acquire) {
                    return false;
                }
            }
            // Too large (cannot happen: records are split to the limit).
            Err(_) => return false,
        }
    }
    true
}

/// Spin, yield, then sleep up to 1 ms between two attempts on a full ring.
fn back_off(waits: u32) {
    if waits < 64 {
        std::hint::spin_loop();
    } else if waits < 128 {
        std::thread::yield_now();
    } else {
        let micros = 1u64 << (waits - 128).min(10);
        std::thread::sleep(Duration::from_micros(micros));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_parse_and_reject_garbage() {
        assert_eq!(
            parse_listener_hello(b"ATBUS-SHM1 42 00000000000000ff"),
            Some((42, 255))
        );
        assert_eq!(parse_listener_hello(b"ATBUS-SHM1 42"), None);
        assert_eq!(parse_listener_hello(b"ATBUS-SHM1 42 ff x"), None);
        assert_eq!(parse_listener_hello(b"\xff\xfe"), None);
        assert_eq!(parse_connection_hello(b"ATBUS-SHM1 7"), Some(7));
        assert_eq!(parse_connection_hello(b"ATBUS-SHM17"), None);
    }

    #[test]
    fn a_record_skipped_as_torn_is_sent_again_and_the_stream_stays_whole() {
        let records: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d"];
        let mut delivered: Vec<u8> = Vec::new();
        let mut calls = 0;
        let alive = AtomicBool::new(true);
        // The first attempt at "c" stalls past the reader's skip timeout: the ring
        // reports it expired and delivered none of it.
        let sent = send_all_with(
            |rest: &[&[u8]]| {
                calls += 1;
                if rest[0] == b"c" && calls == 2 {
                    return Err(SendError::Expired { position: 0 });
                }
                let take = rest.len().min(2);
                rest[..take]
                    .iter()
                    .for_each(|r| delivered.extend_from_slice(r));
                Ok(take)
            },
            &records,
            &alive,
        );
        assert!(sent);
        assert_eq!(delivered, b"abcd");
        // A connection whose reader is gone stops retrying.
        alive.store(false, Ordering::Release);
        let expired = |_: &[&[u8]]| Err(SendError::Expired { position: 0 });
        assert!(!send_all_with(expired, &records, &alive));
    }

    #[test]
    fn a_link_dropped_unused_removes_its_rings() {
        let name = format!("atbus-unit-drop-{}", std::process::id());
        let _listener = bind(&name).unwrap();
        let link = dial(&name).unwrap();
        remove_rings(&[name]);
        let files = link.ring_paths();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.exists()), "{files:?}");
        drop(link);
        assert!(files.iter().all(|f| !f.exists()), "{files:?}");
    }

    #[test]
    fn long_transmits_split_at_the_message_limit() {
        let mut batch = Vec::new();
        push_split(&mut batch, Bytes::from(vec![1u8; 10]), 4);
        push_split(&mut batch, Bytes::new(), 4);
        let lens: Vec<usize> = batch.iter().map(Bytes::len).collect();
        assert_eq!(lens, [4, 4, 2]);
    }
}
