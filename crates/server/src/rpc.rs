//! Client → server RPC (procedures) and transmitted events (receivers), PROTOCOL.md 7.2.
//!
//! A procedure answers a [`Request`] with [`Request::respond`], [`Request::end`] or
//! [`Request::error`]; a request dropped without an answer sends nothing (the caller
//! times out, like JS). Handlers run concurrently, so answers may go out in any order;
//! inbound processing itself stays strictly ordered. A handler is first polled inside
//! the socket's task; only if it has to wait (it returned `Pending`) is it spawned as a
//! tokio task of its own. A handler that answers without awaiting therefore costs no
//! task, and must not block the thread (as in any async code).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use socketcluster_protocol::{Cid, ErrorObject, RawValue, ResponsePacket, WireError};
use tokio::sync::mpsc;

use crate::socket::Socket;

/// Boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An RPC from a client.
pub struct Request {
    socket: Socket,
    procedure: String,
    data: Option<Box<RawValue>>,
    cid: Option<Cid>,
    received: std::time::Instant,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("socket", &self.socket.id())
            .field("procedure", &self.procedure)
            .finish_non_exhaustive()
    }
}

impl Request {
    pub(crate) fn new(
        socket: Socket,
        procedure: String,
        data: Option<Box<RawValue>>,
        cid: Cid,
    ) -> Self {
        Request {
            socket,
            procedure,
            data,
            cid: Some(cid),
            received: std::time::Instant::now(),
        }
    }

    /// The calling socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The procedure name.
    pub fn procedure(&self) -> &str {
        &self.procedure
    }

    /// The request data as raw JSON (`None` when the client sent none).
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }

    /// The request data deserialized (absent data deserializes from `null`).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }

    /// Take the raw data out of the request.
    pub fn take_raw_data(&mut self) -> Option<Box<RawValue>> {
        self.data.take()
    }

    fn send(&mut self, packet: ResponsePacket) {
        self.cid = None;
        let outcome = if packet.is_error() { "error" } else { "ok" };
        crate::metrics::rpc(outcome, self.received);
        self.socket.shared.send_response(packet.encode());
    }

    /// Answer with data (`{"rid":n,"data":...}`). If the value cannot be serialized, an
    /// `InvalidArgumentsError` is sent instead.
    pub fn respond<T: Serialize + ?Sized>(mut self, data: &T) {
        let Some(cid) = self.cid.take() else { return };
        let packet = match serde_json::value::to_raw_value(data) {
            Ok(raw) => ResponsePacket::ok(cid, Some(raw)),
            Err(e) => ResponsePacket::err(
                cid,
                &WireError::Object(ErrorObject::new("InvalidArgumentsError", e.to_string())),
            ),
        };
        self.send(packet);
    }

    /// Answer with raw JSON (`None`: `{"rid":n}`).
    pub fn respond_raw(mut self, data: Option<Box<RawValue>>) {
        let Some(cid) = self.cid.take() else { return };
        self.send(ResponsePacket::ok(cid, data));
    }

    /// Answer without data (`{"rid":n}`, JS `request.end()`).
    pub fn end(self) {
        self.respond_raw(None);
    }

    /// Answer with an error (`{"rid":n,"error":{...}}`). A falsy non-object error
    /// (`false`, `0`, `""`, `null`), which JS clients would treat as success, is sent as
    /// `{"message":"<value>","name":"Error"}` instead.
    pub fn error(mut self, error: impl Into<WireError>) {
        let Some(cid) = self.cid.take() else { return };
        let mut error = error.into();
        if let WireError::Value(v) = &error {
            let falsy = match v {
                serde_json::Value::Null => true,
                serde_json::Value::Bool(b) => !b,
                serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
                serde_json::Value::String(s) => s.is_empty(),
                _ => false,
            };
            if falsy {
                error = WireError::Object(ErrorObject::new("Error", v.to_string()));
            }
        }
        self.send(ResponsePacket::err(cid, &error));
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.cid.is_some() {
            crate::metrics::rpc("unanswered", self.received);
            tracing::trace!(procedure = %self.procedure, "request dropped without an answer");
        }
    }
}

/// A transmitted event from a client.
#[derive(Debug)]
pub struct ReceivedEvent {
    socket: Socket,
    event: String,
    data: Option<Box<RawValue>>,
}

impl ReceivedEvent {
    pub(crate) fn new(socket: Socket, event: String, data: Option<Box<RawValue>>) -> Self {
        ReceivedEvent {
            socket,
            event,
            data,
        }
    }
    /// The sending socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
    /// The event name.
    pub fn event(&self) -> &str {
        &self.event
    }
    /// The data as raw JSON.
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }
    /// The data deserialized (absent data deserializes from `null`).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }
}

/// Handles invokes of one procedure.
pub trait ProcedureHandler: Send + Sync + 'static {
    /// Handle one request (answer it or drop it).
    fn call(&self, request: Request) -> HandlerFuture;
}

impl<F, Fut> ProcedureHandler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        Box::pin(self(request))
    }
}

/// Handles transmitted events of one name.
pub trait ReceiverHandler: Send + Sync + 'static {
    /// Handle one event.
    fn call(&self, event: ReceivedEvent) -> HandlerFuture;
}

impl<F, Fut> ReceiverHandler for F
where
    F: Fn(ReceivedEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn call(&self, event: ReceivedEvent) -> HandlerFuture {
        Box::pin(self(event))
    }
}

/// A typed procedure: deserializes the request data into `T` and answers with the
/// handler's result.
pub(crate) struct TypedProcedure<F, T, R, Fut> {
    pub(crate) f: F,
    pub(crate) _p: std::marker::PhantomData<fn(T) -> (R, Fut)>,
}

impl<F, T, R, Fut> ProcedureHandler for TypedProcedure<F, T, R, Fut>
where
    F: Fn(Socket, T) -> Fut + Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    Fut: Future<Output = Result<R, WireError>> + Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        let parsed: Result<T, _> = request.data();
        match parsed {
            Err(e) => {
                let msg = format!("Invalid data for procedure {}: {e}", request.procedure());
                request.error(ErrorObject::new("InvalidArgumentsError", msg));
                Box::pin(async {})
            }
            Ok(data) => {
                let fut = (self.f)(request.socket().clone(), data);
                Box::pin(async move {
                    match fut.await {
                        Ok(v) => request.respond(&v),
                        Err(e) => request.error(e),
                    }
                })
            }
        }
    }
}

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

pub(crate) struct StreamProcedure(pub(crate) mpsc::Sender<Request>);

impl ProcedureHandler for StreamProcedure {
    fn call(&self, request: Request) -> HandlerFuture {
        if let Err(e) = self.0.try_send(request) {
            let req = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            tracing::warn!(procedure = %req.procedure(), "procedure stream full or closed; request dropped");
        }
        Box::pin(async {})
    }
}

pub(crate) struct StreamReceiver(pub(crate) mpsc::Sender<ReceivedEvent>);

impl ReceiverHandler for StreamReceiver {
    fn call(&self, event: ReceivedEvent) -> HandlerFuture {
        if self.0.try_send(event).is_err() {
            tracing::warn!("receiver stream full or closed; event dropped");
        }
        Box::pin(async {})
    }
}

/// Registered handlers.
#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) procedures:
        std::sync::RwLock<std::collections::HashMap<String, Arc<dyn ProcedureHandler>>>,
    pub(crate) receivers:
        std::sync::RwLock<std::collections::HashMap<String, Arc<dyn ReceiverHandler>>>,
}

impl Handlers {
    pub(crate) fn procedure(&self, name: &str) -> Option<Arc<dyn ProcedureHandler>> {
        self.procedures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
    pub(crate) fn receiver(&self, name: &str) -> Option<Arc<dyn ReceiverHandler>> {
        self.receivers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}
