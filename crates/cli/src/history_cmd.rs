//! `socketcluster history CHANNEL`: read a channel's history from a `socketcluster serve`
//! through its HTTP API (`GET /api/history`, which needs the `--http-api-key`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client_cmds::{CommandError, print_line};

/// Largest response accepted.
const MAX_RESPONSE: usize = 64 << 20;

/// `socketcluster history CHANNEL [--since OFFSET] [--limit N]`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// The server's URL (ws:// or wss://; its host and port are used).
    #[arg(
        long,
        env = "SOCKETCLUSTER_URL",
        default_value = "ws://127.0.0.1:8000/socketcluster/"
    )]
    url: String,
    /// The server's HTTP API key (`serve --http-api-key`).
    #[arg(long, env = "SOCKETCLUSTER_HTTP_API_KEY")]
    http_api_key: String,
    /// Only publications after this offset. Default: the oldest kept.
    #[arg(long)]
    since: Option<u64>,
    /// At most this many publications (1 to 1000). Default 100.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Response timeout in ms.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
    /// The channel.
    channel: String,
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Host, port and whether TLS is used, from a ws(s):// or http(s):// URL.
fn endpoint(url: &str) -> Result<(String, u16, bool), CommandError> {
    let bad = || {
        CommandError::Data(format!(
            "--url must be ws://HOST[:PORT]/... or wss://..., got {url:?}"
        ))
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://").or(url.strip_prefix("https://")) {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://").or(url.strip_prefix("http://")) {
        (false, r)
    } else {
        return Err(bad());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| bad())?),
                None if after.is_empty() => (h, default_port),
                None => return Err(bad()),
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (authority, default_port),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port, tls))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &str,
) -> std::io::Result<Vec<u8>> {
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let mut out = Vec::new();
    (&mut io)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut out)
        .await?;
    Ok(out)
}

async fn get(host: &str, port: u16, tls: bool, request: &str) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    if !tls {
        return exchange(tcp, request).await.map_err(|e| e.to_string());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("bad host name {host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
    exchange(stream, request).await.map_err(|e| e.to_string())
}

pub(crate) async fn history(args: HistoryArgs) -> Result<ExitCode, CommandError> {
    let (host, port, tls) = endpoint(&args.url)?;
    let mut query = format!("channel={}&limit={}", encode(&args.channel), args.limit);
    if let Some(s) = args.since {
        query.push_str(&format!("&since={s}"));
    }
    let request = format!(
        "GET /api/history?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n",
        args.http_api_key
    );
    let raw = tokio::time::timeout(
        Duration::from_millis(args.timeout),
        get(&host, port, tls, &request),
    )
    .await
    .map_err(|_| CommandError::Data(format!("no answer from {host}:{port} in time")))?
    .map_err(CommandError::Data)?;
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CommandError::Data("not an HTTP response".into()))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body)
        .map_err(|e| CommandError::Data(format!("HTTP {status}: not JSON: {e}")))?;
    if status != 200 {
        let msg = v["error"].as_str().unwrap_or(body).to_owned();
        return Err(CommandError::Data(format!("HTTP {status}: {msg}")));
    }
    let epoch = v["epoch"].clone();
    for p in v["publications"].as_array().into_iter().flatten() {
        let mut line = serde_json::Map::new();
        line.insert("channel".into(), Value::String(args.channel.clone()));
        line.insert("data".into(), p.get("data").cloned().unwrap_or(Value::Null));
        line.insert("offset".into(), p["offset"].clone());
        line.insert("epoch".into(), epoch.clone());
        print_line(&Value::Object(line).to_string());
    }
    eprintln!(
        "{}: epoch {}, offset {}",
        args.channel,
        epoch.as_str().unwrap_or("?"),
        v["offset"]
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_websocket_url() {
        assert_eq!(
            endpoint("ws://127.0.0.1:8000/socketcluster/").unwrap(),
            ("127.0.0.1".into(), 8000, false)
        );
        assert_eq!(
            endpoint("wss://example.com/socketcluster/").unwrap(),
            ("example.com".into(), 443, true)
        );
        assert_eq!(
            endpoint("ws://[::1]:9000/x").unwrap(),
            ("::1".into(), 9000, false)
        );
        assert_eq!(endpoint("ws://[::1]/x").unwrap(), ("::1".into(), 80, false));
        assert!(endpoint("ftp://x").is_err());
        assert!(endpoint("ws://:80/").is_err());
        assert_eq!(encode("chat/1 é"), "chat%2F1%20%C3%A9");
    }
}
