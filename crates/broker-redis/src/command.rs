//! The commands a [`crate::RedisBroker`] sends to the task owning a node's link, each with
//! the [`Done`] through which the task answers.

use std::time::Instant;

use socketcluster_rs_backplane::request::Done;
use socketcluster_rs_server::broker::BrokerError;
use tokio::sync::oneshot;

/// A publication waiting for the link.
pub(crate) struct Publish {
    /// The Redis channel name (prefix included).
    pub(crate) channel: String,
    /// The envelope.
    pub(crate) payload: Vec<u8>,
    pub(crate) queued: Instant,
    pub(crate) done: Done,
}

/// Subscribe or unsubscribe a Redis channel, or read a history.
pub(crate) enum Control {
    Subscribe(String, Done),
    Unsubscribe(String, Done),
    Read(HistoryRead),
}

/// A publication on a channel with history: the publish script's arguments.
pub(crate) struct HistoryPublish {
    pub(crate) stream_key: String,
    pub(crate) meta_key: String,
    /// ARGV of the script (see `history::PUBLISH_LUA`).
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) queued: Instant,
    pub(crate) done: oneshot::Sender<Result<redis::Value, BrokerError>>,
}

/// What waits in a node's publish queue, in publish order.
pub(crate) enum Outgoing {
    Plain(Publish),
    History(HistoryPublish),
}

/// A history read: the read script's keys and arguments.
pub(crate) struct HistoryRead {
    pub(crate) stream_key: String,
    pub(crate) meta_key: String,
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) done: oneshot::Sender<Result<redis::Value, BrokerError>>,
}
