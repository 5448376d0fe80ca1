//! The operator's HTTP surface on the WebSocket port: `/health`, `/metrics` and the
//! bearer-key protected `/api/*` (publish, publish-batch, history, disconnect,
//! deauthenticate, channels, stats).
//!
//! Connections are accepted and routed in [`super::conn`]; this file has the handlers.

// Handlers return `Result<_, Response>` so that a validation failure *is* the answer; it
// is built once per bad request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use socketcluster_rs_server::{RawValue, Server, Socket};

/// Close code of `POST /api/disconnect` unless the request names one: 4500 and above
/// tell the JS client not to reconnect.
pub(crate) const DEFAULT_API_DISCONNECT_CODE: u16 = 4500;

/// Backplane status shown on `/health` (and failing it when down).
pub(crate) type HealthProbe = Arc<dyn Fn() -> (bool, Value) + Send + Sync>;

/// Everything the HTTP handlers need.
pub(crate) struct Operator {
    pub(crate) server: Server,
    pub(crate) ws_path: String,
    pub(crate) api_key: Option<String>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) max_body: usize,
    /// Time allowed for a whole request body, after its head (`--http-body-timeout`,
    /// default 10 s): a client that sends it slower (or never ends a chunked body) gets
    /// 408 and the connection is closed.
    pub(crate) body_timeout: Duration,
    pub(crate) backplane: Option<HealthProbe>,
    /// Backend proxy hooks (`--proxy-*`), reported like the backplane.
    pub(crate) proxy: Option<HealthProbe>,
    /// The operator dashboard (`--dashboard`), `None` when off.
    pub(crate) dashboard: Option<super::dashboard_auth::Dashboard>,
    /// Whether the port serves TLS (session cookies are then `Secure`).
    pub(crate) secure: bool,
    /// The instances of the cluster (`/api/instances`).
    pub(crate) instances: Arc<super::cluster::Instances>,
}

impl Operator {
    /// The backplane's `/health` detail, as a function a background task can keep.
    pub(crate) fn backplane_probe(&self) -> Option<Arc<dyn Fn() -> Value + Send + Sync>> {
        self.backplane.clone().map(|p| {
            let f: Arc<dyn Fn() -> Value + Send + Sync> = Arc::new(move || {
                let (up, mut detail) = p();
                if let Some(o) = detail.as_object_mut() {
                    o.insert("up".into(), json!(up));
                }
                detail
            });
            f
        })
    }
}

pub(crate) type Resp = Response<BoxBody<Bytes, Infallible>>;

/// A response with a complete body.
pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = full(status, body.to_string());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, &json!({ "error": message.into() }))
}

pub(super) async fn handle(req: Request<Incoming>, op: &Operator) -> Resp {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => health(op),
        (&Method::GET, "/metrics") => metrics(op),
        (_, p) if p.starts_with("/api/") => api(req, op).await,
        (_, "/health" | "/metrics") => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn health(op: &Operator) -> Resp {
    let mut body = json!({"status": "ok"});
    let mut ok = true;
    if op.shutting_down.load(Ordering::Acquire) || op.server.is_shut_down() {
        ok = false;
        body["status"] = json!("shutting down");
    }
    if let Some(probe) = &op.backplane {
        let (up, detail) = probe();
        body["backplane"] = detail;
        if !up && ok {
            // still accepting connections and serving local traffic: report, don't fail
            body["status"] = json!("degraded");
        }
    }
    if let Some(probe) = &op.proxy {
        let (up, detail) = probe();
        body["proxy"] = detail;
        if !up && ok {
            body["status"] = json!("degraded");
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

fn metrics(op: &Operator) -> Resp {
    let Some(handle) = &op.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are disabled");
    };
    super::metrics::record_gauges(&op.server);
    let mut r = full(StatusCode::OK, handle.render());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Constant-time comparison of the bearer key.
fn key_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn api(req: Request<Incoming>, op: &Operator) -> Resp {
    let Some(key) = &op.api_key else {
        return error(
            StatusCode::NOT_FOUND,
            "the HTTP API is disabled (start with --http-api-key)",
        );
    };
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| key_matches(given.trim().as_bytes(), key.as_bytes()));
    if !authorized {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong `Authorization: Bearer <key>` header",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::GET, "/api/channels") => channels(op),
        (Method::GET, "/api/stats") => stats(op),
        (Method::GET, "/api/instances") => json_response(StatusCode::OK, &op.instances.snapshot()),
        (Method::GET, "/api/history") => history(op, req.uri().query().unwrap_or("")).await,
        (Method::POST, "/api/publish") => match body_json(req, op).await {
            Ok(v) => publish(op, &v).await,
            Err(r) => r,
        },
        (Method::POST, "/api/publish-batch") => match body_json(req, op).await {
            Ok(v) => publish_batch(op, &v).await,
            Err(r) => r,
        },
        (Method::POST, "/api/disconnect") => match body_json(req, op).await {
            Ok(v) => disconnect(op, &v),
            Err(r) => r,
        },
        (Method::POST, "/api/deauthenticate") => match body_json(req, op).await {
            Ok(v) => deauthenticate(op, &v).await,
            Err(r) => r,
        },
        (_, "/api/channels" | "/api/stats" | "/api/history" | "/api/instances") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        (_, "/api/publish" | "/api/publish-batch" | "/api/disconnect" | "/api/deauthenticate") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// Read and parse a JSON body (limited to `max_body` bytes and `body_timeout`).
pub(crate) async fn body_json(req: Request<Incoming>, op: &Operator) -> Result<Value, Resp> {
    let body = body_bytes(req, op).await?;
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Read a body (limited to `max_body` bytes and `body_timeout`).
pub(crate) async fn body_bytes(req: Request<Incoming>, op: &Operator) -> Result<Bytes, Resp> {
    let max = op.max_body;
    let collect = Limited::new(req.into_body(), max).collect();
    let Ok(body) = tokio::time::timeout(op.body_timeout, collect).await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} ms",
                op.body_timeout.as_millis()
            ),
        ));
    };
    let body = body
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body must be at most {max} bytes"),
            )
        })?
        .to_bytes();
    Ok(body)
}

/// One publication of a request body: `{"channel": "...", "data": ...}`.
fn publication(v: &Value, what: &str) -> Result<(String, Option<Box<RawValue>>), Resp> {
    let Some(obj) = v.as_object() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what} must be an object {{\"channel\": ..., \"data\": ...}}"),
        ));
    };
    let Some(channel) = obj.get("channel").and_then(Value::as_str) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what}: `channel` must be a string"),
        ));
    };
    if channel.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what}: `channel` must not be empty"),
        ));
    }
    if channel == super::cluster::CHANNEL {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what}: {channel} is internal to the cluster"),
        ));
    }
    let data = match obj.get("data") {
        None => None,
        Some(d) => Some(
            serde_json::value::to_raw_value(d)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{what}: bad data: {e}")))?,
        ),
    };
    Ok((channel.to_owned(), data))
}

pub(crate) async fn publish(op: &Operator, v: &Value) -> Resp {
    let (channel, data) = match publication(v, "the body") {
        Ok(p) => p,
        Err(r) => return r,
    };
    match op.server.exchange().publish_raw_at(&channel, data).await {
        Ok(pos) => {
            let mut body = json!({"published": 1});
            if let Some(p) = pos {
                body["offset"] = json!(p.offset);
                body["epoch"] = json!(p.epoch);
            }
            json_response(StatusCode::OK, &body)
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("publish failed: {e}"),
        ),
    }
}

/// The most publications `GET /api/history` returns at once.
const MAX_HISTORY_LIMIT: usize = 1000;

/// `GET /api/history?channel=C[&since=OFFSET][&limit=N]`: the channel's position and the
/// publications after `since` (the oldest kept ones without it), at most `limit`
/// (default 100, at most 1000), oldest first.
async fn history(op: &Operator, query: &str) -> Resp {
    let mut channel = None;
    let mut since = None;
    let mut limit = 100usize;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "channel" => channel = Some(v),
            "since" => match v.parse::<u64>() {
                Ok(n) => since = Some(n),
                Err(_) => return error(StatusCode::BAD_REQUEST, "`since` must be an offset"),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("`limit` must be 1 to {MAX_HISTORY_LIMIT}"),
                    );
                }
            },
            _ => {}
        }
    }
    let Some(channel) = channel.filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "give ?channel=<name>");
    };
    if op.server.config().history.rule_for(&channel).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("the {channel} channel has no history (see --history)"),
        );
    }
    match op.server.exchange().history(&channel, since, limit).await {
        Ok(read) => {
            let publications: Vec<Value> = read
                .publications
                .iter()
                .map(|p| {
                    let data = p
                        .raw_data()
                        .and_then(|d| serde_json::from_str::<Value>(d.get()).ok());
                    let mut v = json!({"offset": p.offset()});
                    if let Some(d) = data {
                        v["data"] = d;
                    }
                    v
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({
                    "channel": channel,
                    "epoch": read.position.epoch,
                    "offset": read.position.offset,
                    "publications": publications,
                }),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("history read failed: {e}"),
        ),
    }
}

/// `key=value` pairs of a query string, percent-decoded (`+` is a space).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

async fn publish_batch(op: &Operator, v: &Value) -> Resp {
    let items = match v.get("publications").or(Some(v)).and_then(Value::as_array) {
        Some(a) => a,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be {\"publications\": [{\"channel\": ..., \"data\": ...}, ...]}",
            );
        }
    };
    // validate everything first: a bad element publishes nothing
    let mut pubs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match publication(item, &format!("publications[{i}]")) {
            Ok(p) => pubs.push(p),
            Err(r) => return r,
        }
    }
    let exchange = op.server.exchange();
    let mut positions = Vec::with_capacity(pubs.len());
    for (i, (channel, data)) in pubs.into_iter().enumerate() {
        match exchange.publish_raw_at(&channel, data).await {
            Ok(pos) => positions.push(pos),
            Err(e) => {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": format!("publications[{i}] failed: {e}"), "published": i}),
                );
            }
        }
    }
    let mut body = json!({"published": items.len()});
    if positions.iter().any(Option::is_some) {
        // One entry per publication: its position, or null on a channel without history.
        body["positions"] = positions
            .iter()
            .map(|p| match p {
                Some(p) => json!({"offset": p.offset, "epoch": p.epoch}),
                None => Value::Null,
            })
            .collect();
    }
    json_response(StatusCode::OK, &body)
}

/// The sockets a disconnect/deauthenticate request selects: `{"socket": "<id>"}`, or
/// `{"claim": "<name>", "value": <json>}` (every socket whose token has that claim value).
fn select(op: &Operator, v: &Value) -> Result<Vec<Socket>, Resp> {
    if let Some(id) = v.get("socket") {
        let Some(id) = id.as_str() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "`socket` must be a string socket id",
            ));
        };
        return Ok(op.server.socket(id).into_iter().collect());
    }
    let (Some(claim), Some(value)) = (v.get("claim"), v.get("value")) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "give {\"socket\": \"<id>\"} or {\"claim\": \"<name>\", \"value\": <value>}",
        ));
    };
    let Some(claim) = claim.as_str() else {
        return Err(error(StatusCode::BAD_REQUEST, "`claim` must be a string"));
    };
    Ok(op
        .server
        .clients()
        .into_iter()
        .filter(|s| s.auth_token().is_some_and(|t| t.get(claim) == Some(value)))
        .collect())
}

pub(crate) fn disconnect(op: &Operator, v: &Value) -> Resp {
    let sockets = match select(op, v) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let code = match v.get("code") {
        None => DEFAULT_API_DISCONNECT_CODE,
        Some(c) => match c.as_u64().and_then(|c| u16::try_from(c).ok()) {
            Some(c) if (4000..=4999).contains(&c) || c == 1000 => c,
            _ => return error(StatusCode::BAD_REQUEST, "`code` must be 1000 or 4000-4999"),
        },
    };
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("Disconnected by the server");
    for s in &sockets {
        s.disconnect(code, reason);
    }
    tracing::info!(
        count = sockets.len(),
        code,
        "disconnected sockets through the HTTP API"
    );
    json_response(StatusCode::OK, &json!({"disconnected": sockets.len()}))
}

pub(crate) async fn deauthenticate(op: &Operator, v: &Value) -> Resp {
    let sockets = match select(op, v) {
        Ok(s) => s,
        Err(r) => return r,
    };
    for s in &sockets {
        s.deauthenticate().await;
    }
    tracing::info!(
        count = sockets.len(),
        "deauthenticated sockets through the HTTP API"
    );
    json_response(StatusCode::OK, &json!({"deauthenticated": sockets.len()}))
}

pub(crate) fn channels(op: &Operator) -> Resp {
    let list: Vec<Value> = op
        .server
        .channels()
        .into_iter()
        .filter(|c| c.name != super::cluster::CHANNEL)
        .map(|c| json!({"channel": c.name, "subscribers": c.subscribers}))
        .collect();
    json_response(StatusCode::OK, &json!({ "channels": list }))
}

pub(crate) fn stats(op: &Operator) -> Resp {
    let s = op.server.stats();
    let authenticated = super::metrics::authenticated_sockets(&op.server);
    json_response(
        StatusCode::OK,
        &json!({
            "sockets": s.clients,
            "authenticatedSockets": authenticated,
            "pendingSockets": s.pending_clients,
            "channels": op.instances.visible_channels(s.channels),
            "messagesIn": s.messages_received,
            "messagesOut": s.messages_sent,
            "bytesIn": s.bytes_received,
            "bytesOut": s.bytes_sent,
            "publications": s.publications,
            "connectionsAccepted": s.connections_accepted,
            "slowConsumerDisconnects": s.slow_consumer_disconnects,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator() -> Operator {
        Operator {
            server: Server::new(socketcluster_rs_server::ServerConfig::default()).unwrap(),
            ws_path: "/socketcluster/".into(),
            api_key: None,
            metrics: None,
            shutting_down: AtomicBool::new(false),
            max_body: 1024,
            body_timeout: Duration::from_secs(10),
            backplane: None,
            proxy: None,
            dashboard: None,
            secure: false,
            instances: super::super::cluster::Instances::new("127.0.0.1:0".into()),
        }
    }

    #[tokio::test]
    async fn health_is_503_while_shutting_down() {
        let op = operator();
        assert_eq!(health(&op).status(), StatusCode::OK);
        op.shutting_down.store(true, Ordering::Release);
        assert_eq!(health(&op).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn health_reports_a_backplane_outage_without_failing() {
        let mut op = operator();
        op.backplane = Some(Arc::new(|| (false, json!({"state": "disconnected"}))));
        let r = health(&op);
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["backplane"]["state"], "disconnected");
    }

    #[test]
    fn bearer_keys_compare_exactly() {
        assert!(key_matches(b"abc", b"abc"));
        assert!(!key_matches(b"abd", b"abc"));
        assert!(!key_matches(b"ab", b"abc"));
    }
}
