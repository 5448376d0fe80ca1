//! Connections of `socketcluster serve`: accept, TLS, the request head, then the
//! WebSocket server (requests for the WebSocket path, which performs the upgrade and all
//! its checks) or hyper (everything else, handled in [`super::http`]); after an HTTP
//! connection, a lingering close.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::http::{Operator, handle};
use super::rewind::Rewind;
use super::{dashboard, dashboard_auth};

/// Largest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for the TLS handshake and the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished HTTP connection waits for the client to close its side (lingering
/// close), reading and discarding what it still sends.
const LINGER_TIMEOUT: Duration = Duration::from_secs(3);

/// Accept connections until `stop` is cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    op: Arc<Operator>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let op = op.clone();
        let tls = tls.clone();
        tokio::spawn(async move { handle_conn(tcp, addr, tls, op).await });
    }
}

async fn handle_conn(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    op: Arc<Operator>,
) {
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => route(stream, addr, true, op).await,
            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
        },
        None => route(tcp, addr, false, op).await,
    }
}

/// Read the request head, then give the connection to the WebSocket server or to hyper.
async fn route<S>(mut io: S, addr: SocketAddr, secure: bool, op: Arc<Operator>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(read, Ok(Ok(true))) {
        if head.len() > MAX_HEAD {
            let _ = io
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            linger(io, linger_budget(&op), LINGER_TIMEOUT).await;
        }
        return;
    }
    let path = request_path(&head).unwrap_or_default();
    let io = Rewind::new(head, io);
    if path == op.ws_path {
        if op.shutting_down.load(Ordering::Acquire) {
            let mut io = io;
            if io
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 13\r\nconnection: close\r\n\r\nShutting down")
                .await
                .is_ok()
            {
                linger(io, linger_budget(&op), LINGER_TIMEOUT).await;
            }
            return;
        }
        op.server.serve_connection(io, Some(addr), secure);
        return;
    }
    let linger_bytes = linger_budget(&op);
    let service = hyper::service::service_fn(move |req| {
        let op = op.clone();
        async move {
            let path = req.uri().path();
            if path == "/dashboard" || path.starts_with(dashboard_auth::PREFIX) {
                return Ok::<_, Infallible>(dashboard::handle(req, &op, addr.ip()).await);
            }
            Ok::<_, Infallible>(handle(req, &op).await)
        }
    });
    match hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .without_shutdown()
        .await
    {
        Ok(parts) => linger(parts.io.into_inner(), linger_bytes, LINGER_TIMEOUT).await,
        Err(e) => tracing::debug!(%addr, error = %e, "HTTP connection error"),
    }
}

/// How much a lingering close reads and discards at most: twice the largest body, at
/// least 1 MiB (the same rule as the WebSocket server's `Limits::linger_bytes`).
fn linger_budget(op: &Operator) -> usize {
    op.max_body.saturating_mul(2).max(1 << 20)
}

/// Lingering close: shut our side down, then read and discard what the client still
/// sends until it closes its side, `max_bytes` have been read or `timeout` has passed.
/// A client still sending a body we refused (413) thereby receives the response instead
/// of a TCP reset (sent by the kernel when a socket is closed with unread data, and
/// able to make the client lose the response).
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, max_bytes: usize, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 8 * 1024];
        let mut left = max_bytes;
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

/// The path of the request target (query excluded).
fn request_path(head: &[u8]) -> Option<String> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let target = line.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_path_ignores_the_query() {
        assert_eq!(
            request_path(b"GET /socketcluster/?a=1 HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("/socketcluster/")
        );
        assert_eq!(
            request_path(b"POST /api/publish HTTP/1.1\r\n\r\n").as_deref(),
            Some("/api/publish")
        );
        assert_eq!(request_path(b"garbage"), None);
    }

    /// A server for the HTTP API on a free loopback port, with this body limit.
    async fn api_server(max_body: usize) -> (SocketAddr, CancellationToken) {
        api_server_with(max_body, Duration::from_secs(10)).await
    }

    async fn api_server_with(
        max_body: usize,
        body_timeout: Duration,
    ) -> (SocketAddr, CancellationToken) {
        let op = Arc::new(Operator {
            server: socketcluster_rs_server::Server::new(
                socketcluster_rs_server::ServerConfig::default(),
            )
            .unwrap(),
            ws_path: "/socketcluster/".into(),
            api_key: Some("k".into()),
            metrics: None,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            max_body,
            body_timeout,
            backplane: None,
            proxy: None,
            dashboard: None,
            secure: false,
            instances: crate::serve::cluster::Instances::new("127.0.0.1:0".into()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, None, op, stop.clone()));
        (addr, stop)
    }

    /// Send `head`, then `rest` bytes of filler, and only then read (like most HTTP
    /// clients with a body): what the server answered, or the write error.
    async fn answer_after_sending(
        addr: std::net::SocketAddr,
        head: &[u8],
        rest: usize,
    ) -> Result<String, String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = r.read_to_end(&mut got).await;
            got
        });
        w.write_all(head).await.unwrap();
        let chunk = vec![b' '; 16 * 1024];
        let mut sent = 0;
        while sent < rest {
            if let Err(e) = w.write_all(&chunk).await {
                return Err(format!("write failed after {sent} bytes: {e}"));
            }
            sent += chunk.len();
        }
        drop(w);
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the server never closed the connection")
            .unwrap();
        Ok(String::from_utf8_lossy(&got).into_owned())
    }

    /// A client that sends its whole (too large) body before it reads, like most HTTP
    /// clients, receives the 413: the server lingers instead of resetting the
    /// connection while the body is still coming (without lingering the client's
    /// writes fail with a broken pipe once the reset arrives).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_still_sending_a_refused_body_receives_the_413() {
        let max_body = 8 << 20;
        let body_len: usize = 12 << 20;
        let (addr, stop) = api_server(max_body).await;
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        for round in 0..3 {
            let text = answer_after_sending(addr, head.as_bytes(), body_len).await;
            assert!(
                text.as_deref().is_ok_and(|t| t.starts_with("HTTP/1.1 413")),
                "round {round}: {text:?}"
            );
        }
        stop.cancel();
    }

    /// The same for a request head over the limit (any path, the WebSocket one too):
    /// the client still writing it receives the 431.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_still_sending_an_oversized_head_receives_the_431() {
        let (addr, stop) = api_server(8 << 20).await;
        for path in ["/socketcluster/", "/api/publish"] {
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: ");
            for round in 0..3 {
                let text = answer_after_sending(addr, head.as_bytes(), 12 << 20).await;
                assert!(
                    text.as_deref().is_ok_and(|t| t.starts_with("HTTP/1.1 431")),
                    "{path} round {round}: {text:?}"
                );
            }
        }
        stop.cancel();
    }

    /// A chunked body that never ends is cut off after the body timeout with 408, and
    /// the connection is closed (lingering is bounded too).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_never_ending_body_gets_408_and_the_connection_closes() {
        let (addr, stop) = api_server_with(1 << 20, Duration::from_millis(300)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = tcp.into_split();
        w.write_all(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        // one byte every 20 ms, forever (until the server has closed)
        let trickle = tokio::spawn(async move {
            while w.write_all(b"1\r\n \r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got))
            .await
            .expect("the connection was not closed")
            .ok();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            text.contains("the body did not arrive within 300 ms"),
            "{text}"
        );
        trickle.abort();
        stop.cancel();
    }
}
