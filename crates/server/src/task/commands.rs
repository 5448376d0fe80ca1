//! Commands from [`Socket`](crate::Socket) handles, executed in the socket task:
//! transmit, invoke (server -> client RPC), set/remove the auth token, batching, kick
//! out, disconnect.

use socketcluster_rs_protocol::codec::KeyOrder;
use socketcluster_rs_protocol::reserved;
use socketcluster_rs_protocol::{CloseCode, ErrorObject, EventPacket, RawValue};

use crate::error::{AuthTokenError, InvokeError, KickOutError};
use crate::socket::{Cmd, SocketState};

use super::{InvokeReply, SocketTask};

impl SocketTask {
    pub(super) fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Transmit { event, data } => {
                if self.state == SocketState::Open {
                    self.send_event(&event, data);
                }
            }
            Cmd::Invoke { event, data, reply } => self.invoke(event, data, reply),
            Cmd::SetAuthToken {
                signed,
                claims,
                ack,
                reply,
            } => {
                if self.state != SocketState::Open {
                    let _ = reply.send(Err(AuthTokenError::NotOpen));
                    return;
                }
                let was_auth = self.auth.is_some();
                self.set_auth_quietly(signed.clone(), claims);
                self.emit_auth_events(was_auth);
                let data = reserved::set_auth_token_data(&signed);
                match ack {
                    Some(ack) => self.invoke(reserved::SET_AUTH_TOKEN.to_owned(), Some(data), ack),
                    None => self.send_event(reserved::SET_AUTH_TOKEN, Some(data)),
                }
                let _ = reply.send(Ok(()));
            }
            Cmd::SignFailed { message } => {
                self.warn(ErrorObject::new("AuthTokenSignError", message));
                self.close(4002, "");
            }
            Cmd::Deauthenticate { notify, ack, reply } => match ack {
                // JS: deauthenticateSelf(), then invoke('#removeAuthToken').
                Some(ack) => {
                    self.deauthenticate(false);
                    self.invoke(reserved::REMOVE_AUTH_TOKEN.to_owned(), None, ack);
                    let _ = reply.send(());
                }
                None => {
                    self.deauthenticate(notify);
                    let _ = reply.send(());
                }
            },
            Cmd::BatchTimer(on) => self.set_batch_timer(on),
            Cmd::KickOut {
                channel,
                message,
                reply,
            } => {
                if self.state != SocketState::Open {
                    let _ = reply.send(Err(KickOutError::NotOpen));
                    return;
                }
                let channels: Vec<String> = match channel {
                    Some(c) => vec![c],
                    None => self.socket.subscriptions(),
                };
                let mut result = Ok(());
                for c in channels {
                    tracing::info!(socket = %self.shared.id, channel = %c, "kicked out");
                    self.send_event(
                        reserved::KICK_OUT,
                        Some(reserved::kick_out_data(&c, message.as_deref())),
                    );
                    if !self.unsubscribe_local(&c) {
                        result = Err(KickOutError::NotSubscribed {
                            socket_id: self.shared.id.to_string(),
                        });
                    }
                }
                let _ = reply.send(result);
            }
            Cmd::Disconnect { code, reason } => {
                if CloseCode(code).is_sendable() {
                    self.close(code, &reason);
                } else {
                    self.close(1000, &reason);
                }
            }
            Cmd::Terminate => self.close_without_frame(1006, ""),
        }
    }

    pub(super) fn invoke(
        &mut self,
        event: String,
        data: Option<Box<RawValue>>,
        reply: InvokeReply,
    ) {
        if self.state != SocketState::Open {
            let _ = reply.send(Err(InvokeError::BadConnection(event)));
            return;
        }
        let max = self.server.config.limits.max_pending_invokes;
        if self.pending.len() >= max {
            self.pending.retain(|_, (_, r)| !r.is_closed());
            if self.pending.len() >= max {
                let _ = reply.send(Err(InvokeError::TooManyPending));
                return;
            }
        }
        let cid = self.cids.next_cid();
        let text = EventPacket::invoke(event.clone(), data, cid).encode(KeyOrder::Server);
        self.pending.insert(cid, (event, reply));
        self.send_text(text);
    }
}
