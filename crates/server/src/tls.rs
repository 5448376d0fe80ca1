//! TLS for the built-in listener (`wss://`).
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use socketcluster_rs_server::{ServerConfig, tls};
//! let tls = tls::server_config_from_pem_files("cert.pem", "key.pem")?;
//! let config = ServerConfig::default().with_tls(Some(tls));
//! # let _ = config; Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::error::ConfigError;

/// Build a rustls server configuration (ring provider, TLS 1.2 and 1.3, no client
/// auth, ALPN `http/1.1`) from a PEM certificate chain and a PEM private key.
pub fn server_config_from_pem(
    cert_chain_pem: &[u8],
    private_key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_chain_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::Tls("no certificate found in the PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut &private_key_pem[..])
        .map_err(|e| ConfigError::Tls(format!("bad private key PEM: {e}")))?
        .ok_or_else(|| ConfigError::Tls("no private key found in the PEM".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config_from_pem`] reading two files.
pub fn server_config_from_pem_files(
    cert_chain: impl AsRef<Path>,
    private_key: impl AsRef<Path>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs = std::fs::read(cert_chain.as_ref())
        .map_err(|e| ConfigError::Tls(format!("{}: {e}", cert_chain.as_ref().display())))?;
    let key = std::fs::read(private_key.as_ref())
        .map_err(|e| ConfigError::Tls(format!("{}: {e}", private_key.as_ref().display())))?;
    server_config_from_pem(&certs, &key)
}
