//! `loopback-raw`: what the kernel's loopback gives without any protocol, the baselines
//! of `benches/loopback-compare.sh`.
//!
//! - `stream` (`--transport tcp|unix`): one writer thread, one reader thread. With
//!   `--size 0` it is bulk (64 KiB writes, counted bytes); with `--size N` it sends
//!   messages of N bytes, each behind a 4-byte length, through a 64 KiB `BufWriter`
//!   (batched writes) and the reader parses every message back out of a `BufReader`.
//! - `udp`: a thread blasts `--messages` datagrams of `--size` bytes with plain
//!   `send_to` and another counts those received (UDP drops what the receiver cannot
//!   take: the received count is the figure). The receiver stops after 200 ms without
//!   a datagram; the time runs from the first to the last datagram received.
//!
//! Prints one line of JSON: `{"messages":..,"bytes":..,"seconds":..,"msgs_per_sec":..,
//! "mib_per_sec":..}` (messages and bytes received).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "raw loopback baselines: stream bulk / messages, UDP blast")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A byte stream between two threads.
    Stream {
        /// TCP on 127.0.0.1 or a Unix stream socket.
        #[arg(long, value_enum)]
        transport: StreamKind,
        /// Bytes per length-prefixed message; 0 for bulk.
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Messages to send (with --size), or bytes (bulk).
        #[arg(long, default_value_t = 10_000_000)]
        count: u64,
    },
    /// UDP datagrams between two sockets on 127.0.0.1.
    Udp {
        /// Bytes per datagram.
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Datagrams to send.
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StreamKind {
    Tcp,
    Unix,
}

/// Bytes per write in bulk mode, and the buffers' size in message mode.
const CHUNK: usize = 64 * 1024;
/// How long the UDP receiver waits for more before it stops.
const UDP_IDLE: Duration = Duration::from_millis(200);

struct Measured {
    messages: u64,
    bytes: u64,
    seconds: f64,
}

fn pair(kind: StreamKind) -> io::Result<(Box<dyn Write + Send>, Box<dyn Read + Send>)> {
    match kind {
        StreamKind::Tcp => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (server, _) = listener.accept()?;
            client.set_nodelay(true)?;
            Ok((Box::new(client), Box::new(server)))
        }
        StreamKind::Unix => {
            let dir = std::env::temp_dir().join(format!("atbus-raw-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("raw.sock");
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            let client = UnixStream::connect(&path)?;
            let (server, _) = listener.accept()?;
            let _ = std::fs::remove_dir_all(&dir);
            Ok((Box::new(client), Box::new(server)))
        }
    }
}

fn stream(kind: StreamKind, size: usize, count: u64) -> io::Result<Measured> {
    let (writer, mut reader) = pair(kind)?;
    let start = Instant::now();
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut writer = BufWriter::with_capacity(CHUNK, writer);
        if size == 0 {
            let chunk = vec![0x5au8; CHUNK];
            let mut left = count;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                writer.write_all(&chunk[..n])?;
                left -= n as u64;
            }
        } else {
            let len = u32::try_from(size)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
            let payload = vec![0x5au8; size];
            for _ in 0..count {
                writer.write_all(&len.to_le_bytes())?;
                writer.write_all(&payload)?;
            }
        }
        writer.flush()
    });
    let (mut messages, mut bytes) = (0u64, 0u64);
    if size == 0 {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    } else {
        let mut reader = BufReader::with_capacity(CHUNK, reader);
        let mut payload = vec![0u8; size];
        let mut len = [0u8; 4];
        while messages < count {
            reader.read_exact(&mut len)?;
            let n = u32::from_le_bytes(len) as usize;
            if n != size {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad length"));
            }
            reader.read_exact(&mut payload)?;
            messages += 1;
            bytes += n as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    Ok(Measured {
        messages,
        bytes,
        seconds,
    })
}

fn udp(size: usize, messages: u64) -> io::Result<Measured> {
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sender.connect(receiver.local_addr()?)?;
    receiver.set_read_timeout(Some(UDP_IDLE))?;
    let blaster = thread::spawn(move || -> io::Result<()> {
        let datagram = vec![0x5au8; size];
        for _ in 0..messages {
            // A full socket buffer (ENOBUFS) loses the datagram, like the network.
            let _ = sender.send(&datagram);
        }
        Ok(())
    });
    let mut buf = vec![0u8; 65536];
    let (mut count, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, Instant::now());
    loop {
        match receiver.recv(&mut buf) {
            Ok(n) => {
                last = Instant::now();
                first.get_or_insert(last);
                count += 1;
                bytes += n as u64;
                if count == messages {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if first.is_some() || blaster.is_finished() {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    blaster
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    let seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(Measured {
        messages: count,
        bytes,
        seconds,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let measured = match args.mode {
        Mode::Stream {
            transport,
            size,
            count,
        } => stream(transport, size, count),
        Mode::Udp { size, messages } => udp(size, messages),
    };
    match measured {
        Ok(m) => {
            let seconds = m.seconds.max(1e-9);
            println!(
                r#"{{"messages":{},"bytes":{},"seconds":{:.6},"msgs_per_sec":{:.0},"mib_per_sec":{:.2}}}"#,
                m.messages,
                m.bytes,
                seconds,
                m.messages as f64 / seconds,
                m.bytes as f64 / seconds / (1024.0 * 1024.0)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopback-raw: {e}");
            ExitCode::FAILURE
        }
    }
}
