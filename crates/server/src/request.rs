//! The HTTP upgrade request of a socket: [`HandshakeRequest`] as seen by middleware
//! and the application, its parsing from the raw request head, and the compact form a
//! socket keeps it in for its whole life ([`StoredRequest`]).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// The HTTP upgrade request of a socket.
#[derive(Clone, Debug)]
pub struct HandshakeRequest {
    /// HTTP method.
    pub method: Method,
    /// Request URI (path and query).
    pub uri: Uri,
    /// Request headers.
    pub headers: HeaderMap,
    /// Peer address, when known.
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection uses TLS.
    pub secure: bool,
}

impl HandshakeRequest {
    /// The first value of a query parameter (URL-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.uri.query()?;
        url_form_pairs(q)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The `Origin` header.
    pub fn origin(&self) -> Option<&str> {
        self.headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
    }
}

fn url_form_pairs(q: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match h {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// Parse a complete HTTP request head.
pub(crate) fn parse_request(
    head: &[u8],
    addr: Option<SocketAddr>,
    secure: bool,
) -> Option<HandshakeRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri: Uri = req.path?.parse().ok()?;
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    Some(HandshakeRequest {
        method,
        uri,
        headers: map,
        remote_addr: addr,
        secure,
    })
}

/// A socket's HTTP upgrade request, kept compactly: the raw request head (a few hundred
/// bytes), parsed again only if somebody asks for it ([`Socket::request`](crate::Socket::request)). A parsed
/// `HeaderMap` costs about 1 KB per socket, kept for the socket's whole life.
pub(crate) struct StoredRequest {
    head: Box<[u8]>,
    remote_addr: Option<SocketAddr>,
    secure: bool,
    parsed: OnceLock<Arc<HandshakeRequest>>,
}

impl StoredRequest {
    /// From the raw request head, already parsed successfully once.
    pub(crate) fn raw(head: Box<[u8]>, remote_addr: Option<SocketAddr>, secure: bool) -> Self {
        StoredRequest {
            head,
            remote_addr,
            secure,
            parsed: OnceLock::new(),
        }
    }

    /// From a parsed request (shared with middleware, or built by a framework).
    pub(crate) fn parsed(req: Arc<HandshakeRequest>) -> Self {
        StoredRequest {
            head: Box::default(),
            remote_addr: req.remote_addr,
            secure: req.secure,
            parsed: OnceLock::from(req),
        }
    }

    pub(crate) fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    pub(crate) fn get(&self) -> &HandshakeRequest {
        self.parsed.get_or_init(|| {
            Arc::new(
                parse_request(&self.head, self.remote_addr, self.secure).unwrap_or_else(|| {
                    HandshakeRequest {
                        method: http::Method::GET,
                        uri: http::Uri::from_static("/"),
                        headers: http::HeaderMap::new(),
                        remote_addr: self.remote_addr,
                        secure: self.secure,
                    }
                }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let pairs = url_form_pairs("token=abc&list=x&list=y&sp=a+b%21&bad=%zz");
        assert_eq!(pairs[0], ("token".into(), "abc".into()));
        assert_eq!(pairs[3], ("sp".into(), "a b!".into()));
        assert_eq!(pairs[4], ("bad".into(), "%zz".into()));
    }
}
