//! Authentication: `#authenticate`, deauthentication (`#removeAuthToken`),
//! the token expiry timer, auth events, and leaving `auth_channels` when the socket
//! loses its authentication.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use socketcluster_rs_protocol::reserved::{self, AuthenticateResult, parse_authenticate_token};
use socketcluster_rs_protocol::{Cid, ErrorObject, RawValue, WireError};
use tokio::time::Instant;

use crate::auth::{Claims, is_bad_token, now_ms};
use crate::events::{AuthState, ServerEvent};
use crate::glob::glob_match;
use crate::middleware::Block;
use crate::socket::{AuthInfo, SocketState};

use super::SocketTask;
use super::output::error_object;
use super::step::{After, Gate, Resume, authenticate_kind, gate, inbound_action};

/// Longest single sleep of the expiry timer (re-checked when it fires).
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(86400);

impl SocketTask {
    pub(super) fn on_authenticate(&mut self, cid: Cid, data: Option<Box<RawValue>>) {
        let field = parse_authenticate_token(data.as_deref());
        let outcome = self.server.auth_engine().verify_field(&field);
        let was_auth = self.auth.is_some();
        match outcome.result {
            Err(e) => {
                self.clear_auth_quietly();
                if is_bad_token(&e) {
                    if outcome.signed.is_some() {
                        self.emit(ServerEvent::BadSocketAuthToken {
                            socket: self.socket.clone(),
                            auth_error: e.clone(),
                        });
                    }
                    self.reply_err(cid, &WireError::Object(e));
                    // The state is already cleared: only a deauthentication event with no
                    // old token, then #removeAuthToken after the reply (docs/PROTOCOL.md 5.4).
                    self.deauthenticate_inner(true, None);
                    if was_auth {
                        self.on_auth_lost();
                    }
                } else {
                    let result = AuthenticateResult {
                        is_authenticated: false,
                        auth_error: outcome.signed.as_ref().map(|_| e),
                    };
                    self.reply_ok(cid, Some(result.to_raw()));
                    if was_auth {
                        self.on_auth_lost();
                    }
                }
            }
            Ok(claims) => {
                let signed = outcome.signed.unwrap_or_default();
                let claims = Arc::new(claims);
                self.set_auth_quietly(signed.clone(), claims.clone());
                let socket = &self.socket;
                match gate(
                    &self.server.middleware.inbound,
                    (cid, was_auth),
                    (signed, claims),
                    |_, (signed, claims)| {
                        inbound_action(socket, authenticate_kind(signed, claims), None, None)
                    },
                    |(cid, was_auth), result| Resume::Inbound {
                        after: After::Authenticate { cid, was_auth },
                        result,
                    },
                ) {
                    Gate::Open(((cid, was_auth), _)) => self.authenticated(cid, was_auth),
                    Gate::Step(step) => self.start_step(step),
                }
            }
        }
    }

    /// `#authenticate` succeeded (inbound middleware allowed it).
    pub(super) fn authenticated(&mut self, cid: Cid, was_auth: bool) {
        self.emit_auth_events(was_auth);
        let r = AuthenticateResult {
            is_authenticated: true,
            auth_error: None,
        };
        self.reply_ok(cid, Some(r.to_raw()));
    }

    /// Inbound middleware blocked `#authenticate`: a soft failure, or with `isBadToken`
    /// an error reply and `#removeAuthToken`.
    pub(super) fn authenticate_blocked(&mut self, cid: Cid, was_auth: bool, block: Block) {
        self.clear_auth_quietly();
        let e = block.into_wire("authenticate", "inbound");
        self.warn_wire(&e);
        let bad = e.as_object().is_some_and(is_bad_token);
        if bad {
            self.reply_err(cid, &e);
            self.deauthenticate_inner(true, None);
        } else {
            let r = AuthenticateResult {
                is_authenticated: false,
                auth_error: Some(error_object(e)),
            };
            self.reply_ok(cid, Some(r.to_raw()));
        }
        if was_auth {
            self.on_auth_lost();
        }
    }

    pub(super) fn set_auth_quietly(&mut self, signed: String, claims: Arc<Claims>) {
        let info = AuthInfo {
            signed: Arc::from(signed),
            claims,
        };
        self.arm_expiry(&info);
        self.shared.view().auth = Some(info.clone());
        self.auth = Some(info);
    }

    pub(super) fn clear_auth_quietly(&mut self) {
        self.auth = None;
        self.shared.view().auth = None;
        self.expiry.disarm();
    }

    pub(super) fn emit_auth_events(&mut self, was_auth: bool) {
        let Some(auth) = self.auth.clone() else {
            return;
        };
        if !was_auth {
            self.emit(ServerEvent::AuthenticationStateChange {
                socket: self.socket.clone(),
                old_state: AuthState::Unauthenticated,
                new_state: AuthState::Authenticated,
            });
        }
        // Never the token or its claims.
        tracing::info!(socket = %self.shared.id, "authenticated");
        self.emit(ServerEvent::Authentication {
            socket: self.socket.clone(),
            auth_token: auth.claims,
        });
    }

    /// JS `deauthenticate()` (notify) / `deauthenticateSelf()`.
    pub(super) fn deauthenticate(&mut self, notify: bool) {
        let old = self.auth.take();
        self.shared.view().auth = None;
        self.expiry.disarm();
        self.deauthenticate_inner(notify, old.as_ref().map(|a| a.claims.clone()));
        if old.is_some() {
            self.on_auth_lost();
        }
    }

    pub(super) fn deauthenticate_inner(&mut self, notify: bool, old: Option<Arc<Claims>>) {
        if old.is_some() {
            self.emit(ServerEvent::AuthenticationStateChange {
                socket: self.socket.clone(),
                old_state: AuthState::Authenticated,
                new_state: AuthState::Unauthenticated,
            });
        }
        tracing::info!(socket = %self.shared.id, "deauthenticated");
        self.emit(ServerEvent::Deauthentication {
            socket: self.socket.clone(),
            old_auth_token: old,
        });
        if notify && self.state == SocketState::Open {
            self.send_event(reserved::REMOVE_AUTH_TOKEN, None);
        }
    }

    /// The socket lost its authentication: leave `auth_channels` (our extension).
    pub(super) fn on_auth_lost(&mut self) {
        let cfg = &self.server.config;
        if cfg.auth_channels.is_empty()
            || !cfg.auth_channels_kick_out
            || self.state != SocketState::Open
        {
            return;
        }
        let channels: Vec<String> = self
            .shared
            .view()
            .channels
            .keys()
            .filter(|c| self.is_auth_channel(c))
            .map(|c| c.to_string())
            .collect();
        let message = RawValue::from_string("\"Authentication required\"".to_owned()).ok();
        for c in channels {
            tracing::info!(
                socket = %self.shared.id,
                channel = %c,
                reason = "authentication lost",
                "kicked out"
            );
            self.send_event(
                reserved::KICK_OUT,
                Some(reserved::kick_out_data(&c, message.as_deref())),
            );
            self.unsubscribe_local(&c);
        }
    }

    pub(super) fn is_auth_channel(&self, channel: &str) -> bool {
        self.server
            .config
            .auth_channels
            .iter()
            .any(|p| glob_match(p, channel))
    }

    pub(super) fn arm_expiry(&mut self, info: &AuthInfo) {
        match info.exp() {
            Some(exp) if self.server.config.token_expiry_timer => {
                let now = now_ms() as f64;
                // Expired when now_ms > exp * 1000 (JS isAuthTokenExpired).
                let wait_ms = (exp * 1000.0 - now + 1.0).max(0.0);
                let wait = Duration::from_millis(wait_ms.min(u64::MAX as f64) as u64)
                    .min(MAX_EXPIRY_SLEEP);
                self.expiry.arm(Instant::now() + wait);
            }
            _ => self.expiry.disarm(),
        }
    }

    pub(super) fn on_expiry_timer(&mut self) {
        self.expiry.disarm();
        if self.check_expiry().is_none()
            && let Some(info) = self.auth.clone()
        {
            self.arm_expiry(&info);
        }
    }

    /// JS `_processAuthTokenExpiry`: deauthenticate when the token has expired.
    pub(super) fn check_expiry(&mut self) -> Option<ErrorObject> {
        let auth = self.auth.as_ref()?;
        let exp = auth.exp()?;
        if (now_ms() as f64) <= exp * 1000.0 {
            return None;
        }
        let exp_value = auth.claims.get("exp").cloned().unwrap_or(Value::Null);
        self.deauthenticate(true);
        Some(
            ErrorObject::new("AuthTokenExpiredError", "The socket auth token has expired")
                .with("expiry", exp_value),
        )
    }
}
