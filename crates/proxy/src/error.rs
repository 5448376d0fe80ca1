//! Errors: configuration errors, and the named errors a client sees when a backend fails.

use std::time::Duration;

use socketcluster_rs_server::ErrorObject;

/// A proxy configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A hook URL is not an `http://` or `https://` URL.
    #[error("invalid hook URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another setting is invalid.
    #[error("invalid proxy setting: {0}")]
    Invalid(String),
}

/// Why a backend call failed. Each kind reaches the client as an error with a
/// distinct `name` (see [`ProxyError::to_error_object`]) and is counted in the
/// `socketcluster_proxy_errors_total{kind}` metric.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The backend could not be reached (connection refused, reset, TLS failure).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// No complete answer within the hook timeout.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The hook's concurrency limit was reached; the call was refused at once.
    #[error("too many backend calls in flight")]
    Overloaded,
    /// The answer was not HTTP 200 with a valid JSON body of the documented schema.
    #[error("bad backend answer: {0}")]
    BadResponse(String),
}

impl ProxyError {
    /// The metric label of this kind: `unavailable`, `timeout`, `overloaded` or
    /// `bad_response`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Unavailable(_) => "unavailable",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Overloaded => "overloaded",
            ProxyError::BadResponse(_) => "bad_response",
        }
    }

    /// The error name the client sees: `ProxyUnavailableError`, `ProxyTimeoutError`,
    /// `ProxyOverloadedError` or `ProxyBadResponseError`.
    pub fn name(&self) -> &'static str {
        match self {
            ProxyError::Unavailable(_) => "ProxyUnavailableError",
            ProxyError::Timeout(_) => "ProxyTimeoutError",
            ProxyError::Overloaded => "ProxyOverloadedError",
            ProxyError::BadResponse(_) => "ProxyBadResponseError",
        }
    }

    /// The error object sent to the client (`name`, `message`; backend details are
    /// logged, not sent).
    pub fn to_error_object(&self) -> ErrorObject {
        let message = match self {
            ProxyError::Unavailable(_) => "The application backend is unavailable".to_owned(),
            ProxyError::Timeout(d) => {
                format!(
                    "The application backend did not answer within {} ms",
                    d.as_millis()
                )
            }
            ProxyError::Overloaded => "Too many requests to the application backend".to_owned(),
            ProxyError::BadResponse(_) => {
                "The application backend gave an invalid answer".to_owned()
            }
        };
        ErrorObject::new(self.name(), message)
    }
}
