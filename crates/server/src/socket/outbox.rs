//! The socket task's mailbox ([`Outbox`]): outbound frames, bounded in bytes and
//! buffered while the socket batches, and the commands ([`Cmd`]) that
//! [`Socket`](super::Socket) handles send to the task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Waker};

use socketcluster_rs_protocol::RawValue;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Claims;
use crate::error::{AuthTokenError, InvokeError, KickOutError};

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
    /// Packets are being buffered into `batch` (docs/PROTOCOL.md 8.5; JS `isBufferingBatch`).
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
        let frame = socketcluster_rs_protocol::codec::encode_batch(&items);
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
