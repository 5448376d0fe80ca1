//! Lifecycle events ([`Event`]) and the [`Events`] stream returned by
//! [`Client::events`](crate::Client::events).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use serde_json::{Map, Value};
use socketcluster_rs_protocol::{CloseCode, ErrorObject, WireError};
use tokio::sync::broadcast;

use crate::auth::{AuthState, ReauthReason};
use crate::channel::{ChannelState, Recovery};
use crate::command::{Command, WeakCommandSender};

/// The handshake result, as carried by the `connect` event and kept by the handle
/// ([`Client::status`](crate::Client::status)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConnectStatus {
    /// Socket id chosen by the server.
    pub id: Option<String>,
    /// The server's ping timeout (ms), adopted by the client.
    pub ping_timeout: Option<u64>,
    /// Whether the handshake authenticated the socket.
    pub is_authenticated: bool,
    /// Why the token sent in the handshake was rejected, if it was.
    pub auth_error: Option<ErrorObject>,
    /// The signed token that was sent in the handshake (JS `authToken` of the status).
    pub auth_token: Option<String>,
}

/// Lets the application send the pending subscriptions when
/// `auto_subscribe_on_connect` is off (JS `processPendingSubscriptions` in the `connect`
/// event). Equivalent to [`Client::process_pending_subscriptions`](crate::Client::process_pending_subscriptions).
#[derive(Clone, Debug)]
pub struct PendingSubscriptions {
    pub(crate) tx: WeakCommandSender,
}

impl PendingSubscriptions {
    /// Send `#subscribe` for every pending channel (descending priority).
    pub fn process(&self) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.try_send(Command::ProcessPending);
        }
    }
}

/// A client event. The names and payloads follow the JS client (docs/PROTOCOL.md 10); the
/// order of emission is documented in the crate docs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection attempt starts (`connecting`).
    Connecting,
    /// The handshake completed (`connect`).
    Connect {
        /// The handshake status.
        status: ConnectStatus,
        /// Send pending subscriptions (when `auto_subscribe_on_connect` is off).
        pending: PendingSubscriptions,
    },
    /// A connection attempt failed before its handshake completed (`connectAbort`).
    ConnectAbort {
        /// Close code.
        code: CloseCode,
        /// Reason (the close frame's, or the table text).
        reason: String,
    },
    /// An open connection closed (`disconnect`).
    Disconnect {
        /// Close code.
        code: CloseCode,
        /// Reason.
        reason: String,
    },
    /// Any close (`close`), after `connectAbort`/`disconnect`.
    Close {
        /// Close code.
        code: CloseCode,
        /// Reason.
        reason: String,
    },
    /// An error (`error`): `SocketProtocolError` for closes other than 1000/1001, a
    /// handshake error, a token-store failure...
    Error(WireError),
    /// A non-packet message (`raw`).
    Raw(String),
    /// `#subscribe` was sent (`subscribeRequest`).
    SubscribeRequest {
        /// Channel.
        channel: String,
        /// Options as sent (`waitForAuth`, `data`).
        options: Map<String, Value>,
    },
    /// The server confirmed a subscription (`subscribe`).
    Subscribe {
        /// Channel.
        channel: String,
        /// Options as sent.
        options: Map<String, Value>,
    },
    /// The server rejected a subscription (`subscribeFail`); the channel was removed.
    SubscribeFail {
        /// Channel.
        channel: String,
        /// The server's error.
        error: WireError,
        /// Options as sent.
        options: Map<String, Value>,
    },
    /// A subscribed channel stopped being subscribed (`unsubscribe`), also on
    /// disconnect (it goes back to pending).
    Unsubscribe {
        /// Channel.
        channel: String,
    },
    /// A channel changed state (`subscribeStateChange`).
    SubscribeStateChange {
        /// Channel.
        channel: String,
        /// Previous state.
        old: ChannelState,
        /// New state.
        new: ChannelState,
    },
    /// The server kicked the client out of a channel (`kickOut`).
    KickOut {
        /// Channel.
        channel: String,
        /// The server's message.
        message: Option<Value>,
    },
    /// The auth state changed (`authStateChange`).
    AuthStateChange {
        /// Previous state.
        old: AuthState,
        /// New state.
        new: AuthState,
        /// The signed token (when authenticated).
        signed_token: Option<String>,
        /// Its decoded claims (when authenticated).
        token: Option<Value>,
    },
    /// The client is authenticated with a token (`authenticate`), also when switching
    /// tokens.
    Authenticate {
        /// The signed token.
        signed_token: Option<String>,
        /// Its decoded claims.
        token: Option<Value>,
    },
    /// The client became unauthenticated (`deauthenticate`).
    Deauthenticate {
        /// The previous signed token.
        old_signed_token: Option<String>,
        /// Its decoded claims.
        old_token: Option<Value>,
    },
    /// The stored token was deleted (`removeAuthToken`).
    RemoveAuthToken {
        /// The deleted signed token.
        old_token: Option<String>,
    },
    /// Rust-only: the token provider is being called.
    Reauthenticating {
        /// Why.
        reason: ReauthReason,
    },
    /// Rust-only: a re-authentication attempt failed (the token provider returned an
    /// error or timed out, or the server did not accept its token, or a channel was
    /// rejected again right after one). Channels waiting for it stay pending.
    ReauthenticationFailed {
        /// What went wrong.
        error: String,
        /// When the next attempt starts (`None`: no further attempt on this connection,
        /// because nothing needs it any more).
        retry_in: Option<Duration>,
    },
    /// Rust-only, on a channel with history (docs/PROTOCOL.md 14.16): how a
    /// (re)subscription that asked to recover went, or that the live stream restarted
    /// (a new epoch: continuity is broken).
    Recovery {
        /// Channel.
        channel: String,
        /// The outcome.
        outcome: Recovery,
    },
    /// Rust-only: a consumer's buffer was full and messages were dropped.
    SlowConsumer {
        /// The channel, receiver or procedure name.
        name: String,
        /// Messages dropped so far for this consumer.
        dropped: u64,
    },
    /// Rust-only: this events stream fell behind and missed events.
    Lagged {
        /// How many were missed.
        missed: u64,
    },
}

impl Event {
    /// The JS event name (`connect`, `subscribeFail`, ...; Rust-only events have their
    /// own camelCase names).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Connecting => "connecting",
            Event::Connect { .. } => "connect",
            Event::ConnectAbort { .. } => "connectAbort",
            Event::Disconnect { .. } => "disconnect",
            Event::Close { .. } => "close",
            Event::Error(_) => "error",
            Event::Raw(_) => "raw",
            Event::SubscribeRequest { .. } => "subscribeRequest",
            Event::Subscribe { .. } => "subscribe",
            Event::SubscribeFail { .. } => "subscribeFail",
            Event::Unsubscribe { .. } => "unsubscribe",
            Event::SubscribeStateChange { .. } => "subscribeStateChange",
            Event::KickOut { .. } => "kickOut",
            Event::AuthStateChange { .. } => "authStateChange",
            Event::Authenticate { .. } => "authenticate",
            Event::Deauthenticate { .. } => "deauthenticate",
            Event::RemoveAuthToken { .. } => "removeAuthToken",
            Event::Reauthenticating { .. } => "reauthenticating",
            Event::ReauthenticationFailed { .. } => "reauthenticationFailed",
            Event::Recovery { .. } => "recovery",
            Event::SlowConsumer { .. } => "slowConsumer",
            Event::Lagged { .. } => "lagged",
        }
    }

    /// The channel this event is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Event::SubscribeRequest { channel, .. }
            | Event::Subscribe { channel, .. }
            | Event::SubscribeFail { channel, .. }
            | Event::Unsubscribe { channel }
            | Event::SubscribeStateChange { channel, .. }
            | Event::KickOut { channel, .. }
            | Event::Recovery { channel, .. } => Some(channel),
            _ => None,
        }
    }
}

/// Shared source of event streams; the connection task drops the sender when it ends,
/// which ends every stream.
#[derive(Clone, Debug)]
pub(crate) struct EventHub {
    tx: Arc<Mutex<Option<broadcast::Sender<Event>>>>,
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> (EventHub, broadcast::Sender<Event>) {
        let (tx, _) = broadcast::channel(capacity.max(1));
        (
            EventHub {
                tx: Arc::new(Mutex::new(Some(tx.clone()))),
            },
            tx,
        )
    }

    pub(crate) fn subscribe(&self) -> Events {
        let rx = self
            .tx
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(broadcast::Sender::subscribe));
        Events::new(rx)
    }

    pub(crate) fn close(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
    }
}

type BoxStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A stream of [`Event`]s from the moment it was created. It ends when the client has
/// been closed and its task has finished.
pub struct Events {
    inner: BoxStream,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    fn new(rx: Option<broadcast::Receiver<Event>>) -> Events {
        let inner: BoxStream = match rx {
            None => Box::pin(futures_util::stream::empty()),
            Some(rx) => Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Ok(e) => Some((e, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Some((Event::Lagged { missed: n }, rx))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            })),
        };
        Events { inner }
    }

    /// The next event (`None` once the client is closed).
    pub async fn recv(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.inner.as_mut().poll_next(cx)
    }
}
