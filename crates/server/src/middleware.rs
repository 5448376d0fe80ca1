//! Middleware (docs/PROTOCOL.md 9.2): async, composable hooks that can allow, block or
//! rewrite actions.
//!
//! | kind | action | block on the wire |
//! |---|---|---|
//! | [`HandshakeWsMiddleware`] | HTTP upgrade request | HTTP 401, body = error message |
//! | [`HandshakeMiddleware`] | `#handshake` | error reply with `statusCode` (default 4008), then close with that code |
//! | [`InboundRawMiddleware`] | every inbound message, as received (handshake, pongs, batches included) | message dropped silently (an invoke is never answered) |
//! | [`InboundMiddleware`] | transmit / invoke / subscribe / publishIn / authenticate | invoke, subscribe, invoked publish: error reply; transmit: dropped; authenticate: soft failure (`authError`) or, with `isBadToken`, error reply + `#removeAuthToken` |
//! | [`OutboundMiddleware`] | publishOut (per recipient) | that recipient does not get the publication |
//!
//! Several middlewares of one kind run in registration order; the first block wins and
//! data replaced by one is seen by the next. [`Block::Silent`] (JS `block()` without an
//! error, or an error with `silent: true`) sends `SilentMiddlewareBlockedError` with
//! message `The <action> AGAction was blocked by <type> middleware`.
//!
//! Closures implement the traits:
//!
//! ```
//! use socketcluster_rs_server::middleware::{Block, InboundAction, InboundKind};
//! # let server = socketcluster_rs_server::Server::new(Default::default()).unwrap();
//! server.add_inbound_middleware(|action: InboundAction| async move {
//!     if let InboundKind::Invoke { procedure } = action.kind() {
//!         if procedure == "admin" && !action.socket().is_authenticated() {
//!             return Err(Block::error("UnauthorizedError", "Log in first"));
//!         }
//!     }
//!     Ok(action)
//! });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use socketcluster_rs_protocol::{ErrorObject, RawValue, WireError};

use crate::auth::Claims;
pub use crate::request::HandshakeRequest;
use crate::socket::Socket;

/// Boxed future returned by middleware.
pub type MiddlewareFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a middleware blocks an action.
#[derive(Clone, Debug)]
pub enum Block {
    /// Block without telling why: the client gets `SilentMiddlewareBlockedError`.
    Silent,
    /// Block with this error (sent to the client as is, dehydrated).
    Error(WireError),
}

impl Block {
    /// Block with a named error.
    pub fn error(name: impl Into<String>, message: impl Into<String>) -> Self {
        Block::Error(WireError::Object(ErrorObject::new(name, message)))
    }

    /// Add an extra field to the error (no effect on [`Block::Silent`]).
    pub fn with(self, key: &str, value: impl Into<Value>) -> Self {
        match self {
            Block::Error(WireError::Object(o)) => {
                Block::Error(WireError::Object(o.with(key, value)))
            }
            other => other,
        }
    }

    /// Set `statusCode` (handshake middleware: the close code, 4000-4999; default 4008).
    pub fn with_status_code(self, code: u16) -> Self {
        self.with("statusCode", code)
    }

    /// Set `isBadToken` (authenticate actions: `true` makes it a hard failure).
    pub fn bad_token(self, yes: bool) -> Self {
        self.with("isBadToken", yes)
    }

    /// The error the client sees, for an action type and middleware type.
    pub(crate) fn into_wire(self, action: &str, middleware: &str) -> WireError {
        match self {
            Block::Silent => WireError::Object(
                socketcluster_rs_protocol::error::wire::silent_block(action, middleware),
            ),
            Block::Error(WireError::Object(o)) if o.get("silent") == Some(&Value::Bool(true)) => {
                WireError::Object(socketcluster_rs_protocol::error::wire::silent_block(
                    action, middleware,
                ))
            }
            Block::Error(e) => e,
        }
    }
}

impl From<ErrorObject> for Block {
    fn from(e: ErrorObject) -> Self {
        Block::Error(WireError::Object(e))
    }
}

impl From<WireError> for Block {
    fn from(e: WireError) -> Self {
        Block::Error(e)
    }
}

/// HTTP-level handshake middleware (JS `handshakeWS` action).
pub trait HandshakeWsMiddleware: Send + Sync + 'static {
    /// Allow (`Ok`) or refuse (HTTP 401) an upgrade request.
    fn handshake_ws(&self, request: Arc<HandshakeRequest>) -> MiddlewareFuture<Result<(), Block>>;
}

impl<F, Fut> HandshakeWsMiddleware for F
where
    F: Fn(Arc<HandshakeRequest>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Block>> + Send + 'static,
{
    fn handshake_ws(&self, request: Arc<HandshakeRequest>) -> MiddlewareFuture<Result<(), Block>> {
        Box::pin(self(request))
    }
}

/// The SocketCluster handshake as seen by [`HandshakeMiddleware`] (JS `handshakeSC`).
#[derive(Clone, Debug)]
pub struct HandshakeAction {
    /// The connecting socket (not open yet).
    pub socket: Socket,
    /// The token sent in the handshake, if any.
    pub signed_auth_token: Option<String>,
    /// The verified claims, when the token is valid.
    pub auth_token: Option<Arc<Claims>>,
    /// The verification error, when a token was supplied and rejected.
    pub auth_token_error: Option<ErrorObject>,
}

/// SocketCluster-level handshake middleware (JS `handshakeSC` action).
pub trait HandshakeMiddleware: Send + Sync + 'static {
    /// Allow or reject the handshake. A block replies with the error (with
    /// `statusCode`, default 4008) and closes the socket with that code.
    fn handshake(&self, action: HandshakeAction) -> MiddlewareFuture<Result<(), Block>>;
}

impl<F, Fut> HandshakeMiddleware for F
where
    F: Fn(HandshakeAction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Block>> + Send + 'static,
{
    fn handshake(&self, action: HandshakeAction) -> MiddlewareFuture<Result<(), Block>> {
        Box::pin(self(action))
    }
}

/// The kind of an inbound action.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum InboundKind {
    /// A transmitted event (JS `transmit`, field `receiver`).
    Transmit {
        /// Event name.
        receiver: String,
    },
    /// An RPC (JS `invoke`, field `procedure`).
    Invoke {
        /// Procedure name.
        procedure: String,
    },
    /// `#subscribe` (data: the subscription's `data` option).
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// Client `#publish` (data: the published data).
    PublishIn {
        /// Channel name.
        channel: String,
    },
    /// A token verified successfully (handshake or `#authenticate`).
    Authenticate {
        /// The signed token.
        signed_auth_token: String,
        /// Its claims.
        auth_token: Arc<Claims>,
    },
}

impl InboundKind {
    /// The JS action type name (`transmit`, `invoke`, `subscribe`, `publishIn`,
    /// `authenticate`).
    pub fn action_name(&self) -> &'static str {
        match self {
            InboundKind::Transmit { .. } => "transmit",
            InboundKind::Invoke { .. } => "invoke",
            InboundKind::Subscribe { .. } => "subscribe",
            InboundKind::PublishIn { .. } => "publishIn",
            InboundKind::Authenticate { .. } => "authenticate",
        }
    }
}

/// An inbound action (JS `AGAction` of the `inbound` middleware).
#[derive(Clone, Debug)]
pub struct InboundAction {
    pub(crate) socket: Socket,
    pub(crate) kind: InboundKind,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) auth_token_expired_error: Option<ErrorObject>,
}

impl InboundAction {
    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
    /// What the client asked for.
    pub fn kind(&self) -> &InboundKind {
        &self.kind
    }
    /// The channel of a subscribe or publishIn action.
    pub fn channel(&self) -> Option<&str> {
        match &self.kind {
            InboundKind::Subscribe { channel } | InboundKind::PublishIn { channel } => {
                Some(channel)
            }
            _ => None,
        }
    }
    /// The action's data as raw JSON.
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }
    /// The action's data deserialized (absent data deserializes from `null`).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }
    /// Replace the data for the rest of the pipeline (JS `allow({data})`).
    pub fn set_data<T: Serialize + ?Sized>(&mut self, data: &T) -> Result<(), serde_json::Error> {
        self.data = Some(serde_json::value::to_raw_value(data)?);
        Ok(())
    }
    /// Replace the data with raw JSON (`None`: no data).
    pub fn set_raw_data(&mut self, data: Option<Box<RawValue>>) {
        self.data = data;
    }
    /// Set when the socket's token expired and was removed just before this action
    /// (JS `action.authTokenExpiredError`; only with
    /// [`crate::ServerConfig::token_expiry_timer`] off, since the timer removes expired
    /// tokens before any packet can see them).
    pub fn auth_token_expired_error(&self) -> Option<&ErrorObject> {
        self.auth_token_expired_error.as_ref()
    }
}

/// Inbound middleware.
pub trait InboundMiddleware: Send + Sync + 'static {
    /// Return the (possibly modified) action to allow it, or a [`Block`].
    fn inbound(&self, action: InboundAction) -> MiddlewareFuture<Result<InboundAction, Block>>;
}

impl<F, Fut> InboundMiddleware for F
where
    F: Fn(InboundAction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<InboundAction, Block>> + Send + 'static,
{
    fn inbound(&self, action: InboundAction) -> MiddlewareFuture<Result<InboundAction, Block>> {
        Box::pin(self(action))
    }
}

/// One inbound WebSocket message before it is decoded (JS `inboundRaw` middleware,
/// action type `message`): every message, including the `#handshake`, pongs and
/// whole batches.
#[derive(Clone, Debug)]
pub struct InboundRawAction {
    pub(crate) socket: Socket,
    pub(crate) message: String,
    pub(crate) binary: bool,
}

impl InboundRawAction {
    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
    /// The message text (a binary frame's bytes are decoded as lossy UTF-8, the way the
    /// server decodes them).
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether the message arrived as a binary frame.
    pub fn is_binary(&self) -> bool {
        self.binary
    }
    /// Replace the message for the rest of the pipeline (JS `allow({data})`): the
    /// replacement is then decoded instead (as a text message).
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        self.binary = false;
    }
}

/// Inbound raw middleware (docs/PROTOCOL.md 9.2 `inboundRaw`). A block drops the message
/// silently (no reply even for an invoke; the error is emitted as a warning).
///
/// ```
/// use socketcluster_rs_server::middleware::InboundRawAction;
/// use socketcluster_rs_server::Block;
/// # let server = socketcluster_rs_server::Server::new(Default::default()).unwrap();
/// server.add_inbound_raw_middleware(|action: InboundRawAction| async move {
///     if action.message().len() > 10_000 {
///         return Err(Block::Silent);
///     }
///     Ok(action)
/// });
/// ```
pub trait InboundRawMiddleware: Send + Sync + 'static {
    /// Return the (possibly replaced) message to process it, or a [`Block`] to drop it.
    fn inbound_raw(
        &self,
        action: InboundRawAction,
    ) -> MiddlewareFuture<Result<InboundRawAction, Block>>;
}

impl<F, Fut> InboundRawMiddleware for F
where
    F: Fn(InboundRawAction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<InboundRawAction, Block>> + Send + 'static,
{
    fn inbound_raw(
        &self,
        action: InboundRawAction,
    ) -> MiddlewareFuture<Result<InboundRawAction, Block>> {
        Box::pin(self(action))
    }
}

/// A publication about to be sent to one socket (JS `publishOut`).
#[derive(Clone, Debug)]
pub struct PublishOutAction {
    pub(crate) socket: Socket,
    pub(crate) channel: String,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) modified: bool,
}

impl PublishOutAction {
    /// The recipient.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
    /// The data as raw JSON.
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }
    /// The data deserialized.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }
    /// Send different data to this recipient (the frame is re-encoded for it only).
    pub fn set_data<T: Serialize + ?Sized>(&mut self, data: &T) -> Result<(), serde_json::Error> {
        self.data = Some(serde_json::value::to_raw_value(data)?);
        self.modified = true;
        Ok(())
    }
}

/// Outbound middleware (per recipient).
pub trait OutboundMiddleware: Send + Sync + 'static {
    /// Return the (possibly modified) action to deliver, or a [`Block`] to skip this
    /// recipient.
    fn publish_out(
        &self,
        action: PublishOutAction,
    ) -> MiddlewareFuture<Result<PublishOutAction, Block>>;
}

impl<F, Fut> OutboundMiddleware for F
where
    F: Fn(PublishOutAction) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<PublishOutAction, Block>> + Send + 'static,
{
    fn publish_out(
        &self,
        action: PublishOutAction,
    ) -> MiddlewareFuture<Result<PublishOutAction, Block>> {
        Box::pin(self(action))
    }
}

/// The registered middleware chains (snapshots are cheap `Arc` clones).
#[derive(Default)]
pub(crate) struct Middlewares {
    pub(crate) handshake_ws: std::sync::RwLock<Arc<[Arc<dyn HandshakeWsMiddleware>]>>,
    pub(crate) handshake: std::sync::RwLock<Arc<[Arc<dyn HandshakeMiddleware>]>>,
    pub(crate) inbound_raw: std::sync::RwLock<Arc<[Arc<dyn InboundRawMiddleware>]>>,
    pub(crate) inbound: std::sync::RwLock<Arc<[Arc<dyn InboundMiddleware>]>>,
    pub(crate) outbound: std::sync::RwLock<Arc<[Arc<dyn OutboundMiddleware>]>>,
}

pub(crate) fn snapshot<T: ?Sized>(lock: &std::sync::RwLock<Arc<[Arc<T>]>>) -> Arc<[Arc<T>]> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

pub(crate) fn push<T: ?Sized>(lock: &std::sync::RwLock<Arc<[Arc<T>]>>, item: Arc<T>) {
    let mut g = lock.write().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<Arc<T>> = g.iter().cloned().collect();
    v.push(item);
    *g = Arc::from(v.into_boxed_slice());
}

pub(crate) async fn run_inbound(
    chain: Arc<[Arc<dyn InboundMiddleware>]>,
    mut action: InboundAction,
) -> Result<InboundAction, Block> {
    for m in chain.iter() {
        action = m.inbound(action).await?;
    }
    Ok(action)
}

pub(crate) async fn run_inbound_raw(
    chain: Arc<[Arc<dyn InboundRawMiddleware>]>,
    mut action: InboundRawAction,
) -> Result<InboundRawAction, Block> {
    for m in chain.iter() {
        action = m.inbound_raw(action).await?;
    }
    Ok(action)
}

pub(crate) async fn run_outbound(
    chain: Arc<[Arc<dyn OutboundMiddleware>]>,
    mut action: PublishOutAction,
) -> Result<PublishOutAction, Block> {
    for m in chain.iter() {
        action = m.publish_out(action).await?;
    }
    Ok(action)
}

pub(crate) async fn run_handshake(
    chain: Arc<[Arc<dyn HandshakeMiddleware>]>,
    action: HandshakeAction,
) -> Result<(), Block> {
    for m in chain.iter() {
        m.handshake(action.clone()).await?;
    }
    Ok(())
}

pub(crate) async fn run_handshake_ws(
    chain: Arc<[Arc<dyn HandshakeWsMiddleware>]>,
    request: Arc<HandshakeRequest>,
) -> Result<(), Block> {
    for m in chain.iter() {
        m.handshake_ws(request.clone()).await?;
    }
    Ok(())
}
