//! Proxy configuration: one optional [`HookConfig`] per hook, plus what they share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One hook: where it posts, how long it waits, which names it covers.
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_proxy::HookConfig;
/// let rpc = HookConfig::new("http://127.0.0.1:3000/sc/rpc")
///     .with_patterns(["login", "chat/*"])
///     .with_timeout(Duration::from_millis(500));
/// assert!(rpc.matches("chat/send") && !rpc.matches("admin"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HookConfig {
    /// `http://` or `https://` URL the hook POSTs to. No default.
    pub url: String,
    /// Whole-exchange deadline (connect, send, answer). Default 1 s.
    pub timeout: Duration,
    /// Name patterns (procedure, channel or event names; `*` matches any run of
    /// characters) the hook covers. Default `["*"]` (everything). Unused by the
    /// handshake and lifecycle hooks.
    pub patterns: Vec<String>,
    /// Most requests in flight at once; a call beyond it fails at once with
    /// `ProxyOverloadedError` (never queued). Default 256.
    pub max_concurrency: usize,
    /// How long an idle keep-alive connection is reused. Keep it below the backend's
    /// own keep-alive timeout (Node: 5 s). Default 4 s.
    pub pool_idle_timeout: Duration,
}

impl HookConfig {
    /// A hook posting to `url`, with the defaults above.
    pub fn new(url: impl Into<String>) -> Self {
        HookConfig {
            url: url.into(),
            timeout: Duration::from_secs(1),
            patterns: vec!["*".to_owned()],
            max_concurrency: 256,
            pool_idle_timeout: Duration::from_secs(4),
        }
    }
    /// Set `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Set `patterns`.
    pub fn with_patterns<I: IntoIterator<Item = S>, S: Into<String>>(mut self, p: I) -> Self {
        self.patterns = p.into_iter().map(Into::into).collect();
        self
    }
    /// Set `max_concurrency`.
    pub fn with_max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }
    /// Set `pool_idle_timeout`.
    pub fn with_pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = d;
        self
    }
    /// Whether a name is covered by one of the patterns.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, name))
    }
}

/// Batching of the fire-and-forget hooks (transmit, lifecycle notifications).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Most events in one POST. Default 100.
    pub max_events: usize,
    /// Longest an event waits for its batch to fill. Default 50 ms.
    pub interval: Duration,
    /// Most events waiting (including those being retried); newer events beyond it
    /// are dropped and counted (`kind="dropped"`). Default 10000.
    pub queue: usize,
    /// Attempts per batch before it is dropped (with exponential backoff from 100 ms).
    /// Default 3.
    pub attempts: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 100,
            interval: Duration::from_millis(50),
            queue: 10_000,
            attempts: 3,
        }
    }
}

/// Everything the proxy needs. Every hook is optional; with none set the proxy does
/// nothing.
///
/// ```
/// use socketcluster_rs_proxy::{HookConfig, ProxyConfig};
/// let config = ProxyConfig::default()
///     .with_secret("shared-secret")
///     .with_forward_headers(["cookie"])
///     .with_rpc(HookConfig::new("http://127.0.0.1:3000/rpc").with_patterns(["login"]))
///     .with_subscribe(HookConfig::new("http://127.0.0.1:3000/subscribe").with_patterns(["room/*"]));
/// assert!(config.publish.is_none());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Key of the HMAC-SHA256 request signature (`X-SocketCluster-Signature`). Default
    /// none: requests are not signed.
    pub secret: Option<String>,
    /// Upgrade-request headers (case-insensitive names) copied into every request's
    /// `socket.headers`, e.g. `cookie`. Default none.
    pub forward_headers: Vec<String>,
    /// TLS client configuration for `https://` hooks. Default: the webpki root
    /// certificates.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Procedures (`invoke`) answered by the backend. Default none.
    pub rpc: Option<HookConfig>,
    /// `#subscribe` allowed or refused by the backend. Default none.
    pub subscribe: Option<HookConfig>,
    /// Client `#publish` allowed, refused or rewritten by the backend. Default none.
    pub publish: Option<HookConfig>,
    /// `#handshake` accepted (optionally with a token and metadata) or rejected by the
    /// backend. Default none.
    pub handshake: Option<HookConfig>,
    /// Transmitted events forwarded (fire-and-forget, batched). Default none.
    pub transmit: Option<HookConfig>,
    /// Lifecycle notifications (connect, disconnect, subscribe, unsubscribe,
    /// authenticate, deauthenticate), batched. Default none.
    pub notify: Option<HookConfig>,
    /// Batching of `transmit` and `notify`.
    pub batch: BatchConfig,
    /// Most cached subscribe decisions (expired ones are evicted first, then
    /// arbitrary ones). Default 100000.
    pub subscribe_cache_capacity: usize,
    /// Answer invokes of procedures that neither a Rust handler nor the RPC hook covers
    /// with `UnhandledProcedureError` at once (a JS server never answers them). Default
    /// true.
    pub answer_unhandled_procedures: bool,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("forward_headers", &self.forward_headers)
            .field("tls", &self.tls.is_some())
            .field("rpc", &self.rpc)
            .field("subscribe", &self.subscribe)
            .field("publish", &self.publish)
            .field("handshake", &self.handshake)
            .field("transmit", &self.transmit)
            .field("notify", &self.notify)
            .field("batch", &self.batch)
            .field("subscribe_cache_capacity", &self.subscribe_cache_capacity)
            .field(
                "answer_unhandled_procedures",
                &self.answer_unhandled_procedures,
            )
            .finish()
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            secret: None,
            forward_headers: Vec::new(),
            tls: None,
            rpc: None,
            subscribe: None,
            publish: None,
            handshake: None,
            transmit: None,
            notify: None,
            batch: BatchConfig::default(),
            subscribe_cache_capacity: 100_000,
            answer_unhandled_procedures: true,
        }
    }
}

impl ProxyConfig {
    /// The defaults (no hook; see each field).
    pub fn new() -> Self {
        Self::default()
    }
    /// Set `secret`.
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }
    /// Set `forward_headers`.
    pub fn with_forward_headers<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        h: I,
    ) -> Self {
        self.forward_headers = h.into_iter().map(Into::into).collect();
        self
    }
    /// Set `tls`.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }
    /// Set `rpc`.
    pub fn with_rpc(mut self, hook: HookConfig) -> Self {
        self.rpc = Some(hook);
        self
    }
    /// Set `subscribe`.
    pub fn with_subscribe(mut self, hook: HookConfig) -> Self {
        self.subscribe = Some(hook);
        self
    }
    /// Set `publish`.
    pub fn with_publish(mut self, hook: HookConfig) -> Self {
        self.publish = Some(hook);
        self
    }
    /// Set `handshake`.
    pub fn with_handshake(mut self, hook: HookConfig) -> Self {
        self.handshake = Some(hook);
        self
    }
    /// Set `transmit`.
    pub fn with_transmit(mut self, hook: HookConfig) -> Self {
        self.transmit = Some(hook);
        self
    }
    /// Set `notify`.
    pub fn with_notify(mut self, hook: HookConfig) -> Self {
        self.notify = Some(hook);
        self
    }
    /// Set `batch`.
    pub fn with_batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }
    /// Whether any hook is set.
    pub fn is_enabled(&self) -> bool {
        self.rpc.is_some()
            || self.subscribe.is_some()
            || self.publish.is_some()
            || self.handshake.is_some()
            || self.transmit.is_some()
            || self.notify.is_some()
    }
}

/// `*` matches any run of characters (including `/`), everything else literally.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("login", "login"));
        assert!(!glob_match("login", "login2"));
        assert!(glob_match("room/*", "room/42"));
        assert!(!glob_match("room/*", "rooms/42"));
        assert!(glob_match("a*b*c", "a-b-b-c"));
        assert!(!glob_match("a*bc", "abc-"));
        assert!(glob_match("*/private", "x/y/private"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
