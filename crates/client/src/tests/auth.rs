//! Part 2: authentication and the re-authentication hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::{AuthState, ChannelState, MemoryTokenStore, SubscribeOptions, TokenRequest};

/// An unsigned-looking JWT with the given claims (the client never verifies).
fn jwt(claims: Value) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(claims.to_string())
    )
}

#[tokio::test(start_paused = true)]
async fn set_auth_token_authenticates_stores_and_is_sent_in_the_next_handshake() {
    let store = MemoryTokenStore::new();
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b.token_store(store.clone()), &mut server).await;
    let mut events = client.events();
    let t = jwt(json!({"username":"bob"}));
    conn.send_json(json!({"event":"#setAuthToken","data":{"token": t}}))
        .await;
    let names = event_names_until(&mut events, |e| e.name() == "authenticate").await;
    assert_eq!(names, ["authStateChange(authenticated)", "authenticate"]);
    assert_eq!(client.auth_state(), AuthState::Authenticated);
    assert_eq!(client.auth_token().unwrap()["username"], "bob");
    assert_eq!(client.signed_auth_token().as_deref(), Some(t.as_str()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.get().as_deref(), Some(t.as_str()));
    conn.close(4100, "").await;
    let mut conn = server.accept().await;
    let hs = conn
        .handshake(json!({"id":"b","pingTimeout":20000,"isAuthenticated":true}))
        .await;
    assert_eq!(hs["authToken"], t.as_str());
    // same token accepted again: only `authenticate`, no state change
    let names = event_names_until(&mut events, |e| e.name() == "connect").await;
    assert_eq!(
        names,
        [
            "disconnect(4100)",
            "close(4100)",
            "error",
            "connecting",
            "authenticate",
            "connect"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn remove_auth_token_deauthenticates_and_deletes_the_stored_token() {
    let t = jwt(json!({"username":"bob"}));
    let store = MemoryTokenStore::with_token(t.clone());
    let (b, mut server) = builder();
    let client = b.token_store(store.clone()).build().unwrap();
    let mut events = client.events();
    let mut conn = server.accept().await;
    conn.handshake(json!({"id":"b","pingTimeout":20000,"isAuthenticated":true}))
        .await;
    conn.send_json(json!({"event":"#removeAuthToken"})).await;
    let names = event_names_until(&mut events, |e| e.name() == "removeAuthToken").await;
    assert_eq!(
        names,
        [
            "connecting",
            "authStateChange(authenticated)",
            "authenticate",
            "connect",
            "authStateChange(unauthenticated)",
            "deauthenticate",
            "removeAuthToken"
        ]
    );
    assert_eq!(store.get(), None);
}

#[tokio::test(start_paused = true)]
async fn authenticate_and_deauthenticate_follow_the_js_state_machine() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let t = jwt(json!({"username":"kate"}));
    let c2 = client.clone();
    let t2 = t.clone();
    let call = tokio::spawn(async move { c2.authenticate(&t2).await });
    let req = conn.recv_json().await;
    assert_eq!(req, json!({"event":"#authenticate","data": t, "cid": 2}));
    assert_eq!(client.auth_state(), AuthState::Unauthenticated);
    conn.send_json(json!({"rid":2,"data":{"isAuthenticated":true,"authError":null}}))
        .await;
    let st = call.await.unwrap().unwrap();
    assert!(st.is_authenticated);
    assert_eq!(client.auth_state(), AuthState::Authenticated);
    client.deauthenticate().await;
    assert_eq!(client.auth_state(), AuthState::Unauthenticated);
    assert_eq!(conn.recv_json().await, json!({"event":"#removeAuthToken"}));
    // bad token: rejected, unauthenticated
    let c3 = client.clone();
    let call = tokio::spawn(async move { c3.authenticate("x").await });
    let req = conn.recv_json().await;
    conn.send_json(json!({"rid": req["cid"], "error": {"message":"jwt malformed","name":"AuthTokenInvalidError","isBadToken":true}})).await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.name(), "AuthTokenInvalidError");
}

#[tokio::test(start_paused = true)]
async fn wait_for_auth_channel_stays_pending_until_authenticated() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let sub = client
        .subscribe_with("priv", SubscribeOptions::new().wait_for_auth(true))
        .await
        .unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    client.transmit("marker", &1).unwrap();
    assert_eq!(
        conn.recv_json().await["event"],
        "marker",
        "no #subscribe before auth"
    );
    assert_eq!(sub.state(), ChannelState::Pending);
    conn.send_json(json!({"event":"#setAuthToken","data":{"token": jwt(json!({"u":1}))}}))
        .await;
    let f = conn.recv_json().await;
    assert_eq!(f["data"], json!({"channel":"priv","waitForAuth":true}));
    conn.send_json(json!({"rid": f["cid"]})).await;
    sub.subscribed().await.unwrap();
}

struct Hook {
    calls: Arc<AtomicUsize>,
    token: String,
}

fn hook(token: &str) -> (Hook, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        Hook {
            calls: calls.clone(),
            token: token.to_owned(),
        },
        calls,
    )
}

impl Hook {
    fn provider(
        self,
    ) -> impl Fn(
        TokenRequest,
    ) -> futures_util::future::BoxFuture<'static, Result<String, std::io::Error>>
    + Send
    + Sync
    + 'static {
        move |_req| {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let t = self.token.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(t)
            })
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reauthenticates_before_resubscribing_after_a_rejected_handshake_token() {
    let old = jwt(json!({"u":"old"}));
    let fresh = jwt(json!({"u":"fresh"}));
    let (h, calls) = hook(&fresh);
    let (b, mut server) = builder();
    let client = b
        .token_store(MemoryTokenStore::with_token(old.clone()))
        .token_provider(h.provider())
        .build()
        .unwrap();
    let _sub = client.subscribe("private/feed").await.unwrap();
    let _w = client
        .subscribe_with("private/w", SubscribeOptions::new().wait_for_auth(true))
        .await
        .unwrap();
    client.transmit("queued", &1).unwrap();
    let mut conn = server.accept().await;
    let hs = conn
        .handshake(json!({"id":"a","pingTimeout":20000,"authError":{"message":"jwt expired","name":"AuthTokenExpiredError","isBadToken":true},"isAuthenticated":false}))
        .await;
    assert_eq!(hs["authToken"], old.as_str());
    conn.send_json(json!({"event":"#removeAuthToken"})).await;
    // 1. #authenticate with the fresh token comes first
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    assert_eq!(a["data"], fresh.as_str());
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    // 2. then the subscriptions, 3. then the queued message
    let s1 = conn.recv_json().await;
    let s2 = conn.recv_json().await;
    assert_eq!(s1["data"]["channel"], "private/feed");
    assert_eq!(s2["data"]["channel"], "private/w");
    assert_eq!(conn.recv_json().await["event"], "queued");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one hook call for handshake + removeAuthToken"
    );
    assert_eq!(client.auth_token().unwrap()["u"], "fresh");
}

#[tokio::test(start_paused = true)]
async fn without_a_hook_behaves_like_the_js_client() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let mut events = client.events();
    let _sub = client.subscribe("private/feed").await.unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    let s = conn.recv_json().await;
    assert_eq!(s["event"], "#subscribe");
    conn.send_json(
        json!({"rid": s["cid"], "error":{"message":"unauthenticated","name":"UnauthorizedError"}}),
    )
    .await;
    let names = event_names_until(&mut events, |e| e.name() == "subscribeFail").await;
    assert_eq!(
        names,
        [
            "connecting",
            "subscribeRequest(private/feed)",
            "connect",
            "subscribeFail(private/feed)"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn auth_rejected_subscription_is_retried_once_after_reauthentication() {
    let fresh = jwt(json!({"u":"fresh"}));
    let (h, calls) = hook(&fresh);
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b.token_provider(h.provider()), &mut server).await;
    // the handshake was unauthenticated: the hook runs first
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    let mut events = client.events();
    let sub = client.subscribe("private/x").await.unwrap();
    let s = conn.recv_json().await;
    // the server expired the token meanwhile: removeAuthToken, then the rejection
    conn.send_json(json!({"event":"#removeAuthToken"})).await;
    conn.send_json(
        json!({"rid": s["cid"], "error":{"message":"unauthenticated","name":"UnauthorizedError"}}),
    )
    .await;
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    let s = conn.recv_json().await;
    assert_eq!(s["data"]["channel"], "private/x");
    // the retry is rejected too: a final subscribeFail with the server's error
    conn.send_json(
        json!({"rid": s["cid"], "error":{"message":"still no","name":"UnauthorizedError"}}),
    )
    .await;
    let e = wait_event(&mut events, |e| e.name() == "subscribeFail").await;
    let Event::SubscribeFail { error, .. } = e else {
        unreachable!()
    };
    assert_eq!(error.message(), "still no");
    assert!(sub.subscribed().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_provider_never_drops_a_channel_and_is_retried_until_it_works() {
    let calls = Arc::new(AtomicUsize::new(0));
    let fresh = jwt(json!({"u":"fresh"}));
    let (c2, t2) = (calls.clone(), fresh.clone());
    let (b, mut server) = builder();
    let client = b
        .token_provider(move |_r: TokenRequest| {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            let t = t2.clone();
            async move {
                if n < 3 {
                    Err(std::io::Error::other("login service down"))
                } else {
                    Ok(t)
                }
            }
        })
        .build()
        .unwrap();
    let sub = client.subscribe("private/feed").await.unwrap();
    let mut events = client.events();
    let (mut conn, _) = server.accept_handshake().await;
    // The first attempt failed: what it held goes out, and the server refuses the
    // unauthenticated subscription.
    let s = conn.recv_json().await;
    assert_eq!(s["event"], "#subscribe");
    conn.send_json(
        json!({"rid": s["cid"], "error":{"message":"unauthenticated","name":"UnauthorizedError"}}),
    )
    .await;
    // Two more failures (after 1-2 s, then 2-4 s), then the token.
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    assert_eq!(a["data"], fresh.as_str());
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    let s = conn.recv_json().await;
    assert_eq!(s["data"]["channel"], "private/feed");
    conn.send_json(json!({"rid": s["cid"]})).await;
    sub.subscribed().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let mut retries = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), events.recv()).await {
        assert_ne!(e.name(), "subscribeFail");
        if let Event::ReauthenticationFailed { retry_in, .. } = e {
            retries.push(retry_in.expect("a next attempt"));
        }
    }
    assert_eq!(retries.len(), 3, "{retries:?}");
    assert!(
        retries[1] > retries[0] && retries[2] > retries[1],
        "{retries:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_hangs_is_abandoned_at_its_timeout_and_asked_again() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let fresh = jwt(json!({"u":"fresh"}));
    let (c2, d2, t2) = (calls.clone(), dropped.clone(), fresh.clone());
    let (b, mut server) = builder();
    let client = b
        .token_provider_timeout(Duration::from_secs(2))
        .token_provider(move |_r: TokenRequest| {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            let guard = Dropped(d2.clone());
            let t = t2.clone();
            async move {
                let _guard = guard;
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(t)
            }
        })
        .build()
        .unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "the hung call was cancelled (and the second one finished)"
    );
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    wait_open(&client).await;
}

#[tokio::test(start_paused = true)]
async fn hook_refreshes_the_token_before_it_expires_on_the_live_socket() {
    // exp is compared with the system clock; the timer runs on tokio's paused clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t1 = jwt(json!({"u":1,"iat":now,"exp":now + 30}));
    let t2 = jwt(json!({"u":2,"iat":now,"exp":now + 3600}));
    let (h, calls) = hook(&t2);
    let (b, mut server) = builder();
    let client = b
        .token_store(MemoryTokenStore::with_token(t1.clone()))
        .token_provider(h.provider())
        .build()
        .unwrap();
    let mut conn = server.accept().await;
    conn.handshake(json!({"id":"a","pingTimeout":1_000_000,"isAuthenticated":true}))
        .await;
    wait_open(&client).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let mut events = client.events();
    let a = conn.recv_json().await;
    assert_eq!(a["event"], "#authenticate");
    assert_eq!(a["data"], t2.as_str());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    conn.send_json(json!({"rid": a["cid"], "data":{"isAuthenticated":true,"authError":null}}))
        .await;
    let names = event_names_until(&mut events, |e| e.name() == "authenticate").await;
    assert_eq!(
        names,
        ["reauthenticating", "authenticate"],
        "no deauthentication in between"
    );
    assert_eq!(client.auth_token().unwrap()["u"], 2);
}
