//! The raw ceiling for `socketcluster bench`: a minimal tokio-tungstenite broadcast /
//! echo server with none of SocketCluster's machinery (no auth, no middleware, no
//! per-socket task state, no limits, no pings).
//!
//! It understands just enough of the wire format for the same load generator
//! (`socketcluster bench rpc|fanout`) to drive it: a `#handshake` is answered with a
//! fixed status, `#subscribe` adds the socket to the channel's subscriber list,
//! `#publish` wraps the received data once into a `#publish` frame and hands the same
//! bytes to every subscriber's queue, and any other invoke is echoed. Writes are
//! batched per socket (feed + flush), with the same WebSocket buffer sizes as our
//! server.
//!
//! ```text
//! target/release/examples/raw_broadcast --port 8002
//! ```
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Listen port (0: any free port).
    #[arg(long, default_value_t = 8002)]
    port: u16,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

type Tx = mpsc::UnboundedSender<Utf8Bytes>;
/// The subscribers of one channel: (connection id, its queue).
type Subscribers = Arc<Vec<(u64, Tx)>>;

/// channel -> subscribers, copy-on-write: publishing only clones an `Arc`.
#[derive(Default)]
struct Channels {
    map: RwLock<HashMap<String, Subscribers>>,
}

impl Channels {
    fn subscribers(&self, channel: &str) -> Option<Subscribers> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned()
    }

    fn add(&self, channel: &str, id: u64, tx: Tx) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(channel.to_owned()).or_default();
        let mut v = (**entry).clone();
        if !v.iter().any(|(i, _)| *i == id) {
            v.push((id, tx));
        }
        *entry = Arc::new(v);
    }

    fn remove_all(&self, id: u64, channels: &[String]) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for c in channels {
            if let Some(entry) = map.get_mut(c) {
                let v: Vec<_> = entry.iter().filter(|(i, _)| *i != id).cloned().collect();
                if v.is_empty() {
                    map.remove(c);
                } else {
                    *entry = Arc::new(v);
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Packet<'a> {
    #[serde(borrow, default)]
    event: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    cid: Option<u64>,
}

#[derive(Deserialize)]
struct ChannelOnly<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(8192)
        .max_write_buffer_size(usize::MAX)
}

async fn connection(stream: TcpStream, id: u64, channels: Arc<Channels>) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            let mut n = 1;
            while n < 256 {
                match rx.try_recv() {
                    Ok(t) => {
                        if sink.feed(Message::Text(t)).await.is_err() {
                            return;
                        }
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut subscribed: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = source.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        if text.is_empty() {
            continue; // pong
        }
        let Ok(p) = serde_json::from_str::<Packet<'_>>(text.as_str()) else {
            continue;
        };
        let reply = |body: Option<&str>| {
            if let Some(cid) = p.cid {
                let frame = match body {
                    Some(b) => format!("{{\"rid\":{cid},\"data\":{b}}}"),
                    None => format!("{{\"rid\":{cid}}}"),
                };
                let _ = tx.send(Utf8Bytes::from(frame));
            }
        };
        match p.event {
            Some("#handshake") => reply(Some(&format!(
                "{{\"id\":\"raw-{id}\",\"pingTimeout\":3600000,\"isAuthenticated\":false}}"
            ))),
            Some("#subscribe") => {
                if let Some(c) = p
                    .data
                    .and_then(|d| serde_json::from_str::<ChannelOnly<'_>>(d.get()).ok())
                {
                    channels.add(&c.channel, id, tx.clone());
                    subscribed.push(c.channel.into_owned());
                }
                reply(None);
            }
            Some("#publish") => {
                if let Some(d) = p.data
                    && let Ok(c) = serde_json::from_str::<ChannelOnly<'_>>(d.get())
                    && let Some(subs) = channels.subscribers(&c.channel)
                {
                    let frame =
                        Utf8Bytes::from(format!("{{\"event\":\"#publish\",\"data\":{}}}", d.get()));
                    for (_, s) in subs.iter() {
                        let _ = s.send(frame.clone());
                    }
                }
                reply(None);
            }
            Some(_) => reply(p.data.map(RawValue::get)),
            None => {}
        }
    }
    channels.remove_all(id, &subscribed);
    drop(tx);
    let _ = writer.await;
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    eprintln!("listening addr={}", listener.local_addr()?);
    let channels = Arc::new(Channels::default());
    let next = AtomicU64::new(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(stream, id, channels.clone()));
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raw_broadcast: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_broadcast: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
