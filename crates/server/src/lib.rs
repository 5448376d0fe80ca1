#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod broker;
mod busy_poll;
pub mod channel;
mod config;
mod error;
mod events;
pub mod exchange;
mod glob;
pub mod history;
mod hub;
mod limits;
mod listener;
pub mod metrics;
pub mod middleware;
mod per_ip;
mod request;
pub mod rpc;
mod server;
mod socket;
mod state;
mod task;
pub mod tls;
mod ws;
#[cfg(feature = "ws-internals")]
#[doc(hidden)]
pub mod ws_internals;

#[cfg(feature = "axum")]
pub mod axum;

pub use channel::Publication;
pub use config::{ServerConfig, UnhandledProcedure};
pub use error::{
    AuthTokenError, ConfigError, InvokeError, KickOutError, PublishError, SendError, ServerError,
};
pub use events::{AuthState, ServerEvent, ServerEvents, StatsSnapshot};
pub use exchange::{Exchange, ExchangeSubscription};
pub use history::{HistoryConfig, HistoryRule, StreamPosition};
pub use limits::{CLOSE_MESSAGE_TOO_BIG, CLOSE_POLICY_VIOLATION, Limits, RateLimit};
pub use middleware::{Block, HandshakeRequest, InboundAction, InboundKind, InboundRawAction};
pub use rpc::{ReceivedEvent, Request};
pub use server::{ChannelInfo, Server, SocketInfo};
pub use socket::{CloseInfo, Socket, SocketState};
pub use socketcluster_rs_protocol::{ErrorObject, ProtocolVersion, RawValue, WireError};
