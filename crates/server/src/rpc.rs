//! Client → server RPC (procedures) and transmitted events (receivers), docs/PROTOCOL.md 7.2.
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

use serde::Serialize;
use serde::de::DeserializeOwned;
use socketcluster_rs_protocol::{ErrorObject, WireError};
use tokio::sync::mpsc;

use crate::socket::Socket;
pub use crate::socket::{
    EventStream, MessageStream, ReceivedEvent, Request, RequestStream, STREAM_CAPACITY,
};

/// Boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

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
    /// Handler of procedures without a handler of their own (see
    /// [`crate::Server::fallback_procedure`]).
    pub(crate) fallback: std::sync::RwLock<Option<Arc<dyn ProcedureHandler>>>,
}

impl Handlers {
    pub(crate) fn procedure(&self, name: &str) -> Option<Arc<dyn ProcedureHandler>> {
        self.procedures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
    pub(crate) fn fallback(&self) -> Option<Arc<dyn ProcedureHandler>> {
        self.fallback
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(crate) fn receiver(&self, name: &str) -> Option<Arc<dyn ReceiverHandler>> {
        self.receivers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}
