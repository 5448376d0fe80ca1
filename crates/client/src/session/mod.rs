//! The client's session rules as a sans-IO state machine (the shape of rumqttc's
//! `state.rs`): no socket, no clock, no runtime.
//!
//! Inputs go in as method calls, each with the current instant: a user command
//! ([`Session::on_command`]), the WebSocket opened or failed to open
//! ([`Session::on_socket_open`], [`Session::on_dial_failed`]), the stored token was read
//! ([`Session::on_token_loaded`]), a text or binary message arrived
//! ([`Session::on_text`], [`Session::on_binary`]), the socket closed
//! ([`Session::on_socket_closed`]), the token provider answered
//! ([`Session::on_provider_result`]), a token-store write finished
//! ([`Session::on_token_saved`], [`Session::on_token_removed`]), or a deadline passed
//! ([`Session::on_timer`]).
//!
//! Outputs come out as data: frames to write in order ([`Outputs::frames`]), actions for
//! the driver ([`Action`]: dial, read or write the token store, call or cancel the token
//! provider, close the socket) and the next deadline to arm ([`Session::poll_timeout`]).
//! Events go to the event stream, publications to the subscription queues and answers to
//! the callers' oneshot channels directly: those are in-memory hand-offs, not I/O.
//!
//! The driver is `crate::connection`: it only moves bytes, timers and futures.
//!
//! Where things are decided:
//! - `handshake.rs`: connecting, the handshake, what happens when a connection opens;
//! - `channels.rs`: subscribing, **when the client (re)subscribes**, rejections;
//! - `auth.rs`: the auth state, `authenticate`, the server's auth tokens;
//! - `recovery.rs`: stream positions on channels with history, duplicates, jumps,
//!   recovery outcomes;
//! - `reauth.rs`: re-authentication through the token provider: its phase ([`Reauth`]),
//!   what it holds back, retries with backoff, the refresh before `exp`;
//! - `outbound.rs`: the outbound queue and batching;
//! - `inbound.rs`: incoming frames, responses and server events;
//! - `close.rs`: disconnecting, the close sequence, the reconnect decision;
//! - `timers.rs`: ack timeouts, ping, dial, reconnect, refresh and batch deadlines.

mod auth;
mod channels;
mod close;
mod handshake;
mod inbound;
mod outbound;
mod pending;
mod reauth;
mod recovery;
mod timers;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value;
use serde_json::value::RawValue;
use socketcluster_rs_protocol::{Backoff, CidAllocator, ErrorObject, WireError};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::auth::{AuthState, TokenRequest};
use crate::channel::ChannelState;
use crate::command::{Command, WeakCommandSender};
use crate::error::{ConnectError, SubscribeError};
use crate::events::{ConnectStatus, Event};
use crate::options::ClientOptions;
use crate::rpc::Handler;

pub(crate) use channels::ChannelEntry;
pub(crate) use reauth::{Hold, Reauth};

use outbound::Outbound;
use pending::{CidHash, Pending};
use timers::Timers;

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

impl Snapshot {
    /// The snapshot of a client that has not started: connecting at once with
    /// `auto_connect` (visible right after creation, like the JS client: CL-1).
    pub(crate) fn initial(auto_connect: bool) -> Snapshot {
        Snapshot {
            state: if auto_connect {
                ConnectionState::Connecting
            } else {
                ConnectionState::Closed
            },
            status: None,
            auth_state: AuthState::Unauthenticated,
            signed_token: None,
            claims: None,
            channels: IndexMap::new(),
            pending_reconnect: None,
            connect_attempts: 0,
            terminated: false,
        }
    }
}

/// Where the connection stands.
pub(crate) enum Phase {
    /// No connection (a reconnect may be scheduled).
    Closed,
    /// The WebSocket is being opened.
    Dialing,
    /// The WebSocket is open; `#handshake` is sent and its reply awaited.
    Handshaking,
    /// The handshake completed.
    Open(OpenConnection),
}

/// The rules of one open connection; they start afresh with every handshake.
pub(crate) struct OpenConnection {
    /// `#subscribe` requests may be sent: set by `process_pending_subscriptions`, at once
    /// with `auto_subscribe_on_connect` (JS), else when the application calls it.
    subscriptions_released: bool,
    /// The (re-)authentication phase.
    reauth: Reauth,
}

/// How the driver closes the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CloseFrame {
    /// Send no close frame (the peer closed, or the socket failed).
    None,
    /// A close frame without a status (codes that may not be sent).
    Empty,
    /// A close frame with a code and a reason.
    Code(u16, String),
}

/// Something the driver must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open a WebSocket; report with `on_socket_open` or `on_dial_failed`.
    Dial,
    /// Read the token store; report with `on_token_loaded`.
    LoadToken,
    /// Drop the WebSocket (or the dial in progress): write `leftover`, then `frame`, then
    /// close it, in the background.
    CloseSocket {
        leftover: Vec<String>,
        frame: CloseFrame,
    },
    /// Store a token; report with `on_token_saved`.
    SaveToken(String),
    /// Delete the stored token; report with `on_token_removed`.
    RemoveToken { emit: bool },
    /// Call the token provider; report with `on_provider_result(seq, ..)`.
    CallProvider { seq: u64, request: TokenRequest },
    /// Abandon the provider call in progress.
    CancelProvider,
}

/// What the state machine asks of the driver.
#[derive(Default)]
pub(crate) struct Outputs {
    /// Frames to write, in order.
    pub(crate) frames: Vec<String>,
    /// Actions, in order.
    pub(crate) actions: VecDeque<Action>,
}

/// The session state machine. See the module docs.
pub(crate) struct Session {
    opts: Arc<ClientOptions>,
    cmd: WeakCommandSender,
    events: broadcast::Sender<Event>,
    snapshot: watch::Sender<Snapshot>,
    out: Outputs,

    phase: Phase,
    /// Incremented for every connection attempt (answers to server invokes of an older
    /// connection are dropped).
    generation: u64,
    cids: CidAllocator,
    pending: HashMap<u64, Pending, CidHash>,
    outbound: Outbound,
    timers: Timers,

    ping_timeout: Duration,
    backoff: Backoff,
    v1_disconnect_reason: Option<String>,

    channels: IndexMap<String, ChannelEntry>,

    auth_state: AuthState,
    signed_token: Option<String>,
    claims: Option<Value>,
    /// The token-store changes asked for and not finished yet, in order: `Some(token)` a
    /// save, `None` a removal.
    store_pending: VecDeque<Option<String>>,
    /// The store failed to record the last change: what the next handshake sends instead
    /// of what the store holds (`Some(None)`: no token; the store still has the one the
    /// client gave up). `None`: the store is up to date.
    store_fallback: Option<Option<String>>,
    provider_seq: u64,
    /// Consecutive failed re-authentication attempts and the delay formula.
    reauth_backoff: Backoff,
    /// Seconds since the Unix epoch (the token's `exp` is wall-clock time).
    unix_now: fn() -> f64,
    /// The value drawn for the reconnect delay's randomness, in `[0, 1)`.
    unit_random: fn() -> f64,

    handlers: HashMap<String, Vec<(u64, Handler, u64)>>,
    connect_waiters: Vec<oneshot::Sender<Result<(), ConnectError>>>,
    close_waiters: Vec<oneshot::Sender<()>>,
    last_handshake_error: Option<WireError>,
    last_dial_error: Option<String>,
    terminated: bool,
}

fn system_unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn raw(text: impl Into<String>) -> Box<RawValue> {
    RawValue::from_string(text.into())
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is valid JSON"))
}

pub(crate) fn local_error(name: &str, message: impl Into<String>) -> WireError {
    WireError::Object(ErrorObject::new(name, message))
}

impl Session {
    pub(crate) fn new(
        opts: Arc<ClientOptions>,
        cmd: WeakCommandSender,
        events: broadcast::Sender<Event>,
        snapshot: watch::Sender<Snapshot>,
    ) -> Session {
        let backoff = Backoff::new(opts.reconnect.clone());
        let ping_timeout = opts.connect_timeout;
        let reauth_backoff = Backoff::new(opts.reauth_retry.clone());
        Session {
            opts,
            cmd,
            events,
            snapshot,
            out: Outputs::default(),
            phase: Phase::Closed,
            generation: 0,
            cids: CidAllocator::new(),
            pending: HashMap::default(),
            outbound: Outbound::default(),
            timers: Timers::default(),
            ping_timeout,
            backoff,
            v1_disconnect_reason: None,
            channels: IndexMap::new(),
            auth_state: AuthState::Unauthenticated,
            signed_token: None,
            claims: None,
            store_pending: VecDeque::new(),
            store_fallback: None,
            provider_seq: 0,
            reauth_backoff,
            unix_now: system_unix_now,
            unit_random: rand::random::<f64>,
            handlers: HashMap::new(),
            connect_waiters: Vec::new(),
            close_waiters: Vec::new(),
            last_handshake_error: None,
            last_dial_error: None,
            terminated: false,
        }
    }

    // ---------------------------------------------------------------- driver interface

    /// The client was created: connect at once with `auto_connect`.
    pub(crate) fn start(&mut self, now: Instant) {
        if self.opts.auto_connect {
            self.start_connect(now);
        }
    }

    /// The outputs produced so far; the driver takes them after every input.
    pub(crate) fn outputs(&mut self) -> &mut Outputs {
        &mut self.out
    }

    /// The earliest deadline the driver must wake the machine for ([`Session::on_timer`]).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Whether the client was closed for good (the driver stops).
    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Who waits for the end of the task (`Client::close`).
    pub(crate) fn take_close_waiters(&mut self) -> Vec<oneshot::Sender<()>> {
        std::mem::take(&mut self.close_waiters)
    }

    /// A user command.
    pub(crate) fn on_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Connect { done } => {
                if let Some(done) = done {
                    if self.is_open() {
                        let _ = done.send(Ok(()));
                    } else {
                        self.connect_waiters.push(done);
                    }
                }
                self.start_connect(now);
            }
            Command::Disconnect { code, reason } => self.disconnect(now, code, reason),
            Command::Reconnect { code, reason } => {
                self.disconnect(now, code, reason);
                self.start_connect(now);
            }
            Command::Close { done } => {
                self.close_waiters.push(done);
                self.terminate(now);
            }
            Command::Transmit { event, data } => self.transmit(now, event, data),
            Command::Invoke {
                event,
                data,
                timeout,
                reply,
            } => self.invoke(now, event, data, timeout, reply),
            Command::Authenticate { token, reply } => self.authenticate(now, token, reply),
            Command::Deauthenticate { done } => {
                self.deauthenticate(now);
                let _ = done.send(());
            }
            Command::Subscribe {
                channel,
                options,
                consumer_id,
                tx,
                reply,
            } => self.subscribe(channel, options, consumer_id, tx, reply),
            Command::DropConsumer { channel, id } => self.drop_consumer(&channel, id),
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
            } => self.respond(generation, cid, response),
            Command::StartBatching => {
                self.outbound.batching_explicit = true;
                self.start_batching(now);
            }
            Command::StopBatching => {
                self.outbound.batching_explicit = false;
                self.stop_batching();
            }
            Command::CancelBatching => {
                self.outbound.batching_explicit = false;
                self.outbound.batch.clear();
                self.stop_batching();
            }
        }
    }

    // ---------------------------------------------------------------- shared helpers

    fn emit(&self, e: Event) {
        tracing::trace!(event = e.name(), "emit");
        let _ = self.events.send(e);
    }

    fn act(&mut self, a: Action) {
        match &a {
            Action::SaveToken(t) => self.store_pending.push_back(Some(t.clone())),
            Action::RemoveToken { .. } => self.store_pending.push_back(None),
            _ => {}
        }
        self.out.actions.push_back(a);
    }

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// The rules of the open connection, if it is open.
    fn open_mut(&mut self) -> Option<&mut OpenConnection> {
        match &mut self.phase {
            Phase::Open(o) => Some(o),
            _ => None,
        }
    }

    fn has_socket(&self) -> bool {
        matches!(self.phase, Phase::Handshaking | Phase::Open(_))
    }

    fn is_authenticated(&self) -> bool {
        self.auth_state == AuthState::Authenticated
    }

    fn set_channel_snapshot(&self, channel: &str, state: Option<ChannelState>) {
        self.snapshot.send_modify(|s| match state {
            Some(st) => {
                s.channels.insert(channel.to_owned(), st);
            }
            None => {
                s.channels.shift_remove(channel);
            }
        });
    }

    fn ping_reset(&mut self, now: Instant) {
        self.timers.ping = if self.opts.ping_timeout_disabled {
            None
        } else {
            Some(now + self.ping_timeout)
        };
    }
}
