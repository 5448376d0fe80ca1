//! The harness and scenarios shared by the integration tests of
//! `socketcluster-rs-broker-redis` and `socketcluster-rs-broker-nats` (feature `backplane-suite`,
//! enabled only by their dev-dependencies). The backplane server processes themselves
//! (`RedisServer`, `NatsServer`) are in [`crate::backplane`].
//!
//! The feature makes this crate depend on `socketcluster-rs-server` and
//! `socketcluster-rs-backplane`. The server dev-depends on this crate; Cargo accepts that
//! cycle because it goes through a dev-dependency, and nothing here is used by the server's
//! own unit tests (which would see two copies of the server crate).
//!
//! * [`start_server`]: a `Server` on a free port with a given broker;
//! * [`WsClient`]: a minimal SocketCluster client over a raw WebSocket (protocol v2);
//! * [`wait_state`]: wait (bounded) for a broker's `StateChanges` to reach a state;
//! * [`scenarios`]: the multi-instance tests both brokers must pass, given a [`Probe`]
//!   reading the broker's status.
#![allow(clippy::missing_panics_doc)]

use std::sync::Arc;

use socketcluster_rs_backplane::{BackplaneState, Health, StateChanges, Stats};
use socketcluster_rs_server::{Server, ServerConfig};

use crate::backplane::WAIT;

pub mod scenarios;
mod ws_client;

pub use ws_client::WsClient;

/// How the [`scenarios`] read a broker `B`'s status: its inherent methods, e.g.
/// `Probe { stats: RedisBroker::stats, health: RedisBroker::health, state_changes:
/// RedisBroker::state_changes }`.
#[derive(Debug)]
pub struct Probe<B> {
    /// `B::stats`.
    pub stats: fn(&B) -> Stats,
    /// `B::health`.
    pub health: fn(&B) -> Health,
    /// `B::state_changes`.
    pub state_changes: fn(&B) -> StateChanges,
}

/// A server bound on 127.0.0.1, port 0, with the given broker.
pub async fn start_server(broker: Arc<dyn socketcluster_rs_server::broker::Broker>) -> Server {
    let config = ServerConfig::default().with_host("127.0.0.1").with_port(0);
    let server = Server::with_broker(config, broker).expect("server");
    server.listen().await.expect("listen");
    server
}

/// Wait until the broker's state is `want` (no fixed sleeps); panics after [`WAIT`].
pub async fn wait_state(changes: &mut StateChanges, want: BackplaneState) {
    match tokio::time::timeout(WAIT, changes.wait_for(want)).await {
        Ok(true) => {}
        Ok(false) => panic!("state channel closed while waiting for {want:?}"),
        Err(_) => panic!(
            "timed out waiting for state {want:?} (now {:?})",
            changes.current()
        ),
    }
}
