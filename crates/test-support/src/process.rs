//! A node child process whose stdout JSON lines are collected into an [`EventLog`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::npm::{ensure_npm_installed, interop_dir};

/// Arguments longer than this go through a temporary file (`@path`): Linux limits a
/// single argument to 128 KiB.
const MAX_INLINE_ARG: usize = 64 * 1024;

/// Keep at most this much of a process's stderr (the tail).
const MAX_STDERR: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a wait ended without a matching line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WaitFailure {
    /// The deadline passed.
    Timeout,
    /// The process closed its stdout (exited) and no remaining line matches.
    Exited,
}

#[derive(Default)]
struct LogInner {
    lines: Vec<Value>,
    consumed: Vec<bool>,
    closed: bool,
}

/// Every stdout line of a process, with "consumed" marks for [`EventLog::wait`].
#[derive(Default)]
pub(crate) struct EventLog {
    inner: Mutex<LogInner>,
    notify: Notify,
}

impl EventLog {
    pub(crate) fn push(&self, line: Value) {
        {
            let mut g = lock(&self.inner);
            g.lines.push(line);
            g.consumed.push(false);
        }
        self.notify.notify_waiters();
    }

    pub(crate) fn close(&self) {
        lock(&self.inner).closed = true;
        self.notify.notify_waiters();
    }

    pub(crate) fn snapshot(&self) -> Vec<Value> {
        lock(&self.inner).lines.clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    /// The first line not consumed by an earlier wait that satisfies `pred` (already
    /// received or arriving before the deadline); it is marked consumed.
    pub(crate) async fn wait(
        &self,
        pred: &dyn Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, WaitFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a line pushed in between is not missed.
            notified.as_mut().enable();
            {
                let mut g = lock(&self.inner);
                let found = (0..g.lines.len()).find(|&i| !g.consumed[i] && pred(&g.lines[i]));
                if let Some(i) = found {
                    g.consumed[i] = true;
                    return Ok(g.lines[i].clone());
                }
                if g.closed {
                    return Err(WaitFailure::Exited);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(WaitFailure::Timeout);
            }
        }
    }
}

type Replies = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running `node <script> <json>` process.
pub(crate) struct NodeProcess {
    label: String,
    child: Child,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    log: Arc<EventLog>,
    stderr: Arc<Mutex<String>>,
    replies: Replies,
    next_id: AtomicU64,
    stdout_task: Option<JoinHandle<()>>,
    stderr_task: Option<JoinHandle<()>>,
    arg_file: Option<PathBuf>,
}

impl NodeProcess {
    /// Spawn `node interop/<script> <arg as JSON>`. Lines `{"event":"reply","id":n,...}`
    /// are routed to [`NodeProcess::command`] callers; every other line goes to the log
    /// (non-JSON lines as `{"event":"stdout","line":...}`).
    pub(crate) fn spawn(script: &str, arg: &Value, label: &str) -> NodeProcess {
        ensure_npm_installed();
        let dir = interop_dir();
        let json = arg.to_string();
        let (arg_text, arg_file) = if json.len() > MAX_INLINE_ARG {
            static FILE_SEQ: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "sc-test-support-{}-{}.json",
                std::process::id(),
                FILE_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, &json)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            (format!("@{}", path.display()), Some(path))
        } else {
            (json, None)
        };
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg(arg_text)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot spawn `node {script}`: {e}"));

        let log = Arc::new(EventLog::default());
        let stderr = Arc::new(Mutex::new(String::new()));
        let replies: Replies = Arc::default();

        let stdout = child.stdout.take().expect("stdout is piped");
        let stdout_task = {
            let log = log.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let value = serde_json::from_str::<Value>(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "event": "stdout", "line": line }));
                    if value.get("event").and_then(Value::as_str) == Some("reply") {
                        let id = value.get("id").and_then(Value::as_u64);
                        let waiter = id.and_then(|id| lock(&replies).remove(&id));
                        if let Some(tx) = waiter {
                            let _ = tx.send(value);
                            continue;
                        }
                    }
                    log.push(value);
                }
                // Dropping the senders wakes every pending command with an error.
                lock(&replies).clear();
                log.close();
            })
        };
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr_task = {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut pipe = stderr_pipe;
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut s = lock(&stderr);
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > MAX_STDERR {
                        let mut cut = s.len() - MAX_STDERR;
                        while !s.is_char_boundary(cut) {
                            cut += 1;
                        }
                        s.drain(..cut);
                    }
                }
            })
        };
        let stdin = child.stdin.take();
        NodeProcess {
            label: label.to_owned(),
            child,
            stdin: tokio::sync::Mutex::new(stdin),
            log,
            stderr,
            replies,
            next_id: AtomicU64::new(1),
            stdout_task: Some(stdout_task),
            stderr_task: Some(stderr_task),
            arg_file,
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn log(&self) -> &EventLog {
        &self.log
    }

    pub(crate) fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Write one line to the process's stdin.
    pub(crate) async fn write_line(&self, line: &str) {
        let mut guard = self.stdin.lock().await;
        let stdin = guard.as_mut().unwrap_or_else(|| {
            panic!(
                "{}: stdin already closed\n{}",
                self.label,
                self.diagnostics()
            )
        });
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        if let Err(e) = async {
            stdin.write_all(&bytes).await?;
            stdin.flush().await
        }
        .await
        {
            panic!(
                "{}: cannot write to stdin ({e}); exited?\n{}",
                self.label,
                self.diagnostics()
            );
        }
    }

    /// Send `cmd` (an object) with a fresh `id` and await the matching reply line.
    pub(crate) async fn command(&self, mut cmd: Value, timeout: Duration) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(obj) = cmd.as_object_mut() else {
            panic!("{}: a command must be a JSON object, got {cmd}", self.label);
        };
        obj.insert("id".into(), id.into());
        let (tx, rx) = oneshot::channel();
        lock(&self.replies).insert(id, tx);
        self.write_line(&cmd.to_string()).await;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => panic!(
                "{}: exited before replying to {cmd}\n{}",
                self.label,
                self.diagnostics()
            ),
            Err(_) => {
                lock(&self.replies).remove(&id);
                panic!(
                    "{}: no reply to {cmd} within {timeout:?}\n{}",
                    self.label,
                    self.diagnostics()
                )
            }
        }
    }

    /// Close stdin (the runners treat that as "finish").
    pub(crate) async fn close_stdin(&self) {
        let mut guard = self.stdin.lock().await;
        if let Some(mut stdin) = guard.take() {
            let _ = stdin.shutdown().await;
        }
    }

    /// Wait for the process to exit; kill it when `timeout` passes first. Returns the
    /// status and whether it had to be killed. Also waits for stdout to be drained.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, bool) {
        let (status, killed) = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => (status, false),
            Err(_) => {
                let _ = self.child.start_kill();
                (self.child.wait().await, true)
            }
        };
        let status = status.unwrap_or_else(|e| panic!("{}: wait failed: {e}", self.label));
        for task in [self.stdout_task.take(), self.stderr_task.take()]
            .into_iter()
            .flatten()
        {
            // The pipes close when the process exits; bound the wait anyway in case a
            // grandchild inherited them.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.log.close();
        (status, killed)
    }

    /// Kill the process (idempotent).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Recent log lines and the stderr tail, for panic messages.
    pub(crate) fn diagnostics(&self) -> String {
        let lines = self.log.snapshot();
        let mut s = String::new();
        let skip = lines.len().saturating_sub(40);
        let _ = writeln!(
            s,
            "--- {} stdout ({} lines, last {}) ---",
            self.label,
            lines.len(),
            lines.len() - skip
        );
        for line in &lines[skip..] {
            let _ = writeln!(s, "{line}");
        }
        let stderr = self.stderr();
        let tail_start = stderr.len().saturating_sub(8 * 1024);
        let tail_start = (tail_start..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(stderr.len());
        let _ = writeln!(
            s,
            "--- {} stderr ---\n{}",
            self.label,
            &stderr[tail_start..]
        );
        s
    }

    /// `log.wait`, panicking with diagnostics on failure.
    pub(crate) async fn wait_event(
        &self,
        pred: &dyn Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        match self.log.wait(pred, timeout).await {
            Ok(v) => v,
            Err(WaitFailure::Timeout) => panic!(
                "{}: no matching event line within {timeout:?}\n{}",
                self.label,
                self.diagnostics()
            ),
            Err(WaitFailure::Exited) => panic!(
                "{}: process exited without a matching event line\n{}",
                self.label,
                self.diagnostics()
            ),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(path) = self.arg_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn wait_consumes_lines_in_order_and_sees_later_ones() {
        let log = Arc::new(EventLog::default());
        log.push(json!({"event": "a", "n": 1}));
        log.push(json!({"event": "a", "n": 2}));
        let is_a = |v: &Value| v["event"] == "a";
        assert_eq!(
            log.wait(&is_a, Duration::from_secs(1)).await.unwrap()["n"],
            1
        );
        assert_eq!(
            log.wait(&is_a, Duration::from_secs(1)).await.unwrap()["n"],
            2
        );
        let pusher = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                log.push(json!({"event": "a", "n": 3}));
            })
        };
        assert_eq!(
            log.wait(&is_a, Duration::from_secs(5)).await.unwrap()["n"],
            3
        );
        pusher.await.unwrap();
        assert_eq!(
            log.wait(&is_a, Duration::from_millis(20)).await,
            Err(WaitFailure::Timeout)
        );
        log.close();
        assert_eq!(
            log.wait(&is_a, Duration::from_secs(5)).await,
            Err(WaitFailure::Exited)
        );
        assert_eq!(log.snapshot().len(), 3);
    }
}
