//! The instances of a cluster (docs/PROTOCOL.md 14.18): two `socketcluster serve` on one
//! Redis (or NATS) see each other in `/api/instances` with their figures, an instance that stops
//! disappears at once (its `leaving` message), and clients can neither subscribe nor
//! publish to the internal heartbeat channel.
//!
//! The tests start their own `redis-server` / `nats-server` on free ports (Debian packages
//! `redis-server`, `nats-server`) and fail, never skip, when it is missing.

use std::time::Duration;

use sc_test_support::backplane::{NatsServer, RedisServer};
use serde_json::Value;
use socketcluster_rs_client::Client;

mod common;

use common::Serve;

const API_KEY: &str = "k";
const CHANNEL: &str = "#sc-cluster/instances";

async fn serve(args: &[&str]) -> Serve {
    let mut all = vec!["--port", "0", "--http-api-key", API_KEY];
    all.extend_from_slice(args);
    Serve::start(&all).await
}

async fn instances(port: u16) -> Value {
    let (status, body) = common::http(port, "GET", "/api/instances", Some(API_KEY), None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Poll `/api/instances` of `port` until `ok` holds (30 s deadline).
async fn wait_for(port: u16, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = instances(port).await;
        let list = v["instances"].as_array().cloned().unwrap_or_default();
        if ok(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {v} on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn by_address(list: &[Value], port: u16) -> Option<&Value> {
    let address = format!("127.0.0.1:{port}");
    list.iter().find(|i| i["address"] == address.as_str())
}

#[tokio::test]
async fn two_instances_see_each_other_and_the_leaving_one_goes() {
    let redis = RedisServer::start();
    two_instances(&redis.url()).await;
}

#[tokio::test]
async fn two_instances_see_each_other_over_nats() {
    let nats = NatsServer::start();
    two_instances(&nats.url()).await;
}

async fn two_instances(url: &str) {
    let a = serve(&["--broker", url]).await;
    let mut b = serve(&["--broker", url]).await;

    // the API key protects the list
    let (status, _) = common::http(a.port, "GET", "/api/instances", None, None).await;
    assert_eq!(status, 401);

    for (me, other) in [(a.port, b.port), (b.port, a.port)] {
        let list = wait_for(me, "both instances", |l| {
            by_address(l, me).is_some() && by_address(l, other).is_some()
        })
        .await;
        assert_eq!(list.len(), 2, "{list:?}");
        let mine = by_address(&list, me).unwrap();
        assert_eq!(mine["self"], true);
        assert_eq!(by_address(&list, other).unwrap()["self"], false);
        assert_eq!(mine["version"], env!("CARGO_PKG_VERSION"));
        assert!(mine["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(mine["backplane"]["state"].is_string(), "{mine}");
    }

    // three clients on B: A sees B's socket count rise
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::builder(b.url()).connect().await.expect("connects"));
    }
    let list = wait_for(a.port, "B's three sockets", |l| {
        by_address(l, b.port).is_some_and(|i| i["sockets"] == 3)
    })
    .await;
    assert_eq!(by_address(&list, a.port).unwrap()["sockets"], 0);
    // the internal channel is not counted as a channel
    assert_eq!(by_address(&list, a.port).unwrap()["channels"], 0);
    let (_, stats) = common::http(a.port, "GET", "/api/stats", Some(API_KEY), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats).unwrap()["channels"],
        0,
        "{stats}"
    );

    // B stops: its leaving message removes it from A well before the 5 s expiry
    drop(clients);
    let stopped = tokio::time::Instant::now();
    b.terminate().await;
    wait_for(a.port, "B gone", |l| by_address(l, b.port).is_none()).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "removed after {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn without_a_backplane_the_list_is_this_instance() {
    let a = serve(&[]).await;
    let list = wait_for(a.port, "this instance", |l| !l.is_empty()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["self"], true);
    assert_eq!(list[0]["backplane"], Value::Null);
    assert_eq!(list[0]["address"], format!("127.0.0.1:{}", a.port).as_str());
}

#[tokio::test]
async fn clients_cannot_use_the_internal_channel() {
    let redis = RedisServer::start();
    let a = serve(&["--broker", &redis.url()]).await;
    let client = Client::builder(a.url()).connect().await.expect("connects");
    let sub = client.subscribe(CHANNEL).await.expect("subscribe sent");
    let err = tokio::time::timeout(Duration::from_secs(10), sub.subscribed())
        .await
        .expect("answer within 10 s")
        .expect_err("subscription refused");
    assert!(err.to_string().contains("internal"), "{err}");
    let err = client
        .publish(CHANNEL, &serde_json::json!({"type": "leaving", "id": "x"}))
        .await
        .expect_err("publish refused");
    assert!(err.to_string().contains("internal"), "{err}");
    // an ordinary channel still works
    client.publish("news", &1).await.expect("ordinary publish");
    // the HTTP API neither publishes to it nor lists it
    let body = serde_json::json!({"channel": CHANNEL, "data": {"type": "leaving", "id": "x"}});
    let (status, text) = common::http(
        a.port,
        "POST",
        "/api/publish",
        Some(API_KEY),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (_, text) = common::http(a.port, "GET", "/api/channels", Some(API_KEY), None).await;
    assert!(!text.contains(CHANNEL), "{text}");
}
