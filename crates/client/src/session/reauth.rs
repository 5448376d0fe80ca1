//! Authentication: the auth state (PROTOCOL.md 5.7), `authenticate` / `deauthenticate`,
//! the server's `#setAuthToken` / `#removeAuthToken`, and the re-authentication through
//! the token provider, whose phase ([`Reauth`]) decides what is held back.
//!
//! The ordering guarantee (crate docs, "Ordering guarantee") lives here: a
//! re-authentication started by a handshake that left the socket unauthenticated holds
//! both `#subscribe` requests and the outbound queue ([`Hold::SubscriptionsAndQueue`]);
//! one started by `#removeAuthToken` or an auth-related subscription rejection holds
//! subscriptions only; a refresh before `exp` holds nothing (the old token still works).

use serde_json::Value;
use socketcluster_protocol::error::wire;
use socketcluster_protocol::reserved::{self as ev, AuthenticateResult};
use socketcluster_protocol::{Cid, EventPacket, KeyOrder, ResponsePacket, WireError};
use tokio::time::Instant;

use super::outbound::QueuedKind;
use super::pending::Pending;
use super::timers::TimerKey;
use super::{Action, Phase, Session, local_error, raw};
use crate::auth::{AuthState, AuthStatus, BoxError, ReauthReason, TokenRequest};
use crate::command::AuthReply;
use crate::error::{InvokeError, TokenStoreError};
use crate::events::Event;

/// What a re-authentication in progress holds back, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Hold {
    /// Nothing (a refresh of a token that is still valid).
    Nothing,
    /// New `#subscribe` requests.
    Subscriptions,
    /// `#subscribe` requests and the outbound queue (after a handshake that left the
    /// socket unauthenticated, so that subscriptions still precede queued messages).
    SubscriptionsAndQueue,
}

impl Hold {
    fn for_reason(reason: &ReauthReason) -> Hold {
        match reason {
            ReauthReason::NoToken | ReauthReason::Rejected(_) => Hold::SubscriptionsAndQueue,
            ReauthReason::Removed | ReauthReason::SubscribeRejected(_) => Hold::Subscriptions,
            ReauthReason::Expiring => Hold::Nothing,
        }
    }
}

/// The re-authentication phase of one open connection (only ever left `Idle` with a
/// token provider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reauth {
    /// No re-authentication in progress.
    Idle,
    /// The provider was called (call `seq`) and has not answered.
    Provider { seq: u64, hold: Hold },
    /// The provider's token was sent with `#authenticate` (as `cid`); its reply is awaited.
    Authenticating { cid: u64, hold: Hold },
    /// A re-authentication failed on this connection: the provider is not called again
    /// for a removed token or a rejected subscription until the next connection (no
    /// loops); a refresh before `exp` still is.
    GaveUp,
}

impl Reauth {
    pub(crate) fn hold(&self) -> Hold {
        match self {
            Reauth::Provider { hold, .. } | Reauth::Authenticating { hold, .. } => *hold,
            Reauth::Idle | Reauth::GaveUp => Hold::Nothing,
        }
    }

    fn raise_hold(&mut self, to: Hold) {
        if let Reauth::Provider { hold, .. } | Reauth::Authenticating { hold, .. } = self {
            *hold = (*hold).max(to);
        }
    }
}

impl Session {
    /// The re-authentication phase (`Idle` while not open).
    pub(super) fn reauth(&self) -> &Reauth {
        match &self.phase {
            Phase::Open(o) => &o.reauth,
            _ => &Reauth::Idle,
        }
    }

    pub(super) fn holds(&self, what: Hold) -> bool {
        self.reauth().hold() >= what
    }

    /// Whether the provider may still be asked on this connection.
    pub(super) fn can_reauthenticate(&self) -> bool {
        self.opts.token_provider.is_some() && *self.reauth() != Reauth::GaveUp
    }

    pub(super) fn is_reauth_request(&self, cid: u64) -> bool {
        matches!(self.reauth(), Reauth::Authenticating { cid: c, .. } if *c == cid)
    }

    // ---------------------------------------------------------------- the auth state

    pub(super) fn change_to_authenticated(&mut self, token: String) {
        let claims = crate::auth::decode_claims(&token);
        self.signed_token = Some(token.clone());
        self.claims = claims.clone();
        let (t2, c2) = (token.clone(), claims.clone());
        self.snapshot.send_modify(|s| {
            s.auth_state = AuthState::Authenticated;
            s.signed_token = Some(t2);
            s.claims = c2;
        });
        if self.auth_state != AuthState::Authenticated {
            let old = self.auth_state;
            self.auth_state = AuthState::Authenticated;
            self.process_pending_if_released();
            self.emit(Event::AuthStateChange {
                old,
                new: AuthState::Authenticated,
                signed_token: Some(token.clone()),
                token: claims.clone(),
            });
        }
        self.emit(Event::Authenticate {
            signed_token: Some(token),
            token: claims,
        });
    }

    pub(super) fn change_to_unauthenticated(&mut self) {
        let old_signed = self.signed_token.take();
        let old_claims = self.claims.take();
        self.timers.refresh = None;
        self.snapshot.send_modify(|s| {
            s.auth_state = AuthState::Unauthenticated;
            s.signed_token = None;
            s.claims = None;
        });
        if self.auth_state == AuthState::Authenticated {
            self.auth_state = AuthState::Unauthenticated;
            self.emit(Event::AuthStateChange {
                old: AuthState::Authenticated,
                new: AuthState::Unauthenticated,
                signed_token: None,
                token: None,
            });
            self.emit(Event::Deauthenticate {
                old_signed_token: old_signed,
                old_token: old_claims,
            });
        }
    }

    /// A token-store write ([`Action::SaveToken`]) finished.
    pub(crate) fn on_token_saved(&mut self, r: Result<(), TokenStoreError>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "failed to save the auth token");
            self.emit(Event::Error(local_error(
                "FailedToSaveTokenError",
                e.to_string(),
            )));
        }
    }

    /// A token-store delete ([`Action::RemoveToken`]) finished.
    pub(crate) fn on_token_removed(
        &mut self,
        emit: bool,
        r: Result<Option<String>, TokenStoreError>,
    ) {
        match r {
            Ok(old) => {
                if emit {
                    self.emit(Event::RemoveAuthToken { old_token: old });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to remove the auth token");
                self.emit(Event::Error(local_error(
                    "FailedToRemoveTokenError",
                    e.to_string(),
                )));
            }
        }
    }

    // ---------------------------------------------------------------- application calls

    /// `Client::authenticate`: `#authenticate` through the outbound queue.
    pub(super) fn authenticate(&mut self, now: Instant, token: String, reply: AuthReply) {
        let deadline = now + self.opts.ack_timeout;
        let data = raw(serde_json::to_string(&token).unwrap_or_default());
        self.outbound(
            now,
            ev::AUTHENTICATE.to_owned(),
            Some(data),
            QueuedKind::Authenticate { token, reply },
            deadline,
        );
    }

    /// `Client::deauthenticate`: delete the token, tell the server, become
    /// unauthenticated.
    pub(super) fn deauthenticate(&mut self, now: Instant) {
        self.act(Action::RemoveToken { emit: true });
        if !matches!(self.phase, Phase::Closed) {
            let deadline = now + self.opts.ack_timeout;
            self.outbound(
                now,
                ev::REMOVE_AUTH_TOKEN.to_owned(),
                None,
                QueuedKind::Transmit,
                deadline,
            );
        }
        self.change_to_unauthenticated();
    }

    /// The reply to an `#authenticate`, from the application or a re-authentication.
    pub(super) fn on_authenticate_reply(
        &mut self,
        now: Instant,
        token: String,
        reply: Option<AuthReply>,
        reauth: bool,
        r: ResponsePacket,
    ) {
        if let Some(err) = r.error() {
            self.change_to_unauthenticated();
            if let Some(reply) = reply {
                let _ = reply.send(Err(InvokeError::Remote(err.clone())));
            }
            if reauth {
                self.emit(Event::ReauthenticationFailed {
                    error: err.to_string(),
                });
                self.end_reauth(now, false);
            }
            return;
        }
        let status = match AuthenticateResult::parse(r.data.as_deref()) {
            Some(s) => AuthStatus {
                is_authenticated: s.is_authenticated,
                auth_error: s.auth_error,
            },
            // JS: a reply without isAuthenticated authenticates (PROTOCOL.md 3.6.2).
            None => AuthStatus {
                is_authenticated: true,
                auth_error: None,
            },
        };
        if status.is_authenticated {
            self.change_to_authenticated(token.clone());
            self.act(Action::SaveToken(token));
        } else {
            self.change_to_unauthenticated();
            if !reauth {
                // JS saves the token even when the reply says unauthenticated.
                self.act(Action::SaveToken(token));
            }
        }
        let ok = status.is_authenticated;
        if let Some(reply) = reply {
            let _ = reply.send(Ok(status.clone()));
        }
        if reauth {
            if !ok {
                self.emit(Event::ReauthenticationFailed {
                    error: status
                        .auth_error
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "not authenticated".to_owned()),
                });
            }
            self.end_reauth(now, ok);
        } else {
            self.schedule_refresh(now);
        }
    }

    // ---------------------------------------------------------------- server events

    /// `#setAuthToken`: authenticated with the server's token, which is stored.
    pub(super) fn on_set_auth_token(
        &mut self,
        now: Instant,
        token: Option<String>,
        cid: Option<Cid>,
    ) {
        match token {
            Some(token) => {
                self.change_to_authenticated(token.clone());
                self.act(Action::SaveToken(token));
                if let Some(cid) = cid {
                    self.write_packet(ResponsePacket::ok(cid, None).encode());
                }
                self.schedule_refresh(now);
            }
            None => {
                // Documented difference (PROTOCOL.md 12.3 X-6): a #setAuthToken without
                // a token string is ignored.
                if let Some(cid) = cid {
                    let err = WireError::Object(wire::no_token_data());
                    self.write_packet(ResponsePacket::err(cid, &err).encode());
                }
            }
        }
    }

    /// `#removeAuthToken`: unauthenticated, token deleted; with a provider, a
    /// re-authentication holds new subscriptions back.
    pub(super) fn on_remove_auth_token(&mut self, cid: Option<Cid>) {
        self.change_to_unauthenticated();
        self.act(Action::RemoveToken { emit: true });
        if let Some(cid) = cid {
            self.write_packet(ResponsePacket::ok(cid, None).encode());
        }
        self.start_reauth(ReauthReason::Removed);
    }

    // ---------------------------------------------------------------- re-authentication

    /// Ask the provider for a token because of `reason`, unless one is already being
    /// fetched (then what it holds grows to what `reason` needs) or the connection gave
    /// up. Only while open and with a provider.
    pub(super) fn start_reauth(&mut self, reason: ReauthReason) {
        if self.opts.token_provider.is_none() {
            return;
        }
        let Some(open) = self.open_mut() else {
            return;
        };
        let hold = Hold::for_reason(&reason);
        match &mut open.reauth {
            Reauth::Idle => {}
            Reauth::GaveUp if reason == ReauthReason::Expiring => {}
            Reauth::GaveUp => return,
            r @ (Reauth::Provider { .. } | Reauth::Authenticating { .. }) => {
                r.raise_hold(hold);
                return;
            }
        }
        let seq = self.begin_reauth(hold);
        self.call_provider(seq, reason);
    }

    /// Enter [`Reauth::Provider`] for a new provider call; returns its number.
    pub(super) fn begin_reauth(&mut self, hold: Hold) -> u64 {
        self.provider_seq += 1;
        let seq = self.provider_seq;
        if let Some(open) = self.open_mut() {
            open.reauth = Reauth::Provider { seq, hold };
        }
        seq
    }

    /// Call the provider (call `seq`, already entered with [`Session::begin_reauth`]).
    pub(super) fn call_provider(&mut self, seq: u64, reason: ReauthReason) {
        tracing::info!(?reason, "calling the token provider");
        self.emit(Event::Reauthenticating {
            reason: reason.clone(),
        });
        let request = TokenRequest {
            reason,
            current_token: self.signed_token.clone(),
        };
        self.act(Action::CallProvider { seq, request });
    }

    /// The provider answered call `seq`.
    pub(crate) fn on_provider_result(
        &mut self,
        now: Instant,
        seq: u64,
        r: Result<String, BoxError>,
    ) {
        let hold = match self.reauth() {
            Reauth::Provider { seq: s, hold } if *s == seq => *hold,
            _ => return,
        };
        match r {
            Ok(token) => {
                let cid = self.cids.next_cid();
                let data = raw(serde_json::to_string(&token).unwrap_or_default());
                let p = EventPacket::invoke(ev::AUTHENTICATE, Some(data), cid);
                // Bypasses the (held) outbound queue: it must go before anything else.
                self.write_packet(p.encode(KeyOrder::Client));
                let deadline = now + self.opts.ack_timeout;
                self.timers.add_ack(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Authenticate {
                        token,
                        reply: None,
                        deadline,
                    },
                );
                if let Some(open) = self.open_mut() {
                    open.reauth = Reauth::Authenticating { cid, hold };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token provider failed");
                self.emit(Event::ReauthenticationFailed {
                    error: e.to_string(),
                });
                self.end_reauth(now, false);
            }
        }
    }

    /// The re-authentication finished: release held channels (retry those rejected for
    /// an auth reason once, or fail them), then subscriptions, then the queue.
    pub(super) fn end_reauth(&mut self, now: Instant, success: bool) {
        if let Some(open) = self.open_mut() {
            open.reauth = if success {
                Reauth::Idle
            } else {
                Reauth::GaveUp
            };
        }
        self.release_channels_awaiting_reauth(success);
        if self.is_open() {
            self.process_pending_if_released();
            self.flush_queue();
            self.schedule_refresh(now);
        }
    }

    /// While connected with a provider, call it `reauth_margin` before the token's `exp`
    /// (at most a third of the token's lifetime before it).
    pub(super) fn schedule_refresh(&mut self, now: Instant) {
        self.timers.refresh = None;
        if self.opts.token_provider.is_none() || !self.is_open() || !self.is_authenticated() {
            return;
        }
        let Some(claims) = self.claims.as_ref() else {
            return;
        };
        let Some(exp) = claims.get("exp").and_then(Value::as_f64) else {
            return;
        };
        let mut margin = self.opts.reauth_margin.as_secs_f64();
        if let Some(iat) = claims.get("iat").and_then(Value::as_f64) {
            let lifetime = exp - iat;
            if lifetime > 0.0 {
                margin = margin.min(lifetime / 3.0);
            }
        }
        let wait = (exp - margin - (self.unix_now)()).max(0.0);
        // An `exp` too far away to schedule (or not a number) schedules nothing.
        let Some(at) = std::time::Duration::try_from_secs_f64(wait)
            .ok()
            .and_then(|d| now.checked_add(d))
        else {
            return;
        };
        tracing::debug!(wait_s = wait, "token refresh scheduled");
        self.timers.refresh = Some(at);
    }
}
