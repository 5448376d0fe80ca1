//! Server → client RPC (docs/PROTOCOL.md 7.3): [`Receiver`] streams of transmitted events and
//! [`Procedure`] streams of requests to answer.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use socketcluster_rs_protocol::{Cid, WireError};

use crate::error::RespondError;

/// An event transmitted by the server.
#[derive(Clone, Debug)]
pub struct Transmitted {
    /// Event name.
    pub event: String,
    /// Raw data (`None` when absent).
    pub data: Option<Box<RawValue>>,
}

impl Transmitted {
    /// Deserialize the data (absent data deserializes from `null`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }
}

/// A stream of events the server transmits under one name
/// ([`Client::receiver`](crate::Client::receiver)). Bounded: when full, new events are
/// dropped and [`Event::SlowConsumer`](crate::Event::SlowConsumer) is emitted.
pub struct Receiver {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) rx: crate::queue::Queue<Transmitted>,
    pub(crate) link: Box<dyn HandlerLink>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .finish()
    }
}

impl Receiver {
    /// The next event (`None` once the client is closed).
    pub async fn recv(&mut self) -> Option<Transmitted> {
        self.rx.recv().await
    }
}

impl Stream for Receiver {
    type Item = Transmitted;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Transmitted>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.link.drop_handler(&self.name, self.id);
    }
}

/// How [`Receiver`], [`Procedure`] and [`Request`] reach the connection task
/// (implemented by its command channel).
pub(crate) trait HandlerLink: Send + Sync {
    /// A receiver or procedure stream is gone.
    fn drop_handler(&self, name: &str, id: u64);
    /// Answer the server invoke `cid` of connection `generation`.
    fn respond(
        &self,
        generation: u64,
        cid: Cid,
        response: Result<Option<Box<RawValue>>, WireError>,
    ) -> Result<(), RespondError>;
}

pub(crate) struct Responder {
    pub(crate) cid: Cid,
    pub(crate) generation: u64,
    pub(crate) answered: AtomicBool,
    pub(crate) link: Box<dyn HandlerLink>,
}

/// A request from the server to answer (an invoke of a client procedure). If it is
/// dropped without an answer, nothing is sent and the server times out — as with the
/// JS client.
#[derive(Clone)]
pub struct Request {
    /// Procedure name.
    pub event: String,
    /// Raw data (`None` when absent).
    pub data: Option<Box<RawValue>>,
    pub(crate) responder: Arc<Responder>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("event", &self.event)
            .field("data", &self.data)
            .finish()
    }
}

impl Request {
    /// Deserialize the data (absent data deserializes from `null`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }

    fn send(&self, response: Result<Option<Box<RawValue>>, WireError>) -> Result<(), RespondError> {
        if self.responder.answered.swap(true, Ordering::SeqCst) {
            return Err(RespondError::AlreadyAnswered);
        }
        let r = self.responder.link.respond(
            self.responder.generation,
            self.responder.cid.clone(),
            response,
        );
        if r.is_err() {
            // Not sent: the request may be answered again.
            self.responder.answered.store(false, Ordering::SeqCst);
        }
        r
    }

    /// Answer with data (`{"rid":n,"data":...}`).
    pub fn respond<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), RespondError> {
        let raw = serde_json::value::to_raw_value(data).map_err(RespondError::Serialize)?;
        self.send(Ok(Some(raw)))
    }

    /// Answer with raw data, or none (`{"rid":n}`).
    pub fn respond_raw(&self, data: Option<Box<RawValue>>) -> Result<(), RespondError> {
        self.send(Ok(data))
    }

    /// Answer with an error (`{"rid":n,"error":{...}}`).
    pub fn error(&self, error: impl Into<WireError>) -> Result<(), RespondError> {
        self.send(Err(error.into()))
    }
}

/// A stream of requests for one client procedure
/// ([`Client::procedure`](crate::Client::procedure)). Bounded like [`Receiver`].
pub struct Procedure {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) rx: crate::queue::Queue<Request>,
    pub(crate) link: Box<dyn HandlerLink>,
}

impl fmt::Debug for Procedure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Procedure")
            .field("name", &self.name)
            .finish()
    }
}

impl Procedure {
    /// The next request (`None` once the client is closed).
    pub async fn recv(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

impl Stream for Procedure {
    type Item = Request;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Procedure {
    fn drop(&mut self) {
        self.link.drop_handler(&self.name, self.id);
    }
}

/// A handler registered in the connection task.
pub(crate) enum Handler {
    Receiver(crate::queue::Sender<Transmitted>),
    Procedure(crate::queue::Sender<Request>),
}
