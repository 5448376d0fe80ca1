//! The multi-instance scenarios run by both broker test suites. `group` is a list of
//! brokers, each attached to its own server, all connected to the same backplane.
use std::collections::HashMap;

use serde_json::{Value, json};
use socketcluster_rs_backplane::BackplaneState;
use socketcluster_rs_server::Server;

use super::{Probe, WsClient, wait_state};
use crate::backplane::{BackplaneServer, WAIT};

/// Three instances, two subscribers each and an exchange subscriber; three publishers
/// publish concurrently: every subscriber receives every publication exactly once,
/// each publisher's in order, and the echoes are skipped.
pub async fn publications_reach_every_subscriber_exactly_once_in_order<B>(
    group: &[(B, Server)],
    probe: &Probe<B>,
) {
    let mut subscribers = Vec::new();
    for (_, server) in group {
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
    for (_, server) in group {
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
        let s = (probe.stats)(b);
        // Each instance echoed its own publications and skipped them.
        assert!(s.echoes_skipped > N, "instance {i}: {s:?}");
        assert!(s.received >= 2 * (N + 1), "instance {i}: {s:?}");
        assert_eq!(s.publish_failures, 0);
        assert_eq!(s.invalid_messages, 0);
        assert_eq!(s.channels_subscribed, 1);
    }
}

/// Three instances; the backplane is killed mid-stream and restarted: during the outage
/// publications fail but local delivery goes on; afterwards every channel (also one
/// subscribed during the outage) is resubscribed, and no client was disconnected.
pub async fn backplane_restart_recovers_without_disconnecting_clients<B>(
    backplane: &mut impl BackplaneServer,
    group: &[(B, Server)],
    probe: &Probe<B>,
) {
    let mut subs = Vec::new();
    for (_, server) in group {
        let mut c = WsClient::connect(server).await;
        c.subscribe("ticks").await;
        subs.push(c);
    }
    let mut publisher = WsClient::connect(&group[0].1).await;
    publisher.publish("ticks", json!("before")).await.unwrap();
    for s in subs.iter_mut() {
        assert_eq!(s.next_publication().await.1, json!("before"));
    }

    backplane.kill();
    for (b, _) in group {
        wait_state(&mut (probe.state_changes)(b), BackplaneState::Disconnected).await;
        assert!(!(probe.health)(b).nodes[0].connected);
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

    backplane.restart();
    for (b, _) in group {
        wait_state(&mut (probe.state_changes)(b), BackplaneState::Connected).await;
        assert_eq!((probe.stats)(b).reconnects, 1);
        assert_eq!(
            (probe.stats)(b).channels_subscribed,
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
    assert_eq!((probe.stats)(&group[0].0).publish_failures, 1);
    assert_eq!((probe.stats)(&group[1].0).publish_failures, 1);
    assert_eq!((probe.stats)(&group[2].0).publish_failures, 0);
}

/// Two instances: channel names with dots, wildcards, spaces, unicode and the empty
/// name each reach exactly their own subscribers.
pub async fn channel_names_with_special_characters_route_exactly<B>(group: &[(B, Server)]) {
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
