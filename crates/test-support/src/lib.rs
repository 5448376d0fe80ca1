//! Test harness that runs the **real** JavaScript SocketCluster peers from `interop/`
//! (`socketcluster-server` 20.0.1 / 14.7.2 and `socketcluster-client` 20.0.2 / 14.3.2) so
//! that the Rust crates can be tested against them.
//!
//! * [`JsServer`] runs `interop/server.js`: a configurable JS server with a set of
//!   procedures (`echo`, `error`, `login`, ...), a JSON-line control channel
//!   ([`JsServer::command`]) and one JSON event line per server event
//!   ([`JsServer::wait_event`]).
//! * [`run_js_client`] / [`JsClient`] run `interop/client.js`: a JS client driven by a
//!   scenario of steps, printing every client event in emission order.
//! * [`ensure_npm_installed`] installs the JS packages on first use (`npm ci`).
//! * [`backplane`]: real `redis-server` / `nats-server` processes for the backplane
//!   tests ([`backplane::RedisServer`], [`backplane::NatsServer`]);
//! * `backplane_suite` (feature `backplane-suite`, for the broker crates' tests): a
//!   server with a broker, a raw WebSocket client, and the scenarios both brokers pass.
//!
//! The full description of both runners (options, commands, ops, output lines) is in
//! `interop/README.md`.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use sc_test_support::{JsServer, JsServerOptions, run_js_client};
//! use serde_json::json;
//!
//! let server = JsServer::start(JsServerOptions {
//!     auth_key: Some("testkey".into()),
//!     ..Default::default()
//! })
//! .await;
//! let run = run_js_client(json!({
//!     "url": server.url(),
//!     "steps": [
//!         {"op": "waitEvent", "name": "connect"},
//!         {"op": "invoke", "procedure": "echo", "data": {"hello": "world"}},
//!     ],
//! }))
//! .await;
//! assert_eq!(run.step_result(1), &json!({"hello": "world"}));
//! server.wait_for("disconnection", Duration::from_secs(5)).await;
//! # }
//! ```
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod backplane;
#[cfg(feature = "backplane-suite")]
pub mod backplane_suite;
mod client;
mod jwt;
mod npm;
mod process;
mod proxy;
mod server;

pub use client::{JsClient, JsClientRun, run_js_client};
pub use jwt::{jwt_payload, sign_hs256, unix_now};
pub use npm::{ensure_npm_installed, interop_dir};
pub use proxy::TcpProxy;
pub use server::{JsServer, JsServerOptions, JsVersion};

/// A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read, close).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Predicate for [`JsServer::wait_event`] / [`JsClient::wait_event`]: the line's `event`
/// is `name`.
pub fn event_named(name: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |v| v["event"] == name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }
}
