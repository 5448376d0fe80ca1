//! Closing: with a close frame (and the close handshake), without one, and the end of
//! the socket task (state, events, pending invokes, subscriptions).

use socketcluster_rs_protocol::CloseCode;
use tokio::time::Instant;

use crate::error::InvokeError;
use crate::events::ServerEvent;
use crate::socket::{CloseInfo, SocketState};

use super::pump::{IoEvent, IoPoll};
use super::{Closing, SocketTask};

impl SocketTask {
    pub(super) fn close(&mut self, code: u16, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        self.shared.outbox.push_close(code, reason);
        self.closing = Some(Closing {
            code,
            reason: reason.to_owned(),
            sent_frame: true,
            by_peer: false,
        });
    }

    pub(super) fn close_without_frame(&mut self, code: u16, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(Closing {
            code,
            reason: reason.to_owned(),
            sent_frame: false,
            by_peer: false,
        });
    }

    pub(super) async fn finish(mut self) {
        let closing = self.closing.take().unwrap_or(Closing {
            code: 1006,
            reason: String::new(),
            sent_frame: false,
            by_peer: false,
        });
        // Commands sent from now on fail right away (queued ones are dropped: their
        // callers see the socket closed).
        self.shared.outbox.close_cmds();
        let prev = self.state;
        self.state = SocketState::Closed;
        self.shared.view().state = SocketState::Closed;
        self.step = None;
        let reason = CloseCode(closing.code).reported_reason(&closing.reason);
        self.shared.set_closed(CloseInfo {
            code: closing.code,
            reason: reason.clone(),
        });
        for (_, (event, reply)) in self.pending.drain() {
            let _ = reply.send(Err(InvokeError::BadConnection(event)));
        }
        self.server.socket_closed(&self.socket, prev);
        tracing::info!(
            socket = %self.shared.id,
            code = closing.code,
            reason = %reason,
            was_open = prev == SocketState::Open,
            "connection closed"
        );
        let ev = if prev == SocketState::Open {
            ServerEvent::Disconnection {
                socket: self.socket.clone(),
                code: closing.code,
                reason,
            }
        } else {
            ServerEvent::ConnectionAbort {
                socket: self.socket.clone(),
                code: closing.code,
                reason,
            }
        };
        self.emit(ev);
        let channels = self.socket.subscriptions();
        for c in channels {
            self.unsubscribe_local(&c);
        }
        if closing.sent_frame || closing.by_peer {
            // Let the close handshake complete: our close frame (queued behind any
            // earlier frames) goes out, and the peer's close (or its reply) comes in.
            let limits = &self.server.config.limits;
            let deadline = Instant::now() + limits.close_timeout;
            let mut budget = limits.linger_bytes();
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    let ev = IoPoll {
                        ws: &mut self.ws,
                        w: &mut self.wstate,
                        can_read: true,
                        batch_reads: false,
                        shared: &self.shared,
                        stats: &self.server.stats,
                    }
                    .await;
                    match ev {
                        IoEvent::Inbound(Some(Ok(_))) => continue,
                        _ => break,
                    }
                }
                // No more messages are read (the peer closed, or its input was bad):
                // linger until the peer closes its side (RFC 6455 §7.1.1).
                std::future::poll_fn(|cx| self.ws.poll_linger(cx, &mut budget)).await;
            })
            .await;
        }
        self.server.sockets.socket_finished();
    }
}
