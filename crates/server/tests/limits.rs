//! Limits and hostile input: a misbehaving client is cut off with a documented code and
//! never affects a well-behaved control client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use socketcluster_rs_server::{InboundAction, Limits, RateLimit};
use tokio_tungstenite::tungstenite::Message;

/// 1.3 / 11.4: a message above `max_payload` closes with 1009.
#[tokio::test]
async fn oversized_frame_closes_with_1009_and_others_continue() {
    let server = start(config().with_limits(Limits::default().max_payload(1000))).await;
    let mut control = open(&server).await;
    let mut bad = open(&server).await;
    bad.send(&format!(
        r#"{{"event":"echo","data":"{}","cid":2}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(bad.closed().await.0, 1009);
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
    eventually(|| server.clients_count() == 1).await;
}

/// A client that sends requests but never reads the answers is disconnected once its
/// outbound queue exceeds the limit (1008); the queue never grows beyond the limit and
/// the control client is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_without_reading_is_cut_off_with_1008() {
    let limit = 256 * 1024;
    let server =
        start(config().with_limits(Limits::default().max_outbound_queue_bytes(limit))).await;
    let mut control = open(&server).await;
    eventually(|| server.clients_count() == 1).await;
    let control_id = server.clients()[0].id().to_owned();
    let mut flood = open(&server).await;
    eventually(|| server.clients_count() == 2).await;
    let flood_socket = server
        .clients()
        .into_iter()
        .find(|s| s.id() != control_id)
        .unwrap();
    let payload = "y".repeat(16 * 1024);
    let frame = format!(r#"{{"event":"echo","data":"{payload}","cid":5}}"#);
    let started = Instant::now();
    let mut max_queued = 0usize;
    let mut sent = 0;
    // The flooding client writes until the server drops it (writes start failing).
    while started.elapsed() < Duration::from_secs(20) {
        if flood
            .ws
            .send(Message::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        for s in server.clients() {
            max_queued = max_queued.max(s.outbound_queued_bytes());
        }
        if server.stats().slow_consumer_disconnects > 0 {
            break;
        }
    }
    eventually(|| server.stats().slow_consumer_disconnects == 1).await;
    assert!(sent > 10);
    assert!(
        max_queued <= limit + 16 * 1024 + 128,
        "queued {max_queued} > limit {limit}"
    );
    assert_eq!(flood_socket.closed().await.code, 1008);
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
    eventually(|| server.clients_count() == 1).await;
}

/// A subscriber that never reads is dropped; the other subscribers get every message.
#[tokio::test]
async fn slow_subscriber_does_not_hold_back_fast_ones() {
    let server =
        start(config().with_limits(Limits::default().max_outbound_queue_bytes(128 * 1024))).await;
    let mut fast = open(&server).await;
    let mut slow = open(&server).await;
    fast.invoke("#subscribe", json!({"channel": "news"}), 2)
        .await;
    slow.invoke("#subscribe", json!({"channel": "news"}), 2)
        .await;
    let exchange = server.exchange();
    let payload = "z".repeat(8 * 1024);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 1000 {
            let t = fast.text().await;
            assert!(t.contains("#publish"));
            n += 1;
        }
        n
    });
    for _ in 0..1000 {
        exchange.publish("news", &payload).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(reader.await.unwrap(), 1000);
    eventually(|| server.stats().slow_consumer_disconnects == 1).await;
    drop(slow);
    eventually(|| {
        server
            .channels()
            .first()
            .is_some_and(|c| c.subscribers == 1)
    })
    .await;
}

/// Inbound rate limit: the socket is throttled (not dropped); every request is answered.
#[tokio::test]
async fn inbound_rate_limit_throttles_without_dropping() {
    let server = start(
        config().with_limits(Limits::default().inbound_rate(Some(RateLimit {
            per_second: 50,
            burst: 5,
        }))),
    )
    .await;
    let mut c = open(&server).await;
    let started = Instant::now();
    for i in 0..40u64 {
        c.send(&json!({"event":"echo","data":i,"cid":100+i}).to_string())
            .await;
    }
    for i in 0..40u64 {
        assert_eq!(c.json().await["rid"], 100 + i);
    }
    // 40 messages at 50/s with a burst of 5 take about 0.7 s
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.clients_count(), 1);
}

/// While a slow middleware holds a socket's processing, it reads ahead only a bounded
/// number of frames; order is preserved and nothing is lost.
#[tokio::test]
async fn slow_middleware_keeps_order_with_bounded_read_ahead() {
    let server = start(config()).await;
    server.add_inbound_middleware(|a: InboundAction| async move {
        if a.data::<u64>().ok() == Some(0) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(a)
    });
    let mut c = open(&server).await;
    let mut control = open(&server).await;
    for i in 0..200u64 {
        c.send(&json!({"event":"echo","data":i,"cid":i+10}).to_string())
            .await;
    }
    assert_eq!(
        control.invoke("echo", json!("quick"), 2).await["data"],
        "quick"
    );
    for i in 0..200u64 {
        let v = c.json().await;
        assert_eq!(v["rid"], i + 10);
    }
}

/// Read-ahead is bounded in bytes too: while a middleware holds the first message, a
/// client sending large messages gets only about `max_payload` of them read (not
/// `max_inbound_queue` messages of up to `max_payload` each); nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_is_bounded_in_bytes() {
    let max_payload = 1 << 20;
    let server = start(config().with_limits(Limits::default().max_payload(max_payload))).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    server.add_inbound_middleware(move |a: InboundAction| {
        let g = g.clone();
        async move {
            if a.data::<Value>().ok().is_some_and(|d| d["i"] == 0) {
                let _ = g.acquire().await.map(|p| p.forget());
            }
            Ok(a)
        }
    });
    let c = open(&server).await;
    let before = server.stats().messages_received;
    let pad = "p".repeat(300 * 1024);
    let n = 20u64;
    let (mut tx, mut rx) = futures_util::StreamExt::split(c.ws);
    let writer = tokio::spawn(async move {
        for i in 0..n {
            let m = json!({"event":"echo","data":{"i":i,"pad":pad},"cid":10+i}).to_string();
            tx.send(Message::Text(m.into())).await.unwrap();
        }
        tx
    });
    eventually(|| server.stats().messages_received >= before + 2).await;
    // give the server every chance to read more than it should
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = server.stats().messages_received - before;
    // one in the middleware, then messages until 1 MiB is queued: 1 + 4 (300 KiB each)
    assert!(read <= 5, "{read} messages of 300 KiB read ahead");
    gate.add_permits(1);
    for i in 0..n {
        let v = loop {
            match futures_util::StreamExt::next(&mut rx).await {
                Some(Ok(Message::Text(t))) if !t.as_str().is_empty() => {
                    break serde_json::from_str::<Value>(t.as_str()).unwrap();
                }
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        };
        assert_eq!(v["rid"], 10 + i);
    }
    drop(writer.await.unwrap());
}

/// Bad input from docs/PROTOCOL.md 12 in one session: malformed JSON, binary frames,
/// duplicate cids, unknown rids, repeated handshakes, huge and empty channel names,
/// bad tokens; the socket and a control client keep working.
#[tokio::test]
async fn assorted_bad_input_leaves_everyone_working() {
    let server = start(config()).await;
    let mut control = open(&server).await;
    let mut c = open(&server).await;
    let junk: Vec<String> = vec![
        "{".into(),
        "[".repeat(100_000),
        "]".into(),
        "[1,2,3]".into(),
        "null".into(),
        r#"{"event":null}"#.into(),
        r#"{"rid":424242,"data":1}"#.into(),
        r#"{"rid":"x"}"#.into(),
        r##"{"event":"#handshake","data":{"authToken":"garbage"},"cid":77}"##.into(),
        r##"{"event":"#subscribe","data":{"channel":""},"cid":78}"##.into(),
        format!(
            r##"{{"event":"#subscribe","data":{{"channel":"{}"}},"cid":79}}"##,
            "c".repeat(10_000)
        ),
        r##"{"event":"#authenticate","data":"eyJhbGciOiJub25lIn0.eyJ1Ijo1fQ.","cid":80}"##.into(),
        r##"{"event":"#kickOut","data":{"channel":"x"}}"##.into(),
        r##"{"event":"#setAuthToken","data":{"token":"forged"}}"##.into(),
        r##"{"event":"#publish","data":{"channel":"x","data":1}}"##.into(),
        "\u{0}\u{1}".into(),
    ];
    for j in &junk {
        c.send(j).await;
    }
    c.send_binary(&[0xff, 0xfe, 0x00]).await;
    c.send_binary(&[]).await;
    // replies: repeated handshake (77), subscribe "" (78), long name error (79),
    // authenticate error (80) + #removeAuthToken
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(c.json().await);
    }
    assert_eq!(frames[0]["rid"], 77);
    assert_eq!(frames[0]["data"]["authError"]["message"], "jwt malformed");
    // the bad token in the repeated handshake is followed by #removeAuthToken
    assert_eq!(frames[1]["event"], "#removeAuthToken");
    assert_eq!(frames[2], json!({"rid": 78}));
    assert_eq!(frames[3]["error"]["name"], "InvalidActionError");
    assert_eq!(frames[4]["error"]["message"], "jwt signature is required");
    assert_eq!(c.json().await["event"], "#removeAuthToken");
    assert_eq!(c.invoke("echo", json!("alive"), 90).await["data"], "alive");
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
    assert_eq!(server.clients_count(), 2);
}

/// A connection that never sends an HTTP request, or sends oversized headers, is cut
/// off without affecting others.
#[tokio::test]
async fn slow_or_huge_http_requests_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config().with_handshake_timeout(Duration::from_millis(300))).await;
    let addr = server.local_addr().unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut huge = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let _ = huge.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = huge.read_to_end(&mut buf).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"));
    let mut c = open(&server).await;
    assert_eq!(c.invoke("echo", json!(1), 2).await["data"], 1);
    let n = tokio::time::timeout(WAIT, idle.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(n.unwrap_or(0), 0);
}

/// TLS (`wss://`) with a rustls server configuration.
#[tokio::test]
async fn tls_listener_serves_wss() {
    let tls = socketcluster_rs_server::tls::server_config_from_pem(
        include_bytes!("keys/tls_cert.pem"),
        include_bytes!("keys/tls_key.pem"),
    )
    .unwrap();
    let server = start(config().with_tls(Some(tls))).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &include_bytes!("keys/tls_ca.pem")[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = format!(
        "wss://localhost:{}/socketcluster/",
        server.local_addr().unwrap().port()
    );
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            client_cfg,
        ))),
    )
    .await
    .unwrap();
    let mut c = Raw {
        ws,
        auto_pong: None,
        pings_seen: 0,
    };
    assert_eq!(c.handshake(None).await["rid"], 1);
    assert_eq!(c.invoke("echo", json!("secure"), 2).await["data"], "secure");
    // The upgrade request is kept compactly and parsed on demand: same view as before.
    let request = server.clients()[0].request().clone();
    assert!(request.secure);
    assert_eq!(request.uri.path(), "/socketcluster/");
    assert_eq!(request.headers["upgrade"], "websocket");
    assert!(request.remote_addr.is_some_and(|a| a.ip().is_loopback()));
    // a plain-text client is refused (the TLS handshake fails)
    assert!(
        tokio_tungstenite::connect_async(format!(
            "ws://127.0.0.1:{}/socketcluster/",
            server.local_addr().unwrap().port()
        ))
        .await
        .is_err()
    );
}

/// A socket whose writes are blocked (the client stops reading, the kernel buffers are
/// full, frames wait in its queue below the limit) still obeys commands: `terminate`
/// ends it at once, and the socket reports closed with 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_socket_whose_writes_are_blocked() {
    let server =
        start(config().with_limits(Limits::default().max_outbound_queue_bytes(64 << 20))).await;
    let mut stalled = open(&server).await;
    stalled
        .invoke("#subscribe", json!({"channel": "stall"}), 2)
        .await;
    // From here on the client reads nothing.
    let socket = server.clients().pop().expect("one client");
    let exchange = server.exchange();
    let payload = "z".repeat(64 * 1024);
    // Publish until frames pile up in the socket's queue: its writes are blocked.
    let mut n = 0;
    while socket.outbound_queued_bytes() < 4 << 20 {
        exchange.publish("stall", &payload).await.unwrap();
        n += 1;
        assert!(n < 2000, "the queue never filled");
        tokio::task::yield_now().await;
    }
    socket.terminate();
    let closed = tokio::time::timeout(WAIT, socket.closed())
        .await
        .expect("terminate reached the blocked socket");
    assert_eq!(closed.code, 1006);
    assert_eq!(server.stats().slow_consumer_disconnects, 0);
    drop(stalled);
}

/// A batch with `max_batch_items` elements is processed; one more element closes the
/// socket with 1009 before any element is processed.
#[tokio::test]
async fn batch_item_limit_closes_with_1009() {
    let server = start(config().with_limits(Limits::default().max_batch_items(3))).await;
    let mut ok = open(&server).await;
    let batch = |n: u64| {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"event":"echo","data":{i},"cid":{}}}"#, i + 10))
            .collect();
        format!("[{}]", items.join(","))
    };
    ok.send(&batch(3)).await;
    for i in 0..3 {
        assert_eq!(ok.json().await, json!({"rid": i + 10, "data": i}));
    }
    let mut bad = open(&server).await;
    bad.send(&batch(4)).await;
    // nothing of the batch is answered: the close comes first
    assert_eq!(
        bad.next().await,
        Got::Close(1009, "Batch exceeds 3 items".into())
    );
    assert_eq!(ok.invoke("echo", json!("fine"), 2).await["data"], "fine");
}
