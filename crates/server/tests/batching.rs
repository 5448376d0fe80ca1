//! Server-side outbound batching (docs/PROTOCOL.md 8.5, 2.4, 11.5): `batch_on_handshake`,
//! `start_batching` / `stop_batching` / `cancel_batching`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use socketcluster_rs_server::{Server, Socket};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

fn socket_of(server: &Server, handshake_reply: &Value) -> Socket {
    let id = handshake_reply["data"]["id"].as_str().expect("socket id");
    server.socket(id).expect("open socket")
}

/// Wait until exactly `frames` (encoded packet texts) are buffered on the socket
/// (the outbound byte count includes 64 bytes of accounting per buffered packet).
async fn wait_buffered(socket: &Socket, frames: &[&str]) {
    let expected: usize = frames.iter().map(|f| f.len() + 64).sum();
    eventually(|| socket.outbound_queued_bytes() == expected).await;
}

/// 11.5 captured shapes / SV-54 (server half): replies, publications and server →
/// client invokes buffered while batching go out as one JSON array frame, in order;
/// the handshake reply is never batched; after `stop_batching` frames are single again.
#[tokio::test]
async fn batched_replies_go_out_as_one_array_frame_with_the_captured_shapes() {
    // Window and interval far longer than the test: only stop_batching flushes.
    let server = start(
        config()
            .with_batch_on_handshake(true)
            .with_batch_on_handshake_duration(Duration::from_secs(3600))
            .with_batch_interval(Duration::from_secs(3600)),
    )
    .await;
    let mut c = Raw::connect(&url(&server)).await;
    c.send(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##)
        .await;
    let reply_text = c.text().await;
    assert!(
        reply_text.starts_with(r#"{"rid":1,"data":{"id":"#),
        "{reply_text}"
    );
    let socket = socket_of(&server, &serde_json::from_str(&reply_text).unwrap());
    assert!(socket.is_batching());

    // One at a time, so that the order inside the batch is the request order.
    let mut buffered = Vec::new();
    for (frame, reply) in [
        (
            r#"{"event":"echo","data":1,"cid":2}"#,
            r#"{"rid":2,"data":1}"#,
        ),
        (
            r#"{"event":"echo","data":2,"cid":3}"#,
            r#"{"rid":3,"data":2}"#,
        ),
        (
            r##"{"event":"#subscribe","data":{"channel":"b"},"cid":4}"##,
            r#"{"rid":4}"#,
        ),
    ] {
        c.send(frame).await;
        buffered.push(reply);
        wait_buffered(&socket, &buffered).await;
    }
    socket.stop_batching();
    assert_eq!(
        c.text().await,
        r#"[{"rid":2,"data":1},{"rid":3,"data":2},{"rid":4}]"#
    );
    assert!(!socket.is_batching());

    // Explicit batching: a publication (through the pre-encoded fan-out path) and a
    // server -> client invoke share one array.
    socket.start_batching();
    server
        .exchange()
        .publish("b", &"batched-publish")
        .await
        .unwrap();
    let publish = r##"{"event":"#publish","data":{"channel":"b","data":"batched-publish"}}"##;
    wait_buffered(&socket, &[publish]).await;
    let s2 = socket.clone();
    let invoke = tokio::spawn(async move { s2.invoke("clientProc", &"x").await });
    let client_invoke = r#"{"event":"clientProc","data":"x","cid":1}"#;
    wait_buffered(&socket, &[publish, client_invoke]).await;
    socket.stop_batching();
    let batch: Value = serde_json::from_str(&c.text().await).unwrap();
    assert_eq!(
        batch,
        json!([
            {"event": "#publish", "data": {"channel": "b", "data": "batched-publish"}},
            {"event": "clientProc", "data": "x", "cid": 1},
        ])
    );
    c.send(r#"{"rid":1,"data":"ok"}"#).await;
    let answer = invoke.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.get(), r#""ok""#);

    // Not batching any more: single frames.
    let v = c.invoke("echo", json!("after-batch-window"), 5).await;
    assert_eq!(v, json!({"rid": 5, "data": "after-batch-window"}));
}

/// docs/PROTOCOL.md 8.5: `cancel_batching` discards the buffered packets.
#[tokio::test]
async fn cancel_batching_discards_the_buffered_packets() {
    let server = start(config().with_batch_interval(Duration::from_secs(3600))).await;
    let mut c = Raw::connect(&url(&server)).await;
    let reply = c.handshake(None).await;
    let socket = socket_of(&server, &reply);
    assert!(!socket.is_batching());
    socket.start_batching();
    assert!(socket.is_batching());
    c.send(r#"{"event":"echo","data":"dropped","cid":2}"#).await;
    wait_buffered(&socket, &[r#"{"rid":2,"data":"dropped"}"#]).await;
    socket.cancel_batching();
    assert_eq!(socket.outbound_queued_bytes(), 0);
    let v = c.invoke("echo", json!("kept"), 3).await;
    assert_eq!(v, json!({"rid": 3, "data": "kept"}));
}

/// Closing a batching socket flushes the buffer before the close frame (a deliberate
/// difference: the JS server discards it).
#[tokio::test]
async fn disconnect_while_batching_flushes_before_the_close_frame() {
    let server = start(config().with_batch_interval(Duration::from_secs(3600))).await;
    let mut c = Raw::connect(&url(&server)).await;
    let reply = c.handshake(None).await;
    let socket = socket_of(&server, &reply);
    socket.start_batching();
    socket.transmit("bye", &1).unwrap();
    wait_buffered(&socket, &[r#"{"event":"bye","data":1}"#]).await;
    socket.disconnect(4321, "custom reason");
    assert_eq!(c.text().await, r#"[{"event":"bye","data":1}]"#);
    assert_eq!(c.closed().await, (4321, "custom reason".to_owned()));
}

// ------------------------------------------------------------ timers (paused time)

type Ws = WebSocketStream<DuplexStream>;

/// An in-memory connection to `server` (no sockets, so tokio time can be paused).
async fn duplex_client(server: &Server) -> Ws {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    server.serve_connection(server_io, None, false);
    let (ws, _) = tokio_tungstenite::client_async("ws://localhost/socketcluster/", client_io)
        .await
        .expect("upgrade");
    ws
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await.expect("open").expect("frame") {
            Message::Text(t) => return t.to_string(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// docs/PROTOCOL.md 8.5 with the JS defaults (window 400 ms, interval 50 ms): during the
/// window replies come as arrays within one interval; after it single frames; an
/// explicit `start_batching` survives; pings are never batched.
#[tokio::test(start_paused = true)]
async fn batch_on_handshake_window_interval_and_pings() {
    let server = Server::new(
        config()
            .with_batch_on_handshake(true)
            .with_ping_interval(Duration::from_millis(1000)),
    )
    .unwrap();
    install_procedures(&server);
    assert_eq!(
        server.config().batch_on_handshake_duration,
        Duration::from_millis(400)
    );
    assert_eq!(server.config().batch_interval, Duration::from_millis(50));
    let mut ws = duplex_client(&server).await;
    let t0 = tokio::time::Instant::now();
    send(
        &mut ws,
        r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##,
    )
    .await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(reply["rid"], 1, "the handshake reply is never batched");
    let socket = socket_of(&server, &reply);

    send(&mut ws, r#"{"event":"echo","data":1,"cid":2}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"[{"rid":2,"data":1}]"#);
    assert!(
        t0.elapsed() <= Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );

    // The window ends at 400 ms.
    tokio::time::sleep_until(t0 + Duration::from_millis(410)).await;
    assert!(!socket.is_batching());
    send(&mut ws, r#"{"event":"echo","data":2,"cid":3}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"rid":3,"data":2}"#);

    // Explicit batching: flushed every 50 ms, and the ping at 1000 ms is a plain frame.
    socket.start_batching();
    send(&mut ws, r#"{"event":"echo","data":3,"cid":4}"#).await;
    let before = tokio::time::Instant::now();
    assert_eq!(next_text(&mut ws).await, r#"[{"rid":4,"data":3}]"#);
    assert!(before.elapsed() <= Duration::from_millis(50));
    assert_eq!(next_text(&mut ws).await, "", "ping");
    assert!(t0.elapsed() >= Duration::from_millis(1000));
    assert!(socket.is_batching());
    socket.stop_batching();
    send(&mut ws, r#"{"event":"echo","data":4,"cid":5}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"rid":5,"data":4}"#);
}

/// docs/PROTOCOL.md 8.5: `start_batching` during the handshake window keeps batching after
/// the window ends (JS `isBatching`).
#[tokio::test(start_paused = true)]
async fn explicit_batching_outlives_the_handshake_window() {
    let server = Server::new(config().with_batch_on_handshake(true)).unwrap();
    install_procedures(&server);
    let mut ws = duplex_client(&server).await;
    let t0 = tokio::time::Instant::now();
    send(
        &mut ws,
        r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##,
    )
    .await;
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    let socket = socket_of(&server, &reply);
    socket.start_batching();
    tokio::time::sleep_until(t0 + Duration::from_millis(500)).await;
    assert!(socket.is_batching());
    send(&mut ws, r#"{"event":"echo","data":"late","cid":2}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"[{"rid":2,"data":"late"}]"#);
}

/// A zero batch interval is a configuration error (tokio intervals need a period).
#[test]
fn zero_batch_interval_is_rejected() {
    assert!(Server::new(config().with_batch_interval(Duration::ZERO)).is_err());
}
