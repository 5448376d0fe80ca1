//! `socketcluster serve` end to end, from the built binary, with the real JS client
//! (interop/client.js, socketcluster-client 20.0.2 and 14.3.2) and our CLI.

use std::time::Duration;

use sc_test_support::run_js_client;
use serde_json::{Value, json};
use tokio::process::Command;

mod common;

use common::{BIN, Serve};

async fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = common::run_cli(args, None).await;
    (out.code, out.stdout, out.stderr)
}

#[tokio::test]
async fn js_client_pub_sub_through_serve_keeps_exact_payloads() {
    // SV-43 (subscribe then publish), CL-23 (order), docs/PROTOCOL.md 2.1/2.2 payloads.
    let serve = Serve::start(&["--port", "0", "--auth-key", "k"]).await;
    let payloads = json!([
        "héllo \u{2028} wörld 🎉",
        {"nested": {"a": [1, 2.5, -3, null, true, {"b": "c"}]}},
        9007199254740991u64,
        {"buf": {"base64": true, "data": "AQID"}},
        null
    ]);
    let mut steps = vec![json!({"op": "subscribe", "channel": "news", "wait": true})];
    for p in payloads.as_array().unwrap() {
        steps.push(json!({"op": "publish", "channel": "news", "data": p}));
    }
    steps.push(json!({"op": "waitPublish", "channel": "news", "count": 5, "timeoutMs": 10000}));
    let run = run_js_client(json!({"url": serve.url(), "steps": steps})).await;
    run.assert_all_ok();
    let got: Vec<Value> = run.publications("news");
    assert_eq!(got.len(), 5, "{}", run.dump());
    for (g, p) in got.iter().zip(payloads.as_array().unwrap()) {
        assert_eq!(g, p);
    }
}

#[tokio::test]
async fn v14_js_client_works_with_protocol_version_1() {
    // docs/PROTOCOL.md 1.4 / 11.7: v14 client, version 1 heartbeat, pub/sub and RPC-free flow.
    let serve = Serve::start(&[
        "--port",
        "0",
        "--protocol-version",
        "1",
        "--ping-interval",
        "200",
        "--ping-timeout",
        "1000",
    ])
    .await;
    let run = run_js_client(json!({
        "url": serve.url(),
        "version": "14",
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "subscribe", "channel": "v1chan", "wait": true},
            {"op": "publish", "channel": "v1chan", "data": {"x": 1}},
            {"op": "waitPublish", "channel": "v1chan", "count": 1, "timeoutMs": 10000},
            // several ping intervals pass without a disconnect
            {"op": "sleep", "ms": 1500},
            {"op": "state"}
        ]
    }))
    .await;
    run.assert_all_ok();
    assert_eq!(run.publications("v1chan")[0], json!({"x": 1}));
    // the only disconnect is the runner's own 1000 close at the end
    assert!(
        run.client_events_named("disconnect")
            .iter()
            .all(|d| d["code"] == 1000),
        "{}",
        run.dump()
    );
}

#[tokio::test]
async fn auth_channels_need_an_authenticated_socket() {
    // --auth-channels: unauthenticated subscribe fails (subscribeFail with the error name),
    // a token signed by `socketcluster token` with the same key is accepted (CL-5).
    let serve = Serve::start(&[
        "--port",
        "0",
        "--auth-key",
        "secret",
        "--auth-channels",
        "private/*",
    ])
    .await;
    let run = run_js_client(json!({
        "url": serve.url(),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "subscribe", "channel": "private/a", "wait": true}
        ]
    }))
    .await;
    let fails = run.client_events_named("subscribeFail");
    assert_eq!(fails.len(), 1, "{}", run.dump());
    assert_eq!(fails[0]["error"]["name"], "UnauthorizedSubscribeError");

    let (code, token, _) = run_cli(&[
        "token",
        "--auth-key",
        "secret",
        "--claims",
        r#"{"username":"ann"}"#,
    ])
    .await;
    assert_eq!(code, 0);
    let run = run_js_client(json!({
        "url": serve.url(),
        "authToken": token.trim(),
        "steps": [
            {"op": "waitEvent", "name": "connect"},
            {"op": "subscribe", "channel": "private/a", "wait": true},
            {"op": "publish", "channel": "private/a", "data": "ok"},
            {"op": "waitPublish", "channel": "private/a", "count": 1, "timeoutMs": 10000}
        ]
    }))
    .await;
    run.assert_all_ok();
    let connect = &run.client_events_named("connect")[0];
    assert_eq!(connect["isAuthenticated"], true, "{}", run.dump());
}

#[tokio::test]
async fn no_client_publish_refuses_client_publications() {
    let serve = Serve::start(&["--port", "0", "--no-client-publish"]).await;
    let (code, _, err) = run_cli(&["publish", "--url", &serve.url(), "ch", "1"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("InvalidActionError: Client publish feature is disabled"),
        "{err}"
    );
}

#[tokio::test]
async fn print_config_shows_flags_over_env_over_file_over_defaults() {
    let dir = std::env::temp_dir().join(format!("sc-serve-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sc.toml");
    std::fs::write(
        &file,
        "port = 9001\nping-interval = 1000\nping-timeout = 5000\npath = \"/file/\"\nauth-key = \"from-file\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--print-config", "--ping-interval", "2000"])
        .env("SOCKETCLUSTER_PING_INTERVAL", "3000")
        .env("SOCKETCLUSTER_PATH", "/env/")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cfg: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        cfg["ping-interval"].as_integer(),
        Some(2000),
        "flag beats env and file"
    );
    assert_eq!(cfg["path"].as_str(), Some("/env/"), "env beats file");
    assert_eq!(cfg["port"].as_integer(), Some(9001), "file beats default");
    assert_eq!(cfg["ping-timeout"].as_integer(), Some(5000));
    assert_eq!(cfg["protocol-version"].as_integer(), Some(2), "default");
    assert_eq!(cfg["auth-key"].as_str(), Some("<redacted>"));
    assert!(!text.contains("from-file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn invalid_configuration_exits_2_naming_the_setting() {
    for (args, setting) in [
        (vec!["--protocol-version", "3"], "protocol-version"),
        (
            vec!["--ping-interval", "5000", "--ping-timeout", "1000"],
            "ping-timeout",
        ),
        (vec!["--auth-algorithm", "none"], "auth-algorithm"),
        (vec!["--auth-key-file", "/nonexistent/key"], "auth-key-file"),
        (vec!["--log-format", "xml"], "log-format"),
    ] {
        let mut all = vec!["serve", "--port", "1"];
        all.extend(args);
        let (code, _, err) = run_cli(&all).await;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains(&format!("invalid configuration: {setting}:")),
            "{err}"
        );
    }
    let (code, _, err) = run_cli(&["serve", "--config", "/nonexistent.toml"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("invalid configuration: config:"), "{err}");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut serve = Serve::start(&["--port", "0"]).await;
    let pid = serve.child.id().expect("pid");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success());
    let mut saw = false;
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(5), serve.stderr.recv()).await
    {
        saw |= line.contains("shutting down");
    }
    assert!(saw, "logs the shutdown");
}

#[tokio::test]
async fn payload_text_passes_through_unchanged_between_rust_clients() {
    // The server never re-encodes a payload: integers beyond 2^53 keep every digit.
    let serve = Serve::start(&["--port", "0"]).await;
    let url = serve.url();
    let sub = tokio::spawn({
        let url = url.clone();
        async move { run_cli(&["subscribe", "--url", &url, "--count", "1", "big"]).await }
    });
    // publish until the subscriber has subscribed and received one
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, err) = run_cli(&[
            "publish",
            "--url",
            &url,
            "big",
            r#"{"n":12345678901234567890,"f":0.1}"#,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        if sub.is_finished() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = sub.await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "{\"channel\":\"big\",\"data\":{\"n\":12345678901234567890,\"f\":0.1}}\n"
    );
}

#[tokio::test]
async fn json_logs_have_one_line_per_lifecycle_event_and_no_secrets() {
    let mut serve = Serve::start(&["--port", "0", "--auth-key", "k", "--log-format", "json"]).await;
    let (code, token, _) = run_cli(&[
        "token",
        "--auth-key",
        "k",
        "--claims",
        r#"{"secret":"s3cr3t-claim"}"#,
    ])
    .await;
    assert_eq!(code, 0);
    let token = token.trim().to_owned();
    let (code, _, err) = run_cli(&[
        "publish",
        "--url",
        &serve.url(),
        "--auth-token",
        &token,
        "ch",
        r#"{"payload":"very-private-payload"}"#,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    serve.terminate().await;
    let mut lines = Vec::new();
    while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(5), serve.stderr.recv()).await
    {
        lines.push(l);
    }
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["fields"]["message"].as_str())
        .collect();
    for expected in [
        "connection accepted",
        "handshake completed",
        "authenticated",
        "connection closed",
    ] {
        assert_eq!(
            messages.iter().filter(|m| **m == expected).count(),
            1,
            "exactly one `{expected}` line: {messages:?}"
        );
    }
    let all = lines.join("\n");
    let signature = token.rsplit('.').next().unwrap();
    for secret in [
        token.as_str(),
        signature,
        "s3cr3t-claim",
        "very-private-payload",
    ] {
        assert!(!all.contains(secret), "the logs leak {secret:?}");
    }
}
