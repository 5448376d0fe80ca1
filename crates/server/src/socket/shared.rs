//! The state shared between a socket's handles, its task and the channel hub
//! ([`SocketShared`], with the [`View`] other tasks may read), and the socket's narrow
//! link back to its server ([`ServerLink`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde_json::Value;
use socketcluster_rs_protocol::{ErrorObject, RawValue};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{AuthEngine, Claims};
use crate::channel::Publication;
use crate::request::StoredRequest;

use super::outbox::{FRAME_OVERHEAD, Outbox};
use super::received::Request;
use super::streams::{MessageKind, SocketStreams};
use super::{CloseInfo, Socket, SocketState};

/// What a socket's handles need from their server: implemented by the server's shared
/// state, held weakly (a handle may outlive its server).
pub(crate) trait ServerLink: Send + Sync + 'static {
    /// The current JWT engine (replaced by [`crate::Server::set_auth`]).
    fn auth_engine(&self) -> Arc<AuthEngine>;
    /// Emit a [`crate::ServerEvent::Warning`] about `socket`.
    fn warning(&self, socket: &Socket, error: ErrorObject);
}

/// Process-wide counter mixed into socket ids (like the JS `base64id`).
static ID_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A 20-character socket id: 12 random bytes + a 3-byte sequence, base64url.
pub(crate) fn generate_socket_id() -> String {
    let mut bytes = [0u8; 15];
    rand::fill(&mut bytes[..12]);
    let seq = ID_SEQUENCE.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    bytes[12..].copy_from_slice(&seq[1..]);
    URL_SAFE.encode(bytes)
}

/// A channel whose subscription is being set up, and its publications kept aside.
pub(crate) type Recovering = (Arc<str>, Vec<Arc<Publication>>);

/// What goes through a socket's `publishOut` middleware pipeline, in order.
pub(crate) enum Outbound {
    /// A publication, for the middleware.
    Publication(Arc<Publication>),
    /// A frame that must follow the publications before it (a `#subscribe` reply after
    /// a replay).
    Frame(Utf8Bytes),
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
    /// Channels with history whose subscription is being set up, with the publications
    /// that arrived meanwhile (see [`SocketShared::start_recovery`]); none for most
    /// sockets.
    pub(crate) recovering: Vec<Recovering>,
}

/// State shared between a socket's handles, its task and the channel registry.
pub(crate) struct SocketShared {
    pub(crate) key: u64,
    pub(crate) id: Arc<str>,
    pub(crate) request: StoredRequest,
    /// Outbound frames and commands for the socket task.
    pub(crate) outbox: Outbox,
    pub(crate) view: Mutex<View>,
    pub(crate) outbound_mw: OnceLock<mpsc::UnboundedSender<Outbound>>,
    /// Set once when the socket task ends; `closed_notify` wakes the waiters.
    pub(crate) closed: OnceLock<CloseInfo>,
    pub(crate) closed_notify: Notify,
    pub(crate) ack_timeout: Duration,
    /// The server, as far as the handles need it (see [`ServerLink`]).
    pub(crate) server: Weak<dyn ServerLink>,
    /// The application started batching (JS `isBatching`): the handshake batching
    /// window does not stop it.
    pub(crate) app_batching: AtomicBool,
    /// [`View::streams`] was ever set: only then does dispatch take the view lock.
    pub(crate) has_streams: AtomicBool,
    /// [`View::recovering`] is not empty: only then does a delivery with a stream
    /// position take the view lock.
    pub(crate) recovering: AtomicBool,
}

impl SocketShared {
    /// A connecting socket with a fresh id: `key` identifies it in the channel hub,
    /// `outbound_limit` bounds its outbound queue (bytes).
    pub(crate) fn new(
        key: u64,
        request: StoredRequest,
        outbound_limit: usize,
        ack_timeout: Duration,
        server: Weak<dyn ServerLink>,
    ) -> Self {
        SocketShared {
            key,
            id: Arc::from(generate_socket_id()),
            request,
            outbox: Outbox::new(outbound_limit),
            view: Mutex::new(View {
                state: SocketState::Connecting,
                auth: None,
                channels: HashMap::new(),
                channel_seq: 0,
                streams: None,
                recovering: Vec::new(),
            }),
            outbound_mw: OnceLock::new(),
            closed: OnceLock::new(),
            closed_notify: Notify::new(),
            ack_timeout,
            server,
            app_batching: AtomicBool::new(false),
            has_streams: AtomicBool::new(false),
            recovering: AtomicBool::new(false),
        }
    }

    pub(crate) fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fan-out entry point: queue a publication for this socket.
    pub(crate) fn deliver_publication(&self, p: &Arc<Publication>) {
        if p.offset().is_some() && self.recovering.load(Ordering::Acquire) {
            let mut v = self.view();
            if let Some(buf) = v.recovering.iter_mut().find(|(c, _)| **c == *p.channel()) {
                buf.1.push(p.clone());
                return;
            }
        }
        self.send_publication(p);
    }

    /// Queue a publication: through the `publishOut` middleware when there is some.
    pub(crate) fn send_publication(&self, p: &Arc<Publication>) {
        if let Some(tx) = self.outbound_mw.get() {
            let cost = p.frame().len() + FRAME_OVERHEAD;
            if self.outbox.reserve(cost) && tx.send(Outbound::Publication(p.clone())).is_err() {
                self.outbox.release(cost);
            }
        } else {
            self.outbox.push(p.frame_bytes());
        }
    }

    /// Queue a frame after the publications queued so far (also those still in the
    /// `publishOut` middleware).
    pub(crate) fn send_frame_in_order(&self, frame: Utf8Bytes) {
        match self.outbound_mw.get() {
            Some(tx) => {
                if let Err(mpsc::error::SendError(Outbound::Frame(f))) =
                    tx.send(Outbound::Frame(frame))
                {
                    self.outbox.push(f);
                }
            }
            None => {
                self.outbox.push(frame);
            }
        }
    }

    /// A subscription to `channel` (with history) is being set up: until
    /// [`SocketShared::finish_recovery`], its publications are kept aside. Call it before
    /// the socket is registered with the channel.
    pub(crate) fn start_recovery(&self, channel: &str) {
        let mut v = self.view();
        if !v.recovering.iter().any(|(c, _)| **c == *channel) {
            v.recovering.push((Arc::from(channel), Vec::new()));
        }
        self.recovering.store(true, Ordering::Release);
    }

    /// The subscription is set up: `send` gets the publications kept aside and sends
    /// what the subscriber must receive, while new publications of the channel still
    /// wait (they follow).
    pub(crate) fn finish_recovery<R>(
        &self,
        channel: &str,
        send: impl FnOnce(Vec<Arc<Publication>>) -> R,
    ) -> R {
        let mut v = self.view();
        let buffered = Self::take_recovery(&mut v, channel);
        self.recovering
            .store(!v.recovering.is_empty(), Ordering::Release);
        send(buffered)
    }

    /// The subscription was not set up: forget what was kept aside.
    pub(crate) fn cancel_recovery(&self, channel: &str) {
        let mut v = self.view();
        Self::take_recovery(&mut v, channel);
        self.recovering
            .store(!v.recovering.is_empty(), Ordering::Release);
    }

    fn take_recovery(v: &mut View, channel: &str) -> Vec<Arc<Publication>> {
        let list = &mut v.recovering;
        let taken = match list.iter().position(|(c, _)| **c == *channel) {
            Some(i) => list.swap_remove(i).1,
            None => Vec::new(),
        };
        if list.is_empty() {
            *list = Vec::new();
        }
        taken
    }

    /// The first live stream of this socket that takes invokes of `procedure` (closed
    /// ones are pruned); `None` for sockets without streams, without a lock.
    pub(crate) fn procedure_stream(&self, procedure: &str) -> Option<mpsc::Sender<Request>> {
        if !self.has_streams.load(Ordering::Acquire) {
            return None;
        }
        let mut v = self.view();
        v.streams.as_mut()?.procedure(procedure)
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
        st.offer_event(socket, event, data)
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
        st.offer_message(&self.id, kind, message);
    }

    /// End this socket's streams (the socket task is over).
    pub(crate) fn end_streams(&self) {
        let streams = self.view().streams.take();
        drop(streams);
    }

    /// Record how the socket closed and wake everyone waiting for it (once).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_look_like_the_js_ones() {
        let a = generate_socket_id();
        let b = generate_socket_id();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
