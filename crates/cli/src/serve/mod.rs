//! `socketcluster serve`: a standalone SocketCluster server.

mod broker_setting;
pub(crate) mod cluster;
mod conn;
mod dashboard;
mod dashboard_auth;
mod dashboard_settings;
pub(crate) mod http;
mod metrics;
mod print_config;
mod proxy_settings;
mod rewind;
pub(crate) mod settings;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use socketcluster_rs_server::auth::{AuthConfig, AuthKey, JwtAlgorithm};
use socketcluster_rs_server::{HistoryConfig, HistoryRule, ProtocolVersion, Server, ServerConfig};
use socketcluster_rs_server::{Limits, RateLimit};

use settings::{Broker, InvalidSetting, LogFormat, ServeArgs, Settings};

/// Exit status for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

/// The history rules: every `--history` pattern with `--history-size` and `--history-ttl`.
fn history_config(s: &Settings) -> HistoryConfig {
    s.history.iter().fold(
        HistoryConfig::default().with_max_recovery(s.history_max_recovery),
        |h, pattern| {
            h.with_rule(
                HistoryRule::new(pattern.clone())
                    .with_size(s.history_size)
                    .with_ttl(Duration::from_secs(s.history_ttl)),
            )
        },
    )
}

/// Turn validated settings into the server library's configuration. Reading key and
/// certificate files happens here, so every failure names its setting.
pub(crate) fn server_config(s: &Settings) -> Result<ServerConfig, InvalidSetting> {
    let bad = |setting: &'static str, message: String| InvalidSetting {
        setting: setting.into(),
        message,
    };
    let algorithm: JwtAlgorithm = s.auth_algorithm.parse().map_err(|_| {
        bad(
            "auth-algorithm",
            format!("unsupported: {}", s.auth_algorithm),
        )
    })?;
    let key = match (&s.auth_key, &s.auth_key_file, &s.auth_public_key_file) {
        (Some(k), _, _) => AuthKey::secret(k.clone()),
        (None, Some(private), Some(public)) => {
            AuthKey::pem_files(private, public).map_err(|e| bad("auth-key-file", e.to_string()))?
        }
        (None, Some(file), None) => {
            AuthKey::secret_file(file).map_err(|e| bad("auth-key-file", e.to_string()))?
        }
        (None, None, _) => AuthKey::Random,
    };
    let mut auth = AuthConfig::default();
    auth.key = key;
    auth.algorithm = Some(algorithm);
    auth.default_expiry = s.auth_default_expiry;
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some(
            socketcluster_rs_server::tls::server_config_from_pem_files(cert, key)
                .map_err(|e| bad("tls-cert", e.to_string()))?,
        ),
        _ => None,
    };
    let rate = |n: u32, burst: u32| {
        (n > 0).then_some(RateLimit {
            per_second: n,
            burst: burst.max(1),
        })
    };
    let limits = Limits::default()
        .max_payload(s.max_payload)
        .socket_channel_limit(Some(s.socket_channel_limit))
        .max_batch_items(s.max_batch_items)
        .max_connections_per_ip((s.max_connections_per_ip > 0).then_some(s.max_connections_per_ip))
        .handshake_rate_per_ip(rate(
            s.handshake_rate_per_ip,
            s.handshake_rate_per_ip.saturating_mul(4),
        ))
        .per_ip_limits_on_loopback(s.per_ip_limits_on_loopback)
        .inbound_rate(rate(s.inbound_rate, s.inbound_rate))
        .inbound_byte_rate(rate(s.inbound_byte_rate, s.inbound_byte_rate))
        .throttle_close_after(Duration::from_millis(s.throttle_close_after));
    let version = if s.protocol_version == 1 {
        ProtocolVersion::V1
    } else {
        ProtocolVersion::V2
    };
    let config = ServerConfig::default()
        .with_host(s.host.clone())
        .with_port(s.port)
        .with_path(s.path.clone())
        .with_protocol_version(version)
        .with_auth(auth)
        .with_auth_channels(s.auth_channels.clone())
        .with_allow_client_publish(!s.no_client_publish)
        .with_ping_interval(Duration::from_millis(s.ping_interval))
        .with_ping_timeout(Duration::from_millis(s.ping_timeout))
        .with_handshake_timeout(Duration::from_millis(s.handshake_timeout))
        .with_busy_poll((s.busy_poll_us > 0).then(|| Duration::from_micros(s.busy_poll_us)))
        .with_ack_timeout(Duration::from_millis(s.ack_timeout))
        .with_origins(s.origins.clone())
        .with_tls(tls)
        .with_limits(limits)
        .with_history(history_config(s));
    // Validate the auth settings now (keys parse, algorithm fits the key) so that a bad
    // key is a configuration error, not a start-up crash.
    socketcluster_rs_server::auth::AuthEngine::new(&config.auth).map_err(|e| {
        bad(
            if s.auth_key_file.is_some() {
                "auth-key-file"
            } else {
                "auth-key"
            },
            e.to_string(),
        )
    })?;
    Ok(config)
}

fn init_logging(verbose: u8, quiet: u8, format: LogFormat) {
    let default = match (verbose, quiet) {
        (0, 0) => "info",
        (0, 1) => "warn",
        (0, _) => "error",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(crate::filter_for(default)));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// SIGINT/SIGTERM, registered as soon as this is created (before the server announces
/// that it listens, so a supervisor's early SIGTERM is never fatal).
struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    fn install() -> ShutdownSignal {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            ShutdownSignal {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignal {}
        }
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        if let (Some(term), Some(int)) = (self.term.as_mut(), self.int.as_mut()) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Connect the configured backplane: the broker for the server and a probe for
/// `/health`.
async fn connect_backplane(
    broker: &Broker,
) -> Result<
    Option<(
        Arc<dyn socketcluster_rs_server::broker::Broker>,
        http::HealthProbe,
    )>,
    String,
> {
    match broker {
        Broker::Local => Ok(None),
        Broker::Redis(urls) => {
            let b = socketcluster_rs_broker_redis::RedisBroker::connect(
                urls,
                socketcluster_rs_broker_redis::RedisBrokerOptions::default(),
            )
            .await
            .map_err(|e| format!("cannot connect the Redis backplane: {e}"))?;
            let probe = b.clone();
            let health: http::HealthProbe = Arc::new(move || {
                let h = probe.health();
                let nodes: Vec<serde_json::Value> = h
                    .nodes
                    .iter()
                    .map(|n| serde_json::json!({"address": n.address, "connected": n.connected, "channels": n.channels, "lastError": n.last_error}))
                    .collect();
                (
                    h.is_connected(),
                    serde_json::json!({"kind": "redis", "state": h.state.as_str(), "nodes": nodes}),
                )
            });
            Ok(Some((Arc::new(b), health)))
        }
        Broker::Nats(url) => {
            let b = socketcluster_rs_broker_nats::NatsBroker::connect(
                url,
                socketcluster_rs_broker_nats::NatsBrokerOptions::default(),
            )
            .await
            .map_err(|e| format!("cannot connect the NATS backplane: {e}"))?;
            let probe = b.clone();
            let health: http::HealthProbe = Arc::new(move || {
                let h = probe.health();
                (
                    h.is_connected(),
                    serde_json::json!({"kind": "nats", "state": h.state.as_str()}),
                )
            });
            Ok(Some((Arc::new(b), health)))
        }
    }
}

/// Re-sign the token of every authenticated socket every `every`: the same claims with
/// a fresh `iat`/`exp`, so a connected socket never expires while a leaked token still
/// dies after `auth-default-expiry`.
/// `/health` detail of the proxy hooks: degraded while a hook's last call failed.
fn proxy_health(proxy: socketcluster_rs_proxy::Proxy) -> http::HealthProbe {
    Arc::new(move || {
        let hooks: Vec<serde_json::Value> = proxy
            .health()
            .iter()
            .map(|h| {
                serde_json::json!({
                    "hook": h.hook, "url": h.url, "ok": h.is_ok(), "calls": h.calls,
                    "errors": h.errors, "consecutiveFailures": h.consecutive_failures,
                    "lastError": h.last_error,
                })
            })
            .collect();
        (proxy.is_healthy(), serde_json::json!({ "hooks": hooks }))
    })
}

async fn renew_tokens(server: Server, every: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut renewed = 0usize;
        for socket in server.clients() {
            let Some(claims) = socket.auth_token() else {
                continue;
            };
            let mut claims = (*claims).clone();
            claims.shift_remove("iat");
            claims.shift_remove("exp");
            match socket
                .set_auth_token(
                    &claims,
                    socketcluster_rs_server::auth::SignOptions::default(),
                )
                .await
            {
                Ok(_) => renewed += 1,
                Err(e) => {
                    tracing::debug!(socket = socket.id(), error = %e, "token renewal skipped")
                }
            }
        }
        tracing::debug!(renewed, "renewed tokens");
    }
}

pub(crate) async fn run(args: ServeArgs, verbose: u8, quiet: u8) -> ExitCode {
    let settings = match args.file_settings().and_then(|f| args.resolve(f)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.print_config {
        print!("{}", settings.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let config = match server_config(&settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(verbose, quiet, settings.log_format);
    let shutdown = ShutdownSignal::install();
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let max_body = config.limits.max_payload;
    let metrics = metrics::install();
    let (server, backplane) = match connect_backplane(&settings.broker).await {
        Ok(Some((broker, probe))) => (Server::with_broker(config, broker), Some(probe)),
        Ok(None) => (Server::new(config), None),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let server = match server {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the server: {e}");
            return ExitCode::from(1);
        }
    };
    let proxy = match proxy_settings::to_proxy_config(&settings.proxy) {
        Ok(None) => None,
        Ok(Some(config)) => match socketcluster_rs_proxy::Proxy::install(&server, config) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Err(e) => {
            eprintln!("invalid setting {}: {}", e.setting, e.message);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let listener =
        match tokio::net::TcpListener::bind((settings.host.as_str(), settings.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}:{}: {e}", settings.host, settings.port);
                return ExitCode::from(1);
            }
        };
    let addr = listener.local_addr().ok();
    cluster::block_clients(&server);
    let instances = cluster::Instances::new(addr.map_or_else(
        || format!("{}:{}", settings.host, settings.port),
        |a| a.to_string(),
    ));
    let operator = Arc::new(http::Operator {
        server: server.clone(),
        ws_path: settings.path.clone(),
        api_key: settings.http_api_key.clone(),
        metrics,
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        max_body,
        body_timeout: Duration::from_millis(settings.http_body_timeout),
        backplane,
        proxy: proxy.map(proxy_health),
        dashboard: settings.dashboard.enabled.then(|| {
            dashboard_auth::Dashboard::new(
                settings.dashboard.password.clone().unwrap_or_default(),
                settings.to_redacted_toml(),
            )
        }),
        secure: settings.tls_cert.is_some(),
        instances: instances.clone(),
    });
    let cluster_stop = tokio_util::sync::CancellationToken::new();
    let heartbeat = tokio::spawn(cluster::run(
        instances,
        server.clone(),
        operator.backplane_probe(),
        cluster_stop.clone(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let accept = tokio::spawn(conn::accept_loop(
        listener,
        tls,
        operator.clone(),
        stop.clone(),
    ));
    if let Some(every) = settings.token_renewal {
        tokio::spawn(renew_tokens(
            server.clone(),
            Duration::from_secs(every),
            stop.clone(),
        ));
    }
    let scheme = if settings.tls_cert.is_some() {
        "wss"
    } else {
        "ws"
    };
    if let Some(addr) = addr {
        tracing::info!(
            %addr,
            instance = %operator.instances.id(),
            url = %format!("{scheme}://{addr}{}", settings.path),
            http_api = settings.http_api_key.is_some(),
            dashboard = %if settings.dashboard.enabled { format!("http{}://{addr}{}", if settings.tls_cert.is_some() { "s" } else { "" }, dashboard_auth::PREFIX) } else { "off".into() },
            broker = %match &settings.broker { Broker::Local => "local", Broker::Redis(_) => "redis", Broker::Nats(_) => "nats" },
            "listening"
        );
    }
    shutdown.recv().await;
    // tell the other instances first, while the backplane is still there
    cluster_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), heartbeat).await;
    tracing::info!("shutting down: closing every socket with 1001 (clients reconnect)");
    // While draining, /health answers 503 and new WebSocket connections are refused
    // with 503, so a load balancer moves traffic away; then the listener stops.
    operator
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Release);
    server.shutdown().await;
    stop.cancel();
    let _ = accept.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
