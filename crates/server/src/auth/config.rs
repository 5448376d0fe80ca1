//! JWT configuration: key material ([`AuthKey`]), algorithms ([`JwtAlgorithm`]) and
//! settings ([`AuthConfig`]), and the options of signing and deauthenticating.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::Algorithm;

use crate::error::ConfigError;

/// A JWT signature algorithm supported by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 (the JS default).
    HS256,
    /// HMAC SHA-384.
    HS384,
    /// HMAC SHA-512.
    HS512,
    /// RSA PKCS#1 v1.5 SHA-256.
    RS256,
    /// RSA PKCS#1 v1.5 SHA-384.
    RS384,
    /// RSA PKCS#1 v1.5 SHA-512.
    RS512,
    /// RSA-PSS SHA-256.
    PS256,
    /// RSA-PSS SHA-384.
    PS384,
    /// RSA-PSS SHA-512.
    PS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
}

impl JwtAlgorithm {
    /// The JOSE name (`"HS256"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
        }
    }

    pub(super) fn to_jwt(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::RS384 => Algorithm::RS384,
            JwtAlgorithm::RS512 => Algorithm::RS512,
            JwtAlgorithm::PS256 => Algorithm::PS256,
            JwtAlgorithm::PS384 => Algorithm::PS384,
            JwtAlgorithm::PS512 => Algorithm::PS512,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
        }
    }

    pub(super) fn family(self) -> KeyFamily {
        match self {
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => KeyFamily::Secret,
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => KeyFamily::Ec,
            _ => KeyFamily::Rsa,
        }
    }

    pub(super) const ALL: [JwtAlgorithm; 11] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
    ];
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JwtAlgorithm::ALL
            .iter()
            .copied()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ConfigError::Auth(format!("unsupported JWT algorithm {s:?}")))
    }
}

/// The kind of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyFamily {
    Secret,
    Rsa,
    Ec,
}

/// Where the JWT keys come from (`authKey`, `authPrivateKey`/`authPublicKey`).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum AuthKey {
    /// A random 64-hex-character secret generated at start-up, exactly as the JS server
    /// does when no key is configured. Tokens do **not** survive a restart and are not
    /// accepted by other server processes; a loud warning is logged.
    #[default]
    Random,
    /// An HMAC secret: the bytes are used as given (a hex-looking key is *not* decoded),
    /// like the JS `authKey` string.
    Secret(Vec<u8>),
    /// An asymmetric key pair in PEM (RSA or EC; PKCS#8 private key).
    Pem {
        /// Private key used for signing.
        private_key: Vec<u8>,
        /// Public key used for verification.
        public_key: Vec<u8>,
    },
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        match self {
            AuthKey::Random => f.write_str("Random"),
            AuthKey::Secret(_) => f.write_str("Secret(..)"),
            AuthKey::Pem { .. } => f.write_str("Pem { .. }"),
        }
    }
}

impl AuthKey {
    /// An HMAC secret from a string (its UTF-8 bytes).
    pub fn secret(key: impl Into<String>) -> Self {
        AuthKey::Secret(key.into().into_bytes())
    }

    /// An HMAC secret read from a file. One trailing line break (`\n` or `\r\n`) is
    /// removed, everything else is used verbatim.
    pub fn secret_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let mut bytes = std::fs::read(path)?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(AuthKey::Secret(bytes))
    }

    /// A PEM key pair read from two files.
    pub fn pem_files(
        private_key: impl AsRef<Path>,
        public_key: impl AsRef<Path>,
    ) -> std::io::Result<Self> {
        Ok(AuthKey::Pem {
            private_key: std::fs::read(private_key)?,
            public_key: std::fs::read(public_key)?,
        })
    }
}

/// JWT settings (docs/PROTOCOL.md 5.1, JS options `authKey`, `authPrivateKey`,
/// `authPublicKey`, `authAlgorithm`, `authVerifyAlgorithms`, `authDefaultExpiry`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The key material. Default: [`AuthKey::Random`] (JS default, with a warning).
    pub key: AuthKey,
    /// Signing algorithm (JS `authAlgorithm`). Default `None`: HS256 for a secret, and
    /// for a PEM pair the algorithm is inferred from the key (RS256 for RSA, ES256/ES384
    /// for EC) instead of failing like the JS server. When set, it is also the only
    /// algorithm accepted when verifying (unless `verify_algorithms` is set).
    pub algorithm: Option<JwtAlgorithm>,
    /// Accepted algorithms when verifying (JS `authVerifyAlgorithms`). Default `None`:
    /// `[algorithm]` when `algorithm` is set (or inferred from a PEM pair), otherwise the
    /// HMAC family HS256/HS384/HS512 (the JS default for a secret key). `none` is never
    /// accepted, and algorithms of another key family are rejected at start-up.
    pub verify_algorithms: Option<Vec<JwtAlgorithm>>,
    /// Default token lifetime in seconds (JS `authDefaultExpiry`). Default 86400.
    pub default_expiry: u64,
    /// Clock tolerance in seconds for `exp`/`nbf` (JS `clockTolerance`). Default 0.
    pub clock_tolerance: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key: AuthKey::Random,
            algorithm: None,
            verify_algorithms: None,
            default_expiry: 86400,
            clock_tolerance: 0,
        }
    }
}

impl AuthConfig {
    /// HMAC secret configuration with JS defaults for everything else.
    pub fn with_secret(key: impl Into<String>) -> Self {
        AuthConfig {
            key: AuthKey::secret(key),
            ..AuthConfig::default()
        }
    }
}

/// Options of [`crate::Socket::set_auth_token`] / [`AuthEngine::sign`](super::AuthEngine::sign).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SignOptions {
    /// Lifetime in seconds; `None` uses `default_expiry`. Ignored when the claims
    /// already contain `exp` (the claim wins, like the JS server).
    pub expires_in: Option<u64>,
    /// Send `#setAuthToken` as an invoke and fail if the client does not acknowledge it
    /// within the ack timeout (JS `rejectOnFailedDelivery`).
    pub reject_on_failed_delivery: bool,
}

impl SignOptions {
    /// Set `expires_in`.
    pub fn expires_in(mut self, seconds: u64) -> Self {
        self.expires_in = Some(seconds);
        self
    }
    /// Set `reject_on_failed_delivery`.
    pub fn reject_on_failed_delivery(mut self, yes: bool) -> Self {
        self.reject_on_failed_delivery = yes;
        self
    }
}

/// Options of [`crate::Socket::deauthenticate_with`] (JS `socket.deauthenticate(options)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeauthenticateOptions {
    /// Send `#removeAuthToken` as an invoke and fail if the client does not acknowledge
    /// it (JS `rejectOnFailedDelivery`). Default false (a transmit, never fails).
    pub reject_on_failed_delivery: bool,
}

impl DeauthenticateOptions {
    /// Set `reject_on_failed_delivery`.
    pub fn reject_on_failed_delivery(mut self, yes: bool) -> Self {
        self.reject_on_failed_delivery = yes;
        self
    }
}
