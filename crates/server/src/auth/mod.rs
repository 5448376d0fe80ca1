//! JWT signing and verification that behaves like the JS server's `ag-auth` engine
//! (which wraps `jsonwebtoken` 9 for Node), docs/PROTOCOL.md 5.
//!
//! Verification follows the JS verifier step by step so that the same token yields the
//! same error message on the wire:
//!
//! | situation | name | message |
//! |---|---|---|
//! | no token / empty token | `AuthTokenInvalidError` | `jwt must be provided` |
//! | token is not a string | `AuthTokenError` | `Invalid token format - Token must be a string` |
//! | not three `.`-separated parts | `AuthTokenInvalidError` | `jwt malformed` |
//! | header or payload not base64url JSON | `AuthTokenInvalidError` | `invalid token` |
//! | empty signature part (e.g. `alg: none`) | `AuthTokenInvalidError` | `jwt signature is required` |
//! | `alg` not accepted (includes `none` and key/algorithm confusion) | `AuthTokenInvalidError` | `invalid algorithm` |
//! | signature mismatch | `AuthTokenInvalidError` | `invalid signature` |
//! | `nbf` not a number / `exp` not a number | `AuthTokenInvalidError` | `invalid nbf value` / `invalid exp value` |
//! | `nbf` in the future | `AuthTokenNotBeforeError` (`date`, `isBadToken:false`) | `jwt not active` |
//! | `now >= exp` | `AuthTokenExpiredError` (`expiry`, `isBadToken:true`) | `jwt expired` |
//!
//! No clock leeway is applied unless [`AuthConfig::clock_tolerance`] is set; `exp` is
//! optional (a token without it never expires), `nbf` is checked when present.
//!
//! The signature itself is computed and checked by the `jsonwebtoken` crate (RustCrypto
//! backend); the header and claims handling is ours.

mod config;
mod engine;

use serde_json::{Map, Value};

pub use crate::error::SignError;
pub use config::{AuthConfig, AuthKey, DeauthenticateOptions, JwtAlgorithm, SignOptions};
pub use engine::{AuthEngine, VerifiedToken};
pub(crate) use engine::{VerifyOutcome, is_bad_token, now_ms};

/// The JWT claims of a verified token (a JSON object).
pub type Claims = Map<String, Value>;
