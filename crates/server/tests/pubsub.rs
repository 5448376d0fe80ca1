//! Channels, exchange, kick-out and broker (docs/PROTOCOL.md 3.6.5-3.6.8, 6.6, 9.5).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use socketcluster_rs_server::broker::{Broker, BrokerError, BrokerFuture, Delivery};
use socketcluster_rs_server::{Limits, Publication, Server, ServerEvent};

/// docs/PROTOCOL.md 11.1: subscribe, publish (transmit and invoke), unsubscribe, errors.
#[tokio::test]
async fn subscribe_publish_unsubscribe_frames_match_the_js_server() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    let id = server.clients()[0].id().to_owned();
    c.send(r##"{"event":"#subscribe","data":{"channel":"foo"},"cid":6}"##)
        .await;
    assert_eq!(c.text().await, r#"{"rid":6}"#);
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":"pub1"}}"##)
        .await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"foo","data":"pub1"}}"##
    );
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":{"a":1}},"cid":7}"##)
        .await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"foo","data":{"a":1}}}"##
    );
    assert_eq!(c.text().await, r#"{"rid":7}"#);
    // absent data stays absent, null stays null
    c.send(r##"{"event":"#publish","data":{"channel":"foo"}}"##)
        .await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"foo"}}"##
    );
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":null}}"##)
        .await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"foo","data":null}}"##
    );
    c.send(r##"{"event":"#subscribe","data":{"channel":"bar","waitForAuth":true,"data":{"meta":1}},"cid":8}"##).await;
    assert_eq!(c.text().await, r#"{"rid":8}"#);
    assert_eq!(server.clients()[0].subscriptions(), ["foo", "bar"]);
    c.send(r##"{"event":"#unsubscribe","data":"bar","cid":9}"##)
        .await;
    assert_eq!(c.text().await, r#"{"rid":9}"#);
    c.send(r##"{"event":"#unsubscribe","data":"notsubscribed","cid":10}"##)
        .await;
    assert_eq!(
        c.text().await,
        format!(
            r#"{{"rid":10,"error":{{"message":"Failed to unsubscribe socket from the notsubscribed channel - InvalidActionError: Socket {id} tried to unsubscribe from a channel which it is not subscribed to","name":"BrokerError"}}}}"#
        )
    );
    // a transmitted #unsubscribe of an unknown channel is tolerated silently
    c.send(r##"{"event":"#unsubscribe","data":"pending-only"}"##)
        .await;
    c.send(r##"{"event":"#unsubscribe","data":"foo"}"##).await;
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":"after unsub"},"cid":11}"##)
        .await;
    // publishing to a channel nobody listens to is still acknowledged
    assert_eq!(c.text().await, r#"{"rid":11}"#);
    // a transmitted #subscribe is not acted upon (3.6.5)
    c.send(r##"{"event":"#subscribe","data":{"channel":"t"}}"##)
        .await;
    c.send(r##"{"event":"#publish","data":{"channel":"t","data":1},"cid":12}"##)
        .await;
    assert_eq!(c.text().await, r#"{"rid":12}"#);
    c.silent_for(Duration::from_millis(150)).await.unwrap();
    assert!(server.channels().is_empty());
}

/// SV-46: malformatted reserved events get error responses and the server keeps going.
#[tokio::test]
async fn malformatted_reserved_events_get_js_errors() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    let sub =
        r#"{"message":"Subscribe channel name was malformatted","name":"InvalidActionError"}"#;
    let unsub =
        r#"{"message":"Unsubscribe channel name was malformatted","name":"InvalidActionError"}"#;
    let publ = r#"{"message":"Publish channel name was malformatted","name":"InvalidActionError"}"#;
    let cases = [
        (r##"{"event":"#subscribe","data":[null],"cid":2}"##, sub),
        (
            r##"{"event":"#subscribe","data":{"channel":{"hello":123}},"cid":3}"##,
            sub,
        ),
        (r##"{"event":"#subscribe","data":null,"cid":4}"##, sub),
        (r##"{"event":"#unsubscribe","data":[null],"cid":5}"##, unsub),
        (r##"{"event":"#publish","data":null,"cid":6}"##, publ),
        (
            r##"{"event":"#publish","data":{"channel":{"hello":123}},"cid":7}"##,
            publ,
        ),
        (
            r##"{"event":"#publish","data":{"channel":null},"cid":8}"##,
            publ,
        ),
        (r##"{"event":"#subscribe","cid":9}"##, sub),
        (
            r##"{"event":"#subscribe","data":"stringchannel","cid":10}"##,
            sub,
        ),
    ];
    for (frame, err) in cases {
        c.send(frame).await;
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(
            c.text().await,
            format!(r#"{{"rid":{},"error":{err}}}"#, v["cid"])
        );
    }
    assert_eq!(c.invoke("echo", json!("ok"), 11).await["data"], "ok");
}

/// 3.6.5: channel limit (BrokerError, counted before the duplicate check), name length
/// limit, empty channel names are ordinary channels.
#[tokio::test]
async fn channel_limits() {
    let server = start(
        config().with_limits(
            Limits::default()
                .socket_channel_limit(Some(2))
                .max_channel_name_len(100),
        ),
    )
    .await;
    let mut c = open(&server).await;
    let id = server.clients()[0].id().to_owned();
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": ""}), 2).await,
        json!({"rid": 2})
    );
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "a"}), 3).await,
        json!({"rid": 3})
    );
    let r = c.invoke("#subscribe", json!({"channel": "b"}), 4).await;
    assert_eq!(
        r["error"]["message"],
        format!(
            "Failed to subscribe socket to the b channel - InvalidActionError: Socket {id} tried to exceed the channel subscription limit of 2"
        )
    );
    assert_eq!(r["error"]["name"], "BrokerError");
    let r = c.invoke("#subscribe", json!({"channel": "a"}), 5).await;
    assert_eq!(r["error"]["name"], "BrokerError");
    let long = "x".repeat(10_000);
    let r = c.invoke("#unsubscribe", json!("a"), 6).await;
    assert_eq!(r, json!({"rid": 6}));
    let r = c.invoke("#subscribe", json!({"channel": long}), 7).await;
    assert_eq!(
        r["error"],
        json!({"message":"Channel name exceeds the maximum length of 100","name":"InvalidActionError"})
    );
    let r = c
        .invoke("#publish", json!({"channel": long, "data": 1}), 8)
        .await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
    c.send(r##"{"event":"#publish","data":{"channel":"","data":"empty"}}"##)
        .await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"","data":"empty"}}"##
    );
}

/// 3.6.7: `allow_client_publish = false`.
#[tokio::test]
async fn client_publish_can_be_disabled() {
    let server = start(config().with_allow_client_publish(false)).await;
    let mut c = open(&server).await;
    let r = c
        .invoke("#publish", json!({"channel": "x", "data": 1}), 2)
        .await;
    assert_eq!(
        r,
        json!({"rid":2,"error":{"message":"Client publish feature is disabled","name":"InvalidActionError"}})
    );
}

/// SV-48 / SV-49: client publications reach exchange subscribers in order, exchange
/// publications reach subscribed clients; binary-shaped data is forwarded as JSON.
#[tokio::test]
async fn exchange_and_clients_share_channels() {
    let server = start(config()).await;
    let exchange = server.exchange();
    let mut sub = exchange.subscribe("foo").await.unwrap();
    assert!(exchange.is_subscribed("foo"));
    assert_eq!(exchange.subscriptions(), ["foo"]);
    let mut c = open(&server).await;
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":"hi1"}}"##)
        .await;
    c.send(r##"{"event":"#publish","data":{"channel":"foo","data":"hi2"}}"##)
        .await;
    let a = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    let b = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.data::<String>().unwrap(), "hi1");
    assert_eq!(b.raw_data().unwrap().get(), r#""hi2""#);

    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "bar"}), 2).await,
        json!({"rid": 2})
    );
    exchange.publish("bar", &"hello1").await.unwrap();
    exchange
        .publish(
            "bar",
            &json!({"buf": {"base64": true, "data": "aGVsbG8gYmluYXJ5"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"bar","data":"hello1"}}"##
    );
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"bar","data":{"buf":{"base64":true,"data":"aGVsbG8gYmluYXJ5"}}}}"##
    );
    drop(sub);
    assert!(!exchange.is_subscribed("foo"));
    let channels = server.channels();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].name, "bar");
    assert_eq!(channels[0].subscribers, 1);
}

/// Fan-out to many subscribers: every subscriber gets the same frame.
#[tokio::test]
async fn fan_out_reaches_every_subscriber() {
    let server = start(config()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = open(&server).await;
        assert_eq!(
            c.invoke("#subscribe", json!({"channel": "room"}), 2).await,
            json!({"rid": 2})
        );
        clients.push(c);
    }
    assert_eq!(server.channels()[0].subscribers, 20);
    server
        .exchange()
        .publish("room", &json!({"n": 1}))
        .await
        .unwrap();
    for c in &mut clients {
        assert_eq!(
            c.text().await,
            r##"{"event":"#publish","data":{"channel":"room","data":{"n":1}}}"##
        );
    }
    // closing a subscriber removes it from the channel
    clients.pop().unwrap().close(1000, "").await;
    eventually(|| server.channels()[0].subscribers == 19).await;
}

/// SV-53 / 3.6.8: kick-out sends `#kickOut` and unsubscribes server-side; kicking out
/// of a channel the socket is not in still sends the frame and reports an error.
#[tokio::test]
async fn kick_out_unsubscribes_the_socket() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    for (i, ch) in ["kickme", "other"].iter().enumerate() {
        c.invoke("#subscribe", json!({"channel": ch}), 2 + i as u64)
            .await;
    }
    let socket = server.clients().pop().unwrap();
    socket
        .kick_out(Some("kickme"), Some(&"You were kicked"))
        .await
        .unwrap();
    assert_eq!(
        c.text().await,
        r##"{"event":"#kickOut","data":{"channel":"kickme","message":"You were kicked"}}"##
    );
    assert_eq!(socket.subscriptions(), ["other"]);
    assert!(socket.kick_out::<str>(Some("never"), None).await.is_err());
    assert_eq!(
        c.text().await,
        r##"{"event":"#kickOut","data":{"channel":"never"}}"##
    );
    socket.kick_out::<str>(None, None).await.unwrap();
    assert_eq!(
        c.text().await,
        r##"{"event":"#kickOut","data":{"channel":"other"}}"##
    );
    assert!(socket.subscriptions().is_empty());
    assert!(server.channels().is_empty());
    // no more publications for the kicked channel
    server.exchange().publish("kickme", &1).await.unwrap();
    c.silent_for(Duration::from_millis(150)).await.unwrap();
}

/// `auth_channels`: subscribing/publishing needs authentication; losing it kicks out.
#[tokio::test]
async fn auth_channels_require_authentication() {
    let server = start(config().with_auth_channels(vec!["private-*".into()])).await;
    let mut c = open(&server).await;
    let id = server.clients()[0].id().to_owned();
    let r = c
        .invoke("#subscribe", json!({"channel": "private-bob"}), 2)
        .await;
    assert_eq!(
        r["error"],
        json!({"message": format!("Socket {id} must be authenticated to subscribe to the private-bob channel"), "name": "UnauthorizedSubscribeError"})
    );
    let r = c
        .invoke("#publish", json!({"channel": "private-bob", "data": 1}), 3)
        .await;
    assert_eq!(r["error"]["name"], "UnauthorizedPublishError");
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "public"}), 4)
            .await,
        json!({"rid": 4})
    );
    let token = sign(&server, json!({"username": "bob"}));
    c.invoke("#authenticate", json!(token), 5).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "private-bob"}), 6)
            .await,
        json!({"rid": 6})
    );
    c.send(r##"{"event":"#removeAuthToken"}"##).await;
    assert_eq!(
        c.text().await,
        r##"{"event":"#kickOut","data":{"channel":"private-bob","message":"Authentication required"}}"##
    );
    assert_eq!(server.clients()[0].subscriptions(), ["public"]);
}

/// The Broker trait: publish goes through the broker, subscribe/unsubscribe are called
/// on the first/last local subscriber, and a failing broker subscribe rolls back with
/// a BrokerError.
#[tokio::test]
async fn broker_sees_first_and_last_subscriber_and_all_publishes() {
    #[derive(Default)]
    struct Recording {
        delivery: std::sync::OnceLock<Delivery>,
        log: std::sync::Mutex<Vec<String>>,
    }
    impl Broker for Recording {
        fn attach(&self, d: Delivery) {
            let _ = self.delivery.set(d);
        }
        fn subscribe(&self, channel: &str) -> BrokerFuture {
            self.log.lock().unwrap().push(format!("sub {channel}"));
            let fail = channel == "forbidden";
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if fail {
                    Err(BrokerError("backplane says no".into()))
                } else {
                    Ok(())
                }
            })
        }
        fn unsubscribe(&self, channel: &str) -> BrokerFuture {
            self.log.lock().unwrap().push(format!("unsub {channel}"));
            Box::pin(async { Ok(()) })
        }
        fn publish(&self, p: Arc<Publication>) -> BrokerFuture {
            self.log
                .lock()
                .unwrap()
                .push(format!("pub {}", p.channel()));
            let d = self.delivery.get().unwrap().clone();
            // deliver asynchronously, as a remote backplane would
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                d.deliver(&p);
                Ok(())
            })
        }
    }
    let broker = Arc::new(Recording::default());
    let server = Server::with_broker(config(), broker.clone()).unwrap();
    server.listen().await.unwrap();
    install_procedures(&server);
    let mut a = open(&server).await;
    let mut b = open(&server).await;
    assert_eq!(
        a.invoke("#subscribe", json!({"channel": "c"}), 2).await,
        json!({"rid": 2})
    );
    assert_eq!(
        b.invoke("#subscribe", json!({"channel": "c"}), 2).await,
        json!({"rid": 2})
    );
    let r = a
        .invoke("#subscribe", json!({"channel": "forbidden"}), 3)
        .await;
    assert_eq!(
        r["error"],
        json!({"message": "Failed to subscribe socket to the forbidden channel - backplane says no", "name": "BrokerError"})
    );
    a.send(r##"{"event":"#publish","data":{"channel":"c","data":"x"},"cid":4}"##)
        .await;
    let mut got = vec![a.text().await, a.text().await];
    got.sort();
    assert_eq!(
        got,
        [
            r##"{"event":"#publish","data":{"channel":"c","data":"x"}}"##,
            r#"{"rid":4}"#
        ]
    );
    assert_eq!(
        b.text().await,
        r##"{"event":"#publish","data":{"channel":"c","data":"x"}}"##
    );
    a.send(r##"{"event":"#unsubscribe","data":"c"}"##).await;
    b.close(1000, "").await;
    eventually(|| server.channels().is_empty()).await;
    eventually(|| broker.log.lock().unwrap().len() == 4).await;
    assert_eq!(
        *broker.log.lock().unwrap(),
        ["sub c", "sub forbidden", "pub c", "unsub c"]
    );
    assert!(a.is_subscribed_none(&server));
}

trait NoSubs {
    fn is_subscribed_none(&self, server: &Server) -> bool;
}
impl NoSubs for Raw {
    fn is_subscribed_none(&self, server: &Server) -> bool {
        server
            .clients()
            .iter()
            .all(|s| s.subscriptions().is_empty())
    }
}

/// Server events for subscriptions (SV-47 order: disconnection before unsubscription).
#[tokio::test]
async fn disconnect_is_reported_before_unsubscription() {
    let server = start(config()).await;
    let mut events = server.events();
    let mut c = open(&server).await;
    c.invoke("#subscribe", json!({"channel": "foo"}), 2).await;
    c.close(1000, "").await;
    let mut order = Vec::new();
    while order.len() < 3 {
        match events.recv().await.unwrap() {
            ServerEvent::Subscription { channel, .. } => order.push(format!("sub {channel}")),
            ServerEvent::Disconnection { .. } => order.push("disconnect".into()),
            ServerEvent::Unsubscription { channel, .. } => order.push(format!("unsub {channel}")),
            _ => {}
        }
    }
    assert_eq!(order, ["sub foo", "disconnect", "unsub foo"]);
}

/// The server mounted on an axum `Router` (feature `axum`) speaks the same protocol.
#[cfg(feature = "axum")]
#[tokio::test]
async fn mounted_on_axum() {
    let server = Server::new(config()).unwrap();
    install_procedures(&server);
    let app = axum::Router::new()
        .route("/sc/", socketcluster_rs_server::axum::route(server.clone()))
        .route("/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let mut c = Raw::connect(&format!("ws://{addr}/sc/")).await;
    assert_eq!(c.handshake(None).await["rid"], 1);
    assert_eq!(
        c.invoke("echo", json!("via axum"), 2).await["data"],
        "via axum"
    );
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "a"}), 3).await,
        json!({"rid": 3})
    );
    server.exchange().publish("a", &1).await.unwrap();
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"a","data":1}}"##
    );
    assert!(server.clients()[0].remote_addr().is_some());
}
