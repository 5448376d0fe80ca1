//! Counters kept as atomics (for [`crate::Stats`]) and reported through the `metrics`
//! facade (for whatever exporter the application installed), labelled with the backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Stats;

/// Names of the metrics reported through the `metrics` facade. Every metric has the
/// label `backend`: `"redis"` for `socketcluster-rs-broker-redis`, `"nats"` for
/// `socketcluster-rs-broker-nats` (see [`Counters::new`](crate::Counters::new)).
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

/// The counters of one broker: each event is counted in an atomic (read back with
/// [`Counters::snapshot`]) and reported through the `metrics` facade with the label
/// `backend`.
#[derive(Debug)]
pub struct Counters {
    backend: &'static str,
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    echoes_skipped: AtomicU64,
    invalid_messages: AtomicU64,
    reconnects: AtomicU64,
    channels_subscribed: AtomicU64,
}

impl Counters {
    /// Counters reported with the label `backend` = `backend` (`"redis"`, `"nats"`).
    pub fn new(backend: &'static str) -> Counters {
        Counters {
            backend,
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            received: AtomicU64::new(0),
            echoes_skipped: AtomicU64::new(0),
            invalid_messages: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            channels_subscribed: AtomicU64::new(0),
        }
    }

    /// The `backend` label.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// A publication was confirmed by the backplane after `latency`.
    pub fn published(&self, latency: Duration) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::PUBLISHED, "backend" => self.backend).increment(1);
        metrics::histogram!(m::PUBLISH_LATENCY, "backend" => self.backend)
            .record(latency.as_secs_f64());
    }

    /// A publication failed (the publisher got an error).
    pub fn publish_failed(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::PUBLISH_FAILURES, "backend" => self.backend).increment(1);
    }

    /// A publication from another instance was delivered locally.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RECEIVED, "backend" => self.backend).increment(1);
    }

    /// An own publication came back from the backplane and was skipped.
    pub fn echo_skipped(&self) {
        self.echoes_skipped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ECHOES_SKIPPED, "backend" => self.backend).increment(1);
    }

    /// A received message was dropped (not a valid envelope).
    pub fn invalid_message(&self) {
        self.invalid_messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::INVALID_MESSAGES, "backend" => self.backend).increment(1);
    }

    /// A lost connection was re-established (and resubscribed).
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RECONNECTS, "backend" => self.backend).increment(1);
    }

    /// `n` channels were subscribed on the backplane.
    pub fn channels_added(&self, n: usize) {
        self.channels_subscribed
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::gauge!(m::CHANNELS_SUBSCRIBED, "backend" => self.backend).increment(n as f64);
    }

    /// `n` channels were unsubscribed from the backplane.
    pub fn channels_removed(&self, n: usize) {
        self.channels_subscribed
            .fetch_sub(n as u64, Ordering::Relaxed);
        metrics::gauge!(m::CHANNELS_SUBSCRIBED, "backend" => self.backend).decrement(n as f64);
    }

    /// A connection came up (`true`) or went down (`false`).
    pub fn connection_up(&self, up: bool) {
        let g = metrics::gauge!(m::CONNECTIONS_UP, "backend" => self.backend);
        if up {
            g.increment(1.0);
        } else {
            g.decrement(1.0);
        }
    }

    /// The counters' current values.
    pub fn snapshot(&self) -> Stats {
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
