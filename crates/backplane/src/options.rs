//! [`LinkOptions`]: the connection, reconnect and queue settings both brokers share.

use std::time::Duration;

/// The connection, reconnect and queue settings shared by `RedisBrokerOptions` and
/// `NatsBrokerOptions` (their `link` field). Every field has a setter, here and on those
/// types (same names); the defaults suit a production deployment.
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_backplane::LinkOptions;
///
/// let link = LinkOptions::default().reconnect_delay(Duration::from_secs(1), Duration::ZERO);
/// assert_eq!(link.reconnect_max_delay, Duration::from_secs(1));
/// assert_eq!(link.backoff(3), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LinkOptions {
    /// Timeout of one connection attempt (TCP connect and handshake). Default 5 s.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled after each failed attempt (with ±25 % jitter).
    /// Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Upper bound of the reconnect delay. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// The connection is checked with a `PING` this often, to notice a silently dead
    /// peer. Default 5 s.
    pub ping_interval: Duration,
    /// Publications waiting to be written (to one node, for Redis). When full, `publish`
    /// fails at once with an error instead of queueing without bound. Default 10 000.
    pub publish_queue_capacity: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            connect_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            publish_queue_capacity: 10_000,
        }
    }
}

impl LinkOptions {
    /// Set [`LinkOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Set [`LinkOptions::reconnect_min_delay`] and [`LinkOptions::reconnect_max_delay`]
    /// (`max` is raised to `min` if lower).
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max.max(min);
        self
    }

    /// Set [`LinkOptions::ping_interval`].
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Set [`LinkOptions::publish_queue_capacity`] (at least 1).
    pub fn publish_queue_capacity(mut self, capacity: usize) -> Self {
        self.publish_queue_capacity = capacity.max(1);
        self
    }

    /// The reconnect delay before jitter: `reconnect_min_delay · 2^exponent`, capped at
    /// `reconnect_max_delay` (see [`crate::backoff`](fn@crate::backoff)).
    pub fn backoff(&self, exponent: u32) -> Duration {
        crate::backoff(self.reconnect_min_delay, self.reconnect_max_delay, exponent)
    }
}
