//! Reading a process's memory and CPU time from `/proc`, and running a server process
//! that a scenario restarts (`storm`).

use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::BenchError;

/// `/proc/PID/stat` counts CPU time in `USER_HZ` ticks, which Linux fixes at 100 for
/// user space on every architecture we run on.
const USER_HZ: f64 = 100.0;

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc(path.clone(), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Proc(path, std::io::Error::other("no VmRSS line")))
}

/// User + system CPU seconds a process (all its threads) has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc(path.clone(), e))?;
    // The command name (field 2) may contain spaces and parentheses: parse after the
    // last ')'. Then state is field 3, utime field 14, stime field 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Proc(path.clone(), std::io::Error::other("bad stat")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => Ok((u + s) as f64 / USER_HZ),
        _ => Err(BenchError::Proc(path, std::io::Error::other("bad stat"))),
    }
}

/// CPU seconds of this process.
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

/// RSS of this process.
pub(crate) fn own_rss_bytes() -> u64 {
    rss_bytes(std::process::id()).unwrap_or(0)
}

/// CPU and memory readings of an optional server process, taken together with ours.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    pub(crate) server_cpu: Option<f64>,
    pub(crate) client_cpu: f64,
}

impl Usage {
    pub(crate) fn now(server_pid: Option<u32>) -> Usage {
        Usage {
            server_cpu: server_pid.and_then(|p| cpu_seconds(p).ok()),
            client_cpu: own_cpu_seconds(),
        }
    }
}

/// `host:port` of a `ws://` / `wss://` URL.
pub(crate) fn host_port(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let authority = rest.split('/').next()?;
    if authority.contains(':') {
        Some(authority.to_owned())
    } else if url.starts_with("wss://") {
        Some(format!("{authority}:443"))
    } else {
        Some(format!("{authority}:80"))
    }
}

/// Wait until `addr` accepts TCP connections.
pub(crate) async fn wait_listening(addr: &str, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::ServerNotReady(addr.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A server process started from a shell command (`sh -c "exec CMD"`, so the PID is the
/// server's own). Killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) pid: u32,
}

impl ServerProcess {
    pub(crate) fn spawn(cmd: &str) -> Result<ServerProcess, BenchError> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Spawn(cmd.to_owned(), e))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Spawn(cmd.to_owned(), std::io::Error::other("no pid")))?;
        Ok(ServerProcess { child, pid })
    }

    /// Kill (SIGKILL, like a crash) and reap.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_usage() {
        assert!(own_rss_bytes() > 0);
        assert!(own_cpu_seconds() >= 0.0);
    }

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("ws://127.0.0.1:8000/socketcluster/").as_deref(),
            Some("127.0.0.1:8000")
        );
        assert_eq!(
            host_port("wss://example.com/x").as_deref(),
            Some("example.com:443")
        );
        assert_eq!(host_port("http://x"), None);
    }
}
