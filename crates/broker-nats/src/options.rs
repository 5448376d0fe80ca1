//! [`NatsBrokerOptions`].

use std::time::Duration;

use socketcluster_rs_backplane::LinkOptions;

/// Options of a [`crate::NatsBroker`]. Every field has a setter (those of
/// [`NatsBrokerOptions::link`] too).
///
/// ```
/// use std::time::Duration;
/// use socketcluster_rs_broker_nats::NatsBrokerOptions;
///
/// let options = NatsBrokerOptions::default()
///     .subject_prefix("myapp.sc")
///     .publish_timeout(Duration::from_secs(2));
/// assert_eq!(options.subject_prefix, "myapp.sc");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NatsBrokerOptions {
    /// First tokens of every subject (see [`crate::channel_subject`]). Default `"sc"`.
    /// All instances of one application must use the same prefix.
    pub subject_prefix: String,
    /// How long a publication (or subscription) may wait for the server's confirmation
    /// before it fails. Default 5 s.
    pub publish_timeout: Duration,
    /// At most this many queued publications share one confirmation round trip. Default
    /// 512.
    pub max_batch: usize,
    /// Connection name shown by the NATS server (`connz`). Default
    /// `"socketcluster-broker"`.
    pub client_name: String,
    /// The settings shared with the Redis broker, each documented with its default in
    /// [`LinkOptions`]: `connect_timeout` (5 s; each connection attempt),
    /// `reconnect_min_delay` (100 ms), `reconnect_max_delay` (5 s), `ping_interval` (5 s;
    /// the client `PING` interval) and `publish_queue_capacity` (10 000 publications
    /// waiting to be written).
    pub link: LinkOptions,
}

impl Default for NatsBrokerOptions {
    fn default() -> Self {
        NatsBrokerOptions {
            subject_prefix: "sc".to_owned(),
            publish_timeout: Duration::from_secs(5),
            max_batch: 512,
            client_name: "socketcluster-broker".to_owned(),
            link: LinkOptions::default(),
        }
    }
}

impl NatsBrokerOptions {
    /// Set [`NatsBrokerOptions::subject_prefix`].
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Set [`LinkOptions::connect_timeout`] (default 5 s).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.with_link(|link| link.connect_timeout(timeout))
    }

    /// Set [`NatsBrokerOptions::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
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

    /// Set [`NatsBrokerOptions::max_batch`] (at least 1).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// Set [`NatsBrokerOptions::client_name`].
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Apply a [`LinkOptions`] setter to [`Self::link`].
    fn with_link(mut self, set: impl FnOnce(LinkOptions) -> LinkOptions) -> Self {
        self.link = set(self.link);
        self
    }

    /// Delay before reconnect attempt `attempt` (1-based, as async-nats counts), jittered.
    pub(crate) fn reconnect_delay_for(&self, attempt: usize) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        socketcluster_rs_backplane::jitter(self.link.backoff(exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_up_to_the_cap_with_jitter() {
        let o = NatsBrokerOptions::default()
            .reconnect_delay(Duration::from_millis(100), Duration::from_millis(1000));
        for (attempt, base) in [
            (0, 100),
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (99, 1000),
        ] {
            let d = o.reconnect_delay_for(attempt).as_millis();
            assert!(
                d >= base * 3 / 4 && d <= base * 5 / 4,
                "attempt {attempt}: {d}"
            );
        }
    }
}
