//! Client options and the consuming [`ClientBuilder`]. Every default equals the
//! `socketcluster-client` 20.0.2 default (docs/PROTOCOL.md 10) unless stated otherwise.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use socketcluster_rs_protocol::{ProtocolVersion, ReconnectOptions};

use crate::auth::{BoxTokenProvider, MemoryTokenStore, TokenProvider, TokenStore};

/// Everything the client can be configured with. Build it with [`ClientBuilder`]
/// ([`Client::builder`](crate::Client::builder)).
///
/// WebSocket buffers are not configurable: every connection uses an 8 KiB read buffer and
/// writes once 8 KiB of frames are buffered (and at the end of every batch of work of the
/// connection task), with no limit on the write buffer (so a large message never fails
/// with `WriteBufferFull`); incoming messages are limited to tungstenite's defaults,
/// 64 MiB per message and 16 MiB per frame. (tungstenite's own default is 128 KiB
/// read and write buffers, which costs CPU and ~157 KB per connection.)
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The WebSocket URL (`ws://` or `wss://`). When its path is empty or `/`, [`path`]
    /// is used instead.
    ///
    /// [`path`]: ClientOptions::path
    pub url: String,
    /// WebSocket path used when the URL has none. JS default: `/socketcluster/`.
    pub path: String,
    /// Extra query parameters appended to the URL, in order. JS default: none.
    pub query: Vec<(String, String)>,
    /// Extra HTTP headers for the upgrade request. JS default: none.
    pub headers: Vec<(String, String)>,
    /// Protocol version (heartbeat encoding), never negotiated. JS default: 2.
    pub protocol_version: ProtocolVersion,
    /// Connect as soon as the client is built. JS default: `true`.
    pub auto_connect: bool,
    /// Reconnect after a close, following the close-code policy. JS default: `true`.
    pub auto_reconnect: bool,
    /// Backoff (JS `autoReconnectOptions`). JS default: 10000 ms + random 10000 ms, x1.5,
    /// at most 60000 ms.
    pub reconnect: ReconnectOptions,
    /// Send `#subscribe` for pending channels right after each handshake. JS default: `true`.
    pub auto_subscribe_on_connect: bool,
    /// The WebSocket must open within this time, else the attempt is aborted with 4007;
    /// also the ping timeout until the handshake reply. JS default: 20000 ms.
    pub connect_timeout: Duration,
    /// Response timeout of invokes (and of queued messages). JS default: 10000 ms.
    pub ack_timeout: Duration,
    /// Never close because the server stopped pinging. JS default: `false`.
    pub ping_timeout_disabled: bool,
    /// Batch everything sent during `batch_on_handshake_duration` after each handshake
    /// into one frame. JS default: `false`.
    pub batch_on_handshake: bool,
    /// JS default: 100 ms.
    pub batch_on_handshake_duration: Duration,
    /// Flush period while batching. JS default: 50 ms.
    pub batch_interval: Duration,
    /// Capacity of each subscription's, receiver's and procedure's buffer. When full, new
    /// messages for that consumer are dropped and [`Event::SlowConsumer`] is emitted.
    /// Rust-only; default 1024.
    ///
    /// [`Event::SlowConsumer`]: crate::Event::SlowConsumer
    pub buffer_capacity: usize,
    /// Capacity of each [`Client::events`](crate::Client::events) stream (a lagging reader gets
    /// [`Event::Lagged`]). Rust-only; default 1024.
    ///
    /// [`Event::Lagged`]: crate::Event::Lagged
    pub event_capacity: usize,
    /// How many data-carrying commands (transmits, invokes, publishes, subscriptions,
    /// `authenticate`, answers to server invokes) may wait for the connection task at
    /// once. When that many wait, `async` calls wait for room and synchronous ones
    /// (`transmit`, `transmit_publish`, `Request::respond`) fail with a `Full` error;
    /// commands without data (disconnect, unsubscribe, dropping a stream) are never
    /// refused. Rust-only (the JS client buffers without limit); default 1024.
    pub command_capacity: usize,
    /// Where the signed token is kept. JS default (Node): in memory, per client object.
    pub token_store: Arc<dyn TokenStore>,
    /// The re-authentication hook (Rust-only; the JS client has none). Default: none.
    pub token_provider: Option<BoxTokenProvider>,
    /// Call the token provider this long before the current token's `exp` (capped at a
    /// third of the token's lifetime when `iat` is known). Rust-only; default 30 s.
    pub reauth_margin: Duration,
    /// How long the token provider may take before the attempt counts as failed (it is
    /// then cancelled and retried like any other failure). Rust-only; default 10 s.
    pub token_provider_timeout: Duration,
    /// The delay before the next re-authentication attempt after one failed (the
    /// provider returned an error or timed out, or the server rejected its token),
    /// computed like the reconnect delay: `initial_delay` + up to `randomness`, times
    /// `multiplier` per consecutive failure, at most `max_delay`. Channels waiting for
    /// the re-authentication stay pending meanwhile. Rust-only; default 1000 ms + up to
    /// 1000 ms, ×2, at most 30000 ms.
    pub reauth_retry: ReconnectOptions,
    /// A custom rustls configuration for `wss://` URLs. Default: webpki roots, ring.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Prefix put before every channel name on the wire (`#subscribe`, `#unsubscribe`,
    /// publishes) and removed from inbound publications and kick-outs, so the
    /// application only sees its own names (JS `channelPrefix`). JS default: none.
    pub channel_prefix: Option<String>,
    /// Add `<timestamp_param>=<milliseconds since the epoch>` to the URL of every
    /// connection attempt, e.g. to get past caching proxies (JS `timestampRequests`).
    /// JS default: `false`.
    pub timestamp_requests: bool,
    /// Name of that query parameter (JS `timestampParam`). JS default: `t`.
    pub timestamp_param: String,
    pub(crate) transport: Option<crate::transport::TransportFactory>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("protocol_version", &self.protocol_version)
            .field("auto_connect", &self.auto_connect)
            .field("auto_reconnect", &self.auto_reconnect)
            .field("reconnect", &self.reconnect)
            .field("auto_subscribe_on_connect", &self.auto_subscribe_on_connect)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("ping_timeout_disabled", &self.ping_timeout_disabled)
            .field("batch_on_handshake", &self.batch_on_handshake)
            .field("token_provider", &self.token_provider.is_some())
            .field("reauth_margin", &self.reauth_margin)
            .field("token_provider_timeout", &self.token_provider_timeout)
            .field("reauth_retry", &self.reauth_retry)
            .field("channel_prefix", &self.channel_prefix)
            .field("timestamp_requests", &self.timestamp_requests)
            .field("timestamp_param", &self.timestamp_param)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            path: "/socketcluster/".to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
            protocol_version: ProtocolVersion::V2,
            auto_connect: true,
            auto_reconnect: true,
            reconnect: ReconnectOptions::default(),
            auto_subscribe_on_connect: true,
            connect_timeout: Duration::from_millis(20_000),
            ack_timeout: Duration::from_millis(10_000),
            ping_timeout_disabled: false,
            batch_on_handshake: false,
            batch_on_handshake_duration: Duration::from_millis(100),
            batch_interval: Duration::from_millis(50),
            buffer_capacity: 1024,
            event_capacity: 1024,
            command_capacity: 1024,
            token_store: Arc::new(MemoryTokenStore::new()),
            token_provider: None,
            reauth_margin: Duration::from_secs(30),
            token_provider_timeout: Duration::from_secs(10),
            reauth_retry: ReconnectOptions::new(
                Duration::from_millis(1000),
                Duration::from_millis(1000),
                2.0,
                Duration::from_millis(30_000),
            ),
            tls_config: None,
            channel_prefix: None,
            timestamp_requests: false,
            timestamp_param: "t".to_owned(),
            transport: None,
        }
    }

    /// A channel name as sent on the wire (JS `_decorateChannelName`).
    pub(crate) fn wire_channel<'a>(&self, channel: &'a str) -> std::borrow::Cow<'a, str> {
        match self.channel_prefix.as_deref() {
            Some(p) if !p.is_empty() => std::borrow::Cow::Owned(format!("{p}{channel}")),
            _ => std::borrow::Cow::Borrowed(channel),
        }
    }

    /// A channel name as received, without the prefix when it starts with it (JS
    /// `_undecorateChannelName`).
    pub(crate) fn app_channel<'a>(&self, wire: &'a str) -> &'a str {
        match self.channel_prefix.as_deref() {
            Some(p) if !p.is_empty() => wire.strip_prefix(p).unwrap_or(wire),
            _ => wire,
        }
    }
}

/// Consuming builder for a [`Client`](crate::Client).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use socketcluster_rs_client::Client;
///
/// let client = Client::builder("ws://127.0.0.1:8000/socketcluster/")
///     .ack_timeout(Duration::from_secs(5))
///     .reconnect_delays(Duration::from_secs(1), Duration::from_secs(1), 1.5, Duration::from_secs(30))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    options: ClientOptions,
}

impl ClientBuilder {
    /// A builder with the JS defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            options: ClientOptions::new(url),
        }
    }

    /// Start from complete options.
    pub fn from_options(options: ClientOptions) -> Self {
        ClientBuilder { options }
    }

    /// The options built so far.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// WebSocket path when the URL has none (default `/socketcluster/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.options.path = path.into();
        self
    }

    /// Prefix every channel name on the wire with `prefix` (JS `channelPrefix`; default
    /// none). The application keeps using its own names: `subscribe("news")` sends
    /// `#subscribe` for `"<prefix>news"` and its messages carry `"news"`.
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options.channel_prefix = Some(prefix.into());
        self
    }

    /// Add a `t=<ms since the epoch>` query parameter to every connection attempt (JS
    /// `timestampRequests`; default false). [`ClientOptions::timestamp_param`] names it.
    pub fn timestamp_requests(mut self, on: bool) -> Self {
        self.options.timestamp_requests = on;
        self
    }

    /// Append a query parameter.
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.query.push((key.into(), value.into()));
        self
    }

    /// Add an HTTP header to the upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.headers.push((name.into(), value.into()));
        self
    }

    /// Protocol version (default 2; 1 for SocketCluster <= 14 servers).
    pub fn protocol_version(mut self, version: ProtocolVersion) -> Self {
        self.options.protocol_version = version;
        self
    }

    /// Connect when built (default true). With `false`, call [`Client::connect`](crate::Client::connect).
    pub fn auto_connect(mut self, on: bool) -> Self {
        self.options.auto_connect = on;
        self
    }

    /// Reconnect automatically (default true).
    pub fn auto_reconnect(mut self, on: bool) -> Self {
        self.options.auto_reconnect = on;
        self
    }

    /// Backoff options.
    pub fn reconnect_options(mut self, options: ReconnectOptions) -> Self {
        self.options.reconnect = options;
        self
    }

    /// Backoff: `initial_delay` + up to `randomness`, times `multiplier` per attempt,
    /// at most `max_delay`.
    pub fn reconnect_delays(
        mut self,
        initial_delay: Duration,
        randomness: Duration,
        multiplier: f64,
        max_delay: Duration,
    ) -> Self {
        self.options.reconnect =
            ReconnectOptions::new(initial_delay, randomness, multiplier, max_delay);
        self
    }

    /// Resubscribe pending channels right after each handshake (default true). With
    /// `false`, nothing is subscribed until [`Client::process_pending_subscriptions`](crate::Client::process_pending_subscriptions).
    pub fn auto_subscribe_on_connect(mut self, on: bool) -> Self {
        self.options.auto_subscribe_on_connect = on;
        self
    }

    /// Connect timeout (default 20 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// Invoke response timeout (default 10 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.options.ack_timeout = timeout;
        self
    }

    /// Disable the ping timeout (default false).
    pub fn ping_timeout_disabled(mut self, disabled: bool) -> Self {
        self.options.ping_timeout_disabled = disabled;
        self
    }

    /// Batch the frames sent right after each handshake (default false).
    pub fn batch_on_handshake(mut self, on: bool) -> Self {
        self.options.batch_on_handshake = on;
        self
    }

    /// Per-consumer buffer capacity (default 1024).
    pub fn buffer_capacity(mut self, capacity: usize) -> Self {
        self.options.buffer_capacity = capacity.max(1);
        self
    }

    /// How many data-carrying commands may wait for the connection task (default 1024;
    /// see [`ClientOptions::command_capacity`]).
    pub fn command_capacity(mut self, capacity: usize) -> Self {
        self.options.command_capacity = capacity.max(1);
        self
    }

    /// Token storage (default: in memory).
    pub fn token_store(mut self, store: impl TokenStore) -> Self {
        self.options.token_store = Arc::new(store);
        self
    }

    /// Token storage, shared.
    pub fn token_store_arc(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.options.token_store = store;
        self
    }

    /// The re-authentication hook: an async function returning a fresh signed token.
    /// See the crate docs for when it is called and the ordering guarantee.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use socketcluster_rs_client::{Client, TokenRequest};
    /// let client = Client::builder("ws://127.0.0.1:8000/socketcluster/")
    ///     .token_provider(|req: TokenRequest| async move {
    ///         tracing::info!(reason = ?req.reason, "fetching a fresh token");
    ///         Ok::<_, std::io::Error>("eyJ...".to_owned())
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider<P: TokenProvider>(mut self, provider: P) -> Self {
        self.options.token_provider = Some(crate::auth::boxed_provider(provider));
        self
    }

    /// How long before `exp` the token provider is called while connected (default 30 s,
    /// capped at a third of the token's lifetime).
    pub fn reauth_margin(mut self, margin: Duration) -> Self {
        self.options.reauth_margin = margin;
        self
    }

    /// How long the token provider may take per attempt (default 10 s; see
    /// [`ClientOptions::token_provider_timeout`]).
    pub fn token_provider_timeout(mut self, timeout: Duration) -> Self {
        self.options.token_provider_timeout = timeout;
        self
    }

    /// The delays between failed re-authentication attempts (default 1000 ms + up to
    /// 1000 ms, ×2, at most 30000 ms; see [`ClientOptions::reauth_retry`]).
    pub fn reauth_retry(mut self, retry: ReconnectOptions) -> Self {
        self.options.reauth_retry = retry;
        self
    }

    /// A custom rustls configuration for `wss://`.
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.options.tls_config = Some(config);
        self
    }

    /// The options, to build the client with.
    pub(crate) fn into_options(self) -> ClientOptions {
        self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_prefix_is_added_on_the_wire_and_removed_on_the_way_in() {
        let mut o = ClientOptions::new("ws://h");
        assert_eq!(o.wire_channel("news"), "news");
        assert_eq!(o.app_channel("app/news"), "app/news");
        o.channel_prefix = Some("app/".into());
        assert_eq!(o.wire_channel("news"), "app/news");
        assert_eq!(o.app_channel("app/news"), "news");
        // JS: names without the prefix come through unchanged; only a leading
        // prefix is removed.
        assert_eq!(o.app_channel("other"), "other");
        assert_eq!(o.app_channel("x/app/news"), "x/app/news");
        assert_eq!(o.app_channel("app/app/n"), "app/n");
        o.channel_prefix = Some(String::new());
        assert_eq!(o.wire_channel("news"), "news");
    }
}
