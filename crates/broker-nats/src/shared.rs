//! State shared by the broker handle, the connection task, the subscription readers and
//! the async-nats event callback.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::Event;
use socketcluster_rs_server::broker::Delivery;
use tokio::sync::{mpsc, watch};

use crate::command::Control;
use socketcluster_rs_backplane::{
    BackplaneState, Counters, InstanceId, LastError, StateSender, inbound, request,
};

pub(crate) struct Shared {
    pub(crate) instance: InstanceId,
    pub(crate) prefix: String,
    pub(crate) address: String,
    pub(crate) delivery: OnceLock<Delivery>,
    pub(crate) counters: Counters,
    /// Public state: `Connected` only once every subscription is confirmed.
    pub(crate) state: StateSender,
    /// Raw connectivity, as reported by async-nats events.
    pub(crate) link: watch::Sender<bool>,
    /// A connection was lost since the last `Connected` (the next one is a reconnect).
    pub(crate) was_lost: AtomicBool,
    pub(crate) channels: AtomicUsize,
    pub(crate) last_error: LastError,
}

impl Shared {
    pub(crate) fn is_connected(&self) -> bool {
        self.state.get() == BackplaneState::Connected
    }

    /// A message arrived on the subject of `channel`.
    pub(crate) fn on_message(&self, channel: &str, payload: &[u8]) {
        inbound::deliver(
            payload,
            self.instance,
            &self.counters,
            self.delivery.get(),
            |c| c == channel,
            "dropping an envelope sent on another channel's subject",
        );
    }

    /// Connected and every subscription confirmed.
    pub(crate) fn mark_connected(&self) {
        self.state.update(|s| {
            if *s == BackplaneState::Connected {
                return false;
            }
            // Count and clear before the new state is visible to watchers.
            self.counters.connection_up(true);
            self.last_error.set(None);
            if self.was_lost.swap(false, Ordering::AcqRel) {
                self.counters.reconnected();
                tracing::info!(
                    server = %self.address,
                    channels = self.channels.load(Ordering::Relaxed),
                    "NATS backplane reconnected and resubscribed"
                );
            }
            *s = BackplaneState::Connected;
            true
        });
    }

    fn mark_disconnected(&self, reason: &str) {
        self.link.send_replace(false);
        self.was_lost.store(true, Ordering::Release);
        self.last_error.set(Some(reason.to_owned()));
        self.state.update(|s| {
            if *s == BackplaneState::Disconnected {
                return false;
            }
            self.counters.connection_up(false);
            tracing::warn!(
                server = %self.address,
                reason,
                "NATS backplane connection lost; serving local traffic only until it is back"
            );
            *s = BackplaneState::Disconnected;
            true
        });
    }
}

/// Handles async-nats connection events.
pub(crate) struct EventHandler {
    pub(crate) shared: Arc<Shared>,
    /// Weak, so that the callback (owned by the client) does not keep the task alive.
    pub(crate) control: mpsc::WeakUnboundedSender<Control>,
}

impl EventHandler {
    pub(crate) fn on_event(&self, event: Event) {
        match event {
            Event::Disconnected => self.shared.mark_disconnected("disconnected"),
            Event::Closed => self.shared.mark_disconnected("connection closed"),
            Event::Connected => {
                self.shared.link.send_replace(true);
                // async-nats has re-sent every SUB; a confirmation round trip behind them
                // proves the server has them before we report "connected".
                let Some(control) = self.control.upgrade() else {
                    return;
                };
                let (done, answer) = request::pair(crate::STOPPED);
                if control.send(Control::Confirm(done)).is_err() {
                    return;
                }
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    match answer.reply().await {
                        Some(Ok(())) => shared.mark_connected(),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "NATS reconnect confirmation failed")
                        }
                        None => {}
                    }
                });
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS slow consumer: backplane messages were dropped")
            }
            Event::LameDuckMode => {
                tracing::warn!(server = %self.shared.address, "NATS server entered lame duck mode")
            }
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }
}
