//! Channel publications.
//!
//! A publication is encoded **once** into the `#publish` frame and the same shared bytes
//! are handed to every local subscriber's bounded outbound queue (the channel registry
//! and fan-out are in `hub.rs`).

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use socketcluster_rs_protocol::RawValue;
use socketcluster_rs_protocol::history::publish_frame_at;
use socketcluster_rs_protocol::reserved::publish_frame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One published message: the channel, the data (raw JSON, never re-parsed by the
/// server), its stream position on a channel with history, and the pre-encoded
/// `#publish` frame shared by every recipient.
pub struct Publication {
    channel: Box<str>,
    data: Option<Box<RawValue>>,
    position: Option<(u64, Arc<str>)>,
    frame: Utf8Bytes,
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .field("bytes", &self.frame.len())
            .finish()
    }
}

impl Publication {
    /// Build a publication (encodes the frame).
    pub fn new(channel: &str, data: Option<Box<RawValue>>) -> Arc<Publication> {
        let frame = publish_frame(channel, data.as_deref());
        Arc::new(Publication {
            channel: channel.into(),
            data,
            position: None,
            frame: Utf8Bytes::from(frame),
        })
    }

    /// Build a publication of a channel with history, at `offset` in the stream `epoch`:
    /// its frame carries both (docs/PROTOCOL.md 14.16). Brokers that keep history call
    /// this.
    pub fn with_position(
        channel: &str,
        data: Option<Box<RawValue>>,
        offset: u64,
        epoch: Arc<str>,
    ) -> Arc<Publication> {
        let frame = publish_frame_at(channel, data.as_deref(), offset, &epoch);
        Arc::new(Publication {
            channel: channel.into(),
            data,
            position: Some((offset, epoch)),
            frame: Utf8Bytes::from(frame),
        })
    }

    /// The offset in its channel's stream (channels with history only).
    pub fn offset(&self) -> Option<u64> {
        self.position.as_ref().map(|(o, _)| *o)
    }

    /// The epoch of its channel's stream (channels with history only).
    pub fn epoch(&self) -> Option<&str> {
        self.position.as_ref().map(|(_, e)| &**e)
    }

    /// Both, as a [`StreamPosition`](socketcluster_rs_protocol::StreamPosition).
    pub fn position(&self) -> Option<socketcluster_rs_protocol::StreamPosition> {
        self.position
            .as_ref()
            .map(|(o, e)| socketcluster_rs_protocol::StreamPosition::new(&**e, *o))
    }

    /// The channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The published data as raw JSON (`None` when the publisher sent none).
    pub fn raw_data(&self) -> Option<&RawValue> {
        self.data.as_deref()
    }

    /// The published data deserialized (absent data deserializes from `null`).
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.as_deref().map_or("null", RawValue::get))
    }

    /// The encoded `#publish` frame sent to subscribers.
    pub fn frame(&self) -> &str {
        self.frame.as_str()
    }

    pub(crate) fn frame_bytes(&self) -> Utf8Bytes {
        self.frame.clone()
    }
}
