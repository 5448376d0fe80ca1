//! A socket's own streams (JS `socket.procedure(name)`, `socket.receiver(name)`,
//! `socket.listener('message' | 'raw')`): registered through [`Socket`] methods, fed by
//! the socket task, ended when the socket closes. The stream types are shared with the
//! server-wide streams ([`crate::Server::procedure_stream`]) and re-exported from
//! [`crate::rpc`].

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream;
use socketcluster_rs_protocol::RawValue;
use tokio::sync::mpsc;

use super::Socket;
use super::received::{ReceivedEvent, Request};

/// Capacity of request/event streams created by [`crate::Server::procedure_stream`] and
/// [`crate::Server::receiver_stream`]; requests arriving while the stream is full are
/// dropped (an invoke then gets no answer and times out on the client) and logged.
pub const STREAM_CAPACITY: usize = 1024;

/// A `Stream` of requests for one procedure.
pub struct RequestStream {
    pub(crate) rx: mpsc::Receiver<Request>,
}

impl Stream for RequestStream {
    type Item = Request;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.rx.poll_recv(cx)
    }
}

/// A `Stream` of transmitted events of one name.
pub struct EventStream {
    pub(crate) rx: mpsc::Receiver<ReceivedEvent>,
}

impl Stream for EventStream {
    type Item = ReceivedEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReceivedEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A `Stream` of one socket's inbound messages as text ([`crate::Socket::messages`],
/// [`crate::Socket::raw_messages`]).
pub struct MessageStream {
    pub(crate) rx: mpsc::Receiver<String>,
}

impl Stream for MessageStream {
    type Item = String;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        self.rx.poll_recv(cx)
    }
}

/// Per-socket streams, by name (a few at most: a `Vec` beats a map).
#[derive(Default)]
pub(crate) struct SocketStreams {
    procedures: Vec<(String, mpsc::Sender<Request>)>,
    receivers: Vec<(String, mpsc::Sender<ReceivedEvent>)>,
    /// JS `message` listeners: every inbound message.
    messages: Vec<mpsc::Sender<String>>,
    /// JS `raw` listeners: messages that are not SocketCluster packets.
    raw: Vec<mpsc::Sender<String>>,
}

/// Which message listeners ([`SocketShared::offer_message`](super::SocketShared::offer_message)).
#[derive(Clone, Copy)]
pub(crate) enum MessageKind {
    All,
    Raw,
}

impl SocketStreams {
    /// The first live stream that takes invokes of `procedure` (closed ones are pruned).
    pub(super) fn procedure(&mut self, procedure: &str) -> Option<mpsc::Sender<Request>> {
        self.procedures.retain(|(_, tx)| !tx.is_closed());
        self.procedures
            .iter()
            .find(|(n, _)| n == procedure)
            .map(|(_, tx)| tx.clone())
    }

    /// Hand a transmitted event to every live stream of its name; false when there is
    /// none.
    pub(super) fn offer_event(
        &mut self,
        socket: &Socket,
        event: &str,
        data: Option<&RawValue>,
    ) -> bool {
        self.receivers.retain(|(_, tx)| !tx.is_closed());
        let mut any = false;
        for (_, tx) in self.receivers.iter().filter(|(n, _)| n == event) {
            any = true;
            let ev = ReceivedEvent::new(
                socket.clone(),
                event.to_owned(),
                data.map(RawValue::to_owned),
            );
            if tx.try_send(ev).is_err() {
                tracing::warn!(socket = %socket.shared.id, event, "socket receiver stream full; event dropped");
            }
        }
        any
    }

    /// Copy an inbound message to the `message` or `raw` streams.
    pub(super) fn offer_message(&mut self, id: &str, kind: MessageKind, message: &str) {
        let list = match kind {
            MessageKind::All => &mut self.messages,
            MessageKind::Raw => &mut self.raw,
        };
        list.retain(|tx| !tx.is_closed());
        for tx in list.iter() {
            if tx.try_send(message.to_owned()).is_err() {
                tracing::warn!(socket = %id, "socket message stream full; message dropped");
            }
        }
    }
}

impl Socket {
    /// This socket's invokes of `procedure` as a stream (JS `socket.procedure(name)`),
    /// answered with [`Request::respond`](crate::Request::respond) and friends. While
    /// the stream lives it takes the socket's invokes of that name before the
    /// server-wide handler ([`crate::Server::procedure`]); with several streams of one
    /// name the oldest live one gets each request (JS hands it to every consumer and
    /// keeps the first answer). The stream ends when the socket closes; a full stream
    /// ([`STREAM_CAPACITY`]) drops requests, which then time out on the
    /// client.
    ///
    /// ```no_run
    /// # use futures_util::StreamExt;
    /// # async fn demo(socket: socketcluster_rs_server::Socket) {
    /// let mut requests = socket.procedure("whoami");
    /// while let Some(req) = requests.next().await {
    ///     let id = req.socket().id().to_owned();
    ///     req.respond(&id);
    /// }
    /// # }
    /// ```
    pub fn procedure(&self, procedure: &str) -> RequestStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.add_stream(|st| st.procedures.push((procedure.to_owned(), tx)));
        RequestStream { rx }
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
    pub fn messages(&self) -> MessageStream {
        self.message_stream(MessageKind::All)
    }

    /// The messages of this socket that are not SocketCluster packets (JS
    /// `socket.listener('raw')`), as text; they are otherwise only counted
    /// ([`crate::StatsSnapshot`]). Raw items inside a batch are not included. Ends when
    /// the socket closes; a full stream drops messages.
    pub fn raw_messages(&self) -> MessageStream {
        self.message_stream(MessageKind::Raw)
    }

    fn message_stream(&self, kind: MessageKind) -> MessageStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.add_stream(|st| match kind {
            MessageKind::All => st.messages.push(tx),
            MessageKind::Raw => st.raw.push(tx),
        });
        MessageStream { rx }
    }

    /// This socket's transmitted events of `event` as a stream (JS
    /// `socket.receiver(name)`). Every live stream of the name gets each event, and
    /// while one lives the server-wide handler ([`crate::Server::receiver`]) does not.
    /// Ends when the socket closes; a full stream drops events.
    pub fn receiver(&self, event: &str) -> EventStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.add_stream(|st| st.receivers.push((event.to_owned(), tx)));
        EventStream { rx }
    }
}
