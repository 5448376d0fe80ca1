//! The state the running parts of a server share ([`ServerState`]): configuration, JWT
//! engine, channel hub and broker, handlers, middleware, events, counters, the registry
//! of open sockets and the shutdown signal.
//!
//! It knows nothing of the parts that use it: the listener, the exchange and the socket
//! tasks hold an `Arc<ServerState>`, socket handles only a weak [`ServerLink`] to it,
//! and the public [`crate::Server`] handle wraps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use socketcluster_rs_protocol::ErrorObject;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthEngine;
use crate::broker::Broker;
use crate::busy_poll::BusyPoll;
use crate::config::ServerConfig;
use crate::events::{ServerEvent, ServerEvents, Stats};
use crate::hub::ChannelHub;
use crate::middleware::Middlewares;
use crate::per_ip::PerIp;
use crate::rpc::Handlers;
use crate::socket::{ServerLink, Socket, SocketState};

/// See the module docs.
pub(crate) struct ServerState {
    pub(crate) config: ServerConfig,
    auth: RwLock<Arc<AuthEngine>>,
    pub(crate) hub: Arc<ChannelHub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) handlers: Handlers,
    pub(crate) middleware: Middlewares,
    events: broadcast::Sender<ServerEvent>,
    pub(crate) stats: Stats,
    pub(crate) shutdown: CancellationToken,
    /// Opt-in busy polling ([`ServerConfig::busy_poll`]).
    pub(crate) busy_poll: Option<BusyPoll>,
    /// The sockets: open ones by id, and how many are pending or still running.
    pub(crate) sockets: SocketRegistry,
    /// Connections and upgrade rates per remote IP.
    pub(crate) per_ip: PerIp,
}

impl ServerState {
    /// The shared state of a new server whose broker is already attached to `hub`.
    pub(crate) fn new(
        config: ServerConfig,
        auth: AuthEngine,
        hub: Arc<ChannelHub>,
        broker: Arc<dyn Broker>,
    ) -> ServerState {
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
        ServerState {
            auth: RwLock::new(Arc::new(auth)),
            hub,
            broker,
            handlers: Handlers::default(),
            middleware: Middlewares::default(),
            events,
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            busy_poll: config.busy_poll.filter(|w| !w.is_zero()).map(BusyPoll::new),
            sockets: SocketRegistry::default(),
            per_ip: PerIp::new(&config.limits),
            config,
        }
    }

    pub(crate) fn auth_engine(&self) -> Arc<AuthEngine> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the JWT engine ([`crate::Server::set_auth`]).
    pub(crate) fn set_auth_engine(&self, engine: AuthEngine) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(engine);
    }

    pub(crate) fn emit(&self, ev: ServerEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(ev);
        }
    }

    /// A new stream of server events.
    pub(crate) fn events(&self) -> ServerEvents {
        ServerEvents::new(self.events.subscribe())
    }

    /// A socket completed its handshake.
    pub(crate) fn socket_opened(&self, socket: &Socket) {
        self.sockets.pending.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .handshakes_completed
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::handshake_completed();
        self.sockets
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(socket.shared.id.clone(), socket.clone());
    }

    /// A socket closed (`prev`: its state until then).
    pub(crate) fn socket_closed(&self, socket: &Socket, prev: SocketState) {
        match prev {
            SocketState::Open => {
                self.sockets
                    .clients
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&socket.shared.id);
            }
            SocketState::Connecting => {
                self.sockets.pending.fetch_sub(1, Ordering::Relaxed);
            }
            SocketState::Closed => {}
        }
    }
}

impl ServerLink for ServerState {
    fn auth_engine(&self) -> Arc<AuthEngine> {
        ServerState::auth_engine(self)
    }

    fn warning(&self, socket: &Socket, error: ErrorObject) {
        self.emit(ServerEvent::Warning {
            socket: Some(socket.clone()),
            error,
        });
    }
}

/// The open sockets by id, and counters of the pending (handshaking) and live (task
/// still running) ones.
#[derive(Default)]
pub(crate) struct SocketRegistry {
    clients: RwLock<HashMap<Arc<str>, Socket>>,
    pending: AtomicUsize,
    live: AtomicUsize,
    idle: Notify,
}

impl SocketRegistry {
    /// A socket task starts (its socket is pending until its handshake completes).
    pub(crate) fn socket_started(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    /// A socket task has finished.
    pub(crate) fn socket_finished(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Wait until no socket task is running.
    pub(crate) async fn all_finished(&self) {
        loop {
            let idle = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub(crate) fn open_count(&self) -> usize {
        self.clients.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn open(&self) -> Vec<Socket> {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<Socket> {
        self.clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}
