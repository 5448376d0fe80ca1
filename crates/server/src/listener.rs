//! The built-in listener: TCP accept, optional TLS, and the HTTP upgrade with the JS
//! server's checks in the JS order (docs/PROTOCOL.md 1.2): method (405), `Upgrade` header,
//! `Sec-WebSocket-Key`, `Sec-WebSocket-Version` (400), path (400 `Bad Request`), then
//! `handshakeWS` middleware (401, body = the error message) and the origin allow-list
//! (403, `Failed to authorize socket handshake - Invalid origin: <origin>`). Plain HTTP
//! requests get 501 `Not Implemented`, like the JS `listen()` server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderMap, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::middleware::{Block, run_handshake_ws, snapshot};
use crate::request::{HandshakeRequest, StoredRequest, parse_request};
use crate::state::ServerState;
use crate::ws::{Io, ServerWs};

/// An HTTP refusal of an upgrade request.
#[derive(Debug, Clone)]
pub(crate) struct HttpReject {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
}

impl HttpReject {
    /// HTTP 429 for an upgrade refused by a per-IP limit.
    pub(crate) fn too_many(refusal: crate::per_ip::Refusal) -> Self {
        HttpReject::new(429, refusal.message())
    }

    fn new(status: u16, body: impl Into<String>) -> Self {
        HttpReject {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn encode(&self) -> String {
        let mut s = format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.body.len()
        );
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s
    }
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// What the upgrade response needs.
pub(crate) struct UpgradeOk {
    pub(crate) accept: String,
    pub(crate) protocol: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_upgrade_request(headers: &HeaderMap) -> bool {
    header(headers, "upgrade").is_some()
        && header(headers, "connection").is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22] == b'='
        && b[23] == b'='
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Protocol-level checks of an upgrade request (synchronous part).
pub(crate) fn check_upgrade(path: &str, req: &HandshakeRequest) -> Result<UpgradeOk, HttpReject> {
    if req.method != Method::GET {
        return Err(HttpReject::new(405, "Invalid HTTP method"));
    }
    if !header(&req.headers, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(HttpReject::new(400, "Invalid Upgrade header"));
    }
    let key = header(&req.headers, "sec-websocket-key").unwrap_or("");
    if !valid_key(key) {
        return Err(HttpReject::new(
            400,
            "Missing or invalid Sec-WebSocket-Key header",
        ));
    }
    let version = header(&req.headers, "sec-websocket-version").map(str::trim);
    if !matches!(version, Some("13") | Some("8")) {
        let mut r = HttpReject::new(400, "Missing or invalid Sec-WebSocket-Version header");
        r.headers.push(("Sec-WebSocket-Version", "13, 8"));
        return Err(r);
    }
    if req.uri.path() != path {
        return Err(HttpReject::new(400, "Bad Request"));
    }
    // Like `ws`, select the first offered subprotocol.
    let protocol = header(&req.headers, "sec-websocket-protocol").and_then(|p| {
        p.split(',')
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_owned)
    });
    Ok(UpgradeOk {
        accept: derive_accept_key(key.as_bytes()),
        protocol,
    })
}

/// `handshakeWS` middleware (401) then origin check (403), in the JS order.
pub(crate) async fn authorize(
    state: &ServerState,
    req: &Arc<HandshakeRequest>,
) -> Result<(), HttpReject> {
    let chain = snapshot(&state.middleware.handshake_ws);
    if !chain.is_empty()
        && let Err(block) = run_handshake_ws(chain, req.clone()).await
    {
        let body = match block {
            Block::Silent => {
                "The handshakeWS AGAction was blocked by handshake middleware".to_owned()
            }
            Block::Error(e) => e.message(),
        };
        return Err(HttpReject::new(401, body));
    }
    let origin = match req.origin() {
        Some(o) if o != "null" => o.to_owned(),
        _ => "*".to_owned(),
    };
    if !origin_allowed(&state.config.origins, &origin) {
        let msg = format!("Failed to authorize socket handshake - Invalid origin: {origin}");
        tracing::warn!(origin = %origin, "ServerProtocolError: invalid origin");
        return Err(HttpReject::new(403, msg));
    }
    Ok(())
}

/// JS `verifyHandshake` origin rule: `*:*` allows everything; otherwise
/// `host:port`, `host:*` or `*:port` of the origin must occur as a substring.
pub(crate) fn origin_allowed(origins: &str, origin: &str) -> bool {
    if origins.contains("*:*") {
        return true;
    }
    let (hostname, port) = parse_origin(origin);
    origins.contains(&format!("{hostname}:{port}"))
        || origins.contains(&format!("{hostname}:*"))
        || origins.contains(&format!("*:{port}"))
}

/// Node's legacy `url.parse` hostname/port of an origin (hostname `null` when the
/// origin has no `scheme://`; port defaults to 443 for https, else 80).
fn parse_origin(origin: &str) -> (String, String) {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return ("null".into(), "80".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((h, p)) => (h.to_owned(), p.strip_prefix(':').map(str::to_owned)),
            None => (stripped.to_owned(), None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                (h.to_owned(), Some(p.to_owned()))
            }
            _ => (authority.to_owned(), None),
        }
    };
    let port = port.filter(|p| !p.is_empty()).unwrap_or_else(|| {
        if scheme.eq_ignore_ascii_case("https") {
            "443".into()
        } else {
            "80".into()
        }
    });
    (host.to_ascii_lowercase(), port)
}

/// Accept connections until the server shuts down.
pub(crate) async fn accept_loop(
    state: Arc<ServerState>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let cancel = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move { handle_tcp(state, stream, addr, tls).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_tcp(
    state: Arc<ServerState>,
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = state.config.handshake_timeout;
    let (io, secure): (Box<dyn Io>, bool) = match tls {
        Some(acceptor) => match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(s)) => (Box::new(s), true),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, peer = %addr, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        None => (Box::new(stream), false),
    };
    http_upgrade(state, io, Some(addr), secure).await;
}

/// Read the request head; returns its length (including the blank line).
pub(crate) async fn read_head(
    io: &mut Box<dyn Io>,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, u16> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(pos) = find_head_end(buf) {
            return Ok(pos);
        }
        if buf.len() >= max {
            return Err(431);
        }
        let n = io.read(&mut chunk).await.map_err(|_| 0u16)?;
        if n == 0 {
            return Err(0);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

async fn reject(io: &mut Box<dyn Io>, state: &ServerState, r: HttpReject) {
    state.stats.http_rejections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(status = r.status, "handshake rejected");
    let limits = &state.config.limits;
    let _ = tokio::time::timeout(limits.close_timeout, async {
        if io.write_all(r.encode().as_bytes()).await.is_err()
            || io.flush().await.is_err()
            || io.shutdown().await.is_err()
        {
            return;
        }
        linger(io, limits.linger_bytes()).await;
    })
    .await;
}

/// Lingering close of a refused upgrade (RFC 7230 §6.6): with our side shut down, read
/// and discard what the client still sends (at most `budget` bytes) until it closes its
/// side (the same budget as a WebSocket's lingering close, [`crate::Limits::linger_bytes`];
/// the caller bounds the time by `close_timeout`). Closing with unread input makes the
/// kernel send a reset, and a client still writing an oversized head fails its write and
/// never reads its 431.
async fn linger(io: &mut Box<dyn Io>, mut budget: usize) {
    let mut buf = [0u8; 8 * 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 || n >= budget {
            return;
        }
        budget -= n;
    }
}

/// Perform the HTTP upgrade on a raw connection and start the socket.
pub(crate) async fn http_upgrade(
    state: Arc<ServerState>,
    mut io: Box<dyn Io>,
    addr: Option<SocketAddr>,
    secure: bool,
) {
    let mut buf = Vec::with_capacity(1024);
    let max = state.config.limits.max_http_header_bytes;
    let head_len = match tokio::time::timeout(
        state.config.handshake_timeout,
        read_head(&mut io, &mut buf, max),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(431)) => {
            return reject(
                &mut io,
                &state,
                HttpReject::new(431, "Request Header Fields Too Large"),
            )
            .await;
        }
        _ => return,
    };
    let Some(req) = parse_request(&buf[..head_len], addr, secure) else {
        return reject(&mut io, &state, HttpReject::new(400, "Bad Request")).await;
    };
    if !is_upgrade_request(&req.headers) {
        return reject(&mut io, &state, HttpReject::new(501, "Not Implemented")).await;
    }
    if state.shutdown.is_cancelled() {
        return reject(
            &mut io,
            &state,
            HttpReject::new(503, "Server is shutting down"),
        )
        .await;
    }
    let admission = match state.per_ip.admission(addr) {
        Ok(a) => a,
        Err(r) => return reject(&mut io, &state, HttpReject::too_many(r)).await,
    };
    let ok = match check_upgrade(&state.config.path, &req) {
        Ok(ok) => ok,
        Err(r) => return reject(&mut io, &state, r).await,
    };
    let req = Arc::new(req);
    if let Err(r) = authorize(&state, &req).await {
        return reject(&mut io, &state, r).await;
    }
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        ok.accept
    );
    if let Some(p) = &ok.protocol {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(p);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    if io.write_all(resp.as_bytes()).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let leftover = buf.split_off(head_len);
    let ws = ServerWs::new(io, leftover, state.config.limits.max_payload);
    // Keep the compact raw head unless middleware kept the parsed request anyway.
    let stored = match Arc::try_unwrap(req) {
        Ok(_) => StoredRequest::raw(buf.into_boxed_slice(), addr, secure),
        Err(shared) => StoredRequest::parsed(shared),
    };
    let ip = admission.keep();
    crate::task::spawn(&state, ws, stored, ip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules_follow_the_js_server() {
        assert!(origin_allowed("*:*", "http://evil.com"));
        assert!(!origin_allowed("example.com:443", "http://evil.com"));
        assert!(origin_allowed("example.com:443", "https://example.com"));
        assert!(origin_allowed("example.com:*", "http://example.com:8080"));
        assert!(origin_allowed("*:8080", "http://x.org:8080"));
        // No Origin header: '*' -> null:80 / null:* / *:80 (docs/PROTOCOL.md 1.2)
        assert!(!origin_allowed("example.com:443 foo.org:*", "*"));
        assert!(origin_allowed("example.com:443 *:80", "*"));
        assert_eq!(
            parse_origin("http://[::1]:9000"),
            ("::1".into(), "9000".into())
        );
        assert_eq!(
            parse_origin("HTTPS://Example.COM"),
            ("example.com".into(), "443".into())
        );
    }

    #[test]
    fn websocket_key_format() {
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("short=="));
    }
}
