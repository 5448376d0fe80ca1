//! A Redis pub/sub backplane for `socketcluster-server`: several server instances share
//! their channels, so that a publication on any instance reaches the subscribers of every
//! instance — the job `scc-broker` does for the JavaScript SocketCluster (docs/PROTOCOL.md
//! 9.6), without extra processes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use socketcluster_rs_broker_redis::{RedisBroker, RedisBrokerOptions};
//! use socketcluster_rs_server::{Server, ServerConfig};
//!
//! let broker = RedisBroker::connect(
//!     &["redis://127.0.0.1:6379".to_owned()],
//!     RedisBrokerOptions::default(),
//! )
//! .await?;
//! let server = Server::with_broker(ServerConfig::default(), Arc::new(broker.clone()))?;
//! assert!(broker.health().is_connected());
//! # drop(server); Ok(()) }
//! ```
//!
//! # Topologies
//!
//! * **One Redis server, or several independent ones** ([`Topology::Nodes`]): each
//!   channel lives on exactly one node, chosen by rendezvous hashing of the channel name
//!   over the nodes' `host:port` (see the `hashing` module source; every instance must be
//!   given the same nodes, in any order). Classic `PUBLISH`/`SUBSCRIBE`.
//! * **Redis Cluster** ([`Topology::Cluster`], detected automatically by default): sharded
//!   pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+), routed to the shard owning the channel's
//!   slot by redis-rs, which also moves subscriptions when slots migrate.
//!
//! Redis channel names are `prefix + channel` ([`RedisBrokerOptions::channel_prefix`],
//! default `"sc:"`). Redis channels are binary-safe and matched exactly (this crate never
//! uses pattern subscriptions), so any channel name — dots, `*`, spaces, unicode — is safe.
//!
//! # Subscriptions
//!
//! The server calls `subscribe` when a channel gets its first local subscriber and
//! `unsubscribe` when the last one leaves; the broker subscribes/unsubscribes the Redis
//! channel accordingly. `subscribe` resolves after Redis confirmed the subscription, so a
//! publication made anywhere after a client's subscribe was acknowledged reaches it.
//!
//! # Envelope, double delivery and ordering
//!
//! Each publication is written to Redis as a small binary envelope: the magic `SC`, a
//! version byte, a flags byte, the publishing broker's 16-byte [`InstanceId`], the channel
//! name, then the published JSON **bytes exactly as received** (never re-encoded). The
//! layout is documented in `socketcluster_rs_backplane::envelope` and shared with
//! `socketcluster-rs-broker-nats`.
//!
//! The publishing instance **delivers to its own subscribers immediately**, inside
//! `publish`, then queues the envelope; when the envelope comes back from Redis (the
//! instance is subscribed to the channel), the echo is recognised by the instance id and
//! skipped. So every subscriber receives a publication exactly once, and local delivery
//! keeps working while Redis is down.
//!
//! Ordering: publications of one publisher (one server connection, handled in order by the
//! server) are delivered locally in call order, and are queued in call order on the single
//! connection to the channel's node, written in pipelines in that order; Redis delivers a
//! connection's messages to each subscriber in the order it executed them. So every
//! subscriber everywhere sees one publisher's publications on a channel in publish order.
//! Publications of *different* publishers may interleave differently on different
//! instances (as with the JS SCC), and a failed publication is not retried.
//!
//! # Failure behaviour
//!
//! Each node has one connection owned by a task. When it is lost (the reader sees the
//! socket close, a command fails or times out, or the periodic `PING` does), the broker:
//!
//! * logs a `tracing` warning, marks the node disconnected ([`RedisBroker::health`],
//!   [`RedisBroker::state_changes`], gauge `socketcluster_backplane_connections_up`);
//! * keeps serving local traffic: local subscribers still receive local publications;
//! * fails every publication routed to that node at once — the `publish` future returns a
//!   [`BrokerError`](socketcluster_rs_server::broker::BrokerError), which the server turns
//!   into an error reply to the publisher (never a silent success). Publications already
//!   written when the connection died also fail, although Redis may have relayed them;
//! * accepts subscribe/unsubscribe (they only update the set of wanted channels; one
//!   issued while a reconnect attempt is in progress waits for that attempt, at most
//!   [`RedisBrokerOptions::connect_timeout`]);
//! * reconnects with exponential backoff and jitter
//!   ([`RedisBrokerOptions::reconnect_delay`]), resubscribes every channel that still has
//!   local subscribers, and only then reports the node connected again (and counts a
//!   reconnect). Publications made by other instances while this one was disconnected are
//!   lost for its subscribers (Redis pub/sub keeps no history).
//!
//! In cluster mode redis-rs itself re-establishes individual node connections and moves
//! sharded subscriptions when slots migrate; a node connection dropping triggers an
//! immediate `PING`, and only a failed command or `PING` makes this crate rebuild the
//! whole cluster connection (and resubscribe everything).
//!
//! # Metrics
//!
//! Through the `metrics` facade (see [`metric_names`]): published / failed / received /
//! echoes-skipped / invalid counters, a publish latency histogram, reconnects, and gauges
//! of subscribed channels and connections up. The same counters are readable with
//! [`RedisBroker::stats`].
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod command;
mod connection;
mod error;
mod hashing;
mod history;
mod link;
mod options;
mod shared;

pub use broker::RedisBroker;
pub use error::Error;
pub use options::{RedisBrokerOptions, Topology};
pub use socketcluster_rs_backplane::{
    BackplaneState, Health, InstanceId, LinkOptions, NodeHealth, StateChanges, Stats, metric_names,
};

/// The `backend` label of this crate's metrics.
const BACKEND: &str = "redis";

/// The error of a command or publication when the broker's connection task is gone.
const STOPPED: &str = "redis broker stopped";
