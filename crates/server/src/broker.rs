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
//! use socketcluster_server::broker::{Broker, BrokerFuture, Delivery};
//! use socketcluster_server::Publication;
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
//! let config = socketcluster_server::ServerConfig::default();
//! let server = socketcluster_server::Server::with_broker(
//!     config,
//!     Arc::new(Logging { delivery: Default::default() }),
//! ).unwrap();
//! # drop(server);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::channel::Publication;
pub use crate::error::BrokerError;
use crate::hub::ChannelHub;

/// Future returned by broker operations.
pub type BrokerFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send + 'static>>;

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
    /// Publish. Must eventually deliver to the local subscribers exactly once.
    fn publish(&self, publication: Arc<Publication>) -> BrokerFuture;
}

/// The in-process broker (JS `AGSimpleBroker`): publications reach the sockets of this
/// server only.
#[derive(Default)]
pub struct LocalBroker {
    delivery: OnceLock<Delivery>,
}

impl LocalBroker {
    /// A new local broker.
    pub fn new() -> Self {
        LocalBroker::default()
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
}
