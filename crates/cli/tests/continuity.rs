//! Continuity, part 1 (docs/PROTOCOL.md 14.1): with a token provider, no failure of the
//! provider and no auth-related rejection ever removes a channel the application
//! subscribed to. The Rust client holds a token for `private/feed`; the server restarts
//! with a new key (the handshake rejects the old token); then the provider fails once,
//! fails for 30 s, hangs past its timeout, or returns a token for the wrong (old) key.
//! Each scenario runs against the real JS server (socketcluster-server 20.0.1 with a
//! middleware that refuses unauthenticated subscriptions to `private/*`) and against
//! ours (`socketcluster serve --auth-channels 'private/*'`), and the subscription must
//! keep receiving the new server's publications with no `subscribeFail`.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Serve};
use sc_test_support::{JsServer, JsServerOptions, JsVersion, sign_hs256, unix_now};
use serde_json::json;
use socketcluster_rs_client::{
    ChannelState, Client, Event, MemoryTokenStore, ReconnectOptions, Subscription, TokenRequest,
};
use tokio::io::AsyncWriteExt;

const FEED: &str = "private/feed";
const WAIT: Duration = Duration::from_secs(30);
/// Publications of the restarted server start here.
const RESTART_SEQ: u64 = 1000;
const HTTP_API_KEY: &str = "continuity-api-key";

fn token(key: &str) -> String {
    let now = unix_now();
    sign_hs256(
        &json!({"username": "bob", "iat": now, "exp": now + 3600}),
        key,
    )
}

/// The server under test: the JS reference or ours, with a publisher of sequence numbers
/// on `private/feed` every 100 ms.
#[allow(clippy::large_enum_variant)] // one per test
enum Backend {
    Js(JsServer),
    Ours {
        serve: Serve,
        seq: Arc<AtomicU64>,
        publisher: tokio::task::JoinHandle<()>,
    },
}

fn js_options(key: &str, start_seq: u64, port: Option<u16>) -> JsServerOptions {
    let mut o = JsServerOptions::new(JsVersion::V20)
        .with("publisher", json!({"channel": FEED, "intervalMs": 100}))
        .with("startSeq", start_seq);
    o.auth_key = Some(key.to_owned());
    o.private_pattern = Some("private/*".to_owned());
    o.port = port;
    o
}

async fn serve(key: &str, port: u16) -> Serve {
    let port = port.to_string();
    Serve::start(&[
        "--port",
        &port,
        "--auth-key",
        key,
        "--auth-channels",
        "private/*",
        "--http-api-key",
        HTTP_API_KEY,
    ])
    .await
}

/// `POST /api/publish`, ignoring every failure (the server may be restarting).
async fn publish_quietly(port: u16, seq: u64) {
    let body = json!({"channel": FEED, "data": {"seq": seq}}).to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {HTTP_API_KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(req.as_bytes()).await?;
        let mut sink = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await?;
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), attempt).await;
}

impl Backend {
    async fn start(js: bool, key: &str) -> Backend {
        if js {
            return Backend::Js(JsServer::start(js_options(key, 1, None)).await);
        }
        let serve = serve(key, 0).await;
        let seq = Arc::new(AtomicU64::new(1));
        let (port, s2) = (serve.port, seq.clone());
        let publisher = tokio::spawn(async move {
            loop {
                publish_quietly(port, s2.fetch_add(1, Ordering::SeqCst)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Backend::Ours {
            serve,
            seq,
            publisher,
        }
    }

    fn url(&self) -> String {
        match self {
            Backend::Js(s) => s.url(),
            Backend::Ours { serve, .. } => serve.url(),
        }
    }

    /// Restart on the same port with another key; publications restart at 1000.
    async fn restart(&mut self, key: &str) {
        match self {
            Backend::Js(s) => {
                let port = s.port();
                s.restart(Some(js_options(key, RESTART_SEQ, Some(port))))
                    .await;
            }
            Backend::Ours { serve: s, seq, .. } => {
                let port = s.port;
                s.terminate().await;
                seq.store(RESTART_SEQ, Ordering::SeqCst);
                *s = serve(key, port).await;
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Ours { publisher, .. } = self {
            publisher.abort();
        }
    }
}

/// What the provider does after the restart (calls before it always succeed).
#[derive(Clone, Copy)]
enum Failure {
    /// The first call after the restart returns an error.
    Once,
    /// Every call returns an error for 30 s after the restart.
    For30s,
    /// The first call after the restart never answers.
    Hangs,
    /// The first two calls after the restart sign with the old key.
    WrongKey,
}

/// A token provider signing with the current key, failing as told after the restart.
#[derive(Clone)]
struct Provider {
    key: Arc<Mutex<String>>,
    old_key: String,
    restarted_at: Arc<Mutex<Option<Instant>>>,
    calls_after_restart: Arc<AtomicUsize>,
    failure: Failure,
}

impl Provider {
    fn new(key: &str, failure: Failure) -> Provider {
        Provider {
            key: Arc::new(Mutex::new(key.to_owned())),
            old_key: key.to_owned(),
            restarted_at: Arc::new(Mutex::new(None)),
            calls_after_restart: Arc::new(AtomicUsize::new(0)),
            failure,
        }
    }

    fn rotate(&self, key: &str) {
        *self.key.lock().unwrap() = key.to_owned();
        *self.restarted_at.lock().unwrap() = Some(Instant::now());
    }

    async fn token(&self) -> Result<String, std::io::Error> {
        let key = self.key.lock().unwrap().clone();
        let Some(at) = *self.restarted_at.lock().unwrap() else {
            return Ok(token(&key));
        };
        let n = self.calls_after_restart.fetch_add(1, Ordering::SeqCst);
        match self.failure {
            Failure::Once if n == 0 => Err(std::io::Error::other("login service down (once)")),
            Failure::For30s if at.elapsed() < Duration::from_secs(30) => {
                Err(std::io::Error::other("login service down (30 s)"))
            }
            Failure::Hangs if n == 0 => std::future::pending().await,
            Failure::WrongKey if n < 2 => Ok(token(&self.old_key)),
            _ => Ok(token(&key)),
        }
    }
}

/// Every event, recorded in the background.
fn record(client: &Client) -> Arc<Mutex<Vec<Event>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l2, mut events) = (log.clone(), client.events());
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            l2.lock().unwrap().push(e);
        }
    });
    log
}

async fn next_seq(sub: &mut Subscription, within: Duration) -> u64 {
    let m = tokio::time::timeout(within, sub.recv())
        .await
        .expect("a publication in time")
        .expect("the subscription is still open");
    m.value()["seq"].as_u64().expect("seq")
}

async fn scenario(js: bool, failure: Failure) {
    let mut server = Backend::start(js, "key-one").await;
    let provider = Provider::new("key-one", failure);
    let p2 = provider.clone();
    let client = Client::builder(server.url())
        .reconnect_delays(
            Duration::from_millis(200),
            Duration::from_millis(200),
            1.5,
            Duration::from_millis(2000),
        )
        .token_store(MemoryTokenStore::with_token(token("key-one")))
        .token_provider(move |_r: TokenRequest| {
            let p = p2.clone();
            async move { p.token().await }
        })
        .token_provider_timeout(Duration::from_secs(2))
        .reauth_retry(ReconnectOptions::new(
            Duration::from_millis(500),
            Duration::from_millis(500),
            2.0,
            Duration::from_millis(4000),
        ))
        .connect()
        .await
        .expect("connects");
    let log = record(&client);
    let mut sub = client.subscribe(FEED).await.unwrap();
    sub.subscribed().await.unwrap();
    next_seq(&mut sub, WAIT).await;

    // The provider's 30 s of failures count from the rotation, which comes before the
    // (JS: seconds long) restart; so does the time to recover.
    let rotated = Instant::now();
    provider.rotate("key-two");
    server.restart("key-two").await;
    let within = match failure {
        Failure::For30s => Duration::from_secs(60),
        _ => WAIT,
    };
    // The channel is never dropped: it is pending or subscribed throughout, and the new
    // server's publications arrive.
    let mut checks = tokio::time::interval(Duration::from_millis(100));
    let first_new = tokio::time::timeout(within, async {
        loop {
            tokio::select! {
                m = sub.recv() => {
                    let seq = m.expect("the subscription is still open").value()["seq"]
                        .as_u64()
                        .expect("seq");
                    if seq >= RESTART_SEQ {
                        return seq;
                    }
                }
                _ = checks.tick() => {
                    let state = client.channel_state(FEED);
                    assert_ne!(state, ChannelState::Unsubscribed, "the channel was dropped");
                }
            }
        }
    })
    .await
    .expect("the new server's publications arrive");
    let recovered_after = rotated.elapsed();
    let next = next_seq(&mut sub, WAIT).await;
    assert!(next > first_new);
    assert_eq!(client.channel_state(FEED), ChannelState::Subscribed);

    let events = log.lock().unwrap().clone();
    let fails: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ReauthenticationFailed { error, retry_in } => Some((error.clone(), *retry_in)),
            _ => None,
        })
        .collect();
    assert!(
        !events.iter().any(|e| e.name() == "subscribeFail"),
        "no subscribeFail: {events:?}"
    );
    assert!(
        fails.iter().all(|(_, r)| r.is_some()),
        "every failed attempt announces the next: {fails:?}"
    );
    match failure {
        Failure::Once => assert_eq!(fails.len(), 1, "{fails:?}"),
        Failure::Hangs => {
            assert_eq!(fails.len(), 1, "{fails:?}");
            assert!(fails[0].0.contains("TimeoutError"), "{fails:?}");
        }
        Failure::WrongKey => assert_eq!(fails.len(), 2, "{fails:?}"),
        Failure::For30s => {
            assert!(recovered_after >= Duration::from_secs(30));
            assert!(fails.len() >= 6, "{fails:?}");
            assert!(
                fails
                    .iter()
                    .all(|(_, r)| r.is_some_and(|d| d <= Duration::from_millis(4000))),
                "capped: {fails:?}"
            );
        }
    }
    client.close().await;
}

#[tokio::test]
async fn js_server_provider_fails_once() {
    scenario(true, Failure::Once).await;
}

#[tokio::test]
async fn our_server_provider_fails_once() {
    scenario(false, Failure::Once).await;
}

#[tokio::test]
async fn js_server_provider_fails_for_30_s() {
    scenario(true, Failure::For30s).await;
}

#[tokio::test]
async fn our_server_provider_fails_for_30_s() {
    scenario(false, Failure::For30s).await;
}

#[tokio::test]
async fn js_server_provider_hangs_past_its_timeout() {
    scenario(true, Failure::Hangs).await;
}

#[tokio::test]
async fn our_server_provider_hangs_past_its_timeout() {
    scenario(false, Failure::Hangs).await;
}

#[tokio::test]
async fn js_server_provider_returns_a_token_for_the_wrong_key() {
    scenario(true, Failure::WrongKey).await;
}

#[tokio::test]
async fn our_server_provider_returns_a_token_for_the_wrong_key() {
    scenario(false, Failure::WrongKey).await;
}

/// The same through the command line: `subscribe --token-command` whose command fails
/// (exits non-zero) twice after the restart, then prints a token for the new key.
#[tokio::test]
async fn subscribe_token_command_that_fails_keeps_the_channel() {
    let dir = std::env::temp_dir().join(format!("sc-continuity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    let failures_left = dir.join("failures-left");
    std::fs::write(&key_file, "key-one\n").unwrap();
    std::fs::write(&failures_left, "0").unwrap();
    let mut server = Backend::start(true, "key-one").await;
    // Fails (exit 3) while failures-left is above 0, decrementing it.
    let script = format!(
        "n=$(cat {f}); if [ \"$n\" -gt 0 ]; then echo $((n-1)) > {f}; \
         echo 'login service down' >&2; exit 3; fi; \
         {BIN} token --auth-key-file {k} --claims '{{\"username\":\"cli\"}}'",
        f = failures_left.display(),
        k = key_file.display(),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "subscribe",
            "--url",
            &server.url(),
            "--token-command",
            &script,
            "--reconnect-initial-delay",
            "200",
            "--reconnect-randomness",
            "200",
            FEED,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next = async || -> u64 {
        let l = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("subscribe is still running");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        v["data"]["seq"].as_u64().unwrap()
    };
    next().await;
    std::fs::write(&key_file, "key-two\n").unwrap();
    std::fs::write(&failures_left, "2").unwrap();
    server.restart("key-two").await;
    loop {
        if next().await >= RESTART_SEQ {
            break;
        }
    }
    assert_eq!(std::fs::read_to_string(&failures_left).unwrap().trim(), "0");
    child.start_kill().ok();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("re-authentication failed").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert!(!stderr.contains("subscribeFail"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
