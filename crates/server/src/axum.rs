//! Mount the server on an axum `Router` (feature `axum`).
//!
//! The route performs the same upgrade checks as the built-in listener (method, upgrade
//! headers, `handshakeWS` middleware → 401, origin allow-list → 403), then hands the
//! upgraded connection to the server. The path is whatever the route is mounted on.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use socketcluster_rs_server::{Server, ServerConfig};
//! let server = Server::new(ServerConfig::default())?;
//! let app = axum::Router::new()
//!     .route("/socketcluster/", socketcluster_rs_server::axum::route(server.clone()))
//!     .route("/health", axum::routing::get(|| async { "ok" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::routing::MethodRouter;
use hyper_util::rt::TokioIo;

use crate::listener::{HttpReject, authorize, check_upgrade, reason_phrase};
use crate::request::HandshakeRequest;
use crate::server::Server;
use crate::ws::Io;

/// A `GET` route serving SocketCluster WebSocket upgrades.
pub fn route<S: Clone + Send + Sync + 'static>(server: Server) -> MethodRouter<S> {
    axum::routing::get(move |req: Request| {
        let server = server.clone();
        async move { upgrade(server, req).await }
    })
}

fn reject(r: HttpReject) -> Response {
    tracing::info!(status = r.status, "handshake rejected");
    let mut b = Response::builder()
        .status(r.status)
        .header("Connection", "close")
        .header("Content-Type", "text/html");
    for (k, v) in &r.headers {
        b = b.header(*k, *v);
    }
    let _ = reason_phrase(r.status);
    b.body(Body::from(r.body)).unwrap_or_default()
}

/// Handle one upgrade request (for custom routing; [`route`] calls this).
pub async fn upgrade(server: Server, mut req: Request) -> Response {
    let state = server.state.clone();
    let remote_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let hreq = HandshakeRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        remote_addr,
        secure: false,
    };
    if state.shutdown.is_cancelled() {
        return reject(HttpReject {
            status: 503,
            body: "Server is shutting down".into(),
            headers: Vec::new(),
        });
    }
    let ok = match check_upgrade(hreq.uri.path(), &hreq) {
        Ok(ok) => ok,
        Err(r) => return reject(r),
    };
    let hreq = Arc::new(hreq);
    if let Err(r) = authorize(&state, &hreq).await {
        return reject(r);
    }
    let ip = match state.per_ip.admission(remote_addr) {
        Ok(a) => a.keep(),
        Err(r) => return reject(HttpReject::too_many(r)),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max_payload = state.config.limits.max_payload;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
                let ws = crate::ws::ServerWs::new(io, Vec::new(), max_payload);
                let request = crate::request::StoredRequest::parsed(hreq);
                crate::task::spawn(&state, ws, request, ip);
            }
            Err(e) => {
                if let Some(ip) = ip {
                    state.per_ip.release(ip);
                }
                tracing::debug!(error = %e, "HTTP upgrade failed");
            }
        }
    });
    let mut b = Response::builder()
        .status(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", ok.accept);
    if let Some(p) = ok.protocol {
        b = b.header("Sec-WebSocket-Protocol", p);
    }
    b.body(Body::empty()).unwrap_or_default()
}
