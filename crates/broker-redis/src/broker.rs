//! [`RedisBroker`]: the [`Broker`] implementation and its constructor.

use std::sync::Arc;
use std::time::Instant;

use redis::{ConnectionAddr, IntoConnectionInfo};
use socketcluster_rs_server::Publication;
use socketcluster_rs_server::RawValue;
use socketcluster_rs_server::broker::{
    Broker, BrokerError, BrokerFuture, Delivery, HistoryFuture, PositionFuture,
};
use socketcluster_rs_server::history::HistoryRule;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::command::{Control, HistoryPublish, HistoryRead as ReadCommand, Outgoing, Publish};
use crate::connection::{ConnectionTask, unavailable};
use crate::history;
use socketcluster_rs_backplane::{
    BackplaneState, Counters, Health, InstanceId, NodeHealth, StateChanges, StateSender, Stats,
    envelope,
    request::{self, Done},
};

use crate::error::Error;
use crate::hashing;
use crate::link::{ClusterConnector, Connector, NodeConnector};
use crate::options::{RedisBrokerOptions, Topology};
use crate::shared::{NodeStatus, Shared};

/// A [`Broker`] that shares channels between server instances through Redis pub/sub.
///
/// Cheap to clone (all clones are the same broker). Give one clone to the server and
/// keep another for [`RedisBroker::health`] and [`RedisBroker::stats`]. One broker serves
/// exactly one server. Dropping every clone (and the server) closes the connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use socketcluster_rs_broker_redis::{RedisBroker, RedisBrokerOptions};
/// use socketcluster_rs_server::{Server, ServerConfig};
///
/// let broker = RedisBroker::connect(
///     &["redis://127.0.0.1:6379".to_owned()],
///     RedisBrokerOptions::default(),
/// )
/// .await?;
/// let server = Server::with_broker(ServerConfig::default(), Arc::new(broker.clone()))?;
/// // ... run the server; report the backplane on /health:
/// let state: &str = broker.health().state.as_str();
/// # let _ = state;
/// # drop(server); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct NodeHandle {
    key: String,
    status: Arc<NodeStatus>,
    control: mpsc::UnboundedSender<Control>,
    publish: mpsc::Sender<Outgoing>,
    task: AbortHandle,
}

struct Inner {
    shared: Arc<Shared>,
    nodes: Vec<NodeHandle>,
    keys: Vec<String>,
    topology: Topology,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.task.abort();
            if n.status
                .connected
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                self.shared.counters.connection_up(false);
            }
            let channels = n
                .status
                .channels
                .swap(0, std::sync::atomic::Ordering::Relaxed);
            self.shared.counters.channels_removed(channels);
        }
    }
}

/// One parsed URL.
struct Endpoint {
    url: String,
    key: String,
    info: redis::ConnectionInfo,
}

fn parse_urls(urls: &[String]) -> Result<Vec<Endpoint>, Error> {
    let mut out: Vec<Endpoint> = Vec::new();
    for url in urls.iter().flat_map(|u| u.split(',')).map(str::trim) {
        if url.is_empty() {
            continue;
        }
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        let key = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("{}:{port}", host.to_ascii_lowercase()),
            ConnectionAddr::Unix(path) => path.display().to_string(),
            _ => {
                return Err(invalid(
                    "TLS (rediss://) is not supported by this build".into(),
                ));
            }
        };
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        if out.iter().any(|e| e.key == key) {
            return Err(Error::DuplicateNode(key));
        }
        out.push(Endpoint {
            url: url.to_owned(),
            key,
            info,
        });
    }
    if out.is_empty() {
        return Err(Error::NoUrls);
    }
    Ok(out)
}

fn connect_error(url: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Connect {
        url: url.to_owned(),
        source: e.into(),
    }
}

/// Whether the node is a Redis Cluster node (`INFO cluster` → `cluster_enabled:1`).
async fn is_cluster_node(ep: &Endpoint, options: &RedisBrokerOptions) -> Result<bool, Error> {
    let client = redis::Client::open(ep.info.clone()).map_err(|e| connect_error(&ep.url, e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.link.connect_timeout))
        .set_response_timeout(Some(options.response_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| connect_error(&ep.url, e))?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await
        .map_err(|e| connect_error(&ep.url, e))?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

impl RedisBroker {
    /// Connect to Redis.
    ///
    /// `urls` are `redis://[user:password@]host:port[/db]` URLs (or `redis+unix://`);
    /// an element may itself be a comma-separated list, as given to
    /// `socketcluster serve --broker redis://a:6379,redis://b:6379`. RESP3 is always used.
    ///
    /// Every node must be reachable: the first connection attempt is not retried (the
    /// caller decides whether to retry start-up). After that, lost connections are
    /// re-established forever, with backoff.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), socketcluster_rs_broker_redis::Error> {
    /// use socketcluster_rs_broker_redis::{RedisBroker, RedisBrokerOptions, Topology};
    ///
    /// // Two independent Redis servers; channels are spread by rendezvous hashing.
    /// let urls = vec!["redis://10.0.0.1:6379,redis://10.0.0.2:6379".to_owned()];
    /// let broker = RedisBroker::connect(&urls, RedisBrokerOptions::default()).await?;
    /// assert_eq!(broker.topology(), Topology::Nodes);
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        urls: &[String],
        options: RedisBrokerOptions,
    ) -> Result<RedisBroker, Error> {
        let endpoints = parse_urls(urls)?;
        let topology = match options.topology {
            Topology::Auto => {
                if is_cluster_node(&endpoints[0], &options).await? {
                    Topology::Cluster
                } else {
                    Topology::Nodes
                }
            }
            t => t,
        };
        match topology {
            Topology::Cluster => {
                let address = endpoints
                    .iter()
                    .map(|e| e.key.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let connector = ClusterConnector {
                    seeds: endpoints.into_iter().map(|e| e.info).collect(),
                    connect_timeout: options.link.connect_timeout,
                    response_timeout: options.response_timeout,
                };
                Self::start(
                    vec![(address.clone(), address, connector)],
                    options,
                    topology,
                )
                .await
            }
            _ => {
                let mut connectors = Vec::with_capacity(endpoints.len());
                for ep in endpoints {
                    let client =
                        redis::Client::open(ep.info).map_err(|e| connect_error(&ep.url, e))?;
                    connectors.push((
                        ep.url,
                        ep.key,
                        NodeConnector {
                            client,
                            connect_timeout: options.link.connect_timeout,
                            response_timeout: options.response_timeout,
                        },
                    ));
                }
                Self::start(connectors, options, Topology::Nodes).await
            }
        }
    }

    async fn start<C: Connector>(
        connectors: Vec<(String, String, C)>,
        options: RedisBrokerOptions,
        topology: Topology,
    ) -> Result<RedisBroker, Error> {
        let statuses: Vec<Arc<NodeStatus>> = connectors
            .iter()
            .map(|(_, key, _)| Arc::new(NodeStatus::new(key.clone())))
            .collect();
        let state = StateSender::new(BackplaneState::Disconnected);
        let shared = Arc::new(Shared {
            instance: InstanceId::random(),
            prefix: options.channel_prefix.clone(),
            delivery: Default::default(),
            counters: Counters::new(crate::BACKEND),
            state,
            nodes: statuses.clone(),
        });
        let mut nodes = Vec::new();
        let mut firsts = Vec::new();
        for ((url, key, connector), status) in connectors.into_iter().zip(statuses) {
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let (publish_tx, publish_rx) = mpsc::channel(options.link.publish_queue_capacity);
            let (first_tx, first_rx) = oneshot::channel();
            let task = ConnectionTask {
                connector,
                shared: shared.clone(),
                status: status.clone(),
                options: options.clone(),
                control: control_rx,
                publish: publish_rx,
                wanted: Default::default(),
                first: Some(first_tx),
            };
            let handle = tokio::spawn(task.run());
            nodes.push(NodeHandle {
                key: key.clone(),
                status,
                control: control_tx,
                publish: publish_tx,
                task: handle.abort_handle(),
            });
            firsts.push((url, first_rx));
        }
        let keys = nodes.iter().map(|n| n.key.clone()).collect();
        let broker = RedisBroker {
            inner: Arc::new(Inner {
                shared,
                nodes,
                keys,
                topology,
            }),
        };
        for (url, first) in firsts {
            match first.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(connect_error(&url, e)),
                Err(_) => return Err(connect_error(&url, "connection task ended")),
            }
        }
        tracing::info!(
            instance = %broker.inner.shared.instance,
            nodes = broker.inner.nodes.len(),
            ?topology,
            "redis backplane connected"
        );
        Ok(broker)
    }

    /// The topology in use ([`Topology::Auto`] resolved).
    pub fn topology(&self) -> Topology {
        self.inner.topology
    }

    /// This broker's id on the backplane (written into every envelope it publishes).
    pub fn instance_id(&self) -> InstanceId {
        self.inner.shared.instance
    }

    /// The node (`host:port`) a channel is hashed to (the seed list in cluster mode).
    pub fn node_for_channel(&self, channel: &str) -> &str {
        &self.node(channel).key
    }

    /// Current health, for a `/health` endpoint.
    pub fn health(&self) -> Health {
        let nodes = self.inner.nodes.iter().map(|n| {
            NodeHealth::new(
                n.key.clone(),
                n.status.is_connected(),
                n.status.channels.load(std::sync::atomic::Ordering::Relaxed),
                || n.status.last_error.get(),
            )
        });
        Health::new(self.inner.shared.state.get(), nodes.collect())
    }

    /// Whether every node is connected (and resubscribed).
    pub fn is_connected(&self) -> bool {
        self.inner.shared.state.get() == BackplaneState::Connected
    }

    /// Follows the aggregated state: [`StateChanges::changed`] resolves on every
    /// transition.
    pub fn state_changes(&self) -> StateChanges {
        self.inner.shared.state.subscribe()
    }

    /// Counters since the broker was created.
    pub fn stats(&self) -> Stats {
        self.inner.shared.counters.snapshot()
    }

    fn node(&self, channel: &str) -> &NodeHandle {
        &self.inner.nodes[hashing::pick(&self.inner.keys, channel)]
    }

    fn is_cluster(&self) -> bool {
        self.inner.topology == Topology::Cluster
    }

    /// Queue a publication for its node's connection task.
    fn enqueue(&self, node: &NodeHandle, item: Outgoing) -> Result<(), BrokerError> {
        let shared = &self.inner.shared;
        match node.publish.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                shared.counters.publish_failed();
                Err(BrokerError(format!(
                    "redis backplane {} publish queue is full ({} publications waiting)",
                    node.key,
                    node.publish.max_capacity()
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                shared.counters.publish_failed();
                Err(BrokerError(crate::STOPPED.to_owned()))
            }
        }
    }

    fn control(&self, channel: &str, make: fn(String, Done) -> Control) -> BrokerFuture {
        let node = self.node(channel);
        let redis_channel = self.inner.shared.redis_channel(channel);
        request::send(crate::STOPPED, |done| {
            let _ = node.control.send(make(redis_channel, done));
        })
    }
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("instance", &self.inner.shared.instance)
            .field("topology", &self.inner.topology)
            .field("nodes", &self.inner.keys)
            .finish()
    }
}

impl Broker for RedisBroker {
    fn attach(&self, delivery: Delivery) {
        if self.inner.shared.delivery.set(delivery).is_err() {
            tracing::warn!(
                "a RedisBroker was attached to a second server; it keeps delivering to the first"
            );
        }
    }

    fn subscribe(&self, channel: &str) -> BrokerFuture {
        self.control(channel, Control::Subscribe)
    }

    fn unsubscribe(&self, channel: &str) -> BrokerFuture {
        self.control(channel, Control::Unsubscribe)
    }

    /// Delivers to the local subscribers at once, then queues the envelope for the
    /// channel's node; the future resolves when Redis accepted it (or with an error).
    fn publish(&self, publication: Arc<Publication>) -> BrokerFuture {
        let shared = &self.inner.shared;
        if let Some(d) = shared.delivery.get() {
            d.deliver(&publication);
        }
        let node = self.node(publication.channel());
        if !node.status.is_connected() {
            shared.counters.publish_failed();
            return request::failed(unavailable(&node.status));
        }
        let payload = envelope::encode(
            shared.instance,
            publication.channel(),
            publication.raw_data(),
        );
        let (done, answer) = request::pair(crate::STOPPED);
        let item = Publish {
            channel: shared.redis_channel(publication.channel()),
            payload,
            queued: Instant::now(),
            done,
        };
        match self.enqueue(node, Outgoing::Plain(item)) {
            Ok(()) => Box::pin(answer),
            Err(e) => request::failed(e),
        }
    }

    fn supports_history(&self) -> bool {
        true
    }

    /// One Lua script takes the channel's next offset, appends the publication to the
    /// channel's stream and publishes it with its position; every instance (this one
    /// too) delivers it when it comes back from Redis, so a channel's publications reach
    /// every subscriber in offset order.
    fn publish_with_history(
        &self,
        channel: &str,
        data: Option<Box<RawValue>>,
        rule: &HistoryRule,
    ) -> PositionFuture {
        let shared = &self.inner.shared;
        let node = self.node(channel);
        if !node.status.is_connected() {
            shared.counters.publish_failed();
            return Box::pin(std::future::ready(Err(unavailable(&node.status))));
        }
        let redis_channel = shared.redis_channel(channel);
        let Some((stream_key, meta_key)) = history::keys(&redis_channel, self.is_cluster()) else {
            return Box::pin(std::future::ready(Err(no_slot(channel))));
        };
        let header = envelope::encode_positioned_header(shared.instance, channel, data.is_some());
        let command: &[u8] = if self.is_cluster() {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let has_data = data.is_some();
        let args = vec![
            redis_channel.into_bytes(),
            header,
            data.map(|d| d.get().as_bytes().to_vec())
                .unwrap_or_default(),
            rule.size.max(1).to_string().into_bytes(),
            millis(rule.ttl).into_bytes(),
            millis(history::meta_ttl(rule.ttl)).into_bytes(),
            socketcluster_rs_server::history::new_epoch_string().into_bytes(),
            command.to_vec(),
            if has_data {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ];
        let (done, answer) = oneshot::channel();
        let item = HistoryPublish {
            stream_key,
            meta_key,
            args,
            queued: Instant::now(),
            done,
        };
        if let Err(e) = self.enqueue(node, Outgoing::History(item)) {
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(async move {
            let v = answer
                .await
                .map_err(|_| BrokerError(crate::STOPPED.to_owned()))??;
            history::parse_position(&v)
        })
    }

    fn history(
        &self,
        channel: &str,
        rule: &HistoryRule,
        since: Option<u64>,
        limit: usize,
    ) -> HistoryFuture {
        let shared = &self.inner.shared;
        let node = self.node(channel);
        let redis_channel = shared.redis_channel(channel);
        let Some((stream_key, meta_key)) = history::keys(&redis_channel, self.is_cluster()) else {
            return Box::pin(std::future::ready(Err(no_slot(channel))));
        };
        let args = vec![
            format!("0-{}", since.unwrap_or(0).saturating_add(1)).into_bytes(),
            limit.to_string().into_bytes(),
            millis(rule.ttl).into_bytes(),
            socketcluster_rs_server::history::new_epoch_string().into_bytes(),
            millis(history::meta_ttl(rule.ttl)).into_bytes(),
        ];
        let (done, answer) = oneshot::channel();
        let read = ReadCommand {
            stream_key,
            meta_key,
            args,
            done,
        };
        if node.control.send(Control::Read(read)).is_err() {
            return Box::pin(std::future::ready(Err(BrokerError(
                crate::STOPPED.to_owned(),
            ))));
        }
        let channel = channel.to_owned();
        Box::pin(async move {
            let v = answer
                .await
                .map_err(|_| BrokerError(crate::STOPPED.to_owned()))??;
            history::parse_read(&channel, &v)
        })
    }
}

fn millis(d: std::time::Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn no_slot(channel: &str) -> BrokerError {
    BrokerError(format!(
        "the {channel} channel cannot keep history in a Redis Cluster: its name has braces but no hash tag"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_lists() {
        let eps = parse_urls(&[
            "redis://127.0.0.1:7001, redis://LOCALHOST:7002".to_owned(),
            "redis://127.0.0.1:7003/2".to_owned(),
        ])
        .unwrap();
        let keys: Vec<&str> = eps.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["127.0.0.1:7001", "localhost:7002", "127.0.0.1:7003"]);
        assert_eq!(eps[2].info.redis_settings().db(), 2);
        assert_eq!(
            eps[0].info.redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
    }

    #[test]
    fn rejects_bad_url_lists() {
        assert!(matches!(parse_urls(&[]), Err(Error::NoUrls)));
        assert!(matches!(
            parse_urls(&[" , ".to_owned()]),
            Err(Error::NoUrls)
        ));
        assert!(matches!(
            parse_urls(&["http://x:1".to_owned()]),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            parse_urls(&["redis://a:1,redis://a:1".to_owned()]),
            Err(Error::DuplicateNode(_))
        ));
    }
}
