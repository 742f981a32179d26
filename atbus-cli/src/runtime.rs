//! Choosing the runtime a command runs on; the commands themselves only use the
//! runtime-neutral `atbus_node::Node` handle.

use std::future::Future;
use std::time::Duration;

use atbus_node::{Node, NodeConfig, NodeError};

/// The async runtime of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// tokio (multi-threaded, two workers).
    Tokio,
    /// smol (async-io / async-net).
    Smol,
}

/// Runs `future` to completion on the chosen runtime.
pub fn block_on<T>(kind: RuntimeKind, future: impl Future<Output = T>) -> T {
    match kind {
        RuntimeKind::Tokio => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime can be built")
            .block_on(future),
        RuntimeKind::Smol => smol::block_on(future),
    }
}

/// Starts a node on the chosen runtime; call it inside [`block_on`].
pub async fn start(kind: RuntimeKind, config: NodeConfig) -> Result<Node, NodeError> {
    match kind {
        RuntimeKind::Tokio => atbus_tokio::Node::bind(config)
            .await
            .map(atbus_tokio::Node::into_inner),
        RuntimeKind::Smol => atbus_smol::Node::bind(config)
            .await
            .map(atbus_smol::Node::into_inner),
    }
}

/// `future`'s output, or `None` after `limit` (a runtime-neutral timer).
pub async fn timeout<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        smol::Timer::after(limit).await;
        None
    })
    .await
}
