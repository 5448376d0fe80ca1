//! Continuity, part 2 (docs/PROTOCOL.md 14.16): the Rust client recovers what was
//! published on a channel with history while it was away, from our server (in process),
//! exactly once and in order, or is told it could not. A TCP proxy between them cuts the
//! connection; a real JS client subscribed alongside keeps working unchanged.

use std::time::Duration;

use sc_test_support::{JsClient, TcpProxy};
use serde_json::{Value, json};
use socketcluster_rs_client::{NotRecovered, Recovery, StreamPosition, SubscribeOptions};
use socketcluster_rs_server::auth::AuthConfig;

mod common;
use common::recovery::{CHANNEL, WAIT, addr, client, disconnected, next_n, publish, recovery};
use socketcluster_rs_server::{HistoryConfig, HistoryRule, Server, ServerConfig};

async fn server_at(port: u16, size: usize) -> Server {
    let config = ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(port)
        .with_auth(AuthConfig::with_secret("testkey"))
        .with_history(
            HistoryConfig::default().with_rule(HistoryRule::new("chat/*").with_size(size)),
        );
    Server::bind(config).await.expect("bind")
}

#[tokio::test]
async fn fifty_publications_during_a_cut_arrive_exactly_once_in_order_then_live_ones() {
    let server = server_at(0, 1000).await;
    let proxy = TcpProxy::start(addr(&server)).await;
    let client = client(proxy.port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    // A JS client alongside, directly on the server.
    let js = JsClient::spawn(json!({
        "url": format!("ws://{}/socketcluster/", addr(&server)),
        "interactive": true,
        "steps": [{"op": "subscribe", "channel": CHANNEL, "wait": true}],
        "timeoutMs": 60000,
    }))
    .await;
    js.wait_event(|v| v["event"] == "step" && v["ok"] == true, WAIT)
        .await;
    for n in 1..=5 {
        publish(&server, n).await;
    }
    for n in 1..=5 {
        assert_eq!(next_n(&mut sub).await, (n, Some(n)));
    }
    proxy.set_refusing(true);
    proxy.cut();
    disconnected(&mut events).await;
    for n in 6..=55 {
        publish(&server, n).await;
    }
    proxy.set_refusing(false);
    assert_eq!(
        recovery(&mut events).await,
        Recovery::Recovered { publications: 50 }
    );
    for n in 6..=55 {
        assert_eq!(next_n(&mut sub).await, (n, Some(n)), "in order, once");
    }
    for n in 56..=60 {
        publish(&server, n).await;
    }
    for n in 56..=60 {
        assert_eq!(next_n(&mut sub).await.0, n, "then live ones");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.recv())
            .await
            .is_err(),
        "nothing twice"
    );
    // The JS client saw all 60, once, in order.
    js.run_step(
        json!({"op": "waitPublish", "channel": CHANNEL, "count": 60}),
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

#[tokio::test]
async fn a_restarted_in_process_server_reports_not_recovered() {
    let server = server_at(0, 1000).await;
    let port = addr(&server).port();
    let client = client(port);
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    publish(&server, 1).await;
    assert_eq!(next_n(&mut sub).await.0, 1);
    server.shutdown().await;
    disconnected(&mut events).await;
    let server = server_at(port, 1000).await;
    assert_eq!(
        recovery(&mut events).await,
        Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }
    );
    assert!(matches!(
        sub.status().get().last_recovery,
        Some(Recovery::NotRecovered { .. })
    ));
    publish(&server, 2).await;
    assert_eq!(next_n(&mut sub).await, (2, Some(1)), "the new stream");
    client.close().await;
}

/// The restarted server's stream already holds publications when the client comes back:
/// the old stream's loss is reported, and the new stream arrives from its start.
#[tokio::test]
async fn after_a_restart_the_new_stream_is_recovered_from_its_start() {
    let old = server_at(0, 1000).await;
    let proxy = TcpProxy::start(addr(&old)).await;
    let client = client(proxy.port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    publish(&old, 1).await;
    assert_eq!(next_n(&mut sub).await, (1, Some(1)));
    proxy.set_refusing(true);
    proxy.cut();
    disconnected(&mut events).await;
    old.shutdown().await;
    let new = server_at(0, 1000).await;
    for n in 2..=4 {
        publish(&new, n).await;
    }
    proxy.retarget(addr(&new));
    proxy.set_refusing(false);
    assert_eq!(
        recovery(&mut events).await,
        Recovery::NotRecovered {
            reason: NotRecovered::EpochChanged
        }
    );
    assert_eq!(
        recovery(&mut events).await,
        Recovery::Recovered { publications: 3 }
    );
    for (n, offset) in [(2, 1), (3, 2), (4, 3)] {
        assert_eq!(next_n(&mut sub).await, (n, Some(offset)), "once, in order");
    }
    publish(&new, 5).await;
    assert_eq!(next_n(&mut sub).await, (5, Some(4)));
    client.close().await;
}

#[tokio::test]
async fn a_trimmed_history_reports_not_recovered_and_replays_nothing() {
    let server = server_at(0, 10).await;
    let proxy = TcpProxy::start(addr(&server)).await;
    let client = client(proxy.port());
    let mut events = client.events();
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    proxy.set_refusing(true);
    proxy.cut();
    disconnected(&mut events).await;
    for n in 1..=30 {
        publish(&server, n).await;
    }
    proxy.set_refusing(false);
    assert_eq!(
        recovery(&mut events).await,
        Recovery::NotRecovered {
            reason: NotRecovered::Trimmed
        }
    );
    publish(&server, 31).await;
    assert_eq!(
        next_n(&mut sub).await.0,
        31,
        "nothing replayed; live ones go on"
    );
    client.close().await;
}

#[tokio::test]
async fn an_application_resumes_from_a_position_it_stored() {
    let server = server_at(0, 1000).await;
    let port = addr(&server).port();
    let first = client(port);
    let mut sub = first.subscribe(CHANNEL).await.unwrap();
    sub.subscribed().await.unwrap();
    publish(&server, 1).await;
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    let stored: StreamPosition = m.position().expect("a position");
    first.close().await;
    for n in 2..=4 {
        publish(&server, n).await;
    }
    // A new process, say: it starts from what it stored.
    let second = client(port);
    let mut events = second.events();
    let mut sub = second
        .subscribe_with(CHANNEL, SubscribeOptions::new().recover_from(stored))
        .await
        .unwrap();
    assert_eq!(
        recovery(&mut events).await,
        Recovery::Recovered { publications: 3 }
    );
    for n in 2..=4 {
        assert_eq!(next_n(&mut sub).await.0, n);
    }
    second.close().await;
}

#[tokio::test]
async fn history_and_positions_are_readable_from_the_exchange() {
    let server = server_at(0, 1000).await;
    for n in 1..=5 {
        let data = serde_json::value::to_raw_value(&json!({ "n": n })).unwrap();
        let pos = server
            .exchange()
            .publish_raw_at(CHANNEL, Some(data))
            .await
            .unwrap()
            .expect("a channel with history");
        assert_eq!(pos.offset, n);
    }
    let read = server
        .exchange()
        .history(CHANNEL, Some(2), 2)
        .await
        .unwrap();
    assert_eq!(read.position.offset, 5);
    let ns: Vec<Value> = read
        .publications
        .iter()
        .map(|p| p.data::<Value>().unwrap()["n"].clone())
        .collect();
    assert_eq!(ns, [json!(3), json!(4)]);
    assert!(server.exchange().history("news", None, 10).await.is_err());
}
