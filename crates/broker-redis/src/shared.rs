//! State shared by the broker handle, the connection tasks and the connections' push
//! handlers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use socketcluster_server::Publication;
use socketcluster_server::broker::Delivery;
use tokio::sync::watch;

use crate::envelope::{self, InstanceId};
use crate::health::BackplaneState;
use crate::metrics::Counters;

/// Status of one node's connection task.
pub(crate) struct NodeStatus {
    pub(crate) address: String,
    pub(crate) connected: AtomicBool,
    pub(crate) channels: AtomicUsize,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl NodeStatus {
    pub(crate) fn new(address: String) -> NodeStatus {
        NodeStatus {
            address,
            connected: AtomicBool::new(false),
            channels: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

pub(crate) struct Shared {
    pub(crate) instance: InstanceId,
    pub(crate) prefix: String,
    pub(crate) delivery: OnceLock<Delivery>,
    pub(crate) counters: Counters,
    pub(crate) state: watch::Sender<BackplaneState>,
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
        let env = match envelope::decode(payload) {
            Ok(env) => env,
            Err(e) => {
                self.counters.invalid_message();
                tracing::debug!(error = %e, "dropping a backplane message that is not an envelope");
                return;
            }
        };
        if env.instance == self.instance {
            // Our own publication: the local subscribers got it at publish time.
            self.counters.echo_skipped();
            return;
        }
        let expected = redis_channel
            .strip_prefix(self.prefix.as_bytes())
            .is_some_and(|c| c == env.channel.as_bytes());
        if !expected {
            self.counters.invalid_message();
            tracing::debug!(
                channel = env.channel,
                "dropping an envelope sent on another channel"
            );
            return;
        }
        let data = match env.raw_data() {
            Ok(d) => d,
            Err(e) => {
                self.counters.invalid_message();
                tracing::debug!(error = %e, "dropping a backplane message with invalid data");
                return;
            }
        };
        let Some(delivery) = self.delivery.get() else {
            return;
        };
        self.counters.received();
        delivery.deliver(&Publication::new(env.channel, data));
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
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}
