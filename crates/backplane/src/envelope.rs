//! The backplane message formats (versions 1 and 2).
//!
//! The same format is used by `socketcluster-rs-broker-redis` and `socketcluster-rs-broker-nats`
//! (both use this module; the golden test below pins the bytes).
//!
//! ```text
//! offset  size  field
//! 0       2     magic "SC"
//! 2       1     format version = 1
//! 3       1     flags: bit 0 = data present (a publish without data has no data bytes)
//! 4       16    instance id of the publishing broker (random per broker instance)
//! 20      4     channel name length N, unsigned big-endian
//! 24      N     channel name, UTF-8
//! 24+N    rest  the published data: the raw JSON text exactly as the publisher sent it
//! ```
//!
//! Version 2 is version 1 with flag bit 1 = "position present" and, after the channel
//! name, the publication's place in the channel's stream (docs/PROTOCOL.md 14.16): one
//! byte E, the epoch (E bytes, UTF-8), the offset in decimal ASCII digits and a `:`,
//! then the data. A Redis script appends the position to a header this module writes
//! ([`encode_positioned_header`]), so the position is written where it is assigned.
//!
//! The data bytes are copied verbatim: they are never parsed into a value and
//! re-serialized. A receiver only checks that they are one valid JSON value before handing
//! them to the server (a malformed message from a foreign writer is dropped and counted,
//! never forwarded to clients).

use std::fmt;

use serde_json::value::RawValue;

/// Magic bytes at the start of every envelope.
const MAGIC: &[u8; 2] = b"SC";
/// Envelope format version of publications without a position.
const VERSION: u8 = 1;
/// Envelope format version of publications with a stream position.
const VERSION_POSITIONED: u8 = 2;
const FLAG_DATA: u8 = 1;
const FLAG_POSITION: u8 = 2;
const HEADER: usize = 24;

/// Identifies one broker instance (one server process) on the backplane.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub [u8; 16]);

impl InstanceId {
    /// A new random instance id.
    pub fn random() -> InstanceId {
        InstanceId(rand::random())
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Encode a publication into an envelope.
pub fn encode(instance: InstanceId, channel: &str, data: Option<&RawValue>) -> Vec<u8> {
    let data = data.map(RawValue::get);
    let mut out = Vec::with_capacity(HEADER + channel.len() + data.map_or(0, str::len));
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(if data.is_some() { FLAG_DATA } else { 0 });
    out.extend_from_slice(&instance.0);
    // Channel names longer than 4 GiB cannot reach a broker (frames are far smaller).
    let len = u32::try_from(channel.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(channel.as_bytes());
    if let Some(d) = data {
        out.extend_from_slice(d.as_bytes());
    }
    out
}

/// The header of a version-2 envelope (everything before the position): whoever assigns
/// the position appends `[E][epoch][offset digits]:` and then the data.
pub fn encode_positioned_header(instance: InstanceId, channel: &str, has_data: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + channel.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION_POSITIONED);
    out.push(FLAG_POSITION | if has_data { FLAG_DATA } else { 0 });
    out.extend_from_slice(&instance.0);
    let len = u32::try_from(channel.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(channel.as_bytes());
    out
}

/// A whole version-2 envelope (what the Redis script assembles; for tests and other
/// writers).
pub fn encode_positioned(
    instance: InstanceId,
    channel: &str,
    data: Option<&RawValue>,
    offset: u64,
    epoch: &str,
) -> Vec<u8> {
    let mut out = encode_positioned_header(instance, channel, data.is_some());
    let e = epoch.as_bytes();
    out.push(u8::try_from(e.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&e[..e.len().min(255)]);
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b':');
    if let Some(d) = data {
        out.extend_from_slice(d.get().as_bytes());
    }
    out
}

/// A decoded envelope, borrowing from the received bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The publishing broker.
    pub instance: InstanceId,
    /// The SocketCluster channel name.
    pub channel: &'a str,
    /// The published JSON text, unvalidated (`None`: a publish without data).
    pub data: Option<&'a str>,
    /// Offset and epoch (version 2, channels with history).
    pub position: Option<(u64, &'a str)>,
}

/// Why a received message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Bad magic or a header shorter than 24 bytes.
    #[error("not a SocketCluster envelope (bad magic or truncated header)")]
    NotAnEnvelope,
    /// A format version this module does not read.
    #[error("unsupported envelope version {0}")]
    Version(u8),
    /// The channel name is cut short, or there are bytes after it with no data flag.
    #[error("truncated channel name")]
    Truncated,
    /// The channel name or the data is not UTF-8.
    #[error("channel name or data is not UTF-8")]
    Utf8,
    /// The data is not one valid JSON value.
    #[error("data is not valid JSON")]
    Json,
}

/// Decode an envelope (does not validate the JSON; see [`Envelope::raw_data`]).
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    if bytes.len() < HEADER || &bytes[..2] != MAGIC {
        return Err(DecodeError::NotAnEnvelope);
    }
    if bytes[2] != VERSION && bytes[2] != VERSION_POSITIONED {
        return Err(DecodeError::Version(bytes[2]));
    }
    let has_data = bytes[3] & FLAG_DATA != 0;
    let positioned = bytes[2] == VERSION_POSITIONED && bytes[3] & FLAG_POSITION != 0;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[4..20]);
    let len = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]) as usize;
    let rest = &bytes[HEADER..];
    if rest.len() < len {
        return Err(DecodeError::Truncated);
    }
    let (channel, mut data) = rest.split_at(len);
    let channel = std::str::from_utf8(channel).map_err(|_| DecodeError::Utf8)?;
    let mut position = None;
    if positioned {
        let (&e, after) = data.split_first().ok_or(DecodeError::Truncated)?;
        let e = usize::from(e);
        if after.len() < e {
            return Err(DecodeError::Truncated);
        }
        let (epoch, after) = after.split_at(e);
        let epoch = std::str::from_utf8(epoch).map_err(|_| DecodeError::Utf8)?;
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 || after.get(digits) != Some(&b':') {
            return Err(DecodeError::Truncated);
        }
        let offset = std::str::from_utf8(&after[..digits])
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or(DecodeError::Truncated)?;
        position = Some((offset, epoch));
        data = &after[digits + 1..];
    }
    let data = if has_data {
        Some(std::str::from_utf8(data).map_err(|_| DecodeError::Utf8)?)
    } else if data.is_empty() {
        None
    } else {
        return Err(DecodeError::Truncated);
    };
    Ok(Envelope {
        instance: InstanceId(id),
        channel,
        data,
        position,
    })
}

impl Envelope<'_> {
    /// The data as a validated raw JSON value (no re-encoding: the text is kept as is).
    pub fn raw_data(&self) -> Result<Option<Box<RawValue>>, DecodeError> {
        match self.data {
            None => Ok(None),
            Some(d) => RawValue::from_string(d.to_owned())
                .map(Some)
                .map_err(|_| DecodeError::Json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn golden_bytes_are_stable() {
        let id = InstanceId([0xAB; 16]);
        let bytes = encode(id, "a.b", Some(&raw(r#"{"x":1}"#)));
        let mut expected = b"SC\x01\x01".to_vec();
        expected.extend_from_slice(&[0xAB; 16]);
        expected.extend_from_slice(&[0, 0, 0, 3]);
        expected.extend_from_slice(b"a.b{\"x\":1}");
        assert_eq!(bytes, expected);
        assert_eq!(
            hex::encode(&bytes),
            concat!(
                "53430101",
                "abababababababababababababababab",
                "00000003",
                "612e627b2278223a317d"
            )
        );
    }

    #[test]
    fn round_trips_data_verbatim() {
        let id = InstanceId::random();
        // Whitespace and key order survive: the bytes are never re-encoded.
        let data = raw(r#"{ "b" : [1, 2.50, "\u00e9"], "a":null }"#);
        let bytes = encode(id, "ch ✓ *>", Some(&data));
        let env = decode(&bytes).unwrap();
        assert_eq!(env.instance, id);
        assert_eq!(env.channel, "ch ✓ *>");
        assert_eq!(env.data, Some(data.get()));
        assert_eq!(env.raw_data().unwrap().unwrap().get(), data.get());
    }

    #[test]
    fn absent_data_is_distinct_from_null() {
        let id = InstanceId::random();
        let none_bytes = encode(id, "c", None);
        let none = decode(&none_bytes).unwrap();
        assert_eq!(none.data, None);
        assert!(none.raw_data().unwrap().is_none());
        let null_bytes = encode(id, "c", Some(&raw("null")));
        let null = decode(&null_bytes).unwrap();
        assert_eq!(null.data, Some("null"));
    }

    #[test]
    fn positioned_envelopes_carry_offset_and_epoch() {
        let id = InstanceId([0xAB; 16]);
        let bytes = encode_positioned(id, "a.b", Some(&raw(r#"{"x":1}"#)), 42, "Ep0ch123");
        let mut expected = b"SC\x02\x03".to_vec();
        expected.extend_from_slice(&[0xAB; 16]);
        expected.extend_from_slice(&[0, 0, 0, 3]);
        expected.extend_from_slice(b"a.b\x08Ep0ch12342:{\"x\":1}");
        assert_eq!(bytes, expected);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.position, Some((42, "Ep0ch123")));
        assert_eq!(env.data, Some(r#"{"x":1}"#));
        let none = encode_positioned(id, "c", None, 1, "e");
        let env = decode(&none).unwrap();
        assert_eq!((env.position, env.data), (Some((1, "e")), None));
        // A version-1 envelope has no position.
        assert_eq!(decode(&encode(id, "c", None)).unwrap().position, None);
        for bad in [&b"SC\x02\x02"[..], &b"SC\x02\x03"[..]] {
            let mut b = bad.to_vec();
            b.extend_from_slice(&[0; 16]);
            b.extend_from_slice(&[0, 0, 0, 1]);
            b.extend_from_slice(b"c\x02ep12x");
            assert_eq!(decode(&b), Err(DecodeError::Truncated));
        }
    }

    #[test]
    fn empty_channel_round_trips() {
        let id = InstanceId::random();
        let bytes = encode(id, "", Some(&raw("1")));
        assert_eq!(decode(&bytes).unwrap().channel, "");
    }

    #[test]
    fn rejects_foreign_and_damaged_messages() {
        assert_eq!(decode(b"hello"), Err(DecodeError::NotAnEnvelope));
        assert_eq!(decode(&[b'X'; 40]).unwrap_err(), DecodeError::NotAnEnvelope);
        let id = InstanceId([1; 16]);
        let mut v3 = encode(id, "c", None);
        v3[2] = 3;
        assert_eq!(decode(&v3), Err(DecodeError::Version(3)));
        let good = encode(id, "channel", None);
        assert_eq!(decode(&good[..good.len() - 2]), Err(DecodeError::Truncated));
        let mut trailing = encode(id, "c", None);
        trailing.push(b'1');
        assert_eq!(decode(&trailing), Err(DecodeError::Truncated));
        let mut bad_utf8 = encode(id, "c", None);
        bad_utf8[24] = 0xFF;
        assert_eq!(decode(&bad_utf8), Err(DecodeError::Utf8));
        let bad_json = encode(id, "c", Some(&raw("1")));
        let mut bad_json = bad_json;
        *bad_json.last_mut().unwrap() = b'{';
        assert_eq!(
            decode(&bad_json).unwrap().raw_data().unwrap_err(),
            DecodeError::Json
        );
    }
}
