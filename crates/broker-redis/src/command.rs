//! The commands a [`crate::RedisBroker`] sends to the task owning a node's link, each with
//! the [`Done`] through which the task answers.

use std::time::Instant;

use socketcluster_backplane::request::Done;

/// A publication waiting for the link.
pub(crate) struct Publish {
    /// The Redis channel name (prefix included).
    pub(crate) channel: String,
    /// The envelope.
    pub(crate) payload: Vec<u8>,
    pub(crate) queued: Instant,
    pub(crate) done: Done,
}

/// Subscribe or unsubscribe a Redis channel.
pub(crate) enum Control {
    Subscribe(String, Done),
    Unsubscribe(String, Done),
}
