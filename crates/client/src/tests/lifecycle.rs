//! Part 1: connection lifecycle, RPC, heartbeat, reconnect policy.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;
use crate::{ConnectionState, InvokeErrorKind, ProtocolVersion};

#[tokio::test(start_paused = true)]
async fn handshake_sends_null_token_and_exposes_the_status() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    assert_eq!(client.state(), ConnectionState::Connecting);
    let mut events = client.events();
    let mut conn = server.accept().await;
    let hs = conn
        .handshake(json!({"id":"abc","pingTimeout":5000,"isAuthenticated":false}))
        .await;
    assert_eq!(hs, json!({"authToken": null}));
    let names = event_names_until(&mut events, |e| matches!(e, Event::Connect { .. })).await;
    assert_eq!(names, ["connecting", "connect"]);
    assert_eq!(client.state(), ConnectionState::Open);
    assert_eq!(client.id().as_deref(), Some("abc"));
    let st = client.status().unwrap();
    assert_eq!(st.ping_timeout, Some(5000));
    assert!(!st.is_authenticated);
    assert!(st.auth_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn auto_connect_false_stays_closed_until_connect() {
    let (b, mut server) = builder();
    let client = b.auto_connect(false).build().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(client.state(), ConnectionState::Closed);
    client.connect_now();
    let (_conn, _) = server.accept_handshake().await;
    wait_open(&client).await;
}

#[tokio::test(start_paused = true)]
async fn invoke_resolves_with_data_and_cids_keep_growing() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let c2 = client.clone();
    let call =
        tokio::spawn(async move { c2.invoke::<Value, _>("echo", &json!({"a":"ü🎉"})).await });
    let req = conn.recv_json().await;
    assert_eq!(req["event"], "echo");
    assert_eq!(req["cid"], 2, "the handshake used cid 1");
    conn.send_json(json!({"rid":2,"data":{"a":"ü🎉"}})).await;
    assert_eq!(call.await.unwrap().unwrap(), json!({"a":"ü🎉"}));
}

#[tokio::test(start_paused = true)]
async fn invoke_times_out_at_ack_timeout_and_the_late_answer_is_ignored() {
    let (b, mut server) = builder();
    let (client, mut conn) =
        connected(b.ack_timeout(Duration::from_millis(300)), &mut server).await;
    let start = Instant::now();
    let c2 = client.clone();
    let call = tokio::spawn(async move { c2.invoke_raw("slow", None, None).await });
    let req = conn.recv_json().await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Timeout);
    assert_eq!(
        err.to_string(),
        "TimeoutError: Event response for slow event timed out"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    conn.send_json(json!({"rid": req["cid"], "data":"late"}))
        .await;
    // still healthy
    let c3 = client.clone();
    let call = tokio::spawn(async move {
        c3.invoke_with_timeout::<String, _>("x", &1, Some(Duration::from_secs(2)))
            .await
    });
    let req = conn.recv_json().await;
    conn.send_json(json!({"rid": req["cid"], "data":"ok"}))
        .await;
    assert_eq!(call.await.unwrap().unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn remote_error_becomes_a_typed_error_with_name_message_and_extras() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let c2 = client.clone();
    let call = tokio::spawn(async move { c2.invoke::<Value, _>("fail", &Value::Null).await });
    let req = conn.recv_json().await;
    conn.send_json(json!({"rid": req["cid"], "error": {"message":"Something failed","name":"CustomFailError","extra":42}})).await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Remote);
    assert_eq!(err.name(), "CustomFailError");
    let o = err.remote().unwrap().as_object().unwrap();
    assert_eq!(o.message, "Something failed");
    assert_eq!(o.get("extra"), Some(&json!(42)));
    // a falsy error is a success (docs/PROTOCOL.md 3.4)
    let c3 = client.clone();
    let call = tokio::spawn(async move { c3.invoke::<String, _>("f", &1).await });
    let req = conn.recv_json().await;
    conn.send_json(json!({"rid": req["cid"], "error": false, "data": "falsy error"}))
        .await;
    assert_eq!(call.await.unwrap().unwrap(), "falsy error");
}

#[tokio::test(start_paused = true)]
async fn pending_invokes_fail_with_bad_connection_before_the_disconnect_event() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut events = client.events();
    let mut call = Box::pin(client.invoke_raw("never", None, None));
    tokio::select! {
        _ = &mut call => panic!("answered"),
        v = conn.recv_json() => assert_eq!(v["event"], "never"),
    }
    conn.close(4100, "bye").await;
    let e = wait_event(&mut events, |e| matches!(e, Event::Disconnect { .. })).await;
    let Event::Disconnect { code, reason } = e else {
        unreachable!()
    };
    assert_eq!((code.0, reason.as_str()), (4100, "bye"));
    let err = call
        .now_or_never()
        .expect("rejected before the disconnect event")
        .unwrap_err();
    let crate::InvokeError::BadConnection { code, kind, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(code.0, 4100);
    assert_eq!(kind, crate::BadConnectionType::Disconnect);
}

#[tokio::test(start_paused = true)]
async fn messages_sent_while_connecting_are_flushed_after_the_handshake_in_order() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    client.transmit("first", &1).unwrap();
    let c2 = client.clone();
    let call = tokio::spawn(async move { c2.invoke::<i32, _>("second", &2).await });
    tokio::task::yield_now().await;
    client.transmit_raw("third", None).unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    assert_eq!(conn.recv_json().await, json!({"event":"first","data":1}));
    assert_eq!(
        conn.recv_json().await,
        json!({"event":"second","data":2,"cid":2})
    );
    assert_eq!(conn.recv_json().await, json!({"event":"third"}));
    conn.send_json(json!({"rid":2,"data":7})).await;
    assert_eq!(call.await.unwrap().unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn queued_invoke_expires_at_ack_timeout_while_the_handshake_hangs() {
    let (b, mut server) = builder();
    let client = b.ack_timeout(Duration::from_millis(500)).build().unwrap();
    let c2 = client.clone();
    let start = Instant::now();
    let call = tokio::spawn(async move { c2.invoke_raw("x", None, None).await });
    let mut conn = server.accept().await;
    let hs = conn.recv_json().await;
    assert_eq!(hs["event"], "#handshake");
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Timeout);
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn unanswered_handshake_aborts_with_4003_and_backs_off() {
    let (b, mut server) = builder();
    let client = b.ack_timeout(Duration::from_millis(300)).build().unwrap();
    let mut events = client.events();
    let mut conn = server.accept().await;
    let _ = conn.recv_json().await;
    let names = event_names_until(&mut events, |e| e.name() == "close").await;
    assert_eq!(
        names,
        ["connecting", "error", "connectAbort(4003)", "close(4003)"]
    );
    assert_eq!(conn.recv_close().await, Some((4003, String::new())));
    let d = client.pending_reconnect().unwrap();
    assert!((1000..=2000).contains(&(d.as_millis() as u64)), "{d:?}");
}

#[tokio::test(start_paused = true)]
async fn handshake_rejection_with_status_code_4501_never_reconnects() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let mut events = client.events();
    let mut conn = server.accept().await;
    let hs = conn.recv_json().await;
    conn.send_json(json!({"rid": hs["cid"], "error": {"message":"Bad query","name":"InvalidAuthQueryHandshakeError","statusCode":4501}})).await;
    let e = wait_event(&mut events, |e| e.name() == "connectAbort").await;
    let Event::ConnectAbort { code, reason } = e else {
        unreachable!()
    };
    assert_eq!(code.0, 4501);
    assert_eq!(reason, "InvalidAuthQueryHandshakeError: Bad query");
    assert_eq!(conn.recv_close().await, Some((4501, String::new())));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(client.pending_reconnect(), None);
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test(start_paused = true)]
async fn builder_connect_fails_with_the_first_abort() {
    let (b, server) = builder();
    server.refuse.store(true, Ordering::SeqCst);
    let err = b.connect().await.unwrap_err();
    let crate::ConnectError::Aborted { code, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(code.0, 1006);
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_aborts_with_4007() {
    let (b, mut server) = builder();
    let client = b
        .connect_timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let mut events = client.events();
    let start = Instant::now();
    let _io = server.accept_raw().await; // never answers the upgrade
    let e = wait_event(&mut events, |e| e.name() == "connectAbort").await;
    let Event::ConnectAbort { code, reason } = e else {
        unreachable!()
    };
    assert_eq!(code.0, 4007);
    assert_eq!(reason, "Client connection establishment timed out");
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn refused_connections_back_off_then_reconnect_and_reset_the_attempts() {
    let (b, mut server) = builder();
    server.refuse.store(true, Ordering::SeqCst);
    let client = b.build().unwrap();
    let mut events = client.events();
    let _ = wait_event(&mut events, |e| e.name() == "connectAbort").await;
    let d1 = client.pending_reconnect().unwrap().as_millis() as u64;
    assert!((1000..=2000).contains(&d1), "{d1}");
    let _ = wait_event(&mut events, |e| e.name() == "connectAbort").await;
    let d2 = client.pending_reconnect().unwrap().as_millis() as u64;
    assert!(
        (1500..=3000).contains(&d2),
        "second attempt uses exponent 1: {d2}"
    );
    assert_eq!(client.connect_attempts(), 2);
    server.refuse.store(false, Ordering::SeqCst);
    let (_conn, _) = server.accept_handshake().await;
    wait_open(&client).await;
    assert_eq!(client.connect_attempts(), 0);
}

#[tokio::test(start_paused = true)]
async fn close_code_policy_decides_reconnection() {
    for (code, expect) in [
        (1000u16, None),
        (4500, None),
        (4999, None),
        (4000, Some(0u64)),
        (4001, Some(0)),
        (4100, Some(1000)),
        (1001, Some(1000)),
    ] {
        let (b, mut server) = builder();
        let (client, conn) = connected(b, &mut server).await;
        let mut events = client.events();
        conn.close(code, "").await;
        let _ = wait_event(&mut events, |e| e.name() == "close").await;
        match expect {
            None => {
                tokio::time::sleep(Duration::from_secs(100)).await;
                assert_eq!(client.pending_reconnect(), None, "code {code}");
                assert_eq!(client.state(), ConnectionState::Closed);
            }
            Some(0) => {
                let start = Instant::now();
                let (_c, _) = server.accept_handshake().await;
                assert_eq!(
                    start.elapsed(),
                    Duration::ZERO,
                    "code {code} reconnects at once"
                );
            }
            Some(min) => {
                let d = client.pending_reconnect().unwrap().as_millis() as u64;
                assert!((min..=2 * min).contains(&d), "code {code}: {d}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_sends_the_code_and_applies_the_policy_to_it() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut events = client.events();
    client.disconnect(4321, Some("custom bye"));
    assert_eq!(
        conn.recv_close().await,
        Some((4321, "custom bye".to_owned()))
    );
    let names = event_names_until(&mut events, |e| e.name() == "close").await;
    assert_eq!(names, ["disconnect(4321)", "close(4321)"]);
    assert!(client.pending_reconnect().is_some());
    // disconnect while closed cancels the pending reconnect
    client.disconnect(1000, None);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(client.pending_reconnect(), None);
    assert_eq!(client.state(), ConnectionState::Closed);
}

/// docs/PROTOCOL.md 1.4: a v14 client transmits `#disconnect` before closing an open
/// connection itself (disconnect, reconnect, close); v20 does not (the test above:
/// `recv_close` fails on any text frame).
#[tokio::test(start_paused = true)]
async fn v1_client_announces_its_disconnect_before_closing() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b.protocol_version(ProtocolVersion::V1), &mut server).await;
    client.disconnect(4200, Some("v14 leaving"));
    assert_eq!(
        conn.read().await,
        Read::Text(r##"{"event":"#disconnect","data":{"code":4200,"data":"v14 leaving"}}"##.into())
    );
    assert_eq!(
        conn.recv_close().await,
        Some((4200, "v14 leaving".to_owned()))
    );
    // Reconnect (1000, no reason), then a final close.
    client.connect_now();
    let (mut conn, _) = server.accept_handshake().await;
    wait_open(&client).await;
    client.reconnect();
    assert_eq!(
        conn.read().await,
        Read::Text(r##"{"event":"#disconnect","data":{"code":1000}}"##.into())
    );
    assert_eq!(conn.recv_close().await, Some((1000, String::new())));
    let (mut conn, _) = server.accept_handshake().await;
    wait_open(&client).await;
    client.close().await;
    assert_eq!(
        conn.read().await,
        Read::Text(r##"{"event":"#disconnect","data":{"code":1000}}"##.into())
    );
    assert_eq!(conn.recv_close().await, Some((1000, String::new())));
}

#[tokio::test(start_paused = true)]
async fn reconnect_emits_disconnect_1000_then_connects_again() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut events = client.events();
    client.reconnect();
    assert_eq!(conn.recv_close().await, Some((1000, String::new())));
    let (_conn, _) = server.accept_handshake().await;
    let names = event_names_until(&mut events, |e| e.name() == "connect").await;
    assert_eq!(
        names,
        ["disconnect(1000)", "close(1000)", "connecting", "connect"]
    );
}

#[tokio::test(start_paused = true)]
async fn transmit_on_a_disconnected_client_reconnects_and_delivers() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    client.disconnect(1000, None);
    let _ = conn.recv_close().await;
    client.transmit("foo", &123).unwrap();
    let (mut conn2, _) = server.accept_handshake().await;
    assert_eq!(conn2.recv_json().await, json!({"event":"foo","data":123}));
}

#[tokio::test(start_paused = true)]
async fn server_ping_timeout_closes_with_4000_and_reconnects_at_once() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let mut events = client.events();
    let mut conn = server.accept().await;
    conn.handshake(json!({"id":"a","pingTimeout":400,"isAuthenticated":false}))
        .await;
    let start = Instant::now();
    // ordinary traffic does not reset the deadline (docs/PROTOCOL.md 8.3)
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.send_json(json!({"event":"tick"})).await;
    }
    let e = wait_event(&mut events, |e| e.name() == "disconnect").await;
    let Event::Disconnect { code, reason } = e else {
        unreachable!()
    };
    assert_eq!((code.0, reason.as_str()), (4000, "Server ping timed out"));
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    assert_eq!(conn.recv_close().await, Some((4000, String::new())));
    let start = Instant::now();
    let (_conn, _) = server.accept_handshake().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    wait_open(&client).await;
}

#[tokio::test(start_paused = true)]
async fn pings_are_answered_and_keep_the_connection_alive() {
    for (version, ping, pong) in [
        (ProtocolVersion::V2, "", ""),
        (ProtocolVersion::V1, "#1", "#2"),
    ] {
        let (b, mut server) = builder();
        let client = b.protocol_version(version).build().unwrap();
        let mut conn = server.accept().await;
        conn.handshake(json!({"id":"a","pingTimeout":400,"isAuthenticated":false}))
            .await;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            conn.send(ping).await;
            assert_eq!(conn.read().await, Read::Text(pong.to_owned()));
        }
        assert_eq!(client.state(), ConnectionState::Open);
    }
}

#[tokio::test(start_paused = true)]
async fn ping_timeout_disabled_keeps_a_silent_connection_open() {
    let (b, mut server) = builder();
    let client = b.ping_timeout_disabled(true).build().unwrap();
    let mut conn = server.accept().await;
    conn.handshake(json!({"id":"a","pingTimeout":400,"isAuthenticated":false}))
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(client.state(), ConnectionState::Open);
}

#[tokio::test(start_paused = true)]
async fn server_invokes_reach_procedures_and_transmits_reach_receivers() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let mut proc_ = client.procedure("clientProc");
    let mut recv = client.receiver("clientEvent");
    let (mut conn, _) = server.accept_handshake().await;
    conn.send_json(json!({"event":"clientProc","cid":1,"data":{"x":1}}))
        .await;
    let req = proc_.recv().await.unwrap();
    assert_eq!(req.deserialize::<Value>().unwrap(), json!({"x":1}));
    req.respond("client says hi").unwrap();
    assert!(req.respond("twice").is_err());
    assert_eq!(
        conn.recv_json().await,
        json!({"rid":1,"data":"client says hi"})
    );
    conn.send_json(json!({"event":"clientFail","cid":2})).await;
    conn.send_json(json!({"event":"clientProc","cid":3})).await;
    let req = proc_.recv().await.unwrap();
    req.error(crate::WireError::new(
        "ClientRefusedError",
        "client refused",
    ))
    .unwrap();
    assert_eq!(
        conn.recv_json().await,
        json!({"rid":3,"error":{"message":"client refused","name":"ClientRefusedError"}})
    );
    conn.send_json(json!({"event":"clientEvent","data":{"y":2}}))
        .await;
    let t = recv.recv().await.unwrap();
    assert_eq!(t.deserialize::<Value>().unwrap(), json!({"y":2}));
}

#[tokio::test(start_paused = true)]
async fn batch_frames_from_the_server_are_processed_in_order() {
    let (b, mut server) = builder();
    let client = b.build().unwrap();
    let mut recv = client.receiver("batched");
    let (mut conn, _) = server.accept_handshake().await;
    conn.send(r#"[{"event":"batched","data":1},{"event":"batched","data":2}]"#)
        .await;
    assert_eq!(recv.recv().await.unwrap().deserialize::<i32>().unwrap(), 1);
    assert_eq!(recv.recv().await.unwrap().deserialize::<i32>().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn batch_on_handshake_sends_resubscriptions_and_queue_as_one_array() {
    let (b, mut server) = builder();
    let client = b.batch_on_handshake(true).build().unwrap();
    let _a = client.subscribe("batch-0").await.unwrap();
    let _b = client.subscribe("batch-1").await.unwrap();
    client.transmit_publish("batch-0", "b0").unwrap();
    let (mut conn, _) = server.accept_handshake().await;
    let v = conn.recv_json().await;
    assert_eq!(
        v,
        json!([
            {"event":"#subscribe","data":{"channel":"batch-0"},"cid":2},
            {"event":"#subscribe","data":{"channel":"batch-1"},"cid":3},
            {"event":"#publish","data":{"channel":"batch-0","data":"b0"}}
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn close_ends_streams_and_fails_calls() {
    let (b, mut server) = builder();
    let (client, mut conn) = connected(b, &mut server).await;
    let mut sub = client.subscribe("x").await.unwrap();
    let mut events = client.events();
    client.close().await;
    assert!(client.is_closed());
    assert_eq!(conn.recv_json().await["event"], "#subscribe");
    assert_eq!(conn.recv_close().await, Some((1000, String::new())));
    assert!(sub.recv().await.is_none());
    assert!(matches!(
        sub.end_reason(),
        Some(crate::SubscribeError::Closed)
    ));
    let err = client.invoke_raw("x", None, None).await.unwrap_err();
    assert_eq!(err.kind(), InvokeErrorKind::Closed);
    // the events stream ends after the final events
    let mut names = Vec::new();
    while let Some(e) = events.recv().await {
        names.push(event_label(&e));
    }
    assert_eq!(names, ["disconnect(1000)", "close(1000)"]);
}
