//! Channel history and recovery on the wire (docs/PROTOCOL.md 14.16), an extension of
//! this project that JS peers ignore:
//!
//! - a publication on a channel with history carries its stream position:
//!   `{"event":"#publish","data":{"channel":C,"data":D,"offset":N,"epoch":E}}`;
//! - a `#subscribe` may carry the position the client has reached:
//!   `{"channel":C,"recover":{"epoch":E,"offset":N}}`;
//! - the reply to `#subscribe` on a channel with history carries the stream's position and,
//!   when recovery was asked for, its outcome:
//!   `{"rid":n,"data":{"epoch":E,"offset":N,"recovered":true}}`, or
//!   `{"rid":n,"data":{"epoch":E,"offset":N,"recovered":false,"reason":"epoch"}}`.

use std::fmt;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::json;

/// A position in a channel's stream: the `offset` of the last publication (0 before the
/// first) within `epoch`, an identifier that changes whenever the stream's history may
/// have been lost (a restarted in-process server, Redis keys gone).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: String,
    /// The offset of the last publication (each publication takes the next one).
    pub offset: u64,
}

impl StreamPosition {
    /// A position.
    pub fn new(epoch: impl Into<String>, offset: u64) -> Self {
        StreamPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    /// `{"epoch":E,"offset":N}`.
    pub fn to_json(&self) -> String {
        let mut b = String::with_capacity(self.epoch.len() + 32);
        b.push_str("{\"epoch\":");
        json::push_str(&mut b, &self.epoch);
        b.push_str(",\"offset\":");
        b.push_str(&self.offset.to_string());
        b.push('}');
        b
    }

    /// Read `{"epoch":E,"offset":N}` (extra keys allowed); `None` for anything else.
    pub fn from_value(v: &Value) -> Option<StreamPosition> {
        let epoch = v.get("epoch")?.as_str()?;
        let offset = v.get("offset")?.as_u64()?;
        Some(StreamPosition::new(epoch, offset))
    }
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// The `#publish` frame of a publication on a channel with history:
/// `{"event":"#publish","data":{"channel":C[,"data":D],"offset":N,"epoch":E}}`.
pub fn publish_frame_at(
    channel: &str,
    data: Option<&RawValue>,
    offset: u64,
    epoch: &str,
) -> String {
    let mut b =
        String::with_capacity(channel.len() + data.map_or(0, |d| d.get().len()) + epoch.len() + 80);
    b.push_str("{\"event\":\"#publish\",\"data\":{\"channel\":");
    json::push_str(&mut b, channel);
    if let Some(d) = data {
        b.push_str(",\"data\":");
        b.push_str(d.get());
    }
    b.push_str(",\"offset\":");
    b.push_str(&offset.to_string());
    b.push_str(",\"epoch\":");
    json::push_str(&mut b, epoch);
    b.push_str("}}");
    b
}

/// Why a recovery was refused (`reason` of the `#subscribe` reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotRecovered {
    /// The stream's epoch is not the client's: its history may have been lost
    /// (`"epoch"`).
    EpochChanged,
    /// Publications after the client's offset are no longer in the history: trimmed to
    /// its size or expired (`"trimmed"`).
    Trimmed,
    /// More publications were missed than the server replays in one recovery
    /// (`"limit"`).
    TooMany,
    /// The client's offset is beyond the stream's (`"ahead"`).
    Ahead,
    /// A reason this version does not know (`reason` as sent).
    Other,
}

impl NotRecovered {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecovered::EpochChanged => "epoch",
            NotRecovered::Trimmed => "trimmed",
            NotRecovered::TooMany => "limit",
            NotRecovered::Ahead => "ahead",
            NotRecovered::Other => "other",
        }
    }

    fn parse(s: &str) -> NotRecovered {
        match s {
            "epoch" => NotRecovered::EpochChanged,
            "trimmed" => NotRecovered::Trimmed,
            "limit" => NotRecovered::TooMany,
            "ahead" => NotRecovered::Ahead,
            _ => NotRecovered::Other,
        }
    }
}

impl fmt::Display for NotRecovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotRecovered::EpochChanged => "the stream's epoch changed (its history may be lost)",
            NotRecovered::Trimmed => "the missed publications are no longer in the history",
            NotRecovered::TooMany => "more publications were missed than one recovery replays",
            NotRecovered::Ahead => "the client's position is beyond the stream's",
            NotRecovered::Other => "not recovered",
        })
    }
}

/// The data of the reply to `#subscribe` on a channel with history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeReply {
    /// The stream's position after the publications sent before the reply.
    pub position: StreamPosition,
    /// `None` when no recovery was asked for; `Ok(())` when every missed publication was
    /// sent before the reply; `Err(why)` when none was.
    pub recovery: Option<Result<(), NotRecovered>>,
}

impl SubscribeReply {
    /// Encode: `{"epoch":E,"offset":N[,"recovered":B[,"reason":R]]}`.
    pub fn to_raw(&self) -> Box<RawValue> {
        let mut b = self.position.to_json();
        b.pop();
        match self.recovery {
            None => {}
            Some(Ok(())) => b.push_str(",\"recovered\":true"),
            Some(Err(why)) => {
                b.push_str(",\"recovered\":false,\"reason\":");
                json::push_str(&mut b, why.as_str());
            }
        }
        b.push('}');
        RawValue::from_string(b).expect("valid JSON")
    }

    /// Read the reply data; `None` when it carries no position (a channel without
    /// history, or a server without the extension).
    pub fn parse(data: Option<&RawValue>) -> Option<SubscribeReply> {
        let v: Value = serde_json::from_str(data?.get()).ok()?;
        let position = StreamPosition::from_value(&v)?;
        let recovery = v.get("recovered").and_then(Value::as_bool).map(|ok| {
            if ok {
                Ok(())
            } else {
                Err(v
                    .get("reason")
                    .and_then(Value::as_str)
                    .map_or(NotRecovered::Other, NotRecovered::parse))
            }
        });
        Some(SubscribeReply { position, recovery })
    }
}

/// The position of a `#publish` data object, when it carries a valid one (`offset` a
/// non-negative integer and `epoch` a string).
pub fn publish_position(data: &Value) -> Option<StreamPosition> {
    StreamPosition::from_value(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positioned_publish_frame_keeps_channel_and_data_first() {
        let d = RawValue::from_string("{\"a\":1}".into()).unwrap();
        assert_eq!(
            publish_frame_at("news", Some(&d), 7, "Xy12ab9Q"),
            r##"{"event":"#publish","data":{"channel":"news","data":{"a":1},"offset":7,"epoch":"Xy12ab9Q"}}"##
        );
        assert_eq!(
            publish_frame_at("n\"s", None, 0, "e"),
            r##"{"event":"#publish","data":{"channel":"n\"s","offset":0,"epoch":"e"}}"##
        );
    }

    #[test]
    fn subscribe_replies_round_trip() {
        for r in [
            SubscribeReply {
                position: StreamPosition::new("e1", 0),
                recovery: None,
            },
            SubscribeReply {
                position: StreamPosition::new("e1", 42),
                recovery: Some(Ok(())),
            },
            SubscribeReply {
                position: StreamPosition::new("e2", 9),
                recovery: Some(Err(NotRecovered::TooMany)),
            },
        ] {
            let raw = r.to_raw();
            assert_eq!(SubscribeReply::parse(Some(&raw)), Some(r));
        }
        let raw = SubscribeReply {
            position: StreamPosition::new("e2", 9),
            recovery: Some(Err(NotRecovered::EpochChanged)),
        }
        .to_raw();
        assert_eq!(
            raw.get(),
            r#"{"epoch":"e2","offset":9,"recovered":false,"reason":"epoch"}"#
        );
        // A plain JS-style ack carries no position.
        assert_eq!(SubscribeReply::parse(None), None);
        let odd = RawValue::from_string(r#"{"epoch":1,"offset":2}"#.into()).unwrap();
        assert_eq!(SubscribeReply::parse(Some(&odd)), None);
    }
}
