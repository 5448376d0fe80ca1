//! An embeddable SocketCluster server, wire-compatible with `socketcluster-server` 20
//! (protocol version 2) and with v14 clients (protocol version 1, a server setting).
//! The JavaScript `socketcluster-client` cannot tell it from the JS server.
//!
//! # Quick start
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use socketcluster_server::{Request, Server, ServerConfig, auth::{AuthConfig, SignOptions}};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = ServerConfig::default()
//!         .with_port(8000)
//!         .with_auth(AuthConfig::with_secret("a long shared secret"))
//!         .with_auth_channels(vec!["private-*".into()]);
//!     let server = Server::new(config)?;
//!
//!     // RPC: `socket.invoke('echo', data)` on the client.
//!     server.procedure("echo", |req: Request| async move {
//!         let data: serde_json::Value = req.data().unwrap_or_default();
//!         req.respond(&data);
//!     });
//!     // Log in: the client receives `#setAuthToken` and becomes authenticated.
//!     server.procedure("login", |req: Request| async move {
//!         let claims = serde_json::json!({"username": req.data::<String>().unwrap_or_default()});
//!         match req.socket().set_auth_token(&claims, SignOptions::default()).await {
//!             Ok(_) => req.end(),
//!             Err(e) => req.error(socketcluster_server::ErrorObject::new("LoginError", e.to_string())),
//!         }
//!     });
//!
//!     // Server-side pub/sub.
//!     let exchange = server.exchange();
//!     let mut chat = exchange.subscribe("chat").await?;
//!     tokio::spawn(async move {
//!         while let Some(p) = chat.next().await {
//!             tracing::info!(channel = p.channel(), "message");
//!         }
//!     });
//!     exchange.publish("chat", &"server says hi").await?;
//!
//!     let addr = server.listen().await?;
//!     tracing::info!(%addr, "listening on ws://{addr}/socketcluster/");
//!     tokio::signal::ctrl_c().await?;
//!     server.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! # Design
//!
//! * [`Server`] is a cheap `Clone` handle. Each connection is served by one task that
//!   owns its state (auth, channels, pending invokes, timers) and its WebSocket: it
//!   reads, processes, and drains its bounded outbound queue, writing every frame that
//!   is ready before one flush. [`Socket`] handles send commands to it through the same
//!   mailbox. No lock is held across an `.await`.
//! * Inbound messages of one socket are processed strictly in order (a subscribe
//!   completes before a following publish is processed); handlers run concurrently: a
//!   handler is polled once in the socket's task and becomes a task of its own only if
//!   it has to wait, so synchronous answers cost no task switch.
//! * An idle socket holds only what it needs (about 3.5 KB of server memory with a
//!   token, measured by `socketcluster bench idle`; the JS server: about 24 KB): the
//!   WebSocket framing layer (`ws.rs`, RFC 6455 server role) keeps no read or write
//!   buffer while idle, queues are allocated only while something is queued, timers
//!   only while armed, and the upgrade request is kept as its raw head.
//! * A socket reads what the peer already sent before writing the answers: the answers
//!   to a burst of requests leave in one flush.
//! * A publication is encoded once; the same shared frame goes to every subscriber
//!   ([`channel`]). Backplanes plug in through the [`broker::Broker`] trait.
//! * Payloads are never parsed when only forwarded (`serde_json::value::RawValue`).
//! * Every per-socket resource is bounded ([`Limits`]); a client that does not read is
//!   disconnected (1008) instead of growing memory, and never affects other clients.
//!
//! # Latency: opt-in busy polling
//!
//! Under light request/response traffic most of a round trip is spent waking the
//! thread that sleeps in `epoll_wait` (tens of µs on a VM; the server's own work is a
//! few µs). [`ServerConfig::busy_poll`] trades a busy core for that wake-up: after each
//! inbound message one runtime worker keeps polling for I/O, without sleeping, for the
//! given window. Measured on the 2-core VM of `docs/BENCHMARKS.md`: sequential RPC p50
//! 0.07-0.08 ms without, 0.033-0.035 ms with a 100 µs window. Off by default (the JS
//! server has no equivalent); it costs nothing while the server is idle.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use socketcluster_server::{Server, ServerConfig};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ServerConfig::default().with_busy_poll(Some(Duration::from_micros(100)));
//! let server = Server::bind(config).await?;
//! # Ok(()) }
//! ```
//!
//! # Differences from the JS server (deliberate)
//!
//! * A socket whose token expires is deauthenticated at that moment by a timer
//!   ([`ServerConfig::token_expiry_timer`]), not only at its next message.
//! * A repeated `#handshake` on an open socket re-verifies the token and answers with
//!   the same id, without re-running handshake middleware or counting the socket twice.
//! * A transmitted (cid-less) `#subscribe` is ignored without running middleware.
//! * With a PEM key pair and no algorithm, the algorithm is inferred from the key.
//! * Limits the JS server does not have: see [`Limits`].
//! * Handshake-middleware `statusCode`s outside 4000-4999 are replaced by 4008.
//! * Closing a socket with a close frame while it is batching (PROTOCOL.md 8.5) first
//!   flushes the buffered packets; the JS server discards them.
//! * `inboundRaw` middleware ([`Server::add_inbound_raw_middleware`]) sees a binary
//!   frame as lossy UTF-8 text ([`InboundRawAction::is_binary`] tells), not a buffer.
//! * Operator logging: one `tracing` info line per connection lifecycle event
//!   (`connection accepted`, `handshake completed`, `handshake rejected`,
//!   `authenticated`, `deauthenticated`, `kicked out`, `slow consumer dropped`,
//!   `connection closed`) with the socket id and stable fields; tokens, claims and
//!   payloads are never logged at any level.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
mod busy_poll;
pub mod channel;
mod config;
mod error;
mod events;
pub mod exchange;
mod limits;
mod listener;
pub mod metrics;
pub mod middleware;
pub mod rpc;
mod server;
mod socket;
mod task;
pub mod tls;
mod ws;

#[cfg(feature = "axum")]
pub mod axum;

pub use channel::Publication;
pub use config::{ServerConfig, UnhandledProcedure};
pub use error::{
    AuthTokenError, ConfigError, InvokeError, KickOutError, PublishError, SendError, ServerError,
};
pub use events::{AuthState, ServerEvent, ServerEvents, StatsSnapshot};
pub use exchange::{Exchange, ExchangeSubscription};
pub use limits::{CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION, Limits, RateLimit};
pub use middleware::{Block, HandshakeRequest, InboundAction, InboundKind, InboundRawAction};
pub use rpc::{ReceivedEvent, Request};
pub use server::{ChannelInfo, Server, SocketInfo};
pub use socket::{CloseInfo, Socket, SocketState};
pub use socketcluster_protocol::{ErrorObject, ProtocolVersion, RawValue, WireError};
