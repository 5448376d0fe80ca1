//! The `broker` setting of `socketcluster serve`: which pub/sub backplane to use.

/// The pub/sub backplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broker {
    /// In-process (the default).
    Local,
    /// Redis nodes or a Redis Cluster (`redis://` / `rediss://` URLs).
    Redis(Vec<String>),
    /// A NATS server or cluster (`nats://` URLs, comma-separated).
    Nats(String),
}

impl Broker {
    pub(crate) fn parse(text: &str) -> Result<Broker, String> {
        let t = text.trim();
        if t.is_empty() || t == "local" {
            return Ok(Broker::Local);
        }
        let urls: Vec<String> = t
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let all = |prefixes: &[&str]| {
            urls.iter()
                .all(|u| prefixes.iter().any(|p| u.starts_with(p)))
        };
        if all(&["redis://", "rediss://"]) {
            Ok(Broker::Redis(urls))
        } else if all(&["nats://", "tls://"]) {
            Ok(Broker::Nats(urls.join(",")))
        } else {
            Err(format!(
                "must be `local`, redis://HOST:PORT[,...] or nats://HOST:PORT[,...], got {text:?}"
            ))
        }
    }

    pub(crate) fn as_setting(&self) -> String {
        match self {
            Broker::Local => "local".into(),
            Broker::Redis(urls) => urls.join(","),
            Broker::Nats(url) => url.clone(),
        }
    }
}
