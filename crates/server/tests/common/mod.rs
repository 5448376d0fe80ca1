//! Raw WebSocket test client and helpers for the in-process tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use socketcluster_rs_server::auth::AuthConfig;
use socketcluster_rs_server::{Request, Server, ServerConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous deadline for any single expected event.
pub const WAIT: Duration = Duration::from_secs(10);

pub const KEY: &str = "testkey";

pub fn config() -> ServerConfig {
    ServerConfig::default()
        .with_host("127.0.0.1")
        .with_port(0)
        .with_auth(AuthConfig::with_secret(KEY))
}

/// A server with the procedures used throughout the tests.
pub async fn start(config: ServerConfig) -> Server {
    let server = Server::bind(config).await.expect("bind");
    install_procedures(&server);
    server
}

pub fn install_procedures(server: &Server) {
    server.procedure("echo", |req: Request| async move {
        let data = req.take_raw_data_owned();
        req.respond_raw(data);
    });
    server.procedure("noreply", |req: Request| async move { req.end() });
    server.procedure("fail", |req: Request| async move {
        req.error(
            socketcluster_rs_server::ErrorObject::new("CustomFailError", "Something failed")
                .with("extra", 42),
        )
    });
    server.procedure("failPlain", |req: Request| async move {
        let mut e = socketcluster_rs_server::ErrorObject::new("Error", "plain error");
        e.name_on_wire = false;
        req.error(e)
    });
    server.procedure("login", |req: Request| async move {
        let user: Value = req.data().unwrap_or(Value::Null);
        let claims = serde_json::json!({ "username": user });
        match req
            .socket()
            .set_auth_token(&claims, Default::default())
            .await
        {
            Ok(_) => req.respond(&"ok"),
            Err(e) => req.error(socketcluster_rs_server::ErrorObject::new(
                "FailedLoginError",
                e.to_string(),
            )),
        }
    });
    server.procedure("logout", |req: Request| async move {
        req.socket().deauthenticate().await;
        req.end();
    });
    server.procedure("whoami", |req: Request| async move {
        let t = req
            .socket()
            .auth_token()
            .map(|c| Value::Object((*c).clone()));
        let body = serde_json::json!({
            "authenticated": req.socket().is_authenticated(),
            "authToken": t,
        });
        req.respond(&body);
    });
}

/// Extension used by the echo procedure.
pub trait TakeRaw {
    fn take_raw_data_owned(&self) -> Option<Box<socketcluster_rs_server::RawValue>>;
}
impl TakeRaw for Request {
    fn take_raw_data_owned(&self) -> Option<Box<socketcluster_rs_server::RawValue>> {
        self.raw_data().map(|r| r.to_owned())
    }
}

pub fn url(server: &Server) -> String {
    format!("ws://{}/socketcluster/", server.local_addr().unwrap())
}

/// What the raw client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Close(u16, String),
    /// The connection ended without a close frame.
    Eof,
}

pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Reply to pings automatically (with the v2 pong) while waiting for other frames.
    pub auto_pong: Option<&'static str>,
    pub pings_seen: usize,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        Raw {
            ws,
            auto_pong: None,
            pings_seen: 0,
        }
    }

    pub async fn connect_with_origin(url: &str, origin: &str) -> Result<Raw, (u16, String)> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Raw {
                ws,
                auto_pong: None,
                pings_seen: 0,
            }),
            Err(e) => Err(http_error(e)),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .expect("send");
    }

    pub async fn close(&mut self, code: u16, reason: &str) {
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })))
            .await;
    }

    /// Next frame (pings are returned as `Text("")` unless auto_pong is set).
    pub async fn next(&mut self) -> Got {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                None | Some(Err(_)) => return Got::Eof,
                Some(Ok(Message::Text(t))) => {
                    if let Some(pong) = self.auto_pong
                        && (t.as_str() == "" || t.as_str() == "#1")
                    {
                        self.pings_seen += 1;
                        let _ = self.ws.send(Message::Text(pong.into())).await;
                        continue;
                    }
                    return Got::Text(t.to_string());
                }
                Some(Ok(Message::Binary(b))) => return Got::Binary(b.to_vec()),
                Some(Ok(Message::Close(f))) => {
                    return match f {
                        Some(f) => Got::Close(f.code.into(), f.reason.to_string()),
                        None => Got::Close(1005, String::new()),
                    };
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Next non-ping text frame.
    pub async fn text(&mut self) -> String {
        loop {
            match self.next().await {
                Got::Text(t) if t.is_empty() || t == "#1" => {
                    self.pings_seen += 1;
                    continue;
                }
                Got::Text(t) => return t,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn json(&mut self) -> Value {
        let t = self.text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    /// Skip text frames until the connection closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Got::Close(c, r) => return (c, r),
                Got::Eof => return (1006, String::new()),
                _ => continue,
            }
        }
    }

    /// Whether nothing but pings arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> Result<(), Got> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().is_empty() || t.as_str() == "#1" => {
                    continue;
                }
                Ok(Some(Ok(Message::Text(t)))) => return Err(Got::Text(t.to_string())),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(Got::Close(
                        f.as_ref().map_or(1005, |f| f.code.into()),
                        String::new(),
                    ));
                }
                Ok(None) | Ok(Some(Err(_))) => return Err(Got::Eof),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Send `#handshake` with `cid` and return the reply frame.
    pub async fn handshake_cid(&mut self, token: Option<&str>, cid: u64) -> Value {
        let data = match token {
            Some(t) => serde_json::json!({ "authToken": t }),
            None => serde_json::json!({ "authToken": null }),
        };
        let frame = serde_json::json!({"event": "#handshake", "data": data, "cid": cid});
        self.send(&frame.to_string()).await;
        self.json().await
    }

    pub async fn handshake(&mut self, token: Option<&str>) -> Value {
        self.handshake_cid(token, 1).await
    }

    pub async fn invoke(&mut self, event: &str, data: Value, cid: u64) -> Value {
        let frame = serde_json::json!({"event": event, "data": data, "cid": cid});
        self.send(&frame.to_string()).await;
        self.json().await
    }
}

pub fn http_error(e: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (status, body)
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
}

/// Connect and complete a handshake without a token.
pub async fn open(server: &Server) -> Raw {
    let mut c = Raw::connect(&url(server)).await;
    let reply = c.handshake(None).await;
    assert_eq!(reply["rid"], 1, "{reply}");
    c
}

/// Wait until `f` is true (polling), panicking after the deadline.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn sign(server: &Server, claims: Value) -> String {
    server.sign_token(&claims, &Default::default()).unwrap()
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
