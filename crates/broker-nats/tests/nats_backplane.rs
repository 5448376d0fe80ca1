//! Several `socketcluster_rs_server::Server`s sharing channels through a real `nats-server`.

use std::sync::Arc;
use std::time::Duration;

use sc_test_support::backplane::{NatsServer, WAIT};
use sc_test_support::backplane_suite::{Probe, WsClient, scenarios, start_server};
use sc_test_support::free_port;
use serde_json::json;
use socketcluster_rs_broker_nats::{Error, NatsBroker, NatsBrokerOptions};
use socketcluster_rs_server::Server;

fn options() -> NatsBrokerOptions {
    NatsBrokerOptions::default()
        .reconnect_delay(Duration::from_millis(20), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(1))
}

const PROBE: Probe<NatsBroker> = Probe {
    stats: NatsBroker::stats,
    health: NatsBroker::health,
    state_changes: NatsBroker::state_changes,
};

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

    scenarios::publications_reach_every_subscriber_exactly_once_in_order(&group, &PROBE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_mid_stream_recovers_without_disconnecting_clients() {
    let mut nats = NatsServer::start();
    let group = instances(&nats.url(), 3).await;
    scenarios::backplane_restart_recovers_without_disconnecting_clients(&mut nats, &group, &PROBE)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_names_with_special_characters_route_exactly() {
    let nats = NatsServer::start();
    let group = instances(&nats.url(), 2).await;
    scenarios::channel_names_with_special_characters_route_exactly(&group).await;
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
    let port = free_port();
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
