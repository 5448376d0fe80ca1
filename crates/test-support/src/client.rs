//! Running the real JS client (`interop/client.js`) through a scenario of steps.

use std::fmt::Write as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::process::NodeProcess;

/// Extra time granted beyond the scenario's own `timeoutMs` before the process is killed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// `client.js`'s default overall deadline.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

fn scenario_deadline(scenario: &Value) -> Duration {
    let ms = scenario["timeoutMs"].as_u64().unwrap_or(DEFAULT_TIMEOUT_MS);
    Duration::from_millis(ms) + EXIT_GRACE
}

/// The complete output of a finished `client.js` run.
#[derive(Debug)]
pub struct JsClientRun {
    /// Every stdout line, in order.
    pub lines: Vec<Value>,
    /// How the process ended (0 after `{"event":"done"}`, 1 after `fatal`).
    pub status: ExitStatus,
    /// The process's stderr.
    pub stderr: String,
}

impl JsClientRun {
    /// `(name, data)` of every `{"event":"client"}` line, in emission order.
    pub fn client_events(&self) -> Vec<(String, Value)> {
        self.lines
            .iter()
            .filter(|l| l["event"] == "client")
            .map(|l| {
                (
                    l["name"].as_str().unwrap_or_default().to_owned(),
                    l["data"].clone(),
                )
            })
            .collect()
    }

    /// Just the names of [`JsClientRun::client_events`].
    pub fn client_event_names(&self) -> Vec<String> {
        self.client_events().into_iter().map(|(n, _)| n).collect()
    }

    /// The data of every client event called `name`.
    pub fn client_events_named(&self, name: &str) -> Vec<Value> {
        self.client_events()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, d)| d)
            .collect()
    }

    /// The `{"event":"step","i":i,...}` line of step `i`.
    ///
    /// # Panics
    ///
    /// When there is no such line (the run died earlier), with the whole output.
    pub fn step(&self, i: usize) -> &Value {
        self.lines
            .iter()
            .find(|l| l["event"] == "step" && l["i"].as_u64() == Some(i as u64))
            .unwrap_or_else(|| panic!("no line for step {i}\n{}", self.dump()))
    }

    /// The `result` of step `i`, panicking unless the step succeeded.
    pub fn step_result(&self, i: usize) -> &Value {
        let step = self.step(i);
        if step["ok"] != true {
            panic!("step {i} failed: {step}\n{}", self.dump());
        }
        &step["result"]
    }

    /// The data of every publication received on `channel`, in order.
    pub fn publications(&self, channel: &str) -> Vec<Value> {
        self.lines
            .iter()
            .filter(|l| l["event"] == "publish" && l["channel"] == channel)
            .map(|l| l["data"].clone())
            .collect()
    }

    /// The data of every transmit received by a `receiver` step for `name`.
    pub fn received(&self, name: &str) -> Vec<Value> {
        self.lines
            .iter()
            .filter(|l| l["event"] == "received" && l["name"] == name)
            .map(|l| l["data"].clone())
            .collect()
    }

    /// Whether the run reached `{"event":"done"}` and exited with 0.
    pub fn is_done(&self) -> bool {
        self.status.success() && self.lines.iter().any(|l| l["event"] == "done")
    }

    /// Panic (with the output) unless the run is done and every step succeeded.
    pub fn assert_all_ok(&self) {
        let failed: Vec<&Value> = self
            .lines
            .iter()
            .filter(|l| l["event"] == "step" && l["ok"] != true)
            .collect();
        if !self.is_done() || !failed.is_empty() {
            panic!(
                "JS client run failed (status {}, failed steps {failed:?})\n{}",
                self.status,
                self.dump()
            );
        }
    }

    /// Everything the run printed, for panic messages.
    pub fn dump(&self) -> String {
        let mut s = format!("--- JS client stdout (status {}) ---\n", self.status);
        for line in &self.lines {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "--- JS client stderr ---\n{}", self.stderr);
        s
    }
}

/// Run `interop/client.js` with `scenario` to completion (deadline: the scenario's
/// `timeoutMs`, default 20 s, plus 10 s; the process is killed after that).
pub async fn run_js_client(scenario: Value) -> JsClientRun {
    JsClient::spawn(scenario).await.wait_exit().await
}

/// A `client.js` process running in the background, for tests that act while the JS
/// client runs. Killed on drop.
///
/// With `"interactive": true` in the scenario, more steps can be sent with
/// [`JsClient::run_step`] after the scenario's own steps; [`JsClient::wait_exit`] then ends
/// the run by closing its stdin.
pub struct JsClient {
    process: NodeProcess,
    started: Instant,
    deadline: Duration,
    next_step: AtomicUsize,
}

impl JsClient {
    /// Install the JS peers if needed and start `client.js` with `scenario`.
    pub async fn spawn(scenario: Value) -> JsClient {
        let version = scenario["version"].as_str().unwrap_or("20").to_owned();
        let steps = scenario["steps"].as_array().map_or(0, Vec::len);
        let process = NodeProcess::spawn("client.js", &scenario, &format!("JS client v{version}"));
        JsClient {
            process,
            started: Instant::now(),
            deadline: scenario_deadline(&scenario),
            next_step: AtomicUsize::new(steps),
        }
    }

    /// The first output line satisfying `pred` that no earlier wait consumed (already
    /// printed or printed within `timeout`); it is consumed.
    ///
    /// # Panics
    ///
    /// On timeout or when the process exits first, with its output.
    pub async fn wait_event(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.process.wait_event(&pred, timeout).await
    }

    /// Like [`JsClient::wait_event`] but returns `None` instead of panicking.
    pub async fn try_wait_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.process.log().wait(&pred, timeout).await.ok()
    }

    /// Shorthand: the next unconsumed `{"event":"client","name":name}` line.
    pub async fn wait_client_event(&self, name: &str, timeout: Duration) -> Value {
        self.wait_event(|v| v["event"] == "client" && v["name"] == name, timeout)
            .await
    }

    /// Every output line so far.
    pub fn events(&self) -> Vec<Value> {
        self.process.log().snapshot()
    }

    /// Whether the process has closed its stdout (finished or died).
    pub fn has_exited(&self) -> bool {
        self.process.log().is_closed()
    }

    /// Interactive scenarios only: run one more step (`{"op": ...}`) and return its
    /// `{"event":"step",...}` line (waiting at most `timeout`).
    pub async fn run_step(&self, step: Value, timeout: Duration) -> Value {
        let i = self.next_step.fetch_add(1, Ordering::SeqCst);
        self.process.write_line(&step.to_string()).await;
        self.wait_event(
            move |v| v["event"] == "step" && v["i"].as_u64() == Some(i as u64),
            timeout,
        )
        .await
    }

    /// Close stdin (ending an interactive scenario), wait for the process to exit (killing
    /// it when the scenario deadline passes) and return the whole output.
    pub async fn wait_exit(mut self) -> JsClientRun {
        self.process.close_stdin().await;
        let remaining = self.deadline.saturating_sub(self.started.elapsed());
        let (status, killed) = self.process.wait_exit(remaining).await;
        let run = JsClientRun {
            lines: self.process.log().snapshot(),
            status,
            stderr: self.process.stderr(),
        };
        if killed {
            panic!(
                "JS client did not finish within {:?}; killed\n{}",
                self.deadline,
                run.dump()
            );
        }
        run
    }

    /// Kill the process now.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
