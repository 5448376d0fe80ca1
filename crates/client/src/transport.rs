//! What the WebSocket runs over: TCP by default, or a byte stream the options supply
//! (tests use in-memory pipes with paused time).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::BoxFuture;

/// A byte stream the WebSocket runs over (TCP, or an in-memory pipe in tests).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub(crate) type BoxedIo = Box<dyn Io>;

/// Opens the byte stream instead of TCP (tests use in-memory pipes with paused time).
pub(crate) type TransportFactory =
    Arc<dyn Fn() -> BoxFuture<'static, std::io::Result<BoxedIo>> + Send + Sync>;
