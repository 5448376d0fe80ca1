//! Test harness: real backplane server processes on free ports (killed on drop), a raw
//! WebSocket SocketCluster client, and a group of `socketcluster_server::Server`s.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use socketcluster_server::{Server, ServerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Deadline for any single expected event (generous: the machine may be loaded).
pub const WAIT: Duration = Duration::from_secs(20);

/// Find an executable on `PATH` or in the usual system directories. Panics with a clear
/// message when it is missing: these tests must never be skipped silently.
pub fn find_binary(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found on PATH or in /usr/bin, /usr/sbin, /usr/local/bin: \
                 install it (Debian/Ubuntu: `apt-get install {name}`) to run these tests"
            )
        })
}

/// A free TCP port on 127.0.0.1 (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A fresh scratch directory, removed by [`ScratchDir`]'s drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sc-broker-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Send one inline command to a Redis server, return the first reply line.
pub fn redis_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut s = StdTcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-server` process on its own port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    cluster: bool,
    dir: ScratchDir,
}

impl RedisServer {
    /// Start a standalone server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Start a single-node Redis Cluster owning every slot.
    pub fn start_cluster() -> RedisServer {
        let s = Self::start_with(true);
        let reply = redis_command(s.port, "CLUSTER ADDSLOTSRANGE 0 16383").expect("ADDSLOTSRANGE");
        assert!(reply.starts_with("+OK"), "CLUSTER ADDSLOTSRANGE: {reply}");
        let deadline = Instant::now() + WAIT;
        loop {
            let info = redis_command(s.port, "CLUSTER INFO").unwrap_or_default();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never became ok: {info}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn start_with(cluster: bool) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            cluster,
            dir: ScratchDir::new("redis"),
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let bin = find_binary("redis-server");
        let mut cmd = Command::new(bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"));
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(reply) = redis_command(self.port, "PING")
                && reply.starts_with("+PONG")
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the process (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        if self.cluster {
            panic!("restart is only supported for standalone servers");
        }
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server bound on 127.0.0.1, port 0, with the given broker.
pub async fn start_server(broker: Arc<dyn socketcluster_server::broker::Broker>) -> Server {
    let config = ServerConfig::default().with_host("127.0.0.1").with_port(0);
    let server = Server::with_broker(config, broker).expect("server");
    server.listen().await.expect("listen");
    server
}

/// A minimal SocketCluster client over a raw WebSocket, speaking protocol version 2.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    publications: mpsc::UnboundedReceiver<(String, Value)>,
    closed: Arc<AtomicBool>,
    next_cid: u64,
    pub id: String,
}

impl WsClient {
    pub async fn connect(server: &Server) -> WsClient {
        let url = format!(
            "ws://{}/socketcluster/",
            server.local_addr().expect("listening")
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Default::default();
        let (pub_tx, pub_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        {
            let out = out_tx.clone();
            let pending = pending.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else {
                        if let Message::Close(_) = msg {
                            break;
                        }
                        continue;
                    };
                    if text.as_str().is_empty() {
                        let _ = out.send(Message::text(""));
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(rid) = v.get("rid").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&rid) {
                            let _ = tx.send(v);
                        }
                    } else if v["event"] == "#publish" {
                        let ch = v["data"]["channel"].as_str().unwrap_or_default().to_owned();
                        let _ = pub_tx.send((ch, v["data"]["data"].clone()));
                    }
                }
                closed.store(true, Ordering::SeqCst);
            });
        }
        let mut c = WsClient {
            out: out_tx,
            pending,
            publications: pub_rx,
            closed,
            next_cid: 0,
            id: String::new(),
        };
        let reply = c.invoke("#handshake", json!({"authToken": null})).await;
        c.id = reply["data"]["id"]
            .as_str()
            .expect("handshake id")
            .to_owned();
        c
    }

    /// Invoke and wait for the response packet (`{"rid":..,"data"|"error":..}`).
    pub async fn invoke(&mut self, event: &str, data: Value) -> Value {
        self.next_cid += 1;
        let cid = self.next_cid;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(cid, tx);
        let frame = json!({"event": event, "data": data, "cid": cid}).to_string();
        self.out
            .send(Message::text(frame))
            .expect("socket writer gone");
        tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no reply to {event}"))
            .expect("socket closed before the reply")
    }

    pub async fn subscribe(&mut self, channel: &str) {
        let r = self.invoke("#subscribe", json!({"channel": channel})).await;
        assert!(
            r.get("error").is_none(),
            "subscribe {channel:?} failed: {r}"
        );
    }

    pub async fn unsubscribe(&mut self, channel: &str) {
        let r = self.invoke("#unsubscribe", json!(channel)).await;
        assert!(
            r.get("error").is_none(),
            "unsubscribe {channel:?} failed: {r}"
        );
    }

    /// Invoked publish: `Ok` on `{"rid":n}`, `Err(error object)` on an error reply.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Result<(), Value> {
        let r = self
            .invoke("#publish", json!({"channel": channel, "data": data}))
            .await;
        match r.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Send publishes without waiting for the acknowledgements (in order).
    pub fn transmit_publish(&mut self, channel: &str, data: Value) {
        let frame = json!({"event": "#publish", "data": {"channel": channel, "data": data}});
        self.out
            .send(Message::text(frame.to_string()))
            .expect("socket writer gone");
    }

    /// The next publication received (any channel).
    pub async fn next_publication(&mut self) -> (String, Value) {
        tokio::time::timeout(WAIT, self.publications.recv())
            .await
            .expect("timed out waiting for a publication")
            .expect("socket closed")
    }

    /// A publication if one is already queued.
    pub fn try_publication(&mut self) -> Option<(String, Value)> {
        self.publications.try_recv().ok()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Wait until `f()` holds, polling the watch receiver for changes (no fixed sleeps).
pub async fn wait_state<T: Clone + PartialEq + std::fmt::Debug>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    want: T,
) {
    let r = tokio::time::timeout(WAIT, rx.wait_for(|s| *s == want))
        .await
        .map(|r| r.is_ok());
    match r {
        Ok(true) => {}
        Ok(false) => panic!("state channel closed while waiting for {want:?}"),
        Err(_) => panic!(
            "timed out waiting for state {want:?} (now {:?})",
            *rx.borrow()
        ),
    }
}
