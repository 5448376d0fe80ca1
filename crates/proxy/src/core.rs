//! The proxy's shared state and what every hook needs: the socket description sent to
//! the backend, per-socket metadata, and the interpretation of answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use socketcluster_rs_server::auth::SignOptions;
use socketcluster_rs_server::{ErrorObject, RawValue, Socket, SocketState, WireError};

use crate::batch::Batcher;
use crate::config::ProxyConfig;
use crate::error::{ConfigError, ProxyError};
use crate::hook::{Hook, HookHealth};
use crate::subscribe_cache::SubscribeCache;

pub(crate) struct Inner {
    pub(crate) config: ProxyConfig,
    pub(crate) rpc: Option<Arc<Hook>>,
    pub(crate) subscribe: Option<Arc<Hook>>,
    pub(crate) publish: Option<Arc<Hook>>,
    pub(crate) handshake: Option<Arc<Hook>>,
    pub(crate) transmit: Option<(Arc<Hook>, Batcher)>,
    pub(crate) notify: Option<(Arc<Hook>, Batcher)>,
    pub(crate) cache: SubscribeCache,
    forward: Vec<http::HeaderName>,
    /// Per-socket metadata from the handshake hook, and tokens it granted that wait
    /// for the socket to open.
    sockets: Mutex<HashMap<String, SocketEntry>>,
    sweep_at: Mutex<usize>,
}

struct SocketEntry {
    socket: Socket,
    meta: Option<Arc<Value>>,
    grant: Option<Grant>,
}

/// What an answer asks for besides data or an error.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) claims: Map<String, Value>,
    pub(crate) expires_in: Option<u64>,
}

impl Inner {
    pub(crate) fn new(config: ProxyConfig) -> Result<Inner, ConfigError> {
        let secret: Option<Arc<[u8]>> = config.secret.as_ref().map(|s| Arc::from(s.as_bytes()));
        let tls = config.tls.clone();
        let mk = |name: &'static str,
                  h: &Option<crate::HookConfig>|
         -> Result<Option<Arc<Hook>>, ConfigError> {
            h.as_ref()
                .map(|h| Hook::new(name, h, secret.clone(), tls.clone()).map(Arc::new))
                .transpose()
        };
        let mut forward = Vec::new();
        for h in &config.forward_headers {
            forward.push(
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    ConfigError::Invalid(format!("forward header {h:?} is not a header name"))
                })?,
            );
        }
        let batched = |name,
                       h: &Option<crate::HookConfig>|
         -> Result<Option<(Arc<Hook>, Batcher)>, ConfigError> {
            Ok(mk(name, h)?.map(|hook| {
                let b = Batcher::start(hook.clone(), &config.batch);
                (hook, b)
            }))
        };
        Ok(Inner {
            rpc: mk("rpc", &config.rpc)?,
            subscribe: mk("subscribe", &config.subscribe)?,
            publish: mk("publish", &config.publish)?,
            handshake: mk("handshake", &config.handshake)?,
            transmit: batched("transmit", &config.transmit)?,
            notify: batched("notify", &config.notify)?,
            cache: SubscribeCache::new(config.subscribe_cache_capacity),
            forward,
            sockets: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(1024),
            config,
        })
    }

    pub(crate) fn health(&self) -> Vec<HookHealth> {
        [&self.rpc, &self.subscribe, &self.publish, &self.handshake]
            .into_iter()
            .flatten()
            .chain(self.transmit.iter().map(|(h, _)| h))
            .chain(self.notify.iter().map(|(h, _)| h))
            .map(|h| h.health())
            .collect()
    }

    /// The `socket` object of every request.
    pub(crate) fn socket_info(&self, socket: &Socket) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), socket.id().into());
        m.insert(
            "remoteAddress".into(),
            socket
                .remote_addr()
                .map_or(Value::Null, |a| a.to_string().into()),
        );
        m.insert(
            "authToken".into(),
            socket
                .auth_token()
                .map_or(Value::Null, |c| Value::Object((*c).clone())),
        );
        let mut headers = Map::new();
        if !self.forward.is_empty() {
            let req = socket.request();
            for name in &self.forward {
                let values: Vec<&str> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if !values.is_empty() {
                    headers.insert(name.as_str().to_owned(), values.join(", ").into());
                }
            }
        }
        m.insert("headers".into(), Value::Object(headers));
        if let Some(meta) = self.meta(socket.id()) {
            m.insert("meta".into(), (*meta).clone());
        }
        Value::Object(m)
    }

    pub(crate) fn meta(&self, id: &str) -> Option<Arc<Value>> {
        let g = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        g.get(id).and_then(|e| e.meta.clone())
    }

    pub(crate) fn remember(&self, socket: &Socket, meta: Option<Value>, grant: Option<Grant>) {
        if meta.is_none() && grant.is_none() {
            return;
        }
        let mut g = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        g.insert(
            socket.id().to_owned(),
            SocketEntry {
                socket: socket.clone(),
                meta: meta.map(Arc::new),
                grant,
            },
        );
        // Disconnections normally remove entries; a lagging event stream may miss some,
        // so closed sockets are swept whenever the map doubles.
        let mut at = self.sweep_at.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= *at {
            g.retain(|_, e| e.socket.state() != SocketState::Closed);
            *at = (g.len() * 2).max(1024);
        }
    }

    pub(crate) fn take_grant(&self, id: &str) -> Option<Grant> {
        let mut g = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        g.get_mut(id).and_then(|e| e.grant.take())
    }

    pub(crate) fn forget(&self, id: &str) {
        self.sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// The `error` of an answer, if any: an object is sent to the client as is (its `name`,
/// `message` and every other field), like JS `req.error(err)`.
pub(crate) fn answer_error(answer: &Map<String, Value>) -> Option<WireError> {
    match answer.get("error") {
        None | Some(Value::Null) => None,
        Some(v) => Some(WireError::hydrate(v.clone())),
    }
}

/// The `data` of an answer: `None` when absent, `Some(None)` never (`null` is data).
pub(crate) fn answer_data(answer: &Map<String, Value>) -> Option<Box<RawValue>> {
    answer
        .get("data")
        .and_then(|v| serde_json::value::to_raw_value(v).ok())
}

/// `setAuthToken: {claims: {...}, expiresIn: seconds}` of an answer.
pub(crate) fn answer_grant(answer: &Map<String, Value>) -> Result<Option<Grant>, ProxyError> {
    let Some(v) = answer.get("setAuthToken") else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    let bad = || {
        ProxyError::BadResponse("setAuthToken must be {claims: object, expiresIn?: seconds}".into())
    };
    let o = v.as_object().ok_or_else(bad)?;
    let claims = o
        .get("claims")
        .and_then(Value::as_object)
        .ok_or_else(bad)?
        .clone();
    let expires_in = match o.get("expiresIn") {
        None | Some(Value::Null) => None,
        Some(e) => Some(e.as_u64().ok_or_else(bad)?),
    };
    Ok(Some(Grant { claims, expires_in }))
}

/// Sign and send a granted token (JS `socket.setAuthToken`).
pub(crate) async fn apply_grant(socket: &Socket, grant: Grant) -> Result<(), ErrorObject> {
    let mut options = SignOptions::default();
    if let Some(e) = grant.expires_in {
        options = options.expires_in(e);
    }
    socket
        .set_auth_token(&grant.claims, options)
        .await
        .map(|_| ())
        .map_err(|e| ErrorObject::new("AuthTokenError", e.to_string()))
}

/// Whether the answer asks to deauthenticate the socket.
pub(crate) fn answer_deauthenticate(answer: &Map<String, Value>) -> bool {
    answer.get("deauthenticate") == Some(&Value::Bool(true))
}

pub(crate) fn proxy_block(e: &ProxyError) -> WireError {
    WireError::Object(e.to_error_object())
}
