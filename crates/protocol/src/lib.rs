//! Sans-IO core of the SocketCluster protocol (versions 1 and 2), shared by the
//! `socketcluster-rs-client` and `socketcluster-rs-server` crates.
//!
//! Nothing here touches a socket, a clock or a runtime: the crate turns WebSocket text
//! frames into [`Frame`]s and packets back into the exact text the JavaScript
//! `sc-formatter` codec writes, and holds the protocol's tables (error names, close
//! codes, the reconnect-delay formula, `cid` allocation).
//!
//! References in the docs (`docs/PROTOCOL.md 3.1`, ...) point to the project's wire
//! reference, which was captured from `socketcluster-server` 20.0.1 and
//! `socketcluster-client` 20.0.2.
//!
//! # Example
//!
//! ```
//! use socketcluster_rs_protocol::{codec, Frame, Packet, ProtocolVersion, Role};
//!
//! // What the JS client sends first (docs/PROTOCOL.md 3.6.1):
//! let text = r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##;
//! let frame = codec::decode(text, Role::Server, ProtocolVersion::V2);
//! let Frame::Packet(Packet::Event(ev)) = frame else { panic!("not an event") };
//! assert_eq!(ev.event, "#handshake");
//! assert_eq!(ev.cid.as_ref().and_then(|c| c.as_u64()), Some(1));
//! // ... and it re-encodes to the same text:
//! assert_eq!(ev.encode(codec::KeyOrder::Client), text);
//! ```
#![forbid(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
pub mod backoff;
pub mod binary;
pub mod cid;
pub mod close;
pub mod codec;
pub mod error;
pub mod history;
mod json;
pub mod packet;
pub mod reserved;
pub mod version;

pub use backoff::{Backoff, ReconnectOptions};
pub use cid::{Cid, CidAllocator};
pub use close::{CloseCode, ReconnectAfterClose};
pub use codec::{BatchIndex, BatchItem, Frame, Indexed, KeyOrder};
pub use error::{ErrorName, ErrorObject, WireError};
pub use history::{NotRecovered, StreamPosition, SubscribeReply};
pub use packet::{EventPacket, Packet, ResponsePacket};
pub use serde_json::value::RawValue;
pub use version::{ProtocolVersion, Role};
