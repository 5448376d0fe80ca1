//! `socketcluster serve` settings: command-line flags, `SOCKETCLUSTER_*` environment
//! variables and a TOML file, merged with the precedence flags > environment > file >
//! defaults, validated before anything is bound.

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

pub(crate) use super::broker_setting::Broker;
use super::dashboard_settings::{DashboardArgs, DashboardSettings};
use super::proxy_settings::{ProxyArgs, ProxyFile, ProxySettings};

/// Flags of `socketcluster serve`. Every flag can also be set with the environment
/// variable named after it (`--ping-interval` -> `SOCKETCLUSTER_PING_INTERVAL`) or with the
/// same key in the `--config` TOML file (`ping-interval = 8000`).
#[derive(Debug, Args, Default)]
pub(crate) struct ServeArgs {
    /// TOML file with the same settings as the flags (kebab-case keys).
    #[arg(long, env = "SOCKETCLUSTER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub(crate) print_config: bool,

    /// Listen address. Default 127.0.0.1.
    #[arg(long, env = "SOCKETCLUSTER_HOST")]
    host: Option<String>,
    /// Listen port (0 picks a free one). Default 8000.
    #[arg(long, env = "SOCKETCLUSTER_PORT")]
    port: Option<u16>,
    /// WebSocket path, matched exactly. Default /socketcluster/.
    #[arg(long, env = "SOCKETCLUSTER_PATH")]
    path: Option<String>,
    /// HMAC key for tokens. Default: a random key, with a loud warning that tokens will not
    /// survive a restart.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_KEY")]
    auth_key: Option<String>,
    /// File with the HMAC key, or the PEM private key for RS/ES/PS algorithms (a trailing
    /// newline is ignored).
    #[arg(long, env = "SOCKETCLUSTER_AUTH_KEY_FILE")]
    auth_key_file: Option<PathBuf>,
    /// PEM public key that verifies tokens for RS/ES/PS algorithms.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_PUBLIC_KEY_FILE")]
    auth_public_key_file: Option<PathBuf>,
    /// Token algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256,
    /// ES384. Default HS256.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_ALGORITHM")]
    auth_algorithm: Option<String>,
    /// Default token lifetime in seconds. Default 86400.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_DEFAULT_EXPIRY")]
    auth_default_expiry: Option<u64>,
    /// Channel glob (`private/*`) whose subscribers and publishers must be authenticated.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(long, env = "SOCKETCLUSTER_AUTH_CHANNELS", value_delimiter = ',')]
    auth_channels: Vec<String>,
    /// Clients may not publish; only the server and its HTTP API do.
    #[arg(long, env = "SOCKETCLUSTER_NO_CLIENT_PUBLISH", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    no_client_publish: Option<bool>,
    /// Ping period in ms. Default 8000.
    #[arg(long, env = "SOCKETCLUSTER_PING_INTERVAL")]
    ping_interval: Option<u64>,
    /// Pong deadline in ms, advertised to clients. Default 20000.
    #[arg(long, env = "SOCKETCLUSTER_PING_TIMEOUT")]
    ping_timeout: Option<u64>,
    /// Protocol version: 1 (SocketCluster <= 14 clients) or 2. Default 2.
    #[arg(long, env = "SOCKETCLUSTER_PROTOCOL_VERSION")]
    protocol_version: Option<u8>,
    /// Allowed origins, e.g. `example.com:443 foo.org:*` (JS `origins`). Default `*:*`.
    #[arg(long, env = "SOCKETCLUSTER_ORIGINS")]
    origins: Option<String>,
    /// Enables the HTTP API on the same port; requests need `Authorization: Bearer KEY`.
    #[arg(long, env = "SOCKETCLUSTER_HTTP_API_KEY")]
    http_api_key: Option<String>,
    /// PEM certificate chain for wss:// and https://.
    #[arg(long, env = "SOCKETCLUSTER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for wss:// and https://.
    #[arg(long, env = "SOCKETCLUSTER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Re-sign the token of every authenticated socket at this interval (seconds).
    #[arg(long, env = "SOCKETCLUSTER_TOKEN_RENEWAL")]
    token_renewal: Option<u64>,
    /// Log format on stderr: text or json. Default text.
    #[arg(long, env = "SOCKETCLUSTER_LOG_FORMAT")]
    log_format: Option<String>,
    /// Largest inbound message in bytes. Default 8388608.
    #[arg(long, env = "SOCKETCLUSTER_MAX_PAYLOAD")]
    max_payload: Option<usize>,
    /// Channels one socket may subscribe to. Default 10000.
    #[arg(long, env = "SOCKETCLUSTER_SOCKET_CHANNEL_LIMIT")]
    socket_channel_limit: Option<usize>,
    /// Close sockets that send no #handshake within this many ms (4005). Default 10000.
    #[arg(long, env = "SOCKETCLUSTER_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<u64>,
    /// Timeout in ms of server -> client invokes. Default 10000.
    #[arg(long, env = "SOCKETCLUSTER_ACK_TIMEOUT")]
    ack_timeout: Option<u64>,
    /// Busy polling: after each inbound message, keep one thread polling for I/O
    /// instead of sleeping for this many µs (lower latency under light traffic, one
    /// busy core while traffic flows). 0 = off. Default 0.
    #[arg(long, env = "SOCKETCLUSTER_BUSY_POLL_US")]
    busy_poll_us: Option<u64>,
    /// Channel glob (`chat/*`) with history: its publications are numbered and kept, and a
    /// client that comes back recovers what it missed (docs/PROTOCOL.md 14.16).
    /// Repeatable; the environment variable takes a comma-separated list. Default: none.
    #[arg(long, env = "SOCKETCLUSTER_HISTORY", value_delimiter = ',')]
    history: Vec<String>,
    /// Publications kept per channel with history. Default 100.
    #[arg(long, env = "SOCKETCLUSTER_HISTORY_SIZE")]
    history_size: Option<usize>,
    /// Seconds each publication of a channel with history is kept. Default 300.
    #[arg(long, env = "SOCKETCLUSTER_HISTORY_TTL")]
    history_ttl: Option<u64>,
    /// The most publications one recovery replays; a client that missed more is told it
    /// was not recovered. Default 300.
    #[arg(long, env = "SOCKETCLUSTER_HISTORY_MAX_RECOVERY")]
    history_max_recovery: Option<usize>,
    /// Pub/sub backplane shared by several instances: `local` (in-process, default),
    /// `redis://HOST:PORT[,redis://HOST:PORT...]` (independent nodes, or a Redis Cluster
    /// with sharded pub/sub) or `nats://HOST:PORT[,...]`.
    #[arg(long, env = "SOCKETCLUSTER_BROKER")]
    broker: Option<String>,
    /// Most elements in one inbound batch (JSON array message); more closes with 1009.
    /// Default 4096.
    #[arg(long, env = "SOCKETCLUSTER_MAX_BATCH_ITEMS")]
    max_batch_items: Option<usize>,
    /// Live WebSocket connections per remote IP; more get HTTP 429. 0 = unlimited.
    /// Default 1000.
    #[arg(long, env = "SOCKETCLUSTER_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// WebSocket upgrades per second per remote IP (burst: 4 seconds' worth); more get
    /// HTTP 429. 0 = unlimited. Default 50.
    #[arg(long, env = "SOCKETCLUSTER_HANDSHAKE_RATE_PER_IP")]
    handshake_rate_per_ip: Option<u32>,
    /// Apply the per-IP limits to loopback clients too (exempt by default).
    #[arg(long, env = "SOCKETCLUSTER_PER_IP_LIMITS_ON_LOOPBACK", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    per_ip_limits_on_loopback: Option<bool>,
    /// Inbound messages per second per socket (burst: one second's worth); above it the
    /// socket is throttled. 0 = unlimited. Default 0.
    #[arg(long, env = "SOCKETCLUSTER_INBOUND_RATE")]
    inbound_rate: Option<u32>,
    /// Inbound payload bytes per second per socket (burst: one second's worth); above it
    /// the socket is throttled. 0 = unlimited. Default 0.
    #[arg(long, env = "SOCKETCLUSTER_INBOUND_BYTE_RATE")]
    inbound_byte_rate: Option<u32>,
    /// A socket throttled this many ms without a break is closed with 1008. Default 10000.
    #[arg(long, env = "SOCKETCLUSTER_THROTTLE_CLOSE_AFTER")]
    throttle_close_after: Option<u64>,
    /// Time in ms for a whole HTTP API request body; slower gets 408. Default 10000.
    #[arg(long, env = "SOCKETCLUSTER_HTTP_BODY_TIMEOUT")]
    http_body_timeout: Option<u64>,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    dashboard: DashboardArgs,
}

/// The same settings as they appear in the TOML file (and in `--print-config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct FileSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_public_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_default_expiry: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) no_client_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_interval: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ping_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) protocol_version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) origins: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) http_api_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_renewal: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_payload: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) socket_channel_limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handshake_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) busy_poll_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) history: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) history_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) history_ttl: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) history_max_recovery: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_batch_items: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections_per_ip: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handshake_rate_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_ip_limits_on_loopback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) inbound_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) inbound_byte_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throttle_close_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) http_body_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dashboard: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dashboard_password: Option<String>,
    pub(crate) proxy: Option<ProxyFile>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The effective, validated settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
    pub(crate) auth_key: Option<String>,
    pub(crate) auth_key_file: Option<PathBuf>,
    pub(crate) auth_public_key_file: Option<PathBuf>,
    pub(crate) auth_algorithm: String,
    pub(crate) auth_default_expiry: u64,
    pub(crate) auth_channels: Vec<String>,
    pub(crate) no_client_publish: bool,
    pub(crate) ping_interval: u64,
    pub(crate) ping_timeout: u64,
    pub(crate) protocol_version: u8,
    pub(crate) origins: String,
    pub(crate) http_api_key: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) token_renewal: Option<u64>,
    pub(crate) log_format: LogFormat,
    pub(crate) max_payload: usize,
    pub(crate) socket_channel_limit: usize,
    pub(crate) handshake_timeout: u64,
    pub(crate) ack_timeout: u64,
    pub(crate) busy_poll_us: u64,
    pub(crate) broker: Broker,
    pub(crate) history: Vec<String>,
    pub(crate) history_size: usize,
    pub(crate) history_ttl: u64,
    pub(crate) history_max_recovery: usize,
    pub(crate) max_batch_items: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) handshake_rate_per_ip: u32,
    pub(crate) per_ip_limits_on_loopback: bool,
    pub(crate) inbound_rate: u32,
    pub(crate) inbound_byte_rate: u32,
    pub(crate) throttle_close_after: u64,
    pub(crate) http_body_timeout: u64,
    pub(crate) proxy: ProxySettings,
    pub(crate) dashboard: DashboardSettings,
}

/// An invalid setting: the message names it. `serve` exits with status 2.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidSetting {
    /// The setting's name (its flag without `--`, which is also its TOML key).
    pub(crate) setting: String,
    pub(crate) message: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {}",
            self.setting, self.message
        )
    }
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        setting: setting.into(),
        message: message.into(),
    }
}

/// The TOML key a parse error is about: the key of the `key = value` line the error's
/// span is on (or, for a value spanning lines, the last such line before it).
fn toml_error_key(text: &str, e: &toml::de::Error) -> Option<String> {
    let span = e.span()?;
    let line_end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |i| span.start + i);
    let upto = text.get(..line_end)?;
    upto.lines().rev().find_map(|line| {
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches(['"', '\'']);
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        bare.then(|| key.to_owned())
    })
}

const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384",
];

impl ServeArgs {
    /// Read the `--config` file, if any.
    pub(crate) fn file_settings(&self) -> Result<FileSettings, InvalidSetting> {
        let Some(path) = &self.config else {
            return Ok(FileSettings::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let place = match line {
                Some(l) => format!("{}, line {l}", path.display()),
                None => path.display().to_string(),
            };
            let message = format!("{} (in {place})", e.message().trim_end());
            match toml_error_key(&text, &e) {
                Some(key) => invalid(key, message),
                None => invalid("config", message),
            }
        })
    }

    /// Merge flags/environment (already merged by clap, flags first) over the file over
    /// the defaults, and validate.
    pub(crate) fn resolve(&self, file: FileSettings) -> Result<Settings, InvalidSetting> {
        let a = self;
        let pick_vec = |flag: &Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        let log_format = match a
            .log_format
            .clone()
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log-format",
                    format!("must be text or json, got {other:?}"),
                ));
            }
        };
        let s = Settings {
            host: a
                .host
                .clone()
                .or(file.host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: a.port.or(file.port).unwrap_or(8000),
            path: a
                .path
                .clone()
                .or(file.path)
                .unwrap_or_else(|| "/socketcluster/".into()),
            auth_key: a.auth_key.clone().or(file.auth_key),
            auth_key_file: a.auth_key_file.clone().or(file.auth_key_file),
            auth_public_key_file: a.auth_public_key_file.clone().or(file.auth_public_key_file),
            auth_algorithm: a
                .auth_algorithm
                .clone()
                .or(file.auth_algorithm)
                .unwrap_or_else(|| "HS256".into())
                .to_ascii_uppercase(),
            auth_default_expiry: a
                .auth_default_expiry
                .or(file.auth_default_expiry)
                .unwrap_or(86_400),
            auth_channels: pick_vec(&a.auth_channels, file.auth_channels),
            no_client_publish: a
                .no_client_publish
                .or(file.no_client_publish)
                .unwrap_or(false),
            ping_interval: a.ping_interval.or(file.ping_interval).unwrap_or(8_000),
            ping_timeout: a.ping_timeout.or(file.ping_timeout).unwrap_or(20_000),
            protocol_version: a.protocol_version.or(file.protocol_version).unwrap_or(2),
            origins: a
                .origins
                .clone()
                .or(file.origins)
                .unwrap_or_else(|| "*:*".into()),
            http_api_key: a.http_api_key.clone().or(file.http_api_key),
            tls_cert: a.tls_cert.clone().or(file.tls_cert),
            tls_key: a.tls_key.clone().or(file.tls_key),
            token_renewal: a.token_renewal.or(file.token_renewal),
            log_format,
            max_payload: a.max_payload.or(file.max_payload).unwrap_or(8 << 20),
            socket_channel_limit: a
                .socket_channel_limit
                .or(file.socket_channel_limit)
                .unwrap_or(10_000),
            handshake_timeout: a
                .handshake_timeout
                .or(file.handshake_timeout)
                .unwrap_or(10_000),
            ack_timeout: a.ack_timeout.or(file.ack_timeout).unwrap_or(10_000),
            busy_poll_us: a.busy_poll_us.or(file.busy_poll_us).unwrap_or(0),
            broker: Broker::parse(
                a.broker
                    .as_deref()
                    .or(file.broker.as_deref())
                    .unwrap_or("local"),
            )
            .map_err(|m| invalid("broker", m))?,
            history: pick_vec(&a.history, file.history),
            history_size: a.history_size.or(file.history_size).unwrap_or(100),
            history_ttl: a.history_ttl.or(file.history_ttl).unwrap_or(300),
            history_max_recovery: a
                .history_max_recovery
                .or(file.history_max_recovery)
                .unwrap_or(300),
            max_batch_items: a.max_batch_items.or(file.max_batch_items).unwrap_or(4096),
            max_connections_per_ip: (a.max_connections_per_ip)
                .or(file.max_connections_per_ip)
                .unwrap_or(1000),
            handshake_rate_per_ip: (a.handshake_rate_per_ip)
                .or(file.handshake_rate_per_ip)
                .unwrap_or(50),
            per_ip_limits_on_loopback: (a.per_ip_limits_on_loopback)
                .or(file.per_ip_limits_on_loopback)
                .unwrap_or(false),
            inbound_rate: a.inbound_rate.or(file.inbound_rate).unwrap_or(0),
            inbound_byte_rate: a.inbound_byte_rate.or(file.inbound_byte_rate).unwrap_or(0),
            throttle_close_after: (a.throttle_close_after)
                .or(file.throttle_close_after)
                .unwrap_or(10_000),
            http_body_timeout: (a.http_body_timeout)
                .or(file.http_body_timeout)
                .unwrap_or(10_000),
            proxy: a.proxy.resolve(file.proxy).map_err(|e| InvalidSetting {
                setting: e.setting.into(),
                message: e.message,
            })?,
            dashboard: (a.dashboard)
                .resolve(file.dashboard, file.dashboard_password)
                .map_err(|e| invalid(e.setting, e.message))?,
        };
        s.validate()?;
        Ok(s)
    }
}

impl Settings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.path.starts_with('/') {
            return Err(invalid(
                "path",
                format!("must start with '/', got {:?}", self.path),
            ));
        }
        if !ALGORITHMS.contains(&self.auth_algorithm.as_str()) {
            return Err(invalid(
                "auth-algorithm",
                format!(
                    "must be one of {}, got {:?}",
                    ALGORITHMS.join(", "),
                    self.auth_algorithm
                ),
            ));
        }
        if self.auth_key.is_some() && self.auth_key_file.is_some() {
            return Err(invalid(
                "auth-key",
                "give either auth-key or auth-key-file, not both",
            ));
        }
        let asymmetric = !self.auth_algorithm.starts_with("HS");
        if asymmetric && (self.auth_key_file.is_none() || self.auth_public_key_file.is_none()) {
            return Err(invalid(
                "auth-key-file",
                format!(
                    "{} needs a PEM private key (auth-key-file) and a PEM public key (auth-public-key-file)",
                    self.auth_algorithm
                ),
            ));
        }
        if !asymmetric && self.auth_public_key_file.is_some() {
            return Err(invalid(
                "auth-public-key-file",
                format!(
                    "only used with RS/ES/PS algorithms, not {}",
                    self.auth_algorithm
                ),
            ));
        }
        if matches!(&self.auth_key, Some(k) if k.is_empty()) {
            return Err(invalid("auth-key", "must not be empty"));
        }
        for f in [
            &self.auth_key_file,
            &self.auth_public_key_file,
            &self.tls_cert,
            &self.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            if !f.is_file() {
                let setting = if Some(f) == self.auth_key_file.as_ref() {
                    "auth-key-file"
                } else if Some(f) == self.auth_public_key_file.as_ref() {
                    "auth-public-key-file"
                } else if Some(f) == self.tls_cert.as_ref() {
                    "tls-cert"
                } else {
                    "tls-key"
                };
                return Err(invalid(
                    setting,
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls-cert", "tls-cert and tls-key go together"));
        }
        if !matches!(self.protocol_version, 1 | 2) {
            return Err(invalid(
                "protocol-version",
                format!("must be 1 or 2, got {}", self.protocol_version),
            ));
        }
        if self.ping_interval == 0 {
            return Err(invalid("ping-interval", "must be greater than 0"));
        }
        if self.ping_timeout <= self.ping_interval {
            return Err(invalid(
                "ping-timeout",
                format!(
                    "must be greater than ping-interval ({} ms), or clients time out between pings; got {} ms",
                    self.ping_interval, self.ping_timeout
                ),
            ));
        }
        if self.auth_default_expiry == 0 {
            return Err(invalid("auth-default-expiry", "must be greater than 0"));
        }
        if self.token_renewal == Some(0) {
            return Err(invalid("token-renewal", "must be greater than 0"));
        }
        if self.busy_poll_us > 1_000_000 {
            return Err(invalid(
                "busy-poll-us",
                "must be at most 1000000 (one second of spinning after each message)",
            ));
        }
        if self.max_payload < 1024 {
            return Err(invalid("max-payload", "must be at least 1024 bytes"));
        }
        if self.max_batch_items == 0 {
            return Err(invalid("max-batch-items", "must be greater than 0"));
        }
        if self.throttle_close_after == 0 {
            return Err(invalid("throttle-close-after", "must be greater than 0"));
        }
        if self.http_body_timeout == 0 {
            return Err(invalid("http-body-timeout", "must be greater than 0"));
        }
        if self.http_api_key.as_deref() == Some("") {
            return Err(invalid("http-api-key", "must not be empty"));
        }
        for p in &self.auth_channels {
            if p.is_empty() {
                return Err(invalid("auth-channels", "patterns must not be empty"));
            }
        }
        self.validate_history()
    }

    fn validate_history(&self) -> Result<(), InvalidSetting> {
        if self.history.iter().any(String::is_empty) {
            return Err(invalid("history", "patterns must not be empty"));
        }
        if self.history_size == 0 {
            return Err(invalid("history-size", "must be greater than 0"));
        }
        if self.history_ttl == 0 {
            return Err(invalid("history-ttl", "must be greater than 0"));
        }
        if !self.history.is_empty() && matches!(self.broker, Broker::Nats(_)) {
            return Err(invalid(
                "history",
                "channel history needs the in-process broker or the Redis backplane; the NATS \
                 backplane keeps none (use --broker redis://... for history across instances)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn args(v: &[&str]) -> ServeArgs {
        let mut all = vec!["x"];
        all.extend_from_slice(v);
        T::parse_from(all).a
    }

    #[test]
    fn defaults_are_the_cli_contract() {
        let s = args(&[]).resolve(FileSettings::default()).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("127.0.0.1", 8000, "/socketcluster/")
        );
        assert_eq!(
            (s.ping_interval, s.ping_timeout, s.protocol_version),
            (8000, 20000, 2)
        );
        assert_eq!(s.auth_algorithm, "HS256");
        assert_eq!(s.auth_default_expiry, 86_400);
        assert!(!s.no_client_publish);
        assert_eq!(s.broker, Broker::Local);
    }

    #[test]
    fn broker_urls_parse() {
        let s = args(&["--broker", "redis://a:1,redis://b:2"])
            .resolve(FileSettings::default())
            .unwrap();
        assert_eq!(
            s.broker,
            Broker::Redis(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        let s = args(&["--broker", "nats://n:4222"])
            .resolve(FileSettings::default())
            .unwrap();
        assert_eq!(s.broker, Broker::Nats("nats://n:4222".into()));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileSettings = toml::from_str("port = 9000\nping-interval = 1000\nauth-channels = [\"a/*\"]\nno-client-publish = true").unwrap();
        let s = args(&["--port", "9100", "--auth-channels", "b/*"])
            .resolve(file)
            .unwrap();
        assert_eq!(s.port, 9100);
        assert_eq!(s.ping_interval, 1000);
        assert_eq!(s.auth_channels, vec!["b/*".to_owned()]);
        assert!(s.no_client_publish);
    }

    #[test]
    fn invalid_settings_are_named() {
        let e = args(&["--protocol-version", "3"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "protocol-version");
        let e = args(&["--ping-interval", "5000", "--ping-timeout", "4000"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "ping-timeout");
        let e = args(&["--auth-algorithm", "none"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "auth-algorithm");
        assert!(toml::from_str::<FileSettings>("bogus = 1").is_err());
        let e = args(&["--broker", "kafka://x:1"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "broker");
        let e = args(&["--busy-poll-us", "2000000"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "busy-poll-us");
    }

    #[test]
    fn abuse_limits_have_defaults_and_come_from_flags_env_or_file() {
        let s = args(&[]).resolve(FileSettings::default()).unwrap();
        assert_eq!(
            (
                s.max_batch_items,
                s.max_connections_per_ip,
                s.handshake_rate_per_ip
            ),
            (4096, 1000, 50)
        );
        assert_eq!((s.inbound_rate, s.inbound_byte_rate), (0, 0));
        assert_eq!(
            (s.throttle_close_after, s.http_body_timeout),
            (10_000, 10_000)
        );
        assert!(!s.per_ip_limits_on_loopback);
        let file: FileSettings = toml::from_str(
            "max-connections-per-ip = 5\ninbound-rate = 100\nper-ip-limits-on-loopback = true",
        )
        .unwrap();
        let s = args(&["--inbound-rate", "7", "--max-batch-items", "10"])
            .resolve(file)
            .unwrap();
        assert_eq!((s.max_connections_per_ip, s.inbound_rate), (5, 7));
        assert_eq!(s.max_batch_items, 10);
        assert!(s.per_ip_limits_on_loopback);
        let e = args(&["--max-batch-items", "0"])
            .resolve(FileSettings::default())
            .unwrap_err();
        assert_eq!(e.setting, "max-batch-items");
        // the printed configuration round-trips
        let back: FileSettings = toml::from_str(&s.to_redacted_toml()).unwrap();
        assert_eq!(back.inbound_rate, Some(7));
    }

    #[test]
    fn toml_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("sc-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        for (text, key, line) in [
            ("host = \"0.0.0.0\"\nport = \"not-a-number\"\n", "port", 2),
            ("max-payload = -1\n", "max-payload", 1),
            ("no-client-publish = \"yes\"\n", "no-client-publish", 1),
            ("history = [\n  \"a/*\",\n  5,\n]\n", "history", 3),
            ("bogus = 1\n", "bogus", 1),
        ] {
            std::fs::write(&path, text).unwrap();
            let mut a = args(&[]);
            a.config = Some(path.clone());
            let e = a.file_settings().unwrap_err();
            assert_eq!(e.setting, key, "{text}: {e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("invalid configuration: {key}: ")),
                "{shown}"
            );
            assert!(shown.contains(&format!("line {line})")), "{shown}");
        }
        // not about one key: the file is named
        std::fs::write(&path, "port = \n").unwrap();
        let mut a = args(&[]);
        a.config = Some(path.clone());
        let e = a.file_settings().unwrap_err();
        assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn busy_polling_is_off_unless_asked_for() {
        let s = args(&[]).resolve(FileSettings::default()).unwrap();
        assert_eq!(s.busy_poll_us, 0);
        let file: FileSettings = toml::from_str("busy-poll-us = 100").unwrap();
        assert_eq!(args(&[]).resolve(file.clone()).unwrap().busy_poll_us, 100);
        let s = args(&["--busy-poll-us", "50"]).resolve(file).unwrap();
        assert_eq!(s.busy_poll_us, 50);
    }

    #[test]
    fn print_config_redacts_secrets() {
        let s = args(&["--auth-key", "supersecret", "--http-api-key", "apikey"])
            .resolve(FileSettings::default())
            .unwrap();
        let t = s.to_redacted_toml();
        assert!(!t.contains("supersecret") && !t.contains("apikey"), "{t}");
        assert!(t.contains("auth-key = \"<redacted>\""));
        // the printed configuration is itself a valid config file
        let back: FileSettings = toml::from_str(&t).unwrap();
        assert_eq!(back.port, Some(8000));
    }
}
