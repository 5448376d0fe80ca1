//! The auth state (docs/PROTOCOL.md 5.7): `authenticate` / `deauthenticate` from the
//! application, the server's `#setAuthToken` / `#removeAuthToken`, replies to
//! `#authenticate`, and the token store's results. Re-authentication through the token
//! provider is in `reauth.rs`.

use socketcluster_rs_protocol::error::wire;
use socketcluster_rs_protocol::reserved::{self as ev, AuthenticateResult};
use socketcluster_rs_protocol::{Cid, ResponsePacket, WireError};
use tokio::time::Instant;

use super::outbound::QueuedKind;
use super::{Action, Phase, Session, local_error, raw};
use crate::auth::{AuthState, AuthStatus, ReauthReason};
use crate::command::AuthReply;
use crate::error::{InvokeError, TokenStoreError};
use crate::events::Event;

impl Session {
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

    /// The oldest token-store change finished: when it failed, the session remembers what
    /// the store should have recorded, so that a reconnect neither goes back to the token
    /// the server replaced nor to one the client gave up (a deauthentication the store
    /// could not record must not be undone by the next handshake).
    fn on_store_done(&mut self, ok: bool) {
        let change = self.store_pending.pop_front();
        if ok {
            self.store_fallback = None;
        } else if let Some(change) = change {
            self.store_fallback = Some(change);
        }
    }

    /// A token-store write ([`Action::SaveToken`]) finished.
    pub(crate) fn on_token_saved(&mut self, r: Result<(), TokenStoreError>) {
        self.on_store_done(r.is_ok());
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
        self.on_store_done(r.is_ok());
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
                self.reauth_attempt_failed(now, err.to_string());
            }
            return;
        }
        let status = match AuthenticateResult::parse(r.data.as_deref()) {
            Some(s) => AuthStatus {
                is_authenticated: s.is_authenticated,
                auth_error: s.auth_error,
            },
            // JS: a reply without isAuthenticated authenticates (docs/PROTOCOL.md 3.6.2).
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
            if ok {
                self.reauth_succeeded(now);
            } else {
                let error = status
                    .auth_error
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "not authenticated".to_owned());
                self.reauth_attempt_failed(now, error);
            }
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
                // Documented difference (docs/PROTOCOL.md 12.3 X-6): a #setAuthToken without
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
    pub(super) fn on_remove_auth_token(&mut self, now: Instant, cid: Option<Cid>) {
        self.change_to_unauthenticated();
        self.act(Action::RemoveToken { emit: true });
        if let Some(cid) = cid {
            self.write_packet(ResponsePacket::ok(cid, None).encode());
        }
        self.start_reauth(now, ReauthReason::Removed);
    }
}
