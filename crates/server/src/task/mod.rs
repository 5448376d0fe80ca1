//! The task that owns one socket: reads frames, processes them strictly in order, runs
//! the heartbeat, handshake and token-expiry timers and executes commands from handles.
//!
//! Processing never awaits inline: work that needs to wait (middleware, a remote broker)
//! becomes a *step* future stored in the task; while it is pending the task keeps
//! serving timers, commands and reading ahead (bounded), but does not process the next
//! inbound message, which preserves per-socket ordering (docs/PROTOCOL.md 2.4, 7.2, 8.3).
//!
//! Where things are (all `impl SocketTask` blocks):
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the task's state, its start ([`spawn`]) and main loop |
//! | `pump.rs` | the I/O pump (outbox -> WebSocket, reads) and I/O events: heartbeat, overflow |
//! | `inbound.rs` | processing: the inbound queue, `inboundRaw` middleware, decoding, routing by event |
//! | `step.rs` | steps and middleware gating ([`step::gate`]), resuming after a step |
//! | `handshake.rs` | `#handshake` |
//! | `auth.rs` | `#authenticate`, `#removeAuthToken`, token expiry, auth events |
//! | `pubsub.rs` | `#publish`, `#subscribe`, `#unsubscribe`, publishOut middleware |
//! | `history.rs` | subscribing to a channel with history: replay, reply, what arrived meanwhile |
//! | `rpc.rs` | invokes and transmitted events: middleware, then handlers or streams |
//! | `commands.rs` | commands from [`Socket`] handles (transmit, invoke, kick out, ...) |
//! | `output.rs` | sending packets, batching, events and warnings |
//! | `close.rs` | closing and the end of the task |
//! | `timer.rs` | the task's timers |

mod auth;
mod close;
mod commands;
mod handshake;
mod history;
mod inbound;
mod output;
mod pubsub;
mod pump;
mod rpc;
mod step;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use socketcluster_rs_protocol::codec::BatchIndex;
use socketcluster_rs_protocol::{CidAllocator, ProtocolVersion, RawValue};
use tokio::sync::oneshot;
use tokio::time::{Instant, Interval, Sleep};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::InvokeError;
use crate::events::ServerEvent;
use crate::limits::Bucket;
use crate::request::StoredRequest;
use crate::socket::{AuthInfo, CloseInfo, Socket, SocketShared, SocketState};
use crate::state::ServerState;
use crate::ws::ServerWs;

use inbound::Inbound;
use pump::{IoEvent, IoPoll, WriteState};
use step::{StepFuture, StepPoll};
use timer::{Timer, tick_opt};

type Ws = ServerWs;
/// Where the answer to a server -> client invoke goes.
type InvokeReply = oneshot::Sender<Result<Option<Box<RawValue>>, InvokeError>>;

/// A batch whose elements are decoded one at a time, as they are processed: memory is
/// the frame text plus 16 bytes per element (at most `Limits::max_batch_items`).
struct PendingBatch {
    text: Utf8Bytes,
    index: BatchIndex,
    next: usize,
}

/// The inbound rate limits of one socket.
struct RateState {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Since when every message has been over budget (the socket is throttled).
    throttled_since: Option<Instant>,
}

impl RateState {
    fn new(limits: &crate::limits::Limits) -> Option<Box<RateState>> {
        if limits.inbound_rate.is_none() && limits.inbound_byte_rate.is_none() {
            return None;
        }
        Some(Box::new(RateState {
            messages: limits.inbound_rate.map(Bucket::new),
            bytes: limits.inbound_byte_rate.map(Bucket::new),
            throttled_since: None,
        }))
    }
}

/// How the socket is closing.
struct Closing {
    code: u16,
    reason: String,
    /// We queued a close frame and wait for the peer's answer.
    sent_frame: bool,
    /// The peer sent a close frame (keep reading so the reply is flushed).
    by_peer: bool,
}

/// Start the task of a freshly upgraded WebSocket (the socket is connecting until its
/// `#handshake` completes).
pub(crate) fn spawn(
    state: &Arc<ServerState>,
    ws: ServerWs,
    request: StoredRequest,
    remote_ip: Option<IpAddr>,
) {
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
    let mut task = SocketTask::new(state.clone(), shared.clone(), ws);
    task.remote_ip = remote_ip;
    state.emit(ServerEvent::Handshake {
        socket: Socket { shared },
    });
    tokio::spawn(task.run());
}

/// One socket's task: owns its WebSocket and all of its state (see the module docs).
struct SocketTask {
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
    /// Payload bytes in `inbox`: reading pauses at `max_payload`, so that read-ahead
    /// holds at most about twice the max payload, however small the message count.
    inbox_bytes: usize,
    /// The batch being processed, one element at a time (boxed: most sockets never
    /// have one).
    batch: Option<Box<PendingBatch>>,
    step: Option<StepFuture>,
    closing: Option<Closing>,
    version: ProtocolVersion,
    ping_enabled: bool,
    /// One timer for the heartbeat: fires at the earlier of `next_ping` and
    /// `pong_deadline`. Both only move later, so the timer is re-armed only when it
    /// fires (not per message).
    heartbeat: Pin<Box<Sleep>>,
    next_ping: Instant,
    /// Last message from the peer + ping timeout (docs/PROTOCOL.md 8.3).
    pong_deadline: Instant,
    /// Armed until the `#handshake` arrives.
    handshake_deadline: Timer,
    /// The token's expiry (when it has one and the expiry timer is on).
    expiry: Timer,
    /// Inbound rate limits, when configured (boxed: off by default).
    rate: Option<Box<RateState>>,
    /// The remote address counted by the per-IP limits, released when the task ends.
    remote_ip: Option<IpAddr>,
    /// Reading pauses while armed (inbound rate limit).
    throttle: Timer,
    /// The periodic batch flush (docs/PROTOCOL.md 8.5), while it runs.
    batch_tick: Option<Interval>,
    /// The `batch_on_handshake` window, while it is open.
    batch_window: Timer,
}

impl SocketTask {
    fn new(server: Arc<ServerState>, shared: Arc<SocketShared>, ws: Ws) -> Self {
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
            inbox_bytes: 0,
            batch: None,
            step: None,
            closing: None,
            version: cfg.protocol_version,
            ping_enabled: !cfg.ping_timeout_disabled,
            heartbeat: Box::pin(tokio::time::sleep_until(next_ping.min(pong_deadline))),
            next_ping,
            pong_deadline,
            handshake_deadline: Timer::armed_at(now + cfg.handshake_timeout),
            expiry: Timer::default(),
            rate: RateState::new(&cfg.limits),
            remote_ip: None,
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
    fn run(mut self) -> impl Future<Output = ()> + Send + 'static {
        async move {
            loop {
                self.drain();
                if self.closing.is_some() {
                    break;
                }
                let limits = &self.server.config.limits;
                let can_read = self.inbox.len() < limits.max_inbound_queue
                    && self.inbox_bytes < limits.max_payload
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
                        stats: &self.server.stats,
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
}

impl Drop for SocketTask {
    fn drop(&mut self) {
        if let Some(ip) = self.remote_ip.take() {
            self.server.per_ip.release(ip);
        }
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
