//! One configured hook: its endpoint, the JSON call, metrics and health counters.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::config::HookConfig;
use crate::error::{ConfigError, ProxyError};
use crate::transport::Endpoint;

/// Version of the request/response schema, sent as `"v"` in every request.
pub const SCHEMA_VERSION: u32 = 1;

/// Bucket bounds (seconds) suggested for `socketcluster_proxy_duration_seconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Describe the proxy's metrics to the installed `metrics` recorder:
///
/// | name | kind | labels |
/// |---|---|---|
/// | `socketcluster_proxy_calls_total` | counter | `hook` |
/// | `socketcluster_proxy_errors_total` | counter | `hook`, `kind` (`unavailable`, `timeout`, `overloaded`, `bad_response`, `dropped`) |
/// | `socketcluster_proxy_duration_seconds` | histogram | `hook` |
/// | `socketcluster_proxy_subscribe_cache_total` | counter | `outcome` (`hit`, `coalesced`, `miss`) |
pub fn describe_metrics() {
    metrics::describe_counter!(
        "socketcluster_proxy_calls_total",
        "Backend calls per proxy hook"
    );
    metrics::describe_counter!(
        "socketcluster_proxy_errors_total",
        "Failed backend calls (and dropped fire-and-forget events) per hook and kind"
    );
    metrics::describe_histogram!(
        "socketcluster_proxy_duration_seconds",
        metrics::Unit::Seconds,
        "Backend call latency per hook"
    );
    metrics::describe_counter!(
        "socketcluster_proxy_subscribe_cache_total",
        "Subscribe decisions by source: cache hit, coalesced with a call in flight, or backend call"
    );
}

/// The state of one hook's backend as shown on `/health`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HookHealth {
    /// Hook name (`rpc`, `subscribe`, `publish`, `handshake`, `transmit`, `notify`).
    pub hook: &'static str,
    /// The URL it posts to.
    pub url: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed (any [`ProxyError`]).
    pub errors: u64,
    /// Failures since the last success; the backend counts as failing while this is
    /// not 0.
    pub consecutive_failures: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl HookHealth {
    /// Whether the last call succeeded (or none was made).
    pub fn is_ok(&self) -> bool {
        self.consecutive_failures == 0
    }
}

pub(crate) struct Hook {
    pub(crate) name: &'static str,
    pub(crate) config: HookConfig,
    endpoint: Endpoint,
    calls: AtomicU64,
    errors: AtomicU64,
    consecutive: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Hook {
    pub(crate) fn new(
        name: &'static str,
        config: &HookConfig,
        secret: Option<Arc<[u8]>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Hook, ConfigError> {
        Ok(Hook {
            name,
            endpoint: Endpoint::new(config, secret, tls)?,
            config: config.clone(),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            consecutive: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// POST `body` (which gets `"v"` and `"hook"` set) and return the answer object.
    pub(crate) async fn call(
        &self,
        mut body: Map<String, Value>,
    ) -> Result<Map<String, Value>, ProxyError> {
        body.insert("v".into(), Value::from(SCHEMA_VERSION));
        body.insert("hook".into(), Value::from(self.name));
        let started = Instant::now();
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let result = match self.endpoint.post(bytes).await {
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(ProxyError::BadResponse(
                    "the answer is not a JSON object".into(),
                )),
                Err(e) => Err(ProxyError::BadResponse(format!(
                    "the answer is not JSON: {e}"
                ))),
            },
            Err(e) => Err(e),
        };
        self.record(&result, started);
        result
    }

    fn record<T>(&self, result: &Result<T, ProxyError>, started: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("socketcluster_proxy_calls_total", "hook" => self.name).increment(1);
        metrics::histogram!("socketcluster_proxy_duration_seconds", "hook" => self.name)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self.consecutive.store(0, Ordering::Relaxed),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.consecutive.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("socketcluster_proxy_errors_total", "hook" => self.name, "kind" => e.kind())
                    .increment(1);
                tracing::warn!(hook = self.name, url = %self.config.url, error = %e, "backend call failed");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }

    pub(crate) fn health(&self) -> HookHealth {
        HookHealth {
            hook: self.name,
            url: self.config.url.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
