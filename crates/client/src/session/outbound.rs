//! The way out: the outbound queue (messages issued while not connected, or held back by
//! a re-authentication), sending requests, answering server invokes, and batching
//! (docs/PROTOCOL.md 8.5).

use std::collections::VecDeque;
use std::time::Duration;

use socketcluster_rs_protocol::codec::encode_batch;
use socketcluster_rs_protocol::{Cid, EventPacket, KeyOrder, ResponsePacket, WireError};
use tokio::time::Instant;

use super::pending::Pending;
use super::timers::TimerKey;
use super::{Hold, Phase, Session};
use crate::command::{AuthReply, InvokeReply, RawData};
use crate::error::InvokeError;

/// What a queued message is.
pub(super) enum QueuedKind {
    Transmit,
    Invoke {
        reply: InvokeReply,
        timeout: Duration,
    },
    Authenticate {
        token: String,
        reply: AuthReply,
    },
}

impl QueuedKind {
    /// Tell the caller it failed (a transmit has no caller).
    pub(super) fn fail(self, err: InvokeError) {
        match self {
            QueuedKind::Transmit => {}
            QueuedKind::Invoke { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            QueuedKind::Authenticate { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

pub(super) struct Queued {
    qid: u64,
    pub(super) event: String,
    data: RawData,
    pub(super) kind: QueuedKind,
    deadline: Instant,
}

/// The outbound queue and the batching state.
#[derive(Default)]
pub(super) struct Outbound {
    queue: VecDeque<Queued>,
    next_qid: u64,
    /// Packets go to `batch` instead of straight out.
    pub(super) batching: bool,
    /// Batching was started by the application (not only by `batch_on_handshake`).
    pub(super) batching_explicit: bool,
    pub(super) batch: Vec<String>,
}

impl Outbound {
    /// Empty the queue (the caller fails each message).
    pub(super) fn take_queue(&mut self) -> VecDeque<Queued> {
        std::mem::take(&mut self.queue)
    }
}

impl Session {
    /// `Client::transmit`.
    pub(super) fn transmit(&mut self, now: Instant, event: String, data: RawData) {
        let deadline = now + self.opts.ack_timeout;
        self.outbound(now, event, data, QueuedKind::Transmit, deadline);
    }

    /// `Client::invoke`.
    pub(super) fn invoke(
        &mut self,
        now: Instant,
        event: String,
        data: RawData,
        timeout: Option<Duration>,
        reply: InvokeReply,
    ) {
        let timeout = timeout.unwrap_or(self.opts.ack_timeout);
        let deadline = now + timeout;
        self.outbound(
            now,
            event,
            data,
            QueuedKind::Invoke { reply, timeout },
            deadline,
        );
    }

    /// Send now if connected with nothing queued or held, else queue until `deadline`.
    pub(super) fn outbound(
        &mut self,
        now: Instant,
        event: String,
        data: RawData,
        kind: QueuedKind,
        deadline: Instant,
    ) {
        if self.terminated {
            kind.fail(InvokeError::Closed);
            return;
        }
        if matches!(self.phase, Phase::Closed) {
            // JS: every transmit/invoke on a closed client connects it (docs/PROTOCOL.md 7.1).
            self.start_connect(now);
        }
        if self.is_open()
            && self.outbound.queue.is_empty()
            && !self.holds(Hold::SubscriptionsAndQueue)
        {
            self.send_now(event, data, kind, deadline);
        } else {
            let qid = self.outbound.next_qid;
            self.outbound.next_qid += 1;
            self.timers.add_ack(deadline, TimerKey::Queued(qid));
            self.outbound.queue.push_back(Queued {
                qid,
                event,
                data,
                kind,
                deadline,
            });
        }
    }

    /// Send the queue, in call order, unless not open or held.
    pub(super) fn flush_queue(&mut self) {
        if !self.is_open() || self.holds(Hold::SubscriptionsAndQueue) {
            return;
        }
        while let Some(q) = self.outbound.queue.pop_front() {
            self.timers.remove_ack(q.deadline, TimerKey::Queued(q.qid));
            self.send_now(q.event, q.data, q.kind, q.deadline);
        }
    }

    /// A queued message reached its ack timeout: an invoke fails with `TimeoutError`, a
    /// transmit is silently dropped (docs/PROTOCOL.md 7.1).
    pub(super) fn expire_queued(&mut self, qid: u64) {
        let queue = &mut self.outbound.queue;
        if let Some(pos) = queue.iter().position(|q| q.qid == qid)
            && let Some(q) = queue.remove(pos)
        {
            let after = match &q.kind {
                QueuedKind::Invoke { timeout, .. } => *timeout,
                _ => self.opts.ack_timeout,
            };
            q.kind.fail(InvokeError::Timeout {
                event: q.event,
                after,
            });
        }
    }

    fn send_now(&mut self, event: String, data: RawData, kind: QueuedKind, deadline: Instant) {
        match kind {
            QueuedKind::Transmit => {
                let p = EventPacket::transmit(event, data);
                self.write_packet(p.encode(KeyOrder::Client));
            }
            QueuedKind::Invoke { reply, timeout } => {
                let cid = self.cids.next_cid();
                let p = EventPacket::invoke(event.clone(), data, cid);
                self.write_packet(p.encode(KeyOrder::Client));
                self.timers.add_ack(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Call {
                        event,
                        reply,
                        timeout,
                        deadline,
                    },
                );
            }
            QueuedKind::Authenticate { token, reply } => {
                let cid = self.cids.next_cid();
                let p = EventPacket::invoke(event, data, cid);
                self.write_packet(p.encode(KeyOrder::Client));
                self.timers.add_ack(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Authenticate {
                        token,
                        reply: Some(reply),
                        deadline,
                    },
                );
            }
        }
    }

    /// Answer a server invoke of this connection (`generation`).
    pub(super) fn respond(
        &mut self,
        generation: u64,
        cid: Cid,
        response: Result<RawData, WireError>,
    ) {
        if generation == self.generation && self.is_open() {
            let packet = match response {
                Ok(data) => ResponsePacket::ok(cid, data),
                Err(e) => ResponsePacket::err(cid, &e),
            };
            self.write_packet(packet.encode());
        }
    }

    // ---------------------------------------------------------------- writing

    /// Write a codec packet (through the batch buffer when batching); dropped without a
    /// socket.
    pub(super) fn write_packet(&mut self, text: String) {
        if !self.has_socket() {
            return;
        }
        if self.outbound.batching {
            self.outbound.batch.push(text);
        } else {
            self.out.frames.push(text);
        }
    }

    /// Write a frame that bypasses batching (handshake, pong, v1 `#disconnect`).
    pub(super) fn write_direct(&mut self, text: String) {
        if self.has_socket() {
            self.out.frames.push(text);
        }
    }

    // ---------------------------------------------------------------- batching

    pub(super) fn start_batching(&mut self, now: Instant) {
        if !self.outbound.batching {
            self.outbound.batching = true;
            self.timers.batch_flush = Some(now + self.opts.batch_interval);
        }
    }

    pub(super) fn flush_batch(&mut self) {
        if !self.outbound.batch.is_empty() {
            let frames = std::mem::take(&mut self.outbound.batch);
            self.out.frames.push(encode_batch(&frames));
        }
    }

    pub(super) fn stop_batching(&mut self) {
        self.flush_batch();
        self.outbound.batching = false;
        self.timers.batch_flush = None;
        self.timers.batch_stop = None;
    }

    /// The connection closed: what was batched is dropped, batching ends.
    pub(super) fn reset_batching(&mut self) {
        self.outbound.batch.clear();
        self.outbound.batching = false;
        self.timers.batch_flush = None;
        self.timers.batch_stop = None;
    }
}
