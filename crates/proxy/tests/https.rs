//! An `https://` hook: rustls with a private CA given in `ProxyConfig::tls`, and a
//! certificate the client does not trust failing as `ProxyUnavailableError`.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use socketcluster_rs_client::{Client, InvokeError};
use socketcluster_rs_proxy::{HookConfig, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-route HTTPS backend answering `{"data": "over tls"}` on every request.
async fn tls_backend() -> (String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = ck.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let mut have = Vec::new();
                // one request per connection is enough here: read head + body, answer, close
                loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&have);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let body = json!({"data": "over tls"}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://localhost:{port}/rpc"), der)
}

#[tokio::test]
async fn https_hooks_use_rustls_and_verify_the_certificate() {
    let (url, der) = tls_backend().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (_s, _p, ws) = serve(
        ProxyConfig::default()
            .with_tls(Arc::new(tls))
            .with_rpc(HookConfig::new(url.clone())),
    )
    .await;
    let c = Client::connect(&ws).await.unwrap();
    let v: Value = c.invoke("anything", &()).await.unwrap();
    assert_eq!(v, "over tls");
    let v: Value = c.invoke("again", &()).await.unwrap();
    assert_eq!(
        v, "over tls",
        "a connection closed by the backend is replaced"
    );

    // default roots (webpki): the self-signed certificate is refused
    let (_s, _p, ws) = serve(ProxyConfig::default().with_rpc(HookConfig::new(url))).await;
    let c = Client::connect(&ws).await.unwrap();
    match c.invoke::<Value, _>("anything", &()).await.unwrap_err() {
        InvokeError::Remote(w) => assert_eq!(w.name(), "ProxyUnavailableError"),
        other => panic!("{other:?}"),
    }
}
