//! The [`Server`] handle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use socketcluster_rs_protocol::{ErrorObject, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{AuthConfig, AuthEngine, Claims, SignError, SignOptions};
use crate::broker::{Broker, Delivery, LocalBroker};
use crate::config::ServerConfig;
use crate::error::{ConfigError, ServerError};
use crate::events::{ServerEvents, StatsSnapshot};
use crate::exchange::Exchange;
use crate::hub::ChannelHub;
use crate::middleware::{
    HandshakeMiddleware, HandshakeWsMiddleware, InboundMiddleware, InboundRawMiddleware,
    OutboundMiddleware, push,
};
use crate::rpc::{
    EventStream, ProcedureHandler, ReceiverHandler, RequestStream, STREAM_CAPACITY,
    StreamProcedure, StreamReceiver, TypedProcedure,
};
use crate::socket::Socket;
use crate::state::ServerState;

/// A SocketCluster server. Cheap to clone (an `Arc`).
///
/// ```no_run
/// use socketcluster_rs_server::{Server, ServerConfig, auth::{AuthConfig, SignOptions}};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ServerConfig::default()
///     .with_port(8000)
///     .with_auth(AuthConfig::with_secret("my secret"));
/// let server = Server::new(config)?;
/// server.procedure("echo", |req: socketcluster_rs_server::Request| async move {
///     let data: serde_json::Value = req.data().unwrap_or_default();
///     req.respond(&data);
/// });
/// server.procedure("login", |req: socketcluster_rs_server::Request| async move {
///     let user: serde_json::Value = req.data().unwrap_or_default();
///     match req.socket().set_auth_token(&serde_json::json!({"username": user}), SignOptions::default()).await {
///         Ok(_) => req.end(),
///         Err(e) => req.error(socketcluster_rs_server::ErrorObject::new("LoginError", e.to_string())),
///     }
/// });
/// let addr = server.listen().await?;
/// println!("listening on {addr}");
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    /// What the server's running parts share.
    pub(crate) state: Arc<ServerState>,
    /// The address of the built-in listener, once it listens.
    local_addr: Arc<Mutex<Option<SocketAddr>>>,
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
        if config.history.is_enabled() && !broker.supports_history() {
            return Err(ConfigError::Invalid(
                "history: channel history needs a broker that keeps it (the in-process broker \
                 or the Redis backplane); this broker keeps none"
                    .into(),
            )
            .into());
        }
        let auth = AuthEngine::new(&config.auth)?;
        let hub = Arc::new(ChannelHub::default());
        broker.attach(Delivery::new(hub.clone()));
        Ok(Server {
            state: Arc::new(ServerState::new(config, auth, hub, broker)),
            local_addr: Arc::new(Mutex::new(None)),
        })
    }

    /// Create the server and listen on `config.host:config.port` (port 0 picks a free
    /// port; see [`Server::local_addr`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use socketcluster_rs_server::{Server, ServerConfig};
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
        let cfg = &self.state.config;
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
        self.serve(listener)
    }

    /// Accept connections from an already bound listener, in the background.
    pub fn serve(&self, listener: TcpListener) -> Result<SocketAddr, ServerError> {
        let addr = listener.local_addr()?;
        *self.local_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        let tls = self
            .state
            .config
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(crate::listener::accept_loop(
            self.state.clone(),
            listener,
            tls,
        ));
        Ok(addr)
    }

    /// The address the built-in listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.local_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.state.config
    }

    /// Serve one connection whose bytes were already accepted (and, for TLS, decrypted)
    /// by the caller: the HTTP upgrade request is read from it and checked like on the
    /// built-in listener.
    pub fn serve_connection<S>(&self, io: S, remote_addr: Option<SocketAddr>, secure: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.state.clone();
        tokio::spawn(crate::listener::http_upgrade(
            state,
            Box::new(io),
            remote_addr,
            secure,
        ));
    }

    // ------------------------------------------------------------------ handlers

    /// Register the handler of a procedure (replaces any previous one).
    ///
    /// ```
    /// # let server = socketcluster_rs_server::Server::new(Default::default()).unwrap();
    /// server.procedure("echo", |req: socketcluster_rs_server::Request| async move {
    ///     let data: serde_json::Value = req.data().unwrap_or_default();
    ///     req.respond(&data);
    /// });
    /// ```
    pub fn procedure<H: ProcedureHandler>(&self, name: &str, handler: H) {
        self.state
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
    /// # let server = socketcluster_rs_server::Server::new(Default::default()).unwrap();
    /// use socketcluster_rs_server::{Socket, WireError};
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

    /// Register the handler of every procedure that has no handler of its own (no
    /// [`Server::procedure`] and no socket-level stream), replacing any previous one.
    /// It takes precedence over [`crate::ServerConfig::unhandled_procedure`]; this is the
    /// hook the HTTP backend proxy (`socketcluster-rs-proxy`) uses for its procedure
    /// patterns.
    ///
    /// ```
    /// # let server = socketcluster_rs_server::Server::new(Default::default()).unwrap();
    /// use socketcluster_rs_server::{ErrorObject, Request};
    /// server.fallback_procedure(|req: Request| async move {
    ///     let msg = format!("No procedure {}", req.procedure());
    ///     req.error(ErrorObject::new("UnknownProcedureError", msg));
    /// });
    /// ```
    pub fn fallback_procedure<H: ProcedureHandler>(&self, handler: H) {
        *self
            .state
            .handlers
            .fallback
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(handler));
    }

    /// Remove a procedure handler.
    pub fn remove_procedure(&self, name: &str) {
        self.state
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
        self.state
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
        push(&self.state.middleware.handshake_ws, Arc::new(m));
    }

    /// Add SocketCluster handshake middleware (JS `handshakeSC`).
    pub fn add_handshake_middleware<M: HandshakeMiddleware>(&self, m: M) {
        push(&self.state.middleware.handshake, Arc::new(m));
    }

    /// Add inbound middleware (transmit, invoke, subscribe, publishIn, authenticate).
    pub fn add_inbound_middleware<M: InboundMiddleware>(&self, m: M) {
        push(&self.state.middleware.inbound, Arc::new(m));
    }

    /// Add inbound raw middleware (JS `inboundRaw`): sees every inbound message as
    /// received, before decoding, and may drop or replace it
    /// ([`crate::middleware::InboundRawMiddleware`]).
    pub fn add_inbound_raw_middleware<M: InboundRawMiddleware>(&self, m: M) {
        push(&self.state.middleware.inbound_raw, Arc::new(m));
    }

    /// Add outbound middleware (publishOut). Applies to sockets that complete their
    /// handshake after it is added.
    pub fn add_outbound_middleware<M: OutboundMiddleware>(&self, m: M) {
        push(&self.state.middleware.outbound, Arc::new(m));
    }

    // ------------------------------------------------------------------ pub/sub, auth

    /// Server-side publish/subscribe.
    pub fn exchange(&self) -> Exchange {
        Exchange {
            state: self.state.clone(),
        }
    }

    /// Sign a token with the server's key and options (e.g. for a login over HTTP).
    pub fn sign_token<T: Serialize + ?Sized>(
        &self,
        claims: &T,
        options: &SignOptions,
    ) -> Result<String, SignError> {
        match serde_json::to_value(claims) {
            Ok(Value::Object(m)) => self.state.auth_engine().sign(m, options),
            _ => Err(SignError("the claims must be a JSON object".into())),
        }
    }

    /// Verify a token like a handshake would (the error is the wire auth error).
    pub fn verify_token(&self, token: &str) -> Result<Claims, Box<ErrorObject>> {
        self.state.auth_engine().verify(token).map(|v| v.claims)
    }

    /// Replace the JWT keys at runtime (JS: assigning `signatureKey`/`verificationKey`).
    /// Tokens signed with the old key stop verifying.
    pub fn set_auth(&self, auth: &AuthConfig) -> Result<(), ConfigError> {
        let engine = AuthEngine::new(auth)?;
        self.state.set_auth_engine(engine);
        Ok(())
    }

    // ------------------------------------------------------------------ introspection

    /// A `Stream` of server events (bounded broadcast).
    pub fn events(&self) -> ServerEvents {
        self.state.events()
    }

    /// Number of open (handshake completed) sockets (JS `clientsCount`).
    pub fn clients_count(&self) -> usize {
        self.state.sockets.open_count()
    }

    /// Number of sockets waiting for their handshake (JS `pendingClientsCount`).
    pub fn pending_clients_count(&self) -> usize {
        self.state.sockets.pending_count()
    }

    /// The open sockets.
    pub fn clients(&self) -> Vec<Socket> {
        self.state.sockets.open()
    }

    /// An open socket by id.
    pub fn socket(&self, id: &str) -> Option<Socket> {
        self.state.sockets.get(id)
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
        self.state
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
        let mut s = self.state.stats.snapshot();
        s.clients = self.clients_count();
        s.pending_clients = self.pending_clients_count();
        s.channels = self.state.hub.len();
        s
    }

    // ------------------------------------------------------------------ shutdown

    /// Stop accepting connections, close every socket with 1001 (going away: JS clients
    /// reconnect with backoff) and wait up to the close timeout plus one second for the
    /// socket tasks to finish.
    pub async fn shutdown(&self) {
        // Every socket task (open or still handshaking) watches this token and closes
        // with 1001.
        self.state.shutdown.cancel();
        if let Some(bp) = &self.state.busy_poll {
            bp.stop();
        }
        let wait = self.state.config.limits.close_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, self.state.sockets.all_finished()).await;
    }

    /// Whether [`Server::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.state.shutdown.is_cancelled()
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
