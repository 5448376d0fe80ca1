//! Errors of [`crate::NatsBroker::connect`].
//!
//! Errors of broker operations are the server's
//! [`socketcluster_rs_server::broker::BrokerError`].

/// Setting up a [`crate::NatsBroker`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed.
    #[error("invalid NATS URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The subject prefix is not valid (see [`crate::channel_subject`]).
    #[error("invalid NATS subject prefix {0:?}: use dot-separated tokens of A-Z a-z 0-9 - _")]
    InvalidPrefix(String),
    /// The server could not be reached at start-up, or the connection failed its first
    /// round trip.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL(s).
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
