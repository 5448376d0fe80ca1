//! State shared by the broker handle, the connection tasks and the connections' push
//! handlers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use socketcluster_rs_server::broker::Delivery;

use socketcluster_rs_backplane::{
    BackplaneState, Counters, InstanceId, LastError, StateSender, inbound,
};

/// Status of one node's connection task.
pub(crate) struct NodeStatus {
    pub(crate) address: String,
    pub(crate) connected: AtomicBool,
    pub(crate) channels: AtomicUsize,
    pub(crate) last_error: LastError,
}

impl NodeStatus {
    pub(crate) fn new(address: String) -> NodeStatus {
        NodeStatus {
            address,
            connected: AtomicBool::new(false),
            channels: AtomicUsize::new(0),
            last_error: LastError::default(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

pub(crate) struct Shared {
    pub(crate) instance: InstanceId,
    pub(crate) prefix: String,
    pub(crate) delivery: OnceLock<Delivery>,
    pub(crate) counters: Counters,
    pub(crate) state: StateSender,
    pub(crate) nodes: Vec<std::sync::Arc<NodeStatus>>,
}

impl Shared {
    /// The Redis channel name of a SocketCluster channel.
    pub(crate) fn redis_channel(&self, channel: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + channel.len());
        s.push_str(&self.prefix);
        s.push_str(channel);
        s
    }

    /// A message arrived from the backplane (runs on the connection's reader: must not
    /// block; `Delivery::deliver` only enqueues).
    pub(crate) fn on_message(&self, redis_channel: &[u8], payload: &[u8]) {
        let expected = |channel: &str| {
            redis_channel
                .strip_prefix(self.prefix.as_bytes())
                .is_some_and(|c| c == channel.as_bytes())
        };
        inbound::deliver(
            payload,
            self.instance,
            &self.counters,
            self.delivery.get(),
            expected,
            "dropping an envelope sent on another channel",
        );
    }

    /// Recompute the aggregated state after a node changed.
    pub(crate) fn refresh_state(&self) {
        let up = self.nodes.iter().filter(|n| n.is_connected()).count();
        let state = if up == self.nodes.len() {
            BackplaneState::Connected
        } else if up == 0 {
            BackplaneState::Disconnected
        } else {
            BackplaneState::Degraded
        };
        self.state.set(state);
    }
}
