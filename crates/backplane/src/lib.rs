//! The pieces shared by the `socketcluster-server` backplanes
//! (`socketcluster-rs-broker-redis` and `socketcluster-rs-broker-nats`), so that both speak the
//! same format and report the same things:
//!
//! * [`envelope`]: the binary message format written to the backplane (version 1), with
//!   the publishing broker's [`InstanceId`]; [`inbound::deliver`]: the checks made on a
//!   received message (foreign data, own echoes, wrong channel) and its local delivery;
//! * [`Health`], [`NodeHealth`], [`BackplaneState`] (for `/health`) and [`Stats`];
//!   [`StateChanges`] to follow the state ([`StateSender`] is the broker's side);
//! * [`metric_names`] and [`Counters`]: the metrics reported through the `metrics`
//!   facade, labelled `backend="redis"` or `backend="nats"`;
//! * [`backoff`](fn@backoff) and [`jitter`]: reconnect delays;
//! * [`LinkOptions`]: the connection, reconnect and queue settings of both brokers;
//! * [`request`]: the round trip of a command (subscribe, publish ...) between a broker
//!   handle and its connection task.
//!
//! The broker crates re-export the public types (`BackplaneState`, `Health`,
//! `NodeHealth`, `Stats`, `InstanceId`, `metric_names`, `LinkOptions`,
//! `StateChanges`); applications use them from
//! there.
//!
//! The harness and scenarios shared by the brokers' integration tests are in the
//! unpublished `sc-test-support` crate (`backplane_suite`, feature `backplane-suite`).
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod envelope;
mod health;
pub mod inbound;
mod metrics;
mod options;
pub mod request;
mod state;

pub use backoff::{backoff, jitter};
pub use envelope::InstanceId;
pub use health::{BackplaneState, Health, LastError, NodeHealth, Stats};
pub use metrics::{Counters, metric_names};
pub use options::LinkOptions;
pub use state::{StateChanges, StateSender};
