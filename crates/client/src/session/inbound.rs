//! The way in: frames (docs/PROTOCOL.md 2, 3.1), responses to our requests, and the events the
//! server sends (publications, kick-outs, auth tokens, server → client RPC).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use socketcluster_rs_protocol::codec;
use socketcluster_rs_protocol::reserved as ev;
use socketcluster_rs_protocol::{
    BatchItem, EventPacket, Frame, Packet, ProtocolVersion, ResponsePacket, Role,
};
use tokio::time::Instant;

use super::pending::Pending;
use super::timers::TimerKey;
use super::{Phase, Session};
use crate::error::InvokeError;
use crate::events::Event;
use crate::rpc::{Handler, Request, Responder, Transmitted};

impl Session {
    /// A text message from the server.
    pub(crate) fn on_text(&mut self, now: Instant, text: &str) {
        // Publications are most of the inbound traffic: one pass, no intermediate
        // allocation, for the form servers send them in (anything else, and any
        // publication in another shape, takes the general path below).
        if let Some(p) = ev::parse_publish_frame(text) {
            let channel = self.opts.app_channel(p.channel);
            self.deliver_publication(channel, Some(p.data), p.position);
            return;
        }
        let version: ProtocolVersion = self.opts.protocol_version;
        match codec::decode(text, Role::Client, version) {
            Frame::Heartbeat => {
                self.ping_reset(now);
                self.write_direct(version.pong().to_owned());
            }
            Frame::Packet(p) => self.on_packet(now, p),
            Frame::Batch(items) => {
                for item in items {
                    match item {
                        BatchItem::Packet(p) => self.on_packet(now, p),
                        BatchItem::Raw => self.emit(Event::Raw(text.to_owned())),
                    }
                    if matches!(self.phase, Phase::Closed) {
                        break;
                    }
                }
            }
            Frame::Raw => self.emit(Event::Raw(text.to_owned())),
        }
    }

    /// A binary message: the JS client cannot read those, so it is a `raw` event.
    pub(crate) fn on_binary(&mut self, bytes: &[u8]) {
        self.emit(Event::Raw(String::from_utf8_lossy(bytes).into_owned()));
    }

    fn on_packet(&mut self, now: Instant, p: Packet) {
        match p {
            Packet::Response(r) => self.on_response(now, r),
            Packet::Event(e) => self.on_event(now, e),
        }
    }

    fn on_response(&mut self, now: Instant, r: ResponsePacket) {
        let Some(cid) = r.rid.as_u64() else {
            return;
        };
        let reauth = self.is_reauth_request(cid);
        let Some(p) = self.pending.remove(&cid) else {
            return;
        };
        match p {
            Pending::Call {
                reply, deadline, ..
            } => {
                self.timers.remove_ack(deadline, TimerKey::Sent(cid));
                let result = match r.error() {
                    Some(e) => Err(InvokeError::Remote(e)),
                    None => Ok(r.data),
                };
                let _ = reply.send(result);
            }
            Pending::Handshake { token, deadline } => {
                self.timers.remove_ack(deadline, TimerKey::Sent(cid));
                self.on_handshake_reply(now, token, r);
            }
            Pending::Subscribe { channel } => self.on_subscribe_reply(now, channel, cid, r),
            Pending::Authenticate {
                token,
                reply,
                deadline,
            } => {
                self.timers.remove_ack(deadline, TimerKey::Sent(cid));
                self.on_authenticate_reply(now, token, reply, reauth, r);
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: EventPacket) {
        match e.event.as_str() {
            ev::PUBLISH => {
                if let Some(p) = ev::parse_publish(e.data.as_deref()) {
                    let channel = self.opts.app_channel(&p.channel);
                    let position = p.position.as_ref().map(|q| (q.offset, q.epoch.as_str()));
                    self.deliver_publication(channel, p.data.as_deref(), position);
                }
            }
            ev::KICK_OUT => {
                if let Some((wire, message)) = ev::parse_kick_out(e.data.as_deref()) {
                    self.on_kick_out(&wire, message);
                }
            }
            ev::SET_AUTH_TOKEN => {
                let token = ev::parse_set_auth_token(e.data.as_deref());
                self.on_set_auth_token(now, token, e.cid);
            }
            ev::REMOVE_AUTH_TOKEN => self.on_remove_auth_token(now, e.cid),
            _ => {
                if e.event == ev::DISCONNECT
                    && self.opts.protocol_version == ProtocolVersion::V1
                    && let Some((_, reason)) = ev::parse_v1_disconnect(e.data.as_deref())
                {
                    self.v1_disconnect_reason = reason;
                }
                self.dispatch_to_handlers(e);
            }
        }
    }

    /// A server transmit goes to the receivers of its name, a server invoke to the
    /// procedures of its name (each bounded: a full one drops it and says so).
    fn dispatch_to_handlers(&mut self, e: EventPacket) {
        let Some(list) = self.handlers.get_mut(&e.event) else {
            return;
        };
        let mut slow = Vec::new();
        match e.cid {
            Some(cid) => {
                let Some(cmd) = self.cmd.upgrade() else {
                    return;
                };
                let request = Request {
                    event: e.event.clone(),
                    data: e.data,
                    responder: Arc::new(Responder {
                        cid,
                        generation: self.generation,
                        answered: AtomicBool::new(false),
                        link: Box::new(cmd),
                    }),
                };
                for (_, h, dropped) in list.iter_mut() {
                    if let Handler::Procedure(tx) = h
                        && tx.try_send(request.clone()).is_err()
                    {
                        *dropped += 1;
                        slow.push(*dropped);
                    }
                }
            }
            None => {
                let t = Transmitted {
                    event: e.event.clone(),
                    data: e.data,
                };
                for (_, h, dropped) in list.iter_mut() {
                    if let Handler::Receiver(tx) = h
                        && tx.try_send(t.clone()).is_err()
                    {
                        *dropped += 1;
                        slow.push(*dropped);
                    }
                }
            }
        }
        for dropped in slow {
            self.emit(Event::SlowConsumer {
                name: e.event.clone(),
                dropped,
            });
        }
    }
}
