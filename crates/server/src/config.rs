//! Server configuration. Every default equals the JS `socketcluster-server` 20 default
//! unless stated otherwise (docs/PROTOCOL.md 9.1).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use socketcluster_rs_protocol::ProtocolVersion;

use crate::auth::AuthConfig;
use crate::history::HistoryConfig;
use crate::limits::Limits;

/// What happens when a client invokes a procedure that has no handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnhandledProcedure {
    /// Send nothing: the caller times out (JS behaviour, docs/PROTOCOL.md 3.4). Default.
    #[default]
    NoReply,
    /// Answer `{"name":"UnhandledProcedureError","message":"No handler for procedure <name>"}`.
    Error,
}

/// Server configuration.
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_server::{ServerConfig, auth::AuthConfig};
/// let config = ServerConfig::default()
///     .with_port(0)
///     .with_auth(AuthConfig::with_secret("testkey"))
///     .with_ping_interval(Duration::from_secs(5));
/// assert_eq!(config.path, "/socketcluster/");
/// assert_eq!(config.ping_timeout, Duration::from_millis(30000));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to bind for [`crate::Server::listen`]. Default `0.0.0.0` (JS `listen()`
    /// binds every interface).
    pub host: String,
    /// Port to bind; `0` picks a free port. Default 8000 (the SocketCluster default).
    pub port: u16,
    /// WebSocket path, matched exactly (query excluded). Default `/socketcluster/`.
    pub path: String,
    /// Heartbeat encoding for every socket (1: `#1`/`#2`, 2: `""`). Default 2.
    pub protocol_version: ProtocolVersion,
    /// JWT keys and options. Default: random key (with a warning), HS256, 86400 s expiry.
    pub auth: AuthConfig,
    /// Channel name patterns (`*` matches any run of characters) that require an
    /// authenticated socket to subscribe or to publish (no JS equivalent; JS apps do this
    /// in middleware). Refusals: `UnauthorizedSubscribeError` / `UnauthorizedPublishError`
    /// (`"Socket <id> must be authenticated to subscribe to the <ch> channel"` / "... to
    /// publish to ..."). Default: empty.
    pub auth_channels: Vec<String>,
    /// When a socket loses its authentication (deauthenticate, bad `#authenticate`, token
    /// expiry), kick it out of its `auth_channels` subscriptions (`#kickOut` with message
    /// `Authentication required`). A JS server enforcing private channels in middleware
    /// does not do this; set false for identical behaviour. Default true.
    pub auth_channels_kick_out: bool,
    /// Whether clients may `#publish` (JS `allowClientPublish`). Default true.
    pub allow_client_publish: bool,
    /// Server → client invoke timeout (JS `ackTimeout`). Default 10000 ms.
    pub ack_timeout: Duration,
    /// Close with 4005 when no `#handshake` arrives in time (JS `handshakeTimeout`).
    /// Default 10000 ms.
    pub handshake_timeout: Duration,
    /// Close with 4009 on anything but `#handshake` before the handshake (JS
    /// `strictHandshake`). Default true.
    pub strict_handshake: bool,
    /// Ping period (JS `pingInterval`). Default 8000 ms.
    pub ping_interval: Duration,
    /// Pong deadline, advertised in the handshake reply (JS `pingTimeout`). Default 30000 ms.
    pub ping_timeout: Duration,
    /// Send no pings and keep no pong deadline (JS `pingTimeoutDisabled`). Default false.
    pub ping_timeout_disabled: bool,
    /// Allowed origins (JS `origins`), e.g. `"example.com:443 foo.org:*"`. Default `*:*`.
    pub origins: String,
    /// TLS for the built-in listener (`wss://`). Default none.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Resource limits.
    pub limits: Limits,
    /// Behaviour for invokes of unknown procedures. Default: no reply (JS).
    pub unhandled_procedure: UnhandledProcedure,
    /// Deauthenticate a socket at the moment its token expires (a timer), instead of
    /// only at its next inbound message or pong like the JS server. Default true.
    pub token_expiry_timer: bool,
    /// Capacity of the [`crate::Server::events`] broadcast buffer (slow event consumers
    /// miss events beyond it). Default 1024.
    pub event_buffer: usize,
    /// Batch every socket's outbound packets right after its handshake reply (which
    /// itself is never batched) for [`ServerConfig::batch_on_handshake_duration`]
    /// (JS `batchOnHandshake`, docs/PROTOCOL.md 8.5). Default false.
    pub batch_on_handshake: bool,
    /// How long the `batch_on_handshake` window lasts, unless the application called
    /// [`crate::Socket::start_batching`] meanwhile (JS `batchOnHandshakeDuration`).
    /// Default 400 ms.
    pub batch_on_handshake_duration: Duration,
    /// Flush period of a batching socket: every interval the buffered packets go out as
    /// one JSON array frame, nothing when none (JS `batchInterval`). Default 50 ms.
    pub batch_interval: Duration,
    /// Busy polling (no JS equivalent; default `None`: off). After every inbound
    /// message one runtime worker keeps polling for I/O instead of sleeping, for this
    /// long, so the next message is picked up without the wake-up of a sleeping thread
    /// (tens of µs on a VM; see `docs/BENCHMARKS.md`). Lowers request/response latency
    /// under light traffic at the price of one busy core while traffic flows and for
    /// the window after it; costs nothing while the server is idle. A window a little
    /// longer than your clients' think time between messages (e.g. 50-200 µs) keeps
    /// request/response traffic on the fast path. Do not enable it in tests that pause
    /// tokio's clock: a spinning task keeps the runtime from auto-advancing time.
    pub busy_poll: Option<Duration>,
    /// Channel history and recovery (no JS equivalent; docs/PROTOCOL.md 14.16). Default:
    /// no channel has history.
    pub history: HistoryConfig,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("protocol_version", &self.protocol_version)
            .field("auth", &self.auth)
            .field("auth_channels", &self.auth_channels)
            .field("auth_channels_kick_out", &self.auth_channels_kick_out)
            .field("allow_client_publish", &self.allow_client_publish)
            .field("ack_timeout", &self.ack_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("strict_handshake", &self.strict_handshake)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("ping_timeout_disabled", &self.ping_timeout_disabled)
            .field("origins", &self.origins)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .field("unhandled_procedure", &self.unhandled_procedure)
            .field("token_expiry_timer", &self.token_expiry_timer)
            .field("event_buffer", &self.event_buffer)
            .field("batch_on_handshake", &self.batch_on_handshake)
            .field(
                "batch_on_handshake_duration",
                &self.batch_on_handshake_duration,
            )
            .field("batch_interval", &self.batch_interval)
            .field("busy_poll", &self.busy_poll)
            .field("history", &self.history)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".to_owned(),
            port: 8000,
            path: "/socketcluster/".to_owned(),
            protocol_version: ProtocolVersion::V2,
            auth: AuthConfig::default(),
            auth_channels: Vec::new(),
            auth_channels_kick_out: true,
            allow_client_publish: true,
            ack_timeout: Duration::from_millis(10_000),
            handshake_timeout: Duration::from_millis(10_000),
            strict_handshake: true,
            ping_interval: Duration::from_millis(8_000),
            ping_timeout: Duration::from_millis(30_000),
            ping_timeout_disabled: false,
            origins: "*:*".to_owned(),
            tls: None,
            limits: Limits::default(),
            unhandled_procedure: UnhandledProcedure::NoReply,
            token_expiry_timer: true,
            event_buffer: 1024,
            batch_on_handshake: false,
            batch_on_handshake_duration: Duration::from_millis(400),
            batch_interval: Duration::from_millis(50),
            busy_poll: None,
            history: HistoryConfig::default(),
        }
    }
}

macro_rules! setter {
    ($(#[$m:meta])* $name:ident, $field:ident: $ty:ty) => {
        $(#[$m])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };
}

impl ServerConfig {
    setter!(/// Set `port`.
        with_port, port: u16);
    setter!(/// Set `protocol_version`.
        with_protocol_version, protocol_version: ProtocolVersion);
    setter!(/// Set `auth`.
        with_auth, auth: AuthConfig);
    setter!(/// Set `auth_channels`.
        with_auth_channels, auth_channels: Vec<String>);
    setter!(/// Set `auth_channels_kick_out`.
        with_auth_channels_kick_out, auth_channels_kick_out: bool);
    setter!(/// Set `allow_client_publish`.
        with_allow_client_publish, allow_client_publish: bool);
    setter!(/// Set `ack_timeout`.
        with_ack_timeout, ack_timeout: Duration);
    setter!(/// Set `handshake_timeout`.
        with_handshake_timeout, handshake_timeout: Duration);
    setter!(/// Set `strict_handshake`.
        with_strict_handshake, strict_handshake: bool);
    setter!(/// Set `ping_interval`.
        with_ping_interval, ping_interval: Duration);
    setter!(/// Set `ping_timeout`.
        with_ping_timeout, ping_timeout: Duration);
    setter!(/// Set `ping_timeout_disabled`.
        with_ping_timeout_disabled, ping_timeout_disabled: bool);
    setter!(/// Set `tls`.
        with_tls, tls: Option<Arc<rustls::ServerConfig>>);
    setter!(/// Set `limits`.
        with_limits, limits: Limits);
    setter!(/// Set `unhandled_procedure`.
        with_unhandled_procedure, unhandled_procedure: UnhandledProcedure);
    setter!(/// Set `token_expiry_timer`.
        with_token_expiry_timer, token_expiry_timer: bool);
    setter!(/// Set `batch_on_handshake`.
        with_batch_on_handshake, batch_on_handshake: bool);
    setter!(/// Set `batch_on_handshake_duration`.
        with_batch_on_handshake_duration, batch_on_handshake_duration: Duration);
    setter!(/// Set `batch_interval`.
        with_batch_interval, batch_interval: Duration);
    setter!(/// Set `busy_poll` (`None`: off).
        with_busy_poll, busy_poll: Option<Duration>);
    setter!(/// Set `history`.
        with_history, history: HistoryConfig);

    /// Set `host`.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Set `path`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
    /// Set `origins`.
    pub fn with_origins(mut self, origins: impl Into<String>) -> Self {
        self.origins = origins.into();
        self
    }
}
