//! Channel history and recovery on the wire (docs/PROTOCOL.md 14.16), with a raw client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_server::broker::{Broker, BrokerFuture, Delivery};
use socketcluster_rs_server::middleware::PublishOutAction;
use socketcluster_rs_server::{
    Block, HistoryConfig, HistoryRule, Publication, Server, ServerConfig,
};

fn history_config(size: usize, max_recovery: usize) -> ServerConfig {
    config().with_history(
        HistoryConfig::default()
            .with_rule(HistoryRule::new("chat/*").with_size(size))
            .with_max_recovery(max_recovery),
    )
}

async fn publish(server: &Server, channel: &str, n: u64) {
    let data = serde_json::value::to_raw_value(&json!({ "n": n })).unwrap();
    server
        .exchange()
        .publish_raw(channel, Some(data))
        .await
        .unwrap();
}

/// Subscribe with `data` and collect the frames up to the reply of `cid`.
async fn subscribe(c: &mut Raw, data: Value, cid: u64) -> (Vec<Value>, Value) {
    c.send(&json!({"event": "#subscribe", "data": data, "cid": cid}).to_string())
        .await;
    let mut before = Vec::new();
    loop {
        let f = c.json().await;
        if f["rid"] == cid {
            return (before, f);
        }
        before.push(f);
    }
}

fn ns(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["data"]["data"]["n"].as_u64().expect("a publication"))
        .collect()
}

#[tokio::test]
async fn publications_carry_their_offset_and_epoch_and_the_reply_the_position() {
    let server = start(history_config(100, 300)).await;
    let mut c = open(&server).await;
    let (before, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    assert!(before.is_empty());
    let epoch = reply["data"]["epoch"]
        .as_str()
        .expect("an epoch")
        .to_owned();
    assert_eq!(epoch.len(), 8);
    assert_eq!(reply["data"], json!({"epoch": epoch, "offset": 0}));
    publish(&server, "chat/1", 1).await;
    let text = c.text().await;
    assert_eq!(
        text,
        format!(
            r#"{{"event":"{}","data":{{"channel":"chat/1","data":{{"n":1}},"offset":1,"epoch":"{epoch}"}}}}"#,
            "#publish"
        )
    );
    // A channel without history is untouched: plain frames, a plain ack.
    let (_, plain) = subscribe(&mut c, json!({"channel": "news"}), 3).await;
    assert_eq!(plain, json!({"rid": 3}));
    publish(&server, "news", 2).await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"news","data":{"n":2}}}"##
    );
}

#[tokio::test]
async fn a_returning_client_gets_what_it_missed_in_order_before_the_reply() {
    let server = start(history_config(100, 300)).await;
    let mut c = open(&server).await;
    let (_, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    let epoch = reply["data"]["epoch"].clone();
    publish(&server, "chat/1", 1).await;
    assert_eq!(c.json().await["data"]["offset"], 1);
    c.close(1000, "").await;
    for n in 2..=51 {
        publish(&server, "chat/1", n).await;
    }
    let mut c = open(&server).await;
    let (before, reply) = subscribe(
        &mut c,
        json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": 1}}),
        2,
    )
    .await;
    assert_eq!(ns(&before), (2..=51).collect::<Vec<_>>());
    assert_eq!(
        reply["data"],
        json!({"epoch": epoch, "offset": 51, "recovered": true})
    );
    // Then live ones.
    publish(&server, "chat/1", 52).await;
    assert_eq!(c.json().await["data"]["offset"], 52);
    // At the top already: recovered, nothing replayed.
    let (before, reply) = subscribe(
        &mut c,
        json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": 52}}),
        3,
    )
    .await;
    assert!(before.is_empty());
    assert_eq!(reply["data"]["recovered"], true);
}

#[tokio::test]
async fn a_gap_that_cannot_be_filled_exactly_replays_nothing_and_says_why() {
    let server = start(history_config(10, 20)).await;
    let mut c = open(&server).await;
    let (_, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    let epoch = reply["data"]["epoch"].clone();
    for n in 1..=30 {
        publish(&server, "chat/1", n).await;
    }
    let mut cid = 10;
    for (from, reason) in [(25, None), (15, Some("trimmed")), (5, Some("limit"))] {
        let mut c = open(&server).await;
        cid += 1;
        let (before, reply) = subscribe(
            &mut c,
            json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": from}}),
            cid,
        )
        .await;
        match reason {
            None => {
                assert_eq!(ns(&before), (26..=30).collect::<Vec<_>>());
                assert_eq!(reply["data"]["recovered"], true);
            }
            Some(reason) => {
                assert!(before.is_empty(), "no partial replay: {before:?}");
                assert_eq!(
                    reply["data"],
                    json!({"epoch": epoch, "offset": 30, "recovered": false, "reason": reason})
                );
            }
        }
    }
    let mut c = open(&server).await;
    let (before, reply) = subscribe(
        &mut c,
        json!({"channel": "chat/1", "recover": {"epoch": "ZZZZZZZZ", "offset": 29}}),
        40,
    )
    .await;
    assert!(before.is_empty());
    assert_eq!(reply["data"]["reason"], "epoch");
    assert_eq!(reply["data"]["offset"], 30);
}

#[tokio::test]
async fn a_restarted_server_starts_a_new_epoch() {
    let server = start(history_config(100, 300)).await;
    let mut c = open(&server).await;
    let (_, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    let epoch = reply["data"]["epoch"].clone();
    publish(&server, "chat/1", 1).await;
    drop(c);
    drop(server);
    let server = start(history_config(100, 300)).await;
    let mut c = open(&server).await;
    let (before, reply) = subscribe(
        &mut c,
        json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": 1}}),
        2,
    )
    .await;
    assert!(before.is_empty());
    assert_eq!(reply["data"]["recovered"], false);
    assert_eq!(reply["data"]["reason"], "epoch");
    assert_ne!(reply["data"]["epoch"], epoch);
}

#[tokio::test]
async fn publications_during_a_recovery_follow_the_reply_exactly_once() {
    let server = start(history_config(1000, 1000)).await;
    let mut c = open(&server).await;
    let (_, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    let epoch = reply["data"]["epoch"].clone();
    drop(c);
    for n in 1..=100 {
        publish(&server, "chat/1", n).await;
    }
    // Publish continuously while clients recover.
    let s2 = server.clone();
    let publisher = tokio::spawn(async move {
        for n in 101..=400 {
            publish(&s2, "chat/1", n).await;
            tokio::task::yield_now().await;
        }
    });
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = open(&server).await;
        let (before, reply) = subscribe(
            &mut c,
            json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": i * 10}}),
            2,
        )
        .await;
        assert_eq!(reply["data"]["recovered"], true, "{reply}");
        let top = reply["data"]["offset"].as_u64().unwrap();
        let offsets: Vec<u64> = before
            .iter()
            .map(|f| f["data"]["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, (i * 10 + 1..=top).collect::<Vec<_>>());
        clients.push((c, top));
    }
    publisher.await.unwrap();
    for (mut c, top) in clients {
        // Everything after the reply's position, once, in order.
        for expected in top + 1..=400 {
            let f = c.json().await;
            assert_eq!(f["data"]["offset"], expected, "{f}");
        }
        c.silent_for(Duration::from_millis(100))
            .await
            .expect("nothing more");
    }
}

#[tokio::test]
async fn publish_out_middleware_sees_replayed_publications_and_keeps_them_in_order() {
    let server = start(history_config(100, 300)).await;
    server.add_outbound_middleware(|mut action: PublishOutAction| async move {
        // Hide odd numbers, mark the others.
        let n = action
            .data::<Value>()
            .ok()
            .and_then(|v| v["n"].as_u64())
            .unwrap_or(0);
        if n % 2 == 1 {
            return Err(Block::Silent);
        }
        action.set_data(&json!({"n": n, "seen": true})).unwrap();
        Ok(action)
    });
    let mut c = open(&server).await;
    let (_, reply) = subscribe(&mut c, json!({"channel": "chat/1"}), 2).await;
    let epoch = reply["data"]["epoch"].clone();
    drop(c);
    for n in 1..=6 {
        publish(&server, "chat/1", n).await;
    }
    let mut c = open(&server).await;
    let (before, reply) = subscribe(
        &mut c,
        json!({"channel": "chat/1", "recover": {"epoch": epoch, "offset": 0}}),
        2,
    )
    .await;
    assert_eq!(ns(&before), [2, 4, 6]);
    assert!(before.iter().all(|f| f["data"]["data"]["seen"] == true));
    let offsets: Vec<_> = before.iter().map(|f| f["data"]["offset"].clone()).collect();
    assert_eq!(offsets, [json!(2), json!(4), json!(6)], "positions kept");
    assert_eq!(reply["data"]["recovered"], true);
}

/// A broker without history: a server configured with history refuses it.
struct Plain;

impl Broker for Plain {
    fn attach(&self, _delivery: Delivery) {}
    fn subscribe(&self, _channel: &str) -> BrokerFuture {
        Box::pin(async { Ok(()) })
    }
    fn unsubscribe(&self, _channel: &str) -> BrokerFuture {
        Box::pin(async { Ok(()) })
    }
    fn publish(&self, _p: Arc<Publication>) -> BrokerFuture {
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn history_needs_a_broker_that_keeps_it() {
    let Err(err) = Server::with_broker(history_config(10, 10), Arc::new(Plain)) else {
        panic!("a broker without history was accepted");
    };
    assert!(err.to_string().contains("history"), "{err}");
    assert!(Server::with_broker(config(), Arc::new(Plain)).is_ok());
}
