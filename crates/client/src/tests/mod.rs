//! Scripted fake server over in-memory pipes, so that tests run with paused tokio time
//! deterministically (rumqttc style: behaviour-named tests driving a fake peer).

mod auth;
mod channels;
mod lifecycle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::transport::BoxedIo;
use crate::{Client, ClientBuilder, ClientOptions, Event, Events};

pub(crate) struct FakeServer {
    rx: mpsc::UnboundedReceiver<DuplexStream>,
    pub(crate) refuse: Arc<AtomicBool>,
}

/// Options wired to a fake server, with short reconnect delays (1000 ms + up to 1000 ms).
pub(crate) fn fake(options: ClientOptions) -> (ClientOptions, FakeServer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let refuse = Arc::new(AtomicBool::new(false));
    let r2 = refuse.clone();
    let mut options = options;
    options.transport = Some(Arc::new(move || {
        let tx = tx.clone();
        let refuse = r2.clone();
        Box::pin(async move {
            if refuse.load(Ordering::SeqCst) {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
            }
            let (client, server) = tokio::io::duplex(1 << 16);
            let _ = tx.send(server);
            Ok(Box::new(client) as BoxedIo)
        })
    }));
    (options, FakeServer { rx, refuse })
}

pub(crate) fn builder() -> (ClientBuilder, FakeServer) {
    let mut o = ClientOptions::new("ws://fake.test:8000");
    o.reconnect = crate::ReconnectOptions::new(
        Duration::from_millis(1000),
        Duration::from_millis(1000),
        1.5,
        Duration::from_millis(60_000),
    );
    let (o, s) = fake(o);
    (ClientBuilder::from_options(o), s)
}

impl FakeServer {
    /// The next WebSocket connection (upgrade accepted).
    pub(crate) async fn accept(&mut self) -> FakeConn {
        let io = self.rx.recv().await.expect("a connection attempt");
        let ws = tokio_tungstenite::accept_async(io).await.expect("upgrade");
        FakeConn { ws }
    }

    /// The next WebSocket connection and the path and query it asked for.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    pub(crate) async fn accept_uri(&mut self) -> (FakeConn, String) {
        let io = self.rx.recv().await.expect("a connection attempt");
        let mut uri = String::new();
        let ws = tokio_tungstenite::accept_hdr_async(
            io,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                uri = req.uri().to_string();
                Ok(resp)
            },
        )
        .await
        .expect("upgrade");
        (FakeConn { ws }, uri)
    }

    /// The next connection attempt, without answering the upgrade.
    pub(crate) async fn accept_raw(&mut self) -> DuplexStream {
        self.rx.recv().await.expect("a connection attempt")
    }

    /// Accept and complete the handshake with a default status.
    pub(crate) async fn accept_handshake(&mut self) -> (FakeConn, Value) {
        let mut c = self.accept().await;
        let hs = c
            .handshake(json!({"id":"fake-id","pingTimeout":20000,"isAuthenticated":false}))
            .await;
        (c, hs)
    }
}

pub(crate) struct FakeConn {
    ws: WebSocketStream<DuplexStream>,
}

/// What the fake server read.
#[derive(Debug, PartialEq)]
pub(crate) enum Read {
    Text(String),
    Close(Option<(u16, String)>),
    Eof,
}

impl FakeConn {
    pub(crate) async fn read(&mut self) -> Read {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => return Read::Text(t.as_str().to_owned()),
                Some(Ok(WsMessage::Close(f))) => {
                    return Read::Close(
                        f.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Read::Eof,
            }
        }
    }

    /// The next JSON frame, skipping heartbeats.
    pub(crate) async fn recv_json(&mut self) -> Value {
        loop {
            match self.read().await {
                Read::Text(t) if t.is_empty() || t == "#2" => continue,
                Read::Text(t) => return serde_json::from_str(&t).unwrap_or(Value::String(t)),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next frame, expected to be a close.
    pub(crate) async fn recv_close(&mut self) -> Option<(u16, String)> {
        loop {
            match self.read().await {
                Read::Text(t) if t.is_empty() || t == "#2" => continue,
                Read::Close(c) => return c,
                Read::Eof => return None,
                Read::Text(t) => panic!("expected a close, got {t}"),
            }
        }
    }

    pub(crate) async fn send(&mut self, text: &str) {
        self.ws
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    pub(crate) async fn send_json(&mut self, v: Value) {
        self.send(&v.to_string()).await;
    }

    /// Expect `#handshake`, answer with `status`; returns the handshake data.
    pub(crate) async fn handshake(&mut self, status: Value) -> Value {
        let hs = self.recv_json().await;
        assert_eq!(hs["event"], "#handshake", "{hs}");
        let cid = hs["cid"].clone();
        self.send_json(json!({"rid": cid, "data": status})).await;
        hs["data"].clone()
    }

    pub(crate) async fn close(mut self, code: u16, reason: &str) {
        let _ = self
            .ws
            .send(WsMessage::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.to_owned().into(),
            })))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }
}

/// Wait (with a generous deadline) for the first event matching `f`.
pub(crate) async fn wait_event(events: &mut Events, f: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let e = events.recv().await.expect("events stream ended");
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event did not arrive")
}

/// Names of the events received until (and including) the first matching `until`.
pub(crate) async fn event_names_until(
    events: &mut Events,
    until: impl Fn(&Event) -> bool,
) -> Vec<String> {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let e = events.recv().await.expect("events stream ended");
            let stop = until(&e);
            v.push(event_label(&e));
            if stop {
                return;
            }
        }
    })
    .await
    .expect("event did not arrive");
    v
}

pub(crate) fn event_label(e: &Event) -> String {
    match e {
        Event::Disconnect { code, .. }
        | Event::ConnectAbort { code, .. }
        | Event::Close { code, .. } => {
            format!("{}({})", e.name(), code.0)
        }
        Event::AuthStateChange { new, .. } => format!("authStateChange({new})"),
        _ => match e.channel() {
            Some(c) => format!("{}({c})", e.name()),
            None => e.name().to_owned(),
        },
    }
}

/// A client that is connected to the fake server.
pub(crate) async fn connected(b: ClientBuilder, server: &mut FakeServer) -> (Client, FakeConn) {
    let client = b.build().expect("build");
    let (conn, _) = server.accept_handshake().await;
    wait_open(&client).await;
    (client, conn)
}

pub(crate) async fn wait_open(client: &Client) {
    let mut w = client.state_watch();
    tokio::time::timeout(Duration::from_secs(120), async {
        w.wait_for(|s| *s == crate::ConnectionState::Open)
            .await
            .expect("state watch");
    })
    .await
    .expect("client did not open");
}
