//! Continuity, part 2, across instances (docs/PROTOCOL.md 14.16): three servers share
//! channels and their history through a real `redis-server`; the Rust client recovers
//! what it missed from any of them, exactly once and in order, also after the instance it
//! is connected to lost its Redis link for a while; a Redis that lost its keys is
//! reported as a new epoch. Real JS clients subscribed alongside keep working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sc_test_support::backplane::RedisServer;
use sc_test_support::{JsClient, TcpProxy};
use serde_json::json;
use socketcluster_rs_broker_redis::{BackplaneState, RedisBroker, RedisBrokerOptions};
use socketcluster_rs_client::{NotRecovered, Recovery};
use socketcluster_rs_server::auth::AuthConfig;

mod common;
use common::recovery::{CHANNEL, WAIT, addr, client, disconnected, next_n, publish, recovery};
use socketcluster_rs_server::{HistoryConfig, HistoryRule, Server, ServerConfig};

fn options() -> RedisBrokerOptions {
    RedisBrokerOptions::default()
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_millis(500))
}

async fn instance(redis_url: &str, size: usize) -> Server {
    instance_with_broker(redis_url, size).await.1
}

async fn instance_with_broker(redis_url: &str, size: usize) -> (RedisBroker, Server) {
    let broker = RedisBroker::connect(&[redis_url.to_owned()], options())
        .await
        .expect("connect to redis");
    let config = ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(0)
        .with_auth(AuthConfig::with_secret("testkey"))
        .with_history(
            HistoryConfig::default().with_rule(HistoryRule::new("chat/*").with_size(size)),
        );
    let server = Server::with_broker(config, Arc::new(broker.clone())).expect("server");
    server.listen().await.expect("listen");
    (broker, server)
}

async fn backplane_state(broker: &RedisBroker, state: BackplaneState) {
    let mut changes = broker.state_changes();
    assert!(
        tokio::time::timeout(WAIT, changes.wait_for(state))
            .await
            .expect("in time"),
        "the broker reaches {state:?}"
    );
}

/// Every subscriber on `server` has the publication of `n` (waits for the fan-out).
async fn js_alongside(server: &Server) -> JsClient {
    let js = JsClient::spawn(json!({
        "url": format!("ws://{}/socketcluster/", addr(server)),
        "interactive": true,
        "steps": [{"op": "subscribe", "channel": CHANNEL, "wait": true}],
        "timeoutMs": 90000,
    }))
    .await;
    js.wait_event(|v| v["event"] == "step" && v["ok"] == true, WAIT)
        .await;
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_from_another_instance_what_was_published_during_a_cut() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), 1000).await;
    let b = instance(&redis.url(), 1000).await;
    let c = instance(&redis.url(), 1000).await;
    let proxy = TcpProxy::start(addr(&a)).await;
    let client = client(proxy.port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    let js = js_alongside(&c).await;
    for n in 1..=5 {
        publish(&b, n).await;
    }
    for n in 1..=5 {
        assert_eq!(next_n(&mut sub).await, (n, Some(n)));
    }
    proxy.set_refusing(true);
    proxy.cut();
    disconnected(&mut events).await;
    for n in 6..=55 {
        publish(&c, n).await;
    }
    // Back, through another instance.
    proxy.retarget(addr(&b));
    proxy.set_refusing(false);
    assert_eq!(
        recovery(&mut events).await,
        Recovery::Recovered { publications: 50 }
    );
    for n in 6..=55 {
        assert_eq!(next_n(&mut sub).await, (n, Some(n)), "once, in order");
    }
    for n in 56..=60 {
        publish(&a, n).await;
    }
    for n in 56..=60 {
        assert_eq!(next_n(&mut sub).await.0, n, "then live ones");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "nothing twice"
    );
    js.run_step(
        json!({"op": "waitPublish", "channel": CHANNEL, "count": 60, "timeoutMs": 20000}),
        WAIT,
    )
    .await;
    let run = js.wait_exit().await;
    let seen: Vec<u64> = run
        .lines
        .iter()
        .filter(|l| l["event"] == "publish")
        .map(|l| l["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, (1..=60).collect::<Vec<_>>(), "{}", run.dump());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_lost_its_redis_link_lets_its_clients_recover_the_gap() {
    let redis = RedisServer::start();
    let redis_addr: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    // Instance A reaches Redis through a proxy we can cut; B directly.
    let link = TcpProxy::start(redis_addr).await;
    let (a_broker, a) =
        instance_with_broker(&format!("redis://127.0.0.1:{}", link.port()), 1000).await;
    let b = instance(&redis.url(), 1000).await;
    let client = client(addr(&a).port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    for n in 1..=3 {
        publish(&b, n).await;
    }
    for n in 1..=3 {
        assert_eq!(next_n(&mut sub).await.0, n);
    }
    // A loses Redis; B goes on publishing (into Redis's history).
    link.set_refusing(true);
    link.cut();
    backplane_state(&a_broker, BackplaneState::Disconnected).await;
    for n in 4..=23 {
        publish(&b, n).await;
    }
    link.set_refusing(false);
    // A reconnects and resubscribes; the next publication shows the client the jump, and
    // it recovers the gap from Redis through A.
    backplane_state(&a_broker, BackplaneState::Connected).await;
    publish(&b, 24).await;
    assert_eq!(
        recovery(&mut events).await,
        Recovery::Recovered { publications: 21 }
    );
    for n in 4..=24 {
        assert_eq!(next_n(&mut sub).await.0, n, "the gap, once, in order");
    }
    assert_eq!(
        client.state(),
        socketcluster_rs_client::ConnectionState::Open
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_keys_is_reported_as_a_new_epoch() {
    let mut redis = RedisServer::start();
    let a = instance(&redis.url(), 1000).await;
    let client = client(addr(&a).port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    publish(&a, 1).await;
    assert_eq!(next_n(&mut sub).await, (1, Some(1)));
    // No persistence: the restarted Redis has no history and no position.
    redis.restart();
    tokio::time::timeout(WAIT, async {
        loop {
            let data = serde_json::value::to_raw_value(&json!({ "n": 2 })).unwrap();
            if a.exchange().publish_raw(CHANNEL, Some(data)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("publishes again once reconnected");
    assert_eq!(
        recovery(&mut events).await,
        Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }
    );
    assert_eq!(
        next_n(&mut sub).await,
        (2, Some(1)),
        "the new stream, followed"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_redis_history_reports_not_recovered() {
    let redis = RedisServer::start();
    let a = instance(&redis.url(), 5).await;
    let b = instance(&redis.url(), 5).await;
    let proxy = TcpProxy::start(addr(&a)).await;
    let client = client(proxy.port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    proxy.set_refusing(true);
    proxy.cut();
    disconnected(&mut events).await;
    for n in 1..=20 {
        publish(&b, n).await;
    }
    proxy.set_refusing(false);
    assert_eq!(
        recovery(&mut events).await,
        Recovery::NotRecovered {
            reason: NotRecovered::Trimmed
        }
    );
    publish(&b, 21).await;
    assert_eq!(next_n(&mut sub).await.0, 21);
    // The history readable through any instance: the last 5.
    let read = a.exchange().history(CHANNEL, None, 100).await.unwrap();
    let offsets: Vec<_> = read
        .publications
        .iter()
        .filter_map(|p| p.offset())
        .collect();
    assert_eq!(offsets, [17, 18, 19, 20, 21]);
    client.close().await;
}
