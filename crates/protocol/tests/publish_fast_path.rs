//! `reserved::parse_publish_frame` (the client's one-pass path for inbound `#publish`
//! frames) agrees with the general path (`codec::decode_message` + `parse_publish`) on
//! every frame it accepts, and accepts every canonical frame whose channel name needs
//! no escaping.

use proptest::prelude::*;
use serde_json::Value;
use serde_json::value::RawValue;
use socketcluster_rs_protocol::codec;
use socketcluster_rs_protocol::reserved::{self, PublishData};
use socketcluster_rs_protocol::{Frame, Packet};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e15f64..1e15).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z\"\\\\{}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn channel() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9/_.:-]{0,24}",
        any::<String>(),
        "[a\"\\\\\u{1}\u{7f}é]{0,6}",
    ]
}

/// The general path: what the client did for every `#publish` before the fast path.
fn general(text: &str) -> Option<PublishData> {
    match codec::decode_message(text) {
        Frame::Packet(Packet::Event(e)) if e.event == reserved::PUBLISH => {
            reserved::parse_publish(e.data.as_deref())
        }
        _ => None,
    }
}

fn check_agrees(text: &str) -> Result<(), TestCaseError> {
    if let Some(fast) = reserved::parse_publish_frame(text) {
        let slow = general(text);
        prop_assert!(
            slow.is_some(),
            "fast path accepted what the general path rejects: {text}"
        );
        let slow = slow.unwrap();
        prop_assert_eq!(fast.channel, slow.channel.as_str(), "{}", text);
        prop_assert_eq!(
            Some(fast.data.get()),
            slow.data.as_deref().map(RawValue::get),
            "{}",
            text
        );
        prop_assert_eq!(
            fast.position.map(|(o, e)| (o, e.to_owned())),
            slow.position.map(|p| (p.offset, p.epoch)),
            "{}",
            text
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn canonical_frames_take_the_fast_path(ch in channel(), data in prop::option::of(json_value())) {
        let raw = data.as_ref().map(|v| RawValue::from_string(v.to_string()).unwrap());
        let text = reserved::publish_frame(&ch, raw.as_deref());
        check_agrees(&text)?;
        let needs_escape = ch.chars().any(|c| c == '"' || c == '\\' || c < ' ');
        let fast = reserved::parse_publish_frame(&text);
        prop_assert_eq!(
            fast.is_some(),
            raw.is_some() && !needs_escape,
            "{}",
            text
        );
    }

    #[test]
    fn positioned_frames_take_the_fast_path_with_their_position(
        ch in channel(),
        data in prop::option::of(json_value()),
        offset in any::<u64>(),
        epoch in prop_oneof!["[a-zA-Z0-9]{8}", any::<String>()],
    ) {
        let raw = data.as_ref().map(|v| RawValue::from_string(v.to_string()).unwrap());
        let text = socketcluster_rs_protocol::history::publish_frame_at(&ch, raw.as_deref(), offset, &epoch);
        check_agrees(&text)?;
        let slow = general(&text).expect("the general path reads every positioned frame");
        prop_assert_eq!(slow.position.map(|p| (p.offset, p.epoch)), Some((offset, epoch.clone())));
        let needs_escape = |s: &str| s.chars().any(|c| c == '"' || c == '\\' || c < ' ');
        let fast = reserved::parse_publish_frame(&text);
        prop_assert_eq!(
            fast.is_some(),
            raw.is_some() && !needs_escape(&ch) && !needs_escape(&epoch),
            "{}",
            text
        );
        if let Some(f) = fast {
            prop_assert_eq!(f.position, Some((offset, epoch.as_str())));
        }
    }

    #[test]
    fn mangled_positioned_frames_never_disagree(
        ch in channel(),
        data in json_value(),
        offset in any::<u64>(),
        at in any::<prop::sample::Index>(),
        edit in 0u8..5,
        byte in prop_oneof![Just(b' '), Just(b'}'), Just(b'"'), Just(b','), Just(b'0'), any::<u8>()],
    ) {
        let raw = RawValue::from_string(data.to_string()).unwrap();
        let text = socketcluster_rs_protocol::history::publish_frame_at(&ch, Some(&raw), offset, "Ab3dE6gH");
        let mut bytes = text.into_bytes();
        let i = at.index(bytes.len() + 1);
        match edit {
            0 => bytes.insert(i, byte),
            1 if i < bytes.len() => { bytes.remove(i); }
            2 if i < bytes.len() => bytes[i] = byte,
            3 => bytes.truncate(i),
            _ => bytes.extend_from_slice(b" \n"),
        }
        if let Ok(text) = String::from_utf8(bytes) {
            check_agrees(&text)?;
        }
    }

    #[test]
    fn mangled_frames_never_disagree(
        ch in channel(),
        data in json_value(),
        at in any::<prop::sample::Index>(),
        edit in 0u8..5,
        byte in prop_oneof![Just(b' '), Just(b'}'), Just(b'"'), Just(b','), Just(b'\\'), any::<u8>()],
    ) {
        let raw = RawValue::from_string(data.to_string()).unwrap();
        let text = reserved::publish_frame(&ch, Some(&raw));
        let mut bytes = text.into_bytes();
        let i = at.index(bytes.len() + 1);
        match edit {
            0 => bytes.insert(i, byte),
            1 if i < bytes.len() => { bytes.remove(i); }
            2 if i < bytes.len() => bytes[i] = byte,
            3 => bytes.truncate(i),
            _ => bytes.extend_from_slice(b" \n"),
        }
        if let Ok(text) = String::from_utf8(bytes) {
            check_agrees(&text)?;
        }
    }
}

#[test]
fn shapes_the_fast_path_leaves_to_the_general_path() {
    let accepted = r##"{"event":"#publish","data":{"channel":"a/b","data":{"t":1,"p":"x"}}}"##;
    let f = reserved::parse_publish_frame(accepted).expect("canonical frame");
    assert_eq!((f.channel, f.data.get()), ("a/b", r#"{"t":1,"p":"x"}"#));
    let ws = "{\"event\":\"#publish\",\"data\":{\"channel\":\"a\",\"data\": [1, 2] } }\n";
    assert_eq!(
        reserved::parse_publish_frame(ws).unwrap().data.get(),
        "[1, 2]"
    );
    for other in [
        // absent data, escapes, extra keys, other key order, a cid, trailing garbage,
        // invalid data, leading whitespace
        r##"{"event":"#publish","data":{"channel":"a"}}"##,
        r##"{"event":"#publish","data":{"channel":"a\"b","data":1}}"##,
        r##"{"event":"#publish","data":{"channel":"a","data":1,"x":2}}"##,
        r##"{"event":"#publish","data":{"data":1,"channel":"a"}}"##,
        r##"{"event":"#publish","data":{"channel":"a","data":1},"cid":3}"##,
        r##"{"event":"#publish","data":{"channel":"a","data":1}}x"##,
        r##"{"event":"#publish","data":{"channel":"a","data":tru}}"##,
        r##" {"event":"#publish","data":{"channel":"a","data":1}}"##,
    ] {
        assert!(reserved::parse_publish_frame(other).is_none(), "{other}");
    }
}
