//! `socketcluster token`: sign a token the way `socketcluster-server`'s `setAuthToken` does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// Arguments of `socketcluster token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// HMAC key (or PEM private key text for RS/ES/PS algorithms).
    #[arg(long, env = "SOCKETCLUSTER_AUTH_KEY", conflicts_with = "auth_key_file")]
    auth_key: Option<String>,
    /// File holding the key; a trailing newline is ignored.
    #[arg(long)]
    auth_key_file: Option<PathBuf>,
    /// Claims as a JSON object.
    #[arg(long, default_value = "{}")]
    claims: String,
    /// Lifetime in seconds (`exp` = `iat` + this) unless the claims carry `exp`.
    #[arg(long, default_value_t = 86_400)]
    expires_in: u64,
    /// Signing algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384.
    #[arg(long, default_value = "HS256")]
    algorithm: String,
}

/// Errors of `socketcluster token`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("one of --auth-key or --auth-key-file is required")]
    NoKey,
    #[error("cannot read --auth-key-file {0}: {1}")]
    KeyFile(PathBuf, std::io::Error),
    #[error("--claims must be a JSON object: {0}")]
    Claims(String),
    #[error("unknown --algorithm {0}")]
    Algorithm(String),
    #[error("invalid key for {0:?}: {1}")]
    Key(Algorithm, jsonwebtoken::errors::Error),
    #[error("signing failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

pub(crate) fn key_text(key: Option<&str>, file: Option<&PathBuf>) -> Result<String, TokenError> {
    match (key, file) {
        (Some(k), _) => Ok(k.to_owned()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| TokenError::KeyFile(f.clone(), e))?;
            Ok(text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text)
                .to_owned())
        }
        (None, None) => Err(TokenError::NoKey),
    }
}

/// Sign `claims` like the JS server: the caller's claims first, then `iat`, then `exp`
/// (`iat` + `expires_in`) unless the claims already have `exp` (docs/PROTOCOL.md 5.2).
pub(crate) fn sign(
    claims: Map<String, Value>,
    key: &str,
    algorithm: &str,
    expires_in: u64,
) -> Result<String, TokenError> {
    let alg: Algorithm = algorithm
        .parse()
        .map_err(|_| TokenError::Algorithm(algorithm.to_owned()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut payload = claims;
    let has_exp = payload.contains_key("exp");
    payload.shift_remove("iat");
    payload.insert("iat".into(), Value::from(now));
    if has_exp {
        let exp = payload.shift_remove("exp").unwrap_or(Value::Null);
        payload.insert("exp".into(), exp);
    } else {
        payload.insert("exp".into(), Value::from(now + expires_in));
    }
    let encoding_key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key.as_bytes()).map_err(|e| TokenError::Key(alg, e))?
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            EncodingKey::from_rsa_pem(key.as_bytes()).map_err(|e| TokenError::Key(alg, e))?
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(key.as_bytes()).map_err(|e| TokenError::Key(alg, e))?
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(key.as_bytes()).map_err(|e| TokenError::Key(alg, e))?
        }
        _ => return Err(TokenError::Algorithm(algorithm.to_owned())),
    };
    jsonwebtoken::encode(&Header::new(alg), &Value::Object(payload), &encoding_key)
        .map_err(TokenError::Sign)
}

pub(crate) fn run(args: &TokenArgs) -> Result<ExitCode, TokenError> {
    let key = key_text(args.auth_key.as_deref(), args.auth_key_file.as_ref())?;
    let claims = match serde_json::from_str::<Value>(&args.claims) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return Err(TokenError::Claims(format!("got {other}"))),
        Err(e) => return Err(TokenError::Claims(e.to_string())),
    };
    let token = sign(claims, &key, &args.algorithm, args.expires_in)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_order_is_claims_iat_exp() {
        let mut claims = Map::new();
        claims.insert("username".into(), "bob".into());
        let t = sign(claims, "testkey", "HS256", 100).unwrap();
        let payload = socketcluster_rs_protocol::auth::decode_token_payload(&t).unwrap();
        let keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["username", "iat", "exp"]);
        assert_eq!(
            payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(),
            100
        );
    }

    #[test]
    fn claim_exp_wins_over_expires_in() {
        let mut claims = Map::new();
        claims.insert("exp".into(), 4_000_000_000u64.into());
        let t = sign(claims, "k", "HS256", 100).unwrap();
        let payload = socketcluster_rs_protocol::auth::decode_token_payload(&t).unwrap();
        assert_eq!(payload["exp"], 4_000_000_000u64);
    }
}
