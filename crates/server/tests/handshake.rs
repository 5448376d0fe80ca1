//! Handshake, heartbeat and strict-handshake behaviour (docs/PROTOCOL.md 3.6.1, 8.3, 8.6),
//! driven by a raw WebSocket client.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_server::{ProtocolVersion, ServerEvent};

/// SV-27 / CL-4: reply fields in order `id`, `pingTimeout`, `isAuthenticated`; no
/// `authError` without a token; the cid is echoed whatever its value.
#[tokio::test]
async fn handshake_reply_has_exact_fields_and_echoes_the_cid() {
    let server = start(config()).await;
    let mut c = Raw::connect(&url(&server)).await;
    c.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":18}"##)
        .await;
    let text = c.text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 20);
    assert_eq!(
        text,
        format!(
            r#"{{"rid":18,"data":{{"id":"{id}","pingTimeout":30000,"isAuthenticated":false}}}}"#
        )
    );
    eventually(|| server.clients_count() == 1).await;
    assert_eq!(server.socket(&id).unwrap().id(), id);
}

/// CL-5: a valid token authenticates in the handshake.
#[tokio::test]
async fn handshake_with_a_valid_token_authenticates() {
    let server = start(config()).await;
    let token = sign(&server, json!({"username": "bob"}));
    let mut c = Raw::connect(&url(&server)).await;
    let v = c.handshake(Some(&token)).await;
    assert_eq!(v["data"]["isAuthenticated"], true);
    assert!(v["data"].get("authError").is_none());
    let who = c.invoke("whoami", Value::Null, 2).await;
    assert_eq!(who["data"]["authToken"]["username"], "bob");
}

/// docs/PROTOCOL.md 11.3 / 5.3: bad tokens give `authError` (with `isBadToken`) and a
/// `#removeAuthToken` after the reply; not-before is not a bad token; an empty token
/// is no token.
#[tokio::test]
async fn handshake_with_bad_tokens_reports_js_errors() {
    let server = start(config()).await;
    let other = socketcluster_rs_server::Server::new(config().with_auth(
        socketcluster_rs_server::auth::AuthConfig::with_secret("otherkey"),
    ))
    .unwrap();
    let wrong_key = sign(&other, json!({"username": "eve"}));
    let expired = server
        .sign_token(
            &json!({"username": "bob", "exp": now_s() - 10}),
            &Default::default(),
        )
        .unwrap();
    let not_yet = server
        .sign_token(
            &json!({"username": "bob", "nbf": now_s() + 1000}),
            &Default::default(),
        )
        .unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"username":"eve"}"#)
    );
    let oversized = format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), "A".repeat(200_000));

    type Expected<'a> = Option<(&'a str, &'a str, bool)>;
    let cases: Vec<(Value, Expected<'_>)> = vec![
        (
            json!(wrong_key),
            Some(("AuthTokenInvalidError", "invalid signature", true)),
        ),
        (
            json!(expired),
            Some(("AuthTokenExpiredError", "jwt expired", true)),
        ),
        (
            json!(not_yet),
            Some(("AuthTokenNotBeforeError", "jwt not active", false)),
        ),
        (
            json!("not.a.jwt"),
            Some(("AuthTokenInvalidError", "invalid token", true)),
        ),
        (
            json!("x"),
            Some(("AuthTokenInvalidError", "jwt malformed", true)),
        ),
        (
            json!(alg_none),
            Some(("AuthTokenInvalidError", "jwt signature is required", true)),
        ),
        (
            json!(oversized),
            Some(("AuthTokenInvalidError", "invalid token", true)),
        ),
        (
            json!(12345),
            Some((
                "AuthTokenError",
                "Invalid token format - Token must be a string",
                true,
            )),
        ),
        (json!(""), None),
        (Value::Null, None),
    ];
    for (token, expected) in cases {
        let mut c = Raw::connect(&url(&server)).await;
        c.send(&json!({"event":"#handshake","data":{"authToken": token},"cid":1}).to_string())
            .await;
        let v = c.json().await;
        assert_eq!(v["data"]["isAuthenticated"], false, "{v}");
        match expected {
            None => assert!(v["data"].get("authError").is_none(), "{v}"),
            Some((name, message, bad)) => {
                let e = &v["data"]["authError"];
                assert_eq!(e["name"], name, "{v}");
                assert_eq!(e["message"], message, "{v}");
                assert_eq!(e["isBadToken"], bad, "{v}");
                if name == "AuthTokenExpiredError" {
                    assert!(e["expiry"].as_str().unwrap().ends_with(".000Z"));
                }
                if bad {
                    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
                }
            }
        }
        // The key order of the reply is JS's: id, pingTimeout, authError, isAuthenticated.
        let keys: Vec<&String> = v["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys.first().map(|k| k.as_str()), Some("id"));
        assert_eq!(keys.last().map(|k| k.as_str()), Some("isAuthenticated"));
        // The socket keeps working.
        let echo = c.invoke("echo", json!("still here"), 2).await;
        assert_eq!(echo, json!({"rid": 2, "data": "still here"}));
    }
}

/// SV-23, SV-24, 3.6.1: anything before `#handshake` closes with 4009.
#[tokio::test]
async fn messages_before_the_handshake_close_with_4009() {
    let server = start(config()).await;
    for first in [
        "",                                     // a pong
        r#"{"event":"echo","data":1,"cid":1}"#, // an invoke
        r#"{"rid":1}"#,                         // a response
        "this is not json",                     // raw
        r##"{"event":"#removeAuthToken"}"##,
        r##"{"event":"#authenticate","data":"x","cid":1}"##,
        r##"[{"event":"foo"},{"event":"#handshake","data":{"authToken":null},"cid":1}]"##,
    ] {
        let mut c = Raw::connect(&url(&server)).await;
        c.send(first).await;
        assert_eq!(
            c.closed().await,
            (4009, String::new()),
            "first frame {first:?}"
        );
    }
    // an empty binary frame (SV-23)
    let mut c = Raw::connect(&url(&server)).await;
    c.send_binary(&[]).await;
    assert_eq!(c.closed().await.0, 4009);
}

/// X-1: `[]` is ignored before the handshake; a batch starting with `#handshake` is
/// accepted and its later elements processed.
#[tokio::test]
async fn empty_batch_is_ignored_and_handshake_batches_work() {
    let server = start(config()).await;
    let mut c = Raw::connect(&url(&server)).await;
    c.send("[]").await;
    let v = c.handshake(None).await;
    assert_eq!(v["rid"], 1);

    let mut c = Raw::connect(&url(&server)).await;
    c.send(r##"[{"event":"#handshake","data":{"authToken":null},"cid":1},{"event":"#subscribe","data":{"channel":"x"},"cid":2}]"##).await;
    assert_eq!(c.json().await["rid"], 1);
    assert_eq!(c.text().await, r#"{"rid":2}"#);
    // leading whitespace is accepted (2.3); a binary JSON frame is decoded like text (1.3)
    c.send("  \n {\"event\":\"echo\",\"data\":\"ws\",\"cid\":3}")
        .await;
    assert_eq!(c.text().await, r#"{"rid":3,"data":"ws"}"#);
    c.send_binary(br#"{"event":"echo","data":"bin","cid":4}"#)
        .await;
    assert_eq!(c.text().await, r#"{"rid":4,"data":"bin"}"#);
}

/// SV-25, 3.6.1: `#handshake` without a numeric cid closes with 4008.
#[tokio::test]
async fn handshake_without_cid_closes_with_4008() {
    let server = start(config()).await;
    for frame in [
        r##"{"event":"#handshake","data":{}}"##,
        r##"{"event":"#handshake","data":{},"cid":"1"}"##,
    ] {
        let mut c = Raw::connect(&url(&server)).await;
        c.send(frame).await;
        assert_eq!(c.closed().await, (4008, String::new()));
    }
    // also on an open socket
    let mut c = open(&server).await;
    c.send(r##"{"event":"#handshake","data":{}}"##).await;
    assert_eq!(c.closed().await.0, 4008);
}

/// 8.6 / 3.6.1: no handshake within `handshake_timeout` closes with 4005, and the
/// server reports a connection abort with the table reason.
#[tokio::test]
async fn missing_handshake_times_out_with_4005() {
    let server = start(config().with_handshake_timeout(Duration::from_millis(300))).await;
    let mut events = server.events();
    let mut c = Raw::connect(&url(&server)).await;
    assert_eq!(c.closed().await, (4005, String::new()));
    loop {
        match events.recv().await.unwrap() {
            ServerEvent::ConnectionAbort { code, reason, .. } => {
                assert_eq!(code, 4005);
                assert_eq!(
                    reason,
                    "Did not receive #handshake from client before timeout"
                );
                break;
            }
            _ => continue,
        }
    }
    eventually(|| server.pending_clients_count() == 0).await;
}

/// 8.3 / SV-56: the server pings with `""` every interval and closes with 4001 when no
/// pong arrives within `pingTimeout`.
#[tokio::test]
async fn no_pong_closes_with_4001_after_pings() {
    let server = start(
        config()
            .with_ping_interval(Duration::from_millis(100))
            .with_ping_timeout(Duration::from_millis(450)),
    )
    .await;
    let mut c = open(&server).await;
    let mut pings = 0;
    let code = loop {
        match c.next().await {
            Got::Text(t) if t.is_empty() => pings += 1,
            Got::Close(code, _) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4001);
    assert!(pings >= 2, "saw {pings} pings");
    eventually(|| server.clients_count() == 0).await;
}

/// SV-58: a client that pongs stays connected across several intervals.
#[tokio::test]
async fn ponging_client_stays_connected_across_intervals() {
    let server = start(
        config()
            .with_ping_interval(Duration::from_millis(100))
            .with_ping_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut c = open(&server).await;
    c.auto_pong = Some("");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut n = 10;
    while tokio::time::Instant::now() < deadline {
        n += 1;
        let v = c.invoke("echo", json!(n), n).await;
        assert_eq!(v["data"], n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.pings_seen >= 5, "pings seen: {}", c.pings_seen);
    assert_eq!(server.clients_count(), 1);
}

/// 1.4: protocol version 1 pings with `#1`, accepts `#2`, treats `""` as raw.
#[tokio::test]
async fn protocol_version_1_uses_hash_heartbeats() {
    let server = start(
        config()
            .with_protocol_version(ProtocolVersion::V1)
            .with_ping_interval(Duration::from_millis(100))
            .with_ping_timeout(Duration::from_millis(400)),
    )
    .await;
    // '#2' before the handshake is a 4009
    let mut c = Raw::connect(&url(&server)).await;
    c.send("#2").await;
    assert_eq!(c.closed().await.0, 4009);

    let mut c = open(&server).await;
    match c.next().await {
        Got::Text(t) => assert_eq!(t, "#1"),
        other => panic!("{other:?}"),
    }
    c.send("").await; // raw for a v1 server: no reply, no close
    c.auto_pong = Some("#2");
    for i in 0..6u64 {
        let v = c.invoke("echo", json!(i), 10 + i).await;
        assert_eq!(v["data"], i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.pings_seen >= 3);
}

/// X-12: a repeated `#handshake` is answered with the same id and does not count the
/// socket twice; a new token in it is applied.
#[tokio::test]
async fn repeated_handshake_keeps_the_id_and_server_state_consistent() {
    let server = start(config()).await;
    let mut c = Raw::connect(&url(&server)).await;
    let first = c.handshake(None).await;
    let token = sign(&server, json!({"username": "kate"}));
    let second = c.handshake_cid(Some(&token), 2).await;
    assert_eq!(second["rid"], 2);
    assert_eq!(second["data"]["id"], first["data"]["id"]);
    assert_eq!(second["data"]["isAuthenticated"], true);
    assert_eq!(server.clients_count(), 1);
    let who = c.invoke("whoami", Value::Null, 3).await;
    assert_eq!(who["data"]["authToken"]["username"], "kate");
    c.close(1000, "bye").await;
    eventually(|| server.clients_count() == 0).await;
    assert_eq!(server.pending_clients_count(), 0);
}

/// 8.6: the close code and reason sent by the client are reported by the server.
#[tokio::test]
async fn client_close_code_and_reason_are_reported() {
    let server = start(config()).await;
    let mut events = server.events();
    let mut c = open(&server).await;
    c.close(4321, "custom bye").await;
    loop {
        if let ServerEvent::Disconnection { code, reason, .. } = events.recv().await.unwrap() {
            assert_eq!((code, reason.as_str()), (4321, "custom bye"));
            break;
        }
    }
}

/// 8.6: the server's reply to the client's close frame echoes its code and reason,
/// like the JS server (the JS client reports that reason in `disconnect` and `close`).
#[tokio::test]
async fn client_close_code_and_reason_are_echoed() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    c.close(1000, "bye").await;
    assert_eq!(c.next().await, Got::Close(1000, "bye".into()));
}

/// 8.6: `socket.disconnect(code, reason)` sends that close frame.
#[tokio::test]
async fn server_disconnect_sends_code_and_reason() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    eventually(|| server.clients_count() == 1).await;
    server.clients()[0].disconnect(4321, "custom reason");
    assert_eq!(c.closed().await, (4321, "custom reason".to_owned()));
}

/// Graceful shutdown closes open and handshaking sockets with 1001 and stops accepting.
#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let server = start(config()).await;
    let mut a = open(&server).await;
    let mut b = Raw::connect(&url(&server)).await;
    let addr = server.local_addr().unwrap();
    let s2 = server.clone();
    let h = tokio::spawn(async move { s2.shutdown().await });
    assert_eq!(a.closed().await.0, 1001);
    assert_eq!(b.closed().await.0, 1001);
    h.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err() || server.is_shut_down());
    assert_eq!(server.clients_count(), 0);
}

/// SV-26, 3.6.1, 3.6.5: with `strict_handshake` false, an empty binary frame and a pong
/// before the handshake are tolerated, and a `#subscribe` is answered with
/// `InvalidActionError` "Cannot subscribe socket to a channel before it has completed
/// the handshake"; the handshake then succeeds.
#[tokio::test]
async fn lenient_handshake_tolerates_early_messages() {
    let server = start(config().with_strict_handshake(false)).await;
    let mut c = Raw::connect(&url(&server)).await;
    c.send_binary(&[]).await;
    c.send("").await;
    c.send(r##"{"event":"#subscribe","data":{"channel":"early"},"cid":2}"##)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":2,"error":{"message":"Cannot subscribe socket to a channel before it has completed the handshake","name":"InvalidActionError"}}"#
    );
    let reply = c.handshake(None).await;
    assert_eq!(reply["data"]["id"].as_str().map(str::len), Some(20));
    let sub = c.invoke("#subscribe", json!({"channel": "later"}), 3).await;
    assert_eq!(sub, json!({"rid": 3}));
}
