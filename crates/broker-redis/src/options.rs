//! [`RedisBrokerOptions`]: prefix, topology, timeouts, reconnect backoff, queue sizes.

use std::time::Duration;

use socketcluster_rs_backplane::LinkOptions;

/// How the Redis URLs given to [`crate::RedisBroker::connect`] are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// Ask the first node (`INFO cluster`): [`Topology::Cluster`] when it is a Redis
    /// Cluster node, [`Topology::Nodes`] otherwise. The default.
    #[default]
    Auto,
    /// Independent Redis servers (or a single one). Each channel lives on one of them,
    /// chosen by rendezvous hashing of the channel name over the nodes' `host:port`
    /// (every instance must list the same nodes; the order does not matter). Uses classic
    /// `PUBLISH`/`SUBSCRIBE`.
    Nodes,
    /// A Redis Cluster (Redis 7+): the URLs are seed nodes; channels use sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`), so a channel's traffic stays on the shard owning its
    /// slot instead of being broadcast over the cluster bus.
    Cluster,
}

/// Options of a [`crate::RedisBroker`]. Every field has a setter (those of
/// [`RedisBrokerOptions::link`] too); the defaults suit a production deployment.
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_broker_redis::{RedisBrokerOptions, Topology};
///
/// let options = RedisBrokerOptions::default()
///     .channel_prefix("myapp:sc:")
///     .topology(Topology::Nodes)
///     .reconnect_delay(Duration::from_millis(50), Duration::from_secs(2));
/// assert_eq!(options.channel_prefix, "myapp:sc:");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisBrokerOptions {
    /// Prepended to every channel name to form the Redis channel name, so that several
    /// applications can share one Redis. Default `"sc:"`. All instances of one
    /// application must use the same prefix.
    pub channel_prefix: String,
    /// How the URLs are interpreted. Default [`Topology::Auto`].
    pub topology: Topology,
    /// Timeout of one command (publish pipeline, subscribe, ping). A timeout counts as a
    /// lost connection. Default 5 s.
    pub response_timeout: Duration,
    /// At most this many queued publications are written in one pipeline. Default 512.
    pub max_pipeline: usize,
    /// The settings shared with the NATS broker, each documented with its default in
    /// [`LinkOptions`]: `connect_timeout` (5 s; one TCP connect + handshake),
    /// `reconnect_min_delay` (100 ms), `reconnect_max_delay` (5 s), `ping_interval` (5 s;
    /// an idle connection is checked with `PING`) and `publish_queue_capacity` (10 000
    /// publications waiting to be written to one node).
    pub link: LinkOptions,
}

impl Default for RedisBrokerOptions {
    fn default() -> Self {
        RedisBrokerOptions {
            channel_prefix: "sc:".to_owned(),
            topology: Topology::Auto,
            response_timeout: Duration::from_secs(5),
            max_pipeline: 512,
            link: LinkOptions::default(),
        }
    }
}

impl RedisBrokerOptions {
    /// Set [`RedisBrokerOptions::channel_prefix`].
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.channel_prefix = prefix.into();
        self
    }

    /// Set [`RedisBrokerOptions::topology`].
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// Set [`LinkOptions::connect_timeout`] (default 5 s).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.with_link(|link| link.connect_timeout(timeout))
    }

    /// Set [`RedisBrokerOptions::response_timeout`].
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Set [`LinkOptions::reconnect_min_delay`] and [`LinkOptions::reconnect_max_delay`]
    /// (defaults 100 ms and 5 s).
    pub fn reconnect_delay(self, min: Duration, max: Duration) -> Self {
        self.with_link(|link| link.reconnect_delay(min, max))
    }

    /// Set [`LinkOptions::ping_interval`] (default 5 s).
    pub fn ping_interval(self, interval: Duration) -> Self {
        self.with_link(|link| link.ping_interval(interval))
    }

    /// Set [`LinkOptions::publish_queue_capacity`] (at least 1; default 10 000).
    pub fn publish_queue_capacity(self, capacity: usize) -> Self {
        self.with_link(|link| link.publish_queue_capacity(capacity))
    }

    /// Set [`RedisBrokerOptions::max_pipeline`] (at least 1).
    pub fn max_pipeline(mut self, max: usize) -> Self {
        self.max_pipeline = max.max(1);
        self
    }

    /// Apply a [`LinkOptions`] setter to [`Self::link`].
    fn with_link(mut self, set: impl FnOnce(LinkOptions) -> LinkOptions) -> Self {
        self.link = set(self.link);
        self
    }

    /// The delay before reconnect attempt `attempt` (0-based), before jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.link.backoff(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = RedisBrokerOptions::default()
            .reconnect_delay(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<u128> = (0..6).map(|a| o.backoff(a).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(o.backoff(u32::MAX), Duration::from_millis(1000));
    }
}
