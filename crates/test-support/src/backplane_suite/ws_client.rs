//! [`WsClient`]: a minimal SocketCluster client over a raw WebSocket (protocol v2).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use socketcluster_rs_server::Server;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::backplane::WAIT;

/// A minimal SocketCluster client over a raw WebSocket, speaking protocol version 2.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    publications: mpsc::UnboundedReceiver<(String, Value)>,
    closed: Arc<AtomicBool>,
    next_cid: u64,
    /// The socket id from the handshake.
    pub id: String,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("id", &self.id).finish()
    }
}

impl WsClient {
    /// Connect to `server` and complete the handshake.
    pub async fn connect(server: &Server) -> WsClient {
        let url = format!(
            "ws://{}/socketcluster/",
            server.local_addr().expect("listening")
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Default::default();
        let (pub_tx, pub_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        {
            let out = out_tx.clone();
            let pending = pending.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else {
                        if let Message::Close(_) = msg {
                            break;
                        }
                        continue;
                    };
                    if text.as_str().is_empty() {
                        let _ = out.send(Message::text(""));
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(rid) = v.get("rid").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&rid) {
                            let _ = tx.send(v);
                        }
                    } else if v["event"] == "#publish" {
                        let ch = v["data"]["channel"].as_str().unwrap_or_default().to_owned();
                        let _ = pub_tx.send((ch, v["data"]["data"].clone()));
                    }
                }
                closed.store(true, Ordering::SeqCst);
            });
        }
        let mut c = WsClient {
            out: out_tx,
            pending,
            publications: pub_rx,
            closed,
            next_cid: 0,
            id: String::new(),
        };
        let reply = c.invoke("#handshake", json!({"authToken": null})).await;
        c.id = reply["data"]["id"]
            .as_str()
            .expect("handshake id")
            .to_owned();
        c
    }

    /// Invoke and wait for the response packet (`{"rid":..,"data"|"error":..}`).
    pub async fn invoke(&mut self, event: &str, data: Value) -> Value {
        self.next_cid += 1;
        let cid = self.next_cid;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(cid, tx);
        let frame = json!({"event": event, "data": data, "cid": cid}).to_string();
        self.out
            .send(Message::text(frame))
            .expect("socket writer gone");
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {event}"))
            .expect("socket closed before the reply")
    }

    /// `#subscribe` and assert it succeeded.
    pub async fn subscribe(&mut self, channel: &str) {
        let r = self.invoke("#subscribe", json!({"channel": channel})).await;
        assert!(
            r.get("error").is_none(),
            "subscribe {channel:?} failed: {r}"
        );
    }

    /// `#unsubscribe` and assert it succeeded.
    pub async fn unsubscribe(&mut self, channel: &str) {
        let r = self.invoke("#unsubscribe", json!(channel)).await;
        assert!(
            r.get("error").is_none(),
            "unsubscribe {channel:?} failed: {r}"
        );
    }

    /// Invoked publish: `Ok` on `{"rid":n}`, `Err(error object)` on an error reply.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<(), Value> {
        let r = self
            .invoke("#publish", json!({"channel": channel, "data": data}))
            .await;
        match r.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Send publishes without waiting for the acknowledgements (in order).
    pub fn transmit_publish(&mut self, channel: &str, data: Value) {
        let frame = json!({"event": "#publish", "data": {"channel": channel, "data": data}});
        self.out
            .send(Message::text(frame.to_string()))
            .expect("socket writer gone");
    }

    /// The next publication received (any channel).
    pub async fn next_publication(&mut self) -> (String, Value) {
        tokio::time::timeout(WAIT, self.publications.recv())
            .await
            .expect("timed out waiting for a publication")
            .expect("socket closed")
    }

    /// A publication if one is already queued.
    pub fn try_publication(&mut self) -> Option<(String, Value)> {
        self.publications.try_recv().ok()
    }

    /// Whether the server closed the socket.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
