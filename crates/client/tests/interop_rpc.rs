//! Part 1 interop: the Rust client against the real JS server (v20, and v14 in protocol
//! version 1). Each test cites the docs/PROTOCOL.md section 12 items it covers.

mod common;

use std::time::Duration;

use common::*;
use sc_test_support::JsVersion;
use serde_json::{Value, json};
use socketcluster_rs_client::{ConnectionState, Event, InvokeErrorKind};

/// CL-4, SV-1, SV-27: handshake without a token; status id/pingTimeout match the server's.
#[tokio::test]
async fn handshake_exposes_the_servers_status() {
    init_tracing();
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let mut opts = opts;
        opts.ping_timeout_ms = Some(7000);
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let conn = server.wait_for("connection", WAIT).await;
        let status = client.status().unwrap();
        assert_eq!(status.id.as_deref(), conn["socket"].as_str(), "{conn}");
        assert_eq!(status.ping_timeout, Some(7000));
        assert!(!status.is_authenticated);
        assert!(status.auth_error.is_none());
        assert_eq!(client.state(), ConnectionState::Open);
        client.close().await;
    }
}

/// SV-38, SV-29, 11.1: invoke echo with nested unicode payloads (v20 and v14/protocol 1).
#[tokio::test]
async fn invoke_echo_round_trips_nested_unicode() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let data = json!({
            "text": "héllo wörld 日本語 🎉 \u{2028} \"quoted\" \\ /",
            "nested": {"list": [1, 2.5, -3, null, true, {"deep": ["ü", {"x": "\u{1}"}]}]},
            "empty": {}, "arr": []
        });
        let back: Value = client.invoke("echo", &data).await.unwrap();
        assert_eq!(back, data);
        let none = client.invoke_raw("echo", None, None).await.unwrap();
        assert!(none.is_none(), "no data answered as {{\"rid\":n}}");
        client.close().await;
    }
}

/// SV-38, SV-67, 3.5: a remote error becomes a typed error with name, message and extras.
#[tokio::test]
async fn remote_error_is_typed_with_name_message_and_extra_fields() {
    for (opts, version, proc_) in [
        (v20(), JsVersion::V20, "error"),
        (v14(), JsVersion::V14, "fail"),
    ] {
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let err = client.invoke::<Value, _>(proc_, &1).await.unwrap_err();
        assert_eq!(err.kind(), InvokeErrorKind::Remote);
        assert_eq!(err.name(), "CustomError");
        let o = err.remote().unwrap().as_object().unwrap();
        assert_eq!(o.message, "it failed");
        assert_eq!(o.get("extra"), Some(&json!(42)));
        client.close().await;
    }
}

/// CL-22, 7.1: an unhandled procedure is never answered: TimeoutError at the configured
/// (per-call and client-wide) timeout; the connection stays usable.
#[tokio::test]
async fn unanswered_invoke_times_out_at_the_configured_timeout() {
    let server = start(v20()).await;
    let client = fast(&server.url())
        .ack_timeout(Duration::from_millis(400))
        .connect()
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let err = client
        .invoke_raw("neverAnswer", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Timeout);
    assert_eq!(
        err.to_string(),
        "TimeoutError: Event response for neverAnswer event timed out"
    );
    let el = t.elapsed();
    assert!(
        el >= Duration::from_millis(400) && el < Duration::from_millis(2000),
        "{el:?}"
    );
    let t = std::time::Instant::now();
    let err = client
        .invoke_with_timeout::<Value, _>("noSuchProcedure", &1, Some(Duration::from_millis(150)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Timeout);
    assert!(t.elapsed() < Duration::from_millis(400));
    let v: i32 = client.invoke("echo", &5).await.unwrap();
    assert_eq!(v, 5);
    client.close().await;
}

/// 7.3, 11.2: the server invokes a client procedure and gets the answer (and an error).
#[tokio::test]
async fn server_invokes_a_client_procedure_and_gets_the_answer() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let mut procedure = client.procedure("clientProc");
        tokio::spawn(async move {
            while let Some(req) = procedure.recv().await {
                let x: Value = req.deserialize().unwrap();
                if x == json!("fail") {
                    req.error(socketcluster_rs_client::WireError::new(
                        "ClientRefusedError",
                        "client refused",
                    ))
                    .unwrap();
                } else {
                    req.respond(&json!({"got": x})).unwrap();
                }
            }
        });
        let answer: Value = client
            .invoke(
                "serverInvoke",
                &json!({"procedure": "clientProc", "data": {"x": 1}}),
            )
            .await
            .unwrap();
        assert_eq!(answer, json!({"got": {"x": 1}}));
        let err = client
            .invoke::<Value, _>(
                "serverInvoke",
                &json!({"procedure": "clientProc", "data": "fail"}),
            )
            .await
            .unwrap_err();
        assert_eq!(err.name(), "ClientRefusedError");
        client.close().await;
    }
}

/// SV-39, 7.3: transmit in both directions (a transmit issued before the connection is
/// open is delivered after the handshake).
#[tokio::test]
async fn transmit_both_ways() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let server = start(opts).await;
        let client = client_for(&server, version).build().unwrap();
        client
            .transmit("customRemoteEvent", "This is data")
            .unwrap();
        let t = server
            .wait_event(
                |v| v["event"] == "transmit" && v["name"] == "customRemoteEvent",
                WAIT,
            )
            .await;
        assert_eq!(t["data"], "This is data");
        let mut receiver = client.receiver("clientEvent");
        client
            .invoke::<Value, _>(
                "serverTransmit",
                &json!({"event": "clientEvent", "data": {"y": 2}}),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(WAIT, receiver.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.deserialize::<Value>().unwrap(), json!({"y": 2}));
        client.close().await;
    }
}

/// 8.6, 4.3 (1006 backs off), X-9: the server kills the socket; the client reconnects
/// with backoff and handshakes again.
#[tokio::test]
async fn reconnects_with_backoff_after_the_server_kills_the_socket() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let mut events = client.events();
        let first = server.wait_for("connection", WAIT).await;
        server.command_ok(json!({"cmd": "terminate"})).await;
        let e = wait_event(&mut events, named("disconnect")).await;
        let Event::Disconnect { code, .. } = e else {
            unreachable!()
        };
        assert_eq!(code.0, 1006);
        let delay = client
            .pending_reconnect()
            .expect("a reconnect is scheduled");
        assert!(
            delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400),
            "{delay:?}"
        );
        wait_event(&mut events, named("connect")).await;
        let second = server.wait_for("connection", WAIT).await;
        assert_ne!(first["socket"], second["socket"]);
        assert_eq!(client.id().as_deref(), second["socket"].as_str());
        let v: i32 = client.invoke("echo", &1).await.unwrap();
        assert_eq!(v, 1);
        client.close().await;
    }
}

/// 8.4, 8.6: the server restarts on the same port; the client reconnects by itself.
#[tokio::test]
async fn reconnects_after_the_server_restarts_on_the_same_port() {
    let mut server = start(v20()).await;
    let client = fast(&server.url()).connect().await.unwrap();
    let mut events = client.events();
    server.restart(None).await;
    wait_event(&mut events, named("disconnect")).await;
    wait_event(&mut events, named("connect")).await;
    let v: String = client.invoke("echo", "after restart").await.unwrap();
    assert_eq!(v, "after restart");
    client.close().await;
}

/// CL-35, SV-56, X-8, 8.3: the server stops pinging: the client closes with 4000
/// (reason "Server ping timed out") and reconnects at once (v20 and v14/protocol 1).
#[tokio::test]
async fn closes_with_4000_and_reconnects_when_the_server_stops_pinging() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let mut opts = opts;
        opts.ping_interval_ms = Some(200);
        opts.ping_timeout_ms = Some(800);
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let mut events = client.events();
        server.command_ok(json!({"cmd": "stopPinging"})).await;
        let e = wait_event(&mut events, |e| matches!(e, Event::Disconnect { .. })).await;
        let Event::Disconnect { code, reason } = e else {
            unreachable!()
        };
        // the server's own pong deadline (4001) may win the race, as with the JS client
        assert!(code.0 == 4000 || code.0 == 4001, "{code}");
        if code.0 == 4000 {
            assert_eq!(reason, "Server ping timed out");
        }
        let e = wait_event(&mut events, |e| matches!(e, Event::Connecting)).await;
        assert!(matches!(e, Event::Connecting));
        wait_event(&mut events, named("connect")).await;
        client.close().await;
    }
}

/// SV-58, 8.3: pings are answered in both protocol versions; the connection stays up.
#[tokio::test]
async fn answers_pings_and_stays_connected() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let mut opts = opts;
        opts.ping_interval_ms = Some(150);
        opts.ping_timeout_ms = Some(600);
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let mut events = client.events();
        let quiet = tokio::time::timeout(Duration::from_millis(2000), events.recv()).await;
        assert!(
            quiet.is_err(),
            "unexpected event {:?}",
            quiet.unwrap().map(|e| e.name())
        );
        assert_eq!(client.state(), ConnectionState::Open);
        client.close().await;
    }
}

/// SV-57, CL-36: with pingTimeoutDisabled on both sides the silent socket stays open.
#[tokio::test]
async fn ping_timeout_disabled_keeps_the_socket_open() {
    let server = start(
        v20()
            .with("pingTimeoutDisabled", true)
            .with("pingTimeout", 500),
    )
    .await;
    let client = fast(&server.url())
        .ping_timeout_disabled(true)
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    let quiet = tokio::time::timeout(Duration::from_millis(1500), events.recv()).await;
    assert!(quiet.is_err());
    assert_eq!(client.state(), ConnectionState::Open);
    client.close().await;
}

/// SV-62 / 8.2: a handshake rejected with statusCode 4501 aborts with that code and the
/// client does not reconnect.
#[tokio::test]
async fn handshake_rejection_4501_is_final() {
    let server = start(v20().with("handshakeMiddleware", "block4501")).await;
    let err = fast(&server.url()).connect().await.unwrap_err();
    let socketcluster_rs_client::ConnectError::Aborted { code, reason, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(code.0, 4501);
    assert!(
        reason.starts_with("InvalidAuthQueryHandshakeError"),
        "{reason}"
    );
}

/// CL-23, SV-43: subscribe, publish with acknowledgement, receive the publication.
#[tokio::test]
async fn subscribe_and_publish_round_trip() {
    for (opts, version) in [(v20(), JsVersion::V20), (v14(), JsVersion::V14)] {
        let server = start(opts).await;
        let client = client_for(&server, version).connect().await.unwrap();
        let mut sub = client.subscribe("foo").await.unwrap();
        sub.subscribed().await.unwrap();
        for v in [json!("hello"), json!("world"), json!({"abc": 123})] {
            client.publish("foo", &v).await.unwrap();
            let m = tokio::time::timeout(WAIT, sub.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.value(), v);
        }
        client.transmit_publish("foo", "fire").unwrap();
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.value(), json!("fire"));
        client.close().await;
    }
}

/// docs/PROTOCOL.md 1.4: against the v14 server, a protocol-1 client announces its own
/// disconnect with the `#disconnect` transmit (seen in the server's message stream), and
/// the server reports the disconnection once with that code and reason.
#[tokio::test]
async fn v14_server_sees_the_code_and_reason_of_a_client_disconnect() {
    let server = start(v14()).await;
    let client = client_for(&server, JsVersion::V14).connect().await.unwrap();
    server.wait_for("connection", WAIT).await;
    client.disconnect(4200, Some("v14 leaving"));
    let t = server
        .wait_event(
            |v| v["event"] == "transmit" && v["name"] == "#disconnect",
            WAIT,
        )
        .await;
    assert_eq!(
        t["data"],
        json!({"code": 4200, "data": "v14 leaving"}),
        "{t}"
    );
    let d = server.wait_for("disconnection", WAIT).await;
    assert_eq!(d["code"], 4200, "{d}");
    assert_eq!(d["reason"], "v14 leaving", "{d}");
    client.close().await;
}
