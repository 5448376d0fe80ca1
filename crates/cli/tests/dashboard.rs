//! `socketcluster serve --dashboard` from the built binary, over plain HTTP: the
//! configuration error without a password, login (wrong and right password), the session
//! cookie's flags, per-IP throttling of failed logins, every action refused without a
//! session or without the CSRF token, and the actions and live figures working with both.

use std::time::Duration;

use serde_json::{Value, json};
use socketcluster_rs_client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{Serve, client_with_claims, run_cli};

const PASSWORD: &str = "correct horse";
const AUTH_KEY: &str = "jwt-signing-secret-1";

/// A response: status, lower-cased header lines, body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One HTTP/1.1 request with extra header lines.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("response within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn login(port: u16, password: &str) -> Resp {
    let form = format!("password={}", password.replace(' ', "+"));
    request(
        port,
        "POST",
        "/dashboard/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await
}

/// Log in: (the `Cookie` header value, the CSRF token of the page).
async fn session(port: u16) -> (String, String) {
    let r = login(port, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = request(port, "GET", "/dashboard/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the app page carries the CSRF token")
        .to_owned();
    (cookie, csrf)
}

async fn dashboard() -> Serve {
    Serve::start(&[
        "--port",
        "0",
        "--auth-key",
        AUTH_KEY,
        "--dashboard",
        "--dashboard-password",
        PASSWORD,
    ])
    .await
}

async fn client(port: u16, claims: Option<Value>) -> Client {
    client_with_claims(port, AUTH_KEY, claims).await
}

/// Poll `cond` every 20 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_a_password_the_dashboard_is_a_configuration_error() {
    let out = run_cli(&["serve", "--port", "0", "--dashboard"], None).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("dashboard-password"), "{}", out.stderr);
    let out = run_cli(&["serve", "--port", "0", "--print-config"], None).await;
    assert!(out.stdout.contains("dashboard = false"), "{}", out.stdout);
    let out = run_cli(
        &[
            "serve",
            "--dashboard",
            "--dashboard-password",
            "hunter2",
            "--print-config",
        ],
        None,
    )
    .await;
    assert!(out.stdout.contains("dashboard = true"), "{}", out.stdout);
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
}

#[tokio::test]
async fn the_dashboard_is_off_by_default() {
    let serve = Serve::start(&["--port", "0"]).await;
    let r = request(serve.port, "GET", "/dashboard/", &[], "").await;
    assert_eq!(r.status, 404);
    let r = login(serve.port, "anything").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn login_sets_a_strict_http_only_session_cookie() {
    let serve = dashboard().await;
    let page = request(serve.port, "GET", "/dashboard/", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"password\""), "the login page");
    assert!(!page.body.contains("csrf-token"), "no app before login");

    let wrong = login(serve.port, "wrong").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("Wrong password"));

    let right = login(serve.port, PASSWORD).await;
    assert_eq!(right.status, 303);
    assert_eq!(right.header("location"), Some("/dashboard/"));
    let cookie = right.header("set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/dashboard/"), "{cookie}");
    let token = cookie.split(';').next().unwrap();
    assert_eq!(token.len(), "sc_dashboard=".len() + 64, "{token}");

    // a made-up token is no session
    let r = request(
        serve.port,
        "GET",
        "/dashboard/api/stats",
        &[("Cookie", &format!("sc_dashboard={}", "0".repeat(64)))],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(
        serve.port,
        "GET",
        "/dashboard/api/stats",
        &[("Cookie", token)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sockets"], 0);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_ip() {
    let serve = dashboard().await;
    for _ in 0..3 {
        assert_eq!(login(serve.port, "guess").await.status, 401);
    }
    // now even the right password waits
    let r = login(serve.port, PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test]
async fn every_action_needs_a_session_and_the_csrf_token() {
    let serve = dashboard().await;
    let port = serve.port;
    let victim = client(port, Some(json!({"sub": 42}))).await;
    let id = victim.id().expect("handshake done").to_string();
    let (cookie, csrf) = session(port).await;
    let actions = [
        (
            "/dashboard/api/publish",
            json!({"channel": "news", "data": 1}),
        ),
        ("/dashboard/api/disconnect", json!({"socket": id})),
        ("/dashboard/api/deauthenticate", json!({"socket": id})),
    ];
    let ct = ("Content-Type", "application/json");
    for (path, body) in &actions {
        let body = body.to_string();
        let none = request(port, "POST", path, &[ct, ("X-CSRF-Token", &csrf)], &body).await;
        assert_eq!(none.status, 401, "{path} without a session");
        let no_csrf = request(port, "POST", path, &[ct, ("Cookie", &cookie)], &body).await;
        assert_eq!(no_csrf.status, 403, "{path} without the CSRF token");
        let bad_csrf = request(
            port,
            "POST",
            path,
            &[ct, ("Cookie", &cookie), ("X-CSRF-Token", &"f".repeat(64))],
            &body,
        )
        .await;
        assert_eq!(bad_csrf.status, 403, "{path} with a wrong CSRF token");
    }
    // logout is an action too
    let r = request(
        port,
        "POST",
        "/dashboard/logout",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    // reads need the session
    for path in [
        "/dashboard/api/stats",
        "/dashboard/api/channels",
        "/dashboard/api/sockets",
        "/dashboard/api/config",
        "/dashboard/events",
        "/dashboard/app.js",
    ] {
        assert_eq!(
            request(port, "GET", path, &[], "").await.status,
            401,
            "{path}"
        );
    }
    // nothing happened
    assert!(victim.is_authenticated());

    // with both: find the socket by its claim, deauthenticate, then disconnect it
    let auth = [
        ct,
        ("Cookie", cookie.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let found = request(port, "GET", "/dashboard/api/sockets?q=sub%3D42", &auth, "").await;
    let v = found.json();
    assert_eq!(v["sockets"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["sockets"][0]["id"], id.as_str());
    assert_eq!(v["sockets"][0]["authenticated"], true);
    let none = request(port, "GET", "/dashboard/api/sockets?q=sub%3D43", &auth, "").await;
    assert_eq!(none.json()["sockets"].as_array().map(Vec::len), Some(0));

    let body = json!({"socket": id}).to_string();
    let r = request(port, "POST", "/dashboard/api/deauthenticate", &auth, &body).await;
    assert_eq!(r.json()["deauthenticated"], 1, "{}", r.body);
    eventually("the socket is deauthenticated", || async {
        !victim.is_authenticated()
    })
    .await;
    let r = request(port, "POST", "/dashboard/api/disconnect", &auth, &body).await;
    assert_eq!(r.json()["disconnected"], 1, "{}", r.body);
    eventually("the server has no socket", || async {
        let r = request(port, "GET", "/dashboard/api/stats", &auth, "").await;
        r.json()["sockets"] == 0
    })
    .await;
    let r = request(
        port,
        "POST",
        "/dashboard/api/publish",
        &auth,
        &json!({"channel": "news", "data": 1}).to_string(),
    )
    .await;
    assert_eq!(r.json()["published"], 1, "{}", r.body);

    // the configuration page redacts secrets
    let r = request(port, "GET", "/dashboard/api/config", &auth, "").await;
    assert!(
        r.body.contains("dashboard-password = \"<redacted>\""),
        "{}",
        r.body
    );
    assert!(!r.body.contains(PASSWORD) && !r.body.contains(AUTH_KEY));

    // logout ends the session
    let r = request(port, "POST", "/dashboard/logout", &auth, "").await;
    assert_eq!(r.status, 303);
    let r = request(port, "GET", "/dashboard/api/stats", &auth, "").await;
    assert_eq!(r.status, 401);
}

/// Read an SSE stream until `needle` appears (10 s deadline).
async fn sse_until(port: u16, path: &str, cookie: &str, needle: &str, after: impl AsyncFnOnce()) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // the first bytes: the stream is in place
    let n = s.read(&mut buf).await.unwrap();
    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    after().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains(needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle} in {seen}"));
}

#[tokio::test]
async fn live_figures_and_publications_arrive_over_sse() {
    let serve = dashboard().await;
    let port = serve.port;
    let (cookie, _) = session(port).await;
    let mut clients = Vec::new();
    sse_until(
        port,
        "/dashboard/events",
        &cookie,
        "\"sockets\":2",
        async || {
            clients.push(client(port, None).await);
            clients.push(client(port, None).await);
        },
    )
    .await;
    sse_until(
        port,
        "/dashboard/events/channel?name=news",
        &cookie,
        "{\"channel\":\"news\",\"data\":{\"n\":7}}",
        async || {
            clients[0]
                .publish("news", &json!({"n": 7}))
                .await
                .expect("publish");
        },
    )
    .await;
}
