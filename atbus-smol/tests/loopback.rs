//! Two smol nodes over real loopback sockets: every scenario of
//! `atbus_node::testing::scenarios`, each under `smol::block_on`.

use std::future::Future;

use atbus_smol::SmolRuntime;

/// Runs `scenario` to completion on smol.
fn run<F: Future<Output = ()>>(scenario: impl FnOnce(SmolRuntime) -> F) {
    smol::block_on(scenario(SmolRuntime))
}

atbus_node::loopback_tests!(run);
