//! `serve --proxy-*` end to end: the real JS client v20 against `serve` whose hooks post
//! to the Node backend `interop/proxy_backend.js` (the README example), plus
//! `socketcluster invoke` and a reconnect storm (`interop/proxy_storm.js`).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use sc_test_support::{ensure_npm_installed, interop_dir, run_js_client};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "backend-secret";

struct Backend {
    _child: Child,
    port: u16,
}

async fn backend(secret: &str) -> Backend {
    ensure_npm_installed();
    spawn_backend("node", "proxy_backend.js", secret).await
}

async fn spawn_backend(program: &str, script: &str, secret: &str) -> Backend {
    let mut child = Command::new(program)
        .arg(interop_dir().join(script))
        .env("PROXY_SECRET", secret)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("backend starts")
        .unwrap()
        .expect("port line");
    let port = serde_json::from_str::<Value>(&line).unwrap()["port"]
        .as_u64()
        .unwrap() as u16;
    Backend {
        _child: child,
        port,
    }
}

impl Backend {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/sc", self.port)
    }
    async fn stats(&self) -> Value {
        let (status, body) = http(self.port, "GET", "/stats", None, None).await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }
}

async fn serve_with(b: &Backend, secret: &str, extra: &[&str]) -> Serve {
    let url = b.url();
    let mut args = vec![
        "--port",
        "0",
        "--auth-key",
        "server-key",
        "--proxy-secret",
        secret,
        "--proxy-rpc",
        &url,
        "--proxy-rpc-patterns",
        "login,whoami,slow,garbage",
        "--proxy-rpc-timeout",
        "500",
        "--proxy-subscribe",
        &url,
        "--proxy-subscribe-patterns",
        "private/*,room/*",
        "--proxy-publish",
        &url,
        "--proxy-publish-patterns",
        "chat/*",
    ];
    args.extend_from_slice(extra);
    Serve::start(&args).await
}

fn error_of(run: &sc_test_support::JsClientRun, i: usize) -> Value {
    let s = run.step(i);
    assert_eq!(s["ok"], false, "step {i} should fail: {}", run.dump());
    s["error"].clone()
}

#[tokio::test]
async fn js_client_logs_in_subscribes_and_publishes_through_the_backend() {
    let b = backend(SECRET).await;
    let serve = serve_with(&b, SECRET, &[]).await;
    let run = run_js_client(json!({
        "url": serve.url(),
        "timeoutMs": 30000,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "alice", "password": "nope"}},
            {"op": "subscribe", "channel": "private/alice"},
            {"op": "waitEvent", "name": "subscribeFail"},
            {"op": "invoke", "procedure": "login", "data": {"username": "alice", "password": "secret"}},
            {"op": "waitEvent", "name": "authStateChange"},
            {"op": "invoke", "procedure": "whoami"},
            {"op": "subscribe", "channel": "private/alice", "wait": true},
            {"op": "subscribe", "channel": "private/bob"},
            {"op": "waitEvent", "name": "subscribeFail", "count": 2},
            {"op": "subscribe", "channel": "chat/main", "wait": true},
            {"op": "publish", "channel": "chat/main", "data": {"text": "hi"}},
            {"op": "waitPublish", "channel": "chat/main"},
            {"op": "invoke", "procedure": "notCovered"},
            {"op": "invoke", "procedure": "slow"},
            {"op": "invoke", "procedure": "garbage"},
            {"op": "state"},
        ],
    }))
    .await;
    // the backend's error reaches the invoke rejection with its extra field
    let e = error_of(&run, 1);
    assert_eq!(e["name"], "LoginError", "{}", run.dump());
    assert_eq!(e["message"], "Wrong user name or password");
    assert_eq!(e["field"], "password");
    let fails = run.client_events_named("subscribeFail");
    assert_eq!(fails.len(), 2, "{}", run.dump());
    let fail_text = fails[0].to_string();
    assert!(
        fail_text.contains("ForbiddenError")
            && fail_text.contains("You may not read private/alice"),
        "{fail_text}"
    );
    assert_eq!(run.step_result(4), &json!("welcome"), "{}", run.dump());
    let changes = run.client_events_named("authStateChange");
    assert!(
        changes[0].to_string().contains("authenticated"),
        "{changes:?}"
    );
    assert_eq!(run.step_result(6), &json!("alice"));
    assert!(fails[1].to_string().contains("private/bob"));
    assert_eq!(
        run.publications("chat/main"),
        vec![json!({"text": "hi", "from": "alice"})],
        "{}",
        run.dump()
    );
    assert_eq!(error_of(&run, 13)["name"], "UnhandledProcedureError");
    assert_eq!(error_of(&run, 14)["name"], "ProxyTimeoutError");
    assert_eq!(error_of(&run, 15)["name"], "ProxyBadResponseError");
    assert_eq!(run.step_result(16)["authToken"]["username"], "alice");
    // every request carried a valid signature
    let stats = b.stats().await;
    assert_eq!(stats["badSignatures"], 0, "{stats}");
    assert!(stats["calls"]["rpc"].as_u64().unwrap() >= 5, "{stats}");
    // the failing hook shows on /health, which stays 200 (degraded)
    let (status, body) = http(serve.port, "GET", "/health", None, None).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let rpc = &health["proxy"]["hooks"][0];
    assert_eq!(rpc["hook"], "rpc");
    assert!(rpc["errors"].as_u64().unwrap() >= 2, "{health}");
    // per-hook metrics
    let (_, metrics) = http(serve.port, "GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("socketcluster_proxy_calls_total{hook=\"rpc\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socketcluster_proxy_errors_total{hook=\"rpc\",kind=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socketcluster_proxy_duration_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_backend_and_a_dead_backend_is_named() {
    let b = backend(SECRET).await;
    let serve = serve_with(&b, "wrong-secret", &[]).await;
    let out = run_cli(
        &[
            "invoke",
            "--url",
            &serve.url(),
            "login",
            r#"{"username":"a","password":"secret"}"#,
        ],
        None,
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("ProxyBadResponseError"),
        "{}",
        out.stderr
    );
    assert_eq!(b.stats().await["badSignatures"], 1);

    let dead = sc_test_support::free_port();
    let url = format!("http://127.0.0.1:{dead}/sc");
    let serve = Serve::start(&["--port", "0", "--proxy-rpc", &url]).await;
    let started = std::time::Instant::now();
    let out = run_cli(&["invoke", "--url", &serve.url(), "anything"], None).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("ProxyUnavailableError"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn socketcluster_invoke_goes_through_the_backend() {
    let b = backend(SECRET).await;
    let serve = serve_with(&b, SECRET, &[]).await;
    let out = run_cli(
        &[
            "invoke",
            "--url",
            &serve.url(),
            "login",
            r#"{"username":"carol","password":"secret"}"#,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "\"welcome\"");
    let out = run_cli(
        &[
            "invoke",
            "--url",
            &serve.url(),
            "login",
            r#"{"username":"carol"}"#,
        ],
        None,
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("LoginError: Wrong user name or password"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_resubscribe_storm_costs_a_handful_of_backend_calls() {
    let b = backend(SECRET).await;
    let serve = serve_with(&b, SECRET, &[]).await;
    let sockets = std::env::var("PROXY_STORM_SOCKETS").unwrap_or_else(|_| "500".into());
    let out = tokio::time::timeout(
        Duration::from_secs(450),
        Command::new("node")
            .arg(interop_dir().join("proxy_storm.js"))
            .args([serve.url(), sockets.clone()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("storm finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"resubscribed\""), "{stdout}");
    let calls = b.stats().await["calls"]["subscribe"].as_u64().unwrap_or(0);
    let n: u64 = sockets.parse().unwrap();
    // 2 x n x 10 subscriptions; one call per channel (coalesced, then cached)
    assert!(
        calls <= 10,
        "{calls} backend calls for {} subscriptions",
        2 * n * 10
    );
}

/// The README example verbatim: `interop/proxy_backend.py` behind `serve`, used by the
/// unchanged JS client.
#[tokio::test]
async fn the_readme_python_backend_works_with_the_js_client() {
    ensure_npm_installed();
    let b = spawn_backend("python3", "proxy_backend.py", SECRET).await;
    let url = b.url();
    let serve = Serve::start(&[
        "--port",
        "0",
        "--auth-key",
        "server-key",
        "--proxy-secret",
        SECRET,
        "--proxy-rpc",
        &url,
        "--proxy-rpc-patterns",
        "login,whoami",
        "--proxy-subscribe",
        &url,
        "--proxy-subscribe-patterns",
        "private/*",
        "--proxy-publish",
        &url,
        "--proxy-publish-patterns",
        "chat/*",
    ])
    .await;
    let run = run_js_client(json!({
        "url": serve.url(),
        "timeoutMs": 30000,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "alice", "password": "bad"}},
            {"op": "invoke", "procedure": "login", "data": {"username": "alice", "password": "secret"}},
            {"op": "waitEvent", "name": "authStateChange"},
            {"op": "invoke", "procedure": "whoami"},
            {"op": "subscribe", "channel": "private/alice", "wait": true},
            {"op": "subscribe", "channel": "private/bob"},
            {"op": "waitEvent", "name": "subscribeFail"},
            {"op": "subscribe", "channel": "chat/main", "wait": true},
            {"op": "publish", "channel": "chat/main", "data": {"text": "hi"}},
            {"op": "waitPublish", "channel": "chat/main"},
            {"op": "invoke", "procedure": "other"},
        ],
    }))
    .await;
    let e = error_of(&run, 1);
    assert_eq!(
        (e["name"].as_str(), e["field"].as_str()),
        (Some("LoginError"), Some("password")),
        "{}",
        run.dump()
    );
    assert_eq!(run.step_result(2), &json!("welcome"), "{}", run.dump());
    assert_eq!(run.step_result(4), &json!("alice"));
    assert!(run.step(5)["ok"].as_bool().unwrap(), "{}", run.dump());
    assert!(
        run.client_events_named("subscribeFail")[0]
            .to_string()
            .contains("ForbiddenError")
    );
    assert_eq!(
        run.publications("chat/main"),
        vec![json!({"text": "hi", "from": "alice"})]
    );
    assert_eq!(error_of(&run, 11)["name"], "UnhandledProcedureError");
    // a request signed with another key is refused by the backend
    let serve = Serve::start(&[
        "--port",
        "0",
        "--proxy-secret",
        "other",
        "--proxy-rpc",
        &url,
    ])
    .await;
    let out = run_cli(&["invoke", "--url", &serve.url(), "whoami"], None).await;
    assert!(
        out.stderr.contains("ProxyBadResponseError"),
        "{}",
        out.stderr
    );
}

/// The JS client v14 (protocol version 1) gets the same answers.
#[tokio::test]
async fn js_client_v14_logs_in_through_the_backend() {
    let b = backend(SECRET).await;
    let serve = serve_with(&b, SECRET, &["--protocol-version", "1"]).await;
    let run = run_js_client(json!({
        "url": serve.url(),
        "version": "14",
        "timeoutMs": 30000,
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "invoke", "procedure": "login", "data": {"username": "dave", "password": "x"}},
            {"op": "invoke", "procedure": "login", "data": {"username": "dave", "password": "secret"}},
            {"op": "waitEvent", "name": "authStateChange"},
            {"op": "invoke", "procedure": "whoami"},
            {"op": "subscribe", "channel": "private/erin"},
            {"op": "waitEvent", "name": "subscribeFail"},
            {"op": "invoke", "procedure": "notCovered"},
        ],
    }))
    .await;
    let e = error_of(&run, 1);
    assert_eq!(
        (e["name"].as_str(), e["field"].as_str()),
        (Some("LoginError"), Some("password")),
        "{}",
        run.dump()
    );
    assert_eq!(run.step_result(2), &json!("welcome"), "{}", run.dump());
    assert_eq!(run.step_result(4), &json!("dave"));
    assert!(
        run.client_events_named("subscribeFail")[0]
            .to_string()
            .contains("ForbiddenError")
    );
    assert_eq!(error_of(&run, 7)["name"], "UnhandledProcedureError");
}
