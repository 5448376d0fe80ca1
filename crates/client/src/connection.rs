//! The connection task: the one owner of the socket, the cid → pending-response map,
//! the outbound buffer, the reconnect state, the channel table and the auth state.
//!
//! Every handler is synchronous: frames to write are collected in `out` and token-store
//! operations in `store_ops`, and both are performed, in order, at the end of each loop
//! iteration. No lock is held across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use indexmap::IndexMap;
use serde_json::Value;
use serde_json::value::RawValue;
use socketcluster_protocol::codec::{self, encode_batch};
use socketcluster_protocol::error::wire;
use socketcluster_protocol::reserved::{self as ev, AuthenticateResult, HandshakeStatus};
use socketcluster_protocol::{
    Backoff, BatchItem, Cid, CidAllocator, CloseCode, ErrorObject, EventPacket, Frame, KeyOrder,
    Packet, ProtocolVersion, ResponsePacket, Role, WireError,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use crate::auth::{AuthState, AuthStatus, BoxError, BoxFuture, ReauthReason, TokenRequest};
use crate::channel::{ChannelEntry, ChannelState, Consumer, Message, SubscribeOptions};
use crate::connector::{Dialer, WsStream};
use crate::error::{BadConnectionType, ConnectError, InvokeError, SubscribeError};
use crate::events::{ConnectStatus, Event, EventHub, PendingSubscriptions};
use crate::options::ClientOptions;
use crate::rpc::{Handler, Request, Responder, Transmitted};

/// The connection state (JS `state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// A WebSocket is being opened or the handshake is in progress.
    Connecting,
    /// The handshake completed.
    Open,
    /// No connection (a reconnect may be pending).
    Closed,
}

impl ConnectionState {
    /// The JS spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Open => "open",
            ConnectionState::Closed => "closed",
        }
    }
}

/// What the handle can read at any time.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) state: ConnectionState,
    pub(crate) status: Option<ConnectStatus>,
    pub(crate) auth_state: AuthState,
    pub(crate) signed_token: Option<String>,
    pub(crate) claims: Option<Value>,
    pub(crate) channels: IndexMap<String, ChannelState>,
    pub(crate) pending_reconnect: Option<Duration>,
    pub(crate) connect_attempts: u32,
    pub(crate) terminated: bool,
}

type RawData = Option<Box<RawValue>>;

/// Hasher for the pending-request map, whose keys are our own sequential cids: one
/// multiplication (Fibonacci hashing spreads consecutive keys over the table's control
/// bytes) instead of SipHash, which protects against keys chosen by an attacker; these
/// are not (a server's `rid` is only ever looked up).
#[derive(Clone, Copy, Default)]
struct CidHash;

impl std::hash::BuildHasher for CidHash {
    type Hasher = CidHasher;
    fn build_hasher(&self) -> CidHasher {
        CidHasher(0)
    }
}

#[derive(Default)]
struct CidHasher(u64);

impl std::hash::Hasher for CidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
type InvokeReply = oneshot::Sender<Result<RawData, InvokeError>>;
type AuthReply = oneshot::Sender<Result<AuthStatus, InvokeError>>;

/// Commands from the handles to the task.
pub(crate) enum Command {
    Connect {
        done: Option<oneshot::Sender<Result<(), ConnectError>>>,
    },
    Disconnect {
        code: CloseCode,
        reason: Option<String>,
    },
    Reconnect {
        code: CloseCode,
        reason: Option<String>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
    Transmit {
        event: String,
        data: RawData,
    },
    Invoke {
        event: String,
        data: RawData,
        timeout: Option<Duration>,
        reply: InvokeReply,
    },
    Subscribe {
        channel: String,
        options: SubscribeOptions,
        consumer_id: u64,
        tx: crate::queue::Sender<Message>,
        reply: oneshot::Sender<watch::Receiver<crate::channel::ChannelStatus>>,
    },
    DropConsumer {
        channel: String,
        id: u64,
    },
    Unsubscribe {
        channel: String,
    },
    ProcessPending,
    Authenticate {
        token: String,
        reply: AuthReply,
    },
    Deauthenticate {
        done: oneshot::Sender<()>,
    },
    AddHandler {
        name: String,
        id: u64,
        handler: Handler,
    },
    DropHandler {
        name: String,
        id: u64,
    },
    Respond {
        generation: u64,
        cid: Cid,
        response: Result<RawData, WireError>,
    },
    StartBatching,
    StopBatching,
    CancelBatching,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Queued(u64),
    Sent(u64),
}

enum Pending {
    Call {
        event: String,
        reply: InvokeReply,
        timeout: Duration,
        deadline: Instant,
    },
    Handshake {
        token: Option<String>,
        deadline: Instant,
    },
    Subscribe {
        channel: String,
    },
    Authenticate {
        token: String,
        reply: Option<AuthReply>,
        deadline: Instant,
        reauth: bool,
    },
}

enum QueuedKind {
    Transmit,
    Invoke {
        reply: InvokeReply,
        timeout: Duration,
    },
    Authenticate {
        token: String,
        reply: AuthReply,
    },
}

struct Queued {
    qid: u64,
    event: String,
    data: RawData,
    kind: QueuedKind,
    deadline: Instant,
}

enum Phase {
    Closed,
    Dialing,
    Handshaking,
    Open,
}

enum StoreOp {
    Save(String),
    Remove { emit: bool },
}

struct Reauth {
    /// Hold the outbound queue until the re-authentication ends (set at handshake time,
    /// so that subscriptions still precede queued messages).
    hold_queue: bool,
    /// Hold `#subscribe` requests until it ends (not for a refresh of a valid token).
    hold_subscriptions: bool,
}

enum Wake {
    Cmd(Option<Command>),
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Dialed(Result<Box<WsStream>, String>),
    Hook(u64, Result<String, BoxError>),
    Timer,
}

pub(crate) struct Connection {
    opts: Arc<ClientOptions>,
    dialer: Dialer,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    cmd_weak: mpsc::WeakUnboundedSender<Command>,
    events: broadcast::Sender<Event>,
    hub: EventHub,
    snapshot: watch::Sender<Snapshot>,

    phase: Phase,
    generation: u64,
    sink: Option<SplitSink<WsStream, WsMessage>>,
    stream: Option<SplitStream<WsStream>>,
    dial: Option<BoxFuture<'static, Result<WsStream, String>>>,
    dial_deadline: Option<Instant>,
    out: Vec<String>,
    store_ops: Vec<StoreOp>,

    cids: CidAllocator,
    pending: HashMap<u64, Pending, CidHash>,
    queue: VecDeque<Queued>,
    next_qid: u64,
    timers: BTreeSet<(Instant, TimerKey)>,

    ping_timeout: Duration,
    ping_deadline: Option<Instant>,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    v1_disconnect_reason: Option<String>,

    batching: bool,
    batching_explicit: bool,
    batch_buf: Vec<String>,
    batch_flush_at: Option<Instant>,
    batch_stop_at: Option<Instant>,

    channels: IndexMap<String, ChannelEntry>,
    preparing_subscriptions: bool,

    auth_state: AuthState,
    signed_token: Option<String>,
    claims: Option<Value>,
    reauth: Option<Reauth>,
    reauth_failed: bool,
    refresh_at: Option<Instant>,
    hook: Option<(u64, JoinHandle<Result<String, BoxError>>)>,
    hook_seq: u64,

    handlers: HashMap<String, Vec<(u64, Handler, u64)>>,
    connect_waiters: Vec<oneshot::Sender<Result<(), ConnectError>>>,
    close_waiters: Vec<oneshot::Sender<()>>,
    last_handshake_error: Option<WireError>,
    last_dial_error: Option<String>,
    terminated: bool,
}

async fn next_ws(
    stream: &mut Option<SplitStream<WsStream>>,
) -> Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn poll_dial(
    dial: &mut Option<BoxFuture<'static, Result<WsStream, String>>>,
) -> Result<WsStream, String> {
    match dial {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn poll_hook(
    hook: &mut Option<(u64, JoinHandle<Result<String, BoxError>>)>,
) -> (u64, Result<String, BoxError>) {
    match hook {
        Some((seq, h)) => {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(Box::new(std::io::Error::other(format!(
                    "token provider panicked or was cancelled: {e}"
                ))) as BoxError),
            };
            (*seq, r)
        }
        None => std::future::pending().await,
    }
}

/// At most this many further ready commands and inbound messages are handled after the
/// one that woke the connection task, before its frames are flushed.
const DRAIN_BUDGET: usize = 256;

fn raw(text: impl Into<String>) -> Box<RawValue> {
    RawValue::from_string(text.into())
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is valid JSON"))
}

fn local_error(name: &str, message: impl Into<String>) -> WireError {
    WireError::Object(ErrorObject::new(name, message))
}

impl Connection {
    pub(crate) fn new(
        opts: Arc<ClientOptions>,
        dialer: Dialer,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        cmd_weak: mpsc::WeakUnboundedSender<Command>,
        events: broadcast::Sender<Event>,
        hub: EventHub,
        snapshot: watch::Sender<Snapshot>,
    ) -> Connection {
        let backoff = Backoff::new(opts.reconnect.clone());
        let ping_timeout = opts.connect_timeout;
        Connection {
            opts,
            dialer,
            cmd_rx,
            cmd_weak,
            events,
            hub,
            snapshot,
            phase: Phase::Closed,
            generation: 0,
            sink: None,
            stream: None,
            dial: None,
            dial_deadline: None,
            out: Vec::new(),
            store_ops: Vec::new(),
            cids: CidAllocator::new(),
            pending: HashMap::default(),
            queue: VecDeque::new(),
            next_qid: 1,
            timers: BTreeSet::new(),
            ping_timeout,
            ping_deadline: None,
            backoff,
            reconnect_at: None,
            v1_disconnect_reason: None,
            batching: false,
            batching_explicit: false,
            batch_buf: Vec::new(),
            batch_flush_at: None,
            batch_stop_at: None,
            channels: IndexMap::new(),
            preparing_subscriptions: false,
            auth_state: AuthState::Unauthenticated,
            signed_token: None,
            claims: None,
            reauth: None,
            reauth_failed: false,
            refresh_at: None,
            hook: None,
            hook_seq: 0,
            handlers: HashMap::new(),
            connect_waiters: Vec::new(),
            close_waiters: Vec::new(),
            last_handshake_error: None,
            last_dial_error: None,
            terminated: false,
        }
    }

    pub(crate) async fn run(mut self) {
        if self.opts.auto_connect {
            self.start_connect();
        }
        // One timer for the task's whole life (creating and dropping a `Sleep` per
        // iteration takes the timer wheel's lock twice). `armed` is the instant it is
        // set to, `None` once it has fired (or before it is first set). It is re-armed
        // only when the next deadline is earlier than `armed`; a later deadline leaves it
        // armed, so it may fire early once: `on_timer` then finds nothing due and the
        // next iteration re-arms it for the real deadline.
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut armed: Option<Instant> = None;
        loop {
            if let Some(deadline) = self.next_deadline()
                && armed.is_none_or(|a| deadline < a)
            {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            let wake = tokio::select! {
                c = self.cmd_rx.recv() => Wake::Cmd(c),
                m = next_ws(&mut self.stream) => Wake::Ws(m),
                d = poll_dial(&mut self.dial) => Wake::Dialed(d.map(Box::new)),
                (seq, r) = poll_hook(&mut self.hook) => Wake::Hook(seq, r),
                () = timer.as_mut(), if armed.is_some() => Wake::Timer,
            };
            if matches!(wake, Wake::Timer) {
                armed = None;
            }
            self.on_wake(wake).await;
            self.drain_ready().await;
            self.flush_out().await;
            self.run_store_ops().await;
            if self.terminated {
                break;
            }
        }
        self.flush_out().await;
        self.run_store_ops().await;
        self.hub.close();
        for w in self.close_waiters.drain(..) {
            let _ = w.send(());
        }
        tracing::debug!("connection task finished");
    }

    async fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Cmd(Some(c)) => self.on_command(c),
            Wake::Cmd(None) => {
                tracing::debug!("every handle was dropped; closing the client");
                self.terminate();
            }
            Wake::Ws(m) => self.on_ws(m),
            Wake::Dialed(r) => {
                self.dial = None;
                self.dial_deadline = None;
                match r {
                    Ok(ws) => self.on_ws_open(*ws).await,
                    Err(e) => {
                        tracing::debug!(error = %e, url = self.dialer.url(), "WebSocket connection failed");
                        self.last_dial_error = Some(e);
                        self.close_connection(CloseCode::ABNORMAL, None, false);
                    }
                }
            }
            Wake::Hook(seq, r) => {
                self.hook = None;
                self.on_hook_result(seq, r);
            }
            Wake::Timer => self.on_timer(),
        }
    }

    /// Handle up to [`DRAIN_BUDGET`] further commands and inbound messages that are ready
    /// right now (alternating between the two; each source in its own order), so that
    /// their frames go out with one flush. Stops before anything that must be awaited
    /// between two items: pending token-store operations, or the end of the task. A
    /// closed command channel is left to the next `select!`. Before an item that closes
    /// the connection (a close/disconnect/reconnect command, an inbound close frame,
    /// error or end of stream), the frames written so far are flushed by this task, as
    /// they were before batching (the close itself hands only later frames to the
    /// background task that writes the close frame, which may not finish if the
    /// process exits right after `Client::close`).
    async fn drain_ready(&mut self) {
        let mut budget = DRAIN_BUDGET;
        let mut cmds_open = true;
        while budget > 0 {
            let mut progressed = false;
            if cmds_open && self.can_drain() {
                match self.cmd_rx.try_recv() {
                    Ok(c) => {
                        if matches!(
                            c,
                            Command::Close { .. }
                                | Command::Disconnect { .. }
                                | Command::Reconnect { .. }
                        ) {
                            self.flush_out().await;
                        }
                        self.on_command(c);
                        budget -= 1;
                        progressed = true;
                    }
                    Err(_) => cmds_open = false,
                }
            }
            if budget > 0
                && self.can_drain()
                && let Some(stream) = self.stream.as_mut()
                && let Some(m) = stream.next().now_or_never()
            {
                if !matches!(m, Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_)))) {
                    self.flush_out().await;
                }
                self.on_ws(m);
                budget -= 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn can_drain(&self) -> bool {
        !self.terminated && self.store_ops.is_empty()
    }

    // ---------------------------------------------------------------- plumbing

    fn emit(&self, e: Event) {
        tracing::trace!(event = e.name(), "emit");
        let _ = self.events.send(e);
    }

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    fn is_authenticated(&self) -> bool {
        self.auth_state == AuthState::Authenticated
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(t, _)| *t),
            self.ping_deadline,
            self.dial_deadline,
            self.reconnect_at,
            self.refresh_at,
            self.batch_flush_at,
            self.batch_stop_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Queue a codec packet for writing (through the batch buffer when batching).
    fn write_packet(&mut self, text: String) {
        if self.sink.is_none() {
            return;
        }
        if self.batching {
            self.batch_buf.push(text);
        } else {
            self.out.push(text);
        }
    }

    /// Queue a frame that bypasses batching (handshake, pong).
    fn write_direct(&mut self, text: String) {
        if self.sink.is_some() {
            self.out.push(text);
        }
    }

    async fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.out);
        if let Some(sink) = self.sink.as_mut() {
            for f in frames {
                if let Err(e) = sink.feed(WsMessage::Text(f.into())).await {
                    tracing::debug!(error = %e, "write failed");
                    return;
                }
            }
            if let Err(e) = sink.flush().await {
                tracing::debug!(error = %e, "flush failed");
            }
        }
    }

    async fn run_store_ops(&mut self) {
        if self.store_ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.store_ops);
        let store = self.opts.token_store.clone();
        for op in ops {
            match op {
                StoreOp::Save(t) => {
                    if let Err(e) = store.save(t).await {
                        tracing::warn!(error = %e, "failed to save the auth token");
                        self.emit(Event::Error(local_error(
                            "FailedToSaveTokenError",
                            e.to_string(),
                        )));
                    }
                }
                StoreOp::Remove { emit } => match store.remove().await {
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
                },
            }
        }
    }

    fn add_timer(&mut self, at: Instant, key: TimerKey) {
        self.timers.insert((at, key));
    }

    fn remove_timer(&mut self, at: Instant, key: TimerKey) {
        self.timers.remove(&(at, key));
    }

    // ---------------------------------------------------------------- commands

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect { done } => {
                if let Some(done) = done {
                    if self.is_open() {
                        let _ = done.send(Ok(()));
                    } else {
                        self.connect_waiters.push(done);
                    }
                }
                self.start_connect();
            }
            Command::Disconnect { code, reason } => self.disconnect(code, reason),
            Command::Reconnect { code, reason } => {
                self.disconnect(code, reason);
                self.start_connect();
            }
            Command::Close { done } => {
                self.close_waiters.push(done);
                self.terminate();
            }
            Command::Transmit { event, data } => {
                let deadline = Instant::now() + self.opts.ack_timeout;
                self.outbound(event, data, QueuedKind::Transmit, deadline);
            }
            Command::Invoke {
                event,
                data,
                timeout,
                reply,
            } => {
                let timeout = timeout.unwrap_or(self.opts.ack_timeout);
                let deadline = Instant::now() + timeout;
                self.outbound(event, data, QueuedKind::Invoke { reply, timeout }, deadline);
            }
            Command::Authenticate { token, reply } => {
                let deadline = Instant::now() + self.opts.ack_timeout;
                let data = raw(serde_json::to_string(&token).unwrap_or_default());
                self.outbound(
                    ev::AUTHENTICATE.to_owned(),
                    Some(data),
                    QueuedKind::Authenticate { token, reply },
                    deadline,
                );
            }
            Command::Deauthenticate { done } => {
                self.store_ops.push(StoreOp::Remove { emit: true });
                if !matches!(self.phase, Phase::Closed) {
                    let deadline = Instant::now() + self.opts.ack_timeout;
                    self.outbound(
                        ev::REMOVE_AUTH_TOKEN.to_owned(),
                        None,
                        QueuedKind::Transmit,
                        deadline,
                    );
                }
                self.change_to_unauthenticated();
                let _ = done.send(());
            }
            Command::Subscribe {
                channel,
                options,
                consumer_id,
                tx,
                reply,
            } => self.subscribe(channel, options, consumer_id, tx, reply),
            Command::DropConsumer { channel, id } => {
                let empty = match self.channels.get_mut(&channel) {
                    Some(e) => {
                        let before = e.consumers.len();
                        e.consumers.retain(|c| c.id != id);
                        before != e.consumers.len() && e.consumers.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.unsubscribe(&channel, SubscribeError::Unsubscribed, true);
                }
            }
            Command::Unsubscribe { channel } => {
                self.unsubscribe(&channel, SubscribeError::Unsubscribed, true)
            }
            Command::ProcessPending => self.process_pending_subscriptions(),
            Command::AddHandler { name, id, handler } => {
                self.handlers
                    .entry(name)
                    .or_default()
                    .push((id, handler, 0));
            }
            Command::DropHandler { name, id } => {
                if let Some(v) = self.handlers.get_mut(&name) {
                    v.retain(|(i, _, _)| *i != id);
                    if v.is_empty() {
                        self.handlers.remove(&name);
                    }
                }
            }
            Command::Respond {
                generation,
                cid,
                response,
            } => {
                if generation == self.generation && self.is_open() {
                    let packet = match response {
                        Ok(data) => ResponsePacket::ok(cid, data),
                        Err(e) => ResponsePacket::err(cid, &e),
                    };
                    self.write_packet(packet.encode());
                }
            }
            Command::StartBatching => {
                self.batching_explicit = true;
                self.start_batching();
            }
            Command::StopBatching => {
                self.batching_explicit = false;
                self.stop_batching();
            }
            Command::CancelBatching => {
                self.batching_explicit = false;
                self.batch_buf.clear();
                self.stop_batching();
            }
        }
    }

    // ---------------------------------------------------------------- batching

    fn start_batching(&mut self) {
        if !self.batching {
            self.batching = true;
            self.batch_flush_at = Some(Instant::now() + self.opts.batch_interval);
        }
    }

    fn flush_batch(&mut self) {
        if !self.batch_buf.is_empty() {
            let frames = std::mem::take(&mut self.batch_buf);
            self.out.push(encode_batch(&frames));
        }
    }

    fn stop_batching(&mut self) {
        self.flush_batch();
        self.batching = false;
        self.batch_flush_at = None;
        self.batch_stop_at = None;
    }

    // ---------------------------------------------------------------- outbound buffer

    fn outbound(&mut self, event: String, data: RawData, kind: QueuedKind, deadline: Instant) {
        if self.terminated {
            fail_kind(kind, InvokeError::Closed);
            return;
        }
        if matches!(self.phase, Phase::Closed) {
            // JS: every transmit/invoke on a closed client connects it (PROTOCOL.md 7.1).
            self.start_connect();
        }
        let holding = self.reauth.as_ref().is_some_and(|r| r.hold_queue);
        if self.is_open() && self.queue.is_empty() && !holding {
            self.send_now(event, data, kind, deadline);
        } else {
            let qid = self.next_qid;
            self.next_qid += 1;
            self.add_timer(deadline, TimerKey::Queued(qid));
            self.queue.push_back(Queued {
                qid,
                event,
                data,
                kind,
                deadline,
            });
        }
    }

    fn flush_queue(&mut self) {
        if !self.is_open() || self.reauth.as_ref().is_some_and(|r| r.hold_queue) {
            return;
        }
        while let Some(q) = self.queue.pop_front() {
            self.remove_timer(q.deadline, TimerKey::Queued(q.qid));
            self.send_now(q.event, q.data, q.kind, q.deadline);
        }
    }

    fn send_now(&mut self, event: String, data: RawData, kind: QueuedKind, deadline: Instant) {
        match kind {
            QueuedKind::Transmit => {
                let p = EventPacket::transmit(event, data);
                self.write_packet(p.encode(KeyOrder::Client));
            }
            QueuedKind::Invoke { reply, timeout } => {
                let cid = self.cids.next_cid();
                let p = EventPacket::invoke(event.clone(), data, cid);
                self.write_packet(p.encode(KeyOrder::Client));
                self.add_timer(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Call {
                        event,
                        reply,
                        timeout,
                        deadline,
                    },
                );
            }
            QueuedKind::Authenticate { token, reply } => {
                let cid = self.cids.next_cid();
                let p = EventPacket::invoke(event, data, cid);
                self.write_packet(p.encode(KeyOrder::Client));
                self.add_timer(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Authenticate {
                        token,
                        reply: Some(reply),
                        deadline,
                        reauth: false,
                    },
                );
            }
        }
    }

    // ---------------------------------------------------------------- connecting

    fn start_connect(&mut self) {
        if self.terminated || !matches!(self.phase, Phase::Closed) {
            return;
        }
        self.reconnect_at = None;
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
        self.dial = Some(Box::pin(self.dialer.clone().dial()));
        self.dial_deadline = Some(Instant::now() + self.opts.connect_timeout);
    }

    async fn on_ws_open(&mut self, ws: WsStream) {
        let (sink, stream) = ws.split();
        self.sink = Some(sink);
        self.stream = Some(stream);
        self.phase = Phase::Handshaking;
        self.ping_timeout = self.opts.connect_timeout;
        self.reset_ping_deadline();
        let token = match self.opts.token_store.load().await {
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
        let deadline = Instant::now() + self.opts.ack_timeout;
        self.add_timer(deadline, TimerKey::Sent(cid));
        self.pending
            .insert(cid, Pending::Handshake { token, deadline });
    }

    fn reset_ping_deadline(&mut self) {
        self.ping_deadline = if self.opts.ping_timeout_disabled {
            None
        } else {
            Some(Instant::now() + self.ping_timeout)
        };
    }

    fn on_handshake_reply(&mut self, token: Option<String>, resp: ResponsePacket) {
        if let Some(err) = resp.error() {
            // PROTOCOL.md 8.2: error event, then close with statusCode or 4003.
            let code = err
                .as_object()
                .and_then(ErrorObject::status_code)
                .map(CloseCode)
                .unwrap_or(CloseCode::HANDSHAKE_FAILED);
            let reason = format!("{}: {}", err.name(), err.message());
            self.emit(Event::Error(err.clone()));
            self.last_handshake_error = Some(err);
            self.close_connection(code, Some(reason), true);
            return;
        }
        let status = HandshakeStatus::parse(resp.data.as_deref());
        self.on_open(status, token);
    }

    fn on_open(&mut self, status: HandshakeStatus, token: Option<String>) {
        self.phase = Phase::Open;
        self.reauth_failed = false;
        if self.batching_explicit {
            self.start_batching();
        } else if self.opts.batch_on_handshake {
            self.start_batching();
            self.batch_stop_at = Some(Instant::now() + self.opts.batch_on_handshake_duration);
        }
        self.preparing_subscriptions = true;
        if let Some(pt) = status.ping_timeout {
            self.ping_timeout = Duration::from_millis(pt);
        }
        self.reset_ping_deadline();
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
        let needs_reauth =
            self.opts.token_provider.is_some() && !self.is_authenticated() && !self.reauth_failed;
        if needs_reauth {
            self.reauth = Some(Reauth {
                hold_queue: true,
                hold_subscriptions: true,
            });
        }
        if self.opts.auto_subscribe_on_connect {
            self.process_pending_subscriptions();
        }
        self.emit(Event::Connect {
            status: connect_status,
            pending: PendingSubscriptions {
                tx: self.cmd_weak.clone(),
            },
        });
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        if needs_reauth {
            let reason = match &status.auth_error {
                Some(e) => ReauthReason::Rejected(e.clone()),
                None => ReauthReason::NoToken,
            };
            self.call_provider(reason);
        } else {
            self.flush_queue();
            self.schedule_refresh();
        }
    }

    // ---------------------------------------------------------------- closing

    fn disconnect(&mut self, code: CloseCode, reason: Option<String>) {
        if matches!(self.phase, Phase::Closed) {
            // JS: disconnect() while closed only cancels a pending reconnect.
            self.reconnect_at = None;
            self.snapshot.send_modify(|s| s.pending_reconnect = None);
            return;
        }
        self.announce_v1_disconnect(code, reason.as_deref());
        self.close_connection_with(code, reason.clone(), reason.unwrap_or_default(), true);
    }

    /// A v14 client transmits `#disconnect` `{code, data}` before it closes an open
    /// connection itself (PROTOCOL.md 1.4; v14 `SCTransport.close`); v20 peers do not.
    fn announce_v1_disconnect(&mut self, code: CloseCode, reason: Option<&str>) {
        if self.opts.protocol_version == ProtocolVersion::V1 && self.is_open() {
            self.write_direct(ev::v1_disconnect_frame(code.0, reason));
        }
    }

    /// Close because of `code`; the locally reported reason is `reason` or the table text.
    fn close_connection(&mut self, code: CloseCode, reason: Option<String>, send_frame: bool) {
        let reported = match reason {
            Some(r) => r,
            None => code.reported_reason(""),
        };
        self.close_connection_with(code, None, reported, send_frame);
    }

    /// The close sequence (PROTOCOL.md 6.4, 7.1, 8.1).
    fn close_connection_with(
        &mut self,
        code: CloseCode,
        frame_reason: Option<String>,
        reported_reason: String,
        send_frame: bool,
    ) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let was_open = self.is_open();
        // Hand the socket to a small task that writes what is left and the close frame.
        let sink = self.sink.take();
        self.stream = None;
        self.dial = None;
        self.dial_deadline = None;
        self.ping_deadline = None;
        self.refresh_at = None;
        self.batch_buf.clear();
        self.batching = false;
        self.batch_flush_at = None;
        self.batch_stop_at = None;
        let leftover = std::mem::take(&mut self.out);
        if let Some(mut sink) = sink {
            tokio::spawn(async move {
                let work = async {
                    for f in leftover {
                        sink.feed(WsMessage::Text(f.into())).await?;
                    }
                    if send_frame {
                        let frame = if code.is_sendable() {
                            Some(CloseFrame {
                                code: WsCloseCode::from(code.0),
                                reason: frame_reason.unwrap_or_default().into(),
                            })
                        } else {
                            None
                        };
                        sink.feed(WsMessage::Close(frame)).await?;
                    }
                    sink.flush().await?;
                    sink.close().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), work).await;
            });
        }
        self.phase = Phase::Closed;
        self.reconnect_at = None;
        if let Some((_, h)) = self.hook.take() {
            h.abort();
        }
        self.reauth = None;
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
        let queue = std::mem::take(&mut self.queue);
        self.timers.clear();
        for q in queue {
            let e = bad(&q.event);
            fail_kind(q.kind, e);
        }

        // Suspend channels.
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            entry.pending_cid = None;
            entry.awaiting_reauth = None;
            if entry.state == ChannelState::Subscribed {
                entry.set_state(ChannelState::Pending);
                self.snapshot.send_modify(|s| {
                    s.channels.insert(name.clone(), ChannelState::Pending);
                });
                self.emit(Event::SubscribeStateChange {
                    channel: name.clone(),
                    old: ChannelState::Subscribed,
                    new: ChannelState::Pending,
                });
                self.emit(Event::Unsubscribe {
                    channel: name.clone(),
                });
            }
        }

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

        // Reconnect policy (PROTOCOL.md 4.3, 8.4).
        if self.opts.auto_reconnect
            && !self.terminated
            && let Some(delay) = self.backoff.after_close(code, rand::random::<f64>())
        {
            tracing::debug!(code = code.0, ?delay, "reconnect scheduled");
            self.reconnect_at = Some(Instant::now() + delay);
            let attempts = self.backoff.attempts();
            self.snapshot.send_modify(|s| {
                s.pending_reconnect = Some(delay);
                s.connect_attempts = attempts;
            });
        }
    }

    /// `close()`: graceful close and end of the task.
    fn terminate(&mut self) {
        if self.terminated {
            return;
        }
        if !matches!(self.phase, Phase::Closed) {
            self.announce_v1_disconnect(CloseCode::NORMAL, None);
            self.close_connection_with(CloseCode::NORMAL, None, String::new(), true);
        }
        self.terminated = true;
        self.reconnect_at = None;
        for (_, p) in self.pending.drain() {
            if let Pending::Call { reply, .. } = p {
                let _ = reply.send(Err(InvokeError::Closed));
            }
        }
        for q in std::mem::take(&mut self.queue) {
            fail_kind(q.kind, InvokeError::Closed);
        }
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(ConnectError::Closed));
        }
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            if let Some(mut e) = self.channels.shift_remove(&name) {
                e.status.send_modify(|s| {
                    s.state = ChannelState::Unsubscribed;
                    s.ended = Some(SubscribeError::Closed);
                });
                e.consumers.clear();
            }
        }
        self.handlers.clear();
        self.snapshot.send_modify(|s| {
            s.channels.clear();
            s.terminated = true;
            s.pending_reconnect = None;
        });
    }

    // ---------------------------------------------------------------- inbound

    fn on_ws(&mut self, m: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) {
        match m {
            Some(Ok(WsMessage::Text(t))) => self.on_text(t.as_str()),
            Some(Ok(WsMessage::Binary(b))) => {
                // The JS client cannot read binary frames: a raw event.
                self.emit(Event::Raw(String::from_utf8_lossy(&b).into_owned()));
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = match frame {
                    Some(f) => (CloseCode(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => (CloseCode::NO_STATUS, String::new()),
                };
                let reason = if reason.is_empty() {
                    self.v1_disconnect_reason.take().unwrap_or_default()
                } else {
                    reason
                };
                self.close_connection(code, Some(code.reported_reason(&reason)), false);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket error");
                self.close_connection(CloseCode::ABNORMAL, None, false);
            }
            None => self.close_connection(CloseCode::ABNORMAL, None, false),
        }
    }

    fn on_text(&mut self, text: &str) {
        // Publications are most of the inbound traffic: one pass, no intermediate
        // allocation, for the form servers send them in (anything else, and any
        // publication in another shape, takes the general path below).
        if let Some(p) = ev::parse_publish_frame(text) {
            let channel = self.opts.app_channel(p.channel);
            self.deliver_publication(channel, Some(p.data));
            return;
        }
        let version: ProtocolVersion = self.opts.protocol_version;
        match codec::decode(text, Role::Client, version) {
            Frame::Heartbeat => {
                self.reset_ping_deadline();
                self.write_direct(version.pong().to_owned());
            }
            Frame::Packet(p) => self.on_packet(p),
            Frame::Batch(items) => {
                for item in items {
                    match item {
                        BatchItem::Packet(p) => self.on_packet(p),
                        BatchItem::Raw => self.emit(Event::Raw(text.to_owned())),
                    }
                    if matches!(self.phase, Phase::Closed) {
                        break;
                    }
                }
            }
            Frame::Raw => self.emit(Event::Raw(text.to_owned())),
        }
    }

    fn on_packet(&mut self, p: Packet) {
        match p {
            Packet::Response(r) => self.on_response(r),
            Packet::Event(e) => self.on_event(e),
        }
    }

    fn on_response(&mut self, r: ResponsePacket) {
        let Some(cid) = r.rid.as_u64() else {
            return;
        };
        let Some(p) = self.pending.remove(&cid) else {
            return;
        };
        match p {
            Pending::Call {
                reply, deadline, ..
            } => {
                self.remove_timer(deadline, TimerKey::Sent(cid));
                let result = match r.error() {
                    Some(e) => Err(InvokeError::Remote(e)),
                    None => Ok(r.data),
                };
                let _ = reply.send(result);
            }
            Pending::Handshake { token, deadline } => {
                self.remove_timer(deadline, TimerKey::Sent(cid));
                self.on_handshake_reply(token, r);
            }
            Pending::Subscribe { channel } => self.on_subscribe_reply(channel, cid, r),
            Pending::Authenticate {
                token,
                reply,
                deadline,
                reauth,
            } => {
                self.remove_timer(deadline, TimerKey::Sent(cid));
                self.on_authenticate_reply(token, reply, reauth, r);
            }
        }
    }

    fn on_event(&mut self, e: EventPacket) {
        match e.event.as_str() {
            ev::PUBLISH => {
                if let Some(p) = ev::parse_publish(e.data.as_deref()) {
                    let channel = self.opts.app_channel(&p.channel);
                    self.deliver_publication(channel, p.data.as_deref());
                }
            }
            ev::KICK_OUT => {
                if let Some((wire, message)) = ev::parse_kick_out(e.data.as_deref())
                    && let channel = self.opts.app_channel(&wire).to_owned()
                    && self.channels.contains_key(&channel)
                {
                    self.emit(Event::KickOut {
                        channel: channel.clone(),
                        message,
                    });
                    self.unsubscribe(&channel, SubscribeError::KickedOut, false);
                }
            }
            ev::SET_AUTH_TOKEN => match ev::parse_set_auth_token(e.data.as_deref()) {
                Some(token) => {
                    self.change_to_authenticated(token.clone());
                    self.store_ops.push(StoreOp::Save(token));
                    if let Some(cid) = e.cid {
                        self.write_packet(ResponsePacket::ok(cid, None).encode());
                    }
                    self.schedule_refresh();
                }
                None => {
                    // Documented difference (PROTOCOL.md 12.3 X-6): a #setAuthToken without
                    // a token string is ignored.
                    if let Some(cid) = e.cid {
                        let err = WireError::Object(wire::no_token_data());
                        self.write_packet(ResponsePacket::err(cid, &err).encode());
                    }
                }
            },
            ev::REMOVE_AUTH_TOKEN => {
                self.change_to_unauthenticated();
                self.store_ops.push(StoreOp::Remove { emit: true });
                if let Some(cid) = e.cid {
                    self.write_packet(ResponsePacket::ok(cid, None).encode());
                }
                if self.opts.token_provider.is_some() && self.is_open() && !self.reauth_failed {
                    if self.reauth.is_none() {
                        self.reauth = Some(Reauth {
                            hold_queue: false,
                            hold_subscriptions: true,
                        });
                        self.call_provider(ReauthReason::Removed);
                    } else if let Some(r) = self.reauth.as_mut() {
                        r.hold_subscriptions = true;
                    }
                }
            }
            _ => {
                if e.event == ev::DISCONNECT
                    && self.opts.protocol_version == ProtocolVersion::V1
                    && let Some((_, reason)) = ev::parse_v1_disconnect(e.data.as_deref())
                {
                    self.v1_disconnect_reason = reason;
                }
                self.dispatch_to_handlers(e);
            }
        }
    }

    fn dispatch_to_handlers(&mut self, e: EventPacket) {
        let Some(list) = self.handlers.get_mut(&e.event) else {
            return;
        };
        let mut slow = Vec::new();
        match e.cid {
            Some(cid) => {
                let Some(cmd) = self.cmd_weak.upgrade() else {
                    return;
                };
                let request = Request {
                    event: e.event.clone(),
                    data: e.data,
                    responder: Arc::new(Responder {
                        cid,
                        generation: self.generation,
                        answered: AtomicBool::new(false),
                        cmd,
                    }),
                };
                for (_, h, dropped) in list.iter_mut() {
                    if let Handler::Procedure(tx) = h
                        && tx.try_send(request.clone()).is_err()
                    {
                        *dropped += 1;
                        slow.push(*dropped);
                    }
                }
            }
            None => {
                let t = Transmitted {
                    event: e.event.clone(),
                    data: e.data,
                };
                for (_, h, dropped) in list.iter_mut() {
                    if let Handler::Receiver(tx) = h
                        && tx.try_send(t.clone()).is_err()
                    {
                        *dropped += 1;
                        slow.push(*dropped);
                    }
                }
            }
        }
        for dropped in slow {
            self.emit(Event::SlowConsumer {
                name: e.event.clone(),
                dropped,
            });
        }
    }

    fn deliver_publication(&mut self, channel: &str, data: Option<&RawValue>) {
        // Delivered in any state, including pending (PROTOCOL.md 6.5).
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let mut slow = Vec::new();
        for c in entry.consumers.iter_mut() {
            let m = Message {
                channel: channel.to_owned(),
                data: data.map(RawValue::to_owned),
            };
            if c.tx.try_send(m).is_err() {
                c.dropped += 1;
                slow.push(c.dropped);
            }
        }
        for dropped in slow {
            tracing::warn!(channel = %channel, dropped, "slow subscription consumer: message dropped");
            self.emit(Event::SlowConsumer {
                name: channel.to_owned(),
                dropped,
            });
        }
    }

    // ---------------------------------------------------------------- timers

    fn on_timer(&mut self) {
        let now = Instant::now();
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.on_ack_timeout(key);
        }
        if self.dial_deadline.is_some_and(|t| t <= now) {
            self.dial_deadline = None;
            self.dial = None;
            self.close_connection(CloseCode::CONNECT_TIMEOUT, None, false);
        }
        if self.ping_deadline.is_some_and(|t| t <= now) {
            self.ping_deadline = None;
            tracing::debug!("server ping timed out");
            self.close_connection(CloseCode::PING_TIMEOUT, None, true);
        }
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            self.start_connect();
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            if self.is_open() && self.reauth.is_none() && self.opts.token_provider.is_some() {
                self.reauth = Some(Reauth {
                    hold_queue: false,
                    hold_subscriptions: false,
                });
                self.call_provider(ReauthReason::Expiring);
            }
        }
        if self.batch_stop_at.is_some_and(|t| t <= now) {
            self.batch_stop_at = None;
            if !self.batching_explicit {
                self.stop_batching();
            }
        }
        if self.batch_flush_at.is_some_and(|t| t <= now) {
            self.flush_batch();
            self.batch_flush_at = if self.batching {
                Some(now + self.opts.batch_interval)
            } else {
                None
            };
        }
    }

    fn on_ack_timeout(&mut self, key: TimerKey) {
        match key {
            TimerKey::Queued(qid) => {
                if let Some(pos) = self.queue.iter().position(|q| q.qid == qid)
                    && let Some(q) = self.queue.remove(pos)
                {
                    let after = match &q.kind {
                        QueuedKind::Invoke { timeout, .. } => *timeout,
                        _ => self.opts.ack_timeout,
                    };
                    // A queued transmit is silently dropped (PROTOCOL.md 7.1).
                    fail_kind(
                        q.kind,
                        InvokeError::Timeout {
                            event: q.event,
                            after,
                        },
                    );
                }
            }
            TimerKey::Sent(cid) => match self.pending.remove(&cid) {
                Some(Pending::Call {
                    event,
                    reply,
                    timeout,
                    ..
                }) => {
                    let _ = reply.send(Err(InvokeError::Timeout {
                        event,
                        after: timeout,
                    }));
                }
                Some(Pending::Handshake { .. }) => {
                    let err = local_error(
                        "TimeoutError",
                        "Event response for #handshake event timed out",
                    );
                    let reason = format!("{}: {}", err.name(), err.message());
                    self.emit(Event::Error(err.clone()));
                    self.last_handshake_error = Some(err);
                    self.close_connection(CloseCode::HANDSHAKE_FAILED, Some(reason), true);
                }
                Some(Pending::Authenticate { reply, reauth, .. }) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(InvokeError::Timeout {
                            event: ev::AUTHENTICATE.to_owned(),
                            after: self.opts.ack_timeout,
                        }));
                    }
                    if reauth {
                        self.emit(Event::ReauthenticationFailed {
                            error: "TimeoutError: Event response for #authenticate event timed out"
                                .to_owned(),
                        });
                        self.end_reauth(false);
                    }
                }
                Some(p @ Pending::Subscribe { .. }) => {
                    self.pending.insert(cid, p);
                }
                None => {}
            },
        }
    }

    // ---------------------------------------------------------------- channels

    fn subscribe(
        &mut self,
        channel: String,
        options: SubscribeOptions,
        consumer_id: u64,
        tx: crate::queue::Sender<Message>,
        reply: oneshot::Sender<watch::Receiver<crate::channel::ChannelStatus>>,
    ) {
        if self.terminated {
            let (stx, srx) = watch::channel(crate::channel::ChannelStatus {
                state: ChannelState::Unsubscribed,
                ended: Some(SubscribeError::Closed),
            });
            drop(stx);
            let _ = reply.send(srx);
            return;
        }
        let is_new = !self.channels.contains_key(&channel);
        let entry = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| ChannelEntry::new(options.clone()));
        if !is_new {
            // JS: only the options are replaced; no new request.
            entry.options = options;
        }
        entry.consumers.push(Consumer {
            id: consumer_id,
            tx,
            dropped: 0,
        });
        let _ = reply.send(entry.status.subscribe());
        if is_new {
            self.snapshot.send_modify(|s| {
                s.channels.insert(channel.clone(), ChannelState::Pending);
            });
            self.try_subscribe(&channel);
        }
    }

    fn holding_subscriptions(&self) -> bool {
        self.reauth.as_ref().is_some_and(|r| r.hold_subscriptions)
    }

    fn try_subscribe(&mut self, channel: &str) {
        let open = self.is_open();
        let authenticated = self.is_authenticated();
        let hold = self.holding_subscriptions() || self.preparing_subscriptions;
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let meets_auth = !entry.options.wait_for_auth || authenticated;
        if !open
            || hold
            || entry.pending_cid.is_some()
            || entry.awaiting_reauth.is_some()
            || !meets_auth
        {
            return;
        }
        let cid = self.cids.next_cid();
        entry.pending_cid = Some(cid);
        entry.sent_unauthenticated = !authenticated;
        let req = ev::SubscribeRequest {
            channel: self.opts.wire_channel(channel).into_owned(),
            wait_for_auth: entry.options.wait_for_auth,
            data: entry.options.data.clone(),
            options: serde_json::Map::new(),
        };
        let options = entry.options.wire_options();
        let p = EventPacket::invoke(ev::SUBSCRIBE, Some(req.to_raw()), cid);
        self.write_packet(p.encode(KeyOrder::Client));
        self.pending.insert(
            cid,
            Pending::Subscribe {
                channel: channel.to_owned(),
            },
        );
        self.emit(Event::SubscribeRequest {
            channel: channel.to_owned(),
            options,
        });
    }

    fn process_pending_subscriptions(&mut self) {
        self.preparing_subscriptions = false;
        let mut pending: Vec<(i64, usize, String)> = self
            .channels
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.state == ChannelState::Pending)
            .map(|(i, (n, e))| (e.options.priority, i, n.clone()))
            .collect();
        // Descending priority; equal priorities keep table (insertion) order.
        pending.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, name) in pending {
            self.try_subscribe(&name);
        }
    }

    fn on_subscribe_reply(&mut self, channel: String, cid: u64, r: ResponsePacket) {
        let authenticated = self.is_authenticated();
        let can_reauth = self.opts.token_provider.is_some() && !self.reauth_failed;
        let Some(entry) = self.channels.get_mut(&channel) else {
            return;
        };
        if entry.pending_cid != Some(cid) {
            return;
        }
        entry.pending_cid = None;
        let options = entry.options.wire_options();
        match r.error() {
            None => {
                entry.auth_retry_used = false;
                if entry.state != ChannelState::Subscribed {
                    entry.set_state(ChannelState::Subscribed);
                    self.snapshot.send_modify(|s| {
                        s.channels.insert(channel.clone(), ChannelState::Subscribed);
                    });
                    self.emit(Event::SubscribeStateChange {
                        channel: channel.clone(),
                        old: ChannelState::Pending,
                        new: ChannelState::Subscribed,
                    });
                    self.emit(Event::Subscribe { channel, options });
                }
            }
            Some(err) => {
                let auth_related = entry.sent_unauthenticated
                    || !authenticated
                    || err
                        .as_object()
                        .is_some_and(|o| o.name.is_auth_token_error());
                if auth_related && can_reauth && !entry.auth_retry_used {
                    tracing::info!(channel = %channel, error = %err, "subscription rejected while unauthenticated; retrying after re-authentication");
                    if authenticated && entry.sent_unauthenticated && self.reauth.is_none() {
                        // Re-authenticated since the request was sent: retry at once.
                        entry.auth_retry_used = true;
                        self.try_subscribe(&channel);
                        return;
                    }
                    entry.awaiting_reauth = Some(err);
                    if self.reauth.is_none() {
                        self.reauth = Some(Reauth {
                            hold_queue: false,
                            hold_subscriptions: true,
                        });
                        self.call_provider(ReauthReason::SubscribeRejected(channel));
                    } else if let Some(r) = self.reauth.as_mut() {
                        r.hold_subscriptions = true;
                    }
                    return;
                }
                let meets_auth = !entry.options.wait_for_auth || authenticated;
                if meets_auth {
                    self.fail_channel(&channel, err, options);
                }
            }
        }
    }

    /// Remove a channel after a final rejection (`subscribeFail`).
    fn fail_channel(
        &mut self,
        channel: &str,
        err: WireError,
        options: serde_json::Map<String, Value>,
    ) {
        if let Some(mut e) = self.channels.shift_remove(channel) {
            e.status.send_modify(|s| {
                s.state = ChannelState::Unsubscribed;
                s.ended = Some(SubscribeError::Rejected(err.clone()));
            });
            e.consumers.clear();
            self.snapshot.send_modify(|s| {
                s.channels.shift_remove(channel);
            });
            self.emit(Event::SubscribeFail {
                channel: channel.to_owned(),
                error: err,
                options,
            });
        }
    }

    /// Local unsubscribe (PROTOCOL.md 6.3) or kick-out (`send == false`).
    fn unsubscribe(&mut self, channel: &str, why: SubscribeError, send: bool) {
        let Some(mut entry) = self.channels.shift_remove(channel) else {
            return;
        };
        if let Some(cid) = entry.pending_cid.take() {
            self.pending.remove(&cid);
        }
        self.snapshot.send_modify(|s| {
            s.channels.shift_remove(channel);
        });
        let was_subscribed = entry.state == ChannelState::Subscribed;
        entry.status.send_modify(|s| {
            s.state = ChannelState::Unsubscribed;
            s.ended = Some(why);
        });
        entry.consumers.clear();
        if was_subscribed {
            self.emit(Event::SubscribeStateChange {
                channel: channel.to_owned(),
                old: ChannelState::Subscribed,
                new: ChannelState::Unsubscribed,
            });
            self.emit(Event::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
        if send && self.is_open() {
            let wire = self.opts.wire_channel(channel);
            let data = raw(serde_json::to_string(&*wire).unwrap_or_default());
            let p = EventPacket::transmit(ev::UNSUBSCRIBE, Some(data));
            self.write_packet(p.encode(KeyOrder::Client));
        }
    }

    // ---------------------------------------------------------------- auth

    fn change_to_authenticated(&mut self, token: String) {
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
            if !self.preparing_subscriptions {
                self.process_pending_subscriptions();
            }
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

    fn change_to_unauthenticated(&mut self) {
        let old_signed = self.signed_token.take();
        let old_claims = self.claims.take();
        self.refresh_at = None;
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

    fn on_authenticate_reply(
        &mut self,
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
                self.end_reauth(false);
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
            self.store_ops.push(StoreOp::Save(token));
        } else {
            self.change_to_unauthenticated();
            if !reauth {
                // JS saves the token even when the reply says unauthenticated.
                self.store_ops.push(StoreOp::Save(token));
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
            self.end_reauth(ok);
        } else {
            self.schedule_refresh();
        }
    }

    fn call_provider(&mut self, reason: ReauthReason) {
        let Some(provider) = self.opts.token_provider.clone() else {
            self.end_reauth(false);
            return;
        };
        tracing::info!(?reason, "calling the token provider");
        self.emit(Event::Reauthenticating {
            reason: reason.clone(),
        });
        self.hook_seq += 1;
        let request = TokenRequest {
            reason,
            current_token: self.signed_token.clone(),
        };
        let fut = provider.token(request);
        self.hook = Some((self.hook_seq, tokio::spawn(fut)));
    }

    fn on_hook_result(&mut self, seq: u64, r: Result<String, BoxError>) {
        if seq != self.hook_seq || self.reauth.is_none() {
            return;
        }
        match r {
            Ok(token) if self.is_open() => {
                let cid = self.cids.next_cid();
                let data = raw(serde_json::to_string(&token).unwrap_or_default());
                let p = EventPacket::invoke(ev::AUTHENTICATE, Some(data), cid);
                // Bypasses the (held) outbound queue: it must go before anything else.
                self.write_packet(p.encode(KeyOrder::Client));
                let deadline = Instant::now() + self.opts.ack_timeout;
                self.add_timer(deadline, TimerKey::Sent(cid));
                self.pending.insert(
                    cid,
                    Pending::Authenticate {
                        token,
                        reply: None,
                        deadline,
                        reauth: true,
                    },
                );
            }
            Ok(token) => {
                // Not connected any more: keep the token for the next handshake.
                self.store_ops.push(StoreOp::Save(token));
                self.reauth = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token provider failed");
                self.emit(Event::ReauthenticationFailed {
                    error: e.to_string(),
                });
                self.end_reauth(false);
            }
        }
    }

    /// The re-authentication finished: release held channels (retry those rejected for
    /// an auth reason once, or fail them), then subscriptions, then the queue.
    fn end_reauth(&mut self, success: bool) {
        self.reauth = None;
        if !success {
            self.reauth_failed = true;
        }
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, e)| e.awaiting_reauth.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let Some(entry) = self.channels.get_mut(&name) else {
                continue;
            };
            let err = entry.awaiting_reauth.take();
            if success {
                entry.auth_retry_used = true;
            } else if let Some(err) = err {
                let options = entry.options.wire_options();
                self.fail_channel(&name, err, options);
            }
        }
        if self.is_open() {
            if !self.preparing_subscriptions {
                self.process_pending_subscriptions();
            }
            self.flush_queue();
            self.schedule_refresh();
        }
    }

    /// While connected with a provider, call it `reauth_margin` before the token's `exp`.
    fn schedule_refresh(&mut self) {
        self.refresh_at = None;
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let wait = (exp - margin - now).max(0.0);
        tracing::debug!(wait_s = wait, "token refresh scheduled");
        self.refresh_at = Some(Instant::now() + Duration::from_secs_f64(wait));
    }
}

fn fail_kind(kind: QueuedKind, err: InvokeError) {
    match kind {
        QueuedKind::Transmit => {}
        QueuedKind::Invoke { reply, .. } => {
            let _ = reply.send(Err(err));
        }
        QueuedKind::Authenticate { reply, .. } => {
            let _ = reply.send(Err(err));
        }
    }
}
