//! Pub/sub: `#publish` (publishIn middleware, then the broker),
//! `#subscribe` and `#unsubscribe` (the channel hub and the broker), server-side
//! unsubscribing (kick-out, close), and the per-socket publishOut middleware pipeline.

use std::sync::atomic::Ordering;

use socketcluster_rs_protocol::error::wire;
use std::future::Future;

use futures_util::FutureExt;
use socketcluster_rs_protocol::history;
use socketcluster_rs_protocol::reserved::{
    self, SubscribeRequest, parse_publish, parse_unsubscribe,
};
use socketcluster_rs_protocol::{Cid, ErrorObject, RawValue, ResponsePacket, WireError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::BrokerError;
use crate::channel::Publication;
use crate::events::ServerEvent;
use crate::history::StreamPosition;
use crate::hub::Subscriber;
use crate::middleware::{InboundKind, PublishOutAction, run_outbound, snapshot};
use crate::socket::{FRAME_OVERHEAD, Outbound, SocketState};

use super::SocketTask;
use super::output::wire_invalid_action;
use super::step::{After, Gate, Resume, gate, inbound_action};

impl SocketTask {
    pub(super) fn on_publish(
        &mut self,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        if !self.server.config.allow_client_publish {
            return self.fail(cid, wire::client_publish_disabled());
        }
        let Some(p) = parse_publish(data.as_deref()) else {
            return self.fail(cid, wire::publish_malformatted());
        };
        if let Some(e) = self.check_channel_name(&p.channel) {
            return self.fail(cid, e);
        }
        if self.auth.is_none() && self.is_auth_channel(&p.channel) {
            return self.fail(
                cid,
                ErrorObject::new(
                    "UnauthorizedPublishError",
                    format!(
                        "Socket {} must be authenticated to publish to the {} channel",
                        self.shared.id, p.channel
                    ),
                ),
            );
        }
        let socket = &self.socket;
        match gate(
            &self.server.middleware.inbound,
            (cid, p.channel),
            (p.data, expired),
            |(_, channel), (data, expired)| {
                let kind = InboundKind::PublishIn {
                    channel: channel.clone(),
                };
                inbound_action(socket, kind, data, expired)
            },
            |(cid, channel), result| Resume::Inbound {
                after: After::Publish { cid, channel },
                result,
            },
        ) {
            Gate::Open(((cid, channel), (data, _))) => self.publish(cid, &channel, data),
            Gate::Step(step) => self.start_step(step),
        }
    }

    pub(super) fn publish(&mut self, cid: Option<Cid>, channel: &str, data: Option<Box<RawValue>>) {
        self.server
            .stats
            .publications
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::publication_in("client");
        if let Some(rule) = self.server.config.history.rule_for(channel) {
            let fut = self.server.broker.publish_with_history(channel, data, rule);
            return self.published(cid, async move { fut.await.map(|_| ()) });
        }
        let p = Publication::new(channel, data);
        let fut = self.server.broker.publish(p);
        self.published(cid, fut);
    }

    /// A publication was handed to the broker. Its outcome (the answer to an invoked
    /// `#publish`) does not hold up this socket's next messages: a broker that waits for
    /// a backplane (Redis, NATS) keeps one socket's publications in the order it got
    /// them, so the next publication may be handed over at once (pipelined) instead of
    /// one backplane round trip later. The in-process broker answers at once.
    fn published(
        &mut self,
        cid: Option<Cid>,
        fut: impl Future<Output = Result<(), BrokerError>> + Send + 'static,
    ) {
        let mut fut = Box::pin(fut);
        if let Some(result) = (&mut fut).now_or_never() {
            return self.resume(Resume::Published { cid, result });
        }
        // A transmitted publication has nobody to tell its outcome: the future only
        // reports it (see `Broker::publish`), so it is dropped.
        let Some(cid) = cid else { return };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let packet = match fut.await {
                Ok(()) => ResponsePacket::ok(cid, None),
                Err(e) => ResponsePacket::err(
                    cid,
                    &WireError::Object(ErrorObject::new("BrokerError", e.0)),
                ),
            };
            shared.outbox.push(Utf8Bytes::from(packet.encode()));
        });
    }

    pub(super) fn check_channel_name(&self, channel: &str) -> Option<ErrorObject> {
        let max = self.server.config.limits.max_channel_name_len;
        (channel.len() > max).then(|| {
            ErrorObject::new(
                "InvalidActionError",
                format!("Channel name exceeds the maximum length of {max}"),
            )
        })
    }

    pub(super) fn on_subscribe(
        &mut self,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        // A transmitted #subscribe is not acted upon (docs/PROTOCOL.md 3.6.5).
        let Some(cid) = cid else { return };
        let Some(req) = SubscribeRequest::parse(data.as_deref()) else {
            return self.fail(Some(cid), wire::subscribe_malformatted());
        };
        if let Some(e) = self.check_channel_name(&req.channel) {
            return self.fail(Some(cid), e);
        }
        if self.auth.is_none() && self.is_auth_channel(&req.channel) {
            return self.fail(
                Some(cid),
                ErrorObject::new(
                    "UnauthorizedSubscribeError",
                    format!(
                        "Socket {} must be authenticated to subscribe to the {} channel",
                        self.shared.id, req.channel
                    ),
                ),
            );
        }
        let socket = &self.socket;
        match gate(
            &self.server.middleware.inbound,
            (cid, req.channel, req.recover),
            (req.data, expired),
            |(_, channel, _), (data, expired)| {
                let kind = InboundKind::Subscribe {
                    channel: channel.clone(),
                };
                inbound_action(socket, kind, data, expired)
            },
            |(cid, channel, recover), result| Resume::Inbound {
                after: After::Subscribe {
                    cid,
                    channel,
                    recover,
                },
                result,
            },
        ) {
            Gate::Open(((cid, channel, recover), _)) => self.subscribe(cid, channel, recover),
            Gate::Step(step) => self.start_step(step),
        }
    }

    /// Subscribe (after the `subscribe` middleware). On a channel with history, the
    /// socket's publications of the channel are kept aside from before it is registered
    /// until the history is read (`task/history.rs`).
    pub(super) fn subscribe(&mut self, cid: Cid, channel: String, recover: Option<StreamPosition>) {
        if self.state != SocketState::Open {
            return self.fail(
                Some(cid),
                wire_invalid_action(
                    "Cannot subscribe socket to a channel before it has completed the handshake",
                ),
            );
        }
        let (count, subscribed) = {
            let view = self.shared.view();
            (
                view.channels.len(),
                view.channels.contains_key(channel.as_str()),
            )
        };
        if let Some(limit) = self.server.config.limits.socket_channel_limit
            && count >= limit
        {
            return self.fail(
                Some(cid),
                wire::channel_limit(&channel, &self.shared.id, limit),
            );
        }
        let history = self.server.config.history.rule_for(&channel).is_some();
        if subscribed {
            if history {
                // Already subscribed: read the history again (the client may have missed
                // publications); it drops what it already has.
                self.shared.start_recovery(&channel);
                return self.read_history(cid, channel, recover);
            }
            return self.reply_ok(cid, None);
        }
        if history {
            self.shared.start_recovery(&channel);
        }
        let broker = &self.server.broker;
        // The view keeps the hub's copy of the name: one allocation per channel.
        let (name, first) = self.server.hub.subscribe_then(
            &channel,
            Subscriber::Socket(self.shared.clone()),
            || broker.subscribe(&channel),
        );
        {
            let mut view = self.shared.view();
            view.channel_seq += 1;
            let seq = view.channel_seq;
            view.channels.insert(name, seq);
        }
        if let Some(fut) = first {
            self.broker_step(fut, move |result| Resume::Subscribed {
                cid,
                channel,
                recover,
                result,
            });
        } else {
            self.subscribed(cid, channel, recover, Ok(()));
        }
    }

    pub(super) fn subscribed(
        &mut self,
        cid: Cid,
        channel: String,
        recover: Option<StreamPosition>,
        result: Result<(), BrokerError>,
    ) {
        if result.is_ok() && self.server.config.history.rule_for(&channel).is_some() {
            return self.read_history(cid, channel, recover);
        }
        crate::metrics::subscription(result.is_ok());
        match result {
            Ok(()) => {
                self.reply_ok(cid, None);
                self.emit(ServerEvent::Subscription {
                    socket: self.socket.clone(),
                    channel,
                });
            }
            Err(e) => {
                self.subscribe_failed(
                    cid,
                    &channel,
                    format!("Failed to subscribe socket to the {channel} channel - {e}"),
                );
            }
        }
    }

    /// Undo a subscription that could not be set up, and tell the client why.
    pub(super) fn subscribe_failed(&mut self, cid: Cid, channel: &str, message: String) {
        self.shared.cancel_recovery(channel);
        self.shared.view().channels.remove(channel);
        self.server.hub.remove(channel, self.shared.key);
        self.fail(Some(cid), ErrorObject::new("BrokerError", message));
    }

    pub(super) fn on_unsubscribe(&mut self, cid: Option<Cid>, data: Option<Box<RawValue>>) {
        let Some(channel) = parse_unsubscribe(data.as_deref()) else {
            return self.fail(cid, wire::unsubscribe_malformatted());
        };
        if !self.shared.view().channels.contains_key(channel.as_str()) {
            // A transmitted #unsubscribe for an unknown channel is routine (JS client
            // unsubscribing a pending channel): only invoked ones get the error.
            if let Some(cid) = cid {
                self.reply_err(
                    cid,
                    &WireError::Object(wire::not_subscribed(&channel, &self.shared.id)),
                );
            }
            return;
        }
        self.shared.view().channels.remove(channel.as_str());
        let broker = &self.server.broker;
        let (_, last) = self
            .server
            .hub
            .remove_then(&channel, self.shared.key, || broker.unsubscribe(&channel));
        if let Some(fut) = last {
            self.broker_step(fut, move |result| Resume::Unsubscribed {
                cid,
                channel,
                result,
            });
        } else {
            self.unsubscribed(cid, channel, Ok(()));
        }
    }

    pub(super) fn unsubscribed(
        &mut self,
        cid: Option<Cid>,
        channel: String,
        result: Result<(), BrokerError>,
    ) {
        if let Err(e) = &result {
            tracing::warn!(channel = %channel, error = %e, "broker unsubscribe failed");
        }
        self.emit(ServerEvent::Unsubscription {
            socket: self.socket.clone(),
            channel,
        });
        if let Some(cid) = cid {
            self.reply_ok(cid, None);
        }
    }

    /// Server-side unsubscribe (kick-out, close): bookkeeping + broker in background.
    pub(super) fn unsubscribe_local(&mut self, channel: &str) -> bool {
        if self.shared.view().channels.remove(channel).is_none() {
            return false;
        }
        let broker = &self.server.broker;
        if let (_, Some(fut)) = self
            .server
            .hub
            .remove_then(channel, self.shared.key, || broker.unsubscribe(channel))
        {
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!(error = %e, "broker unsubscribe failed");
                }
            });
        }
        self.emit(ServerEvent::Unsubscription {
            socket: self.socket.clone(),
            channel: channel.to_owned(),
        });
        true
    }

    pub(super) fn start_outbound_pipeline(&mut self) {
        let chain = snapshot(&self.server.middleware.outbound);
        if chain.is_empty() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
        if self.shared.outbound_mw.set(tx).is_err() {
            return;
        }
        let server = self.server.clone();
        let socket = self.socket.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => break },
                    _ = shared.wait_closed() => break,
                };
                let outbox = &socket.shared.outbox;
                let p = match item {
                    Outbound::Publication(p) => p,
                    Outbound::Frame(f) => {
                        outbox.push(f);
                        continue;
                    }
                };
                outbox.release(p.frame().len() + FRAME_OVERHEAD);
                let chain = snapshot(&server.middleware.outbound);
                let action = PublishOutAction {
                    socket: socket.clone(),
                    channel: p.channel().to_owned(),
                    data: p.raw_data().map(|d| d.to_owned()),
                    modified: false,
                };
                match run_outbound(chain, action).await {
                    Ok(a) if a.modified => {
                        let frame = match (p.offset(), p.epoch()) {
                            (Some(offset), Some(epoch)) => history::publish_frame_at(
                                &a.channel,
                                a.data.as_deref(),
                                offset,
                                epoch,
                            ),
                            _ => reserved::publish_frame(&a.channel, a.data.as_deref()),
                        };
                        outbox.push(Utf8Bytes::from(frame));
                    }
                    Ok(_) => {
                        outbox.push(p.frame_bytes());
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
