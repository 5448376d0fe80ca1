//! Errors of [`crate::RedisBroker::connect`].
//!
//! Errors of broker operations (`publish`, `subscribe`) are the server's
//! [`socketcluster_rs_server::broker::BrokerError`]: the server turns them into the
//! SocketCluster `BrokerError` reply its client sees.

/// Setting up a [`crate::RedisBroker`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL list was empty.
    #[error("no Redis URL given")]
    NoUrls,
    /// A URL could not be parsed, or uses an unsupported scheme.
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The same node was listed twice.
    #[error("Redis node {0} is listed twice")]
    DuplicateNode(String),
    /// A node could not be reached (or the cluster could not be discovered) at start-up.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The node (or the seed list, in cluster mode).
        url: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration does not match the servers (e.g. several URLs of which one is a
    /// Redis Cluster node with [`crate::Topology::Nodes`]).
    #[error("{0}")]
    Config(String),
}
