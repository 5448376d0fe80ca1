//! The task that owns one socket: reads frames, processes them strictly in order, runs
//! the heartbeat, handshake and token-expiry timers and executes commands from handles.
//!
//! Processing never awaits inline: work that needs to wait (middleware, a remote broker)
//! becomes a *step* future stored in the task; while it is pending the task keeps
//! serving timers, commands and reading ahead (bounded), but does not process the next
//! inbound message, which preserves per-socket ordering (PROTOCOL.md 2.4, 7.2, 8.3).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::Value;
use socketcluster_protocol::codec::{self, BatchItem, Frame, KeyOrder};
use socketcluster_protocol::error::wire;
use socketcluster_protocol::reserved::{
    self, AuthenticateResult, HandshakeStatus, SubscribeRequest, parse_authenticate_token,
    parse_handshake_token, parse_publish, parse_unsubscribe,
};
use socketcluster_protocol::{
    Cid, CidAllocator, CloseCode, ErrorObject, EventPacket, Packet, ProtocolVersion, RawValue,
    ResponsePacket, WireError,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{Claims, VerifyOutcome, is_bad_token, now_ms};
use crate::broker::{BrokerError, BrokerFuture};
use crate::channel::Publication;
use crate::config::{UnhandledProcedure, glob_match};
use crate::error::{AuthTokenError, InvokeError, KickOutError};
use crate::events::{AuthState, ServerEvent};
use crate::hub::Subscriber;
use crate::limits::{Bucket, CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION};
use crate::middleware::{
    Block, HandshakeAction, InboundAction, InboundKind, InboundRawAction, PublishOutAction,
    run_handshake, run_inbound, run_inbound_raw, run_outbound, snapshot,
};
use crate::request::StoredRequest;
use crate::rpc::{HandlerFuture, ReceivedEvent, Request};
use crate::socket::MessageKind;
use crate::socket::{
    AuthInfo, CloseInfo, Cmd, FRAME_OVERHEAD, Out, Socket, SocketShared, SocketState, free_if_empty,
};
use crate::state::ServerState;
use crate::ws::{ServerWs, WsError, WsMessage};

pub(crate) type Ws = ServerWs;
type StepFuture = Pin<Box<dyn Future<Output = Resume> + Send + 'static>>;
type InvokeReply = oneshot::Sender<Result<Option<Box<RawValue>>, InvokeError>>;

/// Longest single sleep of the expiry timer (re-checked when it fires).
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(86400);

enum Inbound {
    Pong,
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Continuation of a step.
enum Resume {
    Handshake {
        cid: Cid,
        outcome: VerifyOutcome,
        result: Result<(), Block>,
    },
    HandshakeAuth {
        cid: Cid,
        rehandshake: bool,
        was_auth: bool,
        result: Result<InboundAction, Block>,
    },
    Authenticate {
        cid: Cid,
        was_auth: bool,
        result: Result<InboundAction, Block>,
    },
    PublishIn {
        cid: Option<Cid>,
        channel: String,
        result: Result<InboundAction, Block>,
    },
    Published {
        cid: Option<Cid>,
        result: Result<(), BrokerError>,
    },
    Subscribe {
        cid: Cid,
        channel: String,
        result: Result<InboundAction, Block>,
    },
    Subscribed {
        cid: Cid,
        channel: String,
        result: Result<(), BrokerError>,
    },
    Unsubscribed {
        cid: Option<Cid>,
        channel: String,
        result: Result<(), BrokerError>,
    },
    App {
        cid: Option<Cid>,
        result: Result<InboundAction, Block>,
    },
    Raw {
        result: Result<InboundRawAction, Block>,
    },
}

struct Closing {
    code: u16,
    reason: String,
    /// We queued a close frame and wait for the peer's answer.
    sent_frame: bool,
    /// The peer sent a close frame (keep reading so the reply is flushed).
    by_peer: bool,
}

struct StepPoll<'a>(&'a mut Option<StepFuture>);

impl Future for StepPoll<'_> {
    type Output = Resume;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resume> {
        match self.0.as_mut() {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Write-side state of the socket's WebSocket (driven by [`IoPoll`]).
#[derive(Default)]
struct WriteState {
    /// Frames taken from the outbox, not yet handed to the WebSocket.
    out: VecDeque<Out>,
    /// Messages read since the last write phase (see [`READ_BATCH`]).
    reads_since_flush: u16,
    /// Frames were written since the last flush.
    dirty: bool,
    /// Our close frame was written: nothing more is sent.
    close_sent: bool,
}

enum IoEvent {
    Inbound(Option<Result<WsMessage, WsError>>),
    Cmds(VecDeque<Cmd>),
    /// The outbound queue limit was exceeded (slow consumer).
    Overflow,
    WriteFailed,
}

/// Drives the socket's writes (outbox -> WebSocket, batched, flushed once per batch)
/// and, when allowed, its reads, in the socket task itself: one task owns the whole
/// WebSocket, so a blocked write can never starve reads of wakeups.
struct IoPoll<'a> {
    ws: &'a mut Ws,
    w: &'a mut WriteState,
    can_read: bool,
    /// Read what is already there before writing (off while closing: the close frame
    /// must go out first).
    batch_reads: bool,
    shared: &'a SocketShared,
    server: &'a ServerState,
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
            let stats = &this.server.stats;
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

/// Start the task of a freshly upgraded WebSocket (the socket is connecting until its
/// `#handshake` completes).
pub(crate) fn spawn(state: &Arc<ServerState>, ws: ServerWs, request: StoredRequest) {
    let link: std::sync::Weak<ServerState> = Arc::downgrade(state);
    let shared = Arc::new(SocketShared::new(
        state.hub.next_key(),
        request,
        state.config.limits.max_outbound_queue_bytes,
        state.config.ack_timeout,
        link,
    ));
    state
        .stats
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    crate::metrics::connection_accepted();
    match shared.request.remote_addr() {
        Some(remote) => {
            tracing::info!(socket = %shared.id, %remote, "connection accepted");
        }
        None => tracing::info!(socket = %shared.id, "connection accepted"),
    }
    state.sockets.socket_started();
    let task = SocketTask::new(state.clone(), shared.clone(), ws);
    state.emit(ServerEvent::Handshake {
        socket: Socket { shared },
    });
    tokio::spawn(task.run());
}

pub(crate) struct SocketTask {
    server: Arc<ServerState>,
    ws: Ws,
    wstate: WriteState,
    shared: Arc<SocketShared>,
    socket: Socket,
    state: SocketState,
    auth: Option<AuthInfo>,
    cids: CidAllocator,
    pending: HashMap<u64, (String, InvokeReply)>,
    inbox: VecDeque<Inbound>,
    batch: VecDeque<BatchItem>,
    step: Option<StepFuture>,
    closing: Option<Closing>,
    version: ProtocolVersion,
    ping_enabled: bool,
    /// One timer for the heartbeat: fires at the earlier of `next_ping` and
    /// `pong_deadline`. Both only move later, so the timer is re-armed only when it
    /// fires (not per message).
    heartbeat: Pin<Box<Sleep>>,
    next_ping: Instant,
    /// Last message from the peer + ping timeout (PROTOCOL.md 8.3).
    pong_deadline: Instant,
    /// Armed until the `#handshake` arrives.
    handshake_deadline: Timer,
    /// The token's expiry (when it has one and the expiry timer is on).
    expiry: Timer,
    bucket: Option<Bucket>,
    /// Reading pauses while armed (inbound rate limit).
    throttle: Timer,
    /// The periodic batch flush (PROTOCOL.md 8.5), while it runs.
    batch_tick: Option<Interval>,
    /// The `batch_on_handshake` window, while it is open.
    batch_window: Timer,
}

/// A one-shot timer that holds no memory while disarmed (an idle socket keeps only the
/// timers it needs).
#[derive(Default)]
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    fn armed_at(at: Instant) -> Timer {
        Timer(Some(Box::pin(tokio::time::sleep_until(at))))
    }

    fn arm(&mut self, at: Instant) {
        match &mut self.0 {
            Some(s) => s.as_mut().reset(at),
            None => *self = Timer::armed_at(at),
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }

    fn is_armed(&self) -> bool {
        self.0.is_some()
    }

    /// Completes when the timer fires (never while disarmed), and disarms it.
    fn fired(&mut self) -> TimerFired<'_> {
        TimerFired(self)
    }
}

struct TimerFired<'a>(&'a mut Timer);

impl Future for TimerFired<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(s) = self.0.0.as_mut() else {
            return Poll::Pending;
        };
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.0.disarm();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SocketTask {
    pub(crate) fn new(server: Arc<ServerState>, shared: Arc<SocketShared>, ws: Ws) -> Self {
        let cfg = &server.config;
        let now = Instant::now();
        let next_ping = now + cfg.ping_interval;
        let pong_deadline = now + cfg.ping_timeout;
        SocketTask {
            ws,
            wstate: WriteState::default(),
            socket: Socket {
                shared: shared.clone(),
            },
            shared,
            state: SocketState::Connecting,
            auth: None,
            cids: CidAllocator::new(),
            pending: HashMap::new(),
            inbox: VecDeque::new(),
            batch: VecDeque::new(),
            step: None,
            closing: None,
            version: cfg.protocol_version,
            ping_enabled: !cfg.ping_timeout_disabled,
            heartbeat: Box::pin(tokio::time::sleep_until(next_ping.min(pong_deadline))),
            next_ping,
            pong_deadline,
            handshake_deadline: Timer::armed_at(now + cfg.handshake_timeout),
            expiry: Timer::default(),
            bucket: cfg.limits.inbound_rate.map(Bucket::new),
            throttle: Timer::default(),
            batch_tick: None,
            batch_window: Timer::default(),
            server,
        }
    }

    /// The socket's whole life. A plain `fn` returning an `async move` block: the task
    /// stores the `SocketTask` once (an `async fn` taking `self` by value keeps a second
    /// copy of its argument in the future, ~750 bytes per socket).
    #[allow(clippy::manual_async_fn)] // deliberately not `async fn`: see above
    pub(crate) fn run(mut self) -> impl Future<Output = ()> + Send + 'static {
        async move {
            loop {
                self.drain();
                if self.closing.is_some() {
                    break;
                }
                let can_read = self.inbox.len() < self.server.config.limits.max_inbound_queue
                    && !self.throttle.is_armed();
                tokio::select! {
                    biased;
                    r = StepPoll(&mut self.step), if self.step.is_some() => {
                        self.step = None;
                        self.resume(r);
                    }
                    ev = IoPoll {
                        ws: &mut self.ws,
                        w: &mut self.wstate,
                        can_read,
                        batch_reads: true,
                        shared: &self.shared,
                        server: &self.server,
                    } => match ev {
                        IoEvent::Inbound(msg) => self.on_ws(msg),
                        IoEvent::Cmds(cmds) => {
                            for cmd in cmds {
                                self.on_cmd(cmd);
                            }
                        }
                        IoEvent::Overflow => self.on_overflow(),
                        IoEvent::WriteFailed => self.close_without_frame(1006, ""),
                    },
                    _ = &mut self.heartbeat, if self.ping_enabled => self.on_heartbeat(),
                    _ = tick_opt(&mut self.batch_tick), if self.batch_tick.is_some() => {
                        self.shared.outbox.flush_batch(true);
                    }
                    _ = self.batch_window.fired(), if self.batch_window.is_armed() => {
                        self.on_batch_window_end();
                    }
                    _ = self.handshake_deadline.fired(), if self.handshake_deadline.is_armed() => {
                        self.close(4005, "");
                    }
                    _ = self.expiry.fired(), if self.expiry.is_armed() => self.on_expiry_timer(),
                    _ = self.throttle.fired(), if self.throttle.is_armed() => {}
                    _ = self.server.shutdown.cancelled() => self.close(1001, "Server is shutting down"),
                }
            }
            // Boxed: the closing sequence is large and runs once; kept out of line, it does
            // not inflate every idle socket's task.
            Box::pin(self.finish()).await;
        }
    }

    // ---------------------------------------------------------------- I/O events

    /// Every ping interval: an idle socket gives back the queue capacity a burst left.
    fn trim_idle_buffers(&mut self) {
        free_if_empty(&mut self.wstate.out);
        self.shared.outbox.trim();
        free_if_empty(&mut self.inbox);
        free_if_empty(&mut self.batch);
    }

    fn on_overflow(&mut self) {
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

    fn on_ws(&mut self, msg: Option<Result<WsMessage, WsError>>) {
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
                self.account_rate();
            }
            WsMessage::Binary(b) => {
                stats.messages_received.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_received
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                self.maybe_reset_pong_deadline();
                self.on_inbound(Inbound::Binary(b));
                self.account_rate();
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

    fn account_rate(&mut self) {
        if let Some(b) = &mut self.bucket
            && let Some(wait) = b.take()
        {
            self.throttle.arm(Instant::now() + wait);
        }
    }

    /// A pong restarts the pong deadline (PROTOCOL.md 8.3). Only the deadline moves;
    /// the heartbeat timer notices when it fires.
    fn reset_pong_deadline(&mut self) {
        self.pong_deadline = Instant::now() + self.server.config.ping_timeout;
    }

    /// Any other message restarts it if more than `pingTimeout/4` has elapsed since the
    /// last restart (JS server, PROTOCOL.md 8.3).
    fn maybe_reset_pong_deadline(&mut self) {
        let timeout = self.server.config.ping_timeout;
        let now = Instant::now();
        if now + timeout > self.pong_deadline + timeout / 4 {
            self.pong_deadline = now + timeout;
        }
    }

    fn on_heartbeat(&mut self) {
        let now = Instant::now();
        if now >= self.pong_deadline {
            return self.close(4001, "");
        }
        if now >= self.next_ping {
            // Pings are never batched (PROTOCOL.md 8.5).
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

    // ---------------------------------------------------------------- processing

    fn drain(&mut self) {
        while self.step.is_none() && self.closing.is_none() {
            if let Some(item) = self.batch.pop_front() {
                match item {
                    BatchItem::Packet(p) => self.process_packet(p),
                    BatchItem::Raw => self.on_raw(),
                }
                continue;
            }
            let Some(inbound) = self.inbox.pop_front() else {
                break;
            };
            self.handle_inbound(inbound);
        }
        // Only a socket whose processing waited (middleware, broker) used the read-ahead
        // queue; an idle socket keeps none.
        free_if_empty(&mut self.inbox);
    }

    /// Queue an inbound message, or process it right away when nothing is ahead of it
    /// (the common case: no allocation, no queue).
    fn on_inbound(&mut self, inbound: Inbound) {
        if let Some(bp) = &self.server.busy_poll {
            bp.touch();
        }
        if self.step.is_none()
            && self.closing.is_none()
            && self.inbox.is_empty()
            && self.batch.is_empty()
        {
            self.handle_inbound(inbound);
        } else {
            self.inbox.push_back(inbound);
        }
    }

    fn handle_inbound(&mut self, inbound: Inbound) {
        let raw_chain = snapshot(&self.server.middleware.inbound_raw);
        if !raw_chain.is_empty() {
            return self.run_inbound_raw(raw_chain, inbound);
        }
        match inbound {
            Inbound::Pong => {
                self.shared
                    .offer_message(MessageKind::All, self.version.pong());
                self.on_pong();
            }
            Inbound::Text(t) => {
                self.shared.offer_message(MessageKind::All, t.as_str());
                self.process_text(t.as_str());
            }
            Inbound::Binary(b) => {
                let text = String::from_utf8_lossy(&b);
                self.shared.offer_message(MessageKind::All, &text);
                self.process_text(&text);
            }
        }
    }

    /// JS `inboundRaw` middleware: the message is processed (possibly replaced) once
    /// the chain allows it, or dropped.
    fn run_inbound_raw(
        &mut self,
        chain: Arc<[Arc<dyn crate::middleware::InboundRawMiddleware>]>,
        inbound: Inbound,
    ) {
        let (message, binary) = match inbound {
            Inbound::Pong => (self.version.pong().to_owned(), false),
            Inbound::Text(t) => (t.as_str().to_owned(), false),
            Inbound::Binary(b) => (String::from_utf8_lossy(&b).into_owned(), true),
        };
        let action = InboundRawAction {
            socket: self.socket.clone(),
            message,
            binary,
        };
        self.start_step(Box::pin(async move {
            Resume::Raw {
                result: run_inbound_raw(chain, action).await,
            }
        }));
    }

    fn inbound_raw_done(&mut self, result: Result<InboundRawAction, Block>) {
        match result {
            Ok(action) => {
                self.shared.offer_message(MessageKind::All, &action.message);
                if !action.binary && action.message == self.version.pong() {
                    self.on_pong();
                } else {
                    self.process_text(&action.message);
                }
            }
            Err(block) => self.warn_wire(&block.into_wire("message", "inboundRaw")),
        }
    }

    fn strict_connecting(&self) -> bool {
        self.server.config.strict_handshake && self.state == SocketState::Connecting
    }

    fn on_pong(&mut self) {
        if self.strict_connecting() {
            return self.close(4009, "");
        }
        if self.state == SocketState::Open {
            self.check_expiry();
        }
    }

    fn process_text(&mut self, text: &str) {
        match codec::decode_message(text) {
            Frame::Packet(p) => self.process_packet(p),
            Frame::Batch(items) => self.batch.extend(items),
            Frame::Raw | Frame::Heartbeat => {
                self.shared.offer_message(MessageKind::Raw, text);
                self.on_raw();
            }
        }
    }

    fn on_raw(&mut self) {
        if self.strict_connecting() {
            return self.close(4009, "");
        }
        self.server
            .stats
            .raw_messages
            .fetch_add(1, Ordering::Relaxed);
    }

    fn process_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Response(r) => {
                if self.strict_connecting() {
                    return self.close(4009, "");
                }
                let Some(rid) = r.rid.as_u64() else { return };
                if let Some((_, reply)) = self.pending.remove(&rid) {
                    let result = match r.error() {
                        Some(e) => Err(InvokeError::Remote(e)),
                        None => Ok(r.data),
                    };
                    let _ = reply.send(result);
                }
            }
            Packet::Event(ev) => self.process_event(ev),
        }
    }

    fn process_event(&mut self, ev: EventPacket) {
        let EventPacket { event, data, cid } = ev;
        match event.as_str() {
            reserved::HANDSHAKE => match cid {
                Some(cid) => self.on_handshake(cid, data),
                None => {
                    self.warn(wire_invalid_action("Handshake request was malformatted"));
                    self.close(4008, "");
                }
            },
            _ if self.strict_connecting() => self.close(4009, ""),
            reserved::AUTHENTICATE => match cid {
                Some(cid) => self.on_authenticate(cid, data),
                None => {
                    self.warn(wire_invalid_action("Authenticate request was malformatted"));
                    self.close(4008, "");
                }
            },
            reserved::REMOVE_AUTH_TOKEN => self.deauthenticate(false),
            _ => {
                let expired = self.check_expiry();
                match event.as_str() {
                    reserved::PUBLISH => self.on_publish(cid, data, expired),
                    reserved::SUBSCRIBE => self.on_subscribe(cid, data, expired),
                    reserved::UNSUBSCRIBE => self.on_unsubscribe(cid, data),
                    _ => self.on_app_event(event, cid, data, expired),
                }
            }
        }
    }

    fn start_step(&mut self, mut fut: StepFuture) {
        match (&mut fut).now_or_never() {
            Some(r) => self.resume(r),
            None => self.step = Some(fut),
        }
    }

    fn resume(&mut self, r: Resume) {
        if self.closing.is_some() {
            return;
        }
        match r {
            Resume::Handshake {
                cid,
                outcome,
                result,
            } => self.handshake_middleware_done(cid, outcome, result),
            Resume::HandshakeAuth {
                cid,
                rehandshake,
                was_auth,
                result,
            } => {
                let auth_error = match result {
                    Ok(_) => None,
                    Err(block) => {
                        self.clear_auth_quietly();
                        Some(error_object(block.into_wire("authenticate", "inbound")))
                    }
                };
                self.complete_handshake(cid, auth_error, rehandshake, was_auth);
            }
            Resume::Authenticate {
                cid,
                was_auth,
                result,
            } => self.authenticate_done(cid, was_auth, result),
            Resume::PublishIn {
                cid,
                channel,
                result,
            } => match result {
                Ok(action) => self.publish(cid, &channel, action.data),
                Err(block) => {
                    let e = block.into_wire("publishIn", "inbound");
                    self.warn_wire(&e);
                    if let Some(cid) = cid {
                        self.reply_err(cid, &e);
                    }
                }
            },
            Resume::Published { cid, result } => {
                if let Some(cid) = cid {
                    match result {
                        Ok(()) => self.reply_ok(cid, None),
                        Err(e) => self.reply_err(
                            cid,
                            &WireError::Object(ErrorObject::new("BrokerError", e.0)),
                        ),
                    }
                }
            }
            Resume::Subscribe {
                cid,
                channel,
                result,
            } => match result {
                Ok(_) => self.subscribe(cid, channel),
                Err(block) => {
                    let e = block.into_wire("subscribe", "inbound");
                    self.warn_wire(&e);
                    self.reply_err(cid, &e);
                }
            },
            Resume::Subscribed {
                cid,
                channel,
                result,
            } => self.subscribed(cid, channel, result),
            Resume::Unsubscribed {
                cid,
                channel,
                result,
            } => self.unsubscribed(cid, channel, result),
            Resume::Raw { result } => self.inbound_raw_done(result),
            Resume::App { cid, result } => match result {
                Ok(action) => self.dispatch(action.kind, cid, action.data),
                Err(block) => {
                    let action_name = if cid.is_some() { "invoke" } else { "transmit" };
                    let e = block.into_wire(action_name, "inbound");
                    self.warn_wire(&e);
                    if let Some(cid) = cid {
                        self.reply_err(cid, &e);
                    }
                }
            },
        }
    }

    // ---------------------------------------------------------------- handshake

    fn on_handshake(&mut self, cid: Cid, data: Option<Box<RawValue>>) {
        let field = parse_handshake_token(data.as_deref());
        let outcome = self.server.auth_engine().verify_field(&field);
        if self.state == SocketState::Open {
            // A repeated #handshake (PROTOCOL.md 3.6.1, X-12): re-verify the token and
            // answer with the same id; handshake middleware is not run again and the
            // socket is not counted twice.
            return self.authenticate_for_handshake(cid, outcome, true);
        }
        self.handshake_deadline.disarm();
        let chain = snapshot(&self.server.middleware.handshake);
        if chain.is_empty() {
            return self.handshake_middleware_done(cid, outcome, Ok(()));
        }
        let action = HandshakeAction {
            socket: self.socket.clone(),
            signed_auth_token: outcome.signed.clone().filter(|s| !s.is_empty()),
            auth_token: outcome.result.as_ref().ok().map(|c| Arc::new(c.clone())),
            auth_token_error: outcome.result.as_ref().err().cloned(),
        };
        self.start_step(Box::pin(async move {
            let result = run_handshake(chain, action).await;
            Resume::Handshake {
                cid,
                outcome,
                result,
            }
        }));
    }

    fn handshake_middleware_done(
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
                // v14 clients read the close code from `data.code` (PROTOCOL.md 1.4).
                packet.data = RawValue::from_string(format!("{{\"code\":{code}}}")).ok();
            }
            self.shared
                .outbox
                .push_unbatched(Utf8Bytes::from(packet.encode()));
            return self.close(code, "");
        }
        self.authenticate_for_handshake(cid, outcome, false);
    }

    fn authenticate_for_handshake(&mut self, cid: Cid, outcome: VerifyOutcome, rehandshake: bool) {
        let was_auth = self.auth.is_some();
        match outcome.result {
            Ok(claims) => {
                let signed = outcome.signed.unwrap_or_default();
                let claims = Arc::new(claims);
                self.set_auth_quietly(signed.clone(), claims.clone());
                let chain = snapshot(&self.server.middleware.inbound);
                if chain.is_empty() {
                    return self.complete_handshake(cid, None, rehandshake, was_auth);
                }
                let action = self.action(
                    InboundKind::Authenticate {
                        signed_auth_token: signed,
                        auth_token: claims,
                    },
                    None,
                    None,
                );
                self.start_step(Box::pin(async move {
                    let result = run_inbound(chain, action).await;
                    Resume::HandshakeAuth {
                        cid,
                        rehandshake,
                        was_auth,
                        result,
                    }
                }));
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

    fn complete_handshake(
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
        // after it (PROTOCOL.md 8.5).
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

    /// JS `_startBatchOnHandshake`: batch now, stop after the window unless the
    /// application started batching itself.
    fn start_batch_on_handshake(&mut self) {
        self.shared.outbox.start_buffering();
        self.set_batch_timer(true);
        let d = self.server.config.batch_on_handshake_duration;
        self.batch_window.arm(Instant::now() + d);
    }

    fn on_batch_window_end(&mut self) {
        if !self.shared.app_batching.load(Ordering::Acquire) {
            self.shared.outbox.flush_batch(false);
            self.set_batch_timer(false);
        }
    }

    fn set_batch_timer(&mut self, on: bool) {
        if !on {
            self.batch_tick = None;
        } else if self.batch_tick.is_none() {
            let period = self.server.config.batch_interval;
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.batch_tick = Some(tick);
        }
    }

    fn start_outbound_pipeline(&mut self) {
        let chain = snapshot(&self.server.middleware.outbound);
        if chain.is_empty() {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Publication>>();
        if self.shared.outbound_mw.set(tx).is_err() {
            return;
        }
        let server = self.server.clone();
        let socket = self.socket.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let p = tokio::select! {
                    p = rx.recv() => match p { Some(p) => p, None => break },
                    _ = shared.wait_closed() => break,
                };
                let outbox = &socket.shared.outbox;
                outbox.release(p.frame().len() + FRAME_OVERHEAD);
                let chain = snapshot(&server.middleware.outbound);
                let action = PublishOutAction {
                    socket: socket.clone(),
                    channel: p.channel().to_owned(),
                    data: p.raw_data().map(|d| d.to_owned()),
                    modified: false,
                };
                match run_outbound(chain, action).await {
                    Ok(a) if a.modified => {
                        let frame = reserved::publish_frame(&a.channel, a.data.as_deref());
                        outbox.push(Utf8Bytes::from(frame));
                    }
                    Ok(_) => {
                        outbox.push(p.frame_bytes());
                    }
                    Err(_) => {}
                }
            }
        });
    }

    // ---------------------------------------------------------------- authentication

    fn on_authenticate(&mut self, cid: Cid, data: Option<Box<RawValue>>) {
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
                    // old token, then #removeAuthToken after the reply (PROTOCOL.md 5.4).
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
                let chain = snapshot(&self.server.middleware.inbound);
                let action = self.action(
                    InboundKind::Authenticate {
                        signed_auth_token: signed,
                        auth_token: claims,
                    },
                    None,
                    None,
                );
                if chain.is_empty() {
                    return self.authenticate_done(cid, was_auth, Ok(action));
                }
                self.start_step(Box::pin(async move {
                    let result = run_inbound(chain, action).await;
                    Resume::Authenticate {
                        cid,
                        was_auth,
                        result,
                    }
                }));
            }
        }
    }

    fn authenticate_done(
        &mut self,
        cid: Cid,
        was_auth: bool,
        result: Result<InboundAction, Block>,
    ) {
        match result {
            Ok(_) => {
                self.emit_auth_events(was_auth);
                let r = AuthenticateResult {
                    is_authenticated: true,
                    auth_error: None,
                };
                self.reply_ok(cid, Some(r.to_raw()));
            }
            Err(block) => {
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
        }
    }

    fn set_auth_quietly(&mut self, signed: String, claims: Arc<Claims>) {
        let info = AuthInfo {
            signed: Arc::from(signed),
            claims,
        };
        self.arm_expiry(&info);
        self.shared.view().auth = Some(info.clone());
        self.auth = Some(info);
    }

    fn clear_auth_quietly(&mut self) {
        self.auth = None;
        self.shared.view().auth = None;
        self.expiry.disarm();
    }

    fn emit_auth_events(&mut self, was_auth: bool) {
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
    fn deauthenticate(&mut self, notify: bool) {
        let old = self.auth.take();
        self.shared.view().auth = None;
        self.expiry.disarm();
        self.deauthenticate_inner(notify, old.as_ref().map(|a| a.claims.clone()));
        if old.is_some() {
            self.on_auth_lost();
        }
    }

    fn deauthenticate_inner(&mut self, notify: bool, old: Option<Arc<Claims>>) {
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
    fn on_auth_lost(&mut self) {
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

    fn is_auth_channel(&self, channel: &str) -> bool {
        self.server
            .config
            .auth_channels
            .iter()
            .any(|p| glob_match(p, channel))
    }

    fn arm_expiry(&mut self, info: &AuthInfo) {
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

    fn on_expiry_timer(&mut self) {
        self.expiry.disarm();
        if self.check_expiry().is_none()
            && let Some(info) = self.auth.clone()
        {
            self.arm_expiry(&info);
        }
    }

    /// JS `_processAuthTokenExpiry`: deauthenticate when the token has expired.
    fn check_expiry(&mut self) -> Option<ErrorObject> {
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

    // ---------------------------------------------------------------- pub/sub

    fn on_publish(
        &mut self,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        if !self.server.config.allow_client_publish {
            return self.fail(cid, wire::client_publish_disabled());
        }
        let Some(p) = parse_publish(data.as_deref()) else {
            return self.fail(cid, wire::publish_malformatted());
        };
        if let Some(e) = self.check_channel_name(&p.channel) {
            return self.fail(cid, e);
        }
        if self.auth.is_none() && self.is_auth_channel(&p.channel) {
            return self.fail(
                cid,
                ErrorObject::new(
                    "UnauthorizedPublishError",
                    format!(
                        "Socket {} must be authenticated to publish to the {} channel",
                        self.shared.id, p.channel
                    ),
                ),
            );
        }
        let chain = snapshot(&self.server.middleware.inbound);
        if chain.is_empty() {
            return self.publish(cid, &p.channel, p.data);
        }
        let action = self.action(
            InboundKind::PublishIn {
                channel: p.channel.clone(),
            },
            p.data,
            expired,
        );
        let channel = p.channel;
        self.start_step(Box::pin(async move {
            let result = run_inbound(chain, action).await;
            Resume::PublishIn {
                cid,
                channel,
                result,
            }
        }));
    }

    fn publish(&mut self, cid: Option<Cid>, channel: &str, data: Option<Box<RawValue>>) {
        let p = Publication::new(channel, data);
        self.server
            .stats
            .publications
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::publication_in("client");
        let fut = self.server.broker.publish(p);
        self.broker_step(fut, move |result| Resume::Published { cid, result });
    }

    fn broker_step(
        &mut self,
        mut fut: BrokerFuture,
        k: impl FnOnce(Result<(), BrokerError>) -> Resume + Send + 'static,
    ) {
        match (&mut fut).now_or_never() {
            Some(r) => self.resume(k(r)),
            None => self.step = Some(Box::pin(async move { k(fut.await) })),
        }
    }

    fn check_channel_name(&self, channel: &str) -> Option<ErrorObject> {
        let max = self.server.config.limits.max_channel_name_len;
        (channel.len() > max).then(|| {
            ErrorObject::new(
                "InvalidActionError",
                format!("Channel name exceeds the maximum length of {max}"),
            )
        })
    }

    fn on_subscribe(
        &mut self,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        // A transmitted #subscribe is not acted upon (PROTOCOL.md 3.6.5).
        let Some(cid) = cid else { return };
        let Some(req) = SubscribeRequest::parse(data.as_deref()) else {
            return self.fail(Some(cid), wire::subscribe_malformatted());
        };
        if let Some(e) = self.check_channel_name(&req.channel) {
            return self.fail(Some(cid), e);
        }
        if self.auth.is_none() && self.is_auth_channel(&req.channel) {
            return self.fail(
                Some(cid),
                ErrorObject::new(
                    "UnauthorizedSubscribeError",
                    format!(
                        "Socket {} must be authenticated to subscribe to the {} channel",
                        self.shared.id, req.channel
                    ),
                ),
            );
        }
        let chain = snapshot(&self.server.middleware.inbound);
        if chain.is_empty() {
            return self.subscribe(cid, req.channel);
        }
        let action = self.action(
            InboundKind::Subscribe {
                channel: req.channel.clone(),
            },
            req.data,
            expired,
        );
        let channel = req.channel;
        self.start_step(Box::pin(async move {
            let result = run_inbound(chain, action).await;
            Resume::Subscribe {
                cid,
                channel,
                result,
            }
        }));
    }

    fn subscribe(&mut self, cid: Cid, channel: String) {
        if self.state != SocketState::Open {
            return self.fail(
                Some(cid),
                wire_invalid_action(
                    "Cannot subscribe socket to a channel before it has completed the handshake",
                ),
            );
        }
        let (count, subscribed) = {
            let view = self.shared.view();
            (
                view.channels.len(),
                view.channels.contains_key(channel.as_str()),
            )
        };
        if let Some(limit) = self.server.config.limits.socket_channel_limit
            && count >= limit
        {
            return self.fail(
                Some(cid),
                wire::channel_limit(&channel, &self.shared.id, limit),
            );
        }
        if subscribed {
            return self.reply_ok(cid, None);
        }
        let broker = &self.server.broker;
        // The view keeps the hub's copy of the name: one allocation per channel.
        let (name, first) = self.server.hub.subscribe_then(
            &channel,
            Subscriber::Socket(self.shared.clone()),
            || broker.subscribe(&channel),
        );
        {
            let mut view = self.shared.view();
            view.channel_seq += 1;
            let seq = view.channel_seq;
            view.channels.insert(name, seq);
        }
        if let Some(fut) = first {
            self.broker_step(fut, move |result| Resume::Subscribed {
                cid,
                channel,
                result,
            });
        } else {
            self.subscribed(cid, channel, Ok(()));
        }
    }

    fn subscribed(&mut self, cid: Cid, channel: String, result: Result<(), BrokerError>) {
        crate::metrics::subscription(result.is_ok());
        match result {
            Ok(()) => {
                self.reply_ok(cid, None);
                self.emit(ServerEvent::Subscription {
                    socket: self.socket.clone(),
                    channel,
                });
            }
            Err(e) => {
                self.shared.view().channels.remove(channel.as_str());
                self.server.hub.remove(&channel, self.shared.key);
                let err = ErrorObject::new(
                    "BrokerError",
                    format!("Failed to subscribe socket to the {channel} channel - {e}"),
                );
                self.fail(Some(cid), err);
            }
        }
    }

    fn on_unsubscribe(&mut self, cid: Option<Cid>, data: Option<Box<RawValue>>) {
        let Some(channel) = parse_unsubscribe(data.as_deref()) else {
            return self.fail(cid, wire::unsubscribe_malformatted());
        };
        if !self.shared.view().channels.contains_key(channel.as_str()) {
            // A transmitted #unsubscribe for an unknown channel is routine (JS client
            // unsubscribing a pending channel): only invoked ones get the error.
            if let Some(cid) = cid {
                self.reply_err(
                    cid,
                    &WireError::Object(wire::not_subscribed(&channel, &self.shared.id)),
                );
            }
            return;
        }
        self.shared.view().channels.remove(channel.as_str());
        let broker = &self.server.broker;
        let (_, last) = self
            .server
            .hub
            .remove_then(&channel, self.shared.key, || broker.unsubscribe(&channel));
        if let Some(fut) = last {
            self.broker_step(fut, move |result| Resume::Unsubscribed {
                cid,
                channel,
                result,
            });
        } else {
            self.unsubscribed(cid, channel, Ok(()));
        }
    }

    fn unsubscribed(&mut self, cid: Option<Cid>, channel: String, result: Result<(), BrokerError>) {
        if let Err(e) = &result {
            tracing::warn!(channel = %channel, error = %e, "broker unsubscribe failed");
        }
        self.emit(ServerEvent::Unsubscription {
            socket: self.socket.clone(),
            channel,
        });
        if let Some(cid) = cid {
            self.reply_ok(cid, None);
        }
    }

    /// Server-side unsubscribe (kick-out, close): bookkeeping + broker in background.
    fn unsubscribe_local(&mut self, channel: &str) -> bool {
        if self.shared.view().channels.remove(channel).is_none() {
            return false;
        }
        let broker = &self.server.broker;
        if let (_, Some(fut)) = self
            .server
            .hub
            .remove_then(channel, self.shared.key, || broker.unsubscribe(channel))
        {
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!(error = %e, "broker unsubscribe failed");
                }
            });
        }
        self.emit(ServerEvent::Unsubscription {
            socket: self.socket.clone(),
            channel: channel.to_owned(),
        });
        true
    }

    // ---------------------------------------------------------------- RPC

    fn on_app_event(
        &mut self,
        event: String,
        cid: Option<Cid>,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) {
        let kind = match cid {
            Some(_) => InboundKind::Invoke { procedure: event },
            None => InboundKind::Transmit { receiver: event },
        };
        let chain = snapshot(&self.server.middleware.inbound);
        if chain.is_empty() {
            return self.dispatch(kind, cid, data);
        }
        let action = self.action(kind, data, expired);
        self.start_step(Box::pin(async move {
            let result = run_inbound(chain, action).await;
            Resume::App { cid, result }
        }));
    }

    fn dispatch(&mut self, kind: InboundKind, cid: Option<Cid>, data: Option<Box<RawValue>>) {
        match (kind, cid) {
            (InboundKind::Invoke { procedure }, Some(cid)) => {
                // A socket's own stream first (JS `socket.procedure(name)`). A full one
                // drops the request, like the server-wide streams.
                if let Some(tx) = self.shared.procedure_stream(&procedure) {
                    let req = Request::new(self.socket.clone(), procedure, data, cid);
                    match tx.try_send(req) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(req)) => {
                            tracing::warn!(socket = %self.shared.id, procedure = %req.procedure(), "socket procedure stream full; request dropped");
                        }
                        // The stream went away meanwhile: the server-wide handler.
                        Err(mpsc::error::TrySendError::Closed(req)) => {
                            if let Some(h) = self.server.handlers.procedure(req.procedure()) {
                                run_handler(h.call(req));
                            }
                        }
                    }
                    return;
                }
                match self.server.handlers.procedure(&procedure) {
                    Some(h) => {
                        let req = Request::new(self.socket.clone(), procedure, data, cid);
                        run_handler(h.call(req));
                    }
                    None => {
                        if self.server.config.unhandled_procedure == UnhandledProcedure::Error {
                            let e = ErrorObject::new(
                                "UnhandledProcedureError",
                                format!("No handler for procedure {procedure}"),
                            );
                            self.reply_err(cid, &WireError::Object(e));
                        }
                    }
                }
            }
            (InboundKind::Transmit { receiver }, _) => {
                if self
                    .shared
                    .offer_event(&self.socket, &receiver, data.as_deref())
                {
                    return;
                }
                if let Some(h) = self.server.handlers.receiver(&receiver) {
                    let ev = ReceivedEvent::new(self.socket.clone(), receiver, data);
                    run_handler(h.call(ev));
                }
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- commands

    fn on_cmd(&mut self, cmd: Cmd) {
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

    fn invoke(&mut self, event: String, data: Option<Box<RawValue>>, reply: InvokeReply) {
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

    // ---------------------------------------------------------------- output helpers

    fn action(
        &self,
        kind: InboundKind,
        data: Option<Box<RawValue>>,
        expired: Option<ErrorObject>,
    ) -> InboundAction {
        InboundAction {
            socket: self.socket.clone(),
            kind,
            data,
            auth_token_expired_error: expired,
        }
    }

    fn send_text(&self, text: String) {
        self.shared.outbox.push(Utf8Bytes::from(text));
    }

    fn send_event(&self, event: &str, data: Option<Box<RawValue>>) {
        self.send_text(EventPacket::transmit(event, data).encode(KeyOrder::Server));
    }

    fn reply_ok(&self, cid: Cid, data: Option<Box<RawValue>>) {
        self.send_text(ResponsePacket::ok(cid, data).encode());
    }

    fn reply_err(&self, cid: Cid, e: &WireError) {
        self.send_text(ResponsePacket::err(cid, e).encode());
    }

    /// Report a refused action: error reply for an invoke, nothing for a transmit.
    fn fail(&self, cid: Option<Cid>, e: ErrorObject) {
        self.warn(e.clone());
        if let Some(cid) = cid {
            self.reply_err(cid, &WireError::Object(e));
        }
    }

    fn emit(&self, ev: ServerEvent) {
        self.server.emit(ev);
    }

    fn warn(&self, error: ErrorObject) {
        self.emit(ServerEvent::Warning {
            socket: Some(self.socket.clone()),
            error,
        });
    }

    fn warn_wire(&self, e: &WireError) {
        self.warn(error_object(e.clone()));
    }

    // ---------------------------------------------------------------- closing

    fn close(&mut self, code: u16, reason: &str) {
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

    fn close_without_frame(&mut self, code: u16, reason: &str) {
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

    async fn finish(mut self) {
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
            let timeout = self.server.config.limits.close_timeout;
            let _ = tokio::time::timeout(timeout, async {
                loop {
                    let ev = IoPoll {
                        ws: &mut self.ws,
                        w: &mut self.wstate,
                        can_read: true,
                        batch_reads: false,
                        shared: &self.shared,
                        server: &self.server,
                    }
                    .await;
                    match ev {
                        IoEvent::Inbound(Some(Ok(_))) => continue,
                        _ => break,
                    }
                }
            })
            .await;
        }
        self.server.sockets.socket_finished();
    }
}

/// Run a handler: poll it once right here, in the socket task, and spawn it only if it
/// has to wait. A handler that answers synchronously (the common case) costs no task,
/// no scheduling and no cross-task wakeup, and the answers to every request read in one
/// batch leave in one flush. A handler that awaits still runs concurrently with the
/// socket (the spawned task polls it again with its own waker). A panic in the first
/// poll is contained like a panic in a spawned task: logged, the request dropped.
fn run_handler(mut fut: HandlerFuture) {
    let mut cx = Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            tokio::spawn(fut);
        }
        Err(_) => tracing::error!("a procedure or receiver handler panicked"),
    }
}

impl Drop for SocketTask {
    fn drop(&mut self) {
        // However the task ends (also when its runtime shuts down): nothing more is
        // accepted, and `Socket::closed` waiters are released.
        self.shared.outbox.shut();
        self.shared.set_closed(CloseInfo {
            code: 1006,
            reason: String::new(),
        });
        // After `closed` is set: `Socket::procedure` registers nothing from now on.
        self.shared.end_streams();
    }
}

/// The next tick of an optional interval (never while there is none).
async fn tick_opt(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn wire_invalid_action(msg: &str) -> ErrorObject {
    ErrorObject::new("InvalidActionError", msg)
}

/// An error object for a wire error (non-object errors become `{"message": ...}`).
fn error_object(e: WireError) -> ErrorObject {
    match e {
        WireError::Object(o) => o,
        WireError::Value(v) => ErrorObject::new(
            "Error",
            match v {
                Value::String(s) => s,
                other => other.to_string(),
            },
        ),
    }
}
