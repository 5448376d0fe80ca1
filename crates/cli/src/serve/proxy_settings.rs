//! `socketcluster serve --proxy-*`: the HTTP backend hooks (socketcluster-rs-proxy), as
//! flags, `SOCKETCLUSTER_PROXY_*` environment variables and a `[proxy]` TOML table.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use socketcluster_rs_proxy::{HookConfig, ProxyConfig};

/// A setting name and what is wrong with it (turned into the `serve` settings error).
#[derive(Debug)]
pub(crate) struct InvalidSetting {
    pub(crate) setting: &'static str,
    pub(crate) message: String,
}

/// Proxy flags (flattened into `serve`).
#[derive(Debug, Args, Default)]
pub(crate) struct ProxyArgs {
    /// Key of the HMAC-SHA256 signature of every backend request
    /// (`X-SocketCluster-Signature`). Default: requests are not signed.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_SECRET")]
    proxy_secret: Option<String>,
    /// Upgrade-request headers forwarded to the backend in `socket.headers` (e.g.
    /// `cookie`). Repeatable or comma-separated. Default none.
    #[arg(
        long,
        env = "SOCKETCLUSTER_PROXY_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    proxy_forward_headers: Vec<String>,
    /// Timeout in ms of every hook without its own. Default 1000.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_TIMEOUT")]
    proxy_timeout: Option<u64>,
    /// Backend requests in flight per hook; more fail at once with
    /// ProxyOverloadedError. Default 256.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_MAX_CONCURRENCY")]
    proxy_max_concurrency: Option<usize>,
    /// URL answering procedures (invoke). Procedures no hook covers get
    /// UnhandledProcedureError at once.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_RPC")]
    proxy_rpc: Option<String>,
    /// Procedure patterns (`*` wildcard) sent to --proxy-rpc. Default `*`.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_RPC_PATTERNS", value_delimiter = ',')]
    proxy_rpc_patterns: Vec<String>,
    /// Timeout in ms of --proxy-rpc. Default --proxy-timeout.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_RPC_TIMEOUT")]
    proxy_rpc_timeout: Option<u64>,
    /// URL deciding subscriptions.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_SUBSCRIBE")]
    proxy_subscribe: Option<String>,
    /// Channel patterns sent to --proxy-subscribe. Default `*`.
    #[arg(
        long,
        env = "SOCKETCLUSTER_PROXY_SUBSCRIBE_PATTERNS",
        value_delimiter = ','
    )]
    proxy_subscribe_patterns: Vec<String>,
    /// Timeout in ms of --proxy-subscribe. Default --proxy-timeout.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_SUBSCRIBE_TIMEOUT")]
    proxy_subscribe_timeout: Option<u64>,
    /// URL allowing, refusing or rewriting client publications.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_PUBLISH")]
    proxy_publish: Option<String>,
    /// Channel patterns sent to --proxy-publish. Default `*`.
    #[arg(
        long,
        env = "SOCKETCLUSTER_PROXY_PUBLISH_PATTERNS",
        value_delimiter = ','
    )]
    proxy_publish_patterns: Vec<String>,
    /// Timeout in ms of --proxy-publish. Default --proxy-timeout.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_PUBLISH_TIMEOUT")]
    proxy_publish_timeout: Option<u64>,
    /// URL accepting or rejecting handshakes (may issue a token and metadata).
    #[arg(long, env = "SOCKETCLUSTER_PROXY_HANDSHAKE")]
    proxy_handshake: Option<String>,
    /// Timeout in ms of --proxy-handshake. Default --proxy-timeout.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_HANDSHAKE_TIMEOUT")]
    proxy_handshake_timeout: Option<u64>,
    /// URL receiving transmitted events (batched, fire-and-forget).
    #[arg(long, env = "SOCKETCLUSTER_PROXY_TRANSMIT")]
    proxy_transmit: Option<String>,
    /// Event patterns sent to --proxy-transmit. Default `*`.
    #[arg(
        long,
        env = "SOCKETCLUSTER_PROXY_TRANSMIT_PATTERNS",
        value_delimiter = ','
    )]
    proxy_transmit_patterns: Vec<String>,
    /// URL receiving lifecycle notifications (connect, disconnect, subscribe,
    /// unsubscribe, authenticate, deauthenticate), batched.
    #[arg(long, env = "SOCKETCLUSTER_PROXY_NOTIFY")]
    proxy_notify: Option<String>,
}

/// One hook in the TOML file (`[proxy.rpc]` ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct HookFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    /// ms
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) patterns: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_concurrency: Option<usize>,
}

/// The `[proxy]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct ProxyFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) forward_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rpc: Option<HookFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subscribe: Option<HookFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) publish: Option<HookFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handshake: Option<HookFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transmit: Option<HookFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notify: Option<HookFile>,
}

/// The effective proxy settings (the `[proxy]` table with every default filled in,
/// hooks without a URL removed).
pub(crate) type ProxySettings = ProxyFile;

impl ProxyFile {
    /// Whether any hook has a URL.
    pub(crate) fn is_enabled(&self) -> bool {
        [
            &self.rpc,
            &self.subscribe,
            &self.publish,
            &self.handshake,
            &self.transmit,
            &self.notify,
        ]
        .iter()
        .any(|h| h.as_ref().is_some_and(|h| h.url.is_some()))
    }
}

fn hook(
    url: &Option<String>,
    patterns: &[String],
    timeout: Option<u64>,
    file: Option<HookFile>,
    default_timeout: u64,
    default_concurrency: usize,
) -> Option<HookFile> {
    let file = file.unwrap_or_default();
    let url = url.clone().or(file.url)?;
    Some(HookFile {
        url: Some(url),
        timeout: Some(timeout.or(file.timeout).unwrap_or(default_timeout)),
        patterns: Some(if patterns.is_empty() {
            file.patterns.unwrap_or_else(|| vec!["*".into()])
        } else {
            patterns.to_vec()
        }),
        max_concurrency: Some(file.max_concurrency.unwrap_or(default_concurrency)),
    })
}

impl ProxyArgs {
    /// Flags/environment over the `[proxy]` table over the defaults.
    pub(crate) fn resolve(&self, file: Option<ProxyFile>) -> Result<ProxySettings, InvalidSetting> {
        let a = self;
        let f = file.unwrap_or_default();
        let timeout = a.proxy_timeout.or(f.timeout).unwrap_or(1000);
        let conc = a.proxy_max_concurrency.or(f.max_concurrency).unwrap_or(256);
        let s = ProxySettings {
            secret: a.proxy_secret.clone().or(f.secret),
            forward_headers: Some(if a.proxy_forward_headers.is_empty() {
                f.forward_headers.unwrap_or_default()
            } else {
                a.proxy_forward_headers.clone()
            }),
            timeout: Some(timeout),
            max_concurrency: Some(conc),
            rpc: hook(
                &a.proxy_rpc,
                &a.proxy_rpc_patterns,
                a.proxy_rpc_timeout,
                f.rpc,
                timeout,
                conc,
            ),
            subscribe: hook(
                &a.proxy_subscribe,
                &a.proxy_subscribe_patterns,
                a.proxy_subscribe_timeout,
                f.subscribe,
                timeout,
                conc,
            ),
            publish: hook(
                &a.proxy_publish,
                &a.proxy_publish_patterns,
                a.proxy_publish_timeout,
                f.publish,
                timeout,
                conc,
            ),
            handshake: hook(
                &a.proxy_handshake,
                &[],
                a.proxy_handshake_timeout,
                f.handshake,
                timeout,
                conc,
            ),
            transmit: hook(
                &a.proxy_transmit,
                &a.proxy_transmit_patterns,
                None,
                f.transmit,
                timeout,
                conc,
            ),
            notify: hook(&a.proxy_notify, &[], None, f.notify, timeout, conc),
        };
        // Build once to validate URLs and limits before anything is bound.
        to_proxy_config(&s)?;
        Ok(s)
    }
}

fn invalid(setting: &'static str, message: String) -> InvalidSetting {
    InvalidSetting { setting, message }
}

/// The library configuration; `None` when no hook is set.
pub(crate) fn to_proxy_config(s: &ProxySettings) -> Result<Option<ProxyConfig>, InvalidSetting> {
    let mk =
        |name: &'static str, h: &Option<HookFile>| -> Result<Option<HookConfig>, InvalidSetting> {
            let Some(h) = h else { return Ok(None) };
            let url = h.url.clone().unwrap_or_default();
            match url::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => {
                    return Err(invalid(
                        name,
                        format!("must be an http:// or https:// URL, got {url:?}"),
                    ));
                }
            }
            let timeout = h.timeout.unwrap_or(1000);
            let conc = h.max_concurrency.unwrap_or(256);
            if timeout == 0 {
                return Err(invalid(name, "timeout must be greater than 0".into()));
            }
            if conc == 0 {
                return Err(invalid(
                    name,
                    "max-concurrency must be greater than 0".into(),
                ));
            }
            let patterns = h.patterns.clone().unwrap_or_else(|| vec!["*".into()]);
            if patterns.iter().any(String::is_empty) {
                return Err(invalid(name, "patterns must not be empty".into()));
            }
            Ok(Some(
                HookConfig::new(url)
                    .with_timeout(Duration::from_millis(timeout))
                    .with_patterns(patterns)
                    .with_max_concurrency(conc),
            ))
        };
    let mut c = ProxyConfig::default();
    c.rpc = mk("proxy-rpc", &s.rpc)?;
    c.subscribe = mk("proxy-subscribe", &s.subscribe)?;
    c.publish = mk("proxy-publish", &s.publish)?;
    c.handshake = mk("proxy-handshake", &s.handshake)?;
    c.transmit = mk("proxy-transmit", &s.transmit)?;
    c.notify = mk("proxy-notify", &s.notify)?;
    if !c.is_enabled() {
        return Ok(None);
    }
    c.secret = s.secret.clone();
    c.forward_headers = s.forward_headers.clone().unwrap_or_default();
    if let Some(h) = c
        .forward_headers
        .iter()
        .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
    {
        return Err(invalid(
            "proxy-forward-headers",
            format!("{h:?} is not a header name"),
        ));
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ProxyArgs,
    }

    fn args(v: &[&str]) -> ProxyArgs {
        let mut all = vec!["t"];
        all.extend_from_slice(v);
        T::parse_from(all).a
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_in() {
        let file: ProxyFile = toml::from_str(
            "secret = \"s\"\ntimeout = 700\n[rpc]\nurl = \"http://127.0.0.1:1/rpc\"\npatterns = [\"login\"]\nmax-concurrency = 8\n[subscribe]\nurl = \"http://127.0.0.1:1/sub\"\ntimeout = 50\n",
        )
        .unwrap();
        let s = args(&[
            "--proxy-rpc-timeout",
            "300",
            "--proxy-publish",
            "https://example.com/pub",
        ])
        .resolve(Some(file))
        .unwrap();
        let rpc = s.rpc.as_ref().unwrap();
        assert_eq!(rpc.timeout, Some(300));
        assert_eq!(rpc.patterns, Some(vec!["login".into()]));
        assert_eq!(rpc.max_concurrency, Some(8));
        assert_eq!(s.subscribe.as_ref().unwrap().timeout, Some(50));
        assert_eq!(s.publish.as_ref().unwrap().timeout, Some(700));
        assert_eq!(s.publish.as_ref().unwrap().patterns, Some(vec!["*".into()]));
        assert!(s.handshake.is_none());
        let c = to_proxy_config(&s).unwrap().unwrap();
        assert_eq!(c.secret.as_deref(), Some("s"));
        assert!(c.rpc.unwrap().matches("login"));
    }

    #[test]
    fn nothing_set_means_no_proxy_and_bad_urls_are_named() {
        assert!(
            to_proxy_config(&args(&[]).resolve(None).unwrap())
                .unwrap()
                .is_none()
        );
        let e = args(&["--proxy-rpc", "ftp://x/rpc"])
            .resolve(None)
            .unwrap_err();
        assert_eq!(e.setting, "proxy-rpc");
        let e = args(&[
            "--proxy-notify",
            "http://127.0.0.1:1/n",
            "--proxy-timeout",
            "0",
        ])
        .resolve(None)
        .unwrap_err();
        assert_eq!(e.setting, "proxy-notify");
        assert!(toml::from_str::<ProxyFile>("[rpc]\nurl = \"http://x\"\nbogus = 1").is_err());
    }
}
