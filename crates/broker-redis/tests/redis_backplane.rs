//! Several `socketcluster_server::Server`s sharing channels through a real `redis-server`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{RedisServer, WAIT, WsClient, redis_command, start_server, wait_state};
use serde_json::{Value, json};
use socketcluster_broker_redis::{
    BackplaneState, Error, RedisBroker, RedisBrokerOptions, Topology,
};
use socketcluster_server::Server;

fn options() -> RedisBrokerOptions {
    RedisBrokerOptions::default()
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
}

async fn instances(urls: &[String], n: usize) -> Vec<(RedisBroker, Server)> {
    let mut v = Vec::new();
    for _ in 0..n {
        let broker = RedisBroker::connect(urls, options())
            .await
            .expect("connect");
        let server = start_server(Arc::new(broker.clone())).await;
        v.push((broker, server));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_subscriber_on_every_instance_exactly_once_in_order() {
    let redis = RedisServer::start();
    let group = instances(&[redis.url()], 3).await;
    for (b, _) in &group {
        assert_eq!(b.topology(), Topology::Nodes);
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
async fn restarting_redis_mid_stream_recovers_without_disconnecting_clients() {
    let mut redis = RedisServer::start();
    let group = instances(&[redis.url()], 3).await;
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

    redis.kill();
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

    redis.restart();
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
    let redis = RedisServer::start();
    let group = instances(&[redis.url()], 2).await;
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
async fn unsubscribes_from_redis_after_the_last_local_subscriber_leaves() {
    let redis = RedisServer::start();
    let group = instances(&[redis.url()], 1).await;
    let (broker, server) = &group[0];
    let mut a = WsClient::connect(server).await;
    let mut b = WsClient::connect(server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 1);
    let channels = redis_command(redis.port, "PUBSUB CHANNELS").unwrap();
    assert!(channels.contains("sc:room"), "{channels}");
    a.unsubscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 1);
    b.unsubscribe("room").await;
    assert_eq!(broker.stats().channels_subscribed, 0);
    assert_eq!(broker.health().nodes[0].channels, 0);
    let channels = redis_command(redis.port, "PUBSUB CHANNELS").unwrap();
    assert!(!channels.contains("sc:room"), "{channels}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_nodes_share_channels_by_rendezvous_hashing() {
    let r1 = RedisServer::start();
    let r2 = RedisServer::start();
    // The two instances list the nodes in different orders.
    let a_urls = vec![format!("{},{}", r1.url(), r2.url())];
    let b_urls = vec![r2.url(), r1.url()];
    let a = RedisBroker::connect(&a_urls, options()).await.unwrap();
    let b = RedisBroker::connect(&b_urls, options()).await.unwrap();
    let sa = start_server(Arc::new(a.clone())).await;
    let sb = start_server(Arc::new(b.clone())).await;

    let channels: Vec<String> = (0..16).map(|i| format!("room-{i}")).collect();
    for ch in &channels {
        assert_eq!(a.node_for_channel(ch), b.node_for_channel(ch), "{ch}");
    }
    let mut sub = WsClient::connect(&sb).await;
    for ch in &channels {
        sub.subscribe(ch).await;
    }
    let health = b.health();
    assert_eq!(health.nodes.len(), 2);
    assert!(
        health.nodes.iter().all(|n| n.connected && n.channels > 0),
        "{health:?}"
    );

    let mut publisher = WsClient::connect(&sa).await;
    for ch in &channels {
        publisher.publish(ch, json!(ch)).await.unwrap();
    }
    // Channels on different nodes travel over different connections: only the order
    // within a channel is guaranteed, so compare the set.
    let mut got = Vec::new();
    for _ in &channels {
        got.push(sub.next_publication().await);
    }
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected: Vec<(String, serde_json::Value)> =
        channels.iter().map(|c| (c.clone(), json!(c))).collect();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, expected);

    // One node going away degrades only its channels.
    drop(r2);
    wait_state(&mut a.state_changes(), BackplaneState::Degraded).await;
    wait_state(&mut b.state_changes(), BackplaneState::Degraded).await;
    let r1_key = format!("127.0.0.1:{}", r1.port);
    let on_r1 = channels
        .iter()
        .find(|c| a.node_for_channel(c) == r1_key)
        .unwrap();
    let on_r2 = channels
        .iter()
        .find(|c| a.node_for_channel(c) != r1_key)
        .unwrap();
    publisher.publish(on_r1, json!("still")).await.unwrap();
    assert_eq!(
        sub.next_publication().await,
        (on_r1.clone(), json!("still"))
    );
    let err = publisher.publish(on_r2, json!("lost")).await.unwrap_err();
    assert_eq!(err["name"], "BrokerError");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_uses_sharded_pubsub() {
    let redis = RedisServer::start_cluster();
    let group = instances(&[redis.url()], 2).await;
    assert_eq!(group[0].0.topology(), Topology::Cluster);
    let mut sub = WsClient::connect(&group[0].1).await;
    sub.subscribe("sharded.news").await;
    sub.subscribe("{tag}other").await;
    let shard = redis_command(redis.port, "PUBSUB SHARDCHANNELS").unwrap();
    assert!(shard.contains("sc:sharded.news"), "{shard}");
    let mut publisher = WsClient::connect(&group[1].1).await;
    for i in 0..20 {
        let ch = if i % 2 == 0 {
            "sharded.news"
        } else {
            "{tag}other"
        };
        publisher.publish(ch, json!(i)).await.unwrap();
    }
    for i in 0..20 {
        let ch = if i % 2 == 0 {
            "sharded.news"
        } else {
            "{tag}other"
        };
        assert_eq!(sub.next_publication().await, (ch.to_owned(), json!(i)));
    }
    assert!(group[0].0.stats().received >= 20);
}

#[tokio::test]
async fn connect_fails_clearly_when_redis_is_unreachable() {
    let port = common::free_port();
    let err = RedisBroker::connect(
        &[format!("redis://127.0.0.1:{port}")],
        options().topology(Topology::Nodes),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    let err = RedisBroker::connect(&["nats://x:1".to_owned()], options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_on_the_channel_are_dropped_not_forwarded() {
    let redis = RedisServer::start();
    let group = instances(&[redis.url()], 1).await;
    let mut sub = WsClient::connect(&group[0].1).await;
    sub.subscribe("x").await;
    let reply = redis_command(redis.port, "PUBLISH sc:x garbage").unwrap();
    assert!(reply.starts_with(":1"), "{reply}");
    let mut p = WsClient::connect(&group[0].1).await;
    p.publish("x", json!("real")).await.unwrap();
    assert_eq!(sub.next_publication().await.1, json!("real"));
    // The garbage was received before "real" was published (same Redis connection order
    // is not guaranteed across connections), so wait for the counter.
    let deadline = tokio::time::Instant::now() + WAIT;
    while group[0].0.stats().invalid_messages == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "garbage never counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sub.try_publication(), None);
}
