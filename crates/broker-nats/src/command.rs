//! The commands a [`crate::NatsBroker`] (and its event handler) send to the connection
//! task, each with the [`Done`] through which the task answers.

use std::time::Instant;

use bytes::Bytes;
use socketcluster_rs_backplane::request::Done;

/// Ordered control commands.
pub(crate) enum Control {
    Subscribe(String, Done),
    Unsubscribe(String, Done),
    /// A confirmation round trip (after a reconnect).
    Confirm(Done),
}

/// A publication waiting to be written.
pub(crate) struct Publish {
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
    pub(crate) queued: Instant,
    pub(crate) done: Done,
}
