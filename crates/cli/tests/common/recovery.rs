//! Helpers of the recovery tests (docs/PROTOCOL.md 14.16): a client that reconnects quickly,
//! publications numbered `n` on one channel, and waits for what the client reports.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use socketcluster_rs_client::{Client, Event, Events, Recovery, Subscription};
use socketcluster_rs_server::Server;

/// A generous deadline for every wait.
pub const WAIT: Duration = Duration::from_secs(30);
/// The channel the recovery tests use (history on `chat/*`).
pub const CHANNEL: &str = "chat/1";

pub fn addr(server: &Server) -> SocketAddr {
    server.local_addr().expect("listening")
}

pub async fn publish(server: &Server, n: u64) {
    let data = serde_json::value::to_raw_value(&json!({ "n": n })).unwrap();
    server
        .exchange()
        .publish_raw(CHANNEL, Some(data))
        .await
        .expect("published");
}

pub fn client(port: u16) -> Client {
    super::quick_reconnect(
        format!("ws://127.0.0.1:{port}/socketcluster/"),
        Duration::from_millis(100),
    )
    .build()
    .expect("client")
}

pub async fn next_n(sub: &mut Subscription) -> (u64, Option<u64>) {
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a publication in time")
        .expect("subscription open");
    (m.value()["n"].as_u64().expect("n"), m.offset())
}

pub async fn recovery(events: &mut Events) -> Recovery {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Event::Recovery { outcome, .. }) = events.recv().await {
                return outcome;
            }
        }
    })
    .await
    .expect("a recovery outcome")
}

pub async fn disconnected(events: &mut Events) {
    tokio::time::timeout(WAIT, async {
        while !matches!(events.recv().await, Some(Event::Disconnect { .. })) {}
    })
    .await
    .expect("the client noticed the cut");
}
