//! The proxy hooks end to end with the Rust client and an in-test HTTP backend.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_client::{Client, InvokeError, SubscribeError, SubscribeOptions};
use socketcluster_rs_proxy::{HookConfig, ProxyConfig};

fn app(path: &str, req: &Value) -> Reply {
    match (path, req["procedure"].as_str(), req["channel"].as_str()) {
        ("/rpc", Some("login"), _) => Reply::json(json!({
            "setAuthToken": {"claims": {"username": req["data"]["username"]}, "expiresIn": 600},
            "data": "welcome",
        })),
        ("/rpc", Some("whoami"), _) => Reply::json(json!({"data": {
            "user": req["socket"]["authToken"]["username"],
            "meta": req["socket"]["meta"],
            "cookie": req["socket"]["headers"]["cookie"],
        }})),
        ("/rpc", Some("pay"), _) => Reply::json(json!({"error": {
            "name": "InsufficientFundsError", "message": "Balance too low", "balance": 3, "needed": [5]
        }})),
        ("/rpc", Some("badgrant"), _) => Reply::json(json!({"setAuthToken": {"claims": 5}})),
        ("/rpc", Some("logout"), _) => Reply::json(json!({"deauthenticate": true, "data": null})),
        ("/rpc", Some("slow"), _) => Reply::json(json!({"data": 1})).after(Duration::from_secs(30)),
        ("/rpc", Some("garbage"), _) => Reply::raw(200, "<html>oops"),
        ("/rpc", Some("status500"), _) => Reply::raw(500, "{}"),
        ("/subscribe", _, Some(ch)) if ch.starts_with("private/") => {
            if req["socket"]["authToken"].is_null() {
                Reply::json(
                    json!({"error": {"name": "ForbiddenError", "message": "Log in first", "channel": ch}}),
                )
            } else {
                Reply::json(json!({"allow": true}))
            }
        }
        ("/subscribe", _, Some(ch)) if ch.starts_with("room/") => {
            Reply::json(json!({"allow": true, "ttl": 60, "cacheScope": "channel"}))
                .after(Duration::from_millis(50))
        }
        ("/subscribe", _, Some(_)) => Reply::json(json!({"allow": false})),
        ("/publish", _, Some("chat/readonly")) => {
            Reply::json(json!({"error": {"name": "ReadOnlyError", "message": "read only"}}))
        }
        ("/publish", _, Some(_)) => Reply::json(
            json!({"data": {"text": req["data"]["text"].as_str().unwrap_or("").to_uppercase(), "by": req["socket"]["authToken"]["username"]}}),
        ),
        ("/handshake", _, _) => {
            if req["socket"]["headers"]["cookie"] == "banned=1" {
                Reply::json(json!({"disconnect": {"code": 4403, "reason": "banned"}}))
            } else {
                Reply::json(
                    json!({"meta": {"tier": "gold"}, "setAuthToken": {"claims": {"username": "cookie-user"}}}),
                )
            }
        }
        _ => Reply::json(json!({})),
    }
}

fn full_config(b: &Backend) -> ProxyConfig {
    ProxyConfig::default()
        .with_forward_headers(["cookie"])
        .with_rpc(HookConfig::new(b.url("/rpc")).with_patterns([
            "login",
            "logout",
            "whoami",
            "pay",
            "slow",
            "garbage",
            "status500",
            "badgrant",
        ]))
        .with_subscribe(HookConfig::new(b.url("/subscribe")).with_patterns([
            "private/*",
            "room/*",
            "closed/*",
        ]))
        .with_publish(HookConfig::new(b.url("/publish")).with_patterns(["chat/*"]))
}

fn remote(e: InvokeError) -> Value {
    match e {
        InvokeError::Remote(w) => w.to_value(),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn login_through_a_proxied_procedure_sets_the_token() {
    let b = Backend::start(Arc::new(app)).await;
    let (_server, proxy, url) = serve(full_config(&b)).await;
    let c = Client::connect(&url).await.unwrap();
    assert!(!c.is_authenticated());
    let r: String = c
        .invoke("login", &json!({"username": "alice"}))
        .await
        .unwrap();
    assert_eq!(r, "welcome");
    assert!(c.is_authenticated(), "the token arrives before the answer");
    assert_eq!(c.auth_token().unwrap()["username"], "alice");
    let who: Value = c.invoke("whoami", &()).await.unwrap();
    assert_eq!(who["user"], "alice");
    // the backend's error object reaches the caller with every field
    let e = remote(c.invoke::<Value, _>("pay", &1).await.unwrap_err());
    assert_eq!(
        e,
        json!({"name": "InsufficientFundsError", "message": "Balance too low", "balance": 3, "needed": [5]})
    );
    // a malformed token grant is the backend's fault, named as such; the token stays
    let e = remote(c.invoke::<Value, _>("badgrant", &()).await.unwrap_err());
    assert_eq!(e["name"], "ProxyBadResponseError");
    assert!(c.is_authenticated());
    // deauthenticate
    let _: Value = c.invoke("logout", &()).await.unwrap();
    eventually("deauthenticated", || !c.is_authenticated()).await;
    // uncovered procedure: an immediate named error, not a 10 s timeout
    let t = Instant::now();
    let e = remote(c.invoke::<Value, _>("nobody", &()).await.unwrap_err());
    assert_eq!(e["name"], "UnhandledProcedureError");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        b.bad_signatures.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let rpc = b.calls_to("/rpc");
    assert_eq!(rpc[0]["v"], 1);
    assert_eq!(rpc[0]["hook"], "rpc");
    assert_eq!(rpc[0]["procedure"], "login");
    assert_eq!(rpc[0]["data"], json!({"username": "alice"}));
    assert!(rpc[0]["socket"]["id"].is_string() && rpc[0]["socket"]["remoteAddress"].is_string());
    assert!(proxy.is_healthy());
    // keep-alive: every call went over one connection
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn backend_down_slow_and_garbage_give_named_errors_quickly() {
    let b = Backend::start(Arc::new(app)).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/rpc", dead.local_addr().unwrap());
    drop(dead);
    let config = ProxyConfig::default().with_rpc(
        HookConfig::new(b.url("/rpc"))
            .with_patterns(["slow", "garbage", "status500"])
            .with_timeout(Duration::from_millis(300)),
    );
    let (server, proxy, url) = serve(config).await;
    let c = Client::connect(&url).await.unwrap();
    let t = Instant::now();
    let e = remote(c.invoke::<Value, _>("slow", &()).await.unwrap_err());
    assert_eq!(e["name"], "ProxyTimeoutError");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let e = remote(c.invoke::<Value, _>("garbage", &()).await.unwrap_err());
    assert_eq!(e["name"], "ProxyBadResponseError");
    let e = remote(c.invoke::<Value, _>("status500", &()).await.unwrap_err());
    assert_eq!(e["name"], "ProxyBadResponseError");
    assert!(!proxy.is_healthy());
    let h = proxy.health();
    assert_eq!(h[0].hook, "rpc");
    assert_eq!(h[0].errors, 3);
    drop(server);

    let (_server, proxy, url) =
        serve(ProxyConfig::default().with_rpc(HookConfig::new(dead_url))).await;
    let c = Client::connect(&url).await.unwrap();
    let e = remote(c.invoke::<Value, _>("anything", &()).await.unwrap_err());
    assert_eq!(e["name"], "ProxyUnavailableError");
    assert!(!proxy.is_healthy());
}

#[tokio::test]
async fn a_backend_that_never_answers_cannot_queue_calls() {
    let b = Backend::start(Arc::new(|_: &str, _: &Value| {
        Reply::json(json!({})).after(Duration::from_secs(60))
    }))
    .await;
    let config = ProxyConfig::default().with_rpc(
        HookConfig::new(b.url("/rpc"))
            .with_max_concurrency(4)
            .with_timeout(Duration::from_millis(500)),
    );
    let (_server, _proxy, url) = serve(config).await;
    let c = Arc::new(Client::connect(&url).await.unwrap());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.invoke::<Value, _>("hang", &i).await.unwrap_err()
        }));
    }
    let (mut timeouts, mut overloaded) = (0, 0);
    for t in tasks {
        match remote(t.await.unwrap())["name"].as_str().unwrap() {
            "ProxyTimeoutError" => timeouts += 1,
            "ProxyOverloadedError" => overloaded += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(timeouts + overloaded, 1000);
    assert!(
        timeouts >= 4 && overloaded >= 900,
        "timeouts {timeouts}, overloaded {overloaded}"
    );
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

#[tokio::test]
async fn subscribe_hook_allows_denies_and_publish_hook_rewrites() {
    let b = Backend::start(Arc::new(app)).await;
    let (_server, _proxy, url) = serve(full_config(&b)).await;
    let c = Client::connect(&url).await.unwrap();
    let e = c
        .subscribe("private/alice")
        .await
        .unwrap()
        .subscribed()
        .await
        .unwrap_err();
    let SubscribeError::Rejected(w) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        w.to_value(),
        json!({"name": "ForbiddenError", "message": "Log in first", "channel": "private/alice"})
    );
    let e = c
        .subscribe("closed/x")
        .await
        .unwrap()
        .subscribed()
        .await
        .unwrap_err();
    let SubscribeError::Rejected(w) = e else {
        panic!("{e:?}")
    };
    assert_eq!(w.name(), "SubscribeDeniedError");
    let _: String = c
        .invoke("login", &json!({"username": "bob"}))
        .await
        .unwrap();
    c.subscribe("private/alice")
        .await
        .unwrap()
        .subscribed()
        .await
        .unwrap();
    // channels no pattern covers need no backend
    let mut chat = c.subscribe("chat/main").await.unwrap();
    chat.subscribed().await.unwrap();
    c.publish("chat/main", &json!({"text": "hello"}))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), chat.recv())
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(m.data.unwrap().get()).unwrap();
    assert_eq!(v, json!({"text": "HELLO", "by": "bob"}));
    let e = c
        .publish("chat/readonly", &json!({"text": "x"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ReadOnlyError"), "{e}");
    assert!(
        b.calls_to("/subscribe")
            .iter()
            .all(|v| v["channel"] != "chat/main")
    );
    let _ = SubscribeOptions::new();
}

#[tokio::test]
async fn a_resubscribe_storm_costs_one_backend_call_per_channel() {
    let b = Backend::start(Arc::new(app)).await;
    let (_server, _proxy, url) = serve(full_config(&b)).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(Client::connect(&url).await.unwrap());
    }
    let mut subs = Vec::new();
    for c in &clients {
        for ch in 0..10 {
            subs.push(c.subscribe(&format!("room/{ch}")).await.unwrap());
        }
    }
    for s in &subs {
        s.subscribed().await.unwrap();
    }
    let n = b.calls_to("/subscribe").len();
    assert!(n <= 10, "{n} backend calls for 1000 subscriptions");
    // reconnect storm: everyone resubscribes, decisions are cached
    for c in &clients {
        c.reconnect();
    }
    for c in &clients {
        c.connect_and_wait().await.unwrap();
    }
    eventually("resubscribed", || {
        subs.iter()
            .all(|s| s.state() == socketcluster_rs_client::ChannelState::Subscribed)
    })
    .await;
    assert_eq!(b.calls_to("/subscribe").len(), n);
}

#[tokio::test]
async fn handshake_hook_attaches_metadata_and_rejects() {
    let b = Backend::start(Arc::new(app)).await;
    let config = full_config(&b).with_handshake(HookConfig::new(b.url("/handshake")));
    let (_server, _proxy, url) = serve(config).await;
    let c = Client::builder(&url)
        .header("cookie", "session=abc")
        .connect()
        .await
        .unwrap();
    let who: Value = c.invoke("whoami", &()).await.unwrap();
    assert_eq!(who["meta"], json!({"tier": "gold"}));
    assert_eq!(who["cookie"], "session=abc");
    eventually("handshake token", || c.is_authenticated()).await;
    assert_eq!(c.auth_token().unwrap()["username"], "cookie-user");
    let hs = b.calls_to("/handshake");
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["hook"], "handshake");
    assert_eq!(hs[0]["socket"]["headers"]["cookie"], "session=abc");
    // rejected: closed with the backend's code, the reason as the error message
    let e = Client::builder(&url)
        .header("cookie", "banned=1")
        .connect()
        .await
        .unwrap_err();
    match e {
        socketcluster_rs_client::ConnectError::Aborted { code, error, .. } => {
            assert_eq!(code.0, 4403);
            let w = error.expect("handshake error");
            assert_eq!(w.name(), "HandshakeRejectedError");
            assert_eq!(w.message(), "banned");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn lifecycle_notifications_and_transmits_are_batched() {
    let b = Backend::start(Arc::new(app)).await;
    let config = ProxyConfig::default()
        .with_notify(HookConfig::new(b.url("/notify")))
        .with_transmit(HookConfig::new(b.url("/transmit")).with_patterns(["track/*"]));
    let (_server, _proxy, url) = serve(config).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Client::connect(&url).await.unwrap());
    }
    for c in &clients {
        c.subscribe("news")
            .await
            .unwrap()
            .subscribed()
            .await
            .unwrap();
        c.transmit("track/click", &json!({"x": 1})).unwrap();
        c.transmit("ignored", &1).unwrap();
    }
    let events = |path: &str| -> Vec<Value> {
        b.calls_to(path)
            .iter()
            .flat_map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    eventually("20 transmits", || events("/transmit").len() == 20).await;
    let count = |kind: &str| {
        events("/notify")
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    };
    eventually("20 connect and 20 subscribe notifications", || {
        count("connect") == 20 && count("subscribe") == 20
    })
    .await;
    let n = events("/notify");
    assert_eq!(n.iter().filter(|e| e["type"] == "connect").count(), 20);
    assert_eq!(
        n.iter()
            .filter(|e| e["type"] == "subscribe" && e["channel"] == "news")
            .count(),
        20
    );
    assert!(
        b.calls_to("/notify").len() < 40,
        "batched: {} posts",
        b.calls_to("/notify").len()
    );
    assert!(
        events("/transmit")
            .iter()
            .all(|e| e["event"] == "track/click" && e["data"] == json!({"x": 1}))
    );
    for c in &clients {
        c.close().await;
    }
    eventually("20 disconnects", || {
        events("/notify")
            .iter()
            .filter(|e| e["type"] == "disconnect")
            .count()
            == 20
    })
    .await;
}
