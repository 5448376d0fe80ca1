//! A NATS core pub/sub backplane for `socketcluster-server`: several server instances
//! share their channels, so that a publication on any instance reaches the subscribers of
//! every instance — the job `scc-broker` does for the JavaScript SocketCluster
//! (docs/PROTOCOL.md 9.6), without extra processes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use socketcluster_rs_broker_nats::{NatsBroker, NatsBrokerOptions};
//! use socketcluster_rs_server::{Server, ServerConfig};
//!
//! let broker = NatsBroker::connect("nats://127.0.0.1:4222", NatsBrokerOptions::default()).await?;
//! let server = Server::with_broker(ServerConfig::default(), Arc::new(broker.clone()))?;
//! assert!(broker.health().is_connected());
//! # drop(server); Ok(()) }
//! ```
//!
//! # Subjects
//!
//! Channel names are never used as subjects directly: each channel is one subject token
//! made of its base64url-encoded UTF-8 name under a prefix (`sc.c.<base64url>`; long and
//! empty names use `sc.h.<sha256 hex>`). A channel named `a.*`, `>` or `a b` therefore
//! cannot subscribe to, or publish into, any other channel. See [`channel_subject`].
//!
//! # Subscriptions
//!
//! The server calls `subscribe` when a channel gets its first local subscriber and
//! `unsubscribe` when the last one leaves; the broker sends `SUB`/`UNSUB`. `subscribe`
//! resolves after the NATS server processed the `SUB` (a round trip through a private
//! inbox), so a publication made anywhere after a client's subscribe was acknowledged
//! reaches it.
//!
//! # Envelope, double delivery and ordering
//!
//! Each publication is sent as a small binary envelope: the magic `SC`, a version byte, a
//! flags byte, the publishing broker's 16-byte [`InstanceId`], the channel name, then the
//! published JSON **bytes exactly as received** (never re-encoded). The format is the same
//! as `socketcluster-rs-broker-redis`'s (see `socketcluster_rs_backplane::envelope`).
//!
//! The publishing instance **delivers to its own subscribers immediately**, inside
//! `publish`, then queues the envelope; its echo from NATS is recognised by the instance
//! id and skipped. So every subscriber receives a publication exactly once, and local
//! delivery keeps working while NATS is down.
//!
//! Ordering: publications of one publisher are delivered locally in call order and are
//! written, in call order, on the instance's single NATS connection; NATS delivers one
//! connection's messages to a subscriber in order. So every subscriber sees one
//! publisher's publications on a channel in publish order. Different publishers may
//! interleave differently on different instances.
//!
//! A publication's future resolves once the NATS server has processed it: NATS core has
//! no acknowledgement, so the broker follows each batch of publications with a message to
//! its own inbox and waits for it to come back (one round trip per batch, see
//! [`NatsBrokerOptions::max_batch`]).
//!
//! # Failure behaviour
//!
//! async-nats reconnects by itself (with this crate's backoff,
//! [`NatsBrokerOptions::reconnect_delay`]) and re-sends every subscription. Around that:
//!
//! * on disconnection: a `tracing` warning, [`NatsBroker::health`] /
//!   [`NatsBroker::state_changes`] report [`BackplaneState::Disconnected`], gauge
//!   `socketcluster_backplane_connections_up` drops;
//! * local traffic continues: local subscribers still receive local publications;
//! * every publication fails at once — the `publish` future returns a
//!   [`BrokerError`](socketcluster_rs_server::broker::BrokerError), which the server turns
//!   into an error reply to the publisher (never a silent success; async-nats would
//!   otherwise buffer it and send it later). A publication in flight when the connection
//!   drops also fails, although the server may have relayed it;
//! * subscribe/unsubscribe keep working (recorded; sent on reconnect);
//! * after reconnecting, a confirmation round trip behind the re-sent subscriptions must
//!   succeed before the state is `Connected` again and a reconnect is counted.
//!
//! # Metrics
//!
//! Through the `metrics` facade (see [`metric_names`], label `backend="nats"`): the same
//! metrics as `socketcluster-rs-broker-redis`. Also readable with [`NatsBroker::stats`].
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod command;
mod connection;
mod error;
mod options;
mod shared;
mod subject;

pub use broker::NatsBroker;
pub use error::Error;
pub use options::NatsBrokerOptions;
pub use socketcluster_rs_backplane::{
    BackplaneState, Health, InstanceId, LinkOptions, NodeHealth, StateChanges, Stats, metric_names,
};
pub use subject::{MAX_INLINE_CHANNEL_LEN, channel_subject};

/// The `backend` label of this crate's metrics.
const BACKEND: &str = "nats";

/// The error of a command or publication when the broker's connection task is gone.
const STOPPED: &str = "NATS broker stopped";
