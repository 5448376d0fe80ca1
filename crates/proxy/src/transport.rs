//! The HTTP/1.1 client every hook posts with: one keep-alive connection pool per
//! endpoint (plain TCP or rustls), HMAC-SHA256 request signatures, a per-hook deadline
//! and concurrency limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::HookConfig;
use crate::error::{ConfigError, ProxyError};

/// Header carrying the request time in Unix milliseconds (signed together with the body).
pub const TIMESTAMP_HEADER: &str = "x-socketcluster-timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "x-socketcluster-signature";
/// Largest backend answer read (larger answers are a `ProxyBadResponseError`).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Computes the signature header value for a timestamp and a body, the way the backend
/// must recompute it: `sha256=` + lowercase hex of HMAC-SHA256 over
/// `timestamp + "." + body` keyed with the shared secret.
///
/// ```
/// let sig = socketcluster_rs_proxy::sign(b"secret", "1700000000000", br#"{"v":1}"#);
/// assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
/// ```
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

type Sender = SendRequest<Full<Bytes>>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection pool and limits for one hook endpoint.
pub(crate) struct Endpoint {
    uri: Uri,
    host: String,
    port: u16,
    host_header: HeaderValue,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    timeout: Duration,
    permits: Arc<Semaphore>,
    secret: Option<Arc<[u8]>>,
}

impl Endpoint {
    pub(crate) fn new(
        hook: &HookConfig,
        secret: Option<Arc<[u8]>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Endpoint, ConfigError> {
        let url = url::Url::parse(&hook.url).map_err(|e| ConfigError::Url {
            url: hook.url.clone(),
            message: e.to_string(),
        })?;
        let secure = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(ConfigError::Url {
                    url: hook.url.clone(),
                    message: format!("scheme {other} is not http or https"),
                });
            }
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(ConfigError::Url {
                url: hook.url.clone(),
                message: "no host".into(),
            });
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let uri: Uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| ConfigError::Url {
                url: hook.url.clone(),
                message: e.to_string(),
            })?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let host_header = HeaderValue::from_str(&host_header).map_err(|e| ConfigError::Url {
            url: hook.url.clone(),
            message: e.to_string(),
        })?;
        let tls = if secure {
            let config = tls.unwrap_or_else(default_tls);
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name =
                rustls::pki_types::ServerName::try_from(bare).map_err(|e| ConfigError::Url {
                    url: hook.url.clone(),
                    message: e.to_string(),
                })?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        if hook.max_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrency must be at least 1".into(),
            ));
        }
        Ok(Endpoint {
            uri,
            host,
            port,
            host_header,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle: hook.max_concurrency.min(256),
            idle_timeout: hook.pool_idle_timeout,
            timeout: hook.timeout,
            permits: Arc::new(Semaphore::new(hook.max_concurrency)),
            secret,
        })
    }

    /// POST a JSON body and return the answer's body. Fails at once with
    /// [`ProxyError::Overloaded`] when the hook's concurrency limit is reached, and with
    /// [`ProxyError::Timeout`] when the whole exchange takes longer than the hook timeout.
    pub(crate) async fn post(&self, body: Vec<u8>) -> Result<Bytes, ProxyError> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            return Err(ProxyError::Overloaded);
        };
        let body = Bytes::from(body);
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, body: Bytes) -> Result<Bytes, ProxyError> {
        // A pooled connection the backend closed meanwhile fails before the request is
        // written ("canceled"): such a request is retried once on a fresh connection.
        // A pooled connection becomes ready a moment after its last answer was read.
        let pooled = match self.take_idle() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let (mut sender, pooled) = match pooled {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        let result = match sender.send_request(self.request(body.clone())).await {
            // Only when the request was never written: a POST is not idempotent.
            Err(e) if pooled && e.is_canceled() => {
                tracing::debug!(error = %e, "pooled backend connection was closed; retrying on a new one");
                sender = self.connect().await?;
                sender.send_request(self.request(body)).await
            }
            r => r,
        };
        let response = result.map_err(|e| ProxyError::Unavailable(e.to_string()))?;
        let status = response.status();
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ProxyError::BadResponse(format!("reading the answer failed: {e}")))?
            .to_bytes();
        self.put_idle(sender);
        if status != StatusCode::OK {
            return Err(ProxyError::BadResponse(format!("HTTP status {status}")));
        }
        Ok(collected)
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut b = Request::post(self.uri.clone())
            .header(http::header::HOST, self.host_header.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "socketcluster-rs-proxy");
        if let Some(secret) = &self.secret {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
                .to_string();
            b = b
                .header(SIGNATURE_HEADER, sign(secret, &ts, &body))
                .header(TIMESTAMP_HEADER, ts);
        }
        b.body(Full::new(body))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.idle_timeout && !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Sender, ProxyError> {
        let unavailable = |e: std::io::Error| ProxyError::Unavailable(e.to_string());
        let tcp = TcpStream::connect((
            self.host.trim_start_matches('[').trim_end_matches(']'),
            self.port,
        ))
        .await
        .map_err(unavailable)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(unavailable)?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<T>(io: T) -> Result<Sender, ProxyError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ProxyError::Unavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend connection closed");
        }
    });
    Ok(sender)
}

fn default_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    }),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 style check computed independently:
        // HMAC-SHA256("key", "1.{}")
        let s = sign(b"key", "1", b"{}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        let expect = ring::hmac::sign(&key, b"1.{}");
        let hex: String = expect.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("sha256={hex}"));
        assert_ne!(sign(b"key", "2", b"{}"), s);
    }
}
