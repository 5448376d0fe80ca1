//! Middleware on the wire (docs/PROTOCOL.md 9.2, 11.4, 11.5) and HTTP-level refusals (1.2).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use socketcluster_rs_server::middleware::{HandshakeAction, HandshakeRequest, PublishOutAction};
use socketcluster_rs_server::{Block, InboundAction, InboundKind, ProtocolVersion};

/// 11.5: invoke blocked with a named error / silently / allowed with new data.
#[tokio::test]
async fn inbound_invoke_block_silent_and_modify() {
    let server = start(config()).await;
    server.add_inbound_middleware(|mut a: InboundAction| async move {
        if let InboundKind::Invoke { procedure } = a.kind()
            && procedure == "echo"
        {
            match a.data::<String>().unwrap_or_default().as_str() {
                "block" => return Err(Block::error("MyBlockError", "Blocked!")),
                "silent" => {
                    return Err(Block::error("X", "hidden").with("silent", true));
                }
                "noerr" => return Err(Block::Silent),
                "modify" => a.set_data("modified!").unwrap(),
                _ => {}
            }
        }
        Ok(a)
    });
    let mut c = open(&server).await;
    for (data, reply) in [
        (
            "block",
            r#"{"rid":2,"error":{"message":"Blocked!","name":"MyBlockError"}}"#,
        ),
        (
            "silent",
            r#"{"rid":2,"error":{"message":"The invoke AGAction was blocked by inbound middleware","name":"SilentMiddlewareBlockedError","type":"inbound"}}"#,
        ),
        (
            "noerr",
            r#"{"rid":2,"error":{"message":"The invoke AGAction was blocked by inbound middleware","name":"SilentMiddlewareBlockedError","type":"inbound"}}"#,
        ),
        ("modify", r#"{"rid":2,"data":"modified!"}"#),
    ] {
        c.send(&json!({"event":"echo","data":data,"cid":2}).to_string())
            .await;
        assert_eq!(c.text().await, reply);
    }
}

/// 11.5 / SV-71 / SV-73 / SV-75: subscribe block, publishIn block and modify; the
/// middleware sees subscribe before publishIn for the same socket (SV-76 order), and is
/// async (a delay does not reorder).
#[tokio::test]
async fn inbound_subscribe_and_publish_in() {
    let server = start(config()).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    server.add_inbound_middleware(move |mut a: InboundAction| {
        let log = log2.clone();
        async move {
            log.lock().unwrap().push(format!(
                "{} {}",
                a.kind().action_name(),
                a.channel().unwrap_or("")
            ));
            match a.kind().clone() {
                InboundKind::Subscribe { channel } => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if channel == "nosub" {
                        return Err(Block::error("SubBlockedError", "No sub"));
                    }
                }
                InboundKind::PublishIn { channel } => {
                    if channel == "blocked" {
                        return Err(Block::error("BlockedError", "Blocked!"));
                    }
                    if channel == "ok" {
                        a.set_data("intercepted").unwrap();
                    }
                }
                _ => {}
            }
            Ok(a)
        }
    });
    let mut c = open(&server).await;
    c.send(r##"{"event":"#subscribe","data":{"channel":"nosub"},"cid":6}"##)
        .await;
    c.send(r##"{"event":"#subscribe","data":{"channel":"ok"},"cid":7}"##)
        .await;
    c.send(r##"{"event":"#publish","data":{"channel":"ok","data":"original"},"cid":8}"##)
        .await;
    c.send(r##"{"event":"#publish","data":{"channel":"blocked","data":1},"cid":9}"##)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":6,"error":{"message":"No sub","name":"SubBlockedError"}}"#
    );
    assert_eq!(c.text().await, r#"{"rid":7}"#);
    assert_eq!(
        c.text().await,
        r##"{"event":"#publish","data":{"channel":"ok","data":"intercepted"}}"##
    );
    assert_eq!(c.text().await, r#"{"rid":8}"#);
    assert_eq!(
        c.text().await,
        r#"{"rid":9,"error":{"message":"Blocked!","name":"BlockedError"}}"#
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "subscribe nosub",
            "subscribe ok",
            "publishIn ok",
            "publishIn blocked"
        ]
    );
}

/// 7.2: a blocked transmit is dropped; an allowed one reaches the receiver with the
/// middleware's data.
#[tokio::test]
async fn inbound_transmit_block_and_receiver() {
    let server = start(config()).await;
    server.add_inbound_middleware(|mut a: InboundAction| async move {
        if let InboundKind::Transmit { receiver } = a.kind() {
            if receiver == "drop" {
                return Err(Block::Silent);
            }
            a.set_data(&json!({"wrapped": a.data::<serde_json::Value>().unwrap()}))
                .unwrap();
        }
        Ok(a)
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    server.receiver("drop", move |e: socketcluster_rs_server::ReceivedEvent| {
        let tx = tx2.clone();
        async move {
            let _ = tx.send(format!("drop {}", e.raw_data().unwrap().get()));
        }
    });
    server.receiver(
        "myEvent",
        move |e: socketcluster_rs_server::ReceivedEvent| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(format!("{} {}", e.event(), e.raw_data().unwrap().get()));
            }
        },
    );
    let mut c = open(&server).await;
    c.send(r#"{"event":"drop","data":1}"#).await;
    c.send(r#"{"event":"myEvent","data":"transmitted"}"#).await;
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, r#"myEvent {"wrapped":"transmitted"}"#);
}

/// SV-8 / 11.3: AUTHENTICATE middleware blocking without `isBadToken` is a soft error
/// in the handshake; with `isBadToken` on `#authenticate` it is an error reply plus
/// `#removeAuthToken` (3.6.2).
#[tokio::test]
async fn authenticate_middleware_soft_and_hard_blocks() {
    let server = start(config()).await;
    server.add_inbound_middleware(|a: InboundAction| async move {
        if let InboundKind::Authenticate { auth_token, .. } = a.kind() {
            match auth_token.get("username").and_then(|u| u.as_str()) {
                Some("alice") => {
                    return Err(Block::error("AuthenticateMiddlewareError", "No alice"));
                }
                Some("eve") => {
                    return Err(Block::error("BadEveError", "Eve is bad").bad_token(true));
                }
                _ => {}
            }
        }
        Ok(a)
    });
    let alice = sign(&server, json!({"username": "alice"}));
    let eve = sign(&server, json!({"username": "eve"}));
    let mut c = Raw::connect(&url(&server)).await;
    let v = c.handshake(Some(&alice)).await;
    assert_eq!(
        v["data"]["authError"],
        json!({"message":"No alice","name":"AuthenticateMiddlewareError"})
    );
    assert_eq!(v["data"]["isAuthenticated"], false);
    c.send(&json!({"event":"#authenticate","data":eve,"cid":2}).to_string())
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":2,"error":{"message":"Eve is bad","name":"BadEveError","isBadToken":true}}"#
    );
    assert_eq!(c.text().await, r##"{"event":"#removeAuthToken"}"##);
    let r = c.invoke("#authenticate", json!(alice), 3).await;
    assert_eq!(
        r,
        json!({"rid":3,"data":{"isAuthenticated":false,"authError":{"message":"No alice","name":"AuthenticateMiddlewareError"}}})
    );
}

/// 11.5: outbound middleware blocks for one recipient, modifies for another; the
/// publisher's ack is unaffected.
#[tokio::test]
async fn outbound_publish_out_block_and_modify() {
    let server = start(config()).await;
    server.add_outbound_middleware(|mut a: PublishOutAction| async move {
        match a.data::<String>().unwrap_or_default().as_str() {
            "block" => Err(Block::Silent),
            "modify" => {
                a.set_data("modified-out").unwrap();
                Ok(a)
            }
            _ => Ok(a),
        }
    });
    let mut c = open(&server).await;
    c.invoke("#subscribe", json!({"channel": "ch"}), 2).await;
    for (cid, data) in [(3, "block"), (4, "modify"), (5, "plain")] {
        c.send(
            &json!({"event":"#publish","data":{"channel":"ch","data":data},"cid":cid}).to_string(),
        )
        .await;
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.text().await);
    }
    let pubs: Vec<&String> = got.iter().filter(|f| f.contains("#publish")).collect();
    assert_eq!(
        pubs,
        [
            r##"{"event":"#publish","data":{"channel":"ch","data":"modified-out"}}"##,
            r##"{"event":"#publish","data":{"channel":"ch","data":"plain"}}"##
        ]
    );
    for rid in [3, 4, 5] {
        assert!(got.contains(&format!(r#"{{"rid":{rid}}}"#)));
    }
}

/// 3.6.1 / SV-60..62: handshake middleware blocks: statusCode default 4008, custom
/// 4501, silent; the reply comes first, then the close with that code. In protocol
/// version 1 the reply also carries `data.code` for v14 clients.
#[tokio::test]
async fn handshake_middleware_blocks_with_status_codes() {
    let server = start(config()).await;
    server.add_handshake_middleware(|a: HandshakeAction| async move {
        match a.socket.request().query_param("mode").as_deref() {
            Some("lazy") => Err(Block::error("TooLazyHandshakeError", "Too lazy")),
            Some("query") => {
                Err(Block::error("InvalidAuthQueryHandshakeError", "Bad query")
                    .with_status_code(4501))
            }
            Some("silent") => Err(Block::Silent),
            _ => Ok(()),
        }
    });
    let base = url(&server);
    for (mode, reply, code) in [
        (
            "lazy",
            r#"{"rid":1,"error":{"message":"Too lazy","name":"TooLazyHandshakeError","statusCode":4008}}"#,
            4008,
        ),
        (
            "query",
            r#"{"rid":1,"error":{"message":"Bad query","name":"InvalidAuthQueryHandshakeError","statusCode":4501}}"#,
            4501,
        ),
        (
            "silent",
            r#"{"rid":1,"error":{"message":"The handshakeSC AGAction was blocked by handshake middleware","name":"SilentMiddlewareBlockedError","type":"handshake","statusCode":4008}}"#,
            4008,
        ),
    ] {
        let mut c = Raw::connect(&format!("{base}?mode={mode}")).await;
        c.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
            .await;
        assert_eq!(c.text().await, reply);
        assert_eq!(c.closed().await, (code, String::new()));
    }
    let mut c = Raw::connect(&base).await;
    assert_eq!(c.handshake(None).await["rid"], 1);

    let v1 = start(config().with_protocol_version(ProtocolVersion::V1)).await;
    v1.add_handshake_middleware(|_a: HandshakeAction| async move {
        Err(Block::error("BadQ", "Bad query").with_status_code(4501))
    });
    let mut c = Raw::connect(&url(&v1)).await;
    c.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
        .await;
    assert_eq!(
        c.text().await,
        r#"{"rid":1,"error":{"message":"Bad query","name":"BadQ","statusCode":4501},"data":{"code":4501}}"#
    );
    assert_eq!(c.closed().await.0, 4501);
}

/// SV-63 / SV-65: a slow handshake middleware for one socket does not delay others,
/// and pongs that arrive after the `#handshake` message wait for it (8.3).
#[tokio::test]
async fn slow_handshake_middleware_only_delays_its_socket() {
    let server = start(
        config()
            .with_ping_interval(Duration::from_millis(100))
            .with_ping_timeout(Duration::from_secs(5)),
    )
    .await;
    server.add_handshake_middleware(|a: HandshakeAction| async move {
        if a.socket.request().query_param("delayMe").is_some() {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        Ok(())
    });
    let base = url(&server);
    let mut slow = Raw::connect(&format!("{base}?delayMe=true")).await;
    slow.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
        .await;
    let started = std::time::Instant::now();
    let mut fast = Raw::connect(&base).await;
    fast.handshake(None).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    // answer the pre-reply pings: they are processed after the handshake, no 4009
    let mut pongs = 0;
    let reply = loop {
        match slow.next().await {
            Got::Text(t) if t.is_empty() => {
                pongs += 1;
                slow.send("").await;
            }
            Got::Text(t) => break t,
            other => panic!("{other:?}"),
        }
    };
    assert!(reply.starts_with(r#"{"rid":1,"data":{"id":"#), "{reply}");
    assert!(pongs >= 2, "pongs: {pongs}");
    assert_eq!(slow.invoke("echo", json!(1), 2).await["data"], 1);
}

/// 1.2 / 11.4: HTTP refusals: wrong path 400, handshakeWS block 401 with the message,
/// origin 403 with the exact body, plain HTTP 501.
#[tokio::test]
async fn http_level_refusals() {
    let server = start(config().with_origins("example.com:443 foo.org:*")).await;
    server.add_handshake_ws_middleware(|req: Arc<HandshakeRequest>| async move {
        if req.query_param("go").as_deref() == Some("away") {
            return Err(Block::error("Error", "Go away"));
        }
        if req.query_param("silent").is_some() {
            return Err(Block::Silent);
        }
        Ok(())
    });
    let addr = server.local_addr().unwrap();
    let err = |r: Result<Raw, (u16, String)>| match r {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    };
    let wrong = format!("ws://{addr}/socketcluster");
    assert_eq!(
        err(Raw::connect_with_origin(&wrong, "https://example.com").await),
        (400, "Bad Request".into())
    );
    let base = url(&server);
    assert_eq!(
        err(Raw::connect_with_origin(&format!("{base}?go=away"), "https://example.com").await),
        (401, "Go away".into())
    );
    assert_eq!(
        err(Raw::connect_with_origin(&format!("{base}?silent=1"), "https://example.com").await),
        (
            401,
            "The handshakeWS AGAction was blocked by handshake middleware".into()
        )
    );
    assert_eq!(
        err(Raw::connect_with_origin(&base, "http://evil.com").await),
        (
            403,
            "Failed to authorize socket handshake - Invalid origin: http://evil.com".into()
        )
    );
    // a client without Origin header is evaluated as '*' (docs/PROTOCOL.md 1.2)
    let no_origin = tokio_tungstenite::connect_async(base.as_str()).await;
    assert_eq!(
        http_error(no_origin.err().unwrap()),
        (
            403,
            "Failed to authorize socket handshake - Invalid origin: *".into()
        )
    );
    assert!(
        Raw::connect_with_origin(&base, "https://example.com")
            .await
            .is_ok()
    );
    assert!(
        Raw::connect_with_origin(&base, "http://foo.org:8080")
            .await
            .is_ok()
    );

    // plain HTTP
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    tcp.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{buf}");
    assert!(buf.ends_with("Not Implemented"));
    assert!(server.stats().http_rejections >= 6);
}

/// 9.2 `inboundRaw`: the middleware sees every inbound message as received (the
/// handshake, pongs, batches), can drop one silently (an invoke is never answered) or
/// replace it (the replacement is decoded instead).
#[tokio::test]
async fn inbound_raw_sees_every_message_and_can_drop_or_replace_it() {
    use socketcluster_rs_server::InboundRawAction;
    let server = start(config()).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    server.add_inbound_raw_middleware(move |mut a: InboundRawAction| {
        seen2.lock().unwrap().push(a.message().to_owned());
        let drop_it = a.message().contains("\"drop-me\"");
        if a.message().contains("\"replace-me\"") {
            a.set_message(a.message().replace("replace-me", "replaced"));
        }
        async move {
            if drop_it {
                Err(Block::error("RawBlockedError", "dropped"))
            } else {
                Ok(a)
            }
        }
    });
    let mut c = open(&server).await;
    c.send("").await; // a pong
    c.send(r#"{"event":"echo","data":"drop-me","cid":2}"#).await;
    c.send(r#"{"event":"echo","data":"replace-me","cid":3}"#)
        .await;
    assert_eq!(c.json().await, json!({"rid": 3, "data": "replaced"}));
    c.send(r#"[{"event":"echo","data":"a","cid":4},{"event":"echo","data":"b","cid":5}]"#)
        .await;
    let mut got = [c.json().await, c.json().await];
    got.sort_by_key(|v| v["rid"].as_u64());
    assert_eq!(
        got,
        [
            json!({"rid": 4, "data": "a"}),
            json!({"rid": 5, "data": "b"})
        ]
    );
    // Nothing ever answers the dropped invoke.
    assert!(c.silent_for(Duration::from_millis(100)).await.is_ok());
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen[0].starts_with(r##"{"event":"#handshake""##),
        "{seen:?}"
    );
    assert_eq!(
        &seen[1..],
        [
            "",
            r#"{"event":"echo","data":"drop-me","cid":2}"#,
            r#"{"event":"echo","data":"replace-me","cid":3}"#,
            r#"[{"event":"echo","data":"a","cid":4},{"event":"echo","data":"b","cid":5}]"#,
        ]
    );
}
