//! JSON Web Tokens for tests: signed the way the JS servers sign them (HS256).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// An HS256 JWT over `claims` with the HMAC secret `key` (its UTF-8 bytes, as the JS
/// servers use `authKey`). No claim is added: put `exp`/`iat` in `claims` yourself
/// (see [`unix_now`]).
///
/// # Panics
///
/// When `claims` cannot be serialised (it always can for a JSON object).
pub fn sign_hs256(claims: &Value, key: &str) -> String {
    let key = EncodingKey::from_secret(key.as_bytes()).expect("any byte string is an HMAC key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
        .expect("HS256 signing of JSON claims cannot fail")
}

/// The payload of a JWT, decoded without verifying anything (as the JS client does);
/// `None` when there is no second segment or it is not base64url JSON.
pub fn jwt_payload(token: &str) -> Option<Value> {
    let segment = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Seconds since the Unix epoch (for `iat`/`exp`/`nbf` claims).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signs_a_verifiable_hs256_token() {
        let claims = json!({"username": "bob", "exp": unix_now() + 3600});
        let token = sign_hs256(&claims, "testkey");
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(jwt_payload(&token), Some(claims.clone()));

        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"testkey").unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(decoded.claims, claims);
        assert!(
            jsonwebtoken::decode::<Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"otherkey").unwrap(),
                &validation,
            )
            .is_err()
        );
    }

    #[test]
    fn payload_of_garbage_is_none() {
        assert_eq!(jwt_payload("abc"), None);
        assert_eq!(jwt_payload("a.!!!.c"), None);
    }
}
