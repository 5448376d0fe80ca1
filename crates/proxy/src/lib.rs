#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]

mod batch;
mod channel;
mod config;
mod core;
mod error;
mod hook;
mod lifecycle;
mod rpc;
mod subscribe_cache;
mod transport;

use std::sync::Arc;

use socketcluster_rs_server::Server;

pub use config::{BatchConfig, HookConfig, ProxyConfig};
pub use error::{ConfigError, ProxyError};
pub use hook::{DURATION_BUCKETS, HookHealth, SCHEMA_VERSION, describe_metrics};
pub use transport::{MAX_RESPONSE_BYTES, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};

/// An installed proxy: a handle for health reporting (the hooks live in the server).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<core::Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Proxy {
    /// Install the configured hooks on `server`: a fallback procedure handler (RPC),
    /// an inbound middleware (subscribe, publish, transmit), a handshake middleware and
    /// a task following the server's events (handshake tokens, metadata, lifecycle
    /// notifications). Must be called inside a tokio runtime. Rust procedure handlers
    /// registered with [`Server::procedure`] keep precedence over the RPC hook.
    pub fn install(server: &Server, config: ProxyConfig) -> Result<Proxy, ConfigError> {
        let inner = Arc::new(core::Inner::new(config)?);
        if inner.rpc.is_some() || inner.config.answer_unhandled_procedures {
            let i = inner.clone();
            server.fallback_procedure(move |req| rpc::handle(i.clone(), req));
        }
        if inner.subscribe.is_some() || inner.publish.is_some() || inner.transmit.is_some() {
            let i = inner.clone();
            server.add_inbound_middleware(move |action| channel::inbound(i.clone(), action));
        }
        if inner.handshake.is_some() {
            let i = inner.clone();
            server.add_handshake_middleware(move |action| lifecycle::handshake(i.clone(), action));
        }
        if inner.handshake.is_some() || inner.notify.is_some() {
            tokio::spawn(lifecycle::run_events(inner.clone(), server.events()));
        }
        Ok(Proxy { inner })
    }

    /// The state of every configured hook's backend.
    pub fn health(&self) -> Vec<HookHealth> {
        self.inner.health()
    }

    /// Whether every hook's last call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.health().iter().all(HookHealth::is_ok)
    }
}
