//! Counters kept as atomics (for [`crate::Stats`]) and reported through the `metrics`
//! facade (for whatever exporter the application installed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::health::Stats;

/// Names of the metrics reported through the `metrics` facade. Every metric has the
/// label `backend` (`"nats"` here, `"redis"` for `socketcluster-broker-redis`, which uses
/// the same names).
pub mod metric_names {
    /// Counter: publications written to the backplane and confirmed.
    pub const PUBLISHED: &str = "socketcluster_backplane_published_total";
    /// Counter: publications that failed (the publisher got an error).
    pub const PUBLISH_FAILURES: &str = "socketcluster_backplane_publish_failures_total";
    /// Counter: publications received from other instances and delivered locally.
    pub const RECEIVED: &str = "socketcluster_backplane_received_total";
    /// Counter: own publications echoed by the backplane and skipped.
    pub const ECHOES_SKIPPED: &str = "socketcluster_backplane_echoes_skipped_total";
    /// Counter: received messages that were not valid envelopes.
    pub const INVALID_MESSAGES: &str = "socketcluster_backplane_invalid_messages_total";
    /// Histogram (seconds): from `publish` to the backplane's confirmation.
    pub const PUBLISH_LATENCY: &str = "socketcluster_backplane_publish_latency_seconds";
    /// Counter: successful reconnections.
    pub const RECONNECTS: &str = "socketcluster_backplane_reconnects_total";
    /// Gauge: channels subscribed on the backplane (summed over the brokers of a process).
    pub const CHANNELS_SUBSCRIBED: &str = "socketcluster_backplane_channels_subscribed";
    /// Gauge: backplane connections that are up (summed over the brokers of a process).
    pub const CONNECTIONS_UP: &str = "socketcluster_backplane_connections_up";

    /// Register the descriptions of these metrics with the installed recorder (optional).
    pub fn describe() {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            PUBLISHED,
            "Publications written to the backplane and confirmed"
        );
        describe_counter!(
            PUBLISH_FAILURES,
            "Publications that failed to reach the backplane"
        );
        describe_counter!(RECEIVED, "Publications received from other instances");
        describe_counter!(ECHOES_SKIPPED, "Own publications echoed back and skipped");
        describe_counter!(
            INVALID_MESSAGES,
            "Received messages that were not valid envelopes"
        );
        describe_histogram!(
            PUBLISH_LATENCY,
            Unit::Seconds,
            "Time from publish to backplane confirmation"
        );
        describe_counter!(RECONNECTS, "Successful backplane reconnections");
        describe_gauge!(CHANNELS_SUBSCRIBED, "Channels subscribed on the backplane");
        describe_gauge!(CONNECTIONS_UP, "Backplane connections that are up");
    }
}

use metric_names as m;

const BACKEND: &str = "nats";

#[derive(Default)]
pub(crate) struct Counters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    echoes_skipped: AtomicU64,
    invalid_messages: AtomicU64,
    reconnects: AtomicU64,
    channels_subscribed: AtomicU64,
}

impl Counters {
    pub(crate) fn published(&self, latency: Duration) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::PUBLISHED, "backend" => BACKEND).increment(1);
        metrics::histogram!(m::PUBLISH_LATENCY, "backend" => BACKEND).record(latency.as_secs_f64());
    }

    pub(crate) fn publish_failed(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::PUBLISH_FAILURES, "backend" => BACKEND).increment(1);
    }

    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RECEIVED, "backend" => BACKEND).increment(1);
    }

    pub(crate) fn echo_skipped(&self) {
        self.echoes_skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ECHOES_SKIPPED, "backend" => BACKEND).increment(1);
    }

    pub(crate) fn invalid_message(&self) {
        self.invalid_messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::INVALID_MESSAGES, "backend" => BACKEND).increment(1);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RECONNECTS, "backend" => BACKEND).increment(1);
    }

    pub(crate) fn channels_added(&self, n: usize) {
        self.channels_subscribed
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::gauge!(m::CHANNELS_SUBSCRIBED, "backend" => BACKEND).increment(n as f64);
    }

    pub(crate) fn channels_removed(&self, n: usize) {
        self.channels_subscribed
            .fetch_sub(n as u64, Ordering::Relaxed);
        metrics::gauge!(m::CHANNELS_SUBSCRIBED, "backend" => BACKEND).decrement(n as f64);
    }

    pub(crate) fn connection_up(&self, up: bool) {
        let g = metrics::gauge!(m::CONNECTIONS_UP, "backend" => BACKEND);
        if up {
            g.increment(1.0);
        } else {
            g.decrement(1.0);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            published: self.published.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            echoes_skipped: self.echoes_skipped.load(Ordering::Relaxed),
            invalid_messages: self.invalid_messages.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            channels_subscribed: self.channels_subscribed.load(Ordering::Relaxed),
        }
    }
}
