//! `socketcluster serve --history`, the HTTP API's history and positions, and the
//! `history` and `subscribe --recover` commands (docs/PROTOCOL.md 14.16).

use std::time::Duration;

use serde_json::{Value, json};

mod common;

use common::{BIN, Serve, http, run_cli};

const KEY: &str = "history-api-key";

async fn serve(extra: &[&str]) -> Serve {
    let mut args = vec!["--port", "0", "--http-api-key", KEY, "--history", "chat/*"];
    args.extend_from_slice(extra);
    Serve::start(&args).await
}

async fn publish(serve: &Serve, channel: &str, data: Value) -> Value {
    let body = json!({"channel": channel, "data": data}).to_string();
    let (status, body) = http(serve.port, "POST", "/api/publish", Some(KEY), Some(&body)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait (generous deadline) until `channel` has exactly `want` subscribers on the server.
async fn subscribers(serve: &Serve, channel: &str, want: u64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (_, body) = http(serve.port, "GET", "/api/channels", Some(KEY), None).await;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let n = v["channels"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["channel"] == channel)
                .and_then(|c| c["subscribers"].as_u64())
                .unwrap_or(0);
            if n == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the subscribers came or went");
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn publications_get_positions_and_the_history_is_readable() {
    let serve = serve(&["--history-size", "3"]).await;
    let first = publish(&serve, "chat/1", json!("a")).await;
    assert_eq!(first["offset"], 1);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for d in ["b", "c", "d"] {
        publish(&serve, "chat/1", json!(d)).await;
    }
    // No position on a channel without history.
    assert_eq!(
        publish(&serve, "news", json!(1)).await,
        json!({"published": 1})
    );
    let batch = json!({"publications": [
        {"channel": "chat/1", "data": "e"}, {"channel": "news", "data": 2}
    ]})
    .to_string();
    let (status, body) = http(
        serve.port,
        "POST",
        "/api/publish-batch",
        Some(KEY),
        Some(&batch),
    )
    .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["positions"],
        json!([{"offset": 5, "epoch": epoch}, null])
    );

    let (status, body) = http(
        serve.port,
        "GET",
        "/api/history?channel=chat%2F1&since=3",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        h,
        json!({"channel": "chat/1", "epoch": epoch, "offset": 5,
               "publications": [{"offset": 4, "data": "d"}, {"offset": 5, "data": "e"}]})
    );
    // Size 3: the oldest kept is 3.
    let url = serve.url();
    let out = run_cli(
        &["history", "--url", &url, "--http-api-key", KEY, "chat/1"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = lines(&out.stdout);
    let offsets: Vec<_> = got.iter().map(|l| l["offset"].clone()).collect();
    assert_eq!(offsets, [json!(3), json!(4), json!(5)]);
    assert_eq!(
        got[0],
        json!({"channel": "chat/1", "data": "c", "offset": 3, "epoch": epoch})
    );
    assert!(
        out.stderr.contains(&format!("epoch {epoch}, offset 5")),
        "{}",
        out.stderr
    );

    for (path, status) in [
        ("/api/history?channel=news", 404),
        ("/api/history?channel=chat/1&limit=0", 400),
        ("/api/history?channel=chat/1&since=x", 400),
        ("/api/history", 400),
    ] {
        let (s, body) = http(serve.port, "GET", path, Some(KEY), None).await;
        assert_eq!(s, status, "{path}: {body}");
    }
    let (s, _) = http(serve.port, "GET", "/api/history?channel=chat/1", None, None).await;
    assert_eq!(s, 401, "the history needs the API key");
    let out = run_cli(
        &[
            "history",
            "--url",
            &url,
            "--http-api-key",
            "wrong",
            "chat/1",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
}

#[tokio::test]
async fn subscribe_recover_prints_positions_and_resumes_from_a_stored_one() {
    let serve = serve(&[]).await;
    let first = publish(&serve, "chat/1", json!({"n": 1})).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for n in 2..=4 {
        publish(&serve, "chat/1", json!({ "n": n })).await;
    }
    let url = serve.url();
    let from = format!("{epoch}:1");
    let (url1, from1) = (url.clone(), from.clone());
    let sub = tokio::spawn(async move {
        run_cli(
            &[
                "subscribe",
                "--url",
                &url1,
                "--from",
                &from1,
                "--count",
                "4",
                "chat/1",
            ],
            None,
        )
        .await
    });
    subscribers(&serve, "chat/1", 1).await;
    publish(&serve, "chat/1", json!({"n": 5})).await;
    let out = sub.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = lines(&out.stdout);
    assert_eq!(
        got,
        (2..=5)
            .map(|n| json!({"channel": "chat/1", "data": {"n": n}, "offset": n, "epoch": epoch}))
            .collect::<Vec<_>>(),
        "the replay, then the live one"
    );
    assert!(
        out.stderr
            .contains("recovered chat/1: 3 missed publication(s) replayed"),
        "{}",
        out.stderr
    );
    subscribers(&serve, "chat/1", 0).await;
    // A position from another epoch: told, then the current stream from its start (what
    // it still holds), then live ones.
    let url2 = url.clone();
    let sub = tokio::spawn(async move {
        run_cli(
            &[
                "subscribe",
                "--url",
                &url2,
                "--from",
                "OLDEPOCH:7",
                "--count",
                "6",
                "chat/1",
            ],
            None,
        )
        .await
    });
    subscribers(&serve, "chat/1", 1).await;
    publish(&serve, "chat/1", json!({"n": 6})).await;
    let out = sub.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let offsets: Vec<Value> = lines(&out.stdout)
        .iter()
        .map(|l| l["offset"].clone())
        .collect();
    assert_eq!(offsets, (1..=6).map(|n| json!(n)).collect::<Vec<_>>());
    assert!(
        out.stderr.contains("not recovered chat/1")
            && out
                .stderr
                .contains("recovered chat/1: 5 missed publication(s) replayed"),
        "{}",
        out.stderr
    );
    // Without --recover the lines are as before.
    subscribers(&serve, "chat/1", 0).await;
    let url3 = url.clone();
    let sub = tokio::spawn(async move {
        run_cli(
            &["subscribe", "--url", &url3, "--count", "1", "chat/1"],
            None,
        )
        .await
    });
    subscribers(&serve, "chat/1", 1).await;
    publish(&serve, "chat/1", json!({"n": 7})).await;
    let out = sub.await.unwrap();
    assert_eq!(
        lines(&out.stdout),
        [json!({"channel": "chat/1", "data": {"n": 7}})]
    );
}

#[tokio::test]
async fn history_settings_come_from_flags_env_and_toml_and_are_validated() {
    let dir = std::env::temp_dir().join(format!("sc-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("serve.toml");
    std::fs::write(
        &toml,
        "history = [\"chat/*\", \"room/*\"]\nhistory-size = 50\nhistory-ttl = 60\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--config",
            toml.to_str().unwrap(),
            "--print-config",
        ])
        .env("SOCKETCLUSTER_HISTORY_MAX_RECOVERY", "42")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("history = [\"chat/*\", \"room/*\"]"),
        "{text}"
    );
    assert!(text.contains("history-size = 50"), "{text}");
    assert!(text.contains("history-ttl = 60"), "{text}");
    assert!(text.contains("history-max-recovery = 42"), "{text}");
    for (args, setting) in [
        (
            vec!["--history", "chat/*", "--broker", "nats://127.0.0.1:4222"],
            "history",
        ),
        (
            vec!["--history", "chat/*", "--history-size", "0"],
            "history-size",
        ),
        (
            vec!["--history", "chat/*", "--history-ttl", "0"],
            "history-ttl",
        ),
    ] {
        let mut all = vec!["serve"];
        all.extend(args);
        let out = run_cli(&all, None).await;
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("invalid configuration: {setting}:")),
            "{}",
            out.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
