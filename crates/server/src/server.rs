//! The [`Server`] handle.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use socketcluster_protocol::{ErrorObject, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthConfig, AuthEngine, Claims, SignError, SignOptions};
use crate::broker::{Broker, Delivery, LocalBroker};
use crate::config::ServerConfig;
use crate::error::{ConfigError, ServerError};
use crate::events::{ServerEvent, ServerEvents, Stats, StatsSnapshot};
use crate::exchange::Exchange;
use crate::hub::ChannelHub;
use crate::middleware::{
    HandshakeMiddleware, HandshakeWsMiddleware, InboundMiddleware, InboundRawMiddleware,
    Middlewares, OutboundMiddleware, push,
};
use crate::rpc::{
    EventStream, Handlers, ProcedureHandler, ReceiverHandler, RequestStream, STREAM_CAPACITY,
    StreamProcedure, StreamReceiver, TypedProcedure,
};
use crate::socket::{Outbox, Socket, SocketShared, SocketState, View};
use crate::task::SocketTask;

/// Process-wide counter mixed into socket ids (like the JS `base64id`).
static ID_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A 20-character socket id: 12 random bytes + a 3-byte sequence, base64url.
pub(crate) fn generate_socket_id() -> String {
    let mut bytes = [0u8; 15];
    rand::fill(&mut bytes[..12]);
    let seq = ID_SEQUENCE.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    bytes[12..].copy_from_slice(&seq[1..]);
    URL_SAFE.encode(bytes)
}

pub(crate) struct ServerInner {
    pub(crate) config: ServerConfig,
    auth: RwLock<Arc<AuthEngine>>,
    pub(crate) hub: Arc<ChannelHub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) handlers: Handlers,
    pub(crate) middleware: Middlewares,
    clients: RwLock<HashMap<Arc<str>, Socket>>,
    pending: AtomicUsize,
    live: AtomicUsize,
    idle: Notify,
    events: broadcast::Sender<ServerEvent>,
    pub(crate) stats: Stats,
    pub(crate) shutdown: CancellationToken,
    /// Opt-in busy polling ([`ServerConfig::busy_poll`]).
    pub(crate) busy_poll: Option<crate::busy_poll::BusyPoll>,
    local_addr: Mutex<Option<SocketAddr>>,
    next_key: AtomicU64,
    self_ref: OnceLock<std::sync::Weak<ServerInner>>,
}

impl ServerInner {
    pub(crate) fn auth_engine(&self) -> Arc<AuthEngine> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn emit(&self, ev: ServerEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(ev);
        }
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn socket_opened(&self, socket: &Socket) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .handshakes_completed
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::handshake_completed();
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(socket.shared.id.clone(), socket.clone());
    }

    pub(crate) fn socket_closed(&self, socket: &Socket, prev: SocketState) {
        match prev {
            SocketState::Open => {
                self.clients
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&socket.shared.id);
            }
            SocketState::Connecting => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
            SocketState::Closed => {}
        }
    }

    pub(crate) fn socket_finished(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Start the tasks of a freshly upgraded WebSocket.
    pub(crate) fn start_socket(
        &self,
        ws: crate::ws::ServerWs,
        request: crate::request::StoredRequest,
    ) {
        let Some(this) = self.self_ref.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let outbox = Outbox::new(self.config.limits.max_outbound_queue_bytes);
        let shared = Arc::new(SocketShared {
            key: self.next_key(),
            id: Arc::from(generate_socket_id()),
            request,
            outbox,
            view: Mutex::new(View {
                state: SocketState::Connecting,
                auth: None,
                channels: HashMap::new(),
                channel_seq: 0,
                streams: None,
            }),
            outbound_mw: OnceLock::new(),
            closed: OnceLock::new(),
            closed_notify: tokio::sync::Notify::new(),
            ack_timeout: self.config.ack_timeout,
            server: Arc::downgrade(&this),
            app_batching: std::sync::atomic::AtomicBool::new(false),
            has_streams: std::sync::atomic::AtomicBool::new(false),
        });
        self.stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::connection_accepted();
        match shared.request.remote_addr() {
            Some(remote) => {
                tracing::info!(socket = %shared.id, %remote, "connection accepted");
            }
            None => tracing::info!(socket = %shared.id, "connection accepted"),
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::AcqRel);
        let task = SocketTask::new(this.clone(), shared.clone(), ws);
        self.emit(ServerEvent::Handshake {
            socket: Socket { shared },
        });
        tokio::spawn(task.run());
    }
}

/// A SocketCluster server. Cheap to clone (an `Arc`).
///
/// ```no_run
/// use socketcluster_server::{Server, ServerConfig, auth::{AuthConfig, SignOptions}};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ServerConfig::default()
///     .with_port(8000)
///     .with_auth(AuthConfig::with_secret("my secret"));
/// let server = Server::new(config)?;
/// server.procedure("echo", |req: socketcluster_server::Request| async move {
///     let data: serde_json::Value = req.data().unwrap_or_default();
///     req.respond(&data);
/// });
/// server.procedure("login", |req: socketcluster_server::Request| async move {
///     let user: serde_json::Value = req.data().unwrap_or_default();
///     match req.socket().set_auth_token(&serde_json::json!({"username": user}), SignOptions::default()).await {
///         Ok(_) => req.end(),
///         Err(e) => req.error(socketcluster_server::ErrorObject::new("LoginError", e.to_string())),
///     }
/// });
/// let addr = server.listen().await?;
/// println!("listening on {addr}");
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<ServerInner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .field("clients", &self.clients_count())
            .finish()
    }
}

impl Server {
    /// Create a server with the in-process broker. Nothing listens yet: call
    /// [`Server::listen`], [`Server::serve`] or mount it on axum.
    pub fn new(config: ServerConfig) -> Result<Server, ServerError> {
        Server::with_broker(config, Arc::new(LocalBroker::new()))
    }

    /// Create a server with a custom broker (see [`crate::broker`]).
    pub fn with_broker(
        config: ServerConfig,
        broker: Arc<dyn Broker>,
    ) -> Result<Server, ServerError> {
        if !config.path.starts_with('/') {
            return Err(ConfigError::Invalid("path must start with '/'".into()).into());
        }
        if config.ping_interval.is_zero() || config.ping_timeout.is_zero() {
            return Err(
                ConfigError::Invalid("ping interval and timeout must be > 0".into()).into(),
            );
        }
        if config.batch_interval.is_zero() {
            return Err(ConfigError::Invalid("batch interval must be > 0".into()).into());
        }
        let auth = AuthEngine::new(&config.auth)?;
        let hub = Arc::new(ChannelHub::default());
        broker.attach(Delivery::new(hub.clone()));
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
        let inner = Arc::new(ServerInner {
            auth: RwLock::new(Arc::new(auth)),
            hub,
            broker,
            handlers: Handlers::default(),
            middleware: Middlewares::default(),
            clients: RwLock::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            events,
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            busy_poll: config
                .busy_poll
                .filter(|w| !w.is_zero())
                .map(crate::busy_poll::BusyPoll::new),
            local_addr: Mutex::new(None),
            next_key: AtomicU64::new(1),
            self_ref: OnceLock::new(),
            config,
        });
        let _ = inner.self_ref.set(Arc::downgrade(&inner));
        Ok(Server { inner })
    }

    /// Create the server and listen on `config.host:config.port` (port 0 picks a free
    /// port; see [`Server::local_addr`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use socketcluster_server::{Server, ServerConfig};
    /// let server = Server::bind(ServerConfig::default().with_host("127.0.0.1").with_port(0)).await?;
    /// let url = format!("ws://{}/socketcluster/", server.local_addr().unwrap());
    /// # let _ = url; Ok(()) }
    /// ```
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let server = Server::new(config)?;
        server.listen().await?;
        Ok(server)
    }

    /// Bind `config.host:config.port` and accept connections in the background.
    pub async fn listen(&self) -> Result<SocketAddr, ServerError> {
        let cfg = &self.inner.config;
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
        self.serve(listener)
    }

    /// Accept connections from an already bound listener, in the background.
    pub fn serve(&self, listener: TcpListener) -> Result<SocketAddr, ServerError> {
        let addr = listener.local_addr()?;
        *self
            .inner
            .local_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(addr);
        let tls = self
            .inner
            .config
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(crate::listener::accept_loop(
            self.inner.clone(),
            listener,
            tls,
        ));
        Ok(addr)
    }

    /// The address the built-in listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self
            .inner
            .local_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Serve one connection whose bytes were already accepted (and, for TLS, decrypted)
    /// by the caller: the HTTP upgrade request is read from it and checked like on the
    /// built-in listener.
    pub fn serve_connection<S>(&self, io: S, remote_addr: Option<SocketAddr>, secure: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::spawn(crate::listener::http_upgrade(
            inner,
            Box::new(io),
            remote_addr,
            secure,
        ));
    }

    // ------------------------------------------------------------------ handlers

    /// Register the handler of a procedure (replaces any previous one).
    ///
    /// ```
    /// # let server = socketcluster_server::Server::new(Default::default()).unwrap();
    /// server.procedure("echo", |req: socketcluster_server::Request| async move {
    ///     let data: serde_json::Value = req.data().unwrap_or_default();
    ///     req.respond(&data);
    /// });
    /// ```
    pub fn procedure<H: ProcedureHandler>(&self, name: &str, handler: H) {
        self.inner
            .handlers
            .procedures
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::new(handler));
    }

    /// Register a typed procedure: the request data is deserialized into `T` (failures
    /// answer `InvalidArgumentsError`), the result is the answer.
    ///
    /// ```
    /// # let server = socketcluster_server::Server::new(Default::default()).unwrap();
    /// use socketcluster_server::{Socket, WireError};
    /// server.typed_procedure("add", |_socket: Socket, (a, b): (i64, i64)| async move {
    ///     Ok::<_, WireError>(a + b)
    /// });
    /// ```
    pub fn typed_procedure<F, T, R, Fut>(&self, name: &str, f: F)
    where
        F: Fn(Socket, T) -> Fut + Send + Sync + 'static,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        Fut: Future<Output = Result<R, WireError>> + Send + 'static,
    {
        self.procedure(
            name,
            TypedProcedure {
                f,
                _p: std::marker::PhantomData,
            },
        );
    }

    /// Remove a procedure handler.
    pub fn remove_procedure(&self, name: &str) {
        self.inner
            .handlers
            .procedures
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Requests of a procedure as a `Stream` (bounded, see [`crate::rpc::STREAM_CAPACITY`]).
    pub fn procedure_stream(&self, name: &str) -> RequestStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.procedure(name, StreamProcedure(tx));
        RequestStream { rx }
    }

    /// Register the handler of transmitted events of a name.
    pub fn receiver<H: ReceiverHandler>(&self, name: &str, handler: H) {
        self.inner
            .handlers
            .receivers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), Arc::new(handler));
    }

    /// Transmitted events of a name as a `Stream` (bounded).
    pub fn receiver_stream(&self, name: &str) -> EventStream {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.receiver(name, StreamReceiver(tx));
        EventStream { rx }
    }

    // ------------------------------------------------------------------ middleware

    /// Add HTTP-level handshake middleware (JS `handshakeWS`).
    pub fn add_handshake_ws_middleware<M: HandshakeWsMiddleware>(&self, m: M) {
        push(&self.inner.middleware.handshake_ws, Arc::new(m));
    }

    /// Add SocketCluster handshake middleware (JS `handshakeSC`).
    pub fn add_handshake_middleware<M: HandshakeMiddleware>(&self, m: M) {
        push(&self.inner.middleware.handshake, Arc::new(m));
    }

    /// Add inbound middleware (transmit, invoke, subscribe, publishIn, authenticate).
    pub fn add_inbound_middleware<M: InboundMiddleware>(&self, m: M) {
        push(&self.inner.middleware.inbound, Arc::new(m));
    }

    /// Add inbound raw middleware (JS `inboundRaw`): sees every inbound message as
    /// received, before decoding, and may drop or replace it
    /// ([`crate::middleware::InboundRawMiddleware`]).
    pub fn add_inbound_raw_middleware<M: InboundRawMiddleware>(&self, m: M) {
        push(&self.inner.middleware.inbound_raw, Arc::new(m));
    }

    /// Add outbound middleware (publishOut). Applies to sockets that complete their
    /// handshake after it is added.
    pub fn add_outbound_middleware<M: OutboundMiddleware>(&self, m: M) {
        push(&self.inner.middleware.outbound, Arc::new(m));
    }

    // ------------------------------------------------------------------ pub/sub, auth

    /// Server-side publish/subscribe.
    pub fn exchange(&self) -> Exchange {
        Exchange {
            inner: self.inner.clone(),
        }
    }

    /// Sign a token with the server's key and options (e.g. for a login over HTTP).
    pub fn sign_token<T: Serialize + ?Sized>(
        &self,
        claims: &T,
        options: &SignOptions,
    ) -> Result<String, SignError> {
        match serde_json::to_value(claims) {
            Ok(Value::Object(m)) => self.inner.auth_engine().sign(m, options),
            _ => Err(SignError("the claims must be a JSON object".into())),
        }
    }

    /// Verify a token like a handshake would (the error is the wire auth error).
    pub fn verify_token(&self, token: &str) -> Result<Claims, Box<ErrorObject>> {
        self.inner.auth_engine().verify(token).map(|v| v.claims)
    }

    /// Replace the JWT keys at runtime (JS: assigning `signatureKey`/`verificationKey`).
    /// Tokens signed with the old key stop verifying.
    pub fn set_auth(&self, auth: &AuthConfig) -> Result<(), ConfigError> {
        let engine = AuthEngine::new(auth)?;
        *self.inner.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(engine);
        Ok(())
    }

    // ------------------------------------------------------------------ introspection

    /// A `Stream` of server events (bounded broadcast).
    pub fn events(&self) -> ServerEvents {
        ServerEvents::new(self.inner.events.subscribe())
    }

    /// Number of open (handshake completed) sockets (JS `clientsCount`).
    pub fn clients_count(&self) -> usize {
        self.inner
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Number of sockets waiting for their handshake (JS `pendingClientsCount`).
    pub fn pending_clients_count(&self) -> usize {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// The open sockets.
    pub fn clients(&self) -> Vec<Socket> {
        self.inner
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// An open socket by id.
    pub fn socket(&self, id: &str) -> Option<Socket> {
        self.inner
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Descriptions of the open sockets (for an admin API).
    pub fn sockets_info(&self) -> Vec<SocketInfo> {
        let mut v: Vec<SocketInfo> = self
            .clients()
            .into_iter()
            .map(|s| SocketInfo {
                id: s.id().to_owned(),
                remote_addr: s.remote_addr(),
                auth_token: s.auth_token().map(|c| (*c).clone()),
                channels: s.subscriptions(),
                outbound_queued_bytes: s.outbound_queued_bytes(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Channels with at least one local subscriber.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.inner
            .hub
            .channels()
            .into_iter()
            .map(|(name, sockets, exchange)| ChannelInfo {
                name,
                subscribers: sockets,
                exchange_subscribers: exchange,
            })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.inner.stats.snapshot();
        s.clients = self.clients_count();
        s.pending_clients = self.pending_clients_count();
        s.channels = self.inner.hub.len();
        s
    }

    // ------------------------------------------------------------------ shutdown

    /// Stop accepting connections, close every socket with 1001 (going away: JS clients
    /// reconnect with backoff) and wait up to the close timeout plus one second for the
    /// socket tasks to finish.
    pub async fn shutdown(&self) {
        // Every socket task (open or still handshaking) watches this token and closes
        // with 1001.
        self.inner.shutdown.cancel();
        if let Some(bp) = &self.inner.busy_poll {
            bp.stop();
        }
        let wait = self.inner.config.limits.close_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.live.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }

    /// Whether [`Server::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// A socket as listed by [`Server::sockets_info`].
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SocketInfo {
    /// Socket id.
    pub id: String,
    /// Peer address.
    pub remote_addr: Option<SocketAddr>,
    /// Claims of its token, when authenticated.
    pub auth_token: Option<Claims>,
    /// Subscribed channels.
    pub channels: Vec<String>,
    /// Bytes waiting to be written to it.
    pub outbound_queued_bytes: usize,
}

/// A channel as listed by [`Server::channels`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelInfo {
    /// Channel name.
    pub name: String,
    /// Local sockets subscribed.
    pub subscribers: usize,
    /// Local exchange subscriptions.
    pub exchange_subscribers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_look_like_the_js_ones() {
        let a = generate_socket_id();
        let b = generate_socket_id();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
