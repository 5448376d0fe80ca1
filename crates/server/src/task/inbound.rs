//! Processing of inbound messages, strictly in order: the read-ahead queue,
//! `inboundRaw` middleware, decoding (packets, batches, raw messages) and the routing of
//! each event to where it is handled (`#handshake` in `handshake.rs`,
//! `#authenticate` and `#removeAuthToken` in `auth.rs`, `#publish`, `#subscribe` and
//! `#unsubscribe` in `pubsub.rs`, everything else in `rpc.rs`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use socketcluster_rs_protocol::codec::{self, BatchItem, Indexed};
use socketcluster_rs_protocol::reserved;
use socketcluster_rs_protocol::{EventPacket, Packet};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::InvokeError;
use crate::limits::CLOSE_MESSAGE_TOO_BIG;
use crate::middleware::{Block, InboundRawAction};
use crate::socket::{MessageKind, SocketState, free_if_empty};

use super::output::wire_invalid_action;
use super::step::{Gate, Resume, gate};
use super::{PendingBatch, SocketTask};

/// One inbound WebSocket message, as queued.
pub(super) enum Inbound {
    Pong,
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Inbound {
    /// Payload size.
    fn len(&self) -> usize {
        match self {
            Inbound::Pong => 0,
            Inbound::Text(t) => t.len(),
            Inbound::Binary(b) => b.len(),
        }
    }
}

impl SocketTask {
    pub(super) fn drain(&mut self) {
        while self.step.is_none() && self.closing.is_none() {
            if let Some(b) = &mut self.batch {
                if b.next >= b.index.len() {
                    self.batch = None;
                    continue;
                }
                let item = b.index.item(b.text.as_str(), b.next);
                b.next += 1;
                match item {
                    BatchItem::Packet(p) => self.process_packet(p),
                    BatchItem::Raw => self.on_raw(),
                }
                continue;
            }
            let Some(inbound) = self.inbox.pop_front() else {
                break;
            };
            self.inbox_bytes -= inbound.len();
            self.handle_inbound(inbound);
        }
        // Only a socket whose processing waited (middleware, broker) used the read-ahead
        // queue; an idle socket keeps none.
        free_if_empty(&mut self.inbox);
    }

    /// Queue an inbound message, or process it right away when nothing is ahead of it
    /// (the common case: no allocation, no queue).
    pub(super) fn on_inbound(&mut self, inbound: Inbound) {
        if let Some(bp) = &self.server.busy_poll {
            bp.touch();
        }
        if self.step.is_none()
            && self.closing.is_none()
            && self.inbox.is_empty()
            && self.batch.is_none()
        {
            self.handle_inbound(inbound);
        } else {
            self.inbox_bytes += inbound.len();
            self.inbox.push_back(inbound);
        }
    }

    /// Process one inbound message, after JS `inboundRaw` middleware: the message is
    /// processed (possibly replaced) once the chain allows it, or dropped.
    #[inline]
    pub(super) fn handle_inbound(&mut self, inbound: Inbound) {
        match gate(
            &self.server.middleware.inbound_raw,
            (),
            inbound,
            |(), inbound| self.raw_action(inbound),
            |(), result| Resume::Raw { result },
        ) {
            Gate::Open(((), inbound)) => self.process_inbound(inbound),
            Gate::Step(step) => self.start_step(step),
        }
    }

    /// Process one inbound message (no `inboundRaw` middleware).
    fn process_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Pong => {
                self.shared
                    .offer_message(MessageKind::All, self.version.pong());
                self.on_pong();
            }
            Inbound::Text(t) => {
                self.shared.offer_message(MessageKind::All, t.as_str());
                self.process_text(t);
            }
            Inbound::Binary(b) => {
                let text = match String::from_utf8_lossy(&b) {
                    std::borrow::Cow::Borrowed(_) => Utf8Bytes::try_from(b).unwrap_or_default(),
                    lossy => Utf8Bytes::from(lossy.into_owned()),
                };
                self.shared.offer_message(MessageKind::All, text.as_str());
                self.process_text(text);
            }
        }
    }

    /// The `inboundRaw` middleware action of a message.
    fn raw_action(&self, inbound: Inbound) -> InboundRawAction {
        let (message, binary) = match inbound {
            Inbound::Pong => (self.version.pong().to_owned(), false),
            Inbound::Text(t) => (t.as_str().to_owned(), false),
            Inbound::Binary(b) => (String::from_utf8_lossy(&b).into_owned(), true),
        };
        InboundRawAction {
            socket: self.socket.clone(),
            message,
            binary,
        }
    }

    pub(super) fn inbound_raw_done(&mut self, result: Result<InboundRawAction, Block>) {
        match result {
            Ok(action) => {
                self.shared.offer_message(MessageKind::All, &action.message);
                if !action.binary && action.message == self.version.pong() {
                    self.on_pong();
                } else {
                    self.process_text(Utf8Bytes::from(action.message));
                }
            }
            Err(block) => self.warn_wire(&block.into_wire("message", "inboundRaw")),
        }
    }

    pub(super) fn strict_connecting(&self) -> bool {
        self.server.config.strict_handshake && self.state == SocketState::Connecting
    }

    pub(super) fn on_pong(&mut self) {
        if self.strict_connecting() {
            return self.close(4009, "");
        }
        if self.state == SocketState::Open {
            self.check_expiry();
        }
    }

    pub(super) fn process_text(&mut self, text: Utf8Bytes) {
        let max = self.server.config.limits.max_batch_items;
        match codec::index_message(text.as_str(), max) {
            Indexed::Packet(p) => self.process_packet(p),
            Indexed::Batch(index) => {
                if !index.is_empty() {
                    self.batch = Some(Box::new(PendingBatch {
                        text,
                        index,
                        next: 0,
                    }));
                }
            }
            Indexed::TooManyItems { items } => {
                tracing::info!(
                    socket = %self.shared.id,
                    items,
                    max,
                    "batch with too many items: closing"
                );
                crate::metrics::limit_exceeded("batch_items");
                self.close(CLOSE_MESSAGE_TOO_BIG, &format!("Batch exceeds {max} items"));
            }
            Indexed::Raw => {
                self.shared.offer_message(MessageKind::Raw, text.as_str());
                self.on_raw();
            }
        }
    }

    pub(super) fn on_raw(&mut self) {
        if self.strict_connecting() {
            return self.close(4009, "");
        }
        self.server
            .stats
            .raw_messages
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn process_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Response(r) => {
                if self.strict_connecting() {
                    return self.close(4009, "");
                }
                let Some(rid) = r.rid.as_u64() else { return };
                if let Some((_, reply)) = self.pending.remove(&rid) {
                    let result = match r.error() {
                        Some(e) => Err(InvokeError::Remote(e)),
                        None => Ok(r.data),
                    };
                    let _ = reply.send(result);
                }
            }
            Packet::Event(ev) => self.process_event(ev),
        }
    }

    pub(super) fn process_event(&mut self, ev: EventPacket) {
        let EventPacket { event, data, cid } = ev;
        match event.as_str() {
            reserved::HANDSHAKE => match cid {
                Some(cid) => self.on_handshake(cid, data),
                None => {
                    self.warn(wire_invalid_action("Handshake request was malformatted"));
                    self.close(4008, "");
                }
            },
            _ if self.strict_connecting() => self.close(4009, ""),
            reserved::AUTHENTICATE => match cid {
                Some(cid) => self.on_authenticate(cid, data),
                None => {
                    self.warn(wire_invalid_action("Authenticate request was malformatted"));
                    self.close(4008, "");
                }
            },
            reserved::REMOVE_AUTH_TOKEN => self.deauthenticate(false),
            _ => {
                let expired = self.check_expiry();
                match event.as_str() {
                    reserved::PUBLISH => self.on_publish(cid, data, expired),
                    reserved::SUBSCRIBE => self.on_subscribe(cid, data, expired),
                    reserved::UNSUBSCRIBE => self.on_unsubscribe(cid, data),
                    _ => self.on_app_event(event, cid, data, expired),
                }
            }
        }
    }
}
