//! Real backplane servers for the broker and cluster tests: [`RedisServer`] and
//! [`NatsServer`] run `redis-server` / `nats-server` on a port of their own and kill it on
//! drop.
//!
//! The binaries are looked up on `PATH` and in `/usr/bin`, `/usr/sbin`, `/usr/local/bin`,
//! `/usr/local/sbin` ([`find_binary`]); a missing one **fails** the test with a message
//! naming the Debian package to install (`redis-server`, `nats-server`): these tests are
//! never skipped silently.
//!
//! ```no_run
//! use sc_test_support::backplane::{BackplaneServer, RedisServer};
//!
//! let mut redis = RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:<port>
//! redis.kill(); // an outage ...
//! redis.restart(); // ... and the same server back on the same port
//! # drop(url);
//! ```

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::free_port;

/// Deadline for any single expected event (generous: the machine may be loaded).
pub const WAIT: Duration = Duration::from_secs(20);

/// Find an executable on `PATH` or in the usual system directories. Panics with a clear
/// message when it is missing: the backplane tests must never be skipped silently.
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

/// What the tests do with either backplane server.
pub trait BackplaneServer {
    /// The URL brokers connect to (`redis://127.0.0.1:<port>`, `nats://127.0.0.1:<port>`).
    fn url(&self) -> String;
    /// Kill the process (SIGKILL) and wait for it.
    fn kill(&mut self);
    /// Start again on the same port (after [`BackplaneServer::kill`]).
    fn restart(&mut self);
}

/// A fresh scratch directory, removed on drop.
struct ScratchDir(PathBuf);

/// Start something on a fresh free port, again on another one when the process exits at
/// start (another process took the port between `free_port` and the bind).
fn on_fresh_port<T>(start: impl Fn(u16) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match start(free_port()) {
            Ok(t) => return t,
            Err(e) => last = e,
        }
    }
    panic!("{last} (three ports tried)")
}

/// A number no other call in this process returns.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!(
            "sc-broker-test-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Send one inline command to a Redis server, return the first reply (what one read gets).
pub fn redis_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A spawned server process, killed (SIGKILL) and reaped on drop.
struct Process {
    name: &'static str,
    child: Option<Child>,
}

impl Process {
    /// Spawn `cmd` (stdout/stderr discarded) and poll `ready(port, pid)` until it holds.
    /// `Err` when the process exits first; panics when [`WAIT`] passes. `ready` must
    /// recognise this very process (by pid or a unique name), not just any server on the
    /// port: a parallel test may hold the port (this process then lost the bind).
    fn try_spawn(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        ready: &dyn Fn(u16, u32) -> bool,
    ) -> Result<Process, String> {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let deadline = Instant::now() + WAIT;
        while !ready(port, child.id()) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} on {port} exited at start: {status}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} on {port} never became ready");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Process {
            name,
            child: Some(child),
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

/// A `redis-server` process on its own port (no persistence), killed on drop.
pub struct RedisServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    process: Option<Process>,
    cluster: bool,
    dir: ScratchDir,
}

impl RedisServer {
    /// Start a standalone server on a free port.
    pub fn start() -> RedisServer {
        on_fresh_port(|port| Self::try_start_with(port, false))
    }

    /// Start a standalone server on `port` (e.g. the port of a server dropped before).
    pub fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, false)
    }

    /// Start a single-node Redis Cluster owning every slot.
    pub fn start_cluster() -> RedisServer {
        let s = on_fresh_port(|port| Self::try_start_with(port, true));
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

    fn start_with(port: u16, cluster: bool) -> RedisServer {
        Self::try_start_with(port, cluster).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(port: u16, cluster: bool) -> Result<RedisServer, String> {
        let mut s = RedisServer {
            port,
            process: None,
            cluster,
            dir: ScratchDir::new("redis"),
        };
        s.try_spawn()?;
        Ok(s)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(find_binary("redis-server"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"));
        }
        let ours = |port, pid: u32| {
            redis_command(port, "INFO server")
                .is_ok_and(|r| r.contains(&format!("process_id:{pid}\r\n")))
        };
        self.process = Some(Process::try_spawn("redis-server", cmd, self.port, &ours)?);
        Ok(())
    }

    /// Kill the process (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Start again on the same port (after [`RedisServer::kill`]). Standalone servers only.
    pub fn restart(&mut self) {
        self.kill();
        if self.cluster {
            panic!("restart is only supported for standalone servers");
        }
        self.spawn();
    }
}

impl BackplaneServer for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn kill(&mut self) {
        RedisServer::kill(self);
    }
    fn restart(&mut self) {
        RedisServer::restart(self);
    }
}

/// A `nats-server` process on its own port, killed on drop.
pub struct NatsServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    process: Option<Process>,
}

impl NatsServer {
    /// Start a server on a free port.
    pub fn start() -> NatsServer {
        on_fresh_port(Self::try_start_on)
    }

    /// Start a server on `port`.
    pub fn start_on(port: u16) -> NatsServer {
        Self::try_start_on(port).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_on(port: u16) -> Result<NatsServer, String> {
        let mut s = NatsServer {
            port,
            process: None,
        };
        s.try_spawn()?;
        Ok(s)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(find_binary("nats-server"));
        // A name only this process has, to recognise it in the INFO line.
        let name = format!("sc-test-{}-{}", std::process::id(), unique());
        cmd.args(["-a", "127.0.0.1", "-n", &name, "-p"])
            .arg(self.port.to_string());
        let needle = format!("\"server_name\":\"{name}\"");
        let ours = |port, _pid| {
            TcpStream::connect(("127.0.0.1", port)).is_ok_and(|s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                std::io::BufReader::new(s).read_line(&mut line).is_ok() && line.contains(&needle)
            })
        };
        self.process = Some(Process::try_spawn("nats-server", cmd, self.port, &ours)?);
        Ok(())
    }

    /// Kill the process (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Start again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl BackplaneServer for NatsServer {
    fn url(&self) -> String {
        NatsServer::url(self)
    }
    fn kill(&mut self) {
        NatsServer::kill(self);
    }
    fn restart(&mut self) {
        NatsServer::restart(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "apt-get install no-such-backplane-binary")]
    fn a_missing_binary_fails_with_the_package_to_install() {
        find_binary("no-such-backplane-binary");
    }
}
