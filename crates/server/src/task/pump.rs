//! The I/O pump ([`IoPoll`]: the outbox's frames to the WebSocket, batched and flushed
//! once per batch, and reads) and the task's reactions to I/O events: messages and
//! errors from the WebSocket, the heartbeat, the inbound rate limit
//! and the outbound queue overflow (slow consumer).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::events::Stats;
use crate::limits::{CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION};
use crate::socket::{Cmd, FRAME_OVERHEAD, Out, SocketShared, free_if_empty};
use crate::ws::{WsError, WsMessage};

use super::inbound::Inbound;
use super::{Closing, SocketTask, Ws};

/// Write-side state of the socket's WebSocket (driven by [`IoPoll`]).
#[derive(Default)]
pub(super) struct WriteState {
    /// Frames taken from the outbox, not yet handed to the WebSocket.
    pub(super) out: VecDeque<Out>,
    /// Messages read since the last write phase (see [`READ_BATCH`]).
    reads_since_flush: u16,
    /// Frames were written since the last flush.
    dirty: bool,
    /// Our close frame was written: nothing more is sent.
    close_sent: bool,
}

pub(super) enum IoEvent {
    Inbound(Option<Result<WsMessage, WsError>>),
    Cmds(VecDeque<Cmd>),
    /// The outbound queue limit was exceeded (slow consumer).
    Overflow,
    WriteFailed,
}

/// Drives the socket's writes (outbox -> WebSocket, batched, flushed once per batch)
/// and, when allowed, its reads, in the socket task itself: one task owns the whole
/// WebSocket, so a blocked write can never starve reads of wakeups.
pub(super) struct IoPoll<'a> {
    pub(super) ws: &'a mut Ws,
    pub(super) w: &'a mut WriteState,
    pub(super) can_read: bool,
    /// Read what is already there before writing (off while closing: the close frame
    /// must go out first).
    pub(super) batch_reads: bool,
    pub(super) shared: &'a SocketShared,
    /// Where the sent-message counters go.
    pub(super) stats: &'a Stats,
}

/// Queue capacity (frames) an emptied write queue may keep without being freed at once.
const SMALL_QUEUE: usize = 16;

/// Messages read back to back (while more are already buffered) before the answers
/// queued so far are written. Small enough that the peer works on the first answers
/// while later requests are processed: measured with 100 pipelined invokes, 16 gave
/// 1.7x the throughput of 64 (and of 256) at slightly lower CPU per invoke; 4-8 gave
/// no more throughput and cost more CPU.
const READ_BATCH: u16 = 16;

/// Frames written per poll before yielding to reads.
const WRITE_BATCH: usize = 256;

impl Future for IoPoll<'_> {
    type Output = IoEvent;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoEvent> {
        let this = &mut *self;
        let mut written = 0usize;
        let mut sent_texts = 0u64;
        let mut sent_bytes = 0usize;
        let mut blocked = false;
        let outbox = &this.shared.outbox;
        if outbox.is_overflowed() {
            return Poll::Ready(IoEvent::Overflow);
        }
        // Read first, as long as messages are already there (bounded): the answers to
        // everything the peer sent in one go are written with one flush, not one
        // send per answer.
        let read_first = this.can_read && this.batch_reads && this.w.reads_since_flush < READ_BATCH;
        if read_first && let Poll::Ready(m) = this.ws.poll_next(cx) {
            this.w.reads_since_flush += 1;
            return Poll::Ready(IoEvent::Inbound(m));
        }
        this.w.reads_since_flush = 0;
        // Whether the outbox will wake us for new frames or commands.
        let mut registered = false;
        let mut cmds = VecDeque::new();
        while !this.w.close_sent {
            if this.w.out.is_empty() && !outbox.take(cx, &mut this.w.out, &mut cmds) {
                registered = true;
                if this.w.out.capacity() <= SMALL_QUEUE {
                    // Drained after a small burst: keep no memory while idle.
                    this.w.out = VecDeque::new();
                }
                break;
            }
            if this.w.out.is_empty() {
                // Only commands arrived.
                break;
            }
            if written >= WRITE_BATCH {
                // More is queued: come back after reading.
                cx.waker().wake_by_ref();
                break;
            }
            match this.ws.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(IoEvent::WriteFailed),
                Poll::Pending => {
                    blocked = true;
                    break;
                }
            }
            let Some(out) = this.w.out.pop_front() else {
                break;
            };
            let msg = match out {
                Out::Text(t) => {
                    sent_texts += 1;
                    sent_bytes += t.len();
                    this.shared.outbox.release(t.len() + FRAME_OVERHEAD);
                    WsMessage::Text(t)
                }
                Out::Close(code, reason) => {
                    this.w.close_sent = true;
                    WsMessage::Close(Some((code, reason)))
                }
            };
            if this.ws.start_send(msg).is_err() {
                return Poll::Ready(IoEvent::WriteFailed);
            }
            this.w.dirty = true;
            written += 1;
        }
        if sent_texts > 0 {
            // Process-wide counters: once per batch, not per frame (contended atomics).
            let stats = this.stats;
            stats.messages_sent.fetch_add(sent_texts, Ordering::Relaxed);
            stats
                .bytes_sent
                .fetch_add(sent_bytes as u64, Ordering::Relaxed);
        }
        if this.w.dirty && !blocked {
            match this.ws.poll_flush(cx) {
                Poll::Ready(Ok(())) => this.w.dirty = false,
                Poll::Ready(Err(_)) => return Poll::Ready(IoEvent::WriteFailed),
                Poll::Pending => {}
            }
        }
        if blocked && !registered {
            // Waiting for the socket to become writable: only commands and the
            // overflow alarm must still reach us.
            outbox.take_cmds_or_register(cx, &mut cmds);
        }
        if !cmds.is_empty() {
            return Poll::Ready(IoEvent::Cmds(cmds));
        }
        if this.can_read
            && !read_first
            && let Poll::Ready(m) = this.ws.poll_next(cx)
        {
            this.w.reads_since_flush = 1;
            return Poll::Ready(IoEvent::Inbound(m));
        }
        Poll::Pending
    }
}

impl SocketTask {
    /// Every ping interval: an idle socket gives back the queue capacity a burst left.
    pub(super) fn trim_idle_buffers(&mut self) {
        free_if_empty(&mut self.wstate.out);
        self.shared.outbox.trim();
        free_if_empty(&mut self.inbox);
    }

    pub(super) fn on_overflow(&mut self) {
        self.server
            .stats
            .slow_consumer_disconnects
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::slow_consumer_disconnect();
        tracing::info!(
            socket = %self.shared.id,
            "slow consumer dropped: outbound queue limit exceeded"
        );
        self.close_without_frame(CLOSE_POLICY_VIOLATION, "Outbound queue limit exceeded");
    }

    pub(super) fn on_ws(&mut self, msg: Option<Result<WsMessage, WsError>>) {
        let msg = match msg {
            None => return self.close_without_frame(1006, ""),
            Some(Err(e)) => {
                tracing::debug!(socket = %self.shared.id, error = %e, "WebSocket error");
                return match e {
                    WsError::Capacity => self.close(CLOSE_MESSAGE_TOO_BIG, ""),
                    WsError::Utf8 => self.close(1007, ""),
                    WsError::Protocol(_) => self.close(1002, ""),
                    WsError::Io(_) | WsError::Closed => self.close_without_frame(1006, ""),
                };
            }
            Some(Ok(m)) => m,
        };
        let stats = &self.server.stats;
        match msg {
            WsMessage::Text(t) => {
                let len = t.len();
                stats.messages_received.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_received
                    .fetch_add(t.len() as u64, Ordering::Relaxed);
                if t.as_str() == self.version.pong() {
                    self.reset_pong_deadline();
                    self.on_inbound(Inbound::Pong);
                } else {
                    self.maybe_reset_pong_deadline();
                    self.on_inbound(Inbound::Text(t));
                }
                self.account_rate(len);
            }
            WsMessage::Binary(b) => {
                let len = b.len();
                stats.messages_received.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_received
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                self.maybe_reset_pong_deadline();
                self.on_inbound(Inbound::Binary(b));
                self.account_rate(len);
            }
            WsMessage::Close(frame) => {
                let (code, reason) = frame.unwrap_or((1005, String::new()));
                self.closing = Some(Closing {
                    code,
                    reason,
                    sent_frame: false,
                    by_peer: true,
                });
            }
        }
    }

    /// Inbound rate limits: a message over budget stops reading until the budget has
    /// refilled (throttling); a socket throttled for `throttle_close_after` without a
    /// break is closed with 1008.
    pub(super) fn account_rate(&mut self, bytes: usize) {
        let Some(r) = &mut self.rate else { return };
        let wait_msgs = r.messages.as_mut().and_then(|b| b.take());
        let wait_bytes = r.bytes.as_mut().and_then(|b| b.take_n(bytes));
        let Some(wait) = wait_msgs.max(wait_bytes) else {
            r.throttled_since = None;
            return;
        };
        let now = Instant::now();
        let since = match r.throttled_since {
            Some(since) => since,
            None => {
                crate::metrics::throttled();
                *r.throttled_since.insert(now)
            }
        };
        if now.duration_since(since) >= self.server.config.limits.throttle_close_after {
            let limit = if wait_bytes > wait_msgs {
                "inbound_byte_rate"
            } else {
                "inbound_rate"
            };
            crate::metrics::limit_exceeded(limit);
            tracing::info!(socket = %self.shared.id, limit, "closing a socket throttled for too long");
            self.close(CLOSE_POLICY_VIOLATION, "Inbound rate limit exceeded");
        } else {
            self.throttle.arm(now + wait);
        }
    }

    /// A pong restarts the pong deadline (docs/PROTOCOL.md 8.3). Only the deadline moves;
    /// the heartbeat timer notices when it fires.
    pub(super) fn reset_pong_deadline(&mut self) {
        self.pong_deadline = Instant::now() + self.server.config.ping_timeout;
    }

    /// Any other message restarts it if more than `pingTimeout/4` has elapsed since the
    /// last restart (JS server, docs/PROTOCOL.md 8.3).
    pub(super) fn maybe_reset_pong_deadline(&mut self) {
        let timeout = self.server.config.ping_timeout;
        let now = Instant::now();
        if now + timeout > self.pong_deadline + timeout / 4 {
            self.pong_deadline = now + timeout;
        }
    }

    pub(super) fn on_heartbeat(&mut self) {
        let now = Instant::now();
        if now >= self.pong_deadline {
            return self.close(4001, "");
        }
        if now >= self.next_ping {
            // Pings are never batched (docs/PROTOCOL.md 8.5).
            self.shared
                .outbox
                .push_unbatched(Utf8Bytes::from_static(self.version.ping()));
            self.trim_idle_buffers();
            self.next_ping = now + self.server.config.ping_interval;
        }
        self.heartbeat
            .as_mut()
            .reset(self.next_ping.min(self.pong_deadline));
    }
}
