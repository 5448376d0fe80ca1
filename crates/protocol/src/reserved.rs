//! Reserved `#` events and the exact shapes of their data (docs/PROTOCOL.md 3.6).
//!
//! Builders here write the same text as the JS peers (key order, omitted vs `null`);
//! parsers are as lenient as the JS receivers.

use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ErrorObject;
use crate::history::StreamPosition;
use crate::json;

/// `#handshake` (client -> server invoke).
pub const HANDSHAKE: &str = "#handshake";
/// `#authenticate` (client -> server invoke).
pub const AUTHENTICATE: &str = "#authenticate";
/// `#removeAuthToken` (both directions).
pub const REMOVE_AUTH_TOKEN: &str = "#removeAuthToken";
/// `#setAuthToken` (server -> client).
pub const SET_AUTH_TOKEN: &str = "#setAuthToken";
/// `#subscribe` (client -> server invoke).
pub const SUBSCRIBE: &str = "#subscribe";
/// `#unsubscribe` (client -> server).
pub const UNSUBSCRIBE: &str = "#unsubscribe";
/// `#publish` (both directions).
pub const PUBLISH: &str = "#publish";
/// `#kickOut` (server -> client).
pub const KICK_OUT: &str = "#kickOut";
/// `#disconnect` (protocol version 1 peers only).
pub const DISCONNECT: &str = "#disconnect";

fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("builders only produce valid JSON")
}

/// `{"authToken":<token or null>}`: the key is always present (docs/PROTOCOL.md 3.6.1).
pub fn handshake_request(token: Option<&str>) -> Box<RawValue> {
    let mut b = String::from("{\"authToken\":");
    match token {
        Some(t) => json::push_str(&mut b, t),
        None => b.push_str("null"),
    }
    b.push('}');
    raw(b)
}

/// A token as a server finds it in `#handshake` data or `#authenticate` data.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenField {
    /// Missing data, missing key, `null` or `""`: no token.
    Absent,
    /// A (non-empty) string.
    Token(String),
    /// Any other JSON value (a number, an object...): `AuthTokenError`
    /// "Invalid token format - Token must be a string".
    NotAString,
}

impl TokenField {
    fn from_value(v: Option<&Value>) -> TokenField {
        match v {
            None | Some(Value::Null) => TokenField::Absent,
            Some(Value::String(s)) if s.is_empty() => TokenField::Absent,
            Some(Value::String(s)) => TokenField::Token(s.clone()),
            Some(Value::Bool(false)) => TokenField::Absent,
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => TokenField::Absent,
            Some(_) => TokenField::NotAString,
        }
    }
}

/// The token in `#handshake` data (`data.authToken || null`).
pub fn parse_handshake_token(data: Option<&RawValue>) -> TokenField {
    let Some(data) = data else {
        return TokenField::Absent;
    };
    match serde_json::from_str::<Value>(data.get()) {
        Ok(Value::Object(m)) => TokenField::from_value(m.get("authToken")),
        _ => TokenField::Absent,
    }
}

/// The token in `#authenticate` data (the data itself).
pub fn parse_authenticate_token(data: Option<&RawValue>) -> TokenField {
    let v = data.and_then(|d| serde_json::from_str::<Value>(d.get()).ok());
    TokenField::from_value(v.as_ref())
}

/// The handshake reply data, as the server writes it and the client reads it
/// (docs/PROTOCOL.md 3.6.1).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HandshakeStatus {
    /// Socket id chosen by the server (`None` when a lenient server omitted it).
    pub id: Option<String>,
    /// The server's `pingTimeout` in ms, which the client adopts.
    pub ping_timeout: Option<u64>,
    /// Present only when a token was supplied and rejected.
    pub auth_error: Option<ErrorObject>,
    /// Whether the socket is authenticated.
    pub is_authenticated: bool,
}

impl HandshakeStatus {
    /// Encode in the server's key order: `id`, `pingTimeout`, `authError` (only when
    /// present), `isAuthenticated`.
    pub fn to_raw(&self) -> Box<RawValue> {
        let mut b = String::with_capacity(96);
        b.push('{');
        let mut first = true;
        let mut sep = |b: &mut String| {
            if !first {
                b.push(',');
            }
            first = false;
        };
        if let Some(id) = &self.id {
            sep(&mut b);
            json::push_key(&mut b, "id");
            json::push_str(&mut b, id);
        }
        if let Some(pt) = self.ping_timeout {
            sep(&mut b);
            b.push_str(&format!("\"pingTimeout\":{pt}"));
        }
        if let Some(e) = &self.auth_error {
            sep(&mut b);
            json::push_key(&mut b, "authError");
            b.push_str(&serde_json::to_string(&e.to_value()).unwrap_or_else(|_| "null".into()));
        }
        sep(&mut b);
        b.push_str(if self.is_authenticated {
            "\"isAuthenticated\":true"
        } else {
            "\"isAuthenticated\":false"
        });
        b.push('}');
        raw(b)
    }

    /// Parse a handshake reply's data (absent data gives the default status, which the
    /// JS client accepts, docs/PROTOCOL.md 8.2).
    pub fn parse(data: Option<&RawValue>) -> HandshakeStatus {
        let Some(Value::Object(m)) = data.and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
        else {
            return HandshakeStatus::default();
        };
        HandshakeStatus {
            id: m.get("id").and_then(Value::as_str).map(str::to_owned),
            ping_timeout: m.get("pingTimeout").and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            }),
            auth_error: match m.get("authError") {
                Some(Value::Object(e)) => Some(ErrorObject::from_map(e.clone())),
                _ => None,
            },
            is_authenticated: m
                .get("isAuthenticated")
                .is_some_and(|v| json::is_truthy(&v.to_string())),
        }
    }
}

/// `{"isAuthenticated":bool,"authError":err-or-null}`: the reply to a successful or
/// soft-failed `#authenticate` (docs/PROTOCOL.md 3.6.2).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthenticateResult {
    /// Whether the socket is now authenticated.
    pub is_authenticated: bool,
    /// The soft failure, if any.
    pub auth_error: Option<ErrorObject>,
}

impl AuthenticateResult {
    /// Encode (`authError` is written as `null` when absent).
    pub fn to_raw(&self) -> Box<RawValue> {
        let err = match &self.auth_error {
            Some(e) => serde_json::to_string(&e.to_value()).unwrap_or_else(|_| "null".into()),
            None => "null".to_owned(),
        };
        raw(format!(
            "{{\"isAuthenticated\":{},\"authError\":{}}}",
            self.is_authenticated, err
        ))
    }

    /// Parse; `None` when the reply carried no `isAuthenticated` field (a JS client then
    /// treats the authentication as successful, docs/PROTOCOL.md 3.6.2).
    pub fn parse(data: Option<&RawValue>) -> Option<AuthenticateResult> {
        let Value::Object(m) = serde_json::from_str::<Value>(data?.get()).ok()? else {
            return None;
        };
        let is_auth = m.get("isAuthenticated")?;
        Some(AuthenticateResult {
            is_authenticated: json::is_truthy(&is_auth.to_string()),
            auth_error: match m.get("authError") {
                Some(Value::Object(e)) => Some(ErrorObject::from_map(e.clone())),
                _ => None,
            },
        })
    }
}

/// `{"token":"<jwt>"}`, the data of `#setAuthToken`.
pub fn set_auth_token_data(token: &str) -> Box<RawValue> {
    let mut b = String::with_capacity(token.len() + 12);
    b.push_str("{\"token\":");
    json::push_str(&mut b, token);
    b.push('}');
    raw(b)
}

/// The token of a `#setAuthToken`: `None` when data is missing, `null` or has no string
/// `token` (a Rust server never sends that, docs/PROTOCOL.md 3.6.3).
pub fn parse_set_auth_token(data: Option<&RawValue>) -> Option<String> {
    let Value::Object(m) = serde_json::from_str::<Value>(data?.get()).ok()? else {
        return None;
    };
    m.get("token").and_then(Value::as_str).map(str::to_owned)
}

/// A `#subscribe` request.
#[derive(Clone, Debug)]
pub struct SubscribeRequest {
    /// Channel name (after any prefix).
    pub channel: String,
    /// `waitForAuth` (written only when true).
    pub wait_for_auth: bool,
    /// Subscription `data` (written only when truthy).
    pub data: Option<Box<RawValue>>,
    /// Every other key of the request data, in order (`subscriptionOptions` on the server,
    /// with `waitForAuth`, `data` and `recover` included as sent).
    pub options: serde_json::Map<String, Value>,
    /// The position to recover from (`"recover":{"epoch":E,"offset":N}`, this project's
    /// extension, docs/PROTOCOL.md 14.16; written last, ignored by JS servers).
    pub recover: Option<StreamPosition>,
}

impl PartialEq for SubscribeRequest {
    fn eq(&self, o: &Self) -> bool {
        self.channel == o.channel
            && self.wait_for_auth == o.wait_for_auth
            && crate::packet::raw_eq(&self.data, &o.data)
            && self.options == o.options
            && self.recover == o.recover
    }
}

impl SubscribeRequest {
    /// A plain request.
    pub fn new(channel: impl Into<String>) -> Self {
        SubscribeRequest {
            channel: channel.into(),
            wait_for_auth: false,
            data: None,
            options: serde_json::Map::new(),
            recover: None,
        }
    }

    /// Encode as the JS client: `channel`, then `waitForAuth` when true, then `data` when
    /// truthy (docs/PROTOCOL.md 3.6.5).
    pub fn to_raw(&self) -> Box<RawValue> {
        let mut b = String::with_capacity(self.channel.len() + 40);
        b.push_str("{\"channel\":");
        json::push_str(&mut b, &self.channel);
        if self.wait_for_auth {
            b.push_str(",\"waitForAuth\":true");
        }
        if let Some(d) = self.data.as_deref().filter(|d| json::is_truthy(d.get())) {
            b.push_str(",\"data\":");
            b.push_str(d.get());
        }
        if let Some(p) = &self.recover {
            b.push_str(",\"recover\":");
            b.push_str(&p.to_json());
        }
        b.push('}');
        raw(b)
    }

    /// Parse on the server: `None` when data is not an object with a string `channel`
    /// ("Subscribe channel name was malformatted").
    pub fn parse(data: Option<&RawValue>) -> Option<SubscribeRequest> {
        let Value::Object(mut m) = serde_json::from_str::<Value>(data?.get()).ok()? else {
            return None;
        };
        let Some(Value::String(channel)) = m.shift_remove("channel") else {
            return None;
        };
        let wait_for_auth = m
            .get("waitForAuth")
            .is_some_and(|v| v == &Value::Bool(true));
        let data = m
            .get("data")
            .and_then(|d| RawValue::from_string(d.to_string()).ok());
        let recover = m.get("recover").and_then(StreamPosition::from_value);
        Some(SubscribeRequest {
            channel,
            wait_for_auth,
            data,
            options: m,
            recover,
        })
    }
}

/// Build `#publish` data `{"channel":C[,"data":D]}` (data omitted when absent).
pub fn publish_data(channel: &str, data: Option<&RawValue>) -> Box<RawValue> {
    let mut b = String::with_capacity(channel.len() + data.map_or(0, |d| d.get().len()) + 24);
    b.push_str("{\"channel\":");
    json::push_str(&mut b, channel);
    if let Some(d) = data {
        b.push_str(",\"data\":");
        b.push_str(d.get());
    }
    b.push('}');
    raw(b)
}

/// The full `#publish` transmit frame, encoded once for every subscriber:
/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub fn publish_frame(channel: &str, data: Option<&RawValue>) -> String {
    let mut b = String::with_capacity(channel.len() + data.map_or(0, |d| d.get().len()) + 48);
    b.push_str("{\"event\":\"#publish\",\"data\":{\"channel\":");
    json::push_str(&mut b, channel);
    if let Some(d) = data {
        b.push_str(",\"data\":");
        b.push_str(d.get());
    }
    b.push_str("}}");
    b
}

/// A parsed `#publish` data object.
#[derive(Clone, Debug)]
pub struct PublishData {
    /// Channel name.
    pub channel: String,
    /// Published data (`None` when absent).
    pub data: Option<Box<RawValue>>,
    /// The publication's stream position, on a channel with history (`offset` and
    /// `epoch`, docs/PROTOCOL.md 14.16).
    pub position: Option<StreamPosition>,
}

impl PartialEq for PublishData {
    fn eq(&self, o: &Self) -> bool {
        self.channel == o.channel
            && crate::packet::raw_eq(&self.data, &o.data)
            && self.position == o.position
    }
}

/// Parse `#publish` data: `None` when it is not an object with a string `channel`.
pub fn parse_publish(data: Option<&RawValue>) -> Option<PublishData> {
    #[derive(serde::Deserialize)]
    struct P<'a> {
        #[serde(borrow)]
        channel: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
        #[serde(default, borrow)]
        offset: Option<&'a RawValue>,
        #[serde(default, borrow)]
        epoch: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
    }
    let p: P<'_> = serde_json::from_str(data?.get()).ok()?;
    let channel: String = serde_json::from_str(p.channel?.get()).ok()?;
    let position = match (p.offset, p.epoch) {
        (Some(o), Some(e)) => serde_json::from_str::<u64>(o.get())
            .ok()
            .zip(serde_json::from_str::<String>(e.get()).ok())
            .map(|(offset, epoch)| StreamPosition { epoch, offset }),
        _ => None,
    };
    Some(PublishData {
        channel,
        data: p.data.map(RawValue::to_owned),
        position,
    })
}

/// An inbound `#publish` frame, borrowed from the frame's text
/// ([`parse_publish_frame`]).
#[derive(Clone, Copy, Debug)]
pub struct PublishFrame<'a> {
    /// Channel name (contains no escape sequence).
    pub channel: &'a str,
    /// Published data.
    pub data: &'a RawValue,
    /// `offset` and `epoch` on a channel with history (docs/PROTOCOL.md 14.16); the epoch
    /// contains no escape sequence.
    pub position: Option<(u64, &'a str)>,
}

/// Prefix of every `#publish` frame as [`publish_frame`] and the JS server write it.
const PUBLISH_PREFIX: &str = "{\"event\":\"#publish\",\"data\":{\"channel\":\"";

/// A JSON string's contents up to its closing quote, when it has no escape sequence;
/// returns it and what follows the quote.
fn plain_string(s: &str) -> Option<(&str, &str)> {
    let end = s.find('"')?;
    let v = &s[..end];
    if v.bytes().any(|b| b == b'\\' || b < 0x20) {
        return None;
    }
    Some((v, &s[end + 1..]))
}

/// `,"offset":N,"epoch":"E"` at the start of `s` (as [`crate::history::publish_frame_at`]
/// writes it): the position and what follows.
fn position_suffix(s: &str) -> Option<((u64, &str), &str)> {
    let s = s.strip_prefix(",\"offset\":")?;
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 20 || (digits > 1 && s.starts_with('0')) {
        return None;
    }
    let offset: u64 = s[..digits].parse().ok()?;
    let s = s[digits..].strip_prefix(",\"epoch\":\"")?;
    let (epoch, rest) = plain_string(s)?;
    Some(((offset, epoch), rest))
}

/// One-pass fast path for inbound `#publish` frames in the exact form servers send them
/// (ours via [`publish_frame`] and [`crate::history::publish_frame_at`], and the JS
/// server): `{"event":"#publish","data":{"channel":"<name>","data":<JSON>}}`, optionally
/// with `,"offset":N,"epoch":"<epoch>"` after the data, with no escape sequence in the
/// channel name or epoch. The data is validated as JSON while it is located; nothing is
/// allocated.
///
/// `None` for every other frame, including valid ones in another shape (other key
/// order, whitespace, escapes, extra keys, absent data): decode those with
/// [`crate::codec::decode`] and [`parse_publish`]. For every frame this accepts, that
/// general path yields the same channel, data and position (property-tested).
pub fn parse_publish_frame(text: &str) -> Option<PublishFrame<'_>> {
    let rest = text.strip_prefix(PUBLISH_PREFIX)?;
    let (channel, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(",\"data\":")?;
    let mut de = serde_json::Deserializer::from_str(rest);
    let data: &RawValue = serde::Deserialize::deserialize(&mut de).ok()?;
    // The raw value borrows from `rest`: what follows it must close both objects.
    let value_end = data.get().as_ptr() as usize - rest.as_ptr() as usize + data.get().len();
    let mut rest = &rest[value_end..];
    let mut position = None;
    if rest.starts_with(',') {
        let (p, after) = position_suffix(rest)?;
        position = Some(p);
        rest = after;
    }
    let mut tail = rest
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
    if tail.next() == Some(b'}') && tail.next() == Some(b'}') && tail.next().is_none() {
        Some(PublishFrame {
            channel,
            data,
            position,
        })
    } else {
        None
    }
}

/// `#kickOut` data `{"channel":C[,"message":M]}`.
pub fn kick_out_data(channel: &str, message: Option<&RawValue>) -> Box<RawValue> {
    let mut b = String::from("{\"channel\":");
    json::push_str(&mut b, channel);
    if let Some(m) = message {
        b.push_str(",\"message\":");
        b.push_str(m.get());
    }
    b.push('}');
    raw(b)
}

/// A parsed `#kickOut`: `None` when `channel` is not a string (the client ignores it).
pub fn parse_kick_out(data: Option<&RawValue>) -> Option<(String, Option<Value>)> {
    let Value::Object(m) = serde_json::from_str::<Value>(data?.get()).ok()? else {
        return None;
    };
    let channel = m.get("channel")?.as_str()?.to_owned();
    Some((channel, m.get("message").cloned()))
}

/// `#unsubscribe` data: the bare channel name; `None` when it is not a string.
pub fn parse_unsubscribe(data: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(data?.get()).ok()
}

/// The v14 `#disconnect` transmit a v14 peer sends before it closes (docs/PROTOCOL.md 1.4):
/// `{"event":"#disconnect","data":{"code":n[,"data":reason]}}`.
pub fn v1_disconnect_frame(code: u16, reason: Option<&str>) -> String {
    let mut b = format!("{{\"event\":\"#disconnect\",\"data\":{{\"code\":{code}");
    if let Some(r) = reason {
        b.push_str(",\"data\":");
        json::push_str(&mut b, r);
    }
    b.push_str("}}");
    b
}

/// The v14 `#disconnect` data `{"code":n,"data":reason}` (docs/PROTOCOL.md 1.4).
pub fn parse_v1_disconnect(data: Option<&RawValue>) -> Option<(u16, Option<String>)> {
    let Value::Object(m) = serde_json::from_str::<Value>(data?.get()).ok()? else {
        return None;
    };
    let code = u16::try_from(m.get("code")?.as_u64()?).ok()?;
    let reason = m.get("data").and_then(Value::as_str).map(str::to_owned);
    Some((code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_disconnect_frames_match_the_captures() {
        // docs/PROTOCOL.md 11.7 captures (v14 client / server).
        assert_eq!(
            v1_disconnect_frame(4200, Some("v14 leaving")),
            r##"{"event":"#disconnect","data":{"code":4200,"data":"v14 leaving"}}"##
        );
        assert_eq!(
            v1_disconnect_frame(4501, None),
            r##"{"event":"#disconnect","data":{"code":4501}}"##
        );
        let f = v1_disconnect_frame(1000, Some("a \"quoted\" reason"));
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["data"]["data"], "a \"quoted\" reason");
    }

    fn r(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn handshake_status_key_order() {
        let s = HandshakeStatus {
            id: Some("jtqxq_2aRZV57RALAAAC".into()),
            ping_timeout: Some(200000),
            auth_error: Some(
                ErrorObject::new("AuthTokenInvalidError", "invalid signature")
                    .with("isBadToken", true),
            ),
            is_authenticated: false,
        };
        assert_eq!(
            s.to_raw().get(),
            r#"{"id":"jtqxq_2aRZV57RALAAAC","pingTimeout":200000,"authError":{"message":"invalid signature","name":"AuthTokenInvalidError","isBadToken":true},"isAuthenticated":false}"#
        );
        assert_eq!(HandshakeStatus::parse(Some(&s.to_raw())), s);
        assert_eq!(HandshakeStatus::parse(None), HandshakeStatus::default());
    }

    #[test]
    fn handshake_token_field_rules() {
        assert_eq!(
            parse_handshake_token(Some(&r(r#"{"authToken":null}"#))),
            TokenField::Absent
        );
        assert_eq!(parse_handshake_token(Some(&r(r#"{}"#))), TokenField::Absent);
        assert_eq!(
            parse_handshake_token(Some(&r(r#"{"authToken":""}"#))),
            TokenField::Absent
        );
        assert_eq!(parse_handshake_token(None), TokenField::Absent);
        assert_eq!(
            parse_handshake_token(Some(&r(r#"{"authToken":12345}"#))),
            TokenField::NotAString
        );
        assert_eq!(
            parse_handshake_token(Some(&r(r#"{"authToken":"a.b.c"}"#))),
            TokenField::Token("a.b.c".into())
        );
        assert_eq!(
            parse_authenticate_token(Some(&r("\"x\""))),
            TokenField::Token("x".into())
        );
        assert_eq!(
            parse_authenticate_token(Some(&r("{}"))),
            TokenField::NotAString
        );
    }

    #[test]
    fn subscribe_request_shapes() {
        let mut s = SubscribeRequest::new("bar");
        s.wait_for_auth = true;
        s.data = Some(r(r#"{"meta":1}"#));
        assert_eq!(
            s.to_raw().get(),
            r#"{"channel":"bar","waitForAuth":true,"data":{"meta":1}}"#
        );
        s.data = Some(r("0"));
        assert_eq!(s.to_raw().get(), r#"{"channel":"bar","waitForAuth":true}"#);
        let p = SubscribeRequest::parse(Some(&r(r#"{"channel":"bar","waitForAuth":true,"x":2}"#)))
            .unwrap();
        assert!(p.wait_for_auth);
        assert_eq!(p.options.len(), 2);
        for bad in [
            "[null]",
            "null",
            r#"{"channel":{"hello":123}}"#,
            "\"stringchannel\"",
        ] {
            assert!(SubscribeRequest::parse(Some(&r(bad))).is_none(), "{bad}");
        }
        assert!(SubscribeRequest::parse(None).is_none());
    }

    #[test]
    fn publish_shapes() {
        assert_eq!(
            publish_frame("foo", Some(&r("\"pub1\""))),
            r##"{"event":"#publish","data":{"channel":"foo","data":"pub1"}}"##
        );
        assert_eq!(
            publish_frame("u", None),
            r##"{"event":"#publish","data":{"channel":"u"}}"##
        );
        let p = parse_publish(Some(&r(r#"{"channel":"foo","data":null}"#))).unwrap();
        assert_eq!(p.data.as_deref().map(RawValue::get), Some("null"));
        let p = parse_publish(Some(&r(r#"{"channel":"foo"}"#))).unwrap();
        assert!(p.data.is_none());
        assert!(parse_publish(Some(&r(r#"{"channel":null}"#))).is_none());
        assert!(parse_publish(Some(&r("null"))).is_none());
    }

    #[test]
    fn authenticate_result_shapes() {
        let ok = AuthenticateResult {
            is_authenticated: true,
            auth_error: None,
        };
        assert_eq!(
            ok.to_raw().get(),
            r#"{"isAuthenticated":true,"authError":null}"#
        );
        assert_eq!(AuthenticateResult::parse(Some(&ok.to_raw())), Some(ok));
        assert_eq!(AuthenticateResult::parse(None), None);
    }
}
