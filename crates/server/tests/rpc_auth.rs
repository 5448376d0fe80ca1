//! RPC (docs/PROTOCOL.md 3.3, 3.4, 7) and authentication (5, 3.6.2-3.6.4) on the wire.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_server::{InvokeError, ServerEvent, UnhandledProcedure};

/// docs/PROTOCOL.md 11.1: echo, no data, named error, plain error, no handler, batches.
#[tokio::test]
async fn rpc_frames_match_the_js_server() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    c.send(r#"{"event":"echo","data":{"hello":"world","n":[1,2]},"cid":2}"#)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":2,"data":{"hello":"world","n":[1,2]}}"#
    );
    c.send(r#"{"event":"noreply","data":5,"cid":3}"#).await;
    assert_eq!(c.text().await, r#"{"rid":3}"#);
    c.send(r#"{"event":"fail","data":null,"cid":4}"#).await;
    assert_eq!(
        c.text().await,
        r#"{"rid":4,"error":{"message":"Something failed","name":"CustomFailError","extra":42}}"#
    );
    c.send(r#"{"event":"failPlain","cid":5}"#).await;
    assert_eq!(
        c.text().await,
        r#"{"rid":5,"error":{"message":"plain error"}}"#
    );
    // raw messages: nothing comes back; an unknown procedure is never answered
    c.send("this is not json").await;
    c.send(r#"{"broken json"#).await;
    c.send(r#"{"hello":"no event no rid"}"#).await;
    c.send(r#"{"event":"noSuchProc","data":1,"cid":14}"#).await;
    c.send(
        r#"[{"event":"echo","data":"batch1","cid":12},{"event":"echo","data":"batch2","cid":13}]"#,
    )
    .await;
    assert_eq!(c.text().await, r#"{"rid":12,"data":"batch1"}"#);
    assert_eq!(c.text().await, r#"{"rid":13,"data":"batch2"}"#);
    c.silent_for(Duration::from_millis(200)).await.unwrap();
    assert_eq!(server.stats().raw_messages, 3);
}

/// X-2: duplicate cids are both answered; 0, negative and fractional cids are echoed;
/// a non-finite cid comes back as null.
#[tokio::test]
async fn cids_are_echoed_exactly() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    for (frame, reply) in [
        (
            r#"{"event":"echo","cid":13,"data":"dup-a"}"#,
            r#"{"rid":13,"data":"dup-a"}"#,
        ),
        (
            r#"{"event":"echo","cid":13,"data":"dup-b"}"#,
            r#"{"rid":13,"data":"dup-b"}"#,
        ),
        (
            r#"{"event":"echo","cid":0,"data":"zero"}"#,
            r#"{"rid":0,"data":"zero"}"#,
        ),
        (
            r#"{"event":"echo","cid":-3,"data":"neg"}"#,
            r#"{"rid":-3,"data":"neg"}"#,
        ),
        (
            r#"{"event":"echo","cid":1.5,"data":"frac"}"#,
            r#"{"rid":1.5,"data":"frac"}"#,
        ),
        (
            r#"{"event":"echo","cid":1e400,"data":"inf"}"#,
            r#"{"rid":null,"data":"inf"}"#,
        ),
    ] {
        c.send(frame).await;
        assert_eq!(c.text().await, reply);
    }
    // a string cid is a transmit: no answer (3.1)
    c.send(r#"{"event":"echo","cid":"9","data":"x"}"#).await;
    c.silent_for(Duration::from_millis(150)).await.unwrap();
}

/// Payloads are forwarded byte for byte: unicode, escapes, nested, big integers, binary.
#[tokio::test]
async fn payloads_round_trip_unchanged() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    for data in [
        r#""日本語 🎉 \u0001 \n \"q\" \u2028""#,
        r#"{"a":{"b":[1,{"c":null}],"d":true},"e":-0.5}"#,
        r#"12345678901234567890123"#,
        r#"{"base64":true,"data":"AQID"}"#,
        r#"1e400"#,
    ] {
        c.send(&format!(r#"{{"event":"echo","data":{data},"cid":7}}"#))
            .await;
        assert_eq!(c.text().await, format!(r#"{{"rid":7,"data":{data}}}"#));
    }
}

/// Typed procedures and the optional error for unhandled procedures.
#[tokio::test]
async fn typed_procedures_and_unhandled_procedure_errors() {
    let server = start(config().with_unhandled_procedure(UnhandledProcedure::Error)).await;
    server.typed_procedure(
        "add",
        |_s: socketcluster_rs_server::Socket, (a, b): (i64, i64)| async move {
            Ok::<_, socketcluster_rs_server::WireError>(a + b)
        },
    );
    let mut c = open(&server).await;
    assert_eq!(
        c.invoke("add", json!([2, 3]), 2).await,
        json!({"rid":2,"data":5})
    );
    let bad = c.invoke("add", json!("x"), 3).await;
    assert_eq!(bad["error"]["name"], "InvalidArgumentsError");
    let none = c.invoke("nope", json!(1), 4).await;
    assert_eq!(
        none,
        json!({"rid":4,"error":{"message":"No handler for procedure nope","name":"UnhandledProcedureError"}})
    );
}

/// 7.3 / 11.2: server → client invoke (cid starts at 1, key order event, cid, data),
/// transmit, responses with unknown rid are ignored, falsy errors are successes (X-3),
/// timeouts and aborted invokes.
#[tokio::test]
async fn server_to_client_invoke_and_transmit() {
    let server = start(config().with_ack_timeout(Duration::from_millis(300))).await;
    let mut c = open(&server).await;
    eventually(|| server.clients_count() == 1).await;
    let socket = server.clients().pop().unwrap();

    let s = socket.clone();
    let h = tokio::spawn(async move { s.invoke("clientProc", &json!({"x": 1})).await });
    assert_eq!(
        c.text().await,
        r#"{"event":"clientProc","cid":1,"data":{"x":1}}"#
    );
    c.send(r#"{"rid":9999,"data":"unknown rid"}"#).await;
    c.send(r#"{"rid":1,"data":"client says hi"}"#).await;
    let got = h.await.unwrap().unwrap().unwrap();
    assert_eq!(got.get(), r#""client says hi""#);

    let s = socket.clone();
    let h = tokio::spawn(async move { s.invoke("clientProc", &json!(2)).await });
    assert_eq!(c.json().await["cid"], 2);
    c.send(r#"{"rid":2,"error":false,"data":"falsy error"}"#)
        .await;
    assert_eq!(h.await.unwrap().unwrap().unwrap().get(), r#""falsy error""#);

    let s = socket.clone();
    let h = tokio::spawn(async move { s.invoke("clientFail", &json!("q")).await });
    assert_eq!(c.json().await["cid"], 3);
    c.send(r#"{"rid":3,"error":{"message":"client refused","name":"ClientRefusedError"}}"#)
        .await;
    match h.await.unwrap() {
        Err(InvokeError::Remote(e)) => assert_eq!(e.name(), "ClientRefusedError"),
        other => panic!("{other:?}"),
    }

    // no answer -> TimeoutError after ack_timeout
    let r = socket.invoke("silent", &json!(null)).await;
    assert!(matches!(r, Err(InvokeError::Timeout(_))), "{r:?}");
    assert_eq!(c.json().await["cid"], 4);

    socket.transmit("clientEvent", &json!({"y": 2})).unwrap();
    socket.transmit_raw("noDataEvent", None).unwrap();
    assert_eq!(c.text().await, r#"{"event":"clientEvent","data":{"y":2}}"#);
    assert_eq!(c.text().await, r#"{"event":"noDataEvent"}"#);

    // an invoke pending when the socket closes fails with BadConnectionError
    let s = socket.clone();
    let h = tokio::spawn(async move { s.invoke("hang", &json!(null)).await });
    assert_eq!(c.json().await["cid"], 5);
    c.close(1000, "bye").await;
    assert!(matches!(
        h.await.unwrap(),
        Err(InvokeError::BadConnection(_))
    ));
    assert!(socket.transmit("late", &1).is_err());
}

/// 11.2 / SV-9: login sets a token: `#setAuthToken` with a token whose payload is
/// `{username, iat, exp = iat + 86400}`; logout sends `#removeAuthToken`.
#[tokio::test]
async fn set_auth_token_and_deauthenticate_on_the_wire() {
    let server = start(config()).await;
    let mut events = server.events();
    let mut c = open(&server).await;
    c.send(r#"{"event":"login","data":"bob","cid":30}"#).await;
    let mut frames = [c.json().await, c.json().await];
    frames.sort_by_key(|f| f.get("rid").is_none());
    assert_eq!(frames[0], json!({"rid":30,"data":"ok"}));
    assert_eq!(frames[1]["event"], "#setAuthToken");
    let token = frames[1]["data"]["token"].as_str().unwrap().to_owned();
    let claims = server.verify_token(&token).unwrap();
    let keys: Vec<&String> = claims.keys().collect();
    assert_eq!(keys, ["username", "iat", "exp"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        86400
    );
    let who = c.invoke("whoami", Value::Null, 31).await;
    assert_eq!(who["data"]["authToken"]["username"], "bob");

    c.send(r#"{"event":"logout","cid":32}"#).await;
    let mut frames = [c.text().await, c.text().await];
    frames.sort();
    assert_eq!(
        frames,
        [r##"{"event":"#removeAuthToken"}"##, r#"{"rid":32}"#]
    );
    let who = c.invoke("whoami", Value::Null, 33).await;
    assert_eq!(who["data"]["authenticated"], false);

    // events: state change + authentication, then state change + deauthentication
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.recv().await.unwrap() {
            ServerEvent::AuthenticationStateChange { new_state, .. } => {
                seen.push(format!("state:{new_state:?}"))
            }
            ServerEvent::Authentication { .. } => seen.push("authenticate".into()),
            ServerEvent::Deauthentication { .. } => seen.push("deauthenticate".into()),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "state:Authenticated",
            "authenticate",
            "state:Unauthenticated",
            "deauthenticate"
        ]
    );
}

/// 3.6.2 table / X-4 / SV-21: every `#authenticate` outcome.
#[tokio::test]
async fn authenticate_outcomes_follow_the_js_table() {
    let server = start(config()).await;
    let mut c = open(&server).await;
    let good = sign(&server, json!({"username": "bob"}));
    let r = c.invoke("#authenticate", json!(good), 2).await;
    assert_eq!(
        r,
        json!({"rid":2,"data":{"isAuthenticated":true,"authError":null}})
    );

    // bad token: error first, then #removeAuthToken; the socket is unauthenticated
    c.send(r##"{"event":"#authenticate","data":"x","cid":3}"##)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":3,"error":{"message":"jwt malformed","name":"AuthTokenInvalidError","isBadToken":true}}"#
    );
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
    assert_eq!(
        c.invoke("whoami", Value::Null, 4).await["data"]["authenticated"],
        false
    );

    // missing token and non-string token
    c.send(r##"{"event":"#authenticate","cid":5}"##).await;
    assert_eq!(
        c.text().await,
        r#"{"rid":5,"error":{"message":"jwt must be provided","name":"AuthTokenInvalidError","isBadToken":true}}"#
    );
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
    c.send(r##"{"event":"#authenticate","data":42,"cid":6}"##)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":6,"error":{"message":"Invalid token format - Token must be a string","name":"AuthTokenError","isBadToken":true}}"#
    );
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);

    // soft failure (nbf) on an authenticated socket: data reply, nothing else,
    // unauthenticated afterwards
    assert_eq!(
        c.invoke("#authenticate", json!(good), 7).await["data"]["isAuthenticated"],
        true
    );
    let nbf = server
        .sign_token(&json!({"u": 1, "nbf": now_s() + 1000}), &Default::default())
        .unwrap();
    let r = c.invoke("#authenticate", json!(nbf), 8).await;
    assert_eq!(r["data"]["isAuthenticated"], false);
    assert_eq!(r["data"]["authError"]["name"], "AuthTokenNotBeforeError");
    assert_eq!(r["data"]["authError"]["isBadToken"], false);
    assert_eq!(
        c.invoke("whoami", Value::Null, 9).await["data"]["authenticated"],
        false
    );

    // X-5: #removeAuthToken with a cid is never answered
    c.send(r##"{"event":"#removeAuthToken","cid":10}"##).await;
    c.silent_for(Duration::from_millis(150)).await.unwrap();

    // SV-21: #authenticate without cid closes with 4008
    c.send(r##"{"event":"#authenticate","data":"x"}"##).await;
    assert_eq!(c.closed().await.0, 4008);
}

/// 5.2: calling set_auth_token before the handshake fails; a claims value that is not an
/// object is refused.
#[tokio::test]
async fn set_auth_token_requires_an_open_socket_and_an_object() {
    let server = start(config()).await;
    let mut events = server.events();
    let _c = Raw::connect(&url(&server)).await;
    let socket = loop {
        if let ServerEvent::Handshake { socket } = events.recv().await.unwrap() {
            break socket;
        }
    };
    assert!(matches!(
        socket
            .set_auth_token(&json!({"a": 1}), Default::default())
            .await,
        Err(socketcluster_rs_server::AuthTokenError::NotOpen)
    ));
    assert!(matches!(
        socket.set_auth_token(&json!([1]), Default::default()).await,
        Err(socketcluster_rs_server::AuthTokenError::NotAnObject)
    ));
}

/// 5.5 (JS behaviour, timer off): an expired token is noticed at the next packet,
/// `#removeAuthToken` goes out before the reply, and the middleware sees
/// `authTokenExpiredError`.
#[tokio::test]
async fn expired_token_is_removed_at_the_next_packet_without_timer() {
    let server = start(config().with_token_expiry_timer(false)).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    server.add_inbound_middleware(move |a: socketcluster_rs_server::InboundAction| {
        let seen = seen2.clone();
        async move {
            if let Some(e) = a.auth_token_expired_error() {
                *seen.lock().unwrap() = Some(e.message.clone());
            }
            Ok(a)
        }
    });
    // Whole seconds: now + 2 keeps the token valid through the handshake (now + 1 could
    // expire within a millisecond); 3.1 s later it has expired for sure.
    let token = server
        .sign_token(&json!({"u": 1, "exp": now_s() + 2}), &Default::default())
        .unwrap();
    let mut c = Raw::connect(&url(&server)).await;
    assert_eq!(
        c.handshake(Some(&token)).await["data"]["isAuthenticated"],
        true
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    c.send(r#"{"event":"whoami","cid":2}"#).await;
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
    let r = c.json().await;
    assert_eq!(r["data"]["authenticated"], false);
    assert_eq!(
        seen.lock().unwrap().as_deref(),
        Some("The socket auth token has expired")
    );
}

/// Beyond JS: with the expiry timer (default) the socket is deauthenticated at the
/// moment the token expires, without any traffic from the client.
#[tokio::test]
async fn expiry_timer_deauthenticates_without_traffic() {
    let server = start(config()).await;
    // `exp` has whole seconds: now + 2 leaves more than one second of validity for the
    // handshake, whatever the fraction of the current second (now + 1 could leave 1 ms).
    let token = server
        .sign_token(&json!({"u": 1, "exp": now_s() + 2}), &Default::default())
        .unwrap();
    let mut c = Raw::connect(&url(&server)).await;
    assert_eq!(
        c.handshake(Some(&token)).await["data"]["isAuthenticated"],
        true
    );
    let started = std::time::Instant::now();
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
    // At expiry (at most 2 s away), not at some later traffic or ping.
    assert!(started.elapsed() <= Duration::from_millis(3500));
    assert_eq!(
        c.invoke("whoami", Value::Null, 2).await["data"]["authenticated"],
        false
    );
}

/// Key rotation at runtime (CL-6 / SV-3): tokens signed with the old key stop verifying.
#[tokio::test]
async fn rotating_the_key_invalidates_old_tokens() {
    let server = start(config()).await;
    let token = sign(&server, json!({"username": "bob"}));
    server
        .set_auth(&socketcluster_rs_server::auth::AuthConfig::with_secret(
            "newkey",
        ))
        .unwrap();
    let mut c = Raw::connect(&url(&server)).await;
    let v = c.handshake(Some(&token)).await;
    assert_eq!(v["data"]["authError"]["message"], "invalid signature");
}

/// SV-6 / SV-7 (docs/PROTOCOL.md 5.6, 12.2): `deauthenticate_with(reject_on_failed_delivery)`
/// on a closed socket fails with `BadConnectionError` (and a warning); without the
/// option it does not fail. On an open socket it invokes `#removeAuthToken` with a cid
/// and resolves once the client acknowledges.
#[tokio::test]
async fn deauthenticate_with_reject_on_failed_delivery() {
    use socketcluster_rs_server::auth::DeauthenticateOptions;
    let confirm = DeauthenticateOptions::default().reject_on_failed_delivery(true);
    let server = start(config()).await;
    let mut events = server.events();
    let token = sign(&server, json!({"username": "bob"}));

    // Open socket: invoke + acknowledgement.
    let mut c = Raw::connect(&url(&server)).await;
    let reply = c.handshake(Some(&token)).await;
    let socket = server
        .socket(reply["data"]["id"].as_str().unwrap())
        .unwrap();
    assert!(socket.is_authenticated());
    let s2 = socket.clone();
    let call = tokio::spawn(async move { s2.deauthenticate_with(confirm).await });
    let frame = c.json().await;
    assert_eq!(frame, json!({"event": "#removeAuthToken", "cid": 1}));
    assert!(!socket.is_authenticated());
    c.send(r#"{"rid":1}"#).await;
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap()
        .unwrap()
        .expect("acknowledged");

    // SV-6: closed socket -> BadConnectionError.
    c.close(1000, "bye").await;
    tokio::time::timeout(WAIT, socket.closed()).await.unwrap();
    let err = socket
        .deauthenticate_with(confirm)
        .await
        .expect_err("closed socket");
    assert!(matches!(err, InvokeError::BadConnection(_)), "{err:?}");
    assert_eq!(err.name(), "BadConnectionError");
    let warned = tokio::time::timeout(WAIT, async {
        loop {
            if let ServerEvent::Warning { error, .. } = events.recv().await.unwrap()
                && error.name.as_str() == "BadConnectionError"
            {
                return error;
            }
        }
    })
    .await
    .unwrap();
    assert!(warned.message.contains("#removeAuthToken"), "{warned:?}");
    // SV-7: the same without the option does not fail.
    socket
        .deauthenticate_with(DeauthenticateOptions::default())
        .await
        .expect("no rejection without reject_on_failed_delivery");
    socket.deauthenticate().await;
}

/// Handlers are polled once inside the socket's task and spawned only when they wait:
/// one that awaits still runs concurrently (a later synchronous answer overtakes it),
/// and one that panics leaves the socket working (its request is just not answered,
/// as when a spawned handler task panics).
#[tokio::test]
async fn waiting_and_panicking_handlers_do_not_hold_up_the_socket() {
    let server = start(config()).await;
    server.procedure(
        "boom",
        |_req: socketcluster_rs_server::Request| async move {
            panic!("handler bug (expected by this test)");
        },
    );
    server.procedure(
        "later",
        |req: socketcluster_rs_server::Request| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            req.respond(&"late");
        },
    );
    let mut c = open(&server).await;
    c.send(r#"{"event":"boom","cid":2}"#).await;
    c.send(r#"{"event":"later","cid":3}"#).await;
    c.send(r#"{"event":"echo","data":"now","cid":4}"#).await;
    assert_eq!(c.text().await, r#"{"rid":4,"data":"now"}"#);
    assert_eq!(c.text().await, r#"{"rid":3,"data":"late"}"#);
    c.silent_for(Duration::from_millis(200)).await.unwrap();
    assert_eq!(
        c.invoke("echo", json!("still open"), 5).await["data"],
        "still open"
    );
    assert_eq!(server.clients_count(), 1);
}

/// `ServerConfig::busy_poll`: answers are unchanged while the server polls busily, the
/// first inbound message starts one polling task, and it does not outlive the server
/// (no leaked task after shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_server_answers_and_stops_polling_at_shutdown() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut alive = Vec::new();
    for busy_poll in [None, Some(Duration::from_millis(50))] {
        let server = start(config().with_busy_poll(busy_poll)).await;
        let mut c = open(&server).await;
        for cid in 2..50u64 {
            let reply = c.invoke("echo", json!({ "n": cid }), cid).await;
            assert_eq!(reply, json!({ "rid": cid, "data": { "n": cid } }));
        }
        alive.push(metrics.num_alive_tasks());
        let s2 = server.clone();
        let shutdown = tokio::spawn(async move { s2.shutdown().await });
        assert_eq!(c.closed().await.0, 1001);
        drop(c);
        shutdown.await.unwrap();
        drop(server);
        // Every socket task (and the polling task) ends.
        eventually(|| metrics.num_alive_tasks() == 0).await;
    }
    assert_eq!(
        alive[1],
        alive[0] + 1,
        "tasks alive without/with busy polling"
    );
}

/// JS `socket.procedure(name)` / `socket.receiver(name)`: a socket's own streams take
/// its invokes and transmits before the server-wide handlers, only that socket's, and
/// end when it closes; once a stream is dropped the server-wide handler answers again.
#[tokio::test]
async fn per_socket_streams_take_precedence_and_end_with_the_socket() {
    use futures_util::StreamExt;
    let server = start(config()).await;
    let mut a = Raw::connect(&url(&server)).await;
    let id_a = a.handshake(None).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = open(&server).await;
    let socket_a = server.socket(&id_a).expect("socket a");
    let mut procs = socket_a.procedure("echo");
    let mut notes = socket_a.receiver("note");
    let answering = tokio::spawn(async move {
        let req = procs.next().await.expect("a request");
        assert_eq!(req.raw_data().map(|d| d.get().to_owned()), Some("1".into()));
        req.respond(&json!({"from": "socket stream"}));
        procs // handed back: dropped by the test later
    });
    // a's invoke goes to its stream; b's to the server-wide `echo`.
    assert_eq!(
        a.invoke("echo", json!(1), 2).await,
        json!({"rid": 2, "data": {"from": "socket stream"}})
    );
    assert_eq!(
        b.invoke("echo", json!(2), 2).await,
        json!({"rid": 2, "data": 2})
    );
    a.send(r#"{"event":"note","data":{"n":5}}"#).await;
    let ev = tokio::time::timeout(WAIT, notes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.event(), ev.raw_data().unwrap().get()),
        ("note", r#"{"n":5}"#)
    );
    // Without the stream, the server-wide handler answers a again.
    drop(answering.await.unwrap());
    assert_eq!(
        a.invoke("echo", json!(3), 3).await,
        json!({"rid": 3, "data": 3})
    );
    // Closing the socket ends its streams.
    a.close(1000, "bye").await;
    assert!(
        tokio::time::timeout(WAIT, notes.next())
            .await
            .unwrap()
            .is_none()
    );
    // A stream asked for after the close ends at once.
    let mut late = socket_a.procedure("echo");
    assert!(
        tokio::time::timeout(WAIT, late.next())
            .await
            .unwrap()
            .is_none()
    );
}

/// JS `socket.listener('message')` and `socket.listener('raw')`: every inbound message
/// as text, and the ones that are not SocketCluster packets; both end with the socket.
#[tokio::test]
async fn message_and_raw_streams_see_what_the_socket_receives() {
    let server = start(config()).await;
    let mut a = Raw::connect(&url(&server)).await;
    let id = a.handshake(None).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let socket = server.socket(&id).expect("socket");
    let mut all = socket.messages();
    let mut raw = socket.raw_messages();
    let invoke = r#"{"event":"echo","data":"x","cid":2}"#;
    a.send(invoke).await;
    assert_eq!(a.text().await, r#"{"rid":2,"data":"x"}"#);
    a.send("not a packet").await;
    assert_eq!(next(&mut all).await.as_deref(), Some(invoke));
    assert_eq!(next(&mut all).await.as_deref(), Some("not a packet"));
    assert_eq!(next(&mut raw).await.as_deref(), Some("not a packet"));
    drop(a);
    assert_eq!(next(&mut all).await, None);
    assert_eq!(next(&mut raw).await, None);
    assert_eq!(server.stats().raw_messages, 1);
}

async fn next(s: &mut socketcluster_rs_server::rpc::MessageStream) -> Option<String> {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, s.next()).await.unwrap()
}
