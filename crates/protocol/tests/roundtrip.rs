//! Property tests: every packet kind survives encode -> decode unchanged, in both key
//! orders and inside batches.

use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;
use socketcluster_rs_protocol::codec::{self, encode_batch};
use socketcluster_rs_protocol::error::{ErrorObject, WireError};
use socketcluster_rs_protocol::reserved::{
    self, AuthenticateResult, HandshakeStatus, SubscribeRequest,
};
use socketcluster_rs_protocol::{
    BatchItem, Cid, EventPacket, Frame, KeyOrder, Packet, ProtocolVersion, ResponsePacket, Role,
};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn raw_of(v: &Value) -> Box<RawValue> {
    RawValue::from_string(serde_json::to_string(v).unwrap()).unwrap()
}

fn opt_data() -> impl Strategy<Value = Option<Box<RawValue>>> {
    prop::option::of(json_value()).prop_map(|v| v.as_ref().map(raw_of))
}

fn cid() -> impl Strategy<Value = u64> {
    1u64..(1u64 << 53)
}

fn order() -> impl Strategy<Value = KeyOrder> {
    prop_oneof![Just(KeyOrder::Client), Just(KeyOrder::Server)]
}

fn error_object() -> impl Strategy<Value = ErrorObject> {
    (
        "[A-Za-z]{1,20}Error",
        any::<String>(),
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..4),
    )
        .prop_map(|(name, message, extra)| {
            let mut e = ErrorObject::new(name, message);
            for (k, v) in extra {
                if k != "message" && k != "name" {
                    e = e.with(k, v);
                }
            }
            e
        })
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (any::<String>(), opt_data()).prop_map(|(e, d)| Packet::Event(EventPacket::transmit(e, d))),
        (any::<String>(), opt_data(), cid())
            .prop_map(|(e, d, c)| Packet::Event(EventPacket::invoke(e, d, c))),
        (cid(), opt_data()).prop_map(|(c, d)| Packet::Response(ResponsePacket::ok(c, d))),
        (cid(), error_object())
            .prop_map(|(c, e)| Packet::Response(ResponsePacket::err(c, &WireError::from(e)))),
    ]
}

fn decode(text: &str, role: Role) -> Frame {
    codec::decode(text, role, ProtocolVersion::V2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_packet_round_trips(p in packet(), o in order()) {
        let text = p.encode(o);
        for role in [Role::Client, Role::Server] {
            prop_assert_eq!(decode(&text, role), Frame::Packet(p.clone()));
        }
        // and re-encodes identically
        let Frame::Packet(back) = decode(&text, Role::Server) else { unreachable!() };
        prop_assert_eq!(back.encode(o), text);
    }

    #[test]
    fn any_batch_round_trips(ps in prop::collection::vec(packet(), 0..8), o in order()) {
        let parts: Vec<String> = ps.iter().map(|p| p.encode(o)).collect();
        let text = encode_batch(&parts);
        let expected: Vec<BatchItem> = ps.into_iter().map(BatchItem::Packet).collect();
        prop_assert_eq!(decode(&text, Role::Client), Frame::Batch(expected));
    }

    /// The server's lazy batch path agrees with `decode`, element by element, for
    /// batches mixing packets and arbitrary JSON values; the item limit only refuses.
    #[test]
    fn indexed_batches_decode_like_batches(
        ps in prop::collection::vec(prop_oneof![
            packet().prop_map(|p| p.encode(KeyOrder::Client)),
            json_value().prop_map(|v| v.to_string()),
        ], 0..8),
        limit in 0usize..10,
    ) {
        let text = encode_batch(&ps);
        let Frame::Batch(items) = decode(&text, Role::Server) else {
            panic!("not a batch: {text}")
        };
        match codec::index_message(&text, limit) {
            codec::Indexed::Batch(index) => {
                prop_assert!(items.len() <= limit);
                prop_assert_eq!(index.len(), items.len());
                for (i, item) in items.iter().enumerate() {
                    prop_assert_eq!(&index.item(&text, i), item);
                }
            }
            codec::Indexed::TooManyItems { items: n } => {
                prop_assert!(n > limit);
                prop_assert_eq!(n, items.len());
            }
            other => panic!("{other:?} for {text}"),
        }
    }

    #[test]
    fn errors_round_trip_through_responses(c in cid(), e in error_object()) {
        let text = ResponsePacket::err(c, &WireError::from(e.clone())).encode();
        let Frame::Packet(Packet::Response(r)) = decode(&text, Role::Client) else {
            panic!("not a response: {text}")
        };
        prop_assert_eq!(&r.rid, &Cid::Int(c));
        prop_assert_eq!(r.error(), Some(WireError::Object(e)));
    }

    #[test]
    fn data_text_survives_verbatim(v in json_value()) {
        let raw = raw_of(&v);
        let text = EventPacket::transmit("x", Some(raw.clone())).encode(KeyOrder::Client);
        let Frame::Packet(Packet::Event(e)) = decode(&text, Role::Server) else { panic!() };
        prop_assert_eq!(e.data_str(), Some(raw.get()));
        let back: Value = serde_json::from_str(e.data_str().unwrap()).unwrap();
        prop_assert_eq!(back, v);
    }

    #[test]
    fn subscribe_requests_round_trip(ch in any::<String>(), wfa in any::<bool>(), d in prop::option::of(json_value())) {
        let mut s = SubscribeRequest::new(ch.clone());
        s.wait_for_auth = wfa;
        s.data = d.as_ref().map(raw_of);
        let parsed = SubscribeRequest::parse(Some(&s.to_raw())).unwrap();
        prop_assert_eq!(parsed.channel, ch);
        prop_assert_eq!(parsed.wait_for_auth, wfa);
        // data is only written when truthy (docs/PROTOCOL.md 3.6.5)
        let truthy = match &d {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        prop_assert_eq!(parsed.data.is_some(), truthy);
    }

    #[test]
    fn publish_frames_round_trip(ch in any::<String>(), d in opt_data()) {
        let frame = reserved::publish_frame(&ch, d.as_deref());
        let Frame::Packet(Packet::Event(e)) = decode(&frame, Role::Client) else { panic!() };
        prop_assert_eq!(e.event.as_str(), "#publish");
        let p = reserved::parse_publish(e.data.as_deref()).unwrap();
        prop_assert_eq!(p.channel, ch);
        prop_assert_eq!(p.data.as_deref().map(RawValue::get), d.as_deref().map(RawValue::get));
    }

    #[test]
    fn handshake_status_round_trips(id in "[A-Za-z0-9_-]{20}", pt in 0u64..1_000_000, auth in any::<bool>(), e in prop::option::of(error_object())) {
        let s = HandshakeStatus { id: Some(id), ping_timeout: Some(pt), auth_error: e, is_authenticated: auth };
        prop_assert_eq!(HandshakeStatus::parse(Some(&s.to_raw())), s);
    }

    #[test]
    fn authenticate_results_round_trip(auth in any::<bool>(), e in prop::option::of(error_object())) {
        let r = AuthenticateResult { is_authenticated: auth, auth_error: e };
        prop_assert_eq!(AuthenticateResult::parse(Some(&r.to_raw())), Some(r));
    }
}
