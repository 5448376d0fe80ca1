#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod channel;
mod client;
mod command;
mod connection;
mod connector;
pub mod error;
pub mod events;
mod options;
mod queue;
pub mod rpc;
mod session;
mod transport;
mod watch;

pub use auth::{
    AuthState, AuthStatus, BoxError, FileTokenStore, MemoryTokenStore, ReauthReason, TokenProvider,
    TokenRequest, TokenStore,
};
pub use channel::{
    ChannelState, ChannelStatus, Message, Recovery, SubscribeOptions, Subscription,
    TypedSubscription,
};
pub use client::Client;
pub use error::{
    AuthenticateError, BadConnectionType, ConnectError, ConnectErrorKind, InvokeError,
    InvokeErrorKind, PublishError, RespondError, SubscribeError, SubscribeErrorKind,
    TokenStoreError, TransmitError,
};
pub use events::{ConnectStatus, Event, Events, PendingSubscriptions};
pub use options::{ClientBuilder, ClientOptions};
pub use rpc::{Procedure, Receiver, Request, Transmitted};
pub use session::ConnectionState;
pub use socketcluster_rs_protocol::{
    CloseCode, ErrorName, ErrorObject, NotRecovered, ProtocolVersion, ReconnectOptions,
    StreamPosition, WireError,
};
pub use watch::StateWatch;

#[cfg(test)]
mod tests;
