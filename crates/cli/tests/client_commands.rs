//! The client commands of the built `socketcluster` binary against the real JS server
//! (interop/server.js, socketcluster-server 20.0.1): output, exit codes, stderr text.

use std::process::Stdio;
use std::time::Duration;

use sc_test_support::{JsServer, JsServerOptions, event_named, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;

use common::BIN;

const KEY: &str = "testkey";

async fn run(args: &[&str], stdin: Option<&str>) -> common::Output {
    common::run_cli(args, stdin).await
}

async fn js_server(private: bool) -> JsServer {
    JsServer::start(JsServerOptions {
        auth_key: Some(KEY.into()),
        private_pattern: private.then(|| "private/*".to_owned()),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn invoke_prints_the_response_data_as_one_json_line() {
    // CLI.md `invoke`; docs/PROTOCOL.md 3.3/3.4 (SV-38-style echo)
    let server = js_server(false).await;
    let out = run(
        &[
            "invoke",
            "--url",
            &server.url(),
            "echo",
            r#"{"a":[1,"é",{"b":null}]}"#,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "{\"a\":[1,\"é\",{\"b\":null}]}\n");
    // text that is not JSON is sent as a JSON string
    let out = run(&["invoke", "--url", &server.url(), "echo", "hello"], None).await;
    assert_eq!(out.stdout, "\"hello\"\n");
    // `-` reads DATA from standard input
    let out = run(
        &["invoke", "--url", &server.url(), "echo", "-"],
        Some("{\"n\":42}\n"),
    )
    .await;
    assert_eq!(out.stdout, "{\"n\":42}\n");
}

#[tokio::test]
async fn invoke_failures_exit_non_zero_with_the_error_name_on_stderr() {
    let server = js_server(false).await;
    // a remote error keeps its name and message (CL-23-style, docs/PROTOCOL.md 3.5)
    let out = run(&["invoke", "--url", &server.url(), "error"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("CustomError: it failed"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    // an unanswered procedure times out at --timeout (CL-22)
    let out = run(
        &[
            "invoke",
            "--url",
            &server.url(),
            "--timeout",
            "500",
            "neverAnswer",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("TimeoutError: Event response for neverAnswer event timed out"),
        "{}",
        out.stderr
    );
    // nobody listening: a connection failure
    let url = format!("ws://127.0.0.1:{}/socketcluster/", free_port());
    let out = run(&["invoke", "--url", &url, "echo", "1"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("BadConnectionError"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn transmit_reaches_the_servers_receiver() {
    let server = js_server(false).await;
    let out = run(
        &[
            "transmit",
            "--url",
            &server.url(),
            "myEvent",
            r#"{"x":[1,2]}"#,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ev = server
        .wait_event(
            |v| v["event"] == "transmit" && v["name"] == "myEvent",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ev["data"], json!({"x": [1, 2]}));
}

async fn token(claims: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "--auth-key", KEY, "--claims", claims];
    args.extend_from_slice(extra);
    let out = run(&args, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

#[tokio::test]
async fn token_is_accepted_by_the_js_server() {
    // CLI.md `token`; docs/PROTOCOL.md 5.2 payload shape, 3.6.1 handshake with a token (CL-5)
    let server = js_server(false).await;
    let t = token(r#"{"username":"bob"}"#, &["--expires-in", "600"]).await;
    let payload = sc_test_support::jwt_payload(&t).unwrap();
    assert_eq!(payload["username"], "bob");
    assert_eq!(
        payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(),
        600
    );
    let out = run(
        &[
            "invoke",
            "--url",
            &server.url(),
            "--auth-token",
            &t,
            "whoami",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let who: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(who["authState"], "authenticated");
    assert_eq!(who["authToken"]["username"], "bob");
    // a token signed with another key is refused by the server
    let out = run(&["token", "--auth-key", "otherkey"], None).await;
    let bad = out.stdout.trim().to_owned();
    let out = run(
        &[
            "invoke",
            "--url",
            &server.url(),
            "--auth-token",
            &bad,
            "whoami",
        ],
        None,
    )
    .await;
    let who: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(who["authState"], "unauthenticated");
}

#[tokio::test]
async fn publish_is_acknowledged_and_a_rejection_exits_non_zero() {
    let server = js_server(true).await;
    let out = run(&["publish", "--url", &server.url(), "private/x", "1"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("UnauthorizedPublishError"),
        "{}",
        out.stderr
    );
    let t = token(r#"{"username":"bob"}"#, &[]).await;
    let out = run(
        &[
            "publish",
            "--url",
            &server.url(),
            "--auth-token",
            &t,
            "private/x",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(
        &["publish", "--url", &server.url(), "public", r#"{"a":1}"#],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A running `socketcluster subscribe` whose stdout lines are read as they come.
struct Subscriber {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Subscriber {
    fn spawn(args: &[String]) -> Subscriber {
        let mut child = Command::new(BIN)
            .arg("subscribe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn subscribe");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Subscriber { child, lines }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("a publication within 30 s")
            .expect("read stdout")
            .expect("subscriber still running");
        serde_json::from_str(&line).expect("one JSON object per line")
    }
}

/// Run `socketcluster subscribe ARGS` against a JS server that publishes
/// `{"seq": n}` on `feed` every 50 ms; the JSON lines it printed (exit status 0).
async fn subscribe_to_js_feed(args: &[&str]) -> Vec<Value> {
    let server = JsServer::start(JsServerOptions {
        auth_key: Some(KEY.into()),
        extra: json!({"publisher": {"channel": "feed", "intervalMs": 50}})
            .as_object()
            .unwrap()
            .clone(),
        ..Default::default()
    })
    .await;
    let url = server.url();
    let mut all = vec!["subscribe", "--url", url.as_str()];
    all.extend_from_slice(args);
    let out = run(&all, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn subscribe_prints_json_lines_and_exits_after_count() {
    let lines = subscribe_to_js_feed(&["--count", "3", "feed"]).await;
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["channel"], "feed");
        assert!(l["data"]["seq"].is_u64());
    }
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["data"]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// `--channel-prefix` (JS `channelPrefix`) against the JS server: subscribing to `ed`
/// with prefix `fe` subscribes the server's `feed`; the lines name `ed`.
#[tokio::test]
async fn subscribe_with_channel_prefix_uses_the_prefixed_name_on_the_wire() {
    let lines = subscribe_to_js_feed(&["--channel-prefix", "fe", "--count", "2", "ed"]).await;
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["channel"], "ed");
        assert!(l["data"]["seq"].is_u64());
    }
}

#[tokio::test]
async fn subscribe_with_token_command_survives_a_restart_with_a_new_key() {
    // Issue "Client, part 2" CLI test; docs/PROTOCOL.md 5.1 (restart with another key), 6.4.
    let dir = std::env::temp_dir().join(format!("sc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, "key-one\n").unwrap();
    let opts = |key: &str, start: u64| JsServerOptions {
        port: None,
        auth_key: Some(key.into()),
        private_pattern: Some("private/*".into()),
        extra:
            json!({"publisher": {"channel": "private/feed", "intervalMs": 100}, "startSeq": start})
                .as_object()
                .unwrap()
                .clone(),
        ..Default::default()
    };
    let mut server = JsServer::start(opts("key-one", 1)).await;
    let token_cmd = format!(
        "{BIN} token --auth-key-file {} --claims '{{\"username\":\"cli\"}}'",
        key_file.display()
    );
    let mut sub = Subscriber::spawn(&[
        "--url".into(),
        server.url(),
        "--token-command".into(),
        token_cmd,
        "--reconnect-initial-delay".into(),
        "200".into(),
        "--reconnect-randomness".into(),
        "200".into(),
        "private/feed".into(),
    ]);
    let first = sub.next().await;
    assert_eq!(first["channel"], "private/feed");
    let mut last = first["data"]["seq"].as_u64().unwrap();
    for _ in 0..3 {
        let s = sub.next().await["data"]["seq"].as_u64().unwrap();
        assert_eq!(s, last + 1, "no gap while connected");
        last = s;
    }
    // The key rotates: the old token is now signed with an unknown key.
    std::fs::write(&key_file, "key-two\n").unwrap();
    let mut next_opts = opts("key-two", 1000);
    next_opts.port = Some(server.port());
    server.restart(Some(next_opts)).await;
    // The subscriber keeps printing the new server's sequence.
    loop {
        let v = sub.next().await;
        let s = v["data"]["seq"].as_u64().unwrap();
        if s >= 1000 {
            break;
        }
    }
    let s = sub.next().await["data"]["seq"].as_u64().unwrap();
    assert!(s > 1000);
    // It re-authenticated before resubscribing: the new server rejected nothing.
    assert!(
        server.events().iter().all(|e| e["event"] != "rejected"),
        "rejections: {:?}",
        server.events()
    );
    let _ = server
        .wait_event(event_named("authentication"), Duration::from_secs(5))
        .await;
    sub.child.start_kill().ok();
    let _ = std::fs::remove_dir_all(&dir);
}
