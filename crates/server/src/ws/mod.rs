//! A lean server-role WebSocket framing layer (RFC 6455, no extensions).
//!
//! [`ServerWs`] replaces tokio-tungstenite's `WebSocketStream` for server sockets. It
//! exists for memory: an idle socket holds **no buffer at all** (no read buffer, no
//! write buffer capacity, no codec state), and reads do not zero-fill a buffer first.
//!
//! * **Reading** goes into a per-thread scratch buffer (16 KiB, borrowed only inside one
//!   synchronous poll). Every complete frame in it is parsed and its payload unmasked
//!   and copied into an owned [`Bytes`](bytes::Bytes) /
//!   [`Utf8Bytes`](tokio_tungstenite::tungstenite::Utf8Bytes). Only the bytes that cannot be
//!   handed out in this call (the rest of a partial frame, or complete frames after the
//!   message being returned) are copied into a per-socket buffer, which is freed as
//!   soon as it has been consumed. A partial frame whose header announces a large
//!   payload is completed by reading straight into the per-socket buffer (reserved to
//!   the frame's length, never zero-filled by us) and, when the frame fills that buffer,
//!   handed out without another copy.
//! * **Fragmented messages** are accumulated in a per-socket buffer that exists only
//!   while a message is incomplete.
//! * **Writing** serializes frames into a per-socket buffer that is freed once it has
//!   been written out.
//!
//! Three layers, each using only the ones below it:
//!
//! * [`frame`]: pure framing (header parsing and validation, unmasking, encoding);
//! * [`message`]: message assembly (fragments, UTF-8 validation, control frames);
//! * [`stream`]: the tokio stream adapter ([`ServerWs`]) and its buffers.

mod frame;
mod message;
mod stream;
#[cfg(test)]
mod tests;

pub(crate) use frame::WsError;
pub(crate) use message::WsMessage;
pub(crate) use stream::{Io, ServerWs};
