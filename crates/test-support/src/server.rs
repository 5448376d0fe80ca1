//! [`JsServer`]: a real `socketcluster-server` (v20 or v14) run by `interop/server.js`.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::process::{NodeProcess, WaitFailure};

/// Deadline for the `listening` line after spawning the server.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a command's reply.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`JsServer::restart`] retries binding the old port.
const RESTART_ATTEMPTS: u32 = 20;

/// Which JS package generation to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JsVersion {
    /// `socketcluster-server` 20.0.1 / `socketcluster-client` 20.0.2 (protocol version 2
    /// by default, 1 with `protocolVersion: 1`).
    #[default]
    V20,
    /// `socketcluster-server` 14.7.2 / `socketcluster-client` 14.3.2 (protocol version 1).
    V14,
}

impl JsVersion {
    /// `"20"` or `"14"`, as the runner scripts expect.
    pub fn as_str(self) -> &'static str {
        match self {
            JsVersion::V20 => "20",
            JsVersion::V14 => "14",
        }
    }
}

/// Options of [`JsServer::start`]; see `interop/README.md` for everything `server.js`
/// understands. Unset fields keep the JS defaults.
#[derive(Clone, Debug, Default)]
pub struct JsServerOptions {
    /// Package generation.
    pub version: JsVersion,
    /// Port to bind on 127.0.0.1 (`None` or `Some(0)`: chosen by the OS).
    pub port: Option<u16>,
    /// `authKey` (HMAC secret). Without it the JS server invents a random key.
    pub auth_key: Option<String>,
    /// `pingInterval` in ms (JS default 8000).
    pub ping_interval_ms: Option<u64>,
    /// `pingTimeout` in ms (JS default 30000 for v20, 20000 for v14).
    pub ping_timeout_ms: Option<u64>,
    /// `protocolVersion` (v20 only; 2 by default, 1 for compatibility mode).
    pub protocol_version: Option<u8>,
    /// `privatePattern`: a glob such as `"private/*"`; unauthenticated sockets are refused
    /// SUBSCRIBE / PUBLISH_IN on matching channels.
    pub private_pattern: Option<String>,
    /// Merged verbatim into the options JSON (overrides the fields above), e.g.
    /// `handshakeMiddleware`, `publisher`, `socketChannelLimit`, `authDefaultExpiry`.
    pub extra: Map<String, Value>,
}

impl JsServerOptions {
    /// Default options for `version`.
    pub fn new(version: JsVersion) -> Self {
        JsServerOptions {
            version,
            ..Default::default()
        }
    }

    /// Set an extra option (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON object passed to `server.js`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("version".into(), self.version.as_str().into());
        if let Some(port) = self.port {
            m.insert("port".into(), port.into());
        }
        if let Some(key) = &self.auth_key {
            m.insert("authKey".into(), key.clone().into());
        }
        if let Some(v) = self.ping_interval_ms {
            m.insert("pingInterval".into(), v.into());
        }
        if let Some(v) = self.ping_timeout_ms {
            m.insert("pingTimeout".into(), v.into());
        }
        if let Some(v) = self.protocol_version {
            m.insert("protocolVersion".into(), v.into());
        }
        if let Some(p) = &self.private_pattern {
            m.insert("privatePattern".into(), p.clone().into());
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// A running JS SocketCluster server (`node interop/server.js`), killed on drop.
///
/// Every stdout line of the server is an event (`{"event": ..., "t": ms, ...}`):
/// `listening`, `handshake`, `connection`, `connectionAbort`, `disconnection`, `closure`,
/// `subscription`, `unsubscription`, `rejected`, `authentication`,
/// `authenticationStateChange`, `deauthentication`, `badSocketAuthToken`, `transmit`,
/// `published`, `exchangePublish`, `message`, `warning`, `error`, `harnessError`.
pub struct JsServer {
    process: NodeProcess,
    port: u16,
    options: JsServerOptions,
}

impl JsServer {
    /// Install the JS peers if needed, spawn the server and wait (30 s) for its
    /// `listening` line.
    ///
    /// # Panics
    ///
    /// When the server does not come up, with its output in the message.
    pub async fn start(opts: JsServerOptions) -> JsServer {
        match Self::try_start(opts).await {
            Ok(server) => server,
            Err(message) => panic!("{message}"),
        }
    }

    /// Start, or report why not: `Err` carries the diagnostics. A failed bind (port in
    /// use) is reported with a message containing `listenError`.
    async fn try_start(opts: JsServerOptions) -> Result<JsServer, String> {
        let label = format!("JS server v{}", opts.version.as_str());
        let process = NodeProcess::spawn("server.js", &opts.to_json(), &label);
        let is_listening = |v: &Value| v["event"] == "listening";
        match process.log().wait(&is_listening, START_TIMEOUT).await {
            Ok(line) => {
                let port = line["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or_else(|| panic!("{label}: bad listening line {line}"));
                Ok(JsServer {
                    process,
                    port,
                    options: opts,
                })
            }
            Err(failure) => {
                let reason = match failure {
                    WaitFailure::Timeout => format!("did not listen within {START_TIMEOUT:?}"),
                    WaitFailure::Exited => "exited before listening".to_owned(),
                };
                Err(format!(
                    "{label} {reason} (options {})\n{}",
                    opts.to_json(),
                    process.diagnostics()
                ))
            }
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:{port}/socketcluster/` (or the configured `path`).
    pub fn url(&self) -> String {
        let path = self
            .options
            .extra
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/socketcluster/");
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// The options it was started with (with `port` as given, possibly `None`).
    pub fn options(&self) -> &JsServerOptions {
        &self.options
    }

    /// Send a control command (`{"cmd": "...", ...}`; the `id` is added) and await its
    /// reply line `{"event":"reply","id":n,"ok":bool,...}` (10 s), which is returned
    /// whether `ok` is true or not.
    ///
    /// # Panics
    ///
    /// When no reply arrives in time or the server exits.
    pub async fn command(&self, cmd: Value) -> Value {
        self.process.command(cmd, COMMAND_TIMEOUT).await
    }

    /// Like [`JsServer::command`], but panics unless the reply has `"ok": true`.
    pub async fn command_ok(&self, cmd: Value) -> Value {
        let reply = self.command(cmd.clone()).await;
        if reply["ok"] != true {
            panic!(
                "{}: command {cmd} failed: {reply}\n{}",
                self.process.label(),
                self.process.diagnostics()
            );
        }
        reply
    }

    /// The first event line satisfying `pred` that no earlier wait consumed, whether it
    /// arrived already or arrives within `timeout`. The line is consumed.
    ///
    /// # Panics
    ///
    /// On timeout or when the server exits, listing its recent events and stderr.
    pub async fn wait_event(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.process.wait_event(&pred, timeout).await
    }

    /// Like [`JsServer::wait_event`] but returns `None` instead of panicking.
    pub async fn try_wait_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.process.log().wait(&pred, timeout).await.ok()
    }

    /// Shorthand: wait for the next unconsumed line whose `event` is `name`.
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Value {
        self.wait_event(|v| v["event"] == name, timeout).await
    }

    /// Every event line of the current server process so far (a restart starts a new
    /// list), consumed or not.
    pub fn events(&self) -> Vec<Value> {
        self.process.log().snapshot()
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Stop the server: close its stdin (it exits, dropping every connection), kill it if
    /// it is still running after 5 s, and wait for it.
    pub async fn stop(&mut self) {
        self.process.close_stdin().await;
        self.process.wait_exit(Duration::from_secs(5)).await;
    }

    /// Stop, then start again **on the same port** (retrying the bind for a few seconds),
    /// with `opts` if given (e.g. another `auth_key`), else the previous options. The event
    /// list starts afresh.
    pub async fn restart(&mut self, opts: Option<JsServerOptions>) {
        self.stop().await;
        let mut opts = opts.unwrap_or_else(|| self.options.clone());
        opts.port = Some(self.port);
        let mut last_error = String::new();
        for attempt in 0..RESTART_ATTEMPTS {
            match Self::try_start(opts.clone()).await {
                Ok(server) => {
                    *self = server;
                    return;
                }
                Err(message) if message.contains("listenError") => {
                    last_error = message;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
                }
                Err(message) => panic!("restart failed: {message}"),
            }
        }
        panic!("restart: port {} stayed busy: {last_error}", self.port);
    }

    /// The ids of the open sockets, from the `clients` command.
    pub async fn client_ids(&self) -> Vec<String> {
        let reply = self.command_ok(json!({"cmd": "clients"})).await;
        reply["clients"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for JsServer {
    fn drop(&mut self) {
        self.process.kill();
    }
}
