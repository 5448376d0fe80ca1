//! The packet model (docs/PROTOCOL.md 3.2-3.4): events (transmit or invoke) and responses.

use serde_json::value::RawValue;

use crate::cid::Cid;
use crate::error::WireError;
use crate::json;
use crate::version::Role;

/// Which JS peer's key order to write for invokes (docs/PROTOCOL.md 3.3). Both orders are
/// accepted by every receiver; the choice only makes our frames byte-identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyOrder {
    /// `{"event":..,"data":..,"cid":..}` as written by `socketcluster-client`.
    Client,
    /// `{"event":..,"cid":..,"data":..}` as written by `socketcluster-server`.
    Server,
}

impl From<Role> for KeyOrder {
    fn from(role: Role) -> Self {
        match role {
            Role::Client => KeyOrder::Client,
            Role::Server => KeyOrder::Server,
        }
    }
}

/// One decoded SocketCluster packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    /// `{"event":...}`: a transmit (no numeric `cid`) or an invoke (numeric `cid`).
    Event(EventPacket),
    /// `{"rid":...}`: the answer to an earlier invoke.
    Response(ResponsePacket),
}

/// An event packet: a transmit when `cid` is `None`, an invoke otherwise.
#[derive(Clone, Debug)]
pub struct EventPacket {
    /// Event (receiver or procedure) name; names starting with `#` are reserved.
    pub event: String,
    /// The payload as raw JSON text, `None` when the sender had no data (key absent).
    /// An explicit `null` is `Some("null")`.
    pub data: Option<Box<RawValue>>,
    /// The call id of an invoke.
    pub cid: Option<Cid>,
}

/// A response packet.
#[derive(Clone, Debug)]
pub struct ResponsePacket {
    /// The `cid` of the invoke being answered, echoed exactly.
    pub rid: Cid,
    /// Response data (`None` when absent).
    pub data: Option<Box<RawValue>>,
    /// Raw `error` value (`None` when absent). Only a *truthy* error means failure,
    /// see [`ResponsePacket::error`].
    pub error: Option<Box<RawValue>>,
}

/// Compare optional raw JSON by text.
pub(crate) fn raw_eq(a: &Option<Box<RawValue>>, b: &Option<Box<RawValue>>) -> bool {
    a.as_deref().map(RawValue::get) == b.as_deref().map(RawValue::get)
}

impl PartialEq for EventPacket {
    fn eq(&self, o: &Self) -> bool {
        self.event == o.event && self.cid == o.cid && raw_eq(&self.data, &o.data)
    }
}

impl PartialEq for ResponsePacket {
    fn eq(&self, o: &Self) -> bool {
        self.rid == o.rid && raw_eq(&self.data, &o.data) && raw_eq(&self.error, &o.error)
    }
}

impl Packet {
    /// Encode in the key order of `order`.
    pub fn encode(&self, order: KeyOrder) -> String {
        match self {
            Packet::Event(e) => e.encode(order),
            Packet::Response(r) => r.encode(),
        }
    }
}

impl EventPacket {
    /// A transmit (`{"event":E[,"data":D]}`).
    pub fn transmit(event: impl Into<String>, data: Option<Box<RawValue>>) -> Self {
        EventPacket {
            event: event.into(),
            data,
            cid: None,
        }
    }

    /// An invoke with the given call id.
    pub fn invoke(event: impl Into<String>, data: Option<Box<RawValue>>, cid: u64) -> Self {
        EventPacket {
            event: event.into(),
            data,
            cid: Some(Cid::Int(cid)),
        }
    }

    /// Whether this packet expects a response (it has a numeric `cid`).
    pub fn is_invoke(&self) -> bool {
        self.cid.is_some()
    }

    /// Whether the event name is reserved by the protocol (starts with `#`).
    pub fn is_reserved(&self) -> bool {
        self.event.starts_with('#')
    }

    /// The data as text, `None` when absent.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_deref().map(RawValue::get)
    }

    /// Encode as the JS peers do: the JS client writes `event, data, cid`; the JS server
    /// writes `event, cid, data` (docs/PROTOCOL.md 3.3). Absent data is omitted.
    pub fn encode(&self, order: KeyOrder) -> String {
        let mut buf = String::with_capacity(
            self.event.len() + self.data.as_ref().map_or(0, |d| d.get().len()) + 40,
        );
        write_event(
            &mut buf,
            &self.event,
            self.data.as_deref(),
            self.cid.as_ref(),
            order,
        );
        buf
    }
}

/// Append an event packet to `buf` without building an [`EventPacket`].
pub fn write_event(
    buf: &mut String,
    event: &str,
    data: Option<&RawValue>,
    cid: Option<&Cid>,
    order: KeyOrder,
) {
    buf.push('{');
    json::push_key(buf, "event");
    json::push_str(buf, event);
    let write_cid = |buf: &mut String| {
        if let Some(cid) = cid {
            buf.push_str(",\"cid\":");
            cid.write(buf);
        }
    };
    if order == KeyOrder::Server {
        write_cid(buf);
    }
    if let Some(d) = data {
        buf.push_str(",\"data\":");
        json::push_raw(buf, d);
    }
    if order == KeyOrder::Client {
        write_cid(buf);
    }
    buf.push('}');
}

impl ResponsePacket {
    /// A successful response; `data` omitted when `None`.
    pub fn ok(rid: impl Into<Cid>, data: Option<Box<RawValue>>) -> Self {
        ResponsePacket {
            rid: rid.into(),
            data,
            error: None,
        }
    }

    /// A failed response carrying a dehydrated error.
    pub fn err(rid: impl Into<Cid>, error: &WireError) -> Self {
        ResponsePacket {
            rid: rid.into(),
            data: None,
            error: Some(error.to_raw()),
        }
    }

    /// The error, if the `error` field is present **and truthy** (`null`, `false`, `0`
    /// and `""` mean success, docs/PROTOCOL.md 3.4), hydrated.
    pub fn error(&self) -> Option<WireError> {
        let raw = self.error.as_deref()?;
        if !json::is_truthy(raw.get()) {
            return None;
        }
        Some(WireError::hydrate_raw(raw))
    }

    /// Whether the response is a failure (truthy `error`).
    pub fn is_error(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| json::is_truthy(e.get()))
    }

    /// Encode: `{"rid":N[,"error":E][,"data":D]}`.
    pub fn encode(&self) -> String {
        let mut buf = String::with_capacity(
            24 + self.data.as_ref().map_or(0, |d| d.get().len())
                + self.error.as_ref().map_or(0, |d| d.get().len()),
        );
        buf.push_str("{\"rid\":");
        self.rid.write(&mut buf);
        if let Some(e) = &self.error {
            buf.push_str(",\"error\":");
            json::push_raw(&mut buf, e);
        }
        if let Some(d) = &self.data {
            buf.push_str(",\"data\":");
            json::push_raw(&mut buf, d);
        }
        buf.push('}');
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn invoke_key_order_depends_on_sender() {
        let p = EventPacket::invoke("clientProc", Some(raw(r#"{"x":1}"#)), 1);
        assert_eq!(
            p.encode(KeyOrder::Server),
            r#"{"event":"clientProc","cid":1,"data":{"x":1}}"#
        );
        assert_eq!(
            p.encode(KeyOrder::Client),
            r#"{"event":"clientProc","data":{"x":1},"cid":1}"#
        );
    }

    #[test]
    fn absent_data_is_omitted_but_null_is_kept() {
        assert_eq!(
            EventPacket::transmit("noData", None).encode(KeyOrder::Client),
            r#"{"event":"noData"}"#
        );
        assert_eq!(ResponsePacket::ok(7, None).encode(), r#"{"rid":7}"#);
        assert_eq!(
            ResponsePacket::ok(7, Some(raw("null"))).encode(),
            r#"{"rid":7,"data":null}"#
        );
    }

    #[test]
    fn falsy_errors_are_success() {
        for e in ["false", "0", "\"\"", "null"] {
            let r = ResponsePacket {
                rid: Cid::Int(3),
                data: Some(raw("\"falsy error\"")),
                error: Some(raw(e)),
            };
            assert!(!r.is_error(), "{e}");
            assert!(r.error().is_none());
        }
    }
}
