//! Two tokio nodes over real loopback sockets: every scenario of
//! `atbus_node::testing::scenarios`, each on a fresh tokio runtime.

use std::future::Future;

use atbus_tokio::TokioRuntime;

/// Runs `scenario` to completion on a new current-thread tokio runtime (what
/// `#[tokio::test]` gives).
fn run<F: Future<Output = ()>>(scenario: impl FnOnce(TokioRuntime) -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async { scenario(TokioRuntime::current()).await })
}

atbus_node::loopback_tests!(run);
