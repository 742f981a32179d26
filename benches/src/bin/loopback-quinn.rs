//! `loopback-quinn`: quinn's bulk throughput on loopback, the peer of `atbus bench
//! --transport udp` in `benches/loopback-compare.sh`.
//!
//! A server and a client endpoint (quinn on tokio, TLS 1.3 through rustls with the
//! *ring* provider, a self-signed rcgen certificate) in this process on 127.0.0.1;
//! the client streams `--bytes` bytes over one unidirectional stream in `--chunk`
//! writes and the server reads them all. The time runs from the first write to the
//! last byte read. quinn always encrypts: the figure includes AES-GCM / ChaCha20.
//! Prints one line of JSON: `{"bytes":..,"seconds":..,"mib_per_sec":..}`.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use atbus_benches::quinn::{SERVER_NAME, self_signed};
use clap::Parser;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "quinn bulk throughput over one stream on loopback (encrypted)")]
struct Args {
    /// Bytes to stream.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    bytes: u64,
    /// Bytes per write.
    #[arg(long, default_value_t = 64 * 1024)]
    chunk: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: &Args) -> Result<(u64, f64), Error> {
    let (cert, key) = self_signed();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert], key)?;
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = quinn::Endpoint::server(server_config, loopback)?;
    let server_addr = server.local_addr()?;
    let mut client = quinn::Endpoint::client(loopback)?;
    client.set_default_client_config(client_config);

    let receiving = tokio::spawn(async move {
        let incoming = server.accept().await.ok_or("server endpoint closed")?;
        let connection = incoming.await?;
        let mut stream = connection.accept_uni().await?;
        let mut received = 0u64;
        while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
            received += chunk.bytes.len() as u64;
        }
        let end = Instant::now();
        connection.close(0u32.into(), b"done");
        server.wait_idle().await;
        Ok::<_, Error>((received, end))
    });

    let connection = client.connect(server_addr, SERVER_NAME)?.await?;
    let mut stream = connection.open_uni().await?;
    let chunk = bytes::Bytes::from(vec![0x5au8; args.chunk.max(1)]);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < args.bytes {
        let n = (args.bytes - sent).min(chunk.len() as u64) as usize;
        stream.write_chunk(chunk.slice(..n)).await?;
        sent += n as u64;
    }
    stream.finish()?;
    let (received, end) = receiving.await??;
    client.wait_idle().await;
    if received != sent {
        return Err(format!("{sent} bytes sent but {received} received").into());
    }
    Ok((received, end.duration_since(start).as_secs_f64()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loopback-quinn: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok((bytes, seconds)) => {
            let mibps = bytes as f64 / seconds.max(1e-9) / (1024.0 * 1024.0);
            println!(r#"{{"bytes":{bytes},"seconds":{seconds:.6},"mib_per_sec":{mibps:.2}}}"#);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loopback-quinn: {e}");
            ExitCode::FAILURE
        }
    }
}
