//! Output helpers: sending packets (through the outbox, batched while batching is on),
//! the batch timers, inbound middleware actions, server events and
//! warnings.

use std::sync::atomic::Ordering;

use serde_json::Value;
use socketcluster_rs_protocol::codec::KeyOrder;
use socketcluster_rs_protocol::{
    Cid, ErrorObject, EventPacket, RawValue, ResponsePacket, WireError,
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::events::ServerEvent;

use super::SocketTask;

impl SocketTask {
    pub(super) fn send_text(&self, text: String) {
        self.shared.outbox.push(Utf8Bytes::from(text));
    }

    pub(super) fn send_event(&self, event: &str, data: Option<Box<RawValue>>) {
        self.send_text(EventPacket::transmit(event, data).encode(KeyOrder::Server));
    }

    pub(super) fn reply_ok(&self, cid: Cid, data: Option<Box<RawValue>>) {
        self.send_text(ResponsePacket::ok(cid, data).encode());
    }

    pub(super) fn reply_err(&self, cid: Cid, e: &WireError) {
        self.send_text(ResponsePacket::err(cid, e).encode());
    }

    /// Report a refused action: error reply for an invoke, nothing for a transmit.
    pub(super) fn fail(&self, cid: Option<Cid>, e: ErrorObject) {
        self.warn(e.clone());
        if let Some(cid) = cid {
            self.reply_err(cid, &WireError::Object(e));
        }
    }

    pub(super) fn emit(&self, ev: ServerEvent) {
        self.server.emit(ev);
    }

    pub(super) fn warn(&self, error: ErrorObject) {
        self.emit(ServerEvent::Warning {
            socket: Some(self.socket.clone()),
            error,
        });
    }

    pub(super) fn warn_wire(&self, e: &WireError) {
        self.warn(error_object(e.clone()));
    }

    /// JS `_startBatchOnHandshake`: batch now, stop after the window unless the
    /// application started batching itself.
    pub(super) fn start_batch_on_handshake(&mut self) {
        self.shared.outbox.start_buffering();
        self.set_batch_timer(true);
        let d = self.server.config.batch_on_handshake_duration;
        self.batch_window.arm(Instant::now() + d);
    }

    pub(super) fn on_batch_window_end(&mut self) {
        if !self.shared.app_batching.load(Ordering::Acquire) {
            self.shared.outbox.flush_batch(false);
            self.set_batch_timer(false);
        }
    }

    pub(super) fn set_batch_timer(&mut self, on: bool) {
        if !on {
            self.batch_tick = None;
        } else if self.batch_tick.is_none() {
            let period = self.server.config.batch_interval;
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.batch_tick = Some(tick);
        }
    }
}

pub(super) fn wire_invalid_action(msg: &str) -> ErrorObject {
    ErrorObject::new("InvalidActionError", msg)
}

/// An error object for a wire error (non-object errors become `{"message": ...}`).
pub(super) fn error_object(e: WireError) -> ErrorObject {
    match e {
        WireError::Object(o) => o,
        WireError::Value(v) => ErrorObject::new(
            "Error",
            match v {
                Value::String(s) => s,
                other => other.to_string(),
            },
        ),
    }
}
