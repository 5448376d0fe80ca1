//! A small HTTP backend for the proxy tests (hyper, 127.0.0.1, port 0) and server setup.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use socketcluster_rs_proxy::{Proxy, ProxyConfig, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use socketcluster_rs_server::{Server, ServerConfig};

pub const SECRET: &str = "test-secret";

/// What the backend answers: status, body, delay.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            body: v.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
    pub fn after(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

pub type Handler = Arc<dyn Fn(&str, &Value) -> Reply + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<(String, Value)>>>,
    pub bad_signatures: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

impl Backend {
    pub async fn start(handler: Handler) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (c2, b2, n2) = (calls.clone(), bad.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                n2.fetch_add(1, Ordering::SeqCst);
                let (h, c, b) = (handler.clone(), c2.clone(), b2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (h, c, b) = (h.clone(), c.clone(), b.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let ts = req
                                .headers()
                                .get(TIMESTAMP_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let sig = req
                                .headers()
                                .get(SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let ok = matches!((&ts, &sig), (Some(ts), Some(sig)) if *sig == sign(SECRET.as_bytes(), ts, &body));
                            if !ok {
                                b.fetch_add(1, Ordering::SeqCst);
                            }
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            c.lock().unwrap().push((path.clone(), v.clone()));
                            let reply = h(&path, &v);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut r = Response::new(Full::new(Bytes::from(reply.body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            calls,
            bad_signatures: bad,
            connections: conns,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn calls_to(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

pub async fn serve(config: ProxyConfig) -> (Server, Proxy, String) {
    let server = Server::new(
        ServerConfig::default()
            .with_host("127.0.0.1")
            .with_port(0)
            .with_auth(socketcluster_rs_server::auth::AuthConfig::with_secret(
                "server-key",
            )),
    )
    .unwrap();
    let proxy = Proxy::install(&server, config.with_secret(SECRET)).unwrap();
    let addr = server.listen().await.unwrap();
    (server, proxy, format!("ws://{addr}/socketcluster/"))
}

/// Wait (generously) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
