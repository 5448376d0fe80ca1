//! Error types of the server API, one enum per operation family.

use socketcluster_rs_protocol::WireError;

/// Invalid configuration (detected by [`crate::Server::new`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// JWT keys or algorithms.
    #[error("invalid auth configuration: {0}")]
    Auth(String),
    /// TLS certificate or key.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// Any other option.
    #[error("invalid server configuration: {0}")]
    Invalid(String),
}

/// Starting or running the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or accepting failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Sending to a socket failed because it is not open (JS `BadConnectionError`:
/// `Socket transmit <event> event was aborted due to a bad connection`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The socket has not completed its handshake or is closed.
    #[error("Socket {0} event was aborted due to a bad connection")]
    NotOpen(String),
    /// The data could not be serialized to JSON.
    #[error("failed to serialize data: {0}")]
    Serialize(String),
}

/// A server → client invoke failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No response within the ack timeout (`TimeoutError`).
    #[error("Event response for {0} event timed out")]
    Timeout(String),
    /// The socket was not open or closed before the response arrived
    /// (`BadConnectionError`).
    #[error("Socket invoke {0} event was aborted due to a bad connection")]
    BadConnection(String),
    /// The client answered with an error.
    #[error("{0}")]
    Remote(WireError),
    /// Too many invokes are waiting for a response on this socket
    /// ([`crate::Limits::max_pending_invokes`]).
    #[error("too many pending invokes on this socket")]
    TooManyPending,
    /// The data could not be serialized to JSON.
    #[error("failed to serialize data: {0}")]
    Serialize(String),
}

impl InvokeError {
    /// The SocketCluster error name (`TimeoutError`, `BadConnectionError`, the remote
    /// error's name, ...).
    pub fn name(&self) -> &str {
        match self {
            InvokeError::Timeout(_) => "TimeoutError",
            InvokeError::BadConnection(_) => "BadConnectionError",
            InvokeError::Remote(e) => e.name(),
            InvokeError::TooManyPending => "ResourceLimitError",
            InvokeError::Serialize(_) => "InvalidArgumentsError",
        }
    }
}

/// `socket.set_auth_token` failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthTokenError {
    /// Called before the handshake completed or after close (`InvalidActionError`:
    /// `Cannot call setAuthToken before completing the handshake`).
    #[error("Cannot call setAuthToken before completing the handshake")]
    NotOpen,
    /// Signing failed; like the JS server, the socket was closed with 4002.
    #[error("Server failed to sign auth token: {0}")]
    Sign(#[from] SignError),
    /// The claims are not a JSON object.
    #[error("the auth token claims must be a JSON object")]
    NotAnObject,
    /// `reject_on_failed_delivery` was set and the client did not acknowledge
    /// (`AuthError`: `Failed to deliver auth token to client - <cause>`).
    #[error("Failed to deliver auth token to client - {0}")]
    Delivery(String),
}

/// A server-side publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker refused it.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The data could not be serialized to JSON.
    #[error("failed to serialize data: {0}")]
    Serialize(String),
}

/// `kick_out` failed for a channel the socket is not subscribed to (the JS server
/// still sends `#kickOut` in that case, and so do we).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KickOutError {
    /// The socket is not subscribed to the channel.
    #[error("Socket {socket_id} tried to unsubscribe from a channel which it is not subscribed to")]
    NotSubscribed {
        /// Socket id.
        socket_id: String,
    },
    /// The socket is not open.
    #[error("the socket is not open")]
    NotOpen,
}

/// Why signing failed (the JS server then closes the socket with 4002).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SignError(pub String);

/// A broker operation failed. Its message is embedded in the JS-compatible
/// `BrokerError` sent to the client (`Failed to subscribe socket to the <ch> channel -
/// <message>`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BrokerError(pub String);
