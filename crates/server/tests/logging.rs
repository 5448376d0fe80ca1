//! Operator logging: one `tracing` info line per connection lifecycle event, with
//! stable fields, and never a token, claims or payload at any level. Its own test
//! binary, because it installs the process-wide subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_server::Block;
use socketcluster_rs_server::middleware::HandshakeAction;
use tracing_subscriber::fmt::MakeWriter;

/// Every formatted event, one `String` per line.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

const SECRET_CLAIM: &str = "s3cret-user-7f1e";
const SECRET_PAYLOAD: &str = "payload-0xDEADBEEF-do-not-log";

fn lines_with<'a>(lines: &'a [String], needle: &str, id: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains(needle) && l.contains(id))
        .collect()
}

/// The standalone server's requirement ("structured, one line per connection lifecycle
/// event at info, never logging tokens or payloads").
#[tokio::test]
async fn lifecycle_is_logged_once_per_event_without_secrets() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let server = start(config()).await;
    server.add_handshake_middleware(|a: HandshakeAction| async move {
        match a.socket.request().query_param("reject") {
            Some(_) => Err(Block::error("NopeError", "nope").with_status_code(4601)),
            None => Ok(()),
        }
    });
    let token = sign(&server, json!({"username": SECRET_CLAIM}));
    let wrong_key = socketcluster_rs_server::Server::new(config().with_auth(
        socketcluster_rs_server::auth::AuthConfig::with_secret("another key"),
    ))
    .unwrap()
    .sign_token(&json!({"username": SECRET_CLAIM}), &Default::default())
    .unwrap();

    // A full session: authenticated handshake, payloads both ways, kick-out, login
    // (new token), logout, client close.
    let mut c = Raw::connect(&url(&server)).await;
    let reply = c.handshake(Some(&token)).await;
    assert_eq!(reply["data"]["isAuthenticated"], true);
    let id = reply["data"]["id"].as_str().unwrap().to_owned();
    let socket = server.socket(&id).unwrap();
    let echo = c.invoke("echo", json!(SECRET_PAYLOAD), 2).await;
    assert_eq!(echo["data"], SECRET_PAYLOAD);
    assert_eq!(
        c.invoke("#subscribe", json!({"channel": "news"}), 3).await,
        json!({"rid": 3})
    );
    c.send(
        &json!({"event": "#publish", "data": {"channel": "news", "data": SECRET_PAYLOAD}})
            .to_string(),
    )
    .await;
    let publication = c.json().await;
    assert_eq!(publication["data"]["data"], SECRET_PAYLOAD);
    socket
        .kick_out(Some("news"), Some(&SECRET_PAYLOAD))
        .await
        .unwrap();
    assert_eq!(c.json().await["event"], "#kickOut");
    c.send(&json!({"event": "login", "data": SECRET_CLAIM, "cid": 4}).to_string())
        .await;
    let mut new_token = String::new();
    for _ in 0..2 {
        let f = c.json().await;
        if f["event"] == "#setAuthToken" {
            new_token = f["data"]["token"].as_str().unwrap().to_owned();
        }
    }
    assert!(!new_token.is_empty());
    c.send(r#"{"event":"logout","cid":5}"#).await;
    let _ = (c.text().await, c.text().await);
    c.send(&json!({"event": "#authenticate", "data": wrong_key, "cid": 6}).to_string())
        .await;
    let _ = c.text().await;
    c.close(1000, "bye").await;
    assert_eq!(c.closed().await.0, 1000);
    eventually(|| server.clients_count() == 0).await;

    // A handshake rejected by middleware, and one with a bad token.
    let mut r = Raw::connect(&format!("{}?reject=1", url(&server))).await;
    let refused: Value = r.handshake(Some(&token)).await;
    assert_eq!(refused["error"]["statusCode"], 4601);
    assert_eq!(r.closed().await.0, 4601);
    let mut b = Raw::connect(&url(&server)).await;
    let bad = b.handshake(Some(&wrong_key)).await;
    assert_eq!(bad["data"]["isAuthenticated"], false);
    let bad_id = bad["data"]["id"].as_str().unwrap().to_owned();
    b.close(4444, "gone").await;
    eventually(|| server.clients_count() == 0).await;
    // the last close event is logged when the socket task finishes
    eventually(|| {
        capture
            .lines()
            .iter()
            .any(|l| l.contains("connection closed") && l.contains(&bad_id))
    })
    .await;

    let lines = capture.lines();
    let dump = lines.join("\n");
    for secret in [
        token.as_str(),
        new_token.as_str(),
        wrong_key.as_str(),
        SECRET_CLAIM,
        SECRET_PAYLOAD,
    ] {
        assert!(
            lines.iter().all(|l| !l.contains(secret)),
            "secret {secret} logged:\n{dump}"
        );
    }
    let info = |needle: &str, id: &str| -> Vec<&String> {
        lines_with(&lines, needle, id)
            .into_iter()
            .filter(|l| l.contains(" INFO "))
            .collect()
    };
    let accepted = info("connection accepted", &id);
    assert_eq!(accepted.len(), 1, "{dump}");
    assert!(accepted[0].contains("remote=127.0.0.1:"), "{dump}");
    let completed = info("handshake completed", &id);
    assert_eq!(completed.len(), 1, "{dump}");
    assert!(completed[0].contains("authenticated=true"), "{dump}");
    // handshake token + login token
    assert_eq!(info(": authenticated", &id).len(), 2, "{dump}");
    // logout; the wrong-key #authenticate on an unauthenticated socket is a
    // deauthentication event too (JS 5.4)
    assert_eq!(info(": deauthenticated", &id).len(), 2, "{dump}");
    let kicked = info("kicked out", &id);
    assert_eq!(kicked.len(), 1, "{dump}");
    assert!(kicked[0].contains("channel=news"), "{dump}");
    let closed = info("connection closed", &id);
    assert_eq!(closed.len(), 1, "{dump}");
    for field in ["code=1000", "reason=bye", "was_open=true"] {
        assert!(closed[0].contains(field), "{field}: {dump}");
    }
    let rejected: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("handshake rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{dump}");
    assert!(rejected[0].contains("status=4601"), "{dump}");
    let bad_completed = info("handshake completed", &bad_id);
    assert_eq!(bad_completed.len(), 1, "{dump}");
    assert!(bad_completed[0].contains("authenticated=false"), "{dump}");
    let bad_closed = info("connection closed", &bad_id);
    assert!(bad_closed[0].contains("code=4444"), "{dump}");
}
