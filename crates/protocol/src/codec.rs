//! The default JSON codec (`sc-formatter`): classification of an incoming text frame
//! (docs/PROTOCOL.md 2.3, 2.4, 3.1) and batch encoding.
//!
//! Decoding never fails and never panics: anything that is not a packet is reported as
//! [`Frame::Raw`], exactly as the JS peers emit a `raw` event for it. Memory use is
//! bounded by a small multiple of the frame size, and nesting deeper than
//! `serde_json`'s recursion limit (128) is treated as unparsable, hence raw.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::cid::Cid;
pub use crate::packet::KeyOrder;
use crate::packet::{EventPacket, Packet, ResponsePacket};
use crate::version::{ProtocolVersion, Role};

/// What one incoming text frame is.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// The heartbeat this role expects (a ping for a client, a pong for a server).
    Heartbeat,
    /// A single packet.
    Packet(Packet),
    /// A JSON array: each element in order, as if it had arrived alone. An empty array
    /// is an empty batch (it does nothing, not even before the handshake).
    Batch(Vec<BatchItem>),
    /// Anything else: not JSON, JSON that is not a packet, or the other version's
    /// heartbeat. The JS peers emit a `raw` event with the frame text.
    Raw,
}

/// One element of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchItem {
    /// A packet.
    Packet(Packet),
    /// An element that is not a packet (the `raw` event carries the whole frame text).
    Raw,
}

/// Classify and decode one text frame received by `role` speaking `version`.
///
/// ```
/// use socketcluster_rs_protocol::{codec, Frame, ProtocolVersion, Role};
/// assert_eq!(codec::decode("", Role::Client, ProtocolVersion::V2), Frame::Heartbeat);
/// assert_eq!(codec::decode("#1", Role::Client, ProtocolVersion::V1), Frame::Heartbeat);
/// assert_eq!(codec::decode("#2", Role::Server, ProtocolVersion::V2), Frame::Raw);
/// assert_eq!(codec::decode("this is not json", Role::Server, ProtocolVersion::V2), Frame::Raw);
/// ```
pub fn decode(text: &str, role: Role, version: ProtocolVersion) -> Frame {
    if text == version.inbound_heartbeat(role) {
        return Frame::Heartbeat;
    }
    decode_message(text)
}

/// Decode a frame that is not a heartbeat (steps 3-5 of docs/PROTOCOL.md 2.3).
pub fn decode_message(text: &str) -> Frame {
    let trimmed = text.trim_start_matches([' ', '\n', '\r', '\t']);
    match trimmed.as_bytes().first() {
        Some(b'{') => match serde_json::from_str::<Top>(trimmed) {
            Ok(Top::Object(Some(p))) => Frame::Packet(p),
            _ => Frame::Raw,
        },
        Some(b'[') => match serde_json::from_str::<Top>(trimmed) {
            Ok(Top::Array(items)) => Frame::Batch(items),
            _ => Frame::Raw,
        },
        _ => Frame::Raw,
    }
}

/// A text message classified for processing one batch element at a time (the server's
/// path; docs/PROTOCOL.md 2.4 and 11.6): a batch is validated and indexed, not decoded.
#[derive(Debug, PartialEq)]
pub enum Indexed {
    /// A single packet.
    Packet(Packet),
    /// A JSON array with at most the allowed number of elements: where each element is.
    Batch(BatchIndex),
    /// A valid JSON array with more elements than allowed (`items` of them).
    TooManyItems {
        /// How many elements the array has.
        items: usize,
    },
    /// Anything else (see [`Frame::Raw`]).
    Raw,
}

/// Where the elements of a batch are in its frame text: two offsets per element, so an
/// indexed batch costs 16 bytes per element however the elements look (a decoded
/// [`BatchItem`] costs more than 50, and an array of 4 million `0`s fits in 8 MiB).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchIndex {
    spans: Box<[(usize, usize)]>,
}

impl BatchIndex {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Decode element `i` of `text`, the frame text this index was made from (an
    /// element that is not a packet, an index out of range or another text give
    /// [`BatchItem::Raw`]).
    pub fn item(&self, text: &str, i: usize) -> BatchItem {
        let Some(el) = self.spans.get(i).and_then(|&(a, b)| text.get(a..b)) else {
            return BatchItem::Raw;
        };
        match decode_element(el) {
            Ok(Some(p)) => BatchItem::Packet(p),
            _ => BatchItem::Raw,
        }
    }
}

/// Classify a text frame that is not a heartbeat like [`decode_message`], but index a
/// batch instead of decoding it, and refuse one with more than `max_items` elements.
///
/// Memory: besides the frame text, at most one decoded element at a time and 16 bytes
/// per element of an accepted batch. A batch that is not valid JSON (or has an element
/// that is not valid JSON) is [`Indexed::Raw`], like [`Frame::Raw`].
///
/// ```
/// use socketcluster_rs_protocol::codec::{index_message, BatchItem, Indexed};
/// let text = r#"[{"event":"a"},5]"#;
/// let Indexed::Batch(index) = index_message(text, 10) else { panic!() };
/// assert_eq!(index.len(), 2);
/// assert!(matches!(index.item(text, 0), BatchItem::Packet(_)));
/// assert_eq!(index.item(text, 1), BatchItem::Raw);
/// assert_eq!(index_message("[0,0,0]", 2), Indexed::TooManyItems { items: 3 });
/// ```
pub fn index_message(text: &str, max_items: usize) -> Indexed {
    let trimmed = text.trim_start_matches([' ', '\n', '\r', '\t']);
    if !trimmed.starts_with('[') {
        return match decode_message(text) {
            Frame::Packet(p) => Indexed::Packet(p),
            _ => Indexed::Raw,
        };
    }
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let visitor = IndexVisitor {
        base: text.as_ptr() as usize,
        max: max_items,
    };
    match de
        .deserialize_seq(visitor)
        .and_then(|r| de.end().map(|()| r))
    {
        Ok((_, items)) if items > max_items => Indexed::TooManyItems { items },
        Ok((spans, _)) => Indexed::Batch(BatchIndex {
            spans: spans.into_boxed_slice(),
        }),
        Err(_) => Indexed::Raw,
    }
}

/// Validates every element of a batch (decoding it, then dropping it) and records where
/// the first `max` elements are; beyond them it only counts.
struct IndexVisitor {
    base: usize,
    max: usize,
}

impl<'de> Visitor<'de> for IndexVisitor {
    type Value = (Vec<(usize, usize)>, usize);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of packets")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut spans = Vec::new();
        let mut items = 0usize;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            let el = raw.get();
            decode_element(el).map_err(de::Error::custom)?;
            if items < self.max {
                let start = (el.as_ptr() as usize).wrapping_sub(self.base);
                spans.push((start, start + el.len()));
            } else if items == self.max {
                // Over the limit: nothing more is kept.
                spans = Vec::new();
            }
            items += 1;
        }
        Ok((spans, items))
    }
}

/// Decode one batch element: a packet, or `None` for anything else.
fn decode_element(text: &str) -> Result<Option<Packet>, serde_json::Error> {
    if !text.starts_with('{') {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(PacketVisitor)
}

/// Encode a batch: the already-encoded packets joined into one JSON array.
pub fn encode_batch<S: AsRef<str>>(packets: &[S]) -> String {
    let len: usize = packets.iter().map(|p| p.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(len + 2);
    out.push('[');
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p.as_ref());
    }
    out.push(']');
    out
}

/// Top-level value of a frame that starts with `{` or `[`.
enum Top {
    Object(Option<Packet>),
    Array(Vec<BatchItem>),
}

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a packet object or an array of packets")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top, A::Error> {
        Ok(Top::Object(PacketVisitor.visit_map(map)?))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        let mut items = Vec::new();
        while let Some(el) = seq.next_element::<Element>()? {
            items.push(match el.0 {
                Some(p) => BatchItem::Packet(p),
                None => BatchItem::Raw,
            });
        }
        Ok(Top::Array(items))
    }
}

/// A batch element: a packet, or anything else (including nested arrays, which are not
/// expanded).
struct Element(Option<Packet>);

impl<'de> serde::Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrow the element as raw text first so non-objects are skipped cheaply.
        let raw: &RawValue = serde::Deserialize::deserialize(d)?;
        Ok(Element(
            decode_element(raw.get()).map_err(de::Error::custom)?,
        ))
    }
}

struct PacketVisitor;

impl<'de> Visitor<'de> for PacketVisitor {
    type Value = Option<Packet>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a packet object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Packet>, A::Error> {
        // JSON.parse keeps the last occurrence of a duplicated key; so do we.
        let mut event: Option<&'de RawValue> = None;
        let mut cid: Option<&'de RawValue> = None;
        let mut rid: Option<&'de RawValue> = None;
        let mut data: Option<&'de RawValue> = None;
        let mut error: Option<&'de RawValue> = None;
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Event => &mut event,
                Key::Cid => &mut cid,
                Key::Rid => &mut rid,
                Key::Data => &mut data,
                Key::Error => &mut error,
                Key::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        let owned = |r: Option<&RawValue>| r.map(RawValue::to_owned);
        if let Some(ev) = event.filter(|e| e.get().starts_with('"')) {
            let name: String = serde_json::from_str(ev.get()).map_err(de::Error::custom)?;
            let cid = cid.and_then(|c| Cid::from_json_number(c.get()));
            return Ok(Some(Packet::Event(EventPacket {
                event: name,
                data: owned(data),
                cid,
            })));
        }
        if let Some(rid) = rid.and_then(|r| Cid::from_json_number(r.get())) {
            return Ok(Some(Packet::Response(ResponsePacket {
                rid,
                data: owned(data),
                error: owned(error),
            })));
        }
        Ok(None)
    }
}

enum Key {
    Event,
    Cid,
    Rid,
    Data,
    Error,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "event" => Key::Event,
                    "cid" => Key::Cid,
                    "rid" => Key::Rid,
                    "data" => Key::Data,
                    "error" => Key::Error,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Frame {
        decode(s, Role::Server, ProtocolVersion::V2)
    }

    #[test]
    fn classifies_events_and_invokes() {
        let Frame::Packet(Packet::Event(e)) = dec(r#"{"event":"myEvent","data":"x"}"#) else {
            panic!()
        };
        assert!(!e.is_invoke());
        assert_eq!(e.data_str(), Some("\"x\""));
        // a string cid makes it a transmit (3.1)
        let Frame::Packet(Packet::Event(e)) = dec(r#"{"event":"x","cid":"9"}"#) else {
            panic!()
        };
        assert!(e.cid.is_none());
        let Frame::Packet(Packet::Event(e)) = dec(r#"{"event":"x","cid":1.5}"#) else {
            panic!()
        };
        assert_eq!(e.cid, Some(Cid::Float(1.5)));
    }

    #[test]
    fn raw_messages_per_protocol_2_3() {
        for raw in [
            "this is not json",
            r#"{"broken json"#,
            r#"{"hello":"no event no rid"}"#,
            r#""a json string""#,
            r#"{"event":5,"cid":18}"#,
            r#"{"rid":"1"}"#,
            "5",
            "true",
            "#1",
            "#2",
        ] {
            assert_eq!(dec(raw), Frame::Raw, "{raw}");
        }
    }

    #[test]
    fn batch_elements_that_are_not_packets_are_raw_items() {
        let Frame::Batch(items) = dec(r#"[null,5,[1],{"event":"a"},{"rid":2}]"#) else {
            panic!()
        };
        assert_eq!(items.len(), 5);
        assert!(matches!(items[0], BatchItem::Raw));
        assert!(matches!(items[2], BatchItem::Raw));
        assert!(matches!(items[3], BatchItem::Packet(Packet::Event(_))));
        assert!(matches!(items[4], BatchItem::Packet(Packet::Response(_))));
        assert_eq!(dec("[]"), Frame::Batch(vec![]));
    }

    #[test]
    fn an_index_decodes_like_a_batch() {
        let text = r#" [null,5,[1],{"event":"a","data":{"x":[1,2]}},{"rid":2},"s"]"#;
        let Frame::Batch(items) = dec(text) else {
            panic!()
        };
        let Indexed::Batch(index) = index_message(text, 6) else {
            panic!()
        };
        assert_eq!(index.len(), items.len());
        for (i, item) in items.iter().enumerate() {
            assert_eq!(&index.item(text, i), item, "element {i}");
        }
        assert_eq!(index.item(text, 6), BatchItem::Raw);
        assert_eq!(index_message(text, 5), Indexed::TooManyItems { items: 6 });
        assert_eq!(
            index_message("[]", 0),
            Indexed::Batch(BatchIndex::default())
        );
        // invalid JSON anywhere makes the whole frame raw, as with `decode`
        assert_eq!(index_message("[0,0,", 1), Indexed::Raw);
        assert_eq!(index_message(r#"[{"event":"\ud800"}]"#, 10), Indexed::Raw);
        assert_eq!(dec(r#"[{"event":"\ud800"}]"#), Frame::Raw);
        assert!(matches!(
            index_message(r#"{"event":"a"}"#, 0),
            Indexed::Packet(_)
        ));
        assert_eq!(index_message("nope", 10), Indexed::Raw);
    }

    #[test]
    fn an_oversized_batch_of_tiny_elements_keeps_no_index() {
        // 4 million elements in 8 MiB: decoded, they would cost hundreds of MB.
        let text = format!("[{}0]", "0,".repeat(4 << 20));
        assert_eq!(
            index_message(&text, 4096),
            Indexed::TooManyItems {
                items: (4 << 20) + 1
            }
        );
    }

    #[test]
    fn leading_whitespace_is_accepted() {
        assert!(matches!(
            dec("  \n {\"event\":\"#handshake\",\"data\":{},\"cid\":1}"),
            Frame::Packet(_)
        ));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_like_json_parse() {
        let Frame::Packet(Packet::Event(e)) = dec(r#"{"event":"a","event":"b"}"#) else {
            panic!()
        };
        assert_eq!(e.event, "b");
    }

    #[test]
    fn absent_and_null_data_differ() {
        let Frame::Packet(Packet::Response(r)) = dec(r#"{"rid":7,"data":null}"#) else {
            panic!()
        };
        assert_eq!(r.data.as_deref().map(RawValue::get), Some("null"));
        let Frame::Packet(Packet::Response(r)) = dec(r#"{"rid":7}"#) else {
            panic!()
        };
        assert!(r.data.is_none());
    }

    #[test]
    fn heartbeats_depend_on_version_and_role() {
        assert_eq!(
            decode("", Role::Server, ProtocolVersion::V2),
            Frame::Heartbeat
        );
        assert_eq!(
            decode("#2", Role::Server, ProtocolVersion::V1),
            Frame::Heartbeat
        );
        assert_eq!(decode("#1", Role::Server, ProtocolVersion::V1), Frame::Raw);
        assert_eq!(decode("", Role::Server, ProtocolVersion::V1), Frame::Raw);
    }

    #[test]
    fn deep_nesting_is_passed_through_without_recursion() {
        // JSON.parse accepts deep nesting, so the packet is valid; the payload stays raw
        // text and is never walked recursively.
        let n = 100_000;
        let deep = format!(
            "{{\"event\":\"x\",\"data\":{}{}}}",
            "[".repeat(n),
            "]".repeat(n)
        );
        let Frame::Packet(Packet::Event(e)) = dec(&deep) else {
            panic!("expected a packet")
        };
        assert_eq!(e.data_str().map(str::len), Some(2 * n));
        let unbalanced = "[".repeat(n);
        assert_eq!(dec(&unbalanced), Frame::Raw);
    }
}
