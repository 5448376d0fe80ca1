//! Fire-and-forget hooks (transmit, lifecycle notifications): events are queued in a
//! bounded queue and posted in batches; a failed batch is retried a few times with
//! backoff while newer events wait in the same bounded queue.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::BatchConfig;
use crate::hook::Hook;

pub(crate) struct Batcher {
    tx: mpsc::Sender<Value>,
    hook: &'static str,
}

impl Batcher {
    /// Start the posting task (needs a tokio runtime).
    pub(crate) fn start(hook: Arc<Hook>, config: &BatchConfig) -> Batcher {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let name = hook.name;
        tokio::spawn(run(hook, config.clone(), rx));
        Batcher { tx, hook: name }
    }

    /// Queue an event; a full queue drops it (counted).
    pub(crate) fn push(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!("socketcluster_proxy_errors_total", "hook" => self.hook, "kind" => "dropped")
                .increment(1);
            tracing::debug!(hook = self.hook, "event queue full; event dropped");
        }
    }
}

async fn run(hook: Arc<Hook>, config: BatchConfig, mut rx: mpsc::Receiver<Value>) {
    let max = config.max_events.max(1);
    let mut batch = Vec::with_capacity(max);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.interval;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let events = Value::Array(std::mem::take(&mut batch));
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=config.attempts.max(1) {
            let mut body = Map::new();
            body.insert("events".into(), events.clone());
            match hook.call(body).await {
                Ok(_) => break,
                Err(e) if attempt < config.attempts => {
                    tracing::debug!(hook = hook.name, attempt, error = %e, "batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    let n = events.as_array().map_or(0, Vec::len) as u64;
                    metrics::counter!("socketcluster_proxy_errors_total", "hook" => hook.name, "kind" => "dropped")
                        .increment(n);
                    tracing::warn!(hook = hook.name, events = n, error = %e, "batch dropped after retries");
                }
            }
        }
    }
}
