//! Operator features of `socketcluster serve`, from the built binary: the HTTP API,
//! /health, /metrics, TLS, token renewal and graceful shutdown, with the real JS client
//! and our client.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sc_test_support::{JsClient, free_port};
use serde_json::{Value, json};
use socketcluster_rs_client::{Client, Event, MemoryTokenStore};
use tokio::process::Command;

mod common;

use common::{BIN, Serve, http};

const API_KEY: &str = "operator-key";
const AUTH_KEY: &str = "auth-key";

async fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let b = body.map(|b| b.to_string());
    let (status, text) = http(port, method, path, Some(API_KEY), b.as_deref()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn token(claims: Value, expires_in: u64) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--auth-key",
            AUTH_KEY,
            "--claims",
            &claims.to_string(),
        ])
        .args(["--expires-in", &expires_in.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn client(url: &str, token: Option<String>) -> Client {
    let mut b = Client::builder(url.to_owned()).reconnect_delays(
        Duration::from_millis(100),
        Duration::from_millis(100),
        1.5,
        Duration::from_millis(1000),
    );
    if let Some(t) = token {
        b = b.token_store(MemoryTokenStore::with_token(t));
    }
    b.connect().await.expect("connects")
}

#[tokio::test]
async fn http_publish_reaches_a_js_subscriber() {
    let serve = Serve::start(&["--port", "0", "--http-api-key", API_KEY]).await;
    let js = JsClient::spawn(json!({
        "url": serve.url(),
        "steps": [
            {"op": "subscribe", "channel": "news", "wait": true},
            {"op": "js", "code": "log({event: 'ready'})"},
            {"op": "waitPublish", "channel": "news", "count": 2, "timeoutMs": 15000}
        ]
    }))
    .await;
    js.wait_event(
        |v| v["event"] == "log" && v["data"]["event"] == "ready",
        Duration::from_secs(15),
    )
    .await;
    let (status, body) = api(
        serve.port,
        "POST",
        "/api/publish",
        Some(json!({"channel": "news", "data": {"héllo": [1, 2]}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"published": 1}));
    let (status, body) = api(
        serve.port,
        "POST",
        "/api/publish-batch",
        Some(
            json!({"publications": [{"channel": "news", "data": "second"}, {"channel": "other"}]}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"published": 2}));
    let run = js.wait_exit().await;
    run.assert_all_ok();
    assert_eq!(
        run.publications("news"),
        vec![json!({"héllo": [1, 2]}), json!("second")]
    );
}

#[tokio::test]
async fn api_needs_the_bearer_key_and_explains_bad_bodies() {
    let serve = Serve::start(&["--port", "0", "--http-api-key", API_KEY]).await;
    let p = serve.port;
    let body = r#"{"channel":"x","data":1}"#;
    assert_eq!(
        http(p, "POST", "/api/publish", None, Some(body)).await.0,
        401
    );
    assert_eq!(
        http(p, "POST", "/api/publish", Some("wrong"), Some(body))
            .await
            .0,
        401
    );
    assert_eq!(http(p, "GET", "/api/stats", None, None).await.0, 401);
    for (bad, needle) in [
        ("{not json", "not valid JSON"),
        (r#"{"data":1}"#, "`channel` must be a string"),
        (r#"{"channel":5}"#, "`channel` must be a string"),
        (r#"[1]"#, "must be an object"),
    ] {
        let (status, text) = http(p, "POST", "/api/publish", Some(API_KEY), Some(bad)).await;
        assert_eq!(status, 400, "{bad}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{bad}: {text}"
        );
    }
    let (status, v) = api(
        p,
        "POST",
        "/api/publish-batch",
        Some(json!({"publications": [{"channel": "a"}, {"data": 1}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("publications[1]"),
        "{v}"
    );
    let (status, _) = api(p, "POST", "/api/disconnect", Some(json!({"nothing": true}))).await;
    assert_eq!(status, 400);
    assert_eq!(
        http(p, "GET", "/api/publish", Some(API_KEY), None).await.0,
        405
    );
    assert_eq!(
        http(p, "GET", "/api/nope", Some(API_KEY), None).await.0,
        404
    );

    // without --http-api-key the API does not exist
    let plain = Serve::start(&["--port", "0"]).await;
    assert_eq!(
        http(
            plain.port,
            "POST",
            "/api/publish",
            Some(API_KEY),
            Some(body)
        )
        .await
        .0,
        404
    );
    assert_eq!(http(plain.port, "GET", "/health", None, None).await.0, 200);
}

#[tokio::test]
async fn disconnect_and_deauthenticate_by_claim_hit_exactly_the_matching_sockets() {
    let serve = Serve::start(&[
        "--port",
        "0",
        "--http-api-key",
        API_KEY,
        "--auth-key",
        AUTH_KEY,
    ])
    .await;
    let url = serve.url();
    let alice1 = client(&url, Some(token(json!({"user": "alice"}), 3600).await)).await;
    let alice2 = client(&url, Some(token(json!({"user": "alice"}), 3600).await)).await;
    let bob = client(&url, Some(token(json!({"user": "bob"}), 3600).await)).await;
    let anon = client(&url, None).await;
    let mut alice_events = alice1.events();
    let (status, v) = api(serve.port, "GET", "/api/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["sockets"], 4);
    assert_eq!(v["authenticatedSockets"], 3);

    let (status, v) = api(
        serve.port,
        "POST",
        "/api/deauthenticate",
        Some(json!({"claim": "user", "value": "bob"})),
    )
    .await;
    assert_eq!((status, v), (200, json!({"deauthenticated": 1})));
    tokio::time::timeout(Duration::from_secs(10), async {
        while bob.is_authenticated() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bob is deauthenticated");
    assert!(alice1.is_authenticated() && alice2.is_authenticated());

    let (status, v) = api(
        serve.port,
        "POST",
        "/api/disconnect",
        Some(json!({"claim": "user", "value": "alice"})),
    )
    .await;
    assert_eq!((status, v), (200, json!({"disconnected": 2})));
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Disconnect { code, .. }) = alice_events.next().await {
                return code;
            }
        }
    })
    .await
    .expect("alice is disconnected");
    assert_eq!(
        code.0, 4500,
        "permanent code: the JS client does not reconnect"
    );
    // alice's two sockets close independently: wait until the server counted both gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = api(serve.port, "GET", "/api/stats", None).await;
        if v["sockets"] != 3 && v["sockets"] != 4 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["sockets"], 2, "bob and the anonymous socket stay: {v}");
    assert!(bob.state() == socketcluster_rs_client::ConnectionState::Open);
    assert!(anon.state() == socketcluster_rs_client::ConnectionState::Open);

    // by socket id
    let id = anon.id().unwrap();
    let (_, v) = api(
        serve.port,
        "POST",
        "/api/disconnect",
        Some(json!({"socket": id, "code": 4100})),
    )
    .await;
    assert_eq!(v, json!({"disconnected": 1}));
    drop(alice2);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(name) && (name.ends_with('}') || l[name.len()..].starts_with([' ', '{']))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_and_health_follow_the_traffic() {
    let serve = Serve::start(&["--port", "0", "--http-api-key", API_KEY]).await;
    let (status, body) = http(serve.port, "GET", "/health", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (_, before) = http(serve.port, "GET", "/metrics", None, None).await;
    let c = client(&serve.url(), None).await;
    let mut sub = c.subscribe("m").await.unwrap();
    sub.subscribed().await.unwrap();
    for i in 0..5 {
        c.publish("m", &i).await.unwrap();
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
    }
    let (status, after) = http(serve.port, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&after, "socketcluster_sockets"), 1.0, "{after}");
    assert_eq!(metric(&after, "socketcluster_channels"), 1.0);
    assert!(
        metric(&after, "socketcluster_publications_total")
            >= metric(&before, "socketcluster_publications_total") + 5.0
    );
    assert!(
        metric(&after, "socketcluster_messages_received_total")
            > metric(&before, "socketcluster_messages_received_total")
    );
    assert!(metric(&after, "socketcluster_handshakes_completed_total") >= 1.0);
    // emitted by the server library through the `metrics` facade
    assert!(
        metric(
            &after,
            "socketcluster_server_publications_in_total{source=\"client\"}"
        ) >= 5.0,
        "{after}"
    );
    assert!(metric(&after, "socketcluster_server_publications_out_total") >= 5.0);
    assert!(
        metric(
            &after,
            "socketcluster_server_subscriptions_total{outcome=\"ok\"}"
        ) >= 1.0
    );
    assert!(metric(&after, "socketcluster_server_connections_total") >= 1.0);
    let (_, v) = api(serve.port, "GET", "/api/channels", None).await;
    assert_eq!(v, json!({"channels": [{"channel": "m", "subscribers": 1}]}));
}

#[tokio::test]
async fn token_renewal_keeps_a_short_token_alive() {
    // The initial token lasts 3 s; the server re-signs it every second, so the socket
    // is still authenticated 10 s later, with a newer token.
    let serve = Serve::start(&[
        "--port",
        "0",
        "--auth-key",
        AUTH_KEY,
        "--token-renewal",
        "1",
    ])
    .await;
    let first = token(json!({"user": "carol"}), 3).await;
    let c = client(&serve.url(), Some(first.clone())).await;
    assert!(c.is_authenticated());
    let mut events = c.events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
            assert!(
                !matches!(ev, Event::Deauthenticate { .. } | Event::Disconnect { .. }),
                "{ev:?}"
            );
        }
    }
    assert!(c.is_authenticated());
    let now = c.signed_auth_token().unwrap();
    assert_ne!(now, first, "the token was renewed");
    assert_eq!(c.auth_token().unwrap()["user"], "carol");

    // control: without renewal the same token dies after 3 s
    let plain = Serve::start(&["--port", "0", "--auth-key", AUTH_KEY]).await;
    let c2 = client(&plain.url(), Some(token(json!({"user": "dave"}), 3).await)).await;
    assert!(c2.is_authenticated());
    tokio::time::timeout(Duration::from_secs(10), async {
        while c2.is_authenticated() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("deauthenticated when the token expires");
}

#[tokio::test]
async fn graceful_shutdown_lets_clients_resubscribe_on_the_restarted_server() {
    let port = free_port().to_string();
    let mut serve = Serve::start(&["--port", &port, "--http-api-key", API_KEY]).await;
    let c = client(&serve.url(), None).await;
    let mut sub = c.subscribe("rolling").await.unwrap();
    sub.subscribed().await.unwrap();
    let js = JsClient::spawn(json!({
        "url": serve.url(),
        "options": {"autoReconnectOptions": {"initialDelay": 100, "randomness": 100}},
        "steps": [
            {"op": "subscribe", "channel": "rolling", "wait": true},
            {"op": "js", "code": "log({event: 'ready'})"},
            {"op": "waitPublish", "channel": "rolling", "count": 1, "timeoutMs": 30000}
        ]
    }))
    .await;
    js.wait_event(
        |v| v["event"] == "log" && v["data"]["event"] == "ready",
        Duration::from_secs(15),
    )
    .await;
    serve.terminate().await;
    let serve = Serve::start(&["--port", &port, "--http-api-key", API_KEY]).await;
    // publish until both clients got it (they resubscribe after reconnecting)
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let _ = api(
                serve.port,
                "POST",
                "/api/publish",
                Some(json!({"channel": "rolling", "data": "after"})),
            )
            .await;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("our client resubscribed");
    assert_eq!(got.value(), json!("after"));
    let run = js.wait_exit().await;
    run.assert_all_ok();
    assert_eq!(run.publications("rolling")[0], json!("after"));
    let disconnects = run.client_events_named("disconnect");
    assert_eq!(disconnects[0]["code"], 1001, "{}", run.dump());
}

fn self_signed() -> (String, String, Vec<u8>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        cert.cert.pem(),
        cert.signing_key.serialize_pem(),
        cert.cert.der().to_vec(),
    )
}

#[tokio::test]
async fn tls_serves_wss_and_https() {
    let dir = std::env::temp_dir().join(format!("sc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_pem, key_pem, der) = self_signed();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert_pem).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    let serve = Serve::start(&[
        "--port",
        "0",
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ])
    .await;
    let url = format!("wss://localhost:{}/socketcluster/", serve.port);
    // the JS client, not verifying the self-signed certificate
    let run = sc_test_support::run_js_client(json!({
        "url": url,
        "options": {"wsOptions": {"rejectUnauthorized": false}},
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "subscribe", "channel": "t", "wait": true},
            {"op": "publish", "channel": "t", "data": "over tls"},
            {"op": "waitPublish", "channel": "t", "count": 1, "timeoutMs": 10000}
        ]
    }))
    .await;
    run.assert_all_ok();
    assert_eq!(run.publications("t"), vec![json!("over tls")]);
    // our client, trusting the certificate as a custom root
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let c = Client::builder(url)
        .tls_config(Arc::new(tls))
        .connect()
        .await
        .expect("wss connects");
    c.publish("t", &1).await.unwrap();
    c.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The abuse limits are wired from flags and environment, refuse with 429 / close with
/// 1009, and are counted on /metrics.
#[tokio::test]
async fn abuse_limits_are_configurable_and_counted_in_metrics() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let serve = Serve::start_with_env(
        &[
            "--port",
            "0",
            "--max-connections-per-ip",
            "1",
            "--per-ip-limits-on-loopback",
            "--max-batch-items",
            "2",
        ],
        &[("SOCKETCLUSTER_HANDSHAKE_RATE_PER_IP", "0")],
    )
    .await;
    let (mut first, _) = tokio_tungstenite::connect_async(serve.url()).await.unwrap();
    match tokio_tungstenite::connect_async(serve.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {other:?}"),
    }
    first
        .send(Message::Text(
            r##"{"event":"#handshake","data":{},"cid":1}"##.into(),
        ))
        .await
        .unwrap();
    first.send(Message::Text("[1,2,3]".into())).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = first.next().await {
            if let Message::Close(Some(f)) = m {
                return (u16::from(f.code), f.reason.to_string());
            }
        }
        panic!("no close frame");
    })
    .await
    .unwrap();
    assert_eq!(close, (1009, "Batch exceeds 2 items".to_owned()));
    let (_, text) = http(serve.port, "GET", "/metrics", None, None).await;
    for limit in ["connections_per_ip", "batch_items"] {
        let name = format!("socketcluster_server_limit_exceeded_total{{limit=\"{limit}\"}}");
        assert_eq!(metric(&text, &name), 1.0, "{name} in {text}");
    }
}
