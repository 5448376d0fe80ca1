//! `--print-config`: the effective settings as TOML with every secret redacted (also
//! shown on the dashboard's Configuration page).

use super::proxy_settings::ProxyFile;
use super::settings::{FileSettings, LogFormat, Settings};

impl Settings {
    /// The effective configuration as TOML, secrets replaced by `<redacted>`.
    pub(crate) fn to_redacted_toml(&self) -> String {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>".to_owned());
        let f = FileSettings {
            host: Some(self.host.clone()),
            port: Some(self.port),
            path: Some(self.path.clone()),
            auth_key: redact(&self.auth_key),
            auth_key_file: self.auth_key_file.clone(),
            auth_public_key_file: self.auth_public_key_file.clone(),
            auth_algorithm: Some(self.auth_algorithm.clone()),
            auth_default_expiry: Some(self.auth_default_expiry),
            auth_channels: Some(self.auth_channels.clone()),
            no_client_publish: Some(self.no_client_publish),
            ping_interval: Some(self.ping_interval),
            ping_timeout: Some(self.ping_timeout),
            protocol_version: Some(self.protocol_version),
            origins: Some(self.origins.clone()),
            http_api_key: redact(&self.http_api_key),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            token_renewal: self.token_renewal,
            log_format: Some(
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .to_owned(),
            ),
            max_payload: Some(self.max_payload),
            socket_channel_limit: Some(self.socket_channel_limit),
            handshake_timeout: Some(self.handshake_timeout),
            busy_poll_us: Some(self.busy_poll_us),
            ack_timeout: Some(self.ack_timeout),
            broker: Some(self.broker.as_setting()),
            history: Some(self.history.clone()),
            history_size: Some(self.history_size),
            history_ttl: Some(self.history_ttl),
            history_max_recovery: Some(self.history_max_recovery),
            max_batch_items: Some(self.max_batch_items),
            max_connections_per_ip: Some(self.max_connections_per_ip),
            handshake_rate_per_ip: Some(self.handshake_rate_per_ip),
            per_ip_limits_on_loopback: Some(self.per_ip_limits_on_loopback),
            inbound_rate: Some(self.inbound_rate),
            inbound_byte_rate: Some(self.inbound_byte_rate),
            throttle_close_after: Some(self.throttle_close_after),
            http_body_timeout: Some(self.http_body_timeout),
            dashboard: Some(self.dashboard.enabled),
            dashboard_password: redact(&self.dashboard.password),
            proxy: self.proxy.is_enabled().then(|| ProxyFile {
                secret: redact(&self.proxy.secret),
                ..self.proxy.clone()
            }),
        };
        toml::to_string(&f).unwrap_or_default()
    }
}
