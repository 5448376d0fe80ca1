//! Server events (JS server events, docs/PROTOCOL.md 9.3/9.4) and counters.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use socketcluster_rs_protocol::ErrorObject;
use tokio::sync::broadcast;

use crate::auth::Claims;
use crate::socket::Socket;

/// Authentication state of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthState {
    /// No valid token.
    Unauthenticated,
    /// Authenticated with a token.
    Authenticated,
}

/// Something that happened on the server. Delivered to every [`ServerEvents`] stream
/// (a bounded broadcast: a consumer that falls behind by more than
/// [`crate::ServerConfig::event_buffer`] events skips the oldest ones).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A WebSocket was accepted (JS `handshake`).
    Handshake {
        /// The socket (state `Connecting`).
        socket: Socket,
    },
    /// A socket completed its handshake (JS `connection`).
    Connection {
        /// The socket.
        socket: Socket,
        /// Whether it authenticated with the handshake token.
        is_authenticated: bool,
        /// The rejected token's error, if a token was supplied and rejected.
        auth_error: Option<ErrorObject>,
    },
    /// A socket closed before completing its handshake (JS `connectionAbort`).
    ConnectionAbort {
        /// The socket.
        socket: Socket,
        /// Close code.
        code: u16,
        /// Close reason (or the table text of the code).
        reason: String,
    },
    /// An open socket closed (JS `disconnection`).
    Disconnection {
        /// The socket.
        socket: Socket,
        /// Close code.
        code: u16,
        /// Close reason (or the table text of the code).
        reason: String,
    },
    /// A socket subscribed to a channel (JS `subscription`).
    Subscription {
        /// The socket.
        socket: Socket,
        /// Channel.
        channel: String,
    },
    /// A socket left a channel (JS `unsubscription`).
    Unsubscription {
        /// The socket.
        socket: Socket,
        /// Channel.
        channel: String,
    },
    /// A socket authenticated (JS `authentication`).
    Authentication {
        /// The socket.
        socket: Socket,
        /// Claims of its token.
        auth_token: Arc<Claims>,
    },
    /// A socket's auth state changed (JS `authenticationStateChange`).
    AuthenticationStateChange {
        /// The socket.
        socket: Socket,
        /// Previous state.
        old_state: AuthState,
        /// New state.
        new_state: AuthState,
    },
    /// A socket was deauthenticated (JS `deauthentication`).
    Deauthentication {
        /// The socket.
        socket: Socket,
        /// Claims of the removed token, if it had one.
        old_auth_token: Option<Arc<Claims>>,
    },
    /// A client presented a bad token (JS `badSocketAuthToken`).
    BadSocketAuthToken {
        /// The socket.
        socket: Socket,
        /// The verification error.
        auth_error: ErrorObject,
    },
    /// A middleware blocked an action, or a socket-level error was emitted (JS `warning`).
    Warning {
        /// The socket, if any.
        socket: Option<Socket>,
        /// The error.
        error: ErrorObject,
    },
}

/// A `Stream` of [`ServerEvent`]s (see [`crate::Server::events`]).
pub struct ServerEvents {
    inner: Pin<Box<dyn Stream<Item = ServerEvent> + Send>>,
}

impl ServerEvents {
    pub(crate) fn new(rx: broadcast::Receiver<ServerEvent>) -> Self {
        let s = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((e, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        ServerEvents { inner: Box::pin(s) }
    }

    /// The next event (`None` when the server is gone). A lagging consumer skips the
    /// events it missed.
    pub async fn recv(&mut self) -> Option<ServerEvent> {
        futures_util::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for ServerEvents {
    type Item = ServerEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) handshakes_completed: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) raw_messages: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) http_rejections: AtomicU64,
}

/// A snapshot of the server counters (for an HTTP API or metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Open (handshake completed) sockets.
    pub clients: usize,
    /// Sockets waiting for their handshake.
    pub pending_clients: usize,
    /// Channels with at least one local subscriber.
    pub channels: usize,
    /// WebSocket connections accepted since start.
    pub connections_accepted: u64,
    /// Handshakes completed since start.
    pub handshakes_completed: u64,
    /// WebSocket data messages received.
    pub messages_received: u64,
    /// Bytes of WebSocket data messages received.
    pub bytes_received: u64,
    /// WebSocket text messages sent (including pings).
    pub messages_sent: u64,
    /// Bytes of WebSocket text messages sent.
    pub bytes_sent: u64,
    /// Publications accepted (client `#publish` and exchange publishes).
    pub publications: u64,
    /// Messages that were not packets (JS `raw` events).
    pub raw_messages: u64,
    /// Sockets dropped for exceeding the outbound queue limit.
    pub slow_consumer_disconnects: u64,
    /// HTTP upgrade requests refused (400/401/403/...).
    pub http_rejections: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_accepted: l(&self.connections_accepted),
            handshakes_completed: l(&self.handshakes_completed),
            messages_received: l(&self.messages_received),
            bytes_received: l(&self.bytes_received),
            messages_sent: l(&self.messages_sent),
            bytes_sent: l(&self.bytes_sent),
            publications: l(&self.publications),
            raw_messages: l(&self.raw_messages),
            slow_consumer_disconnects: l(&self.slow_consumer_disconnects),
            http_rejections: l(&self.http_rejections),
            ..StatsSnapshot::default()
        }
    }
}
