//! The `#handshake`: token verification, `handshakeSC` middleware,
//! the `authenticate` inbound action for a valid token, and the handshake reply.

use std::sync::Arc;

use serde_json::Value;
use socketcluster_rs_protocol::reserved::{HandshakeStatus, parse_handshake_token};
use socketcluster_rs_protocol::{
    Cid, ErrorObject, ProtocolVersion, RawValue, ResponsePacket, WireError,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{VerifyOutcome, is_bad_token};
use crate::events::ServerEvent;
use crate::middleware::{Block, HandshakeAction};
use crate::socket::SocketState;

use super::SocketTask;
use super::step::{After, Gate, Resume, authenticate_kind, gate, inbound_action};

impl SocketTask {
    pub(super) fn on_handshake(&mut self, cid: Cid, data: Option<Box<RawValue>>) {
        let field = parse_handshake_token(data.as_deref());
        let outcome = self.server.auth_engine().verify_field(&field);
        if self.state == SocketState::Open {
            // A repeated #handshake (docs/PROTOCOL.md 3.6.1, X-12): re-verify the token and
            // answer with the same id; handshake middleware is not run again and the
            // socket is not counted twice.
            return self.authenticate_for_handshake(cid, outcome, true);
        }
        self.handshake_deadline.disarm();
        let socket = &self.socket;
        match gate(
            &self.server.middleware.handshake,
            (cid, outcome),
            (),
            |(_, outcome), ()| HandshakeAction {
                socket: socket.clone(),
                signed_auth_token: outcome.signed.clone().filter(|s| !s.is_empty()),
                auth_token: outcome.result.as_ref().ok().map(|c| Arc::new(c.clone())),
                auth_token_error: outcome.result.as_ref().err().cloned(),
            },
            |(cid, outcome), result| Resume::Handshake {
                cid,
                outcome,
                result,
            },
        ) {
            Gate::Open(((cid, outcome), ())) => {
                self.handshake_middleware_done(cid, outcome, Ok(()))
            }
            Gate::Step(step) => self.start_step(step),
        }
    }

    pub(super) fn handshake_middleware_done(
        &mut self,
        cid: Cid,
        outcome: VerifyOutcome,
        result: Result<(), Block>,
    ) {
        if let Err(block) = result {
            let mut err = block.into_wire("handshakeSC", "handshake");
            let code = match &mut err {
                WireError::Object(o) => match o.status_code() {
                    Some(c) if (4000..=4999).contains(&c) => c,
                    _ => {
                        o.extra.insert("statusCode".into(), Value::from(4008));
                        4008
                    }
                },
                WireError::Value(_) => 4008,
            };
            self.warn_wire(&err);
            tracing::info!(socket = %self.shared.id, status = code, "handshake rejected");
            let mut packet = ResponsePacket::err(cid, &err);
            if self.version == ProtocolVersion::V1 {
                // v14 clients read the close code from `data.code` (docs/PROTOCOL.md 1.4).
                packet.data = RawValue::from_string(format!("{{\"code\":{code}}}")).ok();
            }
            self.shared
                .outbox
                .push_unbatched(Utf8Bytes::from(packet.encode()));
            return self.close(code, "");
        }
        self.authenticate_for_handshake(cid, outcome, false);
    }

    pub(super) fn authenticate_for_handshake(
        &mut self,
        cid: Cid,
        outcome: VerifyOutcome,
        rehandshake: bool,
    ) {
        let was_auth = self.auth.is_some();
        match outcome.result {
            Ok(claims) => {
                let signed = outcome.signed.unwrap_or_default();
                let claims = Arc::new(claims);
                self.set_auth_quietly(signed.clone(), claims.clone());
                let socket = &self.socket;
                match gate(
                    &self.server.middleware.inbound,
                    (cid, rehandshake, was_auth),
                    (signed, claims),
                    |_, (signed, claims)| {
                        inbound_action(socket, authenticate_kind(signed, claims), None, None)
                    },
                    |(cid, rehandshake, was_auth), result| Resume::Inbound {
                        after: After::HandshakeAuth {
                            cid,
                            rehandshake,
                            was_auth,
                        },
                        result,
                    },
                ) {
                    Gate::Open(((cid, rehandshake, was_auth), _)) => {
                        self.complete_handshake(cid, None, rehandshake, was_auth)
                    }
                    Gate::Step(step) => self.start_step(step),
                }
            }
            Err(e) => {
                self.clear_auth_quietly();
                let auth_error = if outcome.signed.is_some() {
                    if is_bad_token(&e) {
                        self.emit(ServerEvent::BadSocketAuthToken {
                            socket: self.socket.clone(),
                            auth_error: e.clone(),
                        });
                    }
                    Some(e)
                } else {
                    None
                };
                self.complete_handshake(cid, auth_error, rehandshake, was_auth);
            }
        }
    }

    pub(super) fn complete_handshake(
        &mut self,
        cid: Cid,
        auth_error: Option<ErrorObject>,
        rehandshake: bool,
        was_auth: bool,
    ) {
        let bad = auth_error.as_ref().is_some_and(is_bad_token);
        let authenticated = self.auth.is_some();
        let status = HandshakeStatus {
            id: Some(self.shared.id.to_string()),
            ping_timeout: Some(self.server.config.ping_timeout.as_millis() as u64),
            auth_error: auth_error.clone(),
            is_authenticated: authenticated,
        };
        if !rehandshake {
            self.state = SocketState::Open;
            self.shared.view().state = SocketState::Open;
            self.server.socket_opened(&self.socket);
            self.start_outbound_pipeline();
        }
        // The handshake reply is never batched; batching on handshake starts right
        // after it (docs/PROTOCOL.md 8.5).
        self.shared.outbox.push_unbatched(Utf8Bytes::from(
            ResponsePacket::ok(cid, Some(status.to_raw())).encode(),
        ));
        if !rehandshake {
            tracing::info!(
                socket = %self.shared.id,
                authenticated,
                "handshake completed"
            );
            if self.server.config.batch_on_handshake {
                self.start_batch_on_handshake();
            }
        }
        if bad {
            // JS: deauthenticate() after a bad token; #removeAuthToken follows the reply.
            self.deauthenticate_inner(true, None);
        } else if was_auth && !authenticated {
            self.on_auth_lost();
        }
        if !rehandshake {
            self.emit(ServerEvent::Connection {
                socket: self.socket.clone(),
                is_authenticated: authenticated,
                auth_error,
            });
        }
        if authenticated {
            self.emit_auth_events(was_auth);
        }
    }
}
