//! [`NatsBroker`]: the [`Broker`] implementation and its constructor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use async_nats::ServerAddr;
use bytes::Bytes;
use socketcluster_rs_server::Publication;
use socketcluster_rs_server::broker::{Broker, BrokerError, BrokerFuture, Delivery};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::command::{Control, Publish};
use crate::connection::{Confirmer, ConnectionTask, unavailable};
use socketcluster_rs_backplane::{
    BackplaneState, Counters, Health, InstanceId, NodeHealth, StateChanges, StateSender, Stats,
    envelope,
    request::{self, Done},
};

use crate::error::Error;
use crate::options::NatsBrokerOptions;
use crate::shared::{EventHandler, Shared};
use crate::subject::{channel_subject, valid_prefix};

/// A [`Broker`] that shares channels between server instances through NATS core pub/sub.
///
/// Cheap to clone (all clones are the same broker). Give one clone to the server and
/// keep another for [`NatsBroker::health`] and [`NatsBroker::stats`]. One broker serves
/// exactly one server. Dropping every clone (and the server) closes the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use socketcluster_rs_broker_nats::{NatsBroker, NatsBrokerOptions};
/// use socketcluster_rs_server::{Server, ServerConfig};
///
/// let broker = NatsBroker::connect("nats://127.0.0.1:4222", NatsBrokerOptions::default()).await?;
/// let server = Server::with_broker(ServerConfig::default(), Arc::new(broker.clone()))?;
/// assert!(broker.health().is_connected());
/// # drop(server); Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    publish: mpsc::Sender<Publish>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
        if self.shared.is_connected() {
            self.shared.counters.connection_up(false);
        }
    }
}

fn parse_addrs(url: &str) -> Result<Vec<ServerAddr>, Error> {
    let mut out = Vec::new();
    for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let addr: ServerAddr = u.parse().map_err(|e: std::io::Error| Error::InvalidUrl {
            url: u.to_owned(),
            reason: e.to_string(),
        })?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: "no server address".to_owned(),
        });
    }
    Ok(out)
}

impl NatsBroker {
    /// Connect to NATS.
    ///
    /// `url` is `nats://[user:password@]host:port`, or a comma-separated list of the
    /// servers of one NATS cluster (as given to `socketcluster serve --broker`). The server
    /// must be reachable: the first connection is not retried (the caller decides whether
    /// to retry start-up). After that, a lost connection is re-established forever, with
    /// backoff, and every subscription is restored.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), socketcluster_rs_broker_nats::Error> {
    /// use socketcluster_rs_broker_nats::{NatsBroker, NatsBrokerOptions};
    ///
    /// let broker = NatsBroker::connect(
    ///     "nats://10.0.0.1:4222,nats://10.0.0.2:4222",
    ///     NatsBrokerOptions::default().subject_prefix("myapp.sc"),
    /// )
    /// .await?;
    /// assert_eq!(broker.subject_for("a.b"), "myapp.sc.c.YS5i");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: NatsBrokerOptions) -> Result<NatsBroker, Error> {
        if !valid_prefix(&options.subject_prefix) {
            return Err(Error::InvalidPrefix(options.subject_prefix.clone()));
        }
        let addrs = parse_addrs(url)?;
        let connect_error = |e: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
            url: url.to_owned(),
            source: e,
        };
        let state = StateSender::new(BackplaneState::Disconnected);
        let (link, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            instance: InstanceId::random(),
            prefix: options.subject_prefix.clone(),
            address: url.to_owned(),
            delivery: Default::default(),
            counters: Counters::new(crate::BACKEND),
            state,
            link,
            was_lost: AtomicBool::new(false),
            channels: AtomicUsize::new(0),
            last_error: Default::default(),
        });
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let events = Arc::new(EventHandler {
            shared: shared.clone(),
            control: control_tx.downgrade(),
        });
        let delays = options.clone();
        let client = async_nats::ConnectOptions::new()
            .name(options.client_name.clone())
            .connection_timeout(options.link.connect_timeout)
            .ping_interval(options.link.ping_interval)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempt| delays.reconnect_delay_for(attempt))
            .event_callback(move |event| {
                let events = events.clone();
                async move { events.on_event(event) }
            })
            .connect(addrs)
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        let mut confirmer = Confirmer::new(&client)
            .await
            .map_err(|e| connect_error(e.into()))?;
        confirmer
            .confirm(&client, &shared, options.link.connect_timeout)
            .await
            .map_err(|e| connect_error(e.into()))?;
        shared.mark_connected();

        let (publish_tx, publish_rx) = mpsc::channel(options.link.publish_queue_capacity);
        let task = ConnectionTask {
            client,
            shared: shared.clone(),
            options,
            control: control_rx,
            publish: publish_rx,
            confirmer,
            subs: Default::default(),
        };
        let handle = tokio::spawn(task.run());
        tracing::info!(instance = %shared.instance, server = url, "NATS backplane connected");
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                shared,
                control: control_tx,
                publish: publish_tx,
                task: handle.abort_handle(),
            }),
        })
    }

    /// This broker's id on the backplane (written into every envelope it publishes).
    pub fn instance_id(&self) -> InstanceId {
        self.inner.shared.instance
    }

    /// The NATS subject a channel is published on (see [`crate::channel_subject`]).
    pub fn subject_for(&self, channel: &str) -> String {
        channel_subject(&self.inner.shared.prefix, channel)
    }

    /// Current health, for a `/health` endpoint.
    pub fn health(&self) -> Health {
        let s = &self.inner.shared;
        let node = NodeHealth::new(
            s.address.clone(),
            s.is_connected(),
            s.channels.load(Ordering::Relaxed),
            || s.last_error.get(),
        );
        Health::new(s.state.get(), vec![node])
    }

    /// Whether the backplane is connected (and every subscription confirmed).
    pub fn is_connected(&self) -> bool {
        self.inner.shared.is_connected()
    }

    /// Follows the state: [`StateChanges::changed`] resolves on every transition.
    pub fn state_changes(&self) -> StateChanges {
        self.inner.shared.state.subscribe()
    }

    /// Counters since the broker was created.
    pub fn stats(&self) -> Stats {
        self.inner.shared.counters.snapshot()
    }

    fn control(&self, make: impl FnOnce(Done) -> Control) -> BrokerFuture {
        request::send(crate::STOPPED, |done| {
            let _ = self.inner.control.send(make(done));
        })
    }
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("instance", &self.inner.shared.instance)
            .field("server", &self.inner.shared.address)
            .finish()
    }
}

impl Broker for NatsBroker {
    fn attach(&self, delivery: Delivery) {
        if self.inner.shared.delivery.set(delivery).is_err() {
            tracing::warn!(
                "a NatsBroker was attached to a second server; it keeps delivering to the first"
            );
        }
    }

    fn subscribe(&self, channel: &str) -> BrokerFuture {
        let channel = channel.to_owned();
        self.control(|done| Control::Subscribe(channel, done))
    }

    fn unsubscribe(&self, channel: &str) -> BrokerFuture {
        let channel = channel.to_owned();
        self.control(|done| Control::Unsubscribe(channel, done))
    }

    /// Delivers to the local subscribers at once, then queues the envelope; the future
    /// resolves when the NATS server confirmed it (or with an error).
    fn publish(&self, publication: Arc<Publication>) -> BrokerFuture {
        let shared = &self.inner.shared;
        if let Some(d) = shared.delivery.get() {
            d.deliver(&publication);
        }
        if !shared.is_connected() {
            shared.counters.publish_failed();
            return request::failed(unavailable(shared));
        }
        let payload = envelope::encode(
            shared.instance,
            publication.channel(),
            publication.raw_data(),
        );
        let (done, answer) = request::pair(crate::STOPPED);
        let item = Publish {
            subject: channel_subject(&shared.prefix, publication.channel()),
            payload: Bytes::from(payload),
            queued: Instant::now(),
            done,
        };
        match self.inner.publish.try_send(item) {
            Ok(()) => Box::pin(answer),
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.counters.publish_failed();
                request::failed(BrokerError(format!(
                    "NATS backplane publish queue is full ({} publications waiting)",
                    self.inner.publish.max_capacity()
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                shared.counters.publish_failed();
                request::failed(BrokerError(crate::STOPPED.to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lists() {
        assert_eq!(parse_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert_eq!(parse_addrs("nats://a:1, nats://b:2").unwrap().len(), 2);
        assert!(matches!(parse_addrs(" , "), Err(Error::InvalidUrl { .. })));
        assert!(matches!(
            parse_addrs("http://a:1"),
            Err(Error::InvalidUrl { .. })
        ));
    }
}
