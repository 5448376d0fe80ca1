//! Connecting: dialing, `#handshake` (docs/PROTOCOL.md 3.6.1), and what happens when a
//! connection opens (auth state, re-authentication, subscriptions, the queue).

use std::time::Duration;

use socketcluster_rs_protocol::reserved::{self as ev, HandshakeStatus};
use socketcluster_rs_protocol::{CloseCode, ErrorObject, EventPacket, KeyOrder, ResponsePacket};
use tokio::time::Instant;

use super::pending::Pending;
use super::timers::TimerKey;
use super::{Action, ConnectionState, Hold, OpenConnection, Phase, Reauth, Session, local_error};
use crate::auth::ReauthReason;
use crate::error::TokenStoreError;
use crate::events::{ConnectStatus, Event, PendingSubscriptions};

impl Session {
    /// Open a new connection, unless one is open or opening, or the client was closed.
    pub(super) fn start_connect(&mut self, now: Instant) {
        if self.terminated || !matches!(self.phase, Phase::Closed) {
            return;
        }
        self.timers.reconnect = None;
        self.generation += 1;
        self.phase = Phase::Dialing;
        self.last_handshake_error = None;
        self.last_dial_error = None;
        self.v1_disconnect_reason = None;
        self.snapshot.send_modify(|s| {
            s.state = ConnectionState::Connecting;
            s.pending_reconnect = None;
        });
        self.emit(Event::Connecting);
        self.act(Action::Dial);
        self.timers.dial = Some(now + self.opts.connect_timeout);
    }

    /// The WebSocket could not be opened.
    pub(crate) fn on_dial_failed(&mut self, now: Instant, error: String) {
        self.timers.dial = None;
        self.last_dial_error = Some(error);
        self.close_connection(now, CloseCode::ABNORMAL, None, false);
    }

    /// The WebSocket is open: the stored token is read next ([`Action::LoadToken`]), unless
    /// the store failed to record the last change (then the token it should hold is used).
    /// Returns false (the driver drops the socket) when no dial was expected.
    pub(crate) fn on_socket_open(&mut self, now: Instant) -> bool {
        if !matches!(self.phase, Phase::Dialing) {
            return false;
        }
        self.timers.dial = None;
        self.phase = Phase::Handshaking;
        self.ping_timeout = self.opts.connect_timeout;
        self.ping_reset(now);
        match self.store_fallback.clone() {
            // The store failed to record the last change: use what it should hold, and try
            // to record it again.
            Some(token) => {
                match &token {
                    Some(t) => self.act(Action::SaveToken(t.clone())),
                    None => self.act(Action::RemoveToken { emit: false }),
                }
                self.on_token_loaded(now, Ok(token));
            }
            None => self.act(Action::LoadToken),
        }
        true
    }

    /// The stored token was read: send `#handshake` with it.
    pub(crate) fn on_token_loaded(
        &mut self,
        now: Instant,
        loaded: Result<Option<String>, TokenStoreError>,
    ) {
        if !matches!(self.phase, Phase::Handshaking) {
            return;
        }
        let token = match loaded {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "failed to load the auth token");
                self.emit(Event::Error(local_error(
                    "FailedToLoadTokenError",
                    e.to_string(),
                )));
                None
            }
        };
        let cid = self.cids.next_cid();
        let p = EventPacket::invoke(
            ev::HANDSHAKE,
            Some(ev::handshake_request(token.as_deref())),
            cid,
        );
        self.write_direct(p.encode(KeyOrder::Client));
        let deadline = now + self.opts.ack_timeout;
        self.timers.add_ack(deadline, TimerKey::Sent(cid));
        self.pending
            .insert(cid, Pending::Handshake { token, deadline });
    }

    pub(super) fn on_handshake_reply(
        &mut self,
        now: Instant,
        token: Option<String>,
        resp: ResponsePacket,
    ) {
        if let Some(err) = resp.error() {
            // docs/PROTOCOL.md 8.2: error event, then close with statusCode or 4003.
            let code = err
                .as_object()
                .and_then(ErrorObject::status_code)
                .map(CloseCode)
                .unwrap_or(CloseCode::HANDSHAKE_FAILED);
            let reason = format!("{}: {}", err.name(), err.message());
            self.emit(Event::Error(err.clone()));
            self.last_handshake_error = Some(err);
            self.close_connection(now, code, Some(reason), true);
            return;
        }
        let status = HandshakeStatus::parse(resp.data.as_deref());
        self.on_open(now, status, token);
    }

    /// The handshake succeeded. In order: the auth state from the reply, then (with a
    /// token provider, if the socket is unauthenticated) a re-authentication that holds
    /// subscriptions and the queue, then pending subscriptions (if
    /// `auto_subscribe_on_connect`), `connect`, and the provider call or the queue.
    fn on_open(&mut self, now: Instant, status: HandshakeStatus, token: Option<String>) {
        self.phase = Phase::Open(OpenConnection {
            subscriptions_released: false,
            reauth: Reauth::Idle,
        });
        if self.outbound.batching_explicit {
            self.start_batching(now);
        } else if self.opts.batch_on_handshake {
            self.start_batching(now);
            self.timers.batch_stop = Some(now + self.opts.batch_on_handshake_duration);
        }
        if let Some(pt) = status.ping_timeout {
            self.ping_timeout = Duration::from_millis(pt);
        }
        self.ping_reset(now);
        let connect_status = ConnectStatus {
            id: status.id.clone(),
            ping_timeout: status.ping_timeout,
            is_authenticated: status.is_authenticated,
            auth_error: status.auth_error.clone(),
            auth_token: token.clone(),
        };
        self.snapshot.send_modify(|s| {
            s.state = ConnectionState::Open;
            s.status = Some(connect_status.clone());
        });
        match (status.is_authenticated, token) {
            (true, Some(t)) => self.change_to_authenticated(t),
            _ => self.change_to_unauthenticated(),
        }
        self.backoff.reset();
        self.snapshot.send_modify(|s| s.connect_attempts = 0);
        // Rust-only: re-authenticate before anything else is subscribed or sent.
        let reauth = (self.has_provider() && !self.is_authenticated()).then(|| {
            let reason = match &status.auth_error {
                Some(e) => ReauthReason::Rejected(e.clone()),
                None => ReauthReason::NoToken,
            };
            let seq = self.begin_reauth(now, Hold::SubscriptionsAndQueue, reason.clone());
            (seq, reason)
        });
        if self.opts.auto_subscribe_on_connect {
            self.process_pending_subscriptions();
        }
        self.emit(Event::Connect {
            status: connect_status,
            pending: PendingSubscriptions {
                tx: self.cmd.clone(),
            },
        });
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        match reauth {
            Some((seq, reason)) => self.call_provider(seq, reason),
            None => {
                self.flush_queue();
                self.schedule_refresh(now);
            }
        }
    }
}
