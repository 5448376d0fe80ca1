//! Server-side publish and subscribe (JS `server.exchange`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use socketcluster_rs_protocol::RawValue;
use tokio::sync::mpsc;

use crate::broker::BrokerError;
use crate::channel::Publication;
use crate::error::PublishError;
use crate::history::{HistoryRead, StreamPosition};
use crate::hub::{ExchangeSink, Subscriber};
use crate::state::ServerState;

/// Capacity of an exchange subscription's queue; when a consumer falls this far behind,
/// further publications are dropped for it and counted in
/// [`ExchangeSubscription::dropped`].
pub const EXCHANGE_SUBSCRIPTION_CAPACITY: usize = 1024;

/// Publish to channels and subscribe to them from Rust code.
///
/// ```no_run
/// # async fn demo(server: socketcluster_rs_server::Server) -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// let exchange = server.exchange();
/// let mut sub = exchange.subscribe("news").await?;
/// exchange.publish("news", &serde_json::json!({"headline": "hi"})).await?;
/// let publication = sub.next().await.unwrap();
/// assert_eq!(publication.data::<serde_json::Value>()?["headline"], "hi");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Exchange {
    pub(crate) state: Arc<ServerState>,
}

impl Exchange {
    /// Publish serializable data to a channel (JS `exchange.transmitPublish`).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), PublishError> {
        let raw = serde_json::value::to_raw_value(data)
            .map_err(|e| PublishError::Serialize(e.to_string()))?;
        self.publish_raw(channel, Some(raw)).await
    }

    /// Publish raw JSON (`None`: a publication without data).
    pub async fn publish_raw(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
    ) -> Result<(), PublishError> {
        self.publish_raw_at(channel, data).await.map(|_| ())
    }

    /// Publish raw JSON; on a channel with history, returns the stream position the
    /// publication took (`None` on other channels).
    ///
    /// ```no_run
    /// # async fn demo(server: socketcluster_rs_server::Server) -> Result<(), Box<dyn std::error::Error>> {
    /// let data = serde_json::value::to_raw_value(&"hello")?;
    /// if let Some(pos) = server.exchange().publish_raw_at("chat/1", Some(data)).await? {
    ///     println!("published at offset {} of epoch {}", pos.offset, pos.epoch);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_raw_at(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
    ) -> Result<Option<StreamPosition>, PublishError> {
        self.state
            .stats
            .publications
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::publication_in("server");
        if let Some(rule) = self.state.config.history.rule_for(channel) {
            let pos = self
                .state
                .broker
                .publish_with_history(channel, data, rule)
                .await?;
            return Ok(Some(pos));
        }
        let p = Publication::new(channel, data);
        self.state.broker.publish(p).await?;
        Ok(None)
    }

    /// Read a channel's history: its current position and up to `limit` publications
    /// after offset `since` (the oldest kept ones with `None`), oldest first. Fails for a
    /// channel without history.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<u64>,
        limit: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let Some(rule) = self.state.config.history.rule_for(channel) else {
            return Err(BrokerError(format!("the {channel} channel has no history")));
        };
        self.state.broker.history(channel, rule, since, limit).await
    }

    /// Subscribe to a channel from the server. The subscription is a `Stream` of
    /// publications; dropping it unsubscribes.
    pub async fn subscribe(&self, channel: &str) -> Result<ExchangeSubscription, BrokerError> {
        let (tx, rx) = mpsc::channel(EXCHANGE_SUBSCRIPTION_CAPACITY);
        let sink = Arc::new(ExchangeSink {
            key: self.state.hub.next_key(),
            tx,
            dropped: AtomicU64::new(0),
        });
        let broker = &self.state.broker;
        let first = self
            .state
            .hub
            .add_then(channel, Subscriber::Exchange(sink.clone()), || {
                broker.subscribe(channel)
            });
        if let Some(fut) = first
            && let Err(e) = fut.await
        {
            self.state.hub.remove(channel, sink.key);
            return Err(e);
        }
        Ok(ExchangeSubscription {
            channel: channel.to_owned(),
            rx,
            sink,
            state: self.state.clone(),
        })
    }

    /// Whether an exchange subscription exists for the channel on this server.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.state.hub.has_exchange_subscriber(channel)
    }

    /// Channels with at least one exchange subscription on this server.
    pub fn subscriptions(&self) -> Vec<String> {
        self.state
            .hub
            .channels()
            .into_iter()
            .filter(|(_, _, ex)| *ex > 0)
            .map(|(c, _, _)| c)
            .collect()
    }
}

/// A server-side channel subscription: a `Stream` of [`Publication`]s.
pub struct ExchangeSubscription {
    channel: String,
    rx: mpsc::Receiver<Arc<Publication>>,
    sink: Arc<ExchangeSink>,
    state: Arc<ServerState>,
}

impl ExchangeSubscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next publication (`None` never happens while the server lives).
    pub async fn recv(&mut self) -> Option<Arc<Publication>> {
        self.rx.recv().await
    }

    /// Publications dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.sink.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for ExchangeSubscription {
    type Item = Arc<Publication>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ExchangeSubscription {
    fn drop(&mut self) {
        let broker = &self.state.broker;
        let (_, last) = self
            .state
            .hub
            .remove_then(&self.channel, self.sink.key, || {
                broker.unsubscribe(&self.channel)
            });
        if let Some(fut) = last
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!(error = %e, "broker unsubscribe failed");
                }
            });
        }
    }
}
