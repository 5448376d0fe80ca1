//! Error types, one per operation family. Each has a `kind()` to match on and keeps
//! the SocketCluster error name where one applies (`TimeoutError`,
//! `BadConnectionError`, or the peer's own name for a remote error).

use std::time::Duration;

use socketcluster_rs_protocol::{CloseCode, WireError};

/// Whether a connection was lost before or after its handshake completed (the JS
/// `BadConnectionError.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadConnectionType {
    /// The handshake had not completed (`connectAbort`).
    ConnectAbort,
    /// The handshake had completed (`disconnect`).
    Disconnect,
}

/// An invoke (also `publish` and `authenticate`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// `TimeoutError`: no response within the ack timeout.
    #[error("TimeoutError: Event response for {event} event timed out")]
    Timeout {
        /// The event (procedure) name.
        event: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// `BadConnectionError`: the connection closed before the response arrived.
    #[error("BadConnectionError: Event {event} was aborted due to a bad connection")]
    BadConnection {
        /// The event name.
        event: String,
        /// Close code.
        code: CloseCode,
        /// Close reason as reported locally.
        reason: String,
        /// Before or after the handshake.
        kind: BadConnectionType,
    },
    /// The peer answered with an error (name, message and extra fields kept).
    #[error("{0}")]
    Remote(WireError),
    /// The request data could not be serialized.
    #[error("could not serialize the request data: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The response data could not be deserialized into the requested type.
    #[error("could not deserialize the response data: {0}")]
    Deserialize(#[source] serde_json::Error),
    /// The client was closed with [`Client::close`](crate::Client::close).
    #[error("the client is closed")]
    Closed,
}

/// What kind of [`InvokeError`] this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvokeErrorKind {
    /// [`InvokeError::Timeout`].
    Timeout,
    /// [`InvokeError::BadConnection`].
    BadConnection,
    /// [`InvokeError::Remote`].
    Remote,
    /// [`InvokeError::Serialize`].
    Serialize,
    /// [`InvokeError::Deserialize`].
    Deserialize,
    /// [`InvokeError::Closed`].
    Closed,
}

impl InvokeError {
    /// The kind.
    pub fn kind(&self) -> InvokeErrorKind {
        match self {
            InvokeError::Timeout { .. } => InvokeErrorKind::Timeout,
            InvokeError::BadConnection { .. } => InvokeErrorKind::BadConnection,
            InvokeError::Remote(_) => InvokeErrorKind::Remote,
            InvokeError::Serialize(_) => InvokeErrorKind::Serialize,
            InvokeError::Deserialize(_) => InvokeErrorKind::Deserialize,
            InvokeError::Closed => InvokeErrorKind::Closed,
        }
    }

    /// The SocketCluster error name (`TimeoutError`, `BadConnectionError`, the remote
    /// error's name, or `Error` for local failures).
    pub fn name(&self) -> &str {
        match self {
            InvokeError::Timeout { .. } => "TimeoutError",
            InvokeError::BadConnection { .. } => "BadConnectionError",
            InvokeError::Remote(e) => e.name(),
            _ => "Error",
        }
    }

    /// The remote error, if this is one.
    pub fn remote(&self) -> Option<&WireError> {
        match self {
            InvokeError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

/// `publish` uses the invoke machinery (`#publish` with acknowledgement).
pub type PublishError = InvokeError;

/// `authenticate` uses the invoke machinery (`#authenticate`).
pub type AuthenticateError = InvokeError;

/// A fire-and-forget send failed locally (nothing is ever reported by the peer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransmitError {
    /// The data could not be serialized.
    #[error("could not serialize the data: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Nothing was sent: `command_capacity` commands are already waiting for the
    /// connection task (see [`ClientOptions::command_capacity`](crate::ClientOptions::command_capacity)).
    /// Retry later, or use an `async` call, which waits for room.
    #[error("the client's command queue is full")]
    Full,
}

/// A subscription failed or ended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The server rejected `#subscribe` (`subscribeFail`); the channel was removed.
    #[error("subscription rejected: {0}")]
    Rejected(WireError),
    /// The server kicked the client out of the channel.
    #[error("kicked out of the channel")]
    KickedOut,
    /// The channel was unsubscribed.
    #[error("the channel was unsubscribed")]
    Unsubscribed,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The subscription data could not be serialized.
    #[error("could not serialize the subscription data: {0}")]
    Serialize(String),
}

/// What kind of [`SubscribeError`] this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeErrorKind {
    /// [`SubscribeError::Rejected`].
    Rejected,
    /// [`SubscribeError::KickedOut`].
    KickedOut,
    /// [`SubscribeError::Unsubscribed`].
    Unsubscribed,
    /// [`SubscribeError::Closed`].
    Closed,
    /// [`SubscribeError::Serialize`].
    Serialize,
}

impl SubscribeError {
    /// The kind.
    pub fn kind(&self) -> SubscribeErrorKind {
        match self {
            SubscribeError::Rejected(_) => SubscribeErrorKind::Rejected,
            SubscribeError::KickedOut => SubscribeErrorKind::KickedOut,
            SubscribeError::Unsubscribed => SubscribeErrorKind::Unsubscribed,
            SubscribeError::Closed => SubscribeErrorKind::Closed,
            SubscribeError::Serialize(_) => SubscribeErrorKind::Serialize,
        }
    }
}

/// Building the client or establishing a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is invalid (or not `ws://`/`wss://`).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A header name or value is invalid.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The connection attempt was aborted (`connectAbort`): WebSocket failure (1006),
    /// connect timeout (4007), handshake failure (4003 or the server's `statusCode`).
    #[error("connection aborted with code {code}: {reason}")]
    Aborted {
        /// Close code.
        code: CloseCode,
        /// Reason as reported locally (e.g. `TimeoutError: Event response for #handshake event timed out`).
        reason: String,
        /// The error behind it when there is one (handshake rejection).
        error: Option<Box<WireError>>,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// What kind of [`ConnectError`] this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// [`ConnectError::InvalidUrl`].
    InvalidUrl,
    /// [`ConnectError::InvalidHeader`].
    InvalidHeader,
    /// [`ConnectError::Tls`].
    Tls,
    /// [`ConnectError::Aborted`].
    Aborted,
    /// [`ConnectError::Closed`].
    Closed,
}

impl ConnectError {
    /// The kind.
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            ConnectError::InvalidUrl(_) => ConnectErrorKind::InvalidUrl,
            ConnectError::InvalidHeader(_) => ConnectErrorKind::InvalidHeader,
            ConnectError::Tls(_) => ConnectErrorKind::Tls,
            ConnectError::Aborted { .. } => ConnectErrorKind::Aborted,
            ConnectError::Closed => ConnectErrorKind::Closed,
        }
    }
}

/// A token store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("token store: {0}")]
pub struct TokenStoreError(#[from] pub std::io::Error);

/// Answering a server invoke failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The request was already answered.
    #[error("the request was already answered")]
    AlreadyAnswered,
    /// The data could not be serialized.
    #[error("could not serialize the response data: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Nothing was sent: the client's command queue is full (see
    /// [`ClientOptions::command_capacity`](crate::ClientOptions::command_capacity)); the
    /// request may be answered again.
    #[error("the client's command queue is full")]
    Full,
}
