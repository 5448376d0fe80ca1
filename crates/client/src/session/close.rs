//! Ending connections: `disconnect`, the close sequence (docs/PROTOCOL.md 6.4, 7.1, 8.1),
//! the reconnect decision (docs/PROTOCOL.md 4.3, 8.4) and `close` (the end of the client).

use socketcluster_rs_protocol::reserved as ev;
use socketcluster_rs_protocol::{CloseCode, ErrorObject, ProtocolVersion, WireError};
use tokio::time::Instant;

use super::pending::Pending;
use super::{Action, CloseFrame, ConnectionState, Phase, Reauth, Session};
use crate::error::{BadConnectionType, ConnectError, InvokeError};
use crate::events::Event;

impl Session {
    /// `Client::disconnect`: close with `code`/`reason`; while closed, only cancel a
    /// pending reconnect (JS).
    pub(super) fn disconnect(&mut self, now: Instant, code: CloseCode, reason: Option<String>) {
        if matches!(self.phase, Phase::Closed) {
            self.timers.reconnect = None;
            self.snapshot.send_modify(|s| s.pending_reconnect = None);
            return;
        }
        self.announce_v1_disconnect(code, reason.as_deref());
        self.close_connection_with(now, code, reason.clone(), reason.unwrap_or_default(), true);
    }

    /// A v14 client transmits `#disconnect` `{code, data}` before it closes an open
    /// connection itself (docs/PROTOCOL.md 1.4; v14 `SCTransport.close`); v20 peers do not.
    fn announce_v1_disconnect(&mut self, code: CloseCode, reason: Option<&str>) {
        if self.opts.protocol_version == ProtocolVersion::V1 && self.is_open() {
            self.write_direct(ev::v1_disconnect_frame(code.0, reason));
        }
    }

    /// The peer closed the socket (`frame` is what its close frame said), or the socket
    /// failed or ended without one (`CloseFrame::None`).
    pub(crate) fn on_socket_closed(&mut self, now: Instant, frame: CloseFrame) {
        let (code, reason) = match frame {
            CloseFrame::None => {
                self.close_connection(now, CloseCode::ABNORMAL, None, false);
                return;
            }
            CloseFrame::Empty => (CloseCode::NO_STATUS, String::new()),
            CloseFrame::Code(code, reason) => (CloseCode(code), reason),
        };
        let reason = if reason.is_empty() {
            self.v1_disconnect_reason.take().unwrap_or_default()
        } else {
            reason
        };
        self.close_connection(now, code, Some(code.reported_reason(&reason)), false);
    }

    /// Close because of `code`; the locally reported reason is `reason` or the table text.
    pub(super) fn close_connection(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: Option<String>,
        send_frame: bool,
    ) {
        let reported = match reason {
            Some(r) => r,
            None => code.reported_reason(""),
        };
        self.close_connection_with(now, code, None, reported, send_frame);
    }

    /// The close sequence: drop the socket, fail every call, suspend channels, emit
    /// `disconnect`/`connectAbort` and `close`, decide whether to reconnect.
    fn close_connection_with(
        &mut self,
        now: Instant,
        code: CloseCode,
        frame_reason: Option<String>,
        reported_reason: String,
        send_frame: bool,
    ) {
        let was_open = match &self.phase {
            Phase::Closed => return,
            Phase::Open(_) => true,
            Phase::Dialing | Phase::Handshaking => false,
        };
        if matches!(self.reauth(), Reauth::Provider { .. }) {
            self.act(Action::CancelProvider);
        }
        self.timers.clear_connection();
        self.reset_batching();
        // Hand the socket to the driver's closer with what is left to write.
        let frame = match (send_frame, code.is_sendable()) {
            (false, _) => CloseFrame::None,
            (true, true) => CloseFrame::Code(code.0, frame_reason.unwrap_or_default()),
            (true, false) => CloseFrame::Empty,
        };
        let leftover = std::mem::take(&mut self.out.frames);
        self.act(Action::CloseSocket { leftover, frame });
        self.phase = Phase::Closed;
        self.timers.reconnect = None;
        self.snapshot.send_modify(|s| {
            s.state = ConnectionState::Closed;
            s.status = None;
        });

        // Abort every call: before any event (official tests need the rejection no later
        // than the `disconnect` event).
        let bad = |event: &str| InvokeError::BadConnection {
            event: event.to_owned(),
            code,
            reason: reported_reason.clone(),
            kind: if was_open {
                BadConnectionType::Disconnect
            } else {
                BadConnectionType::ConnectAbort
            },
        };
        let pending = std::mem::take(&mut self.pending);
        let mut cids: Vec<_> = pending.into_iter().collect();
        cids.sort_by_key(|(c, _)| *c);
        for (_, p) in cids {
            match p {
                Pending::Call { event, reply, .. } => {
                    let _ = reply.send(Err(bad(&event)));
                }
                Pending::Authenticate { reply, .. } => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(bad(ev::AUTHENTICATE)));
                    }
                }
                Pending::Handshake { .. } | Pending::Subscribe { .. } => {}
            }
        }
        let queue = self.outbound.take_queue();
        self.timers.clear_acks();
        for q in queue {
            let e = bad(&q.event);
            q.kind.fail(e);
        }

        self.suspend_channels();

        if was_open {
            self.emit(Event::Disconnect {
                code,
                reason: reported_reason.clone(),
            });
        } else {
            self.emit(Event::ConnectAbort {
                code,
                reason: reported_reason.clone(),
            });
        }
        self.emit(Event::Close {
            code,
            reason: reported_reason.clone(),
        });
        if !code.is_ignored_status() {
            let msg = code.socket_protocol_error_message(Some(&reported_reason));
            self.emit(Event::Error(WireError::Object(
                ErrorObject::new("SocketProtocolError", msg).with("code", code.0),
            )));
        }
        if !was_open {
            let err = self.last_handshake_error.take();
            let dial = self.last_dial_error.take();
            for w in self.connect_waiters.drain(..) {
                let _ = w.send(Err(ConnectError::Aborted {
                    code,
                    reason: match &dial {
                        Some(d) => format!("{reported_reason} ({d})"),
                        None => reported_reason.clone(),
                    },
                    error: err.clone().map(Box::new),
                }));
            }
        }

        // Reconnect policy (docs/PROTOCOL.md 4.3, 8.4).
        if self.opts.auto_reconnect
            && !self.terminated
            && let Some(delay) = self.backoff.after_close(code, (self.unit_random)())
        {
            tracing::debug!(code = code.0, ?delay, "reconnect scheduled");
            self.timers.reconnect = Some(now + delay);
            let attempts = self.backoff.attempts();
            self.snapshot.send_modify(|s| {
                s.pending_reconnect = Some(delay);
                s.connect_attempts = attempts;
            });
        }
    }

    /// `Client::close` (or every handle dropped): graceful close and the end of the
    /// client. Every call fails with `Closed`, every stream ends.
    pub(crate) fn terminate(&mut self, now: Instant) {
        if self.terminated {
            return;
        }
        if !matches!(self.phase, Phase::Closed) {
            self.announce_v1_disconnect(CloseCode::NORMAL, None);
            self.close_connection_with(now, CloseCode::NORMAL, None, String::new(), true);
        }
        self.terminated = true;
        self.timers.reconnect = None;
        for (_, p) in self.pending.drain() {
            if let Pending::Call { reply, .. } = p {
                let _ = reply.send(Err(InvokeError::Closed));
            }
        }
        for q in self.outbound.take_queue() {
            q.kind.fail(InvokeError::Closed);
        }
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(ConnectError::Closed));
        }
        self.end_channels();
        self.handlers.clear();
        self.snapshot.send_modify(|s| {
            s.channels.clear();
            s.terminated = true;
            s.pending_reconnect = None;
        });
    }
}
