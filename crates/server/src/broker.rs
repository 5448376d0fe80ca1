//! The pub/sub backplane.
//!
//! Every publish — from a client `#publish` or from [`crate::Exchange::publish`] — goes
//! to [`Broker::publish`]. The broker is responsible for making the publication reach
//! the local subscribers **exactly once** by calling [`Delivery::deliver`]: the in-process
//! [`LocalBroker`] does it immediately; a Redis or NATS broker would publish to the
//! backplane and call `deliver` for every message it receives from it (including its own,
//! or deliver its own locally and skip the echo).
//!
//! The server calls [`Broker::subscribe`] when a channel gets its first local
//! subscriber (socket or exchange) and [`Broker::unsubscribe`] when the last one leaves,
//! so a backplane only carries channels somebody on this server listens to. The socket
//! code never talks to a backplane directly.
//!
//! ```
//! use std::sync::Arc;
//! use socketcluster_rs_server::broker::{Broker, BrokerFuture, Delivery};
//! use socketcluster_rs_server::Publication;
//!
//! /// A broker that logs and forwards to the local subscribers.
//! struct Logging { delivery: std::sync::OnceLock<Delivery> }
//! impl Broker for Logging {
//!     fn attach(&self, delivery: Delivery) { let _ = self.delivery.set(delivery); }
//!     fn subscribe(&self, _channel: &str) -> BrokerFuture { Box::pin(async { Ok(()) }) }
//!     fn unsubscribe(&self, _channel: &str) -> BrokerFuture { Box::pin(async { Ok(()) }) }
//!     fn publish(&self, p: Arc<Publication>) -> BrokerFuture {
//!         if let Some(d) = self.delivery.get() { d.deliver(&p); }
//!         Box::pin(async { Ok(()) })
//!     }
//! }
//! let config = socketcluster_rs_server::ServerConfig::default();
//! let server = socketcluster_rs_server::Server::with_broker(
//!     config,
//!     Arc::new(Logging { delivery: Default::default() }),
//! ).unwrap();
//! # drop(server);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use socketcluster_rs_protocol::RawValue;

use crate::channel::Publication;
pub use crate::error::BrokerError;
use crate::history::{HistoryRead, HistoryRule, MemoryHistory, StreamPosition};
use crate::hub::ChannelHub;

/// Future returned by broker operations.
pub type BrokerFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + 'static>>;

/// Future of a publication on a channel with history: the stream position it took.
pub type PositionFuture =
    Pin<Box<dyn Future<Output = Result<StreamPosition, BrokerError>> + Send + 'static>>;

/// Future of a history read.
pub type HistoryFuture =
    Pin<Box<dyn Future<Output = Result<HistoryRead, BrokerError>> + Send + 'static>>;

/// The error of the history operations of a broker that keeps none.
pub const NO_HISTORY: &str = "this broker keeps no channel history";

/// Handle through which a broker delivers publications to this server's local
/// subscribers.
#[derive(Clone)]
pub struct Delivery {
    hub: Arc<ChannelHub>,
}

impl Delivery {
    pub(crate) fn new(hub: Arc<ChannelHub>) -> Self {
        Delivery { hub }
    }

    /// Fan a publication out to every local subscriber of its channel (sockets and
    /// exchange subscriptions). Returns the number of recipients.
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        self.hub.deliver(publication)
    }

    /// Whether the channel has a local subscriber.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.hub.is_subscribed(channel)
    }
}

/// A pub/sub backend.
pub trait Broker: Send + Sync + 'static {
    /// Called once when the server is created, with the handle used to deliver
    /// publications locally.
    fn attach(&self, delivery: Delivery);
    /// A channel got its first local subscriber.
    fn subscribe(&self, channel: &str) -> BrokerFuture;
    /// A channel lost its last local subscriber.
    fn unsubscribe(&self, channel: &str) -> BrokerFuture;
    /// Publish. Must eventually deliver to the local subscribers exactly once. The
    /// returned future only reports the outcome: the publication must go ahead even if
    /// the future is dropped unpolled (the server does not wait for the outcome of a
    /// transmitted publication, and does not hold up a socket's next messages for it).
    /// A broker must keep the publications it is given in order.
    fn publish(&self, publication: Arc<Publication>) -> BrokerFuture;

    /// Whether this broker keeps channel history ([`Broker::publish_with_history`],
    /// [`Broker::history`]). A server configured with history refuses to start with a
    /// broker that does not. Default: false.
    fn supports_history(&self) -> bool {
        false
    }

    /// Publish on a channel with history (docs/PROTOCOL.md 14.16): take the channel's
    /// next offset, keep the publication under `rule` (build it with
    /// [`Publication::with_position`]) and deliver it to every local subscriber exactly
    /// once, such that every subscriber of the channel, on every server, receives the
    /// channel's publications in offset order, and that a subscriber registered before a
    /// [`Broker::history`] read finds each later publication in the read or receives
    /// it (or both). As for [`Broker::publish`], the future only reports the outcome.
    /// Default: fails with [`NO_HISTORY`].
    fn publish_with_history(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
        rule: &HistoryRule,
    ) -> PositionFuture {
        let _ = (channel, data, rule);
        Box::pin(std::future::ready(Err(BrokerError(NO_HISTORY.into()))))
    }

    /// Read a channel's history: its current position and up to `limit` publications
    /// after offset `since` (all kept ones with `None`), oldest first. Reading a channel
    /// that has no stream yet starts one. Default: fails with [`NO_HISTORY`].
    fn history(
        &self,
        channel: &str,
        rule: &HistoryRule,
        since: Option<u64>,
        limit: usize,
    ) -> HistoryFuture {
        let _ = (channel, rule, since, limit);
        Box::pin(std::future::ready(Err(BrokerError(NO_HISTORY.into()))))
    }
}

/// The in-process broker (JS `AGSimpleBroker`): publications reach the sockets of this
/// server only. It keeps channel history in memory (lost with the process: a restarted
/// server starts new epochs).
#[derive(Default)]
pub struct LocalBroker {
    delivery: OnceLock<Delivery>,
    history: Arc<MemoryHistory>,
    sweeper: OnceLock<()>,
}

/// How often the in-process history frees expired publications.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl LocalBroker {
    /// A new local broker.
    pub fn new() -> Self {
        LocalBroker::default()
    }

    /// Publications held in the in-memory history, over every channel.
    pub fn retained_publications(&self) -> usize {
        self.history.retained()
    }

    /// Start the task that frees expired history, once, when a runtime is there (it ends
    /// with the broker).
    fn start_sweeper(&self) {
        if self.sweeper.get().is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeper.set(()).is_err() {
            return;
        }
        let history: Weak<MemoryHistory> = Arc::downgrade(&self.history);
        let delivery = self.delivery.get().cloned();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = history.upgrade() else { return };
                let subscribed = |c: &str| delivery.as_ref().is_some_and(|d| d.is_subscribed(c));
                let swept = h.sweep(tokio::time::Instant::now(), subscribed);
                if swept.expired + swept.forgotten > 0 {
                    tracing::trace!(?swept, "history swept");
                }
            }
        });
    }
}

fn ready() -> BrokerFuture {
    Box::pin(std::future::ready(Ok(())))
}

impl Broker for LocalBroker {
    fn attach(&self, delivery: Delivery) {
        let _ = self.delivery.set(delivery);
    }
    fn subscribe(&self, _channel: &str) -> BrokerFuture {
        ready()
    }
    fn unsubscribe(&self, _channel: &str) -> BrokerFuture {
        ready()
    }
    fn publish(&self, publication: Arc<Publication>) -> BrokerFuture {
        if let Some(d) = self.delivery.get() {
            d.deliver(&publication);
        }
        ready()
    }

    fn supports_history(&self) -> bool {
        true
    }

    fn publish_with_history(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
        rule: &HistoryRule,
    ) -> PositionFuture {
        self.start_sweeper();
        let delivery = self.delivery.get();
        let position =
            self.history
                .publish(channel, data, rule, tokio::time::Instant::now(), |p| {
                    if let Some(d) = delivery {
                        d.deliver(p);
                    }
                });
        Box::pin(std::future::ready(Ok(position)))
    }

    fn history(
        &self,
        channel: &str,
        rule: &HistoryRule,
        since: Option<u64>,
        limit: usize,
    ) -> HistoryFuture {
        self.start_sweeper();
        let read = self
            .history
            .read(channel, rule, since, limit, tokio::time::Instant::now());
        Box::pin(std::future::ready(Ok(read)))
    }
}
