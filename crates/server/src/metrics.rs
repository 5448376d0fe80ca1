//! Metrics emitted through the [`metrics`](https://docs.rs/metrics) facade. Install any
//! recorder (e.g. `metrics-exporter-prometheus`, as `socketcluster serve` does) to export
//! them; without one they cost next to nothing.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `socketcluster_server_connections_total` | counter | | WebSocket connections accepted |
//! | `socketcluster_server_handshakes_total` | counter | | handshakes completed |
//! | `socketcluster_server_auth_failures_total` | counter | `reason` (error name) | tokens that failed verification (handshake or `#authenticate`) |
//! | `socketcluster_server_subscriptions_total` | counter | `outcome` (`ok`, `error`) | `#subscribe` requests |
//! | `socketcluster_server_publications_in_total` | counter | `source` (`client`, `server`) | publications accepted |
//! | `socketcluster_server_publications_out_total` | counter | | publications handed to local subscribers |
//! | `socketcluster_server_rpc_total` | counter | `outcome` (`ok`, `error`, `unanswered`) | client → server invokes of application procedures |
//! | `socketcluster_server_rpc_duration_seconds` | histogram | | time from receiving an invoke to answering it |
//! | `socketcluster_server_slow_consumer_disconnects_total` | counter | | sockets dropped for exceeding the outbound queue limit |
//! | `socketcluster_server_limit_exceeded_total` | counter | `limit` (`batch_items`, `inbound_rate`, `inbound_byte_rate`, `connections_per_ip`, `handshake_rate_per_ip`) | sockets closed or upgrades refused by an abuse limit (docs/RELIABILITY.md, Limits) |
//! | `socketcluster_server_throttled_total` | counter | | times a socket started being throttled by its inbound rate limits |
//! | `socketcluster_server_exchange_dropped_total` | counter | | publications dropped for a full server-side subscription |
//! | `socketcluster_server_recoveries_total` | counter | `outcome` (`recovered`, `not_recovered`) | subscriptions that asked to recover a stream position |
//! | `socketcluster_server_recovered_publications_total` | counter | | publications replayed by recoveries |

use std::time::Instant;

pub(crate) fn connection_accepted() {
    metrics::counter!("socketcluster_server_connections_total").increment(1);
}

pub(crate) fn handshake_completed() {
    metrics::counter!("socketcluster_server_handshakes_total").increment(1);
}

pub(crate) fn auth_failure(reason: &str) {
    metrics::counter!("socketcluster_server_auth_failures_total", "reason" => reason.to_owned())
        .increment(1);
}

pub(crate) fn subscription(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("socketcluster_server_subscriptions_total", "outcome" => outcome)
        .increment(1);
}

pub(crate) fn publication_in(source: &'static str) {
    metrics::counter!("socketcluster_server_publications_in_total", "source" => source)
        .increment(1);
}

pub(crate) fn publications_out(n: usize) {
    if n > 0 {
        metrics::counter!("socketcluster_server_publications_out_total").increment(n as u64);
    }
}

pub(crate) fn rpc(outcome: &'static str, started: Instant) {
    metrics::counter!("socketcluster_server_rpc_total", "outcome" => outcome).increment(1);
    if outcome != "unanswered" {
        metrics::histogram!("socketcluster_server_rpc_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

pub(crate) fn slow_consumer_disconnect() {
    metrics::counter!("socketcluster_server_slow_consumer_disconnects_total").increment(1);
}

pub(crate) fn throttled() {
    metrics::counter!("socketcluster_server_throttled_total").increment(1);
}

pub(crate) fn limit_exceeded(limit: &'static str) {
    metrics::counter!("socketcluster_server_limit_exceeded_total", "limit" => limit).increment(1);
}

pub(crate) fn exchange_dropped() {
    metrics::counter!("socketcluster_server_exchange_dropped_total").increment(1);
}

pub(crate) fn recovery(recovered: bool, replayed: usize) {
    let outcome = if recovered {
        "recovered"
    } else {
        "not_recovered"
    };
    metrics::counter!("socketcluster_server_recoveries_total", "outcome" => outcome).increment(1);
    if replayed > 0 {
        metrics::counter!("socketcluster_server_recovered_publications_total")
            .increment(replayed as u64);
    }
}

/// Register descriptions of every metric above with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "socketcluster_server_connections_total",
        "WebSocket connections accepted"
    );
    describe_counter!(
        "socketcluster_server_handshakes_total",
        "Handshakes completed"
    );
    describe_counter!(
        "socketcluster_server_auth_failures_total",
        "Tokens that failed verification, by error name"
    );
    describe_counter!(
        "socketcluster_server_subscriptions_total",
        "#subscribe requests by outcome"
    );
    describe_counter!(
        "socketcluster_server_publications_in_total",
        "Publications accepted, by source"
    );
    describe_counter!(
        "socketcluster_server_publications_out_total",
        "Publications handed to local subscribers"
    );
    describe_counter!(
        "socketcluster_server_rpc_total",
        "Client invokes of procedures, by outcome"
    );
    describe_histogram!(
        "socketcluster_server_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "Time from receiving an invoke to answering it"
    );
    describe_counter!(
        "socketcluster_server_slow_consumer_disconnects_total",
        "Sockets dropped for exceeding the outbound queue limit"
    );
    describe_counter!(
        "socketcluster_server_exchange_dropped_total",
        "Publications dropped for a full server-side subscription"
    );
    describe_counter!(
        "socketcluster_server_recoveries_total",
        "Subscriptions that asked to recover a stream position, by outcome"
    );
    describe_counter!(
        "socketcluster_server_recovered_publications_total",
        "Publications replayed by recoveries"
    );
}
