//! A minimal, fast RPC backend for benchmarking the proxy (`bench/proxy`): answers every
//! `rpc` request with `{"data": <request data>}` and everything else with `{}`. HTTP/1.1
//! keep-alive on 127.0.0.1; does not check signatures.
//!
//! ```text
//! target/release/examples/echo_backend --port 0   # prints `listening addr=HOST:PORT` on stderr
//! ```
#![allow(clippy::print_stderr)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[tokio::main]
async fn main() {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    eprintln!("listening addr={}", listener.local_addr().unwrap());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let answer = if v["hook"] == "rpc" {
                    serde_json::json!({"data": v["data"]})
                } else {
                    serde_json::json!({})
                };
                let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                Ok::<_, Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
