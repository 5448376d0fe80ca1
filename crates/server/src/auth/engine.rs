//! The JWT engine ([`AuthEngine`]): signs and verifies tokens like the JS server (see
//! the module docs of [`super`] for the verifier's errors).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Map, Value};
use socketcluster_rs_protocol::ErrorObject;
use socketcluster_rs_protocol::reserved::TokenField;

use crate::error::{ConfigError, SignError};

use super::Claims;
use super::config::{AuthConfig, AuthKey, JwtAlgorithm, KeyFamily, SignOptions};

/// Lenient base64url decoding, like Node's `Buffer.from(s, 'base64')`.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A verified token.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// The claims.
    pub claims: Claims,
}

/// The JWT engine: signs and verifies tokens like the JS server.
///
/// ```
/// use socketcluster_rs_server::auth::{AuthConfig, AuthEngine, SignOptions};
/// let engine = AuthEngine::new(&AuthConfig::with_secret("testkey")).unwrap();
/// let claims = serde_json::json!({"username": "bob"});
/// let token = engine.sign(claims.as_object().unwrap().clone(), &SignOptions::default()).unwrap();
/// let verified = engine.verify(&token).unwrap();
/// assert_eq!(verified.claims["username"], "bob");
/// assert_eq!(verified.claims["exp"].as_u64().unwrap() - verified.claims["iat"].as_u64().unwrap(), 86400);
/// ```
pub struct AuthEngine {
    sign_key: EncodingKey,
    verify_key: DecodingKey,
    sign_alg: JwtAlgorithm,
    verify_algs: Vec<JwtAlgorithm>,
    default_expiry: u64,
    clock_tolerance: u64,
    random_key: bool,
}

impl fmt::Debug for AuthEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEngine")
            .field("sign_alg", &self.sign_alg)
            .field("verify_algs", &self.verify_algs)
            .field("default_expiry", &self.default_expiry)
            .finish_non_exhaustive()
    }
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    let mut reader = pem;
    match rustls_pemfile::read_one(&mut reader) {
        Ok(Some(item)) => match item {
            rustls_pemfile::Item::Pkcs1Key(k) => k.secret_pkcs1_der().to_vec(),
            rustls_pemfile::Item::Pkcs8Key(k) => k.secret_pkcs8_der().to_vec(),
            rustls_pemfile::Item::Sec1Key(k) => k.secret_sec1_der().to_vec(),
            rustls_pemfile::Item::SubjectPublicKeyInfo(k) => k.as_ref().to_vec(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// OID of the NIST P-384 curve (1.3.132.0.34), DER-encoded.
const OID_P384: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

impl AuthEngine {
    /// Build the engine from the configuration.
    pub fn new(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let (sign_key, verify_key, family, inferred, random_key) = match &cfg.key {
            AuthKey::Random => {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                tracing::warn!(
                    "no auth key configured: using a random key; tokens issued now will NOT be \
                     accepted after a restart or by other server processes (configure an auth key)"
                );
                let sign = EncodingKey::from_secret(hex.as_bytes())
                    .map_err(|e| ConfigError::Auth(e.to_string()))?;
                let verify = DecodingKey::from_secret(hex.as_bytes())
                    .map_err(|e| ConfigError::Auth(e.to_string()))?;
                (sign, verify, KeyFamily::Secret, JwtAlgorithm::HS256, true)
            }
            AuthKey::Secret(s) => {
                if s.is_empty() {
                    return Err(ConfigError::Auth("the auth key must not be empty".into()));
                }
                let sign =
                    EncodingKey::from_secret(s).map_err(|e| ConfigError::Auth(e.to_string()))?;
                let verify =
                    DecodingKey::from_secret(s).map_err(|e| ConfigError::Auth(e.to_string()))?;
                (sign, verify, KeyFamily::Secret, JwtAlgorithm::HS256, false)
            }
            AuthKey::Pem {
                private_key,
                public_key,
            } => {
                if let (Ok(sign), Ok(verify)) = (
                    EncodingKey::from_rsa_pem(private_key),
                    DecodingKey::from_rsa_pem(public_key),
                ) {
                    (sign, verify, KeyFamily::Rsa, JwtAlgorithm::RS256, false)
                } else if let (Ok(sign), Ok(verify)) = (
                    EncodingKey::from_ec_pem(private_key),
                    DecodingKey::from_ec_pem(public_key),
                ) {
                    let alg = if contains(&pem_der(public_key), &OID_P384) {
                        JwtAlgorithm::ES384
                    } else {
                        JwtAlgorithm::ES256
                    };
                    (sign, verify, KeyFamily::Ec, alg, false)
                } else {
                    return Err(ConfigError::Auth(
                        "the auth key pair must be RSA or EC (P-256/P-384) keys in PEM; the \
                         private key in PKCS#8 (or PKCS#1 for RSA)"
                            .into(),
                    ));
                }
            }
        };
        let sign_alg = cfg.algorithm.unwrap_or(inferred);
        if sign_alg.family() != family {
            return Err(ConfigError::Auth(format!(
                "algorithm {sign_alg} does not match the configured key type"
            )));
        }
        let verify_algs = match (&cfg.verify_algorithms, cfg.algorithm, family) {
            (Some(list), _, _) => list.clone(),
            (None, Some(a), _) => vec![a],
            (None, None, KeyFamily::Secret) => {
                vec![
                    JwtAlgorithm::HS256,
                    JwtAlgorithm::HS384,
                    JwtAlgorithm::HS512,
                ]
            }
            (None, None, _) => vec![sign_alg],
        };
        if verify_algs.is_empty() {
            return Err(ConfigError::Auth(
                "verify_algorithms must not be empty".into(),
            ));
        }
        if let Some(bad) = verify_algs.iter().find(|a| a.family() != family) {
            return Err(ConfigError::Auth(format!(
                "verify algorithm {bad} does not match the configured key type \
                 (key/algorithm confusion is refused)"
            )));
        }
        Ok(AuthEngine {
            sign_key,
            verify_key,
            sign_alg,
            verify_algs,
            default_expiry: cfg.default_expiry,
            clock_tolerance: cfg.clock_tolerance,
            random_key,
        })
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.sign_alg
    }

    /// Whether the key was generated at random (no key configured).
    pub fn has_random_key(&self) -> bool {
        self.random_key
    }

    /// Default token lifetime in seconds.
    pub fn default_expiry(&self) -> u64 {
        self.default_expiry
    }

    /// Sign `claims` like `socket.setAuthToken` in the JS server: the claims keep their
    /// order, `iat` (now, unless present) and `exp` (`iat + expires_in`, unless present)
    /// are appended. Header `{"alg":..,"typ":"JWT"}`.
    pub fn sign(&self, claims: Claims, options: &SignOptions) -> Result<String, SignError> {
        self.sign_at(claims, options, now_ms()).map(|(t, _)| t)
    }

    /// Sign and also return the signed claims (with `iat`/`exp`).
    pub(crate) fn sign_claims(
        &self,
        claims: Claims,
        options: &SignOptions,
    ) -> Result<(String, Claims), SignError> {
        self.sign_at(claims, options, now_ms())
    }

    pub(crate) fn sign_at(
        &self,
        mut claims: Claims,
        options: &SignOptions,
        now_ms: u64,
    ) -> Result<(String, Claims), SignError> {
        for key in ["iat", "exp", "nbf"] {
            if let Some(v) = claims.get(key)
                && !v.is_number()
            {
                return Err(SignError(format!(
                    "\"{key}\" should be a number of seconds"
                )));
            }
        }
        let iat = match claims.get("iat").and_then(Value::as_f64) {
            Some(v) if v != 0.0 => v,
            _ => {
                let now = (now_ms / 1000) as f64;
                claims.insert("iat".into(), Value::from(now_ms / 1000));
                now
            }
        };
        if !claims.contains_key("exp") {
            let expires_in = options.expires_in.unwrap_or(self.default_expiry);
            let exp = iat + expires_in as f64;
            let exp_value = if exp.fract() == 0.0 && exp < 9.0e15 {
                Value::from(exp as u64)
            } else {
                serde_json::Number::from_f64(exp)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            };
            claims.insert("exp".into(), exp_value);
        }
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.sign_alg.as_str());
        let payload = serde_json::to_string(&claims).map_err(|e| SignError(e.to_string()))?;
        let mut message = URL_SAFE_NO_PAD.encode(header.as_bytes());
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(payload.as_bytes()));
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.sign_key, self.sign_alg.to_jwt())
                .map_err(|e| SignError(format!("failed to sign the auth token: {e}")))?;
        message.push('.');
        message.push_str(&sig);
        Ok((message, claims))
    }

    /// Verify a signed token with the JS verifier's rules and messages (see the module
    /// docs). The error is the dehydrated auth error, including `isBadToken`.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, Box<ErrorObject>> {
        let result = self.verify_at(token, now_ms());
        if let Err(e) = &result {
            crate::metrics::auth_failure(e.name.as_str());
        }
        result
    }

    pub(crate) fn verify_at(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<VerifiedToken, Box<ErrorObject>> {
        if token.is_empty() {
            return Err(binvalid("jwt must be provided"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(binvalid("jwt malformed"));
        }
        let b64ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !b64ok(parts[0]) || !b64ok(parts[1]) || !(parts[2].is_empty() || b64ok(parts[2])) {
            return Err(binvalid("invalid token"));
        }
        let header: Map<String, Value> = match B64_LENIENT
            .decode(parts[0])
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(Value::Object(m)) => m,
            _ => return Err(binvalid("invalid token")),
        };
        let claims: Claims = match B64_LENIENT
            .decode(parts[1])
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(Value::Object(m)) => m,
            _ => return Err(binvalid("invalid token")),
        };
        if parts[2].trim().is_empty() {
            return Err(binvalid("jwt signature is required"));
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| JwtAlgorithm::ALL.iter().copied().find(|x| x.as_str() == a));
        let Some(alg) = alg.filter(|a| self.verify_algs.contains(a)) else {
            return Err(binvalid("invalid algorithm"));
        };
        let signed_len = parts[0].len() + 1 + parts[1].len();
        let message = &token.as_bytes()[..signed_len];
        match jsonwebtoken::crypto::verify(parts[2], message, &self.verify_key, alg.to_jwt()) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(binvalid("invalid signature")),
        }
        let now_s = now_ms / 1000;
        let tol = self.clock_tolerance as f64;
        if let Some(nbf) = claims.get("nbf") {
            let Some(nbf) = nbf.as_f64() else {
                return Err(binvalid("invalid nbf value"));
            };
            if nbf > now_s as f64 + tol {
                return Err(Box::new(
                    ErrorObject::new("AuthTokenNotBeforeError", "jwt not active")
                        .with("date", iso_date_from_ms(nbf * 1000.0))
                        .with("isBadToken", false),
                ));
            }
        }
        if let Some(exp) = claims.get("exp") {
            let Some(exp) = exp.as_f64() else {
                return Err(binvalid("invalid exp value"));
            };
            if now_s as f64 >= exp + tol {
                return Err(Box::new(
                    ErrorObject::new("AuthTokenExpiredError", "jwt expired")
                        .with("expiry", iso_date_from_ms(exp * 1000.0))
                        .with("isBadToken", true),
                ));
            }
        }
        Ok(VerifiedToken { claims })
    }

    /// Verify a token as found in `#handshake`/`#authenticate` data.
    pub(crate) fn verify_field(&self, field: &TokenField) -> VerifyOutcome {
        match field {
            TokenField::Absent => VerifyOutcome {
                signed: None,
                result: Err(invalid("jwt must be provided")),
            },
            TokenField::NotAString => VerifyOutcome {
                // A token was supplied, so failures are reported (JS `signedAuthToken != null`).
                signed: Some(String::new()),
                result: Err(ErrorObject::new(
                    "AuthTokenError",
                    "Invalid token format - Token must be a string",
                )
                .with("isBadToken", true)),
            },
            TokenField::Token(t) => VerifyOutcome {
                signed: Some(t.clone()),
                result: self.verify(t).map(|v| v.claims).map_err(|e| *e),
            },
        }
    }
}

/// The result of verifying the token supplied by a client.
#[derive(Debug, Clone)]
pub(crate) struct VerifyOutcome {
    /// The supplied token (`None` when no token was supplied).
    pub(crate) signed: Option<String>,
    pub(crate) result: Result<Claims, ErrorObject>,
}

fn invalid(msg: &str) -> ErrorObject {
    ErrorObject::new("AuthTokenInvalidError", msg).with("isBadToken", true)
}

fn binvalid(msg: &str) -> Box<ErrorObject> {
    Box::new(invalid(msg))
}

/// Whether an auth error is a "bad token" (`isBadToken: true`).
pub(crate) fn is_bad_token(e: &ErrorObject) -> bool {
    e.is_bad_token() == Some(true)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `new Date(ms).toISOString()` (e.g. `2026-11-29T15:21:10.000Z`).
pub(crate) fn iso_date_from_ms(ms: f64) -> String {
    if !ms.is_finite() || ms.abs() > 8.64e15 {
        return "Invalid Date".to_owned();
    }
    let ms = ms.trunc() as i64;
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (h, m, s, milli) = (
        rem / 3_600_000,
        (rem / 60_000) % 60,
        (rem / 1000) % 60,
        rem % 1000,
    );
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    if (0..=9999).contains(&y) {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
    } else {
        let sign = if y < 0 { '-' } else { '+' };
        format!(
            "{sign}{:06}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z",
            y.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine() -> AuthEngine {
        AuthEngine::new(&AuthConfig::with_secret("testkey")).unwrap()
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn iso_dates_match_javascript() {
        assert_eq!(iso_date_from_ms(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso_date_from_ms(1_795_965_670_000.0),
            "2026-11-29T15:21:10.000Z"
        );
        assert_eq!(
            iso_date_from_ms(951_782_400_123.0),
            "2000-02-29T00:00:00.123Z"
        );
    }

    #[test]
    fn signs_exactly_like_the_captured_js_token() {
        // docs/PROTOCOL.md 11.2: payload {"username":"bob","iat":1795965663,"exp":1796052063}
        let token = engine()
            .sign_at(
                claims(json!({"username": "bob"})),
                &SignOptions::default(),
                1_795_965_663_000,
            )
            .unwrap()
            .0;
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImJvYiIsImlhdCI6MTc5NTk2NTY2MywiZXhwIjoxNzk2MDUyMDYzfQ.PzqKvgfDkLVWLCj01ZifVnOOLS66QeuZtr4jrTPyl6k"
        );
    }

    #[test]
    fn verifies_captured_js_token_and_reports_expiry_like_js() {
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImJvYiIsImlhdCI6MTc5NTk2NTY4MCwiZXhwIjoxNzk1OTY5MjgwfQ.iYPZjLowxSaBnOk5AOnWV6Sm1EFckA0OlBIrH58ULAo";
        let e = engine();
        let ok = e.verify_at(t, 1_795_965_700_000).unwrap();
        assert_eq!(ok.claims["username"], "bob");
        // now == exp is already expired (JS: clockTimestamp >= exp)
        let err = e.verify_at(t, 1_795_969_280_000).unwrap_err();
        assert_eq!(
            serde_json::to_string(&err.to_value()).unwrap(),
            r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2026-11-29T16:21:20.000Z","isBadToken":true}"#
        );
    }

    #[test]
    fn error_messages_follow_the_js_verifier() {
        let e = engine();
        let msg = |t: &str| e.verify_at(t, 1_795_965_700_000).unwrap_err().message;
        assert_eq!(msg(""), "jwt must be provided");
        assert_eq!(msg("x"), "jwt malformed");
        assert_eq!(msg("a.b"), "jwt malformed");
        assert_eq!(msg("not.a.jwt"), "invalid token");
        // alg none, empty signature
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"username":"eve"}"#)
        );
        assert_eq!(msg(&none), "jwt signature is required");
        let none_sig = format!("{}sig", none);
        assert_eq!(msg(&none_sig), "invalid algorithm");
        // wrong key
        let other = AuthEngine::new(&AuthConfig::with_secret("otherkey")).unwrap();
        let t = other
            .sign(claims(json!({"u": 1})), &SignOptions::default())
            .unwrap();
        assert_eq!(msg(&t), "invalid signature");
        // not before
        let nbf = e
            .sign_at(
                claims(json!({"nbf": 1_795_965_800u64})),
                &SignOptions::default(),
                1_795_965_700_000,
            )
            .unwrap()
            .0;
        let err = e.verify_at(&nbf, 1_795_965_700_000).unwrap_err();
        assert_eq!(err.name.as_str(), "AuthTokenNotBeforeError");
        assert_eq!(err.is_bad_token(), Some(false));
        assert_eq!(
            err.get("date").and_then(Value::as_str),
            Some("2026-11-29T15:23:20.000Z")
        );
    }

    #[test]
    fn hs512_is_accepted_by_default_but_not_when_pinned() {
        let mut cfg = AuthConfig::with_secret("testkey");
        cfg.algorithm = Some(JwtAlgorithm::HS512);
        let hs512 = AuthEngine::new(&cfg).unwrap();
        let t = hs512
            .sign(claims(json!({"a": 1})), &SignOptions::default())
            .unwrap();
        assert!(engine().verify(&t).is_ok());
        let mut pinned = AuthConfig::with_secret("testkey");
        pinned.algorithm = Some(JwtAlgorithm::HS256);
        let e = AuthEngine::new(&pinned).unwrap();
        assert_eq!(e.verify(&t).unwrap_err().message, "invalid algorithm");
    }

    #[test]
    fn claim_exp_wins_over_expires_in() {
        let e = engine();
        let t = e
            .sign_at(
                claims(json!({"exp": 2_000_000_000u64})),
                &SignOptions::default().expires_in(5),
                1_795_965_700_000,
            )
            .unwrap()
            .0;
        let c = e.verify_at(&t, 1_795_965_700_000).unwrap().claims;
        assert_eq!(c["exp"], 2_000_000_000u64);
        let keys: Vec<&String> = c.keys().collect();
        assert_eq!(keys, ["exp", "iat"]);
        assert!(
            e.sign(claims(json!({"iat": "x"})), &SignOptions::default())
                .is_err()
        );
    }

    #[test]
    fn refuses_mixed_key_families() {
        let mut cfg = AuthConfig::with_secret("k");
        cfg.verify_algorithms = Some(vec![JwtAlgorithm::RS256]);
        assert!(AuthEngine::new(&cfg).is_err());
        let mut cfg = AuthConfig::with_secret("k");
        cfg.algorithm = Some(JwtAlgorithm::ES256);
        assert!(AuthEngine::new(&cfg).is_err());
    }
}
