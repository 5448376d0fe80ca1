//! Several `socketcluster_server::Server`s sharing channels through a real `nats-server`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{NatsServer, WAIT, WsClient, start_server, wait_state};
use serde_json::{Value, json};
use socketcluster_broker_nats::{BackplaneState, Error, NatsBroker, NatsBrokerOptions};
use socketcluster_server::Server;

fn options() -> NatsBrokerOptions {
    NatsBrokerOptions::default()
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
}

async fn instances(url: &str, n: usize) -> Vec<(NatsBroker, Server)> {
    let mut v = Vec::new();
    for _ in 0..n {
        let broker = NatsBroker::connect(url, options()).await.expect("connect");
        let server = start_server(Arc::new(broker.clone())).await;
        v.push((broker, server));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_subscriber_on_every_instance_exactly_once_in_order() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 3).await;
    for (b, _) in &group {
        assert!(b.is_connected());
    }

    let mut subscribers = Vec::new();
    for (_, server) in &group {
        for _ in 0..2 {
            let mut c = WsClient::connect(server).await;
            c.subscribe("news").await;
            subscribers.push(c);
        }
    }
    let mut exchange_sub = group[2]
        .1
        .exchange()
        .subscribe("news")
        .await
        .expect("exchange subscribe");

    const N: u64 = 60;
    let mut publishers = Vec::new();
    for (_, server) in &group {
        publishers.push(WsClient::connect(server).await);
    }
    // All three publish concurrently; each one's messages are pipelined in order.
    let mut tasks = Vec::new();
    for (i, mut p) in publishers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for seq in 0..N {
                p.transmit_publish("news", json!({"from": i, "seq": seq}));
            }
            p.publish("news", json!({"from": i, "done": true}))
                .await
                .expect("final publish acknowledged");
            p
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    fn check(received: &[Value], who: &str) {
        let mut next: HashMap<u64, u64> = HashMap::new();
        let mut done = 0;
        for v in received {
            let from = v["from"].as_u64().unwrap();
            if v["done"] == true {
                assert_eq!(
                    next.get(&from).copied().unwrap_or(0),
                    N,
                    "{who}: publisher {from} incomplete"
                );
                done += 1;
                continue;
            }
            let expected = next.entry(from).or_insert(0);
            assert_eq!(
                v["seq"].as_u64().unwrap(),
                *expected,
                "{who}: out of order or duplicated from {from}"
            );
            *expected += 1;
        }
        assert_eq!(done, 3, "{who}");
    }

    for (k, sub) in subscribers.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.iter().filter(|v: &&Value| v["done"] == true).count() < 3 {
            let (ch, data) = sub.next_publication().await;
            assert_eq!(ch, "news");
            got.push(data);
        }
        check(&got, &format!("subscriber {k}"));
        assert_eq!(got.len() as u64, 3 * (N + 1));
    }
    let mut got = Vec::new();
    while got.iter().filter(|v: &&Value| v["done"] == true).count() < 3 {
        let p = tokio::time::timeout(WAIT, exchange_sub.recv())
            .await
            .expect("exchange")
            .expect("open");
        got.push(p.data::<Value>().unwrap());
    }
    check(&got, "exchange subscriber");

    // A last round trip proves nothing else (no duplicate) was queued behind the markers.
    let mut last = WsClient::connect(&group[1].1).await;
    last.publish("news", json!("end")).await.unwrap();
    for sub in subscribers.iter_mut() {
        assert_eq!(sub.next_publication().await.1, json!("end"));
    }

    for (i, (b, _)) in group.iter().enumerate() {
        let s = b.stats();
        // Each instance echoed its own publications and skipped them.
        assert!(s.echoes_skipped > N, "instance {i}: {s:?}");
        assert!(s.received >= 2 * (N + 1), "instance {i}: {s:?}");
        assert_eq!(s.publish_failures, 0);
        assert_eq!(s.invalid_messages, 0);
        assert_eq!(s.channels_subscribed, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_mid_stream_recovers_without_disconnecting_clients() {
    let mut nats = NatsServer::start();
    let group = instances(&nats.url(), 3).await;
    let mut subs = Vec::new();
    for (_, server) in &group {
        let mut c = WsClient::connect(server).await;
        c.subscribe("ticks").await;
        subs.push(c);
    }
    let mut publisher = WsClient::connect(&group[0].1).await;
    publisher.publish("ticks", json!("before")).await.unwrap();
    for s in subs.iter_mut() {
        assert_eq!(s.next_publication().await.1, json!("before"));
    }

    nats.kill();
    for (b, _) in &group {
        wait_state(&mut b.state_changes(), BackplaneState::Disconnected).await;
        assert!(!b.health().nodes[0].connected);
    }

    // During the outage: the publisher gets an error, local subscribers still receive.
    let err = publisher
        .publish("ticks", json!("during"))
        .await
        .expect_err("must fail");
    assert_eq!(err["name"], "BrokerError", "{err}");
    assert_eq!(subs[0].next_publication().await.1, json!("during"));
    // A server-side publish fails too.
    let e = group[1]
        .1
        .exchange()
        .publish("ticks", &"during-exchange")
        .await;
    assert!(e.is_err(), "exchange publish during the outage must fail");
    assert_eq!(subs[1].next_publication().await.1, json!("during-exchange"));
    // Subscribing during the outage works locally and is resubscribed later.
    let mut late = WsClient::connect(&group[1].1).await;
    late.subscribe("late").await;

    nats.restart();
    for (b, _) in &group {
        wait_state(&mut b.state_changes(), BackplaneState::Connected).await;
        assert_eq!(b.stats().reconnects, 1);
        assert_eq!(
            b.stats().channels_subscribed,
            if std::ptr::eq(b, &group[1].0) { 2 } else { 1 }
        );
    }

    publisher
        .publish("ticks", json!("after"))
        .await
        .expect("publish after recovery");
    for s in subs.iter_mut() {
        // The next thing every subscriber sees is "after": nothing from the outage leaked
        // to remote instances, and the channel was resubscribed everywhere.
        assert_eq!(s.next_publication().await.1, json!("after"));
    }
    let mut p2 = WsClient::connect(&group[2].1).await;
    p2.publish("late", json!("hello late")).await.unwrap();
    assert_eq!(
        late.next_publication().await,
        ("late".to_owned(), json!("hello late"))
    );

    for s in &subs {
        assert!(
            !s.is_closed(),
            "a client was disconnected by the backplane outage"
        );
    }
    assert!(!publisher.is_closed());
    // Instances 0 and 1 published during the outage and counted the failures.
    assert_eq!(group[0].0.stats().publish_failures, 1);
    assert_eq!(group[1].0.stats().publish_failures, 1);
    assert_eq!(group[2].0.stats().publish_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_with_special_characters_route_exactly() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 2).await;
    let names = [
        "a.b",
        "a.*",
        "a.>",
        "*",
        ">",
        "a b",
        "ünï.cødé ✓",
        "a",
        "a.b.c",
        "",
    ];
    let mut subs = Vec::new();
    for name in names {
        let mut c = WsClient::connect(&group[0].1).await;
        c.subscribe(name).await;
        subs.push(c);
    }
    let mut publisher = WsClient::connect(&group[1].1).await;
    for name in names {
        publisher.publish(name, json!(name)).await.unwrap();
    }
    publisher.publish("a.b", json!("fence")).await.unwrap();
    for (name, sub) in names.iter().zip(subs.iter_mut()) {
        assert_eq!(
            sub.next_publication().await,
            (name.to_string(), json!(name))
        );
        if *name == "a.b" {
            assert_eq!(sub.next_publication().await.1, json!("fence"));
        }
    }
    // Everything was delivered before the fence; nothing else may be queued.
    for (name, sub) in names.iter().zip(subs.iter_mut()) {
        assert_eq!(
            sub.try_publication(),
            None,
            "{name:?} got another channel's message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_subjects_never_overlap_on_the_wire() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 1).await;
    let broker = &group[0].0;
    // A raw NATS client watching everything under the prefix.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let mut all = raw.subscribe("sc.>").await.unwrap();
    raw.flush().await.unwrap();
    let mut p = WsClient::connect(&group[0].1).await;
    let names = ["a.b", "a.*", "a.>", "a b", "ünï ✓", ""];
    for name in names {
        p.publish(name, json!(name)).await.unwrap();
    }
    use futures_util::StreamExt;
    for name in names {
        let m = tokio::time::timeout(WAIT, all.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), broker.subject_for(name), "{name:?}");
        assert_eq!(m.subject.as_str().split('.').count(), 3, "{}", m.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_from_nats_after_the_last_local_subscriber_leaves() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 2).await;
    let (broker, server) = &group[0];
    let mut a = WsClient::connect(server).await;
    let mut b = WsClient::connect(server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 1);
    a.unsubscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 1);
    b.unsubscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 0);
    assert_eq!(broker.health().nodes[0].channels, 0);
    // Re-subscribing works (a new SUB) and remote publications arrive again.
    a.subscribe("room").await;
    let mut p = WsClient::connect(&group[1].1).await;
    p.publish("room", json!(1)).await.unwrap();
    assert_eq!(a.next_publication().await.1, json!(1));
    assert_eq!(b.try_publication(), None);
}

#[tokio::test]
async fn connect_fails_clearly_when_nats_is_unreachable() {
    let port = common::free_port();
    let err = NatsBroker::connect(&format!("nats://127.0.0.1:{port}"), options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    let err = NatsBroker::connect("nats://127.0.0.1:1", options().subject_prefix("a.*"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPrefix(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_on_a_channel_subject_are_dropped_not_forwarded() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 1).await;
    let mut sub = WsClient::connect(&group[0].1).await;
    sub.subscribe("x").await;
    let raw = async_nats::connect(nats.url()).await.unwrap();
    raw.publish(group[0].0.subject_for("x"), "garbage".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while group[0].0.stats().invalid_messages == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "garbage never counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut p = WsClient::connect(&group[0].1).await;
    p.publish("x", json!("real")).await.unwrap();
    assert_eq!(sub.next_publication().await.1, json!("real"));
    assert_eq!(sub.try_publication(), None);
}
