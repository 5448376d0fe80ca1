//! Part 2 interop: channels and authentication against the real JS server, with a
//! middleware that rejects unauthenticated sockets on `private/*` and a publisher of
//! sequence-numbered messages on `private/feed` (tests a-h of the issue).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sc_test_support::{JsClient, JsServer, JsServerOptions, sign_hs256, unix_now};
use serde_json::{Value, json};
use socketcluster_rs_client::{
    AuthState, ChannelState, Client, Event, Events, MemoryTokenStore, ReauthReason,
    SubscribeOptions, Subscription, TokenRequest,
};

const FEED: &str = "private/feed";

fn private_opts(key: &str, start_seq: u64) -> JsServerOptions {
    let mut o = v20()
        .with("publisher", json!({"channel": FEED, "intervalMs": 100}))
        .with("startSeq", start_seq);
    o.auth_key = Some(key.to_owned());
    o.private_pattern = Some("private/*".to_owned());
    o
}

fn token(key: &str, lifetime_s: u64) -> String {
    let now = unix_now();
    sign_hs256(
        &json!({"username": "bob", "iat": now, "exp": now + lifetime_s}),
        key,
    )
}

/// A token provider signing with the current value of `key`; counts its calls and
/// records the reasons.
#[derive(Clone)]
struct Hook {
    key: Arc<Mutex<String>>,
    lifetime_s: u64,
    calls: Arc<AtomicUsize>,
    reasons: Arc<Mutex<Vec<ReauthReason>>>,
}

impl Hook {
    fn new(key: &str, lifetime_s: u64) -> Hook {
        Hook {
            key: Arc::new(Mutex::new(key.to_owned())),
            lifetime_s,
            calls: Arc::new(AtomicUsize::new(0)),
            reasons: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_key(&self, key: &str) {
        *self.key.lock().unwrap() = key.to_owned();
    }

    fn provider(
        &self,
    ) -> impl Fn(TokenRequest) -> std::future::Ready<Result<String, std::io::Error>>
    + Send
    + Sync
    + 'static {
        let h = self.clone();
        move |req: TokenRequest| {
            h.calls.fetch_add(1, Ordering::SeqCst);
            h.reasons.lock().unwrap().push(req.reason);
            let key = h.key.lock().unwrap().clone();
            std::future::ready(Ok(token(&key, h.lifetime_s)))
        }
    }
}

fn rejections(server: &JsServer) -> usize {
    server
        .events()
        .iter()
        .filter(|v| v["event"] == "rejected")
        .count()
}

async fn next_seq(sub: &mut Subscription) -> u64 {
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a publication in time")
        .expect("subscription open");
    m.value()["seq"].as_u64().expect("seq")
}

/// Collects every event in the background.
fn record(mut events: Events) -> Arc<Mutex<Vec<Event>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            l2.lock().unwrap().push(e);
        }
    });
    log
}

fn count(log: &Arc<Mutex<Vec<Event>>>, name: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e.name() == name)
        .count()
}

/// Waits for `n` consecutive sequence numbers (no gap).
async fn consecutive(sub: &mut Subscription, n: usize) -> (u64, u64) {
    let first = next_seq(sub).await;
    let mut last = first;
    for _ in 1..n {
        let s = next_seq(sub).await;
        assert_eq!(s, last + 1, "gap in the sequence");
        last = s;
    }
    (first, last)
}

/// (a) The token expires while the client is disconnected. With the hook: the client
/// re-authenticates, then resubscribes; the server logs zero rejections and the sequence
/// continues. 5.5, 5.7, 6.4.
#[tokio::test]
async fn a_expired_while_disconnected_with_hook_reauthenticates_before_resubscribing() {
    init_tracing();
    let server = start(private_opts("k1", 1)).await;
    let hook = Hook::new("k1", 3600);
    let client = fast(&server.url())
        .token_store(MemoryTokenStore::with_token(token("k1", 3)))
        .token_provider(hook.provider())
        .reauth_margin(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    assert!(client.is_authenticated());
    let log = record(client.events());
    let mut sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    let before = next_seq(&mut sub).await;
    client.disconnect(1000, None);
    tokio::time::sleep(Duration::from_millis(4500)).await; // the token has expired now
    client.connect_and_wait().await.unwrap();
    assert_eq!(
        client
            .status()
            .unwrap()
            .auth_error
            .map(|e| e.name.to_string())
            .as_deref(),
        Some("AuthTokenExpiredError")
    );
    sub.subscribed().await.unwrap();
    let (first, _) = consecutive(&mut sub, 5).await;
    assert!(first > before);
    assert_eq!(hook.calls(), 1);
    assert!(matches!(
        hook.reasons.lock().unwrap()[0],
        ReauthReason::Rejected(_)
    ));
    assert_eq!(rejections(&server), 0, "{:?}", server.events());
    assert_eq!(count(&log, "subscribeFail"), 0);
    assert_eq!(client.auth_state(), AuthState::Authenticated);
    client.close().await;
}

/// (a) without the hook: the same subscribeFail the JS client produces (checked against
/// the real JS client running the same scenario).
#[tokio::test]
async fn a_expired_while_disconnected_without_hook_fails_like_the_js_client() {
    let server = start(private_opts("k1", 1)).await;
    let short = token("k1", 3);
    let js = sc_test_support::run_js_client(json!({
        "url": server.url(),
        "authToken": short,
        "options": {"autoReconnect": false},
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "subscribe", "channel": FEED, "wait": true},
            {"op": "disconnect"},
            {"op": "sleep", "ms": 4500},
            {"op": "connect"},
            {"op": "waitEvent", "name": "subscribeFail", "timeoutMs": 15000}
        ],
        "timeoutMs": 30000
    }));
    let ours = async {
        let client = fast(&server.url())
            .token_store(MemoryTokenStore::with_token(short.clone()))
            .connect()
            .await
            .unwrap();
        let mut events = client.events();
        let sub = client.subscribe(FEED).await.unwrap();
        sub.subscribed().await.unwrap();
        client.disconnect(1000, None);
        tokio::time::sleep(Duration::from_millis(4500)).await;
        client.connect_now();
        let e = wait_event(&mut events, named("subscribeFail")).await;
        client.close().await;
        e
    };
    let (js, e) = tokio::join!(js, ours);
    let Event::SubscribeFail { error, channel, .. } = e else {
        unreachable!()
    };
    let js_fail = js.client_events_named("subscribeFail");
    assert_eq!(js_fail.len(), 1, "{}", js.dump());
    assert_eq!(channel, js_fail[0]["channel"].as_str().unwrap());
    assert_eq!(error.name(), js_fail[0]["error"]["name"].as_str().unwrap());
    assert_eq!(error.name(), "UnauthorizedSubscribeError");
}

/// (b) The server restarts with a different authKey: the handshake rejects the token
/// (invalid signature); the hook is called and the client re-authenticates before it
/// resubscribes. SV-3, CL-6, 5.1.
#[tokio::test]
async fn b_server_restarted_with_another_key_reauthenticates_before_resubscribing() {
    let mut server = start(private_opts("k1", 1)).await;
    let hook = Hook::new("k1", 3600);
    let client = fast(&server.url())
        .token_store(MemoryTokenStore::with_token(token("k1", 3600)))
        .token_provider(hook.provider())
        .connect()
        .await
        .unwrap();
    let log = record(client.events());
    let mut sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    next_seq(&mut sub).await;
    hook.set_key("k2");
    server.restart(Some(private_opts("k2", 1000))).await;
    let (first, _) = loop {
        let s = next_seq(&mut sub).await;
        if s >= 1000 {
            break (s, consecutive(&mut sub, 4).await);
        }
    };
    assert!(first >= 1000);
    assert_eq!(hook.calls(), 1);
    let reason = hook.reasons.lock().unwrap()[0].clone();
    let ReauthReason::Rejected(e) = reason else {
        panic!("{reason:?}")
    };
    assert_eq!(e.name.as_str(), "AuthTokenInvalidError");
    assert_eq!(rejections(&server), 0, "{:?}", server.events());
    assert_eq!(count(&log, "subscribeFail"), 0);
    assert_eq!(client.channel_state(FEED), ChannelState::Subscribed);
    client.close().await;
}

/// (b) without the hook: subscribeFail with the server's error, like the JS client.
#[tokio::test]
async fn b_server_restarted_with_another_key_without_hook_gets_subscribe_fail() {
    let mut server = start(private_opts("k1", 1)).await;
    let client = fast(&server.url())
        .token_store(MemoryTokenStore::with_token(token("k1", 3600)))
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    let sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    server.restart(Some(private_opts("k2", 1000))).await;
    let e = wait_event(&mut events, named("subscribeFail")).await;
    let Event::SubscribeFail { error, .. } = e else {
        unreachable!()
    };
    assert_eq!(error.name(), "UnauthorizedSubscribeError");
    assert!(sub.subscribed().await.is_err());
    client.close().await;
}

/// (c) The server restarts with the same authKey: authenticated in the handshake,
/// resubscribed, hook not called. SV-2, CL-10.
#[tokio::test]
async fn c_server_restarted_with_the_same_key_needs_no_hook() {
    let mut server = start(private_opts("k1", 1)).await;
    let hook = Hook::new("k1", 3600);
    let client = fast(&server.url())
        .token_store(MemoryTokenStore::with_token(token("k1", 3600)))
        .token_provider(hook.provider())
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    server.restart(Some(private_opts("k1", 1000))).await;
    let e = wait_event(&mut events, named("connect")).await;
    let Event::Connect { status, .. } = e else {
        unreachable!()
    };
    assert!(status.is_authenticated);
    loop {
        if next_seq(&mut sub).await >= 1000 {
            break;
        }
    }
    consecutive(&mut sub, 3).await;
    assert_eq!(hook.calls(), 0);
    assert_eq!(rejections(&server), 0);
    client.close().await;
}

/// (d) auto_subscribe_on_connect = false: nothing is subscribed until
/// process_pending_subscriptions(). 6.4.
#[tokio::test]
async fn d_auto_subscribe_off_subscribes_nothing_until_processed() {
    let server = start(private_opts("k1", 1)).await;
    let client = fast(&server.url())
        .auto_connect(false)
        .auto_subscribe_on_connect(false)
        .build()
        .unwrap();
    let sub = client.subscribe("public").await.unwrap();
    client.connect_and_wait().await.unwrap();
    let none = server
        .try_wait_event(|v| v["event"] == "subscription", Duration::from_millis(700))
        .await;
    assert!(none.is_none(), "{none:?}");
    assert_eq!(sub.state(), ChannelState::Pending);
    client.process_pending_subscriptions();
    sub.subscribed().await.unwrap();
    let s = server.wait_for("subscription", WAIT).await;
    assert_eq!(s["channel"], "public");
    client.close().await;
}

/// (e) A waitForAuth channel stays pending until authenticate() succeeds. CL-18.
#[tokio::test]
async fn e_wait_for_auth_channel_stays_pending_until_authenticated() {
    let server = start(private_opts("k1", 1)).await;
    let client = fast(&server.url()).connect().await.unwrap();
    let mut sub = client
        .subscribe_with(FEED, SubscribeOptions::new().wait_for_auth(true))
        .await
        .unwrap();
    let none = server
        .try_wait_event(|v| v["event"] == "subscription", Duration::from_millis(700))
        .await;
    assert!(none.is_none());
    assert_eq!(sub.state(), ChannelState::Pending);
    let st = client.authenticate(&token("k1", 3600)).await.unwrap();
    assert!(st.is_authenticated);
    sub.subscribed().await.unwrap();
    next_seq(&mut sub).await;
    assert_eq!(rejections(&server), 0);
    client.close().await;
}

/// (f) The server renews the token with setAuthToken: each new token is stored and
/// used in the next handshake. SV-9, SV-11, 3.6.3.
#[tokio::test]
async fn f_renewed_tokens_are_stored_and_used_in_the_next_handshake() {
    let server = start(private_opts("k1", 1)).await;
    let store = MemoryTokenStore::new();
    let client = fast(&server.url())
        .token_store(store.clone())
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    let r: String = client
        .invoke("login", &json!({"username": "bob"}))
        .await
        .unwrap();
    assert_eq!(r, "ok");
    wait_event(&mut events, named("authenticate")).await;
    for n in 2..=3 {
        server
            .command_ok(json!({"cmd": "setAuthToken", "claims": {"username": "bob", "n": n}}))
            .await;
        let e = wait_event(&mut events, named("authenticate")).await;
        let Event::Authenticate {
            token: Some(claims),
            signed_token: Some(signed),
        } = e
        else {
            panic!()
        };
        assert_eq!(claims["n"], n);
        // stored (the store write follows the event)
        for _ in 0..100 {
            if store.get().as_deref() == Some(signed.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.get().as_deref(), Some(signed.as_str()));
    }
    client.reconnect();
    let auth = server
        .wait_event(
            |v| v["event"] == "authentication" && v["authToken"]["n"] == 3,
            WAIT,
        )
        .await;
    assert_eq!(auth["authToken"]["username"], "bob");
    let e = wait_event(&mut events, named("connect")).await;
    let Event::Connect { status, .. } = e else {
        unreachable!()
    };
    assert!(status.is_authenticated);
    client.close().await;
}

/// (g) Short-lived tokens refreshed by the hook on the live socket: no gap in the
/// sequence, no deauthentication.
#[tokio::test]
async fn g_short_lived_tokens_are_refreshed_without_gap_or_deauthentication() {
    let server = start(private_opts("k1", 1)).await;
    let hook = Hook::new("k1", 3);
    let client = fast(&server.url())
        .token_store(MemoryTokenStore::with_token(token("k1", 3)))
        .token_provider(hook.provider())
        .connect()
        .await
        .unwrap();
    let log = record(client.events());
    let mut sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    consecutive(&mut sub, 70).await; // ~7 s, two token lifetimes
    assert!(hook.calls() >= 2, "hook called {} times", hook.calls());
    assert!(
        hook.reasons
            .lock()
            .unwrap()
            .iter()
            .all(|r| *r == ReauthReason::Expiring)
    );
    assert_eq!(count(&log, "deauthenticate"), 0);
    assert_eq!(count(&log, "removeAuthToken"), 0);
    assert_eq!(count(&log, "disconnect"), 0);
    assert!(count(&log, "authenticate") >= 2);
    assert!(
        !server
            .events()
            .iter()
            .any(|v| v["event"] == "deauthentication")
    );
    assert_eq!(rejections(&server), 0);
    client.close().await;
}

fn our_label(e: &Event) -> Option<String> {
    Some(match e {
        Event::AuthStateChange { new, .. } => format!("authStateChange({new})"),
        Event::Connect { .. }
        | Event::Disconnect { .. }
        | Event::Authenticate { .. }
        | Event::Deauthenticate { .. } => e.name().to_owned(),
        Event::Subscribe { .. }
        | Event::SubscribeFail { .. }
        | Event::Unsubscribe { .. }
        | Event::SubscribeStateChange { .. } => label(e),
        _ => return None,
    })
}

fn js_label(name: &str, data: &Value) -> Option<String> {
    Some(match name {
        "authStateChange" => format!("authStateChange({})", data["newAuthState"].as_str()?),
        "connect" | "disconnect" | "authenticate" | "deauthenticate" => name.to_owned(),
        "subscribe" | "subscribeFail" | "unsubscribe" | "subscribeStateChange" => {
            format!("{name}({})", data["channel"].as_str()?)
        }
        _ => return None,
    })
}

/// (h) Event-sequence parity: the Rust client (no hook) and the real JS client run the
/// same scenario side by side (stored token, a public and a private channel, server
/// restart with another key); their connect/disconnect/auth/subscribe event sequences
/// are equal. 5.7, 6.4, CL-6.
#[tokio::test]
async fn h_event_sequence_equals_the_js_clients() {
    let mut server = start(private_opts("k1", 1)).await;
    let t = token("k1", 3600);
    let js = JsClient::spawn(json!({
        "url": server.url(),
        "authToken": t,
        "interactive": true,
        "options": {
            "autoConnect": false,
            "autoReconnectOptions": {"initialDelay": 200, "randomness": 200, "multiplier": 1.5, "maxDelay": 2000}
        },
        "steps": [
            {"op": "subscribe", "channel": "public"},
            {"op": "subscribe", "channel": FEED},
            {"op": "connect"},
            {"op": "waitEvent", "name": "subscribe", "count": 2}
        ],
        "timeoutMs": 60000
    }))
    .await;
    let client: Client = fast(&server.url())
        .auto_connect(false)
        .token_store(MemoryTokenStore::with_token(t.clone()))
        .build()
        .unwrap();
    let log = record(client.events());
    let _public = client.subscribe("public").await.unwrap();
    let _feed = client.subscribe(FEED).await.unwrap();
    client.connect_now();
    js.wait_event(|v| v["event"] == "step" && v["i"] == 3, WAIT)
        .await;
    while count(&log, "subscribe") < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart(Some(private_opts("k2", 1000))).await;
    let r = js
        .run_step(json!({"op": "waitEvent", "name": "subscribeFail"}), WAIT)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = js
        .run_step(
            json!({"op": "waitEvent", "name": "subscribe", "count": 3}),
            WAIT,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::timeout(WAIT, async {
        while count(&log, "subscribeFail") < 1 || count(&log, "subscribe") < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    client.close().await;
    let run = js.wait_exit().await;
    let ours: Vec<String> = log.lock().unwrap().iter().filter_map(our_label).collect();
    let mut theirs: Vec<String> = run
        .client_events()
        .iter()
        .filter_map(|(n, d)| js_label(n, d))
        .collect();
    // the JS scenario ends with disconnect(); ours with close(): compare up to there
    let n = ours.len();
    theirs.truncate(n);
    assert_eq!(ours, theirs, "\nJS run:\n{}", run.dump());
    assert!(ours.contains(&"subscribeFail(private/feed)".to_owned()));
    assert!(ours.contains(&"authStateChange(unauthenticated)".to_owned()));
}
