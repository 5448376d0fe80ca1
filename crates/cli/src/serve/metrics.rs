//! Prometheus exposition for `socketcluster serve`: installs the exporter for the
//! `metrics` facade (which the server library and the broker backends emit to) and
//! mirrors the server's counters at scrape time.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use socketcluster_rs_server::Server;

/// Install the global recorder. Returns `None` (metrics disabled, with a warning) if a
/// recorder is already installed.
pub(crate) fn install() -> Option<PrometheusHandle> {
    // The proxy's backend latency is a real histogram (buckets from 0.5 ms to 5 s), so
    // quantiles can be aggregated across instances.
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                "socketcluster_proxy_duration_seconds".into(),
            ),
            socketcluster_rs_proxy::DURATION_BUCKETS,
        )
        .unwrap_or_else(|_| PrometheusBuilder::new());
    match builder.install_recorder() {
        Ok(handle) => {
            let h = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    h.run_upkeep();
                }
            });
            describe();
            socketcluster_rs_server::metrics::describe();
            socketcluster_rs_proxy::describe_metrics();
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics is disabled");
            None
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "socketcluster_sockets",
        "Open (handshake completed) sockets"
    );
    describe_gauge!(
        "socketcluster_sockets_pending",
        "Sockets waiting for their #handshake"
    );
    describe_gauge!(
        "socketcluster_sockets_authenticated",
        "Open sockets with a valid token"
    );
    describe_gauge!(
        "socketcluster_channels",
        "Channels with at least one local subscriber"
    );
    describe_gauge!(
        "socketcluster_runtime_alive_tasks",
        "Live tokio tasks of the server process (socket tasks, timers, brokers); flat under steady churn"
    );
    describe_counter!(
        "socketcluster_connections_accepted_total",
        "WebSocket connections accepted"
    );
    describe_counter!(
        "socketcluster_handshakes_completed_total",
        "Handshakes completed"
    );
    describe_counter!(
        "socketcluster_messages_received_total",
        "WebSocket data messages received"
    );
    describe_counter!(
        "socketcluster_messages_sent_total",
        "WebSocket text messages sent"
    );
    describe_counter!(
        "socketcluster_bytes_received_total",
        "Bytes of data messages received"
    );
    describe_counter!(
        "socketcluster_bytes_sent_total",
        "Bytes of text messages sent"
    );
    describe_counter!(
        "socketcluster_publications_total",
        "Publications accepted (clients, exchange, HTTP API)"
    );
    describe_counter!(
        "socketcluster_raw_messages_total",
        "Inbound messages that were not packets"
    );
    describe_counter!(
        "socketcluster_slow_consumer_disconnects_total",
        "Sockets dropped for exceeding the outbound queue limit"
    );
    describe_counter!(
        "socketcluster_http_rejections_total",
        "HTTP upgrade requests refused"
    );
}

/// Copy the server's counters into the recorder (called on every scrape).
/// How many of the server's sockets are authenticated.
pub(crate) fn authenticated_sockets(server: &Server) -> usize {
    server
        .clients()
        .iter()
        .filter(|c| c.is_authenticated())
        .count()
}

pub(crate) fn record_gauges(server: &Server) {
    let s = server.stats();
    let authenticated = authenticated_sockets(server);
    metrics::gauge!("socketcluster_sockets").set(s.clients as f64);
    metrics::gauge!("socketcluster_sockets_pending").set(s.pending_clients as f64);
    metrics::gauge!("socketcluster_sockets_authenticated").set(authenticated as f64);
    metrics::gauge!("socketcluster_channels").set(s.channels as f64);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!("socketcluster_runtime_alive_tasks")
            .set(rt.metrics().num_alive_tasks() as f64);
    }
    metrics::counter!("socketcluster_connections_accepted_total").absolute(s.connections_accepted);
    metrics::counter!("socketcluster_handshakes_completed_total").absolute(s.handshakes_completed);
    metrics::counter!("socketcluster_messages_received_total").absolute(s.messages_received);
    metrics::counter!("socketcluster_messages_sent_total").absolute(s.messages_sent);
    metrics::counter!("socketcluster_bytes_received_total").absolute(s.bytes_received);
    metrics::counter!("socketcluster_bytes_sent_total").absolute(s.bytes_sent);
    metrics::counter!("socketcluster_publications_total").absolute(s.publications);
    metrics::counter!("socketcluster_raw_messages_total").absolute(s.raw_messages);
    metrics::counter!("socketcluster_slow_consumer_disconnects_total")
        .absolute(s.slow_consumer_disconnects);
    metrics::counter!("socketcluster_http_rejections_total").absolute(s.http_rejections);
}
