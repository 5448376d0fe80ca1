//! Dialing: URL building (docs/PROTOCOL.md 1.1), TLS and the WebSocket upgrade.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::ConnectError;
use crate::options::ClientOptions;
use crate::transport::{BoxedIo, TransportFactory};

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<BoxedIo>>;

/// Read buffer of each WebSocket (tungstenite's default is 128 KiB, zero-filled before
/// every read; SocketCluster frames are small, so 8 KiB reads cost less CPU and memory).
const READ_BUFFER_SIZE: usize = 8 * 1024;
/// Frames are buffered up to this many bytes before being written to the socket (every
/// loop iteration of the connection task flushes anyway).
const WRITE_BUFFER_SIZE: usize = 8 * 1024;

/// The WebSocket configuration of every connection: small buffers, an unbounded write
/// buffer limit (`max_write_buffer_size` must exceed `write_buffer_size` plus the
/// largest message, otherwise big writes fail with `WriteBufferFull`), and tungstenite's
/// default incoming size limits (64 MiB per message, 16 MiB per frame).
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(usize::MAX)
}

/// Everything needed to open a WebSocket, validated once when the client is built.
#[derive(Clone)]
pub(crate) struct Dialer {
    url: String,
    addr: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    transport: Option<TransportFactory>,
    /// `ClientOptions::timestamp_param` when `timestamp_requests` is on.
    timestamp_param: Option<String>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("url", &self.url).finish()
    }
}

/// The final URL: scheme `ws`/`wss` (`http`/`https` accepted), the options' path when
/// the URL has none, the options' query parameters appended.
pub(crate) fn build_url(options: &ClientOptions) -> Result<url::Url, ConnectError> {
    let mut url = url::Url::parse(&options.url)
        .map_err(|e| ConnectError::InvalidUrl(format!("{}: {e}", options.url)))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(ConnectError::InvalidUrl(format!(
                "unsupported scheme {other:?} (expected ws:// or wss://)"
            )));
        }
    };
    if url.scheme() != scheme {
        // `set_scheme` refuses some special-to-special changes; rebuild instead.
        let rest = &options.url[url.scheme().len()..];
        url = url::Url::parse(&format!("{scheme}{rest}"))
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
    }
    if url.host_str().is_none() {
        return Err(ConnectError::InvalidUrl(format!(
            "{}: no host",
            options.url
        )));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(&options.path);
    }
    if !options.query.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in &options.query {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

/// Milliseconds since the Unix epoch (JS `Date.now()`).
fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `url` with `param=<ms>` set (replacing a parameter of that name, like the JS
/// client's `query[timestampParam] = Date.now()`).
fn timestamped(url: &str, param: &str, ms: u128) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != param)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(param, &ms.to_string());
    u.to_string()
}

fn default_tls() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConnectError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl Dialer {
    pub(crate) fn new(options: &ClientOptions) -> Result<Dialer, ConnectError> {
        let url = build_url(options)?;
        let mut headers = Vec::with_capacity(options.headers.len());
        for (k, v) in &options.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ConnectError::InvalidHeader(format!("{k}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ConnectError::InvalidHeader(format!("{k}: {e}")))?;
            headers.push((name, value));
        }
        let tls = if url.scheme() == "wss" {
            Some(match &options.tls_config {
                Some(c) => c.clone(),
                None => default_tls()?,
            })
        } else {
            None
        };
        let host = url.host_str().unwrap_or("localhost").to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(Dialer {
            url: url.to_string(),
            addr: format!("{host}:{port}"),
            headers,
            tls,
            transport: options.transport.clone(),
            timestamp_param: options
                .timestamp_requests
                .then(|| options.timestamp_param.clone()),
        })
    }

    /// The URL dialed.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Open the WebSocket. The error is a human-readable description (the client reports
    /// every such failure as 1006, like the JS client).
    pub(crate) async fn dial(self) -> Result<WsStream, String> {
        let url = match &self.timestamp_param {
            Some(param) => timestamped(&self.url, param, unix_millis()),
            None => self.url.clone(),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        for (k, v) in self.headers {
            request.headers_mut().insert(k, v);
        }
        let connector = match self.tls {
            Some(cfg) => Connector::Rustls(cfg),
            None => Connector::Plain,
        };
        let io: BoxedIo = match &self.transport {
            Some(f) => f().await.map_err(|e| e.to_string())?,
            None => {
                let tcp = TcpStream::connect(&self.addr)
                    .await
                    .map_err(|e| format!("{}: {e}", self.addr))?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
        };
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            io,
            Some(ws_config()),
            Some(connector),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gets_default_path_and_query_in_order() {
        let mut o = ClientOptions::new("ws://127.0.0.1:8000");
        o.query = vec![
            ("token".into(), "abc".into()),
            ("list".into(), "x".into()),
            ("list".into(), "y".into()),
        ];
        assert_eq!(
            build_url(&o).unwrap().as_str(),
            "ws://127.0.0.1:8000/socketcluster/?token=abc&list=x&list=y"
        );
        let o = ClientOptions::new("wss://example.com/custom/");
        assert_eq!(build_url(&o).unwrap().as_str(), "wss://example.com/custom/");
        let o = ClientOptions::new("https://example.com");
        assert_eq!(
            build_url(&o).unwrap().as_str(),
            "wss://example.com/socketcluster/"
        );
        assert!(build_url(&ClientOptions::new("ftp://x")).is_err());
        assert!(build_url(&ClientOptions::new("not a url")).is_err());
    }

    #[test]
    fn timestamp_parameter_is_set_once_per_attempt() {
        let mut o = ClientOptions::new("ws://127.0.0.1:8000/socketcluster/?a=1&t=old");
        assert!(
            Dialer::new(&o).unwrap().timestamp_param.is_none(),
            "off by default"
        );
        o.timestamp_requests = true;
        assert_eq!(
            Dialer::new(&o).unwrap().timestamp_param.as_deref(),
            Some("t")
        );
        assert_eq!(
            timestamped(build_url(&o).unwrap().as_ref(), "t", 1_700_000_000_123),
            "ws://127.0.0.1:8000/socketcluster/?a=1&t=1700000000123"
        );
        assert_eq!(
            timestamped("ws://h/p", "ts", 5),
            "ws://h/p?ts=5",
            "custom name, no other parameter"
        );
    }

    #[test]
    fn websocket_buffers_are_small_and_writes_unbounded() {
        let c = ws_config();
        assert_eq!(c.read_buffer_size, 8 * 1024);
        assert_eq!(c.write_buffer_size, 8 * 1024);
        assert_eq!(c.max_write_buffer_size, usize::MAX);
        let d = WebSocketConfig::default();
        assert_eq!(c.max_message_size, d.max_message_size);
        assert_eq!(c.max_frame_size, d.max_frame_size);
    }

    #[test]
    fn wss_builds_a_default_tls_config() {
        let d = Dialer::new(&ClientOptions::new("wss://example.com")).unwrap();
        assert!(d.tls.is_some());
        let d = Dialer::new(&ClientOptions::new("ws://example.com")).unwrap();
        assert!(d.tls.is_none());
    }
}
