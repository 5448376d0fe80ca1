//! Server-Sent Events of the dashboard: `events` (the server's figures every second,
//! with per-second rates, and the instances of the cluster) and `events/channel?name=C` (the channel's publications as
//! they arrive, through a server-side exchange subscription).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::super::http::{self, Operator, Resp};

/// A response body fed by a channel: ends when the sender is dropped; the sender sees
/// the receiver gone once the client has disconnected.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn stream() -> (mpsc::Sender<Bytes>, Resp) {
    let (tx, rx) = mpsc::channel(16);
    let mut r = Resp::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    (tx, r)
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `events`: a `stats` event every second.
pub(super) fn stats(op: &Operator) -> Resp {
    let (tx, r) = stream();
    let server = op.server.clone();
    let backplane = op.backplane_probe();
    let instances = op.instances.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<socketcluster_rs_server::StatsSnapshot> = None;
        loop {
            tick.tick().await;
            let s = server.stats();
            let rate = |now: u64, f: fn(&socketcluster_rs_server::StatsSnapshot) -> u64| {
                last.as_ref().map_or(0, |l| now.saturating_sub(f(l)))
            };
            let authenticated = crate::serve::metrics::authenticated_sockets(&server);
            let mut v = json!({
                "sockets": s.clients,
                "authenticatedSockets": authenticated,
                "channels": instances.visible_channels(s.channels),
                "messagesInPerSec": rate(s.messages_received, |l| l.messages_received),
                "messagesOutPerSec": rate(s.messages_sent, |l| l.messages_sent),
                "bytesInPerSec": rate(s.bytes_received, |l| l.bytes_received),
                "bytesOutPerSec": rate(s.bytes_sent, |l| l.bytes_sent),
                "slowConsumerDisconnects": s.slow_consumer_disconnects,
                "backplane": Value::Null,
                "instances": instances.snapshot()["instances"].clone(),
            });
            if let Some(probe) = &backplane {
                v["backplane"] = probe();
            }
            last = Some(s);
            if tx.send(event("stats", &v)).await.is_err() {
                return;
            }
        }
    });
    r
}

/// `events/channel?name=C`: a `publication` event per publication on the channel.
pub(super) async fn channel(op: &Operator, query: &str) -> Resp {
    let Some(name) = http::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
    else {
        return http::error(StatusCode::BAD_REQUEST, "give ?name=<channel>");
    };
    let mut sub = match op.server.exchange().subscribe(&name).await {
        Ok(s) => s,
        Err(e) => {
            return http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot watch {name}: {e}"),
            );
        }
    };
    let (tx, r) = stream();
    tokio::spawn(async move {
        // tell the browser at once that the watch is in place
        if tx
            .send(event("ready", &json!({"channel": name})))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                () = tx.closed() => return,
                p = sub.recv() => {
                    let Some(p) = p else { return };
                    let data = p
                        .raw_data()
                        .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
                        .unwrap_or(Value::Null);
                    if tx.send(event("publication", &json!({"channel": name, "data": data}))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    r
}
