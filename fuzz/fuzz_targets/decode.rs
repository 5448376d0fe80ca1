//! Fuzz the frame decoder and everything a peer's bytes reach in the protocol crate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socketcluster_rs_protocol::reserved::{self, HandshakeStatus, SubscribeRequest};
use socketcluster_rs_protocol::codec::Indexed;
use socketcluster_rs_protocol::{BatchItem, Cid, Frame, KeyOrder, Packet, ProtocolVersion, Role, codec};

fn exercise(p: &Packet) {
    // Re-encoding what was decoded must decode to the same packet (except an infinite
    // cid, which JavaScript writes as `null`, like us, and which is then no cid at all).
    let non_finite = match p {
        Packet::Event(e) => e.cid == Some(Cid::NonFinite),
        Packet::Response(r) => r.rid == Cid::NonFinite,
    };
    if !non_finite {
        let text = p.encode(KeyOrder::Server);
        match codec::decode(&text, Role::Client, ProtocolVersion::V2) {
            Frame::Packet(back) => assert_eq!(&back, p),
            other => panic!("re-encoded packet decoded as {other:?}"),
        }
    }
    match p {
        Packet::Event(e) => {
            let d = e.data.as_deref();
            let _ = reserved::parse_handshake_token(d);
            let _ = reserved::parse_authenticate_token(d);
            let _ = SubscribeRequest::parse(d).map(|s| s.to_raw());
            let _ = reserved::parse_publish(d);
            let _ = reserved::parse_kick_out(d);
            let _ = reserved::parse_unsubscribe(d);
            let _ = reserved::parse_set_auth_token(d);
            let _ = reserved::parse_v1_disconnect(d);
        }
        Packet::Response(r) => {
            let _ = r.error().map(|e| e.to_raw());
            let _ = HandshakeStatus::parse(r.data.as_deref()).to_raw();
            let _ = reserved::AuthenticateResult::parse(r.data.as_deref());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for role in [Role::Client, Role::Server] {
        for v in [ProtocolVersion::V1, ProtocolVersion::V2] {
            match codec::decode(&text, role, v) {
                Frame::Packet(p) => exercise(&p),
                Frame::Batch(items) => {
                    for i in &items {
                        if let BatchItem::Packet(p) = i {
                            exercise(p);
                        }
                    }
                }
                Frame::Heartbeat | Frame::Raw => {}
            }
        }
    }
    // The server's lazy path (an index, elements decoded one by one) agrees with `decode`.
    match (codec::decode_message(&text), codec::index_message(&text, usize::MAX)) {
        (Frame::Packet(a), Indexed::Packet(b)) => assert_eq!(a, b),
        (Frame::Batch(items), Indexed::Batch(index)) => {
            assert_eq!(items.len(), index.len());
            for (i, item) in items.iter().enumerate() {
                assert_eq!(&index.item(&text, i), item);
            }
            match codec::index_message(&text, 2) {
                Indexed::TooManyItems { items: n } => assert!(n > 2 && n == items.len()),
                Indexed::Batch(small) => assert!(small.len() <= 2),
                other => panic!("limit changed the classification: {other:?}"),
            }
        }
        (Frame::Raw, Indexed::Raw) => {}
        (a, b) => panic!("decode gave {a:?}, index_message gave {b:?}"),
    }
    let _ = socketcluster_rs_protocol::auth::decode_token_payload(&text);
});
