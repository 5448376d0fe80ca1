//! What a socket received and hands to application code: an invoke to answer
//! ([`Request`]) and a transmitted event ([`ReceivedEvent`]). Both are
//! re-exported from [`crate::rpc`], where their handlers are.

use serde::Serialize;
use serde::de::DeserializeOwned;
use socketcluster_rs_protocol::{Cid, ErrorObject, RawValue, ResponsePacket, WireError};

use super::Socket;

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
