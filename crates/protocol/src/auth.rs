//! Client-side view of a token (docs/PROTOCOL.md 5.7): the payload is base64url-decoded from
//! the middle JWT segment, **without** verifying the signature.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Decode a JWT's payload as the JS client does: `None` when the token has no second
/// `.`-separated segment or it is not base64url; the decoded string when it is not JSON.
///
/// ```
/// use socketcluster_rs_protocol::auth::decode_token_payload;
/// assert_eq!(decode_token_payload("abc"), None);
/// assert_eq!(decode_token_payload("a.bm90anNvbg.c"), Some(serde_json::json!("notjson")));
/// ```
pub fn decode_token_payload(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    parts.next()?;
    let payload = parts.next()?;
    let trimmed = payload.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(trimmed).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    Some(serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned())))
}

/// The `exp` claim (seconds since the epoch) of a token's decoded payload.
pub fn token_expiry(token: &str) -> Option<f64> {
    decode_token_payload(token)?.get("exp")?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_captured_token() {
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImJvYiIsImlhdCI6MTc5NTk2NTY2MywiZXhwIjoxNzk2MDUyMDYzfQ.PzqKvgfDkLVWLCj01ZifVnOOLS66QeuZtr4jrTPyl6k";
        let p = decode_token_payload(t).unwrap();
        assert_eq!(p["username"], "bob");
        assert_eq!(token_expiry(t), Some(1796052063.0));
    }
}
