//! Backplane status: [`Health`] (for `/health`) and [`Stats`] (counters for `/metrics`).

use std::sync::Mutex;

/// Connection state of the backplane as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneState {
    /// Every node is connected and every channel with local subscribers is subscribed.
    Connected,
    /// Some nodes are connected, others are reconnecting: channels hashed to a
    /// disconnected node are local-only until it is back. Only reported by the Redis
    /// broker (some of several nodes down); the NATS broker has a single connection.
    Degraded,
    /// No node is connected: the server only serves local traffic and publications fail.
    Disconnected,
}

impl BackplaneState {
    /// `"connected"`, `"degraded"` or `"disconnected"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackplaneState::Connected => "connected",
            BackplaneState::Degraded => "degraded",
            BackplaneState::Disconnected => "disconnected",
        }
    }
}

/// A snapshot of the backplane's health.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Health {
    /// Aggregated state.
    pub state: BackplaneState,
    /// One entry per connection: per Redis node (one for the whole cluster in cluster
    /// mode), or one for the NATS server (or server list).
    pub nodes: Vec<NodeHealth>,
}

impl Health {
    /// A snapshot made of the aggregated state and one entry per connection.
    pub fn new(state: BackplaneState, nodes: Vec<NodeHealth>) -> Health {
        Health { state, nodes }
    }

    /// Whether every node is connected.
    pub fn is_connected(&self) -> bool {
        self.state == BackplaneState::Connected
    }
}

/// Health of one node (one connection).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeHealth {
    /// Redis: `host:port` (or the seed list in cluster mode). NATS: the URL(s) given to
    /// `connect`.
    pub address: String,
    /// Connected and resubscribed.
    pub connected: bool,
    /// Channels subscribed on this node right now.
    pub channels: usize,
    /// The last connection error, if the node is disconnected.
    pub last_error: Option<String>,
}

impl NodeHealth {
    /// The health of one node. `last_error` is only reported while disconnected: it is
    /// dropped when `connected` is true.
    pub fn new(
        address: String,
        connected: bool,
        channels: usize,
        last_error: impl FnOnce() -> Option<String>,
    ) -> NodeHealth {
        NodeHealth {
            address,
            connected,
            channels,
            last_error: if connected { None } else { last_error() },
        }
    }
}

/// The last connection error of a node, shared between its connection task and
/// [`Health`] snapshots.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<String>>);

impl LastError {
    /// The error recorded last, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Record an error, or clear it with `None`.
    pub fn set(&self, error: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// Counters since the broker was created (the same values are reported through the
/// `metrics` facade, see [`crate::metric_names`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Publications written to the backplane and confirmed by it.
    pub published: u64,
    /// Publications that could not be written (the publisher got an error).
    pub publish_failures: u64,
    /// Publications received from other instances and delivered locally.
    pub received: u64,
    /// Own publications coming back from the backplane, skipped (already delivered locally).
    pub echoes_skipped: u64,
    /// Received messages that were not valid envelopes (dropped).
    pub invalid_messages: u64,
    /// Successful reconnections after a lost connection.
    pub reconnects: u64,
    /// Channels currently subscribed on the backplane.
    pub channels_subscribed: u64,
}
