//! The harness and scenarios shared by the integration tests of
//! `socketcluster-broker-redis` and `socketcluster-broker-nats` (feature `testing`, enabled
//! only by their dev-dependencies).
//!
//! It needs `socketcluster-server`, so it cannot live in `sc-test-support` (a
//! dev-dependency of the server); the backplane server processes themselves
//! (`RedisServer`, `NatsServer`) are in `sc_test_support::backplane`.
//!
//! * [`start_server`]: a `Server` on a free port with a given broker;
//! * [`WsClient`]: a minimal SocketCluster client over a raw WebSocket (protocol v2);
//! * [`scenarios`]: the multi-instance tests both brokers must pass, given a [`Probe`]
//!   reading the broker's status.
#![allow(clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use sc_test_support::backplane::WAIT;
use serde_json::{Value, json};
use socketcluster_server::{Server, ServerConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::{BackplaneState, Health, Stats};

/// How the [`scenarios`] read a broker `B`'s status: its inherent methods, e.g.
/// `Probe { stats: RedisBroker::stats, health: RedisBroker::health, state_changes:
/// RedisBroker::state_changes }`.
#[derive(Debug)]
pub struct Probe<B> {
    /// `B::stats`.
    pub stats: fn(&B) -> Stats,
    /// `B::health`.
    pub health: fn(&B) -> Health,
    /// `B::state_changes`.
    pub state_changes: fn(&B) -> watch::Receiver<BackplaneState>,
}

/// A server bound on 127.0.0.1, port 0, with the given broker.
pub async fn start_server(broker: Arc<dyn socketcluster_server::broker::Broker>) -> Server {
    let config = ServerConfig::default().with_host("127.0.0.1").with_port(0);
    let server = Server::with_broker(config, broker).expect("server");
    server.listen().await.expect("listen");
    server
}

/// A minimal SocketCluster client over a raw WebSocket, speaking protocol version 2.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    publications: mpsc::UnboundedReceiver<(String, Value)>,
    closed: Arc<AtomicBool>,
    next_cid: u64,
    /// The socket id from the handshake.
    pub id: String,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("id", &self.id).finish()
    }
}

impl WsClient {
    /// Connect to `server` and complete the handshake.
    pub async fn connect(server: &Server) -> WsClient {
        let url = format!(
            "ws://{}/socketcluster/",
            server.local_addr().expect("listening")
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Default::default();
        let (pub_tx, pub_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        {
            let out = out_tx.clone();
            let pending = pending.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else {
                        if let Message::Close(_) = msg {
                            break;
                        }
                        continue;
                    };
                    if text.as_str().is_empty() {
                        let _ = out.send(Message::text(""));
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(rid) = v.get("rid").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&rid) {
                            let _ = tx.send(v);
                        }
                    } else if v["event"] == "#publish" {
                        let ch = v["data"]["channel"].as_str().unwrap_or_default().to_owned();
                        let _ = pub_tx.send((ch, v["data"]["data"].clone()));
                    }
                }
                closed.store(true, Ordering::SeqCst);
            });
        }
        let mut c = WsClient {
            out: out_tx,
            pending,
            publications: pub_rx,
            closed,
            next_cid: 0,
            id: String::new(),
        };
        let reply = c.invoke("#handshake", json!({"authToken": null})).await;
        c.id = reply["data"]["id"]
            .as_str()
            .expect("handshake id")
            .to_owned();
        c
    }

    /// Invoke and wait for the response packet (`{"rid":..,"data"|"error":..}`).
    pub async fn invoke(&mut self, event: &str, data: Value) -> Value {
        self.next_cid += 1;
        let cid = self.next_cid;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(cid, tx);
        let frame = json!({"event": event, "data": data, "cid": cid}).to_string();
        self.out
            .send(Message::text(frame))
            .expect("socket writer gone");
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {event}"))
            .expect("socket closed before the reply")
    }

    /// `#subscribe` and assert it succeeded.
    pub async fn subscribe(&mut self, channel: &str) {
        let r = self.invoke("#subscribe", json!({"channel": channel})).await;
        assert!(
            r.get("error").is_none(),
            "subscribe {channel:?} failed: {r}"
        );
    }

    /// `#unsubscribe` and assert it succeeded.
    pub async fn unsubscribe(&mut self, channel: &str) {
        let r = self.invoke("#unsubscribe", json!(channel)).await;
        assert!(
            r.get("error").is_none(),
            "unsubscribe {channel:?} failed: {r}"
        );
    }

    /// Invoked publish: `Ok` on `{"rid":n}`, `Err(error object)` on an error reply.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<(), Value> {
        let r = self
            .invoke("#publish", json!({"channel": channel, "data": data}))
            .await;
        match r.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Send publishes without waiting for the acknowledgements (in order).
    pub fn transmit_publish(&mut self, channel: &str, data: Value) {
        let frame = json!({"event": "#publish", "data": {"channel": channel, "data": data}});
        self.out
            .send(Message::text(frame.to_string()))
            .expect("socket writer gone");
    }

    /// The next publication received (any channel).
    pub async fn next_publication(&mut self) -> (String, Value) {
        tokio::time::timeout(WAIT, self.publications.recv())
            .await
            .expect("timed out waiting for a publication")
            .expect("socket closed")
    }

    /// A publication if one is already queued.
    pub fn try_publication(&mut self) -> Option<(String, Value)> {
        self.publications.try_recv().ok()
    }

    /// Whether the server closed the socket.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The multi-instance scenarios run by both broker test suites. `group` is a list of
/// brokers, each attached to its own server, all connected to the same backplane.
pub mod scenarios {
    use std::collections::HashMap;

    use sc_test_support::backplane::{BackplaneServer, WAIT, wait_state};
    use serde_json::{Value, json};
    use socketcluster_server::Server;

    use super::{Probe, WsClient};
    use crate::BackplaneState;

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
}
