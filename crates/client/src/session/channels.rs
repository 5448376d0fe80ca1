//! The channel table (docs/PROTOCOL.md 6): subscribing, **when the client (re)subscribes**,
//! what a rejection does, unsubscribing, kick-outs, and delivering publications.
//!
//! A channel is (re)subscribed by [`Session::try_subscribe`], which every path goes
//! through: a new subscription, `process_pending_subscriptions` after a handshake (all
//! pending channels, descending priority), becoming authenticated (for `waitForAuth`
//! channels), and the end of a re-authentication. It sends nothing while the connection
//! is not open, while the connection's subscriptions are not released yet, while a
//! re-authentication holds subscriptions ([`super::Hold`]), or for a `waitForAuth`
//! channel while unauthenticated.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use socketcluster_rs_protocol::reserved as ev;
use socketcluster_rs_protocol::{EventPacket, KeyOrder, ResponsePacket, WireError};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::pending::Pending;
use super::recovery::{Accept, ChannelStream, Reached};
use super::{Hold, Phase, Reauth, Session, raw};
use crate::auth::ReauthReason;
use crate::channel::{ChannelState, ChannelStatus, Message, SubscribeOptions};
use crate::error::SubscribeError;
use crate::events::Event;

/// A consumer of a channel: one [`Subscription`](crate::Subscription) stream.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) id: u64,
    pub(crate) tx: crate::queue::Sender<Message>,
    pub(crate) dropped: u64,
}

/// Where a channel's `#subscribe` stands.
#[derive(Debug)]
pub(crate) enum ChannelRequest {
    /// None in flight.
    Idle,
    /// Sent as `cid`; `unauthenticated`: sent while the client was unauthenticated.
    InFlight { cid: u64, unauthenticated: bool },
    /// Rejected for an auth reason; pending until a re-authentication succeeds.
    AwaitingReauth,
}

/// One entry of the channel table.
#[derive(Debug)]
pub(crate) struct ChannelEntry {
    pub(crate) state: ChannelState,
    pub(crate) options: SubscribeOptions,
    pub(crate) request: ChannelRequest,
    /// The last request was sent right after a successful re-authentication (reset by a
    /// confirmation): another auth rejection means that attempt did not help.
    pub(crate) auth_retry_used: bool,
    pub(crate) consumers: Vec<Consumer>,
    pub(crate) status: watch::Sender<ChannelStatus>,
    /// The position reached in the channel's stream, on a channel with history.
    pub(crate) stream: ChannelStream,
}

impl ChannelEntry {
    pub(crate) fn new(options: SubscribeOptions) -> Self {
        let (status, _) = watch::channel(ChannelStatus {
            state: ChannelState::Pending,
            ended: None,
            last_recovery: None,
        });
        let stream = ChannelStream {
            reached: options.recover_from.as_ref().map(|p| Reached {
                epoch: Arc::from(p.epoch.as_str()),
                offset: p.offset,
            }),
            ..ChannelStream::default()
        };
        ChannelEntry {
            state: ChannelState::Pending,
            options,
            request: ChannelRequest::Idle,
            auth_retry_used: false,
            consumers: Vec::new(),
            status,
            stream,
        }
    }

    /// A `#subscribe` of this channel awaits its reply.
    pub(crate) fn request_in_flight(&self) -> bool {
        matches!(self.request, ChannelRequest::InFlight { .. })
    }

    /// No `#subscribe` of this channel is in flight or waiting for a re-authentication.
    pub(crate) fn request_idle(&self) -> bool {
        matches!(self.request, ChannelRequest::Idle)
    }

    pub(crate) fn set_state(&mut self, state: ChannelState) {
        self.state = state;
        self.status.send_modify(|s| s.state = state);
    }

    /// The entry leaves the table: its streams end with `why`.
    fn end(mut self, why: SubscribeError) {
        self.status.send_modify(|s| {
            s.state = ChannelState::Unsubscribed;
            s.ended = Some(why);
        });
        self.consumers.clear();
    }
}

impl Session {
    /// `Client::subscribe`: add a consumer; a new channel is requested at once if it can
    /// be.
    pub(super) fn subscribe(
        &mut self,
        channel: String,
        options: SubscribeOptions,
        consumer_id: u64,
        tx: crate::queue::Sender<Message>,
        reply: oneshot::Sender<watch::Receiver<ChannelStatus>>,
    ) {
        if self.terminated {
            let (stx, srx) = watch::channel(ChannelStatus {
                state: ChannelState::Unsubscribed,
                ended: Some(SubscribeError::Closed),
                last_recovery: None,
            });
            drop(stx);
            let _ = reply.send(srx);
            return;
        }
        let is_new = !self.channels.contains_key(&channel);
        let entry = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelEntry::new(options.clone()));
        if !is_new {
            // JS: only the options are replaced; no new request.
            entry.options = options;
        }
        entry.consumers.push(Consumer {
            id: consumer_id,
            tx,
            dropped: 0,
        });
        let _ = reply.send(entry.status.subscribe());
        if is_new {
            self.set_channel_snapshot(&channel, Some(ChannelState::Pending));
            self.try_subscribe(&channel);
        }
    }

    /// A `Subscription` was dropped; the last one unsubscribes the channel.
    pub(super) fn drop_consumer(&mut self, channel: &str, id: u64) {
        let empty = match self.channels.get_mut(channel) {
            Some(e) => {
                let before = e.consumers.len();
                e.consumers.retain(|c| c.id != id);
                before != e.consumers.len() && e.consumers.is_empty()
            }
            None => false,
        };
        if empty {
            self.unsubscribe(channel, SubscribeError::Unsubscribed, true);
        }
    }

    /// Whether `#subscribe` requests may be sent now (see the module docs).
    pub(super) fn subscriptions_allowed(&self) -> bool {
        match &self.phase {
            Phase::Open(o) => o.subscriptions_released && !self.holds(Hold::Subscriptions),
            _ => false,
        }
    }

    /// Send `#subscribe` for `channel` if nothing stands in the way.
    pub(super) fn try_subscribe(&mut self, channel: &str) {
        let allowed = self.subscriptions_allowed();
        let authenticated = self.is_authenticated();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let meets_auth = !entry.options.wait_for_auth || authenticated;
        if !allowed || !matches!(entry.request, ChannelRequest::Idle) || !meets_auth {
            return;
        }
        self.send_subscribe(channel);
    }

    /// Write `#subscribe` for `channel` (with the position reached, on a channel with
    /// history) and wait for its reply.
    pub(super) fn send_subscribe(&mut self, channel: &str) {
        let authenticated = self.is_authenticated();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let cid = self.cids.next_cid();
        entry.request = ChannelRequest::InFlight {
            cid,
            unauthenticated: !authenticated,
        };
        let recover = entry.stream.recover_from();
        entry.stream.request_sent(recover.is_some());
        let req = ev::SubscribeRequest {
            channel: self.opts.wire_channel(channel).into_owned(),
            wait_for_auth: entry.options.wait_for_auth,
            data: entry.options.data.clone(),
            options: serde_json::Map::new(),
            recover,
        };
        let options = entry.options.wire_options();
        let p = EventPacket::invoke(ev::SUBSCRIBE, Some(req.to_raw()), cid);
        self.write_packet(p.encode(KeyOrder::Client));
        self.pending.insert(
            cid,
            Pending::Subscribe {
                channel: channel.to_owned(),
            },
        );
        self.emit(Event::SubscribeRequest {
            channel: channel.to_owned(),
            options,
        });
    }

    /// Release this connection's subscriptions and request every pending channel, in
    /// descending priority (ties in table order).
    pub(super) fn process_pending_subscriptions(&mut self) {
        if let Some(open) = self.open_mut() {
            open.subscriptions_released = true;
        }
        let mut pending: Vec<(i64, usize, String)> = self
            .channels
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.state == ChannelState::Pending || e.stream.resync)
            .map(|(i, (n, e))| (e.options.priority, i, n.clone()))
            .collect();
        pending.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, name) in pending {
            self.try_subscribe(&name);
        }
    }

    /// Request pending channels again if this connection's subscriptions were released
    /// (after the auth state or the re-authentication phase changed).
    pub(super) fn process_pending_if_released(&mut self) {
        if matches!(&self.phase, Phase::Open(o) if o.subscriptions_released) {
            self.process_pending_subscriptions();
        }
    }

    /// The reply to `#subscribe` `cid` for `channel`.
    ///
    /// A rejection is final (`subscribeFail`, the channel is removed) as in the JS
    /// client, except with a token provider when it is auth-related (the request was
    /// sent unauthenticated, the client is unauthenticated now, or the error is an
    /// `AuthToken...Error`): the channel then stays pending and waits for a
    /// re-authentication, however many attempts that takes (`reauth.rs`).
    pub(super) fn on_subscribe_reply(
        &mut self,
        now: Instant,
        channel: String,
        cid: u64,
        r: ResponsePacket,
    ) {
        let authenticated = self.is_authenticated();
        let has_provider = self.has_provider();
        let reauth_idle = *self.reauth() == Reauth::Idle;
        let Some(entry) = self.channels.get_mut(&channel) else {
            return;
        };
        let sent_unauthenticated = match entry.request {
            ChannelRequest::InFlight {
                cid: c,
                unauthenticated,
            } if c == cid => unauthenticated,
            _ => return,
        };
        entry.request = ChannelRequest::Idle;
        let options = entry.options.wire_options();
        let Some(err) = r.error() else {
            let recover_new_epoch = self.on_subscribed_position(&channel, &r);
            let Some(entry) = self.channels.get_mut(&channel) else {
                return;
            };
            let was_retry = std::mem::take(&mut entry.auth_retry_used);
            if entry.state != ChannelState::Subscribed {
                entry.set_state(ChannelState::Subscribed);
                self.set_channel_snapshot(&channel, Some(ChannelState::Subscribed));
                self.emit(Event::SubscribeStateChange {
                    channel: channel.clone(),
                    old: ChannelState::Pending,
                    new: ChannelState::Subscribed,
                });
                self.emit(Event::Subscribe {
                    channel: channel.clone(),
                    options,
                });
            }
            if was_retry {
                // The re-authentication it waited for worked.
                self.reauth_backoff.reset();
            }
            if recover_new_epoch {
                self.resync(&channel);
            }
            return;
        };
        let auth_related = sent_unauthenticated
            || !authenticated
            || err
                .as_object()
                .is_some_and(|o| o.name.is_auth_token_error());
        if auth_related && has_provider {
            tracing::info!(channel = %channel, error = %err, "subscription rejected for an auth reason; kept pending for a re-authentication");
            if authenticated && sent_unauthenticated && reauth_idle {
                // Re-authenticated since the request was sent: retry at once.
                entry.auth_retry_used = true;
                self.try_subscribe(&channel);
                return;
            }
            let again = entry.auth_retry_used;
            let error = err.to_string();
            entry.request = ChannelRequest::AwaitingReauth;
            if again {
                self.reauth_did_not_help(now, channel, error);
            } else {
                self.start_reauth(now, ReauthReason::SubscribeRejected(channel));
            }
            return;
        }
        if !entry.options.wait_for_auth || authenticated {
            self.fail_channel(&channel, err, options);
        }
    }

    /// Whether a channel waits for a re-authentication.
    pub(super) fn channels_await_reauth(&self) -> bool {
        self.channels
            .values()
            .any(|e| matches!(e.request, ChannelRequest::AwaitingReauth))
    }

    /// A re-authentication succeeded: channels that waited for it may be requested again,
    /// each marked as retried after a re-authentication. Returns whether there were any.
    pub(super) fn retry_channels_awaiting_reauth(&mut self) -> bool {
        let mut any = false;
        for entry in self.channels.values_mut() {
            if matches!(entry.request, ChannelRequest::AwaitingReauth) {
                entry.request = ChannelRequest::Idle;
                entry.auth_retry_used = true;
                any = true;
            }
        }
        any
    }

    /// Remove a channel after a final rejection (`subscribeFail`).
    fn fail_channel(&mut self, channel: &str, err: WireError, options: Map<String, Value>) {
        if let Some(e) = self.channels.shift_remove(channel) {
            e.end(SubscribeError::Rejected(err.clone()));
            self.set_channel_snapshot(channel, None);
            self.emit(Event::SubscribeFail {
                channel: channel.to_owned(),
                error: err,
                options,
            });
        }
    }

    /// Local unsubscribe (docs/PROTOCOL.md 6.3) or kick-out (`send == false`).
    pub(super) fn unsubscribe(&mut self, channel: &str, why: SubscribeError, send: bool) {
        let Some(mut entry) = self.channels.shift_remove(channel) else {
            return;
        };
        if let ChannelRequest::InFlight { cid, .. } = entry.request {
            self.pending.remove(&cid);
        }
        entry.request = ChannelRequest::Idle;
        self.set_channel_snapshot(channel, None);
        let was_subscribed = entry.state == ChannelState::Subscribed;
        entry.end(why);
        if was_subscribed {
            self.emit(Event::SubscribeStateChange {
                channel: channel.to_owned(),
                old: ChannelState::Subscribed,
                new: ChannelState::Unsubscribed,
            });
            self.emit(Event::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
        if send && self.is_open() {
            let wire = self.opts.wire_channel(channel);
            let data = raw(serde_json::to_string(&*wire).unwrap_or_default());
            let p = EventPacket::transmit(ev::UNSUBSCRIBE, Some(data));
            self.write_packet(p.encode(KeyOrder::Client));
        }
    }

    /// The server kicked the client out of a channel (`#kickOut`).
    pub(super) fn on_kick_out(&mut self, wire_channel: &str, message: Option<Value>) {
        let channel = self.opts.app_channel(wire_channel).to_owned();
        if self.channels.contains_key(&channel) {
            self.emit(Event::KickOut {
                channel: channel.clone(),
                message,
            });
            self.unsubscribe(&channel, SubscribeError::KickedOut, false);
        }
    }

    /// The connection closed: every channel goes back to pending, nothing in flight.
    pub(super) fn suspend_channels(&mut self) {
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            entry.request = ChannelRequest::Idle;
            if entry.state == ChannelState::Subscribed {
                entry.set_state(ChannelState::Pending);
                self.set_channel_snapshot(&name, Some(ChannelState::Pending));
                self.emit(Event::SubscribeStateChange {
                    channel: name.clone(),
                    old: ChannelState::Subscribed,
                    new: ChannelState::Pending,
                });
                self.emit(Event::Unsubscribe {
                    channel: name.clone(),
                });
            }
        }
    }

    /// The client closed for good: every channel ends.
    pub(super) fn end_channels(&mut self) {
        for (_, e) in self.channels.drain(..) {
            e.end(SubscribeError::Closed);
        }
    }

    /// A publication on `channel` (application name): to every consumer, in any state
    /// including pending (docs/PROTOCOL.md 6.5); on a channel with history, unless the
    /// subscriber has it already (`recovery.rs`).
    pub(super) fn deliver_publication(
        &mut self,
        channel: &str,
        data: Option<&RawValue>,
        position: Option<(u64, &str)>,
    ) {
        let position = match position {
            None => None,
            Some((offset, epoch)) => match self.accept_position(channel, offset, epoch) {
                Accept::Deliver(o, e) => Some((o, e)),
                Accept::Drop => return,
            },
        };
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let mut slow = Vec::new();
        for c in entry.consumers.iter_mut() {
            let m = Message::new(channel, data.map(RawValue::to_owned), position.clone());
            if c.tx.try_send(m).is_err() {
                c.dropped += 1;
                slow.push(c.dropped);
            }
        }
        for dropped in slow {
            tracing::warn!(channel = %channel, dropped, "slow subscription consumer: message dropped");
            self.emit(Event::SlowConsumer {
                name: channel.to_owned(),
                dropped,
            });
        }
    }
}
