//! The server-side socket: a cheap `Clone` handle ([`Socket`]) to one connection whose
//! state is owned by its own task (see `task.rs`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use socketcluster_protocol::RawValue;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{Claims, DeauthenticateOptions, SignOptions};
use crate::channel::Publication;
use crate::error::{AuthTokenError, InvokeError, KickOutError, SendError};
use crate::request::{HandshakeRequest, StoredRequest};
use crate::server::ServerInner;

/// Connection state of a socket (PROTOCOL.md 8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketState {
    /// WebSocket accepted, `#handshake` not completed.
    Connecting,
    /// Handshake completed.
    Open,
    /// Closed.
    Closed,
}

/// How a socket was closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code (1006 when the connection dropped without a close frame).
    pub code: u16,
    /// Reason: the close frame's reason, or the protocol table text for known codes.
    pub reason: String,
}

/// Fixed per-frame accounting overhead for the outbound byte limit.
pub(crate) const FRAME_OVERHEAD: usize = 64;

pub(crate) enum Out {
    Text(Utf8Bytes),
    Close(u16, String),
}

/// Give an emptied queue's capacity back (an idle socket keeps no queue memory).
pub(crate) fn free_if_empty<T>(q: &mut VecDeque<T>) {
    if q.is_empty() && q.capacity() > 0 {
        *q = VecDeque::new();
    }
}

/// The queues behind one lock (see [`Outbox`]).
#[derive(Default)]
struct Queues {
    /// Frames for the socket task to write, in order.
    out: VecDeque<Out>,
    /// Commands from handles, in order.
    cmds: VecDeque<Cmd>,
    /// Buffered packet texts while batching (their queue space is already reserved).
    batch: Vec<Utf8Bytes>,
    /// The socket task's waker, registered when it found nothing to do.
    waker: Option<Waker>,
    /// The socket task's waker while it waits for the socket to become writable: woken
    /// only by commands and the overflow alarm (new frames cannot be written anyway).
    alarm: Option<Waker>,
    /// The task no longer takes commands (it is closing).
    cmds_closed: bool,
    /// The task has ended: nothing is accepted.
    closed: bool,
}

/// The socket task's mailbox: outbound frames (bounded in bytes) and commands from
/// handles, behind one uncontended lock.
///
/// Unlike a channel it holds no memory while empty (an idle socket pays for a lock, a
/// few pointers and counters, not for pre-allocated channel blocks), and the task
/// takes everything queued in one lock acquisition.
pub(crate) struct Outbox {
    q: Mutex<Queues>,
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// Packets are being buffered into `batch` (PROTOCOL.md 8.5; JS `isBufferingBatch`).
    buffering: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Outbox {
        Outbox {
            q: Mutex::new(Queues::default()),
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            buffering: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake the socket task (outside the lock).
    fn wake(mut q: std::sync::MutexGuard<'_, Queues>) {
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Wake the socket task also while it waits for the socket to become writable
    /// (commands and the overflow alarm, see [`Queues::alarm`]).
    fn wake_urgent(mut q: std::sync::MutexGuard<'_, Queues>) {
        let alarm = q.alarm.take();
        Self::wake(q);
        if let Some(w) = alarm {
            w.wake();
        }
    }

    /// Reserve queue space for `cost` bytes; trips the overflow alarm (wakes the task)
    /// when the limit is exceeded (one frame is always accepted into an empty queue).
    pub(crate) fn reserve(&self, cost: usize) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let prev = self.queued.fetch_add(cost, Ordering::Relaxed);
        if prev > 0 && prev + cost > self.limit {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                Self::wake_urgent(self.lock());
            }
            return false;
        }
        true
    }

    pub(crate) fn release(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    /// Append a frame under the lock; false once the task has ended.
    fn enqueue(&self, mut q: std::sync::MutexGuard<'_, Queues>, out: Out) -> bool {
        if q.closed {
            return false;
        }
        q.out.push_back(out);
        Self::wake(q);
        true
    }

    /// Queue an encoded packet: appended to the batch while buffering, else sent as
    /// its own frame.
    pub(crate) fn push(&self, text: Utf8Bytes) -> bool {
        if !self.buffering.load(Ordering::Acquire) {
            return self.push_unbatched(text);
        }
        let cost = text.len() + FRAME_OVERHEAD;
        if !self.reserve(cost) {
            return false;
        }
        let mut q = self.lock();
        if self.buffering.load(Ordering::Acquire) {
            q.batch.push(text);
            return true;
        }
        // Buffering stopped meanwhile: send directly, still under the lock so the
        // frame follows the flushed batch.
        if !self.enqueue(q, Out::Text(text)) {
            self.release(cost);
            return false;
        }
        true
    }

    /// Queue a text frame that is never batched (pings, the handshake reply).
    pub(crate) fn push_unbatched(&self, text: Utf8Bytes) -> bool {
        let cost = text.len() + FRAME_OVERHEAD;
        if !self.reserve(cost) {
            return false;
        }
        if !self.enqueue(self.lock(), Out::Text(text)) {
            self.release(cost);
            return false;
        }
        true
    }

    /// Queue a close frame (not subject to the limit). Buffered packets are flushed
    /// first (the JS server discards them; see the crate docs).
    pub(crate) fn push_close(&self, code: u16, reason: &str) {
        self.flush_batch(false);
        self.enqueue(self.lock(), Out::Close(code, reason.to_owned()));
    }

    /// Queue a command for the socket task; false when the task no longer takes any.
    pub(crate) fn push_cmd(&self, cmd: Cmd) -> bool {
        let mut q = self.lock();
        if q.cmds_closed {
            return false;
        }
        q.cmds.push_back(cmd);
        Self::wake_urgent(q);
        true
    }

    /// Move everything queued into the task's own queues in one lock acquisition.
    /// When nothing was queued, registers the task's waker and returns false.
    pub(crate) fn take(
        &self,
        cx: &Context<'_>,
        out: &mut VecDeque<Out>,
        cmds: &mut VecDeque<Cmd>,
    ) -> bool {
        let mut q = self.lock();
        if q.out.is_empty() && q.cmds.is_empty() {
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            return false;
        }
        if out.is_empty() && out.capacity() == 0 {
            // The usual small burst: the queue moves to the task, the mailbox keeps no
            // memory (the next push allocates).
            *out = std::mem::take(&mut q.out);
        } else if out.is_empty() {
            // A busy socket: swapping keeps both deques' capacity in use, no
            // allocation in steady state (freed when idle, see `trim`).
            std::mem::swap(out, &mut q.out);
        } else {
            out.append(&mut q.out);
        }
        if !q.cmds.is_empty() {
            cmds.append(&mut q.cmds);
        }
        true
    }

    /// While the socket is not writable: take queued commands, or register the task's
    /// waker for commands and the overflow alarm only (see [`Queues::alarm`]).
    pub(crate) fn take_cmds_or_register(&self, cx: &Context<'_>, cmds: &mut VecDeque<Cmd>) {
        let mut q = self.lock();
        if !q.cmds.is_empty() {
            cmds.append(&mut q.cmds);
        } else if !q.alarm.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.alarm = Some(cx.waker().clone());
        }
    }

    /// Free the queue's spare capacity when it is empty (an idle socket keeps none).
    pub(crate) fn trim(&self) {
        let mut q = self.lock();
        free_if_empty(&mut q.out);
        free_if_empty(&mut q.cmds);
    }

    /// The task stops taking commands: queued ones are dropped (their callers see the
    /// socket closed) and new ones refused.
    pub(crate) fn close_cmds(&self) {
        let mut q = self.lock();
        q.cmds_closed = true;
        let cmds = std::mem::take(&mut q.cmds);
        drop(q);
        drop(cmds);
    }

    /// The task has ended: everything queued is dropped and nothing more accepted.
    pub(crate) fn shut(&self) {
        let mut q = self.lock();
        q.cmds_closed = true;
        q.closed = true;
        let out = std::mem::take(&mut q.out);
        let cmds = std::mem::take(&mut q.cmds);
        let batch = std::mem::take(&mut q.batch);
        q.waker = None;
        q.alarm = None;
        drop(q);
        drop((out, cmds, batch));
    }

    /// Start buffering packets (JS `startBatch`). Idempotent.
    pub(crate) fn start_buffering(&self) {
        let _q = self.lock();
        self.buffering.store(true, Ordering::Release);
    }

    /// Whether packets are currently buffered.
    pub(crate) fn is_buffering(&self) -> bool {
        self.buffering.load(Ordering::Acquire)
    }

    /// Send the buffered packets as one JSON array frame (nothing when empty) and keep
    /// buffering or stop (JS `flushBatch`).
    pub(crate) fn flush_batch(&self, keep_buffering: bool) {
        let mut q = self.lock();
        if !keep_buffering {
            self.buffering.store(false, Ordering::Release);
        }
        let items = std::mem::take(&mut q.batch);
        if items.is_empty() {
            return;
        }
        let reserved: usize = items.iter().map(|t| t.len() + FRAME_OVERHEAD).sum();
        let frame = socketcluster_protocol::codec::encode_batch(&items);
        // Trade the items' reservations for the frame's (never refused: the content
        // was already admitted).
        let cost = frame.len() + FRAME_OVERHEAD;
        if cost > reserved {
            self.queued.fetch_add(cost - reserved, Ordering::Relaxed);
        } else {
            self.release(reserved - cost);
        }
        if !self.enqueue(q, Out::Text(Utf8Bytes::from(frame))) {
            self.release(cost);
        }
    }

    /// Drop the buffered packets and stop buffering (JS `cancelBatch`).
    pub(crate) fn cancel_batch(&self) {
        let mut q = self.lock();
        let dropped: usize = q.batch.iter().map(|t| t.len() + FRAME_OVERHEAD).sum();
        q.batch = Vec::new();
        self.release(dropped);
        self.buffering.store(false, Ordering::Release);
    }

    pub(crate) fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Bytes currently queued (including per-frame overhead).
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Auth state of a socket.
#[derive(Clone, Debug)]
pub(crate) struct AuthInfo {
    pub(crate) signed: Arc<str>,
    pub(crate) claims: Arc<Claims>,
}

impl AuthInfo {
    pub(crate) fn exp(&self) -> Option<f64> {
        self.claims.get("exp").and_then(Value::as_f64)
    }
}

/// What other tasks may read about a socket (kept up to date by its task).
pub(crate) struct View {
    pub(crate) state: SocketState,
    pub(crate) auth: Option<AuthInfo>,
    /// Subscribed channels (names shared with the channel hub) -> subscription sequence
    /// number, for listing them in subscription order.
    pub(crate) channels: HashMap<Arc<str>, u64>,
    pub(crate) channel_seq: u64,
    /// This socket's own procedure and receiver streams ([`Socket::procedure`],
    /// [`Socket::receiver`]); none for most sockets.
    pub(crate) streams: Option<Box<SocketStreams>>,
}

/// Per-socket streams, by name (a few at most: a `Vec` beats a map).
#[derive(Default)]
pub(crate) struct SocketStreams {
    procedures: Vec<(String, mpsc::Sender<crate::rpc::Request>)>,
    receivers: Vec<(String, mpsc::Sender<crate::rpc::ReceivedEvent>)>,
    /// JS `message` listeners: every inbound message.
    messages: Vec<mpsc::Sender<String>>,
    /// JS `raw` listeners: messages that are not SocketCluster packets.
    raw: Vec<mpsc::Sender<String>>,
}

/// Which message listeners ([`SocketShared::offer_message`]).
#[derive(Clone, Copy)]
pub(crate) enum MessageKind {
    All,
    Raw,
}

/// Commands from handles to the socket task.
pub(crate) enum Cmd {
    Transmit {
        event: String,
        data: Option<Box<RawValue>>,
    },
    Invoke {
        event: String,
        data: Option<Box<RawValue>>,
        reply: oneshot::Sender<Result<Option<Box<RawValue>>, InvokeError>>,
    },
    SetAuthToken {
        signed: String,
        claims: Arc<Claims>,
        ack: Option<oneshot::Sender<Result<Option<Box<RawValue>>, InvokeError>>>,
        reply: oneshot::Sender<Result<(), AuthTokenError>>,
    },
    SignFailed {
        message: String,
    },
    Deauthenticate {
        notify: bool,
        /// Invoke `#removeAuthToken` and report the client's acknowledgement here.
        ack: Option<oneshot::Sender<Result<Option<Box<RawValue>>, InvokeError>>>,
        reply: oneshot::Sender<()>,
    },
    /// Run (`true`) or stop the periodic batch flush timer.
    BatchTimer(bool),
    KickOut {
        channel: Option<String>,
        message: Option<Box<RawValue>>,
        reply: oneshot::Sender<Result<(), KickOutError>>,
    },
    Disconnect {
        code: u16,
        reason: String,
    },
    Terminate,
}

/// State shared between a socket's handles, its task and the channel registry.
pub(crate) struct SocketShared {
    pub(crate) key: u64,
    pub(crate) id: Arc<str>,
    pub(crate) request: StoredRequest,
    /// Outbound frames and commands for the socket task.
    pub(crate) outbox: Outbox,
    pub(crate) view: Mutex<View>,
    pub(crate) outbound_mw: OnceLock<mpsc::UnboundedSender<Arc<Publication>>>,
    /// Set once when the socket task ends; `closed_notify` wakes the waiters.
    pub(crate) closed: OnceLock<CloseInfo>,
    pub(crate) closed_notify: Notify,
    pub(crate) ack_timeout: Duration,
    pub(crate) server: std::sync::Weak<ServerInner>,
    /// The application started batching (JS `isBatching`): the handshake batching
    /// window does not stop it.
    pub(crate) app_batching: AtomicBool,
    /// [`View::streams`] was ever set: only then does dispatch take the view lock.
    pub(crate) has_streams: AtomicBool,
}

impl SocketShared {
    pub(crate) fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fan-out entry point: queue a publication for this socket.
    pub(crate) fn deliver_publication(&self, p: &Arc<Publication>) {
        if let Some(tx) = self.outbound_mw.get() {
            let cost = p.frame().len() + FRAME_OVERHEAD;
            if self.outbox.reserve(cost) && tx.send(p.clone()).is_err() {
                self.outbox.release(cost);
            }
        } else {
            self.outbox.push(p.frame_bytes());
        }
    }

    /// Record how the socket closed and wake everyone waiting for it (once).
    /// The first live stream of this socket that takes invokes of `procedure` (closed
    /// ones are pruned); `None` for sockets without streams, without a lock.
    pub(crate) fn procedure_stream(
        &self,
        procedure: &str,
    ) -> Option<mpsc::Sender<crate::rpc::Request>> {
        if !self.has_streams.load(Ordering::Acquire) {
            return None;
        }
        let mut v = self.view();
        let st = v.streams.as_mut()?;
        st.procedures.retain(|(_, tx)| !tx.is_closed());
        st.procedures
            .iter()
            .find(|(n, _)| n == procedure)
            .map(|(_, tx)| tx.clone())
    }

    /// Hand a transmitted event to every live stream of this socket for its name;
    /// false when there is none (then the server-wide handler takes it).
    pub(crate) fn offer_event(
        &self,
        socket: &Socket,
        event: &str,
        data: Option<&RawValue>,
    ) -> bool {
        if !self.has_streams.load(Ordering::Acquire) {
            return false;
        }
        let mut v = self.view();
        let Some(st) = v.streams.as_mut() else {
            return false;
        };
        st.receivers.retain(|(_, tx)| !tx.is_closed());
        let mut any = false;
        for (_, tx) in st.receivers.iter().filter(|(n, _)| n == event) {
            any = true;
            let ev = crate::rpc::ReceivedEvent::new(
                socket.clone(),
                event.to_owned(),
                data.map(RawValue::to_owned),
            );
            if tx.try_send(ev).is_err() {
                tracing::warn!(socket = %self.id, event, "socket receiver stream full; event dropped");
            }
        }
        any
    }

    /// Copy an inbound message to this socket's `message` or `raw` streams, if any.
    pub(crate) fn offer_message(&self, kind: MessageKind, message: &str) {
        if !self.has_streams.load(Ordering::Acquire) {
            return;
        }
        let mut v = self.view();
        let Some(st) = v.streams.as_mut() else {
            return;
        };
        let list = match kind {
            MessageKind::All => &mut st.messages,
            MessageKind::Raw => &mut st.raw,
        };
        list.retain(|tx| !tx.is_closed());
        for tx in list.iter() {
            if tx.try_send(message.to_owned()).is_err() {
                tracing::warn!(socket = %self.id, "socket message stream full; message dropped");
            }
        }
    }

    /// End this socket's streams (the socket task is over).
    pub(crate) fn end_streams(&self) {
        let streams = self.view().streams.take();
        drop(streams);
    }

    pub(crate) fn set_closed(&self, info: CloseInfo) {
        let _ = self.closed.set(info);
        self.closed_notify.notify_waiters();
    }

    /// Wait until the socket task has ended.
    pub(crate) async fn wait_closed(&self) -> &CloseInfo {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a `set_closed` in between is not missed.
            notified.as_mut().enable();
            if let Some(info) = self.closed.get() {
                return info;
            }
            notified.await;
        }
    }

    /// Queue an encoded response (RPC answers bypass the task).
    pub(crate) fn send_response(&self, text: String) {
        self.outbox.push(Utf8Bytes::from(text));
    }
}

/// A connected client as seen by the server. Cheap to clone; all methods are safe to
/// call from any task (they send commands to the socket's own task).
///
/// ```no_run
/// # async fn demo(socket: socketcluster_server::Socket) -> Result<(), Box<dyn std::error::Error>> {
/// use socketcluster_server::auth::SignOptions;
/// socket.transmit("news", &"hello")?;
/// let answer = socket.invoke("clientProc", &serde_json::json!({"x": 1})).await?;
/// socket.set_auth_token(&serde_json::json!({"username": "bob"}), SignOptions::default()).await?;
/// socket.kick_out(Some("private"), Some(&"bye")).await.ok();
/// socket.disconnect(4100, "server kicked");
/// # let _ = answer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Socket {
    pub(crate) shared: Arc<SocketShared>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.shared.id)
            .field("state", &self.state())
            .finish()
    }
}

impl PartialEq for Socket {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Socket {}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(data).map_err(|e| e.to_string())
}

impl Socket {
    /// This socket's invokes of `procedure` as a stream (JS `socket.procedure(name)`),
    /// answered with [`Request::respond`](crate::Request::respond) and friends. While
    /// the stream lives it takes the socket's invokes of that name before the
    /// server-wide handler ([`crate::Server::procedure`]); with several streams of one
    /// name the oldest live one gets each request (JS hands it to every consumer and
    /// keeps the first answer). The stream ends when the socket closes; a full stream
    /// ([`crate::rpc::STREAM_CAPACITY`]) drops requests, which then time out on the
    /// client.
    ///
    /// ```no_run
    /// # use futures_util::StreamExt;
    /// # async fn demo(socket: socketcluster_server::Socket) {
    /// let mut requests = socket.procedure("whoami");
    /// while let Some(req) = requests.next().await {
    ///     let id = req.socket().id().to_owned();
    ///     req.respond(&id);
    /// }
    /// # }
    /// ```
    pub fn procedure(&self, procedure: &str) -> crate::rpc::RequestStream {
        let (tx, rx) = mpsc::channel(crate::rpc::STREAM_CAPACITY);
        self.add_stream(|st| st.procedures.push((procedure.to_owned(), tx)));
        crate::rpc::RequestStream { rx }
    }

    /// Register a per-socket stream (dropped unregistered when the socket is closed).
    /// Checked under the view lock, which the ending task takes after setting `closed`:
    /// a stream is either ended by it or never registered.
    fn add_stream(&self, add: impl FnOnce(&mut SocketStreams)) {
        let mut v = self.shared.view();
        if self.shared.closed.get().is_none() {
            add(v.streams.get_or_insert_with(Default::default));
            self.shared.has_streams.store(true, Ordering::Release);
        }
    }

    /// Every message this socket receives, as text, after `inboundRaw` middleware (JS
    /// `socket.listener('message')`): packets, batches, pongs and raw messages alike.
    /// Copies are made only while such a stream lives. Ends when the socket closes; a
    /// full stream drops messages.
    pub fn messages(&self) -> crate::rpc::MessageStream {
        self.message_stream(MessageKind::All)
    }

    /// The messages of this socket that are not SocketCluster packets (JS
    /// `socket.listener('raw')`), as text; they are otherwise only counted
    /// ([`crate::StatsSnapshot`]). Raw items inside a batch are not included. Ends when
    /// the socket closes; a full stream drops messages.
    pub fn raw_messages(&self) -> crate::rpc::MessageStream {
        self.message_stream(MessageKind::Raw)
    }

    fn message_stream(&self, kind: MessageKind) -> crate::rpc::MessageStream {
        let (tx, rx) = mpsc::channel(crate::rpc::STREAM_CAPACITY);
        self.add_stream(|st| match kind {
            MessageKind::All => st.messages.push(tx),
            MessageKind::Raw => st.raw.push(tx),
        });
        crate::rpc::MessageStream { rx }
    }

    /// This socket's transmitted events of `event` as a stream (JS
    /// `socket.receiver(name)`). Every live stream of the name gets each event, and
    /// while one lives the server-wide handler ([`crate::Server::receiver`]) does not.
    /// Ends when the socket closes; a full stream drops events.
    pub fn receiver(&self, event: &str) -> crate::rpc::EventStream {
        let (tx, rx) = mpsc::channel(crate::rpc::STREAM_CAPACITY);
        self.add_stream(|st| st.receivers.push((event.to_owned(), tx)));
        crate::rpc::EventStream { rx }
    }

    /// The socket id (20 characters, like the JS server's).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Current state.
    pub fn state(&self) -> SocketState {
        self.shared.view().state
    }

    /// The HTTP upgrade request.
    pub fn request(&self) -> &HandshakeRequest {
        self.shared.request.get()
    }

    /// The peer address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.request.remote_addr()
    }

    /// Whether the socket is authenticated.
    pub fn is_authenticated(&self) -> bool {
        self.shared.view().auth.is_some()
    }

    /// The verified claims of the socket's token (JS `socket.authToken`).
    pub fn auth_token(&self) -> Option<Arc<Claims>> {
        self.shared.view().auth.as_ref().map(|a| a.claims.clone())
    }

    /// The signed token (JS `socket.signedAuthToken`).
    pub fn signed_auth_token(&self) -> Option<String> {
        self.shared
            .view()
            .auth
            .as_ref()
            .map(|a| a.signed.to_string())
    }

    /// Channels the socket is subscribed to, in subscription order.
    pub fn subscriptions(&self) -> Vec<String> {
        let view = self.shared.view();
        let mut v: Vec<(&Arc<str>, &u64)> = view.channels.iter().collect();
        v.sort_by_key(|(_, seq)| **seq);
        v.into_iter().map(|(c, _)| c.to_string()).collect()
    }

    /// Whether the socket is subscribed to a channel.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.shared.view().channels.contains_key(channel)
    }

    /// Bytes waiting in this socket's outbound queue.
    pub fn outbound_queued_bytes(&self) -> usize {
        self.shared.outbox.queued()
    }

    fn cmd(&self, cmd: Cmd) -> bool {
        self.shared.outbox.push_cmd(cmd)
    }

    /// Transmit an event to the client (`{"event":E,"data":D}`). Fails when the socket
    /// is not open.
    pub fn transmit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), SendError> {
        let raw = to_raw(data).map_err(SendError::Serialize)?;
        self.transmit_raw(event, Some(raw))
    }

    /// Transmit with raw JSON data (`None`: no `data` key).
    pub fn transmit_raw(&self, event: &str, data: Option<Box<RawValue>>) -> Result<(), SendError> {
        if self.state() != SocketState::Open
            || !self.cmd(Cmd::Transmit {
                event: event.to_owned(),
                data,
            })
        {
            return Err(SendError::NotOpen(format!("transmit {event}")));
        }
        Ok(())
    }

    /// Invoke a procedure on the client and wait for its answer (server `ackTimeout`).
    pub async fn invoke<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<Option<Box<RawValue>>, InvokeError> {
        let raw = to_raw(data).map_err(InvokeError::Serialize)?;
        self.invoke_raw(event, Some(raw), self.shared.ack_timeout)
            .await
    }

    /// Invoke with raw JSON data and an explicit timeout.
    pub async fn invoke_raw(
        &self,
        event: &str,
        data: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Option<Box<RawValue>>, InvokeError> {
        let (tx, rx) = oneshot::channel();
        if self.state() != SocketState::Open
            || !self.cmd(Cmd::Invoke {
                event: event.to_owned(),
                data,
                reply: tx,
            })
        {
            return Err(InvokeError::BadConnection(event.to_owned()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(InvokeError::BadConnection(event.to_owned())),
            Err(_) => Err(InvokeError::Timeout(event.to_owned())),
        }
    }

    /// Sign a token with `claims` and send it to the client (`#setAuthToken`); the socket
    /// becomes authenticated with it (JS `socket.setAuthToken`). Returns the signed token.
    /// If signing fails the socket is closed with 4002, like the JS server.
    pub async fn set_auth_token<T: Serialize + ?Sized>(
        &self,
        claims: &T,
        options: SignOptions,
    ) -> Result<String, AuthTokenError> {
        let Value::Object(claims) =
            serde_json::to_value(claims).map_err(|_| AuthTokenError::NotAnObject)?
        else {
            return Err(AuthTokenError::NotAnObject);
        };
        if self.state() != SocketState::Open {
            return Err(AuthTokenError::NotOpen);
        }
        let Some(server) = self.shared.server.upgrade() else {
            return Err(AuthTokenError::NotOpen);
        };
        let engine = server.auth_engine();
        let (signed, claims) = match engine.sign_claims(claims, &options) {
            Ok(s) => s,
            Err(e) => {
                self.cmd(Cmd::SignFailed {
                    message: e.0.clone(),
                });
                return Err(AuthTokenError::Sign(e));
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let (ack_tx, ack_rx) = if options.reject_on_failed_delivery {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if !self.cmd(Cmd::SetAuthToken {
            signed: signed.clone(),
            claims: Arc::new(claims),
            ack: ack_tx,
            reply: reply_tx,
        }) {
            return Err(AuthTokenError::NotOpen);
        }
        reply_rx.await.map_err(|_| AuthTokenError::NotOpen)??;
        if let Some(ack_rx) = ack_rx {
            let res = tokio::time::timeout(self.shared.ack_timeout, ack_rx).await;
            let err = match res {
                Ok(Ok(Ok(_))) => None,
                Ok(Ok(Err(e))) => Some(e.to_string()),
                Ok(Err(_)) => Some(
                    InvokeError::BadConnection(
                        socketcluster_protocol::reserved::SET_AUTH_TOKEN.into(),
                    )
                    .to_string(),
                ),
                Err(_) => Some(InvokeError::Timeout("#setAuthToken".into()).to_string()),
            };
            if let Some(e) = err {
                return Err(AuthTokenError::Delivery(e));
            }
        }
        Ok(signed)
    }

    /// Remove the socket's authentication and tell the client (`#removeAuthToken`).
    pub async fn deauthenticate(&self) {
        let _ = self
            .deauthenticate_with(DeauthenticateOptions::default())
            .await;
    }

    /// Remove the socket's authentication and tell the client (JS
    /// `socket.deauthenticate(options)`). With
    /// [`DeauthenticateOptions::reject_on_failed_delivery`] `#removeAuthToken` is
    /// invoked and the client's acknowledgement awaited: a closed socket gives
    /// `BadConnectionError` ([`InvokeError::BadConnection`]), a silent client
    /// `TimeoutError` after the server `ack_timeout`; failures are also emitted as
    /// [`crate::ServerEvent::Warning`]. Without it, this never fails.
    ///
    /// ```no_run
    /// # async fn demo(socket: socketcluster_server::Socket) {
    /// use socketcluster_server::auth::DeauthenticateOptions;
    /// let confirmed = socket
    ///     .deauthenticate_with(DeauthenticateOptions::default().reject_on_failed_delivery(true))
    ///     .await;
    /// # let _ = confirmed; }
    /// ```
    pub async fn deauthenticate_with(
        &self,
        options: DeauthenticateOptions,
    ) -> Result<(), InvokeError> {
        const EVENT: &str = socketcluster_protocol::reserved::REMOVE_AUTH_TOKEN;
        let (tx, rx) = oneshot::channel();
        let (ack_tx, ack_rx) = if options.reject_on_failed_delivery {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let sent = self.cmd(Cmd::Deauthenticate {
            notify: true,
            ack: ack_tx,
            reply: tx,
        });
        if sent {
            let _ = rx.await;
        }
        let Some(ack_rx) = ack_rx else {
            return Ok(());
        };
        let result = if !sent {
            Err(InvokeError::BadConnection(EVENT.to_owned()))
        } else {
            match tokio::time::timeout(self.shared.ack_timeout, ack_rx).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(_)) => Err(InvokeError::BadConnection(EVENT.to_owned())),
                Err(_) => Err(InvokeError::Timeout(EVENT.to_owned())),
            }
        };
        if let Err(e) = &result
            && let Some(server) = self.shared.server.upgrade()
        {
            server.emit(crate::events::ServerEvent::Warning {
                socket: Some(self.clone()),
                error: socketcluster_protocol::ErrorObject::new(e.name(), e.to_string()),
            });
        }
        result
    }

    /// Remove the socket's authentication without telling the client (JS
    /// `deauthenticateSelf`).
    pub async fn deauthenticate_self(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd(Cmd::Deauthenticate {
            notify: false,
            ack: None,
            reply: tx,
        }) {
            let _ = rx.await;
        }
    }

    /// Buffer every packet sent to this socket and flush them as one JSON array frame
    /// every [`crate::ServerConfig::batch_interval`] (JS `socket.startBatching()`,
    /// PROTOCOL.md 8.5). Responses, events, invokes and publications are batched;
    /// pings never are. Stays on until [`Socket::stop_batching`] or
    /// [`Socket::cancel_batching`] (a `batch_on_handshake` window ending does not
    /// stop it).
    pub fn start_batching(&self) {
        if self.state() == SocketState::Closed {
            return;
        }
        self.shared.app_batching.store(true, Ordering::Release);
        self.shared.outbox.start_buffering();
        self.cmd(Cmd::BatchTimer(true));
    }

    /// Flush the buffered packets and stop batching (JS `socket.stopBatching()`).
    pub fn stop_batching(&self) {
        self.shared.app_batching.store(false, Ordering::Release);
        self.shared.outbox.flush_batch(false);
        self.cmd(Cmd::BatchTimer(false));
    }

    /// Discard the buffered packets and stop batching (JS `socket.cancelBatching()`).
    pub fn cancel_batching(&self) {
        self.shared.app_batching.store(false, Ordering::Release);
        self.shared.outbox.cancel_batch();
        self.cmd(Cmd::BatchTimer(false));
    }

    /// Whether outbound packets are currently being buffered (explicit batching or the
    /// `batch_on_handshake` window).
    pub fn is_batching(&self) -> bool {
        self.shared.outbox.is_buffering()
    }

    /// Kick the socket out of a channel (or of every channel when `None`): sends
    /// `#kickOut {channel, message}` and unsubscribes it server-side. Fails for a channel
    /// the socket is not subscribed to (after still sending `#kickOut`, like JS).
    pub async fn kick_out<M: Serialize + ?Sized>(
        &self,
        channel: Option<&str>,
        message: Option<&M>,
    ) -> Result<(), KickOutError> {
        let message = match message {
            Some(m) => Some(to_raw(m).map_err(|_| KickOutError::NotOpen)?),
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        if !self.cmd(Cmd::KickOut {
            channel: channel.map(str::to_owned),
            message,
            reply: tx,
        }) {
            return Err(KickOutError::NotOpen);
        }
        rx.await.unwrap_or(Err(KickOutError::NotOpen))
    }

    /// Close with a code and reason (JS `socket.disconnect`).
    pub fn disconnect(&self, code: u16, reason: &str) {
        self.cmd(Cmd::Disconnect {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Drop the TCP connection without a close frame (JS `socket.terminate`; the client
    /// sees 1006).
    pub fn terminate(&self) {
        self.cmd(Cmd::Terminate);
    }

    /// Wait until the socket is closed.
    pub async fn closed(&self) -> CloseInfo {
        self.shared.wait_closed().await.clone()
    }
}
