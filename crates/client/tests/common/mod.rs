//! Shared helpers for the interop tests (real JS peers from `interop/`).
#![allow(dead_code)]

use std::time::Duration;

use sc_test_support::{JsServer, JsServerOptions, JsVersion};
use socketcluster_rs_client::{Client, ClientBuilder, Event, Events, ProtocolVersion};

/// Generous deadline for anything the tests wait for.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A builder with short reconnect delays (200 ms + up to 200 ms) so tests stay fast.
pub(crate) fn fast(url: &str) -> ClientBuilder {
    Client::builder(url).reconnect_delays(
        Duration::from_millis(200),
        Duration::from_millis(200),
        1.5,
        Duration::from_millis(2000),
    )
}

pub(crate) fn v20() -> JsServerOptions {
    JsServerOptions::new(JsVersion::V20)
}

/// A v14 server in protocol version 1.
pub(crate) fn v14() -> JsServerOptions {
    let mut o = JsServerOptions::new(JsVersion::V14);
    o.protocol_version = Some(1);
    o
}

pub(crate) async fn start(opts: JsServerOptions) -> JsServer {
    JsServer::start(opts).await
}

pub(crate) fn client_for(server: &JsServer, version: JsVersion) -> ClientBuilder {
    let b = fast(&server.url());
    match version {
        JsVersion::V14 => b.protocol_version(ProtocolVersion::V1),
        _ => b,
    }
}

/// The first event matching `f` within [`WAIT`].
pub(crate) async fn wait_event(events: &mut Events, f: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.recv().await.expect("events stream ended");
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

pub(crate) fn named(name: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.name() == name
}

/// A label comparable with the JS client's event lines: `name` or `name(channel)`.
pub(crate) fn label(e: &Event) -> String {
    match e.channel() {
        Some(c) => format!("{}({c})", e.name()),
        None => e.name().to_owned(),
    }
}

pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
