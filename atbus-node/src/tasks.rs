//! Background tasks of a node: socket readers, stream writers, listeners, dialers.
//! Each ends when the driver drops its `stop` sender.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;

use crate::address::Address;
use crate::budget::InputBudget;
use crate::runtime::{DatagramSocket, Remote, Runtime, StreamListener, StreamRead, StreamWrite};
use crate::udp::RecvScratch;

/// Bytes read from a stream at once.
const STREAM_BUFFER: usize = 64 * 1024;
/// Bytes a stream writer gathers from its queue into one write (plus one packet).
const WRITE_COALESCE: usize = 64 * 1024;
/// How long a dial may take.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the tasks hand to the driver.
pub(crate) enum NetInput<R: Runtime> {
    Datagrams {
        socket: usize,
        batch: Vec<(Remote, Bytes)>,
    },
    DatagramError,
    Accepted {
        reader: R::Reader,
        writer: R::Writer,
        remote: String,
    },
    StreamData {
        handle: u64,
        data: Bytes,
    },
    StreamEnded {
        handle: u64,
    },
    Dialed {
        request: u64,
        results: Vec<Result<Dialed<R>, (Address, io::Error)>>,
    },
    Redialed {
        path: u64,
        result: io::Result<(R::Reader, R::Writer)>,
    },
    /// A dropped shm path, dialled again.
    ShmRedialed {
        path: u64,
        result: io::Result<crate::shm::ShmLink>,
    },
    /// A connector's hello on a shm listener ring.
    ShmAccepted {
        link: crate::shm::ShmLink,
    },
}

/// A transport opened towards a peer.
pub(crate) enum Dialed<R: Runtime> {
    Datagram {
        socket: R::Datagram,
        remote: Remote,
        address: Address,
        /// A Unix datagram client binds a path of its own; removed when dropped.
        own_path: Option<crate::driver::OwnSocketFile>,
    },
    Stream {
        reader: R::Reader,
        writer: R::Writer,
        address: Address,
    },
    /// A shared-memory connection (its rings are created).
    Shm {
        link: Box<crate::shm::ShmLink>,
        address: Address,
    },
}

/// Payload bytes of a batch of datagrams.
fn batch_bytes(batch: &[(Remote, Bytes)]) -> usize {
    batch.iter().map(|(_, data)| data.len()).sum()
}

impl<R: Runtime> NetInput<R> {
    /// Payload bytes counted in the [`InputBudget`] for this input.
    pub(crate) fn budget_bytes(&self) -> usize {
        match self {
            NetInput::Datagrams { batch, .. } => batch_bytes(batch),
            NetInput::StreamData { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// Waits for `stop` to be dropped.
async fn stopped(stop: &async_channel::Receiver<()>) {
    let _ = stop.recv().await;
}

pub(crate) async fn datagram_reader<R: Runtime>(
    socket: Arc<R::Datagram>,
    index: usize,
    net: async_channel::Sender<NetInput<R>>,
    budget: Arc<InputBudget>,
    stop: async_channel::Receiver<()>,
) {
    let mut scratch = RecvScratch::new();
    loop {
        let mut batch = Vec::new();
        let received = future::or(
            async { Some(socket.recv_batch(&mut scratch, &mut batch).await) },
            async {
                stopped(&stop).await;
                None
            },
        )
        .await;
        let input = match received {
            None => return,
            Some(Ok(())) if batch.is_empty() => continue,
            // The driver is behind: loss, like a full socket buffer.
            Some(Ok(())) if !budget.admit_datagrams(batch_bytes(&batch), batch.len()) => {
                continue;
            }
            // The whole batch goes to the core at once, before it answers.
            Some(Ok(())) => NetInput::Datagrams {
                socket: index,
                batch,
            },
            // ICMP errors reported on the socket, or a transient failure: count and
            // keep serving.
            Some(Err(_)) => NetInput::DatagramError,
        };
        if net.send(input).await.is_err() {
            return;
        }
    }
}

pub(crate) async fn stream_reader<R: Runtime>(
    mut reader: R::Reader,
    handle: u64,
    net: async_channel::Sender<NetInput<R>>,
    budget: Arc<InputBudget>,
    stop: async_channel::Receiver<()>,
) {
    let mut buf = vec![0u8; STREAM_BUFFER];
    loop {
        // While the driver is behind, nothing is read: the peer's writes back up.
        let read = future::or(
            async {
                budget.room().await;
                Some(reader.read(&mut buf).await)
            },
            async {
                stopped(&stop).await;
                None
            },
        )
        .await;
        let input = match read {
            None => return,
            Some(Ok(0)) | Some(Err(_)) => NetInput::StreamEnded { handle },
            Some(Ok(n)) => {
                budget.add(n);
                NetInput::StreamData {
                    handle,
                    data: Bytes::copy_from_slice(&buf[..n]),
                }
            }
        };
        let ended = matches!(input, NetInput::StreamEnded { .. });
        // A full channel stops the reading: the peer's writes back up (flow control).
        if net.send(input).await.is_err() || ended {
            return;
        }
    }
}

/// How long a stream's writer may go on writing what was queued before its
/// connection closed (the close frame included) once the driver has let go of it.
/// A peer that reads slower than that, or not at all, gets its socket closed instead:
/// a writer blocked on a peer that never reads must not hold the socket and its task
/// forever.
pub(crate) const WRITER_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Writes what the driver queues for one stream, in order. What is already queued
/// when the writer wakes up is coalesced into one write of up to about
/// [`WRITE_COALESCE`] bytes: many small packets cost one system call, not one each.
///
/// `abort` completes when the writer must give up: the writer then returns at once,
/// even from the middle of a write, and dropping `writer` closes its half of the
/// socket. The driver makes it complete [`WRITER_CLOSE_GRACE`] after the connection
/// closed.
pub(crate) async fn stream_writer<W: StreamWrite>(
    mut writer: W,
    queue: async_channel::Receiver<Bytes>,
    abort: impl std::future::Future<Output = ()>,
) {
    let mut buf = Vec::new();
    // Polled until it completes once; the writer returns then.
    let mut aborted = std::pin::pin!(abort);
    loop {
        let next = unless(queue.recv(), aborted.as_mut()).await;
        let data = match next {
            None => return,
            Some(Ok(data)) => data,
            Some(Err(_)) => break,
        };
        let written = if queue.is_empty() {
            unless(writer.write_all(&data), aborted.as_mut()).await
        } else {
            buf.clear();
            buf.extend_from_slice(&data);
            while buf.len() < WRITE_COALESCE {
                match queue.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            unless(writer.write_all(&buf), aborted.as_mut()).await
        };
        match written {
            Some(Ok(())) => {}
            None | Some(Err(_)) => return,
        }
    }
    let _ = unless(writer.shutdown(), aborted.as_mut()).await;
}

/// `work`'s output, or `None` if `abort` completes first.
async fn unless<T>(
    work: impl std::future::Future<Output = T>,
    abort: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        abort.await;
        None
    })
    .await
}

pub(crate) async fn accept_loop<R: Runtime>(
    listener: R::Listener,
    net: async_channel::Sender<NetInput<R>>,
    stop: async_channel::Receiver<()>,
    runtime: R,
) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            stopped(&stop).await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok((reader, writer, remote))) => {
                let input = NetInput::Accepted {
                    reader,
                    writer,
                    remote,
                };
                if net.send(input).await.is_err() {
                    return;
                }
            }
            // Out of descriptors and the like: wait a little instead of spinning.
            Some(Err(_)) => {
                runtime
                    .sleep_until(Instant::now() + Duration::from_millis(50))
                    .await
            }
        }
    }
}

async fn with_timeout<R: Runtime, T>(
    runtime: &R,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let deadline = runtime.sleep_until(Instant::now() + DIAL_TIMEOUT);
    future::or(fut, async {
        deadline.await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// Dials a stream address.
pub(crate) async fn dial_stream<R: Runtime>(
    runtime: &R,
    address: &Address,
) -> io::Result<(R::Reader, R::Writer)> {
    match address {
        Address::Tcp(addr) => with_timeout(runtime, runtime.connect_tcp(*addr)).await,
        Address::Unix(path) => with_timeout(runtime, runtime.connect_unix(path.clone())).await,
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream address",
        )),
    }
}

fn unspecified(addr: &SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

fn client_unix_path(server: &std::path::Path) -> std::path::PathBuf {
    let name = format!(
        "atbus-{}-{:x}.sock",
        std::process::id(),
        crate::config::random_session_id()
    );
    match server.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => std::env::temp_dir().join(name),
    }
}

/// Opens a transport to `address`.
pub(crate) async fn dial<R: Runtime>(
    runtime: &R,
    address: Address,
) -> Result<Dialed<R>, (Address, io::Error)> {
    let fail = |address: &Address, err: io::Error| (address.clone(), err);
    match &address {
        Address::Udp(remote) => {
            let socket = std::net::UdpSocket::bind(unspecified(remote))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(|s| runtime.udp(s))
                .map_err(|err| fail(&address, err))?;
            Ok(Dialed::Datagram {
                socket,
                remote: Remote::Ip(*remote),
                address,
                own_path: None,
            })
        }
        Address::UnixDatagram(path) => {
            let own = client_unix_path(path);
            // A bind that failed created no file (it may be someone else's): the
            // guard is taken only once the file is ours, and from then on the
            // file goes whenever the result is dropped.
            let bound =
                std::os::unix::net::UnixDatagram::bind(&own).map_err(|err| fail(&address, err))?;
            let own = crate::driver::OwnSocketFile::new(own);
            let socket = bound
                .set_nonblocking(true)
                .map(|()| bound)
                .inspect(|s| {
                    crate::udp::grow_buffers(s, crate::udp::SOCKET_BUFFER);
                })
                .and_then(|s| runtime.unix_datagram(s))
                .map_err(|err| fail(&address, err))?;
            if !path.exists() {
                return Err(fail(
                    &address,
                    io::Error::new(io::ErrorKind::NotFound, "no socket at this path"),
                ));
            }
            Ok(Dialed::Datagram {
                socket,
                remote: Remote::Unix(path.clone()),
                own_path: Some(own),
                address,
            })
        }
        Address::Tcp(_) | Address::Unix(_) => {
            let (reader, writer) = dial_stream(runtime, &address)
                .await
                .map_err(|err| fail(&address, err))?;
            Ok(Dialed::Stream {
                reader,
                writer,
                address,
            })
        }
        Address::Shm(name) => match crate::shm::dial(name) {
            Ok(link) => Ok(Dialed::Shm {
                link: Box::new(link),
                address,
            }),
            Err(err) => Err(fail(&address, err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write call.
    #[derive(Default)]
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl StreamWrite for Recorder {
        async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(())
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A peer that never reads: every write waits forever.
    struct Stuck {
        dropped: Arc<std::sync::Mutex<bool>>,
    }

    impl StreamWrite for Stuck {
        async fn write_all(&mut self, _buf: &[u8]) -> io::Result<()> {
            future::pending().await
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            future::pending().await
        }
    }

    impl Drop for Stuck {
        fn drop(&mut self) {
            *self.dropped.lock().unwrap() = true;
        }
    }

    #[test]
    fn a_writer_stuck_on_a_peer_that_never_reads_gives_up_when_aborted() {
        let (tx, rx) = async_channel::unbounded();
        tx.try_send(Bytes::from_static(b"never read")).unwrap();
        let dropped = Arc::new(std::sync::Mutex::new(false));
        let writer = Stuck {
            dropped: dropped.clone(),
        };
        let (abort_tx, abort_rx) = async_channel::bounded::<()>(1);
        let task = stream_writer(writer, rx, async move {
            let _ = abort_rx.recv().await;
        });
        let mut task = std::pin::pin!(task);
        // Blocked in the write: polling makes no progress...
        for _ in 0..3 {
            assert!(future::block_on(future::poll_once(task.as_mut())).is_none());
        }
        assert!(!*dropped.lock().unwrap());
        // ...until the abort: then it returns and the socket half is dropped, even
        // though its queue is still open and the write never finished.
        drop(abort_tx);
        assert!(future::block_on(future::poll_once(task.as_mut())).is_some());
        assert!(*dropped.lock().unwrap());
        drop(tx);
    }

    #[test]
    fn stream_writer_coalesces_what_is_queued_in_order_and_bounded() {
        let (tx, rx) = async_channel::unbounded();
        // 100 packets of 1000 B (ids in the first byte), queued before the writer runs.
        let packets: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        for p in &packets {
            tx.try_send(p.clone()).unwrap();
        }
        drop(tx);
        let recorder = Recorder::default();
        let writes = recorder.writes.clone();
        future::block_on(stream_writer(recorder, rx, future::pending()));
        let writes = writes.lock().unwrap();
        // Fewer calls than packets, none much larger than the bound...
        assert!(writes.len() < packets.len() / 10, "{} writes", writes.len());
        assert!(writes.iter().all(|w| w.len() < WRITE_COALESCE + 1000));
        // ...and the bytes are exactly the packets, in order.
        let written: Vec<u8> = writes.concat();
        assert_eq!(written, packets.concat());
    }
}
