//! The server-side socket: a cheap `Clone` handle ([`Socket`]) to one connection whose
//! state is owned by its own task (see `task/`).
//!
//! * `mod.rs`: the public handle and its methods;
//! * `outbox.rs`: the task's mailbox (outbound frames, batching, commands);
//! * `shared.rs`: the state shared by handles, the task and the channel hub;
//! * `streams.rs`: the socket's own procedure, receiver and message streams;
//! * `received.rs`: the requests and events handed to application code.

mod outbox;
mod received;
mod shared;
mod streams;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use socketcluster_rs_protocol::RawValue;
use tokio::sync::oneshot;

use crate::auth::{Claims, DeauthenticateOptions, SignOptions};
use crate::error::{AuthTokenError, InvokeError, KickOutError, SendError};
use crate::request::HandshakeRequest;

pub(crate) use outbox::{Cmd, FRAME_OVERHEAD, Out, free_if_empty};
pub use received::{ReceivedEvent, Request};
pub(crate) use shared::{AuthInfo, Outbound, ServerLink, SocketShared};
pub(crate) use streams::MessageKind;
pub use streams::{EventStream, MessageStream, RequestStream, STREAM_CAPACITY};

/// Connection state of a socket (docs/PROTOCOL.md 8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketState {
    /// WebSocket accepted, `#handshake` not completed.
    Connecting,
    /// Handshake completed.
    Open,
    /// Closed.
    Closed,
}

/// How a socket was closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code (1006 when the connection dropped without a close frame).
    pub code: u16,
    /// Reason: the close frame's reason, or the protocol table text for known codes.
    pub reason: String,
}

/// A connected client as seen by the server. Cheap to clone; all methods are safe to
/// call from any task (they send commands to the socket's own task).
///
/// ```no_run
/// # async fn demo(socket: socketcluster_rs_server::Socket) -> Result<(), Box<dyn std::error::Error>> {
/// use socketcluster_rs_server::auth::SignOptions;
/// socket.transmit("news", &"hello")?;
/// let answer = socket.invoke("clientProc", &serde_json::json!({"x": 1})).await?;
/// socket.set_auth_token(&serde_json::json!({"username": "bob"}), SignOptions::default()).await?;
/// socket.kick_out(Some("private"), Some(&"bye")).await.ok();
/// socket.disconnect(4100, "server kicked");
/// # let _ = answer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Socket {
    pub(crate) shared: Arc<SocketShared>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.shared.id)
            .field("state", &self.state())
            .finish()
    }
}

impl PartialEq for Socket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Socket {}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(data).map_err(|e| e.to_string())
}

impl Socket {
    /// The socket id (20 characters, like the JS server's).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Current state.
    pub fn state(&self) -> SocketState {
        self.shared.view().state
    }

    /// The HTTP upgrade request.
    pub fn request(&self) -> &HandshakeRequest {
        self.shared.request.get()
    }

    /// The peer address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.request.remote_addr()
    }

    /// Whether the socket is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.shared.view().auth.is_some()
    }

    /// The verified claims of the socket's token (JS `socket.authToken`).
    pub fn auth_token(&self) -> Option<Arc<Claims>> {
        self.shared.view().auth.as_ref().map(|a| a.claims.clone())
    }

    /// The signed token (JS `socket.signedAuthToken`).
    pub fn signed_auth_token(&self) -> Option<String> {
        self.shared
            .view()
            .auth
            .as_ref()
            .map(|a| a.signed.to_string())
    }

    /// Channels the socket is subscribed to, in subscription order.
    pub fn subscriptions(&self) -> Vec<String> {
        let view = self.shared.view();
        let mut v: Vec<(&Arc<str>, &u64)> = view.channels.iter().collect();
        v.sort_by_key(|(_, seq)| **seq);
        v.into_iter().map(|(c, _)| c.to_string()).collect()
    }

    /// Whether the socket is subscribed to a channel.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.shared.view().channels.contains_key(channel)
    }

    /// Bytes waiting in this socket's outbound queue.
    pub fn outbound_queued_bytes(&self) -> usize {
        self.shared.outbox.queued()
    }

    fn cmd(&self, cmd: Cmd) -> bool {
        self.shared.outbox.push_cmd(cmd)
    }

    /// Transmit an event to the client (`{"event":E,"data":D}`). Fails when the socket
    /// is not open.
    pub fn transmit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), SendError> {
        let raw = to_raw(data).map_err(SendError::Serialize)?;
        self.transmit_raw(event, Some(raw))
    }

    /// Transmit with raw JSON data (`None`: no `data` key).
    pub fn transmit_raw(&self, event: &str, data: Option<Box<RawValue>>) -> Result<(), SendError> {
        if self.state() != SocketState::Open
            || !self.cmd(Cmd::Transmit {
                event: event.to_owned(),
                data,
            })
        {
            return Err(SendError::NotOpen(format!("transmit {event}")));
        }
        Ok(())
    }

    /// Invoke a procedure on the client and wait for its answer (server `ackTimeout`).
    pub async fn invoke<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<Option<Box<RawValue>>, InvokeError> {
        let raw = to_raw(data).map_err(InvokeError::Serialize)?;
        self.invoke_raw(event, Some(raw), self.shared.ack_timeout)
            .await
    }

    /// Invoke with raw JSON data and an explicit timeout.
    pub async fn invoke_raw(
        &self,
        event: &str,
        data: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Option<Box<RawValue>>, InvokeError> {
        let (tx, rx) = oneshot::channel();
        if self.state() != SocketState::Open
            || !self.cmd(Cmd::Invoke {
                event: event.to_owned(),
                data,
                reply: tx,
            })
        {
            return Err(InvokeError::BadConnection(event.to_owned()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(InvokeError::BadConnection(event.to_owned())),
            Err(_) => Err(InvokeError::Timeout(event.to_owned())),
        }
    }

    /// Sign a token with `claims` and send it to the client (`#setAuthToken`); the socket
    /// becomes authenticated with it (JS `socket.setAuthToken`). Returns the signed token.
    /// If signing fails the socket is closed with 4002, like the JS server.
    pub async fn set_auth_token<T: Serialize + ?Sized>(
        &self,
        claims: &T,
        options: SignOptions,
    ) -> Result<String, AuthTokenError> {
        let Value::Object(claims) =
            serde_json::to_value(claims).map_err(|_| AuthTokenError::NotAnObject)?
        else {
            return Err(AuthTokenError::NotAnObject);
        };
        if self.state() != SocketState::Open {
            return Err(AuthTokenError::NotOpen);
        }
        let Some(server) = self.shared.server.upgrade() else {
            return Err(AuthTokenError::NotOpen);
        };
        let engine = server.auth_engine();
        let (signed, claims) = match engine.sign_claims(claims, &options) {
            Ok(s) => s,
            Err(e) => {
                self.cmd(Cmd::SignFailed {
                    message: e.0.clone(),
                });
                return Err(AuthTokenError::Sign(e));
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let (ack_tx, ack_rx) = if options.reject_on_failed_delivery {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if !self.cmd(Cmd::SetAuthToken {
            signed: signed.clone(),
            claims: Arc::new(claims),
            ack: ack_tx,
            reply: reply_tx,
        }) {
            return Err(AuthTokenError::NotOpen);
        }
        reply_rx.await.map_err(|_| AuthTokenError::NotOpen)??;
        if let Some(ack_rx) = ack_rx {
            let res = tokio::time::timeout(self.shared.ack_timeout, ack_rx).await;
            let err = match res {
                Ok(Ok(Ok(_))) => None,
                Ok(Ok(Err(e))) => Some(e.to_string()),
                Ok(Err(_)) => Some(
                    InvokeError::BadConnection(
                        socketcluster_rs_protocol::reserved::SET_AUTH_TOKEN.into(),
                    )
                    .to_string(),
                ),
                Err(_) => Some(InvokeError::Timeout("#setAuthToken".into()).to_string()),
            };
            if let Some(e) = err {
                return Err(AuthTokenError::Delivery(e));
            }
        }
        Ok(signed)
    }

    /// Remove the socket's authentication and tell the client (`#removeAuthToken`).
    pub async fn deauthenticate(&self) {
        let _ = self
            .deauthenticate_with(DeauthenticateOptions::default())
            .await;
    }

    /// Remove the socket's authentication and tell the client (JS
    /// `socket.deauthenticate(options)`). With
    /// [`DeauthenticateOptions::reject_on_failed_delivery`] `#removeAuthToken` is
    /// invoked and the client's acknowledgement awaited: a closed socket gives
    /// `BadConnectionError` ([`InvokeError::BadConnection`]), a silent client
    /// `TimeoutError` after the server `ack_timeout`; failures are also emitted as
    /// [`crate::ServerEvent::Warning`]. Without it, this never fails.
    ///
    /// ```no_run
    /// # async fn demo(socket: socketcluster_rs_server::Socket) {
    /// use socketcluster_rs_server::auth::DeauthenticateOptions;
    /// let confirmed = socket
    ///     .deauthenticate_with(DeauthenticateOptions::default().reject_on_failed_delivery(true))
    ///     .await;
    /// # let _ = confirmed; }
    /// ```
    pub async fn deauthenticate_with(
        &self,
        options: DeauthenticateOptions,
    ) -> Result<(), InvokeError> {
        const EVENT: &str = socketcluster_rs_protocol::reserved::REMOVE_AUTH_TOKEN;
        let (tx, rx) = oneshot::channel();
        let (ack_tx, ack_rx) = if options.reject_on_failed_delivery {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let sent = self.cmd(Cmd::Deauthenticate {
            notify: true,
            ack: ack_tx,
            reply: tx,
        });
        if sent {
            let _ = rx.await;
        }
        let Some(ack_rx) = ack_rx else {
            return Ok(());
        };
        let result = if !sent {
            Err(InvokeError::BadConnection(EVENT.to_owned()))
        } else {
            match tokio::time::timeout(self.shared.ack_timeout, ack_rx).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(_)) => Err(InvokeError::BadConnection(EVENT.to_owned())),
                Err(_) => Err(InvokeError::Timeout(EVENT.to_owned())),
            }
        };
        if let Err(e) = &result
            && let Some(server) = self.shared.server.upgrade()
        {
            server.warning(
                self,
                socketcluster_rs_protocol::ErrorObject::new(e.name(), e.to_string()),
            );
        }
        result
    }

    /// Remove the socket's authentication without telling the client (JS
    /// `deauthenticateSelf`).
    pub async fn deauthenticate_self(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd(Cmd::Deauthenticate {
            notify: false,
            ack: None,
            reply: tx,
        }) {
            let _ = rx.await;
        }
    }

    /// Buffer every packet sent to this socket and flush them as one JSON array frame
    /// every [`crate::ServerConfig::batch_interval`] (JS `socket.startBatching()`,
    /// docs/PROTOCOL.md 8.5). Responses, events, invokes and publications are batched;
    /// pings never are. Stays on until [`Socket::stop_batching`] or
    /// [`Socket::cancel_batching`] (a `batch_on_handshake` window ending does not
    /// stop it).
    pub fn start_batching(&self) {
        if self.state() == SocketState::Closed {
            return;
        }
        self.shared.app_batching.store(true, Ordering::Release);
        self.shared.outbox.start_buffering();
        self.cmd(Cmd::BatchTimer(true));
    }

    /// Flush the buffered packets and stop batching (JS `socket.stopBatching()`).
    pub fn stop_batching(&self) {
        self.shared.app_batching.store(false, Ordering::Release);
        self.shared.outbox.flush_batch(false);
        self.cmd(Cmd::BatchTimer(false));
    }

    /// Discard the buffered packets and stop batching (JS `socket.cancelBatching()`).
    pub fn cancel_batching(&self) {
        self.shared.app_batching.store(false, Ordering::Release);
        self.shared.outbox.cancel_batch();
        self.cmd(Cmd::BatchTimer(false));
    }

    /// Whether outbound packets are currently being buffered (explicit batching or the
    /// `batch_on_handshake` window).
    pub fn is_batching(&self) -> bool {
        self.shared.outbox.is_buffering()
    }

    /// Kick the socket out of a channel (or of every channel when `None`): sends
    /// `#kickOut {channel, message}` and unsubscribes it server-side. Fails for a channel
    /// the socket is not subscribed to (after still sending `#kickOut`, like JS).
    pub async fn kick_out<M: Serialize + ?Sized>(
        &self,
        channel: Option<&str>,
        message: Option<&M>,
    ) -> Result<(), KickOutError> {
        let message = match message {
            Some(m) => Some(to_raw(m).map_err(|_| KickOutError::NotOpen)?),
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        if !self.cmd(Cmd::KickOut {
            channel: channel.map(str::to_owned),
            message,
            reply: tx,
        }) {
            return Err(KickOutError::NotOpen);
        }
        rx.await.unwrap_or(Err(KickOutError::NotOpen))
    }

    /// Close with a code and reason (JS `socket.disconnect`).
    pub fn disconnect(&self, code: u16, reason: &str) {
        self.cmd(Cmd::Disconnect {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Drop the TCP connection without a close frame (JS `socket.terminate`; the client
    /// sees 1006).
    pub fn terminate(&self) {
        self.cmd(Cmd::Terminate);
    }

    /// Wait until the socket is closed.
    pub async fn closed(&self) -> CloseInfo {
        self.shared.wait_closed().await.clone()
    }
}
