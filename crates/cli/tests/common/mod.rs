//! Helpers shared by the `socketcluster` binary's integration tests: a running `serve`
//! process, one-shot CLI runs and a minimal HTTP client. (Each test binary uses a subset.)
#![allow(dead_code, unreachable_pub)]

pub mod recovery;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_socketcluster");

/// A running `socketcluster serve` (killed on drop) and its stderr lines.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub stderr: mpsc::UnboundedReceiver<String>,
}

impl Serve {
    /// `serve --host 127.0.0.1 ARGS`; add `--port 0` for a free port.
    pub async fn start(args: &[&str]) -> Serve {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Serve::start`] with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--host", "127.0.0.1"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn socketcluster serve");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // keep draining stderr so the server never blocks on a full pipe
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = rx.recv().await {
                if let Some(port) = listening_port(&line) {
                    return port;
                }
            }
            panic!("serve exited before listening");
        })
        .await
        .expect("serve listens within 30 s");
        Serve {
            child,
            port,
            stderr: rx,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/socketcluster/", self.port)
    }

    /// SIGTERM, then wait for a successful exit.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(exit.success(), "{exit}");
    }
}

/// The port of the `listening` log line (`addr=127.0.0.1:PORT`, text or JSON logs).
pub fn listening_port(line: &str) -> Option<u16> {
    let i = line.find("127.0.0.1:")?;
    if !line.contains("listening") {
        return None;
    }
    let digits: String = line[i + "127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The result of a one-shot CLI run.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run `socketcluster ARGS` to completion (60 s deadline), optionally feeding stdin.
pub async fn run_cli(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn socketcluster");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(input.as_bytes()).await.unwrap();
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("command finished within 60 s")
        .expect("command ran");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A client builder for `url` that reconnects quickly: after 100 ms plus up to `jitter`,
/// growing 1.5 times per attempt to at most 1 s (the tests' servers come back fast).
pub fn quick_reconnect(
    url: impl Into<String>,
    jitter: Duration,
) -> socketcluster_rs_client::ClientBuilder {
    socketcluster_rs_client::Client::builder(url).reconnect_delays(
        Duration::from_millis(100),
        jitter,
        1.5,
        Duration::from_millis(1000),
    )
}

/// A Rust client of the `serve` on `port`; with `claims`, it holds a token for them signed
/// with `auth_key` by `socketcluster token`.
pub async fn client_with_claims(
    port: u16,
    auth_key: &str,
    claims: Option<serde_json::Value>,
) -> socketcluster_rs_client::Client {
    let mut b =
        socketcluster_rs_client::Client::builder(format!("ws://127.0.0.1:{port}/socketcluster/"));
    if let Some(c) = claims {
        let out = run_cli(
            &["token", "--auth-key", auth_key, "--claims", &c.to_string()],
            None,
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        b = b.token_store(socketcluster_rs_client::MemoryTokenStore::with_token(
            out.stdout.trim().to_owned(),
        ));
    }
    b.connect().await.expect("connects")
}

/// A minimal HTTP/1.1 request on loopback: (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(k) = bearer {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("response within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
