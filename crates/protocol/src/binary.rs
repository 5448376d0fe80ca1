//! Binary values inside JSON: `{"base64":true,"data":"<standard base64>"}` (docs/PROTOCOL.md 2.2).
//!
//! The JS codec writes every `Buffer`/`ArrayBuffer` in this shape and does **not** turn
//! it back into bytes on receipt, so neither do we: these helpers are opt-in.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// The JSON shape of a binary value.
pub fn to_value(bytes: &[u8]) -> Value {
    let mut m = serde_json::Map::with_capacity(2);
    m.insert("base64".into(), Value::Bool(true));
    m.insert("data".into(), Value::String(STANDARD.encode(bytes)));
    Value::Object(m)
}

/// The bytes of a value in the binary shape, `None` for anything else.
pub fn from_value(value: &Value) -> Option<Vec<u8>> {
    let m = value.as_object()?;
    if m.get("base64")? != &Value::Bool(true) {
        return None;
    }
    STANDARD.decode(m.get("data")?.as_str()?).ok()
}

/// `encodeBase64` of the JS client: UTF-8 text to standard base64.
pub fn encode_base64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

/// `decodeBase64` of the JS client: standard base64 to UTF-8 text (lossy).
pub fn decode_base64(b64: &str) -> Option<String> {
    STANDARD
        .decode(b64)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_captured_frames() {
        assert_eq!(
            serde_json::to_string(&to_value(&[1, 2, 3])).unwrap(),
            r#"{"base64":true,"data":"AQID"}"#
        );
        assert_eq!(
            from_value(&serde_json::json!({"base64": true, "data": "aGVsbG8gYmluYXJ5"})),
            Some(b"hello binary".to_vec())
        );
        assert_eq!(from_value(&serde_json::json!({"data": "AQID"})), None);
    }

    #[test]
    fn base64_helpers_match_cl_40() {
        assert_eq!(
            encode_base64("This is a string"),
            "VGhpcyBpcyBhIHN0cmluZw=="
        );
        assert_eq!(
            decode_base64("VGhpcyBpcyBhIHN0cmluZw==").unwrap(),
            "This is a string"
        );
    }
}
