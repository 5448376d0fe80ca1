//! The handshake hook and the server-event loop: tokens granted at handshake are sent
//! once the socket is open, metadata is dropped at disconnection, and lifecycle
//! notifications are queued for the `notify` hook.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Map, Value};
use socketcluster_rs_server::middleware::{Block, HandshakeAction};
use socketcluster_rs_server::{ServerEvent, ServerEvents, Socket};

use crate::core::{Inner, answer_error, answer_grant, apply_grant, proxy_block};

pub(crate) async fn handshake(inner: Arc<Inner>, action: HandshakeAction) -> Result<(), Block> {
    let Some(hook) = inner.handshake.as_ref() else {
        return Ok(());
    };
    let mut body = Map::new();
    let mut info = inner.socket_info(&action.socket);
    // the socket is not authenticated yet: show the token the handshake carries
    info["authToken"] = action
        .auth_token
        .as_ref()
        .map_or(Value::Null, |c| Value::Object((**c).clone()));
    body.insert("socket".into(), info);
    if let Some(e) = &action.auth_token_error {
        body.insert("authTokenError".into(), e.to_value());
    }
    let answer = hook
        .call(body)
        .await
        .map_err(|e| Block::Error(proxy_block(&e)))?;
    if let Some(d) = answer.get("disconnect").and_then(Value::as_object) {
        let code = d
            .get("code")
            .and_then(Value::as_u64)
            .filter(|c| (4000..=4999).contains(c))
            .unwrap_or(4008) as u16;
        let reason = d
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("Rejected by the backend");
        return Err(Block::error("HandshakeRejectedError", reason).with_status_code(code));
    }
    if let Some(e) = answer_error(&answer) {
        return Err(Block::Error(e));
    }
    let grant = answer_grant(&answer).map_err(|e| Block::Error(proxy_block(&e)))?;
    let meta = answer.get("meta").filter(|m| !m.is_null()).cloned();
    inner.remember(&action.socket, meta, grant);
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn note(inner: &Inner, kind: &str, socket: &Socket, extra: &[(&str, Value)]) {
    let Some((_, batcher)) = inner.notify.as_ref() else {
        return;
    };
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    m.insert("time".into(), now_ms().into());
    m.insert("socket".into(), inner.socket_info(socket));
    for (k, v) in extra {
        m.insert((*k).to_owned(), v.clone());
    }
    batcher.push(Value::Object(m));
}

pub(crate) async fn run_events(inner: Arc<Inner>, mut events: ServerEvents) {
    while let Some(ev) = events.next().await {
        match ev {
            ServerEvent::Connection { socket, .. } => {
                if let Some(grant) = inner.take_grant(socket.id()) {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        if let Err(e) = apply_grant(&socket, grant).await {
                            tracing::warn!(socket = socket.id(), error = %e, "handshake token not set");
                        }
                        note(&inner, "connect", &socket, &[]);
                    });
                } else {
                    note(&inner, "connect", &socket, &[]);
                }
            }
            ServerEvent::Disconnection {
                socket,
                code,
                reason,
            } => {
                note(
                    &inner,
                    "disconnect",
                    &socket,
                    &[("code", code.into()), ("reason", reason.into())],
                );
                inner.forget(socket.id());
            }
            ServerEvent::ConnectionAbort { socket, .. } => inner.forget(socket.id()),
            ServerEvent::Subscription { socket, channel } => {
                note(&inner, "subscribe", &socket, &[("channel", channel.into())]);
            }
            ServerEvent::Unsubscription { socket, channel } => {
                note(
                    &inner,
                    "unsubscribe",
                    &socket,
                    &[("channel", channel.into())],
                );
            }
            ServerEvent::Authentication { socket, .. } => {
                note(&inner, "authenticate", &socket, &[])
            }
            ServerEvent::Deauthentication { socket, .. } => {
                note(&inner, "deauthenticate", &socket, &[]);
            }
            _ => {}
        }
    }
}
